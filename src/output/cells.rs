//! The one definition of the cells the AnnData, the polygons and the
//! SpatialData store list: the rows of `cells.parquet` (nuclei, then
//! fragments) with at least `max(1, min_transcripts)` transcripts. A
//! nucleus with fewer keeps its transcripts' `segger_cell_id` in the
//! transcripts table but is left out of every per-cell output; fragments
//! have at least `min_transcripts` by construction.

use anyhow::{Context, Result};
use geo::{Area, Polygon};

use super::polygons::{self, CellPolygon, PolygonSource};
use super::CellRow;
use crate::io::{Nuclei, Transcripts};
use crate::pipeline::Segmentation;

/// The output cells and their polygons.
pub struct OutputCells {
    /// Index into `Segmentation::cells` (= `cell_ids`) of every output cell.
    pub index: Vec<usize>,
    /// Polygon of every output cell.
    pub polygons: Vec<CellPolygon>,
    /// Seconds spent on the polygons.
    pub polygon_seconds: f64,
}

/// The input rows of every output cell (the in-memory path only: the
/// batched flow never holds them).
pub struct CellMembers {
    /// Input rows of output cell `i`: `rows[offsets[i]..offsets[i + 1]]`,
    /// ascending.
    offsets: Vec<usize>,
    rows: Vec<u32>,
}

impl CellMembers {
    /// Input rows of output cell `i`, ascending.
    pub fn members(&self, i: usize) -> &[u32] {
        &self.rows[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Position of a `Segmentation::cell_ids` entry among the output cells.
pub const NOT_OUTPUT: u32 = u32::MAX;

/// Indices (into the cells of `cells.parquet`) of the output cells: those
/// with at least `max(1, min_transcripts)` transcripts.
pub fn output_index(rows: &[CellRow], min_transcripts: usize) -> Vec<usize> {
    let floor = min_transcripts.max(1) as u64;
    (0..rows.len())
        .filter(|&c| rows[c].n_transcripts >= floor)
        .collect()
}

/// The polygons of output cells `0..n` (in parallel): `points(i)` gives
/// cell `i`'s transcript positions in input order, `nucleus(i)` its nucleus
/// polygon, `id(i)` its id for the error of a cell without any.
pub fn polygons_of<'a>(
    n: usize,
    points: impl Fn(usize) -> Vec<[f64; 2]> + Sync,
    nucleus: impl Fn(usize) -> Option<&'a Polygon<f64>> + Sync,
    id: impl Fn(usize) -> &'a str,
) -> Result<Vec<CellPolygon>> {
    polygons::cell_polygons(n, points, nucleus)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.with_context(|| {
                format!(
                    "cell {}: no polygon (no finite transcript position and no nucleus)",
                    id(i)
                )
            })
        })
        .collect()
}

impl OutputCells {
    /// The output cells of a run with their polygons (computed in
    /// parallel) and their input rows.
    pub fn new(
        result: &Segmentation,
        transcripts: &Transcripts,
        nuclei: &Nuclei,
        min_transcripts: usize,
    ) -> Result<(Self, CellMembers)> {
        let index = output_index(&result.cells, min_transcripts);
        let position = Self::positions(result.cell_ids.len(), &index);
        let mut offsets = vec![0usize; index.len() + 1];
        for &c in &result.cell {
            if c != Segmentation::NO_CELL && position[c as usize] != NOT_OUTPUT {
                offsets[position[c as usize] as usize + 1] += 1;
            }
        }
        for i in 0..index.len() {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut rows = vec![0u32; offsets[index.len()]];
        for (r, &c) in result.cell.iter().enumerate() {
            if c != Segmentation::NO_CELL && position[c as usize] != NOT_OUTPUT {
                let p = position[c as usize] as usize;
                rows[fill[p]] = r as u32;
                fill[p] += 1;
            }
        }
        let members = CellMembers { offsets, rows };
        let clock = std::time::Instant::now();
        let n_nuclei = nuclei.ids.len();
        let polygons = polygons_of(
            index.len(),
            |i| {
                members
                    .members(i)
                    .iter()
                    .map(|&r| [transcripts.x[r as usize], transcripts.y[r as usize]])
                    .collect()
            },
            |i| {
                let c = index[i];
                (c < n_nuclei).then(|| &nuclei.polygons[c])
            },
            |i| result.cell_ids[index[i]].as_str(),
        )?;
        let cells = OutputCells {
            index,
            polygons,
            polygon_seconds: clock.elapsed().as_secs_f64(),
        };
        Ok((cells, members))
    }

    /// Position among the output cells of each of the `n` cells (or [`NOT_OUTPUT`]).
    pub fn positions(n: usize, index: &[usize]) -> Vec<u32> {
        let mut position = vec![NOT_OUTPUT; n];
        for (i, &c) in index.iter().enumerate() {
            position[c] = i as u32;
        }
        position
    }

    /// Number of output cells.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Area of output cell `i`'s polygon, µm².
    pub fn area(&self, i: usize) -> f64 {
        self.polygons[i].polygon.unsigned_area()
    }

    /// How many polygons came from each source, for the log.
    pub fn polygon_sources(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for source in [
            PolygonSource::Transcripts,
            PolygonSource::Nucleus,
            PolygonSource::BoundingBox,
        ] {
            counts.insert(
                source.as_str(),
                self.polygons.iter().filter(|p| p.source == source).count(),
            );
        }
        counts
    }
}
