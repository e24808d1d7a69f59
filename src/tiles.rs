//! Tiles (docs/contract.md §10): square cores that own transcripts and nuclei, computed
//! over core + margin so that every owned transcript sees the graph it
//! would see untiled.

/// A square grid of tile cores over the sample's bounding box.
#[derive(Debug, Clone, Copy)]
pub struct TileGrid {
    /// Lower-left corner of tile (0, 0).
    pub origin: [f64; 2],
    /// Side of a tile core in µm.
    pub size: f64,
    /// Number of tiles along x and y.
    pub cols: usize,
    /// Number of tile rows.
    pub rows: usize,
    /// Margin added on every side of a core, in µm.
    pub margin: f64,
}

/// The exact margin of docs/contract.md §10: `(layers + 1)·dist_tx + dist_bd + radius`,
/// where `radius` is the largest distance from a nucleus centroid to any of
/// its vertices or member transcripts.
pub fn exact_margin(layers: usize, dist_tx: f64, dist_bd: f64, radius: f64) -> f64 {
    (layers as f64 + 1.0) * dist_tx + dist_bd + radius
}

impl TileGrid {
    /// Covers `points` (x, y) with cores of `size` µm.
    pub fn covering(points: impl Iterator<Item = [f64; 2]>, size: f64, margin: f64) -> Self {
        let mut lo = [f64::INFINITY; 2];
        let mut hi = [f64::NEG_INFINITY; 2];
        for p in points {
            for a in 0..2 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        if !lo[0].is_finite() {
            lo = [0.0; 2];
            hi = [0.0; 2];
        }
        let count = |a: usize| (((hi[a] - lo[a]) / size).floor() as usize + 1).max(1);
        Self {
            origin: lo,
            size,
            cols: count(0),
            rows: count(1),
            margin,
        }
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.cols * self.rows
    }

    /// Whether the grid has no tile (never: a grid has at least one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tile whose core owns point `p` (points outside clamp to the border tiles).
    pub fn owner(&self, p: [f64; 2]) -> usize {
        let cell = |a: usize, n: usize| {
            let c = ((p[a] - self.origin[a]) / self.size).floor();
            (c.max(0.0) as usize).min(n - 1)
        };
        cell(1, self.rows) * self.cols + cell(0, self.cols)
    }

    /// Core of tile `t` as `[x0, y0, x1, y1]` (half-open).
    pub fn core(&self, t: usize) -> [f64; 4] {
        let (col, row) = ((t % self.cols) as f64, (t / self.cols) as f64);
        let x0 = self.origin[0] + col * self.size;
        let y0 = self.origin[1] + row * self.size;
        [x0, y0, x0 + self.size, y0 + self.size]
    }

    /// Whether `p` lies in tile `t`'s core extended by the margin. Border
    /// tiles extend without limit outwards, matching `owner`'s clamping.
    pub fn in_extended(&self, t: usize, p: [f64; 2]) -> bool {
        let [x0, y0, x1, y1] = self.core(t);
        let (col, row) = (t % self.cols, t / self.cols);
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

    /// Tiles whose extended region may contain a point owned by tile `t`'s
    /// neighbourhood: all tiles within `ceil(margin / size)` rings of `t`.
    pub fn neighbourhood(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        // Capped by the grid, so an unbounded margin means every tile.
        let span = self.cols.max(self.rows) as f64;
        let rings = (self.margin / self.size).ceil().clamp(0.0, span) as isize;
        let (col, row) = ((t % self.cols) as isize, (t / self.cols) as isize);
        (-rings..=rings).flat_map(move |dy| {
            (-rings..=rings).filter_map(move |dx| {
                let (c, r) = (col + dx, row + dy);
                (c >= 0 && r >= 0 && (c as usize) < self.cols && (r as usize) < self.rows)
                    .then(|| r as usize * self.cols + c as usize)
            })
        })
    }
}

/// Groups item indices by the tile that owns them: `members[t]` lists the
/// items of tile `t` in increasing index order.
pub fn bucket(grid: &TileGrid, points: &[[f64; 2]]) -> Vec<Vec<u32>> {
    let mut members = vec![Vec::new(); grid.len()];
    for (i, p) in points.iter().enumerate() {
        members[grid.owner(*p)].push(i as u32);
    }
    members
}

/// Items of tile `t`'s extended region (core + margin), in increasing index order.
pub fn gather(grid: &TileGrid, members: &[Vec<u32>], points: &[[f64; 2]], t: usize) -> Vec<u32> {
    let mut items: Vec<u32> = grid
        .neighbourhood(t)
        .flat_map(|n| members[n].iter().copied())
        .filter(|&i| grid.in_extended(t, points[i as usize]))
        .collect();
    items.sort_unstable();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_has_one_owner_and_lies_in_its_extended_tile() {
        let pts: Vec<[f64; 2]> = (0..500)
            .map(|i| [(i * 37 % 101) as f64 * 3.1, (i * 53 % 97) as f64 * 2.7])
            .collect();
        let grid = TileGrid::covering(pts.iter().copied(), 50.0, 12.0);
        let members = bucket(&grid, &pts);
        assert_eq!(members.iter().map(Vec::len).sum::<usize>(), pts.len());
        for t in 0..grid.len() {
            let ext = gather(&grid, &members, &pts, t);
            for &i in &members[t] {
                assert!(ext.binary_search(&i).is_ok());
            }
            // Everything within the margin of the core is gathered.
            let [x0, y0, x1, y1] = grid.core(t);
            for (i, p) in pts.iter().enumerate() {
                let dx = (x0 - p[0]).max(p[0] - x1).max(0.0);
                let dy = (y0 - p[1]).max(p[1] - y1).max(0.0);
                if dx < 12.0 && dy < 12.0 {
                    assert!(
                        ext.binary_search(&(i as u32)).is_ok(),
                        "tile {t} misses {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_unbounded_margin_gathers_everything_in_finite_time() {
        let pts: Vec<[f64; 2]> = (0..50).map(|i| [i as f64 * 20.0, 0.0]).collect();
        let grid = TileGrid::covering(pts.iter().copied(), 100.0, f64::INFINITY);
        assert_eq!(grid.neighbourhood(0).count(), grid.len());
        let members = bucket(&grid, &pts);
        assert_eq!(gather(&grid, &members, &pts, 3).len(), pts.len());
        let single = TileGrid::covering(pts.iter().copied(), f64::INFINITY, f64::INFINITY);
        assert_eq!(single.len(), 1);
        assert_eq!(bucket(&single, &pts)[0].len(), pts.len());
    }
}
