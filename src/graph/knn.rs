//! k-nearest-neighbour queries with rstar, with the tie rule of docs/contract.md §5:
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
    match cap {
        DistanceCap::Inclusive(c) | DistanceCap::Exclusive(c)
            if c > 0.0 && grid_cells(points, c) <= 4 * points.len() + 1024 =>
        {
            return knn_3d_grid(points, k, cap, c, exclude_self);
        }
        _ => {}
    }
    let tree = RTree::bulk_load(
        points
            .iter()
            .enumerate()
            .map(|(i, p)| Point3::new(*p, i as u32))
            .collect(),
    );
    let mut index = vec![-1i32; points.len() * k];
    if k > 0 {
        index.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            let skip = exclude_self.then_some(i as u32);
            let iter = tree
                .nearest_neighbor_iter_with_distance_2(&points[i])
                .map(|(p, d2)| (p.data, d2));
            take_k(iter, k, cap, skip, row);
        });
    }
    Neighbors { k, index }
}

/// `knn_3d` for a capped distance: points binned on an x–y grid of cells as
/// wide as the cap, each query scanning its 3 × 3 cells. Same neighbours as
/// the R-tree search (same squared distances, same tie rule), several times
/// faster when the cap bounds the search.
fn knn_3d_grid(
    points: &[[f64; 3]],
    k: usize,
    cap: DistanceCap,
    cell: f64,
    exclude_self: bool,
) -> Neighbors {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in points {
        for a in 0..2 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    // Cells a hair wider than the cap, so rounding in the division can never
    // put a point within the cap two cells away.
    let cell = cell * (1.0 + 1e-9);
    let dims = [0, 1].map(|a| ((hi[a] - lo[a]) / cell).floor() as usize + 1);
    let cell_of = |p: &[f64; 3]| -> [usize; 2] {
        [0, 1].map(|a| (((p[a] - lo[a]) / cell).floor() as usize).min(dims[a] - 1))
    };
    // Counting sort of point indices by cell, row-major.
    let mut starts = vec![0u32; dims[0] * dims[1] + 1];
    for p in points {
        let [cx, cy] = cell_of(p);
        starts[cy * dims[0] + cx + 1] += 1;
    }
    for c in 0..dims[0] * dims[1] {
        starts[c + 1] += starts[c];
    }
    let mut fill = starts.clone();
    let mut members = vec![0u32; points.len()];
    for (i, p) in points.iter().enumerate() {
        let [cx, cy] = cell_of(p);
        let slot = &mut fill[cy * dims[0] + cx];
        members[*slot as usize] = i as u32;
        *slot += 1;
    }
    let mut index = vec![-1i32; points.len() * k];
    if k == 0 {
        return Neighbors { k, index };
    }
    index.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        let q = &points[i];
        let [cx, cy] = cell_of(q);
        // The k best so far, ascending by (squared distance, index).
        let mut best: Vec<(f64, u32)> = Vec::with_capacity(k + 1);
        for y in cy.saturating_sub(1)..(cy + 2).min(dims[1]) {
            let row_start = y * dims[0];
            let first = starts[row_start + cx.saturating_sub(1)] as usize;
            let last = starts[row_start + (cx + 2).min(dims[0])] as usize;
            for &j in &members[first..last] {
                if exclude_self && j as usize == i {
                    continue;
                }
                let p = &points[j as usize];
                let (dx, dy, dz) = (p[0] - q[0], p[1] - q[1], p[2] - q[2]);
                let d2 = dx * dx + dy * dy + dz * dz;
                if !cap.admits(d2) {
                    continue;
                }
                let candidate = (d2, j);
                if best.len() == k && !lt(candidate, best[k - 1]) {
                    continue;
                }
                let at = best.partition_point(|&b| lt(b, candidate));
                best.insert(at, candidate);
                best.truncate(k);
            }
        }
        for (slot, (_, j)) in row.iter_mut().zip(&best) {
            *slot = *j as i32;
        }
    });
    Neighbors { k, index }
}

/// Cells of the x–y grid of `knn_3d_grid` (0 without points); sparse
/// samples use the R-tree instead of a mostly empty grid.
fn grid_cells(points: &[[f64; 3]], cell: f64) -> usize {
    if points.is_empty() {
        return usize::MAX;
    }
    let span = |a: usize| {
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p[a]), hi.max(p[a]))
            });
        ((hi - lo) / cell).min(1e12) as usize + 1
    };
    span(0).saturating_mul(span(1))
}

/// Order of neighbour candidates: squared distance, then index.
fn lt(a: (f64, u32), b: (f64, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
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
        index.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
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
        let pts = [
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 2.0, 0.0],
        ];
        let n = knn_3d(&pts, 2, DistanceCap::None, false);
        assert_eq!(&n.index[0..2], &[0, 1]);
        let n = knn_3d(&pts, 2, DistanceCap::None, true);
        assert_eq!(&n.index[0..2], &[1, 2]);
    }

    #[test]
    fn grid_search_equals_the_rtree_search() {
        let pts: Vec<[f64; 3]> = (0..3000)
            .map(|i| {
                let f = |m: usize, d: f64| ((i * m) % 1000) as f64 / d;
                // A coarse lattice makes many exact distance ties.
                [
                    (f(7919, 8.0)).round() / 2.0,
                    (f(104_729, 8.0)).round() / 2.0,
                    (i % 3) as f64,
                ]
            })
            .collect();
        for exclude_self in [false, true] {
            for cap in [DistanceCap::Inclusive(5.0), DistanceCap::Exclusive(5.0)] {
                let grid = knn_3d(&pts, 5, cap, exclude_self);
                let tree = RTree::bulk_load(
                    pts.iter()
                        .enumerate()
                        .map(|(i, p)| Point3::new(*p, i as u32))
                        .collect(),
                );
                let mut index = vec![-1i32; pts.len() * 5];
                for (i, row) in index.chunks_mut(5).enumerate() {
                    let iter = tree
                        .nearest_neighbor_iter_with_distance_2(&pts[i])
                        .map(|(p, d2)| (p.data, d2));
                    take_k(iter, 5, cap, exclude_self.then_some(i as u32), row);
                }
                assert_eq!(grid.index, index);
            }
        }
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
