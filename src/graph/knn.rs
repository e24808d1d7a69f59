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
            return grid_knn(points, Queries::Targets { exclude_self }, k, cap, c);
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

/// Whose neighbours `grid_knn` finds.
#[derive(Clone, Copy)]
enum Queries<'a> {
    /// Every target point's, itself included at distance 0 unless `exclude_self`.
    Targets {
        /// Leave each point out of its own list.
        exclude_self: bool,
    },
    /// These points' (clamped into the grid when outside it).
    Others(&'a [[f64; 3]]),
}

/// Points expected per grid cell of `grid_knn`: a few, so that the cells
/// near a query hold its nearest neighbours and little else.
const POINTS_PER_CELL: f64 = 2.0;

/// Most cells per cap width of `grid_knn`.
const MAX_SUBDIVISIONS: usize = 8;

/// k nearest for a capped distance: points binned on an x–y grid of cells
/// `cap / m` wide (m chosen from the density so a cell holds a few points),
/// each query visiting the cells that can hold points within the cap, nearest
/// first, and skipping a cell once its nearest possible point is farther than
/// the k-th best so far. Same neighbours as the R-tree search (same squared
/// distances, same tie rule): a skipped cell can only hold points that lose.
fn grid_knn(
    points: &[[f64; 3]],
    queries: Queries,
    k: usize,
    cap: DistanceCap,
    cap_len: f64,
) -> Neighbors {
    let n = points.len();
    let n_queries = match queries {
        Queries::Targets { .. } => n,
        Queries::Others(q) => q.len(),
    };
    let mut index = vec![-1i32; n_queries * k];
    if k == 0 || n == 0 {
        return Neighbors { k, index };
    }
    let (lo, hi) = crate::tiles::bounds(points);
    let cap_cells = grid_cells(points, cap_len) as f64;
    let per_cap_cell = n as f64 / cap_cells;
    let mut m =
        ((per_cap_cell / POINTS_PER_CELL).sqrt().round() as usize).clamp(1, MAX_SUBDIVISIONS);
    // Bound the grid's memory as `knn_3d` does for m = 1.
    while m > 1 && cap_cells * (m * m) as f64 > (4 * n + 1024) as f64 {
        m -= 1;
    }
    // Cells a hair wider than cap / m, so rounding in the division can never
    // put a point within the cap more than m cells away.
    let cell = cap_len / m as f64 * (1.0 + 1e-9);
    let dims = [0, 1].map(|a| ((hi[a] - lo[a]) / cell).floor() as usize + 1);
    let cell_of = |p: &[f64; 3]| -> [usize; 2] {
        [0, 1].map(|a| (((p[a] - lo[a]) / cell).floor() as usize).min(dims[a] - 1))
    };
    // Counting sort of the points by cell, row-major; their coordinates are
    // copied in that order so a cell's points are contiguous in memory.
    let mut starts = vec![0u32; dims[0] * dims[1] + 1];
    let cells: Vec<[usize; 2]> = points.iter().map(cell_of).collect();
    for &[cx, cy] in &cells {
        starts[cy * dims[0] + cx + 1] += 1;
    }
    for c in 0..dims[0] * dims[1] {
        starts[c + 1] += starts[c];
    }
    let mut fill = starts.clone();
    let mut members = vec![0u32; n];
    for (i, &[cx, cy]) in cells.iter().enumerate() {
        let slot = &mut fill[cy * dims[0] + cx];
        members[*slot as usize] = i as u32;
        *slot += 1;
    }
    drop(fill);
    let sorted: Vec<[f64; 3]> = members.iter().map(|&i| points[i as usize]).collect();

    // Slack for rounding: a point's cell and the cell edges below are
    // computed in floating point, so a point may sit a few ulps outside its
    // cell's computed edges; every distance bound is lowered by this much.
    let slack = 1e-9 * (1.0 + lo[0].abs().max(lo[1].abs()) + (hi[0] - lo[0]).max(hi[1] - lo[1]));
    let lower = |gap: f64| (gap - slack).max(0.0);
    // The cell offsets that can hold a point within the cap (at most m cells
    // away on each axis), by a lower bound of the squared distance to any
    // point in them from anywhere in the query's cell, nearest first.
    let reach = m as isize;
    let mut offsets: Vec<(f64, isize, isize)> = Vec::new();
    for oy in -reach..=reach {
        for ox in -reach..=reach {
            let gap = |o: isize| lower(o.unsigned_abs().saturating_sub(1) as f64 * cell);
            let (gx, gy) = (gap(ox), gap(oy));
            let bound = gx * gx + gy * gy;
            if cap.admits(bound) {
                offsets.push((bound, ox, oy));
            }
        }
    }
    offsets.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));

    // The k nearest points of `q` (skipping point `me`) into `row`.
    let search = |q: &[f64; 3], me: Option<u32>, best: &mut Vec<(f64, u32)>, row: &mut [i32]| {
        let [cx, cy] = cell_of(q);
        best.clear();
        for &(bound, ox, oy) in &offsets {
            // Offsets come nearest first: once the k-th best is
            // nearer than an offset's bound, no later cell can win.
            if best.len() == k && bound > best[k - 1].0 {
                break;
            }
            let (x, y) = (cx as isize + ox, cy as isize + oy);
            if x < 0 || y < 0 || x >= dims[0] as isize || y >= dims[1] as isize {
                continue;
            }
            let (x, y) = (x as usize, y as usize);
            // The same bound from the query's own position.
            let edge = |o: isize, c: usize, a: usize| -> f64 {
                match o.signum() {
                    1 => lower(lo[a] + c as f64 * cell - q[a]),
                    -1 => lower(q[a] - (lo[a] + (c + 1) as f64 * cell)),
                    _ => 0.0,
                }
            };
            let (bx, by) = (edge(ox, x, 0), edge(oy, y, 1));
            let near = bx * bx + by * by;
            if !cap.admits(near) || (best.len() == k && near > best[k - 1].0) {
                continue;
            }
            let c = y * dims[0] + x;
            let (first, last) = (starts[c] as usize, starts[c + 1] as usize);
            for (p, &j) in sorted[first..last].iter().zip(&members[first..last]) {
                if Some(j) == me {
                    continue;
                }
                let (dx, dy, dz) = (p[0] - q[0], p[1] - q[1], p[2] - q[2]);
                let d2 = dx * dx + dy * dy + dz * dz;
                if !cap.admits(d2) {
                    continue;
                }
                let candidate = (d2, j);
                if best.len() == k && !lt(candidate, best[k - 1]) {
                    continue;
                }
                if best.len() == k {
                    best.pop();
                }
                let mut at = best.len();
                best.push(candidate);
                while at > 0 && lt(candidate, best[at - 1]) {
                    best[at] = best[at - 1];
                    at -= 1;
                }
                best[at] = candidate;
            }
        }
        for (slot, (_, j)) in row.iter_mut().zip(best.iter()) {
            *slot = *j as i32;
        }
    };
    match queries {
        Queries::Targets { exclude_self } => {
            // Queries in cell order, so neighbouring queries share cells in cache.
            let mut sorted_rows = vec![-1i32; n * k];
            sorted_rows.par_chunks_mut(k).enumerate().for_each_init(
                || Vec::with_capacity(k + 1),
                |best, (pos, row)| {
                    let me = exclude_self.then_some(members[pos]);
                    search(&sorted[pos], me, best, row);
                },
            );
            for (row, &i) in sorted_rows.chunks(k).zip(&members) {
                index[i as usize * k..(i as usize + 1) * k].copy_from_slice(row);
            }
        }
        Queries::Others(queries) => {
            index.par_chunks_mut(k).enumerate().for_each_init(
                || Vec::with_capacity(k + 1),
                |best, (i, row)| search(&queries[i], None, best, row),
            );
        }
    }
    Neighbors { k, index }
}

/// Cells of the x–y grid of `grid_knn` at cap-wide cells (`usize::MAX`
/// without points); sparse samples use the R-tree instead of a mostly empty
/// grid.
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
    if let DistanceCap::Inclusive(c) | DistanceCap::Exclusive(c) = cap {
        // In 3-D at z = 0 the squared distances are the same numbers.
        let flat = |p: &[f64; 2]| [p[0], p[1], 0.0];
        let targets3: Vec<[f64; 3]> = targets.iter().map(flat).collect();
        if c > 0.0 && grid_cells(&targets3, c) <= 4 * targets.len() + 1024 {
            let queries3: Vec<[f64; 3]> = queries.iter().map(flat).collect();
            return grid_knn(&targets3, Queries::Others(&queries3), k, cap, c);
        }
    }
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
        // Dense, medium and sparse samples: the grid's cells are 1/8, 1/3 and
        // 1/1 of the cap wide.
        for spread in [0.25, 1.0, 4.0] {
            let pts: Vec<[f64; 3]> = (0..3000)
                .map(|i| {
                    let f = |m: usize, d: f64| ((i * m) % 1000) as f64 / d;
                    // A coarse lattice makes many exact distance ties.
                    [
                        (f(7919, 8.0)).round() / 2.0 * spread,
                        (f(104_729, 8.0)).round() / 2.0 * spread,
                        (i % 3) as f64,
                    ]
                })
                .collect();
            grid_equals_rtree(&pts);
        }
    }

    fn grid_equals_rtree(pts: &[[f64; 3]]) {
        for exclude_self in [false, true] {
            for cap in [DistanceCap::Inclusive(5.0), DistanceCap::Exclusive(5.0)] {
                let grid = knn_3d(pts, 5, cap, exclude_self);
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
    fn grid_search_2d_equals_the_rtree_search() {
        // Targets on a coarse lattice (many ties); queries also outside their
        // bounding box, where the grid clamps them into its edge cells.
        let lattice = |i: usize, m: usize| ((i * m) % 97) as f64 / 2.0;
        let targets: Vec<[f64; 2]> = (0..400).map(|i| [lattice(i, 31), lattice(i, 57)]).collect();
        let queries: Vec<[f64; 2]> = (0..900)
            .map(|i| [lattice(i, 13) * 1.4 - 10.0, lattice(i, 71) * 1.4 - 10.0])
            .collect();
        let tree = RTree::bulk_load(
            targets
                .iter()
                .enumerate()
                .map(|(i, p)| Point2::new(*p, i as u32))
                .collect(),
        );
        for cap in [DistanceCap::Inclusive(6.0), DistanceCap::Exclusive(6.0)] {
            let grid = knn_2d(&queries, &targets, 4, cap);
            let mut index = vec![-1i32; queries.len() * 4];
            for (i, row) in index.chunks_mut(4).enumerate() {
                let iter = tree
                    .nearest_neighbor_iter_with_distance_2(&queries[i])
                    .map(|(p, d2)| (p.data, d2));
                take_k(iter, 4, cap, None, row);
            }
            assert_eq!(grid.index, index);
            assert!(index.iter().any(|&j| j < 0) && index.iter().any(|&j| j >= 0));
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
