//! The memory budget of `segment` (docs/streaming.md, "Budget"): the
//! default budget, whether an input runs the bucketed path without
//! `--max-memory`, the tile size and the bucket size picked from the
//! budget, and the refusal of a budget too small for the smallest tile.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::prepare::MAX_OVERLAP;
use crate::defaults;
use crate::tiles::{Cell, TileGrid};

/// Bytes a transcript of a tile (core and margin) costs while the tile is
/// scored: its graphs, embeddings and attention (measured about 1.8 KB at
/// the demo model's sizes; rounded up).
pub const TILE_BYTES_PER_TRANSCRIPT: f64 = 2048.0;

/// Bytes a record loaded for a bucket costs while the bucket is worked on
/// (its columns, 52 bytes; its tile index; the owned results).
pub const BUCKET_BYTES_PER_RECORD: f64 = 128.0;

/// Bytes a record of the next bucket is counted while it is loaded on a
/// thread beside the current one. The fragment stage holds it in its
/// spilled form until it is visited (36 bytes, its owned and claimed
/// flags); the score stage holds only the next bucket's margin. The figure
/// is the one from when it was held decoded (40 bytes, and the file's 36
/// while decoding), kept so that the buckets keep their size: a lower one
/// widens them, and the bucket being worked on with them.
pub const LOADED_AHEAD_BYTES_PER_RECORD: f64 = 80.0;

/// Share of the budget given to the tile being scored and to the records
/// of its bucket; the rest holds what the bucketed path still keeps in
/// memory (per-row results, and the input rows where they are held).
pub const TILE_SHARE: f64 = 0.5;
/// See [`TILE_SHARE`].
pub const BUCKET_SHARE: f64 = 0.25;

/// Bytes the path that reads and writes in batches holds per nucleus for
/// the whole run: its id, centroid, features, area and the place of its
/// polygon in the spill file (the vertices are on disk), then its cell's
/// running sums, name and row of `cells.parquet` (measured about 60 bytes
/// a nucleus held through the score stage, ids packed in one buffer, and
/// about 190 more for the cells' rows at the end, docs/streaming.md).
pub const HELD_BYTES_PER_NUCLEUS: f64 = 256.0;

/// Share of the budget for what grows with the nuclei: the rest beside
/// [`TILE_SHARE`] and [`BUCKET_SHARE`].
pub const HELD_SHARE: f64 = 1.0 - TILE_SHARE - BUCKET_SHARE;

/// Bytes the in-memory path holds per input row (measured 274–316 at 10M
/// rows, docs/streaming.md; rounded up).
pub const IN_MEMORY_BYTES_PER_ROW: u64 = 320;

/// Share of the available memory that is the default budget: the rest is
/// left to the page cache and to other processes.
pub const DEFAULT_SHARE: f64 = 0.5;

/// The default budget where the available memory is not known (systems
/// other than Linux).
pub const FALLBACK_BUDGET: u64 = 4 << 30;

/// The recompute factor the picked tile size aims at: the smallest tile
/// that fits with at most this factor is taken, larger tiles only cost
/// memory.
pub const TARGET_RECOMPUTE: f64 = 1.15;

/// The tile sizes tried: the default tile size times these powers of two
/// (50 µm to 12.8 mm).
const LADDER: std::ops::RangeInclusive<i32> = -3..=5;

/// Environment variable (builds with the `testing` feature only): the
/// available memory in bytes, instead of `/proc/meminfo`'s, so that tests
/// can make the default budget small.
pub const AVAILABLE_MEMORY_ENV: &str = "SEGGPU_TEST_AVAILABLE_MEMORY";

/// Memory available to a new process in bytes (`MemAvailable` of
/// `/proc/meminfo`; `None` where there is none).
pub fn available_memory() -> Option<u64> {
    if let Some(n) = crate::test_hooks::value(AVAILABLE_MEMORY_ENV) {
        return Some(n);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A memory budget and where it comes from (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Bytes.
    pub bytes: u64,
    /// `--max-memory`, or how the default was made.
    pub source: String,
}

impl Budget {
    /// The budget given with `--max-memory`.
    pub fn given(bytes: u64) -> Self {
        Budget {
            bytes,
            source: "--max-memory".to_string(),
        }
    }

    /// The default budget: [`DEFAULT_SHARE`] of the available memory, or
    /// [`FALLBACK_BUDGET`] where that is not known.
    pub fn default_for_machine() -> Self {
        Self::default_for(available_memory())
    }

    /// The default budget with `available` bytes of available memory.
    fn default_for(available: Option<u64>) -> Self {
        match available {
            Some(available) => Budget {
                bytes: (available as f64 * DEFAULT_SHARE) as u64,
                source: format!(
                    "default: {:.0}% of the {} MB of available memory",
                    DEFAULT_SHARE * 100.0,
                    available / 1_000_000
                ),
            },
            None => Budget {
                bytes: FALLBACK_BUDGET,
                source: "default: the fallback where the available memory is unknown".to_string(),
            },
        }
    }
}

/// The estimated peak of the in-memory path for `rows` input rows, bytes.
pub fn in_memory_footprint(rows: u64) -> u64 {
    rows.saturating_mul(IN_MEMORY_BYTES_PER_ROW)
}

/// The budget of a run without `--max-memory`: the default budget when the
/// estimated in-memory footprint of the transcripts file exceeds it (the
/// bucketed path then runs, with a warning), else `None` (the in-memory
/// path). An input whose rows cannot be estimated runs in memory, where the
/// reader reports what is wrong with it.
pub fn automatic(transcripts: &Path) -> Option<Budget> {
    let rows = crate::io::table::estimated_rows(transcripts).ok()?;
    let budget = Budget::default_for_machine();
    let footprint = in_memory_footprint(rows);
    if footprint <= budget.bytes {
        return None;
    }
    log::warn!(
        "{}: about {rows} rows, about {} MB in memory, more than the default budget of {} MB ({}): running the bucketed path as --max-memory would (docs/streaming.md); give --max-memory to choose the budget",
        transcripts.display(),
        footprint / 1_000_000,
        budget.bytes / 1_000_000,
        budget.source
    );
    Some(budget)
}

/// A tile size tried, with what the transcripts make of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Side of a tile core, µm.
    pub size: f64,
    /// Transcripts owned by the fullest tile.
    pub fullest: u64,
    /// Whether one tile covers the whole extent (no margin is recomputed).
    pub whole: bool,
}

impl Candidate {
    /// Transcripts of the fullest tile with its margin, at its density (a
    /// single tile has nothing beyond its core).
    fn with_margin(&self, margin: f64) -> f64 {
        self.fullest.max(1) as f64 * self.recompute(margin)
    }

    /// Bytes to score the fullest tile.
    fn bytes(&self, margin: f64) -> f64 {
        self.with_margin(margin) * TILE_BYTES_PER_TRANSCRIPT
    }

    /// Work area over core area of an inner tile; 1 for a single tile.
    fn recompute(&self, margin: f64) -> f64 {
        if self.whole {
            1.0
        } else {
            ((self.size + 2.0 * margin) / self.size).powi(2)
        }
    }
}

/// The tile size of a bucketed run and why (the log's `streaming`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileChoice {
    /// Side of a tile core, µm.
    pub tile_size: f64,
    /// `--tile-size`, or the rule that picked it.
    pub tile_size_reason: String,
}

/// The budget of `budget` bytes rounded up to whole MiB, as `--max-memory` takes it.
fn as_flag(bytes: f64) -> String {
    format!("{}M", (bytes / (1u64 << 20) as f64).ceil() as u64)
}

/// Picks the tile size among `candidates` (ascending sizes): of the sizes
/// whose fullest tile with its margin fits the tile share of `budget`, the
/// smallest whose recompute factor is at most [`TARGET_RECOMPUTE`], else
/// the largest. An error, naming `--max-memory` and the budget that would
/// fit, when not even the smallest fits.
pub fn choose_tile_size(candidates: &[Candidate], margin: f64, budget: u64) -> Result<TileChoice> {
    let share = budget as f64 * TILE_SHARE;
    let fitting: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.bytes(margin) <= share)
        .collect();
    let Some(largest) = fitting.last() else {
        let Some(smallest) = candidates.first() else {
            bail!("no tile size to choose from (no kept transcript)");
        };
        bail!(
            "--max-memory {budget} bytes is too small for this sample: even the smallest tile tried, {} µm with its {margin:.1} µm margin, holds about {:.0} transcripts at the densest place, about {} MB to score (half of --max-memory is for that); --max-memory {} or more fits it",
            smallest.size,
            smallest.with_margin(margin),
            (smallest.bytes(margin) / 1e6).ceil(),
            as_flag(smallest.bytes(margin) / TILE_SHARE)
        );
    };
    let (chosen, why) = match fitting
        .iter()
        .find(|c| c.recompute(margin) <= TARGET_RECOMPUTE)
    {
        Some(c) => (c, format!("the smallest tile with a recompute factor of at most {TARGET_RECOMPUTE}")),
        None => (largest, format!("the largest tile that fits (a recompute factor of at most {TARGET_RECOMPUTE} needs a larger --max-memory)")),
    };
    Ok(TileChoice {
        tile_size: chosen.size,
        tile_size_reason: format!(
            "--max-memory: {why}; its fullest tile with the {margin:.1} µm margin holds about {:.0} transcripts, about {} MB of the {} MB tile share; recompute factor about {:.2} ({})",
            chosen.with_margin(margin),
            (chosen.bytes(margin) / 1e6).ceil(),
            (share / 1e6).floor(),
            chosen.recompute(margin),
            if chosen.whole { "one tile" } else { "inner tiles" }
        ),
    })
}

/// Transcripts per core at the tile sizes tried, counted on the grid of the
/// smallest and summed into the larger ones (each a power of two of it,
/// from the same origin).
pub struct Densities {
    /// The sizes tried (the ladder within [`MAX_OVERLAP`]), ascending, and
    /// whether one core covers the extent.
    sizes: Vec<(f64, bool)>,
    /// The grid of the smallest size.
    base: Option<TileGrid>,
    /// Transcripts per core of `base`.
    counts: HashMap<Cell, u64>,
}

impl Densities {
    /// Densities over transcripts whose least and largest x and y are among
    /// `extremes`, with `margin`.
    pub fn new(extremes: &[[f64; 2]], margin: f64) -> Self {
        let mut sizes = Vec::new();
        for k in LADDER {
            let size = defaults::TILE_SIZE * 2f64.powi(k);
            if ((size + 2.0 * margin) / size).powi(2) > MAX_OVERLAP {
                continue;
            }
            let Ok(grid) = TileGrid::covering(extremes, size, margin) else {
                continue;
            };
            let whole = grid.cols == 1 && grid.rows == 1;
            sizes.push((size, whole));
            if whole {
                break;
            }
        }
        let base = sizes
            .first()
            .and_then(|&(size, _)| TileGrid::covering(extremes, size, margin).ok());
        Densities {
            sizes,
            base,
            counts: HashMap::new(),
        }
    }

    /// Counts a transcript at `p` (x, y).
    pub fn add(&mut self, p: [f64; 2]) {
        if let Some(base) = &self.base {
            *self.counts.entry(base.owner(p)).or_default() += 1;
        }
    }

    /// The sizes tried with their fullest tile, ascending.
    pub fn candidates(&self) -> Vec<Candidate> {
        let Some(base) = &self.base else {
            return Vec::new();
        };
        self.sizes
            .iter()
            .map(|&(size, whole)| {
                let factor = (size / base.size).round() as u64;
                let mut per_core: HashMap<Cell, u64> = HashMap::new();
                for (cell, n) in &self.counts {
                    *per_core
                        .entry([cell[0] / factor, cell[1] / factor])
                        .or_default() += n;
                }
                Candidate {
                    size,
                    fullest: per_core.values().copied().max().unwrap_or(0),
                    whole,
                }
            })
            .collect()
    }
}

/// The least and largest x and y of `points` (two points).
pub fn extremes(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let (lo, hi) = crate::tiles::bounds(points);
    vec![lo, hi]
}

/// The tile size of a bucketed run: `given` when `--tile-size` was given or
/// the margin is unbounded (one tile), else picked from the budget over the
/// transcripts `count` feeds into the densities.
pub fn tile_size(
    given: Option<f64>,
    default: f64,
    extremes: &[[f64; 2]],
    margin: f64,
    budget: u64,
    count: impl FnOnce(&mut Densities) -> Result<()>,
) -> Result<TileChoice> {
    if let Some(size) = given {
        return Ok(TileChoice {
            tile_size: size,
            tile_size_reason: "--tile-size".to_string(),
        });
    }
    if !margin.is_finite() {
        return Ok(TileChoice {
            tile_size: default,
            tile_size_reason: "one tile: the margin is unbounded (--no-dist-cap)".to_string(),
        });
    }
    let mut densities = Densities::new(extremes, margin);
    count(&mut densities)?;
    choose_tile_size(&densities.candidates(), margin, budget)
}

/// Transcripts owned by the fullest tile of `grid` among `points`.
pub fn fullest_tile(grid: &TileGrid, points: &[[f64; 2]]) -> u64 {
    let mut per_tile: HashMap<Cell, u64> = HashMap::with_capacity(grid.len());
    for &p in points {
        *per_tile.entry(grid.owner(p)).or_default() += 1;
    }
    per_tile.values().copied().max().unwrap_or(1)
}

/// Checks, before the transcripts are read, that `nuclei` nuclei held for
/// the whole run ([`HELD_BYTES_PER_NUCLEUS`] each) fit the share of `budget`
/// that is theirs ([`HELD_SHARE`]); an error naming `--max-memory` and the
/// budget that fits them otherwise.
pub fn check_nuclei(nuclei: usize, budget: u64) -> Result<()> {
    let bytes = nuclei as f64 * HELD_BYTES_PER_NUCLEUS;
    if bytes > budget as f64 * HELD_SHARE {
        bail!(
            "--max-memory {budget} bytes is too small for the {nuclei} nuclei of the sample: held for the whole run, they take about {} MB (a quarter of --max-memory is for them); --max-memory {} or more fits them",
            (bytes / 1e6).ceil(),
            as_flag(bytes / HELD_SHARE)
        );
    }
    Ok(())
}

/// Tiles per bucket side for `budget` bytes: the largest block whose
/// records with the margin fit its share, at the density of the fullest
/// tile (`fullest` transcripts), beside the next bucket's records loaded
/// ahead (of the same size at most); an error, naming the budget that would
/// fit, when the fullest tile with its margin does not fit its share.
pub fn bucket_side(grid: &TileGrid, margin: f64, fullest: u64, budget: u64) -> Result<u64> {
    let whole = grid.cols.max(grid.rows);
    if !margin.is_finite() {
        // One tile holds everything: there is nothing to bound.
        return Ok(whole);
    }
    let fullest = fullest.max(1) as f64;
    let size = grid.size;
    let tile = fullest * ((size + 2.0 * margin) / size).powi(2);
    let bytes = tile * TILE_BYTES_PER_TRANSCRIPT;
    if bytes > budget as f64 * TILE_SHARE {
        bail!(
            "--max-memory {budget} bytes is too small: the fullest tile of {size} µm with its {margin:.1} µm margin holds about {tile:.0} transcripts here, about {} MB to score (half of --max-memory is for that); --max-memory {} or more fits it, or give a smaller --tile-size (or none: the budget then picks it)",
            (bytes / 1e6).ceil(),
            as_flag(bytes / TILE_SHARE)
        );
    }
    // fullest · ((side·size + 2·margin) / size)² ≤ records, where the
    // share holds the bucket being worked on and the next one loaded ahead.
    let records =
        budget as f64 * BUCKET_SHARE / (BUCKET_BYTES_PER_RECORD + LOADED_AHEAD_BYTES_PER_RECORD);
    let side = ((records / fullest).sqrt() * size - 2.0 * margin) / size;
    Ok((side.floor().max(1.0) as u64).min(whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uniform density of `per_um2` transcripts per µm² over a square of
    /// `extent` µm, at the ladder's sizes, as [`Densities`] would count it.
    fn uniform(per_um2: f64, extent: f64) -> Vec<Candidate> {
        [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0]
            .into_iter()
            .map(|size: f64| Candidate {
                size,
                fullest: (per_um2 * size.min(extent).powi(2)) as u64,
                whole: size > extent,
            })
            .collect()
    }

    #[test]
    fn the_tile_size_grows_with_the_budget() {
        // 0.25 transcripts per µm², a 48 µm margin, a 2 mm wide sample.
        // Tile share = budget / 2; a tile of side s costs
        // 0.25·(s + 96)²·2048 bytes:
        //   s = 200: 0.25·296²·2048 =  44,859,392 bytes (recompute 2.19)
        //   s = 400: 0.25·496²·2048 = 125,960,192 bytes (recompute 1.54)
        //   s = 800: 0.25·896²·2048 = 411,041,792 bytes (recompute 1.25)
        //   s = 1600: 0.25·1696²·2048 = 1,472,724,992 bytes (recompute 1.12)
        let c = uniform(0.25, 2000.0);
        let pick = |budget: u64| choose_tile_size(&c, 48.0, budget).unwrap().tile_size;
        // 300 MB: share 150 MB holds s = 400, not 800.
        assert_eq!(pick(300_000_000), 400.0);
        // 1 GB: share 500 MB holds s = 800, not 1600.
        assert_eq!(pick(1_000_000_000), 800.0);
        // 4 GB: share 2 GB holds s = 1600, the first with recompute ≤ 1.15;
        // 3200 (recompute 1.06) would fit 64 GB but is not needed.
        assert_eq!(pick(4_000_000_000), 1600.0);
        assert_eq!(pick(64_000_000_000), 1600.0);
    }

    #[test]
    fn the_nuclei_must_fit_their_share() {
        // 4096 nuclei at 256 bytes: 1 MiB, a quarter of 4 MiB.
        assert!(check_nuclei(4096, 4 << 20).is_ok());
        let refused = check_nuclei(4097, 4 << 20).unwrap_err().to_string();
        assert!(refused.contains("4097 nuclei"), "{refused}");
        // 4097 · 256 · 4 bytes = 4,195,328 bytes, rounded up to 5 MiB.
        assert!(refused.contains("--max-memory 5M or more"), "{refused}");
        assert!(check_nuclei(4097, 5 << 20).is_ok());
    }

    #[test]
    fn a_sample_smaller_than_a_tile_takes_one_tile() {
        // 300 µm wide: the 400 µm tile covers it, recompute 1 by
        // definition, and costs its 0.25·300² = 22,500 transcripts alone:
        // 46,080,000 bytes, so a 93 MB budget holds it.
        let c = uniform(0.25, 300.0);
        let choice = choose_tile_size(&c, 48.0, 93_000_000).unwrap();
        assert_eq!(choice.tile_size, 400.0);
        assert!(choice.tile_size_reason.contains("one tile"), "{choice:?}");
        // Below that, the 200 µm tile (recompute 2.19, 0.25·296² = 21,904
        // transcripts, 44,859,392 bytes).
        assert_eq!(
            choose_tile_size(&c, 48.0, 92_000_000).unwrap().tile_size,
            200.0
        );
    }

    #[test]
    fn a_budget_below_the_smallest_tile_is_refused_naming_what_fits() {
        // s = 50: 0.25·146²·2048 = 10,913,792 bytes, so the budget must be
        // at least 21,827,584 bytes = 20.8 MiB: 21M.
        let c = uniform(0.25, 2000.0);
        let e = choose_tile_size(&c, 48.0, 20_000_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-memory 21M or more"), "{e}");
        assert!(choose_tile_size(&c, 48.0, 21 << 20).is_ok());
    }

    #[test]
    fn densities_sum_the_smallest_cores_into_the_larger() {
        // Points at the corners of a 1000 µm square and 10 more within the
        // first 50 µm core: the 50 µm core holds 11, the 100…800 µm cores
        // the same 11, the 1600 µm core (one tile) all 14.
        let mut points = vec![[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [1000.0, 1000.0]];
        points.extend((0..10).map(|i| [i as f64, 2.0 * i as f64]));
        let mut d = Densities::new(&extremes(&points), 48.0);
        for &p in &points {
            d.add(p);
        }
        let got: Vec<(f64, u64, bool)> = d
            .candidates()
            .iter()
            .map(|c| (c.size, c.fullest, c.whole))
            .collect();
        assert_eq!(
            got,
            vec![
                (50.0, 11, false),
                (100.0, 11, false),
                (200.0, 11, false),
                (400.0, 11, false),
                (800.0, 11, false),
                (1600.0, 14, true)
            ]
        );
    }

    #[test]
    fn the_default_budget_is_a_share_of_the_available_memory() {
        assert_eq!(
            Budget::default_for(Some(16_000_000_001)).bytes,
            8_000_000_000
        );
        assert_eq!(Budget::default_for(None).bytes, 4 << 30);
        // 10M rows at 320 bytes: 3.2 GB, above the default of a machine
        // with 6 GB available (3 GB), below one with 8 GB (4 GB).
        let footprint = in_memory_footprint(10_000_000);
        assert_eq!(footprint, 3_200_000_000);
        assert!(footprint > Budget::default_for(Some(6_000_000_000)).bytes);
        assert!(footprint <= Budget::default_for(Some(8_000_000_000)).bytes);
    }
}
