//! The one definition of the cells the AnnData, the polygons and the
//! SpatialData store list: the rows of `cells.parquet` (nuclei, then
//! fragments) with at least `max(1, min_transcripts)` transcripts. A
//! nucleus with fewer keeps its transcripts' `segger_cell_id` in the
//! transcripts table but is left out of every per-cell output; fragments
//! have at least `min_transcripts` by construction.

use anyhow::{Context, Result};
use geo::Area;

use super::polygons::{self, CellPolygon, PolygonSource};
use crate::io::{Nuclei, Transcripts};
use crate::pipeline::Segmentation;

/// The output cells, their transcripts and their polygons.
pub struct OutputCells {
    /// Index into `Segmentation::cells` (= `cell_ids`) of every output cell.
    pub index: Vec<usize>,
    /// Input rows of output cell `i`: `rows[offsets[i]..offsets[i + 1]]`,
    /// ascending.
    pub offsets: Vec<usize>,
    /// See `offsets`.
    pub rows: Vec<u32>,
    /// Polygon of every output cell.
    pub polygons: Vec<CellPolygon>,
    /// Seconds spent on the polygons.
    pub polygon_seconds: f64,
}

/// Position of a `Segmentation::cell_ids` entry among the output cells.
pub const NOT_OUTPUT: u32 = u32::MAX;

impl OutputCells {
    /// The output cells of a run with their polygons (computed in parallel).
    pub fn new(
        result: &Segmentation,
        transcripts: &Transcripts,
        nuclei: &Nuclei,
        min_transcripts: usize,
    ) -> Result<Self> {
        let floor = min_transcripts.max(1) as u64;
        let index: Vec<usize> = (0..result.cells.len())
            .filter(|&c| result.cells[c].n_transcripts >= floor)
            .collect();
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
        let mut cells = OutputCells {
            index,
            offsets,
            rows,
            polygons: Vec::new(),
            polygon_seconds: 0.0,
        };
        {
            let clock = std::time::Instant::now();
            let n_nuclei = nuclei.ids.len();
            let found = polygons::cell_polygons(
                cells.len(),
                |i| {
                    cells
                        .members(i)
                        .iter()
                        .map(|&r| [transcripts.x[r as usize], transcripts.y[r as usize]])
                        .collect()
                },
                |i| {
                    let c = cells.index[i];
                    (c < n_nuclei).then(|| &nuclei.polygons[c])
                },
            );
            cells.polygons = found
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    p.with_context(|| {
                        format!(
                            "cell {}: no polygon (no finite transcript position and no nucleus)",
                            result.cell_ids[cells.index[i]]
                        )
                    })
                })
                .collect::<Result<_>>()?;
            cells.polygon_seconds = clock.elapsed().as_secs_f64();
        }
        Ok(cells)
    }

    fn positions(n: usize, index: &[usize]) -> Vec<u32> {
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

    /// Input rows of output cell `i`.
    pub fn members(&self, i: usize) -> &[u32] {
        &self.rows[self.offsets[i]..self.offsets[i + 1]]
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
