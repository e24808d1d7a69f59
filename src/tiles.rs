//! Tiles (docs/contract.md §10): square cores that own transcripts and nuclei, computed
//! over core + margin so that every owned transcript sees the graph it
//! would see untiled.
//!
//! The grid is sparse: its cores are laid over the bounding box of the
//! transcripts, but only the cores that own a transcript are tiles, and
//! items are kept per occupied core. One transcript far from the rest thus
//! adds one tile, not the empty box between them.

use anyhow::{bail, Result};
use rstar::primitives::GeomWithData;
use rstar::{RTree, AABB};

/// A core of the grid as `[row, column]`.
pub type Cell = [u64; 2];

/// Most cores along one axis: cell indices stay exact in an `f64` (2^52).
pub const MAX_CORES_PER_AXIS: u64 = 1 << 52;

/// A square grid of tile cores over the transcripts' bounding box, of which
/// the cores owning a transcript are the tiles.
#[derive(Debug, Clone)]
pub struct TileGrid {
    /// Lower-left corner of core (0, 0).
    pub origin: [f64; 2],
    /// Side of a tile core in µm.
    pub size: f64,
    /// Number of cores along x over the bounding box.
    pub cols: u64,
    /// Number of cores along y over the bounding box.
    pub rows: u64,
    /// Margin added on every side of a core, in µm.
    pub margin: f64,
    /// The tiles: cores that own at least one of the covered points, ascending.
    tiles: Vec<Cell>,
}

/// The exact margin of docs/contract.md §10: `(layers + 1)·dist_tx + dist_bd + radius`,
/// where `radius` is the largest distance from a nucleus centroid to any of
/// its vertices or member transcripts.
pub fn exact_margin(layers: usize, dist_tx: f64, dist_bd: f64, radius: f64) -> f64 {
    (layers as f64 + 1.0) * dist_tx + dist_bd + radius
}

/// The least and largest x and y of `points` (their first two coordinates);
/// infinite when `points` is empty.
pub fn bounds<const N: usize>(points: &[[f64; N]]) -> ([f64; 2], [f64; 2]) {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in points {
        for a in 0..2 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    (lo, hi)
}

impl TileGrid {
    /// Covers `points` (x, y) with cores of `size` µm; the tiles are the
    /// cores that own a point. An error when the bounding box spans more
    /// than [`MAX_CORES_PER_AXIS`] cores along an axis.
    pub fn covering(points: &[[f64; 2]], size: f64, margin: f64) -> Result<Self> {
        let (mut lo, mut hi) = bounds(points);
        if !lo[0].is_finite() {
            lo = [0.0; 2];
            hi = [0.0; 2];
        }
        let count = |a: usize| -> Result<u64> {
            let n = ((hi[a] - lo[a]) / size).floor();
            // NaN fails the range check too.
            if !(0.0..MAX_CORES_PER_AXIS as f64).contains(&n) {
                bail!(
                    "the transcripts span {} µm along {}, more than 2^52 tiles of {size} µm",
                    hi[a] - lo[a],
                    ["x", "y"][a]
                );
            }
            Ok(n as u64 + 1)
        };
        let mut grid = Self {
            origin: lo,
            size,
            cols: count(0)?,
            rows: count(1)?,
            margin,
            tiles: Vec::new(),
        };
        let mut tiles: Vec<Cell> = points.iter().map(|&p| grid.owner(p)).collect();
        tiles.sort_unstable();
        tiles.dedup();
        grid.tiles = tiles;
        Ok(grid)
    }

    /// Number of tiles (cores owning a point).
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// Whether there is no tile (only when no point was covered).
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// The core of tile `t` (tiles are in ascending row, column order).
    pub fn tile(&self, t: usize) -> Cell {
        self.tiles[t]
    }

    /// The core that owns point `p` (points outside clamp to the border cores).
    pub fn owner(&self, p: [f64; 2]) -> Cell {
        let index = |a: usize, n: u64| {
            let c = ((p[a] - self.origin[a]) / self.size).floor();
            // NaN and negative values go to 0, values past the end to n − 1.
            (c.max(0.0) as u64).min(n - 1)
        };
        [index(1, self.rows), index(0, self.cols)]
    }

    /// Core `cell` as `[x0, y0, x1, y1]` (half-open).
    pub fn core(&self, cell: Cell) -> [f64; 4] {
        let x0 = self.origin[0] + cell[1] as f64 * self.size;
        let y0 = self.origin[1] + cell[0] as f64 * self.size;
        [x0, y0, x0 + self.size, y0 + self.size]
    }

    /// Whether `p` lies in core `cell` extended by the margin. Border
    /// cores extend without limit outwards, matching `owner`'s clamping.
    pub fn in_extended(&self, cell: Cell, p: [f64; 2]) -> bool {
        let [x0, y0, x1, y1] = self.core(cell);
        let [row, col] = cell;
        let lo_x = if col == 0 {
            f64::NEG_INFINITY
        } else {
            x0 - self.margin
        };
        let hi_x = if col + 1 == self.cols {
            f64::INFINITY
        } else {
            x1 + self.margin
        };
        let lo_y = if row == 0 {
            f64::NEG_INFINITY
        } else {
            y0 - self.margin
        };
        let hi_y = if row + 1 == self.rows {
            f64::INFINITY
        } else {
            y1 + self.margin
        };
        p[0] >= lo_x && p[0] < hi_x && p[1] >= lo_y && p[1] < hi_y
    }

    /// Rings of cores around a core whose items may lie in its extended
    /// region: `ceil(margin / size)`, capped by the grid (so an unbounded
    /// margin means every core).
    fn rings(&self) -> u64 {
        let span = self.cols.max(self.rows) as f64;
        let rings = (self.margin / self.size).ceil();
        if rings.is_nan() {
            // An infinite margin over infinite cores.
            span as u64
        } else {
            rings.clamp(0.0, span) as u64
        }
    }
}

/// Items grouped by the core that owns them, for the cores that own any.
pub struct Buckets {
    /// Occupied cores, ascending.
    cells: Vec<Cell>,
    /// `items[starts[i]..starts[i + 1]]` are the items of `cells[i]`.
    starts: Vec<usize>,
    /// Item indices grouped by core, ascending within a core.
    items: Vec<u32>,
    /// The occupied cores as points (column, row), with their index in `cells`.
    index: RTree<GeomWithData<[f64; 2], u32>>,
}

impl Buckets {
    /// Items owned by core `cell`, in increasing index order (empty when none).
    pub fn get(&self, cell: Cell) -> &[u32] {
        match self.cells.binary_search(&cell) {
            Ok(i) => &self.items[self.starts[i]..self.starts[i + 1]],
            Err(_) => &[],
        }
    }
}

/// Groups item indices by the core that owns them.
pub fn bucket(grid: &TileGrid, points: &[[f64; 2]]) -> Buckets {
    use rayon::prelude::*;
    let owner: Vec<Cell> = points.par_iter().map(|&p| grid.owner(p)).collect();
    let mut items: Vec<u32> = (0..points.len() as u32).collect();
    // Stable, so items stay in increasing order within a core (on the
    // rayon pool: the stable order does not depend on the threads).
    items.par_sort_by_key(|&i| owner[i as usize]);
    let mut cells: Vec<Cell> = Vec::new();
    let mut starts = Vec::new();
    for (at, &i) in items.iter().enumerate() {
        let cell = owner[i as usize];
        if cells.last() != Some(&cell) {
            cells.push(cell);
            starts.push(at);
        }
    }
    starts.push(items.len());
    // Cell indices are below 2^52, exact as f64.
    let index = RTree::bulk_load(
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| GeomWithData::new([c[1] as f64, c[0] as f64], i as u32))
            .collect(),
    );
    Buckets {
        cells,
        starts,
        items,
        index,
    }
}

/// Items of core `cell`'s extended region (core + margin), in increasing index order.
pub fn gather(grid: &TileGrid, buckets: &Buckets, points: &[[f64; 2]], cell: Cell) -> Vec<u32> {
    let rings = grid.rings();
    let [row, col] = cell;
    let lo = [
        col.saturating_sub(rings) as f64,
        row.saturating_sub(rings) as f64,
    ];
    let hi = [
        col.saturating_add(rings).min(grid.cols - 1) as f64,
        row.saturating_add(rings).min(grid.rows - 1) as f64,
    ];
    let mut items: Vec<u32> = buckets
        .index
        .locate_in_envelope(&AABB::from_corners(lo, hi))
        .flat_map(|near| {
            let i = near.data as usize;
            &buckets.items[buckets.starts[i]..buckets.starts[i + 1]]
        })
        .copied()
        .filter(|&i| grid.in_extended(cell, points[i as usize]))
        .collect();
    items.sort_unstable();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `gather` against its definition, `in_extended` over every
    /// point, and that every point has one owner among the buckets.
    fn check_against_definition(grid: &TileGrid, pts: &[[f64; 2]]) {
        let buckets = bucket(grid, pts);
        let owned: usize = (0..grid.len())
            .map(|t| buckets.get(grid.tile(t)).len())
            .sum();
        assert_eq!(owned, pts.len(), "every point is owned by one tile");
        for t in 0..grid.len() {
            let cell = grid.tile(t);
            let ext = gather(grid, &buckets, pts, cell);
            let expected: Vec<u32> = (0..pts.len() as u32)
                .filter(|&i| grid.in_extended(cell, pts[i as usize]))
                .collect();
            assert_eq!(ext, expected, "tile {cell:?}");
            for &i in buckets.get(cell) {
                assert!(ext.binary_search(&i).is_ok());
            }
        }
    }

    #[test]
    fn every_point_has_one_owner_and_lies_in_its_extended_tile() {
        let pts: Vec<[f64; 2]> = (0..500)
            .map(|i| [(i * 37 % 101) as f64 * 3.1, (i * 53 % 97) as f64 * 2.7])
            .collect();
        let grid = TileGrid::covering(&pts, 50.0, 12.0).unwrap();
        assert_eq!((grid.cols, grid.rows), (7, 6));
        check_against_definition(&grid, &pts);
        let buckets = bucket(&grid, &pts);
        for t in 0..grid.len() {
            let cell = grid.tile(t);
            let ext = gather(&grid, &buckets, &pts, cell);
            // Everything within the margin of the core is gathered.
            let [x0, y0, x1, y1] = grid.core(cell);
            for (i, p) in pts.iter().enumerate() {
                let dx = (x0 - p[0]).max(p[0] - x1).max(0.0);
                let dy = (y0 - p[1]).max(p[1] - y1).max(0.0);
                if dx < 12.0 && dy < 12.0 {
                    assert!(
                        ext.binary_search(&(i as u32)).is_ok(),
                        "tile {cell:?} misses {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_occupied_cores_are_tiles_and_far_points_add_one_tile_each() {
        let mut pts: Vec<[f64; 2]> = (0..300)
            .map(|i| [(i % 20) as f64 * 7.0, (i / 20) as f64 * 9.0])
            .collect();
        pts.push([1e8, 5.0]);
        pts.push([1e8, 1e8]);
        pts.push([-3e7, 2e8]);
        let grid = TileGrid::covering(&pts, 40.0, 30.0).unwrap();
        assert!(grid.cols > 3_000_000 && grid.rows > 5_000_000);
        // 4 × 4 cores hold the block; each far point adds its own.
        assert_eq!(grid.len(), 16 + 3);
        check_against_definition(&grid, &pts);
        // Nuclei beyond the transcripts belong to the border cores.
        let nuclei = [[-1e9, -1e9], [5.0, 3e8], [50.0, 50.0]];
        let n = bucket(&grid, &nuclei);
        assert_eq!(n.get(grid.owner([-1e9, -1e9])), [0]);
        assert_eq!(grid.owner([-1e9, -1e9]), [0, 0]);
        assert_eq!(grid.owner([5.0, 3e8])[0], grid.rows - 1);
    }

    #[test]
    fn an_unbounded_margin_gathers_everything_in_finite_time() {
        let pts: Vec<[f64; 2]> = (0..50).map(|i| [i as f64 * 20.0, 0.0]).collect();
        let grid = TileGrid::covering(&pts, 100.0, f64::INFINITY).unwrap();
        let buckets = bucket(&grid, &pts);
        assert_eq!(grid.len(), 10);
        assert_eq!(gather(&grid, &buckets, &pts, grid.tile(3)).len(), pts.len());
        let single = TileGrid::covering(&pts, f64::INFINITY, f64::INFINITY).unwrap();
        assert_eq!(single.len(), 1);
        let buckets = bucket(&single, &pts);
        assert_eq!(buckets.get(single.tile(0)).len(), pts.len());
        assert_eq!(
            gather(&single, &buckets, &pts, single.tile(0)).len(),
            pts.len()
        );
    }

    #[test]
    fn an_extent_of_more_than_2_52_cores_is_an_error() {
        let pts = [[0.0, 0.0], [1e300, 0.0]];
        let e = TileGrid::covering(&pts, 400.0, 30.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("along x") && e.contains("2^52"), "{e}");
        let e = TileGrid::covering(&[[0.0, 0.0], [0.0, 1.0]], 1e-300, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("along y"), "{e}");
    }
}
