//! The one definition of the cells the AnnData, the polygons and the
//! SpatialData store list: the rows of `cells.parquet` (nuclei, then
//! fragments) with at least `max(1, min_transcripts)` transcripts. A
//! nucleus with fewer keeps its transcripts' `segger_cell_id` in the
//! transcripts table but is left out of every per-cell output; fragments
//! have at least `min_transcripts` by construction.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use geo::{Area, Coord, LineString, Polygon};

use super::polygons::{self, CellPolygon, PolygonSource};
use super::CellRow;
use crate::io::{Nuclei, Transcripts};
use crate::pipeline::Segmentation;

/// The output cells and their polygons.
pub struct OutputCells {
    /// Index into `Segmentation::cells` (= `cell_ids`) of every output cell.
    pub index: Vec<usize>,
    /// Polygon of every output cell.
    polygons: Polygons,
    /// Area of every output cell's polygon, µm².
    areas: Vec<f64>,
    /// Polygons per source, indexed by [`source_code`].
    sources: [usize; 3],
    /// Seconds spent on the polygons.
    pub polygon_seconds: f64,
}

/// The polygons of the output cells: held, or spilled to a file (a whole
/// slide's need not fit in memory).
enum Polygons {
    Memory(Vec<CellPolygon>),
    File(PathBuf),
}

/// Output cells per block handed out by [`OutputCells::each_block`], and
/// so per row group of the polygon tables.
pub const POLYGON_BLOCK: usize = 1 << 16;

/// Writes the output cells' polygons to a file as they come: per polygon
/// its source (u8), its vertices (u32) and their x, y (f64), little-endian.
pub struct PolygonWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    areas: Vec<f64>,
    sources: [usize; 3],
}

/// Every polygon source.
const SOURCES: [PolygonSource; 3] = [
    PolygonSource::Transcripts,
    PolygonSource::Nucleus,
    PolygonSource::BoundingBox,
];

/// A source's byte in the polygon file and its place in the counts.
fn source_code(source: PolygonSource) -> u8 {
    match source {
        PolygonSource::Transcripts => 0,
        PolygonSource::Nucleus => 1,
        PolygonSource::BoundingBox => 2,
    }
}

impl PolygonWriter {
    /// Creates `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let out = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(PolygonWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(out),
            areas: Vec::new(),
            sources: [0; 3],
        })
    }

    /// Appends the next output cell's polygon.
    pub fn push(&mut self, polygon: &CellPolygon) -> Result<()> {
        let ring = polygon.polygon.exterior();
        let mut bytes = Vec::with_capacity(5 + 16 * ring.0.len());
        let source = source_code(polygon.source);
        bytes.push(source);
        self.sources[usize::from(source)] += 1;
        bytes.extend_from_slice(&(ring.0.len() as u32).to_le_bytes());
        for c in &ring.0 {
            bytes.extend_from_slice(&c.x.to_le_bytes());
            bytes.extend_from_slice(&c.y.to_le_bytes());
        }
        self.areas.push(polygon.polygon.unsigned_area());
        self.out
            .write_all(&bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The output cells `index` with the polygons written, one per cell.
    pub fn finish(mut self, index: Vec<usize>, polygon_seconds: f64) -> Result<OutputCells> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        anyhow::ensure!(
            self.areas.len() == index.len(),
            "internal: {} polygons for {} output cells",
            self.areas.len(),
            index.len()
        );
        Ok(OutputCells {
            index,
            polygons: Polygons::File(self.path),
            areas: self.areas,
            sources: self.sources,
            polygon_seconds,
        })
    }
}

/// The polygons of a file of [`PolygonWriter`], `block` at a time.
fn each_polygon_block(
    path: &Path,
    n: usize,
    mut block: impl FnMut(usize, &[CellPolygon]) -> Result<()>,
) -> Result<()> {
    let cannot = || format!("cannot read {}", path.display());
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).with_context(cannot)?);
    let mut polygons = Vec::with_capacity(POLYGON_BLOCK.min(n));
    let mut head = [0u8; 5];
    let mut coords = Vec::new();
    for i in 0..n {
        reader.read_exact(&mut head).with_context(cannot)?;
        let Some(source) = SOURCES.into_iter().find(|&s| source_code(s) == head[0]) else {
            bail!("{}: polygon source {} unknown", path.display(), head[0]);
        };
        let vertices = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        coords.resize(16 * vertices, 0);
        reader.read_exact(&mut coords).with_context(cannot)?;
        let word = |a: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(a);
            f64::from_le_bytes(w)
        };
        let ring: Vec<Coord<f64>> = coords
            .chunks_exact(16)
            .map(|c| Coord {
                x: word(&c[..8]),
                y: word(&c[8..]),
            })
            .collect();
        polygons.push(CellPolygon {
            polygon: Polygon::new(LineString(ring), Vec::new()),
            source,
        });
        if polygons.len() == POLYGON_BLOCK || i + 1 == n {
            block(i + 1 - polygons.len(), &polygons)?;
            polygons.clear();
        }
    }
    Ok(())
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
        let cells = OutputCells::held(index, polygons, clock.elapsed().as_secs_f64());
        Ok((cells, members))
    }

    /// The output cells `index` with their polygons, held.
    pub fn held(index: Vec<usize>, polygons: Vec<CellPolygon>, polygon_seconds: f64) -> Self {
        let areas = polygons.iter().map(|p| p.polygon.unsigned_area()).collect();
        let mut sources = [0; 3];
        for p in &polygons {
            sources[usize::from(source_code(p.source))] += 1;
        }
        OutputCells {
            index,
            polygons: Polygons::Memory(polygons),
            areas,
            sources,
            polygon_seconds,
        }
    }

    /// Calls `block(first, polygons)` for consecutive blocks of at most
    /// [`POLYGON_BLOCK`] output cells' polygons, `first` the first's
    /// position, in order; the same blocks whether held or spilled.
    pub fn each_block(
        &self,
        mut block: impl FnMut(usize, &[CellPolygon]) -> Result<()>,
    ) -> Result<()> {
        match &self.polygons {
            Polygons::Memory(polygons) => polygons
                .chunks(POLYGON_BLOCK)
                .enumerate()
                .try_for_each(|(b, part)| block(b * POLYGON_BLOCK, part)),
            Polygons::File(path) => each_polygon_block(path, self.len(), block),
        }
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
        self.areas[i]
    }

    /// How many polygons came from each source, for the log.
    pub fn polygon_sources(&self) -> std::collections::BTreeMap<&'static str, usize> {
        SOURCES
            .into_iter()
            .map(|s| (s.as_str(), self.sources[usize::from(source_code(s))]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A triangle per cell, its vertices depending on the cell (and one
    /// with more vertices), with the three sources in turn.
    fn polygon(i: usize) -> CellPolygon {
        let x = i as f64 * 0.37 + 1e-9 * (i % 7) as f64;
        let mut ring = vec![(x, 0.0), (x + 1.0, 0.5), (x + 0.25, 2.0 + x.sin())];
        if i.is_multiple_of(5) {
            ring.push((x - 0.5, 1.0));
        }
        ring.push(ring[0]);
        CellPolygon {
            polygon: Polygon::new(LineString::from(ring), Vec::new()),
            source: [
                PolygonSource::Transcripts,
                PolygonSource::Nucleus,
                PolygonSource::BoundingBox,
            ][i % 3],
        }
    }

    fn blocks(cells: &OutputCells) -> Vec<(usize, Vec<CellPolygon>)> {
        let mut seen = Vec::new();
        cells
            .each_block(|first, polygons| {
                seen.push((first, polygons.to_vec()));
                Ok(())
            })
            .unwrap();
        seen
    }

    #[test]
    fn spilled_polygons_come_back_in_the_blocks_of_held_ones() {
        let n = 2 * POLYGON_BLOCK + 3;
        let polygons: Vec<CellPolygon> = (0..n).map(polygon).collect();
        let index: Vec<usize> = (0..n).map(|i| 2 * i).collect();
        let held = OutputCells::held(index.clone(), polygons.clone(), 0.0);
        let dir = tempfile::tempdir().unwrap();
        let mut writer = PolygonWriter::create(&dir.path().join("polygons.bin")).unwrap();
        for p in &polygons {
            writer.push(p).unwrap();
        }
        let spilled = writer.finish(index, 0.0).unwrap();
        let (a, b) = (blocks(&held), blocks(&spilled));
        let firsts: Vec<usize> = b.iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, [0, POLYGON_BLOCK, 2 * POLYGON_BLOCK]);
        assert_eq!(a.len(), b.len());
        for ((fa, pa), (fb, pb)) in a.iter().zip(&b) {
            assert_eq!(fa, fb);
            assert_eq!(pa.len(), pb.len());
            for (p, q) in pa.iter().zip(pb) {
                assert_eq!(p.source, q.source);
                assert_eq!(p.polygon, q.polygon, "the vertices' bits come back");
            }
        }
        for i in [0, 1, POLYGON_BLOCK, n - 1] {
            assert_eq!(held.area(i).to_bits(), spilled.area(i).to_bits());
        }
        assert_eq!(held.polygon_sources(), spilled.polygon_sources());
        // Cells 1, 4, 7, … are the nucleus ones.
        assert_eq!(spilled.polygon_sources()["nucleus"], (n + 1) / 3);
    }
}
