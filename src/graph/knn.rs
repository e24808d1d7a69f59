//! k-nearest-neighbour queries with rstar, with the tie rule of SPEC §5:
//! equal distances are ordered by lower point index.

use rayon::prelude::*;
use rstar::primitives::GeomWithData;
use rstar::RTree;

type Point3 = GeomWithData<[f64; 3], u32>;
type Point2 = GeomWithData<[f64; 2], u32>;

/// Neighbour lists, `k` slots per query, −1 where fewer than `k` qualify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbors {
    /// Slots per query.
    pub k: usize,
    /// `[n_queries, k]` point indices or −1, nearest first.
    pub index: Vec<i32>,
}

/// Which distances qualify as neighbours.
#[derive(Debug, Clone, Copy)]
pub enum DistanceCap {
    /// No limit.
    None,
    /// distance ≤ cap.
    Inclusive(f64),
    /// distance < cap.
    Exclusive(f64),
}

impl DistanceCap {
    fn admits(self, d2: f64) -> bool {
        match self {
            DistanceCap::None => true,
            DistanceCap::Inclusive(c) => d2 <= c * c,
            DistanceCap::Exclusive(c) => d2 < c * c,
        }
    }
}

/// Collects the k nearest from an iterator sorted by distance, keeping every
/// point tied with the k-th so that the tie can be broken by index.
fn take_k(
    candidates: impl Iterator<Item = (u32, f64)>,
    k: usize,
    cap: DistanceCap,
    skip: Option<u32>,
    row: &mut [i32],
) {
    let mut found: Vec<(f64, u32)> = Vec::with_capacity(k + 4);
    for (idx, d2) in candidates {
        if !cap.admits(d2) {
            break;
        }
        if Some(idx) == skip {
            continue;
        }
        if found.len() >= k && d2 > found[k - 1].0 {
            break;
        }
        found.push((d2, idx));
    }
    found.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (slot, (_, idx)) in row.iter_mut().zip(found.iter().take(k)) {
        *slot = *idx as i32;
    }
}

/// For every point of `points`, its `k` nearest points in 3-D (itself
/// included at distance 0 unless `exclude_self`).
pub fn knn_3d(points: &[[f64; 3]], k: usize, cap: DistanceCap, exclude_self: bool) -> Neighbors {
    let tree = RTree::bulk_load(
        points
            .iter()
            .enumerate()
            .map(|(i, p)| Point3::new(*p, i as u32))
            .collect(),
    );
    let mut index = vec![-1i32; points.len() * k];
    if k > 0 {
        index
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, row)| {
                let skip = exclude_self.then_some(i as u32);
                let iter = tree
                    .nearest_neighbor_iter_with_distance_2(&points[i])
                    .map(|(p, d2)| (p.data, d2));
                take_k(iter, k, cap, skip, row);
            });
    }
    Neighbors { k, index }
}

/// For every query point, the `k` nearest of `targets` in 2-D.
pub fn knn_2d(queries: &[[f64; 2]], targets: &[[f64; 2]], k: usize, cap: DistanceCap) -> Neighbors {
    let tree = RTree::bulk_load(
        targets
            .iter()
            .enumerate()
            .map(|(i, p)| Point2::new(*p, i as u32))
            .collect(),
    );
    let mut index = vec![-1i32; queries.len() * k];
    if k > 0 {
        index
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, row)| {
                let iter = tree
                    .nearest_neighbor_iter_with_distance_2(&queries[i])
                    .map(|(p, d2)| (p.data, d2));
                take_k(iter, k, cap, None, row);
            });
    }
    Neighbors { k, index }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_index_and_self_is_included() {
        // Points 1 and 2 are both at distance 1 from point 0; 3 is farther.
        let pts = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 2.0, 0.0]];
        let n = knn_3d(&pts, 2, DistanceCap::None, false);
        assert_eq!(&n.index[0..2], &[0, 1]);
        let n = knn_3d(&pts, 2, DistanceCap::None, true);
        assert_eq!(&n.index[0..2], &[1, 2]);
    }

    #[test]
    fn distance_caps_are_inclusive_or_strict() {
        let pts = [[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]];
        let n = knn_3d(&pts, 2, DistanceCap::Inclusive(5.0), false);
        assert_eq!(&n.index[0..2], &[0, 1]);
        let q = [[0.0, 0.0]];
        let t = [[12.0, 0.0], [3.0, 4.0]];
        let n = knn_2d(&q, &t, 2, DistanceCap::Exclusive(12.0));
        assert_eq!(n.index, vec![1, -1]);
    }
}
