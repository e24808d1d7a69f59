//! The per-cell outputs of the flow that reads and writes in batches
//! (`--max-memory`, docs/streaming.md): the cell polygons, the AnnData and
//! the SpatialData store, made from what the last pass hands over row by
//! row instead of from every row held in memory.
//!
//! - Gene counts: per cell a sorted list of (gene, count), and per gene its
//!   kept and filtered transcripts — bounded by cells × genes per cell.
//! - Polygons need every point of a cell: the assigned transcripts'
//!   (cell, x, y) are spilled to files of consecutive cell ranges under
//!   `--tmp-dir`, in input order, and each file's cells get their polygons
//!   after the pass (one file in memory at a time).
//! - The SpatialData points (the transcripts table with the gene as a
//!   categorical) are written batch by batch as the transcripts table is.
//!
//! Everything is made by the same code as on the in-memory path, so the
//! files are byte for byte the same.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;

use super::anndata::{AnnData, CellCounts};
use super::cells::{self, OutputCells};
use super::polygons::CellPolygon;
use super::zarr::ZarrStore;
use super::{CellRow, TableFormat, TableSink};
use crate::io::Nuclei;
use crate::pipeline::Segmentation;

/// Where the per-cell outputs go (staged paths) and what they record.
#[derive(Clone)]
pub struct PerCellOutputs {
    /// `cell_boundaries.parquet` and `cell_boundaries.geojson`.
    pub boundaries: Option<(PathBuf, PathBuf)>,
    /// `cells.anndata.zarr` and `cells.h5ad`.
    pub anndata: Option<(PathBuf, PathBuf)>,
    /// `segmentation.zarr`.
    pub spatialdata: Option<PathBuf>,
    /// `uns["seggpu"]` of the AnnData.
    pub uns: Vec<(String, String)>,
    /// `--min-transcripts` of the run (the output cells have at least
    /// `max(1, min_transcripts)`).
    pub min_transcripts: usize,
    /// Folder for the spilled cell points (`--tmp-dir`).
    pub tmp_dir: PathBuf,
}

/// What the per-cell outputs hold, for the log.
pub struct PerCellFacts {
    /// Output cells.
    pub cells: usize,
    /// Polygons per source.
    pub polygon_sources: BTreeMap<&'static str, usize>,
    /// Seconds spent on the polygons.
    pub polygon_seconds: f64,
}

/// Cells per file of spilled points, unless there are more than
/// [`POINT_FILES`] such files.
const CELLS_PER_FILE: usize = 4096;
/// Environment variable (builds with the `testing` feature only): cells
/// per file of spilled points instead of [`CELLS_PER_FILE`].
#[cfg(feature = "testing")]
pub const CELLS_PER_FILE_ENV: &str = "SEGGPU_TEST_CELLS_PER_FILE";

fn cells_per_file() -> usize {
    #[cfg(feature = "testing")]
    if let Some(n) = std::env::var(CELLS_PER_FILE_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.max(1);
    }
    CELLS_PER_FILE
}

/// Most files of spilled points (all open during the pass).
const POINT_FILES: usize = 256;
/// Bytes of a spilled point: cell (u32), x, y (f64), little-endian.
const POINT_BYTES: usize = 20;

/// The assigned transcripts' (cell, x, y), spilled by cell range.
struct PointSpill {
    dir: PathBuf,
    tmp_dir: PathBuf,
    cells_per_file: usize,
    files: Vec<(PathBuf, BufWriter<std::fs::File>)>,
}

impl PointSpill {
    fn create(tmp_dir: &Path, n_cells: usize) -> Result<Self> {
        let dir = tmp_dir.join(format!(".seggpu-cell-points-{}", std::process::id()));
        if dir.exists() {
            // Left by a killed run whose process id this one got.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {} (--tmp-dir)", dir.display()))?;
        let cells_per_file = cells_per_file().max(n_cells.div_ceil(POINT_FILES));
        let mut spill = PointSpill {
            dir,
            tmp_dir: tmp_dir.to_path_buf(),
            cells_per_file,
            files: Vec::new(),
        };
        for f in 0..n_cells.div_ceil(cells_per_file) {
            let path = spill.dir.join(format!("points-{f}.bin"));
            let file =
                std::fs::File::create(&path).with_context(|| spill.error(&path, "create"))?;
            spill.files.push((path, BufWriter::new(file)));
        }
        Ok(spill)
    }

    fn error(&self, path: &Path, what: &str) -> String {
        format!(
            "cannot {what} the spill file {} (--tmp-dir {}: is it full?)",
            path.display(),
            self.tmp_dir.display()
        )
    }

    fn push(&mut self, cell: u32, x: f64, y: f64) -> Result<()> {
        let mut bytes = [0u8; POINT_BYTES];
        bytes[..4].copy_from_slice(&cell.to_le_bytes());
        bytes[4..12].copy_from_slice(&x.to_le_bytes());
        bytes[12..].copy_from_slice(&y.to_le_bytes());
        let (path, file) = &mut self.files[cell as usize / self.cells_per_file];
        if let Err(e) = file.write_all(&bytes) {
            let path = path.clone();
            return Err(e).with_context(|| self.error(&path, "write"));
        }
        Ok(())
    }

    /// Closes the files; then file `f` holds the points of cells
    /// `f * cells_per_file ..`, in input order.
    fn close(&mut self) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (path, mut file) in std::mem::take(&mut self.files) {
            if let Err(e) = file.flush() {
                return Err(e).with_context(|| self.error(&path, "write"));
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// The points of cells `first..first + n` from `path`, grouped by cell
    /// (input order within a cell).
    fn read_cells(&self, path: &Path, first: usize, n: usize) -> Result<Vec<Vec<[f64; 2]>>> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| self.error(path, "read"))?;
        let mut points = vec![Vec::new(); n];
        for record in bytes.chunks_exact(POINT_BYTES) {
            let word = |a: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&record[a..a + 8]);
                f64::from_le_bytes(w)
            };
            let cell = u32::from_le_bytes([record[0], record[1], record[2], record[3]]) as usize;
            match cell.checked_sub(first).filter(|&c| c < n) {
                Some(c) => points[c].push([word(4), word(12)]),
                None => bail!(
                    "{}: a point of cell {cell} outside the file's cells",
                    path.display()
                ),
            }
        }
        Ok(points)
    }
}

impl Drop for PointSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The SpatialData store while its points are written.
struct PointsTable {
    store: ZarrStore,
    sink: TableSink,
}

/// Running aggregates of the last pass for the per-cell outputs.
pub struct CellAggregator {
    outputs: PerCellOutputs,
    /// Per cell (nuclei, then fragments): (gene, count), genes ascending,
    /// genes numbered as the pass reads them.
    counts: Vec<Vec<(u32, u32)>>,
    /// Per gene (numbered as read): kept transcripts.
    n_kept: Vec<i64>,
    /// Per gene (numbered as read): filtered transcripts.
    n_filtered: Vec<i64>,
    points: PointSpill,
    points_table: Option<PointsTable>,
}

impl CellAggregator {
    /// Aggregates for `n_cells` cells (nuclei, then fragments).
    pub fn new(outputs: &PerCellOutputs, n_cells: usize) -> Result<Self> {
        let points = PointSpill::create(&outputs.tmp_dir, n_cells)?;
        let counts = if outputs.anndata.is_some() || outputs.spatialdata.is_some() {
            vec![Vec::new(); n_cells]
        } else {
            Vec::new()
        };
        Ok(CellAggregator {
            outputs: outputs.clone(),
            counts,
            n_kept: Vec::new(),
            n_filtered: Vec::new(),
            points,
            points_table: None,
        })
    }

    /// Whether the SpatialData points are written ([`Self::write_points`]).
    pub fn writes_points(&self) -> bool {
        self.outputs.spatialdata.is_some()
    }

    /// One input row, in input order: its cell ([`Segmentation::NO_CELL`]
    /// for none), gene (numbered as read), position, and whether it was kept.
    pub fn add(&mut self, cell: u32, gene: u32, x: f64, y: f64, kept: bool) -> Result<()> {
        let g = gene as usize;
        if g >= self.n_kept.len() {
            self.n_kept.resize(g + 1, 0);
            self.n_filtered.resize(g + 1, 0);
        }
        if !kept {
            self.n_filtered[g] += 1;
            return Ok(());
        }
        self.n_kept[g] += 1;
        if cell == Segmentation::NO_CELL {
            return Ok(());
        }
        if let Some(genes) = self.counts.get_mut(cell as usize) {
            match genes.binary_search_by_key(&gene, |&(g, _)| g) {
                Ok(at) => genes[at].1 += 1,
                Err(at) => genes.insert(at, (gene, 1)),
            }
        }
        self.points.push(cell, x, y)
    }

    /// The next rows of the transcripts table (`columns`, as written), with
    /// their genes (`gene`, numbered as read, into `gene_names`): written to
    /// the SpatialData points.
    pub fn write_points(
        &mut self,
        columns: &[(String, ArrayRef)],
        gene: &[u32],
        gene_names: &[String],
    ) -> Result<()> {
        let Some(path) = &self.outputs.spatialdata else {
            return Ok(());
        };
        let columns = super::spatialdata::points_columns(columns.to_vec(), gene, gene_names)?;
        if self.points_table.is_none() {
            let (store, part) =
                super::spatialdata::create(path, &super::spatialdata::column_names(&columns))?;
            let sink = TableSink::create(&part, super::schema_of(&columns), TableFormat::Parquet)?;
            self.points_table = Some(PointsTable { store, sink });
        }
        let Some(table) = self.points_table.as_mut() else {
            bail!("internal: no SpatialData points to write");
        };
        let schema = super::schema_of(&columns);
        let batch = RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect())
            .with_context(|| format!("cannot assemble the points of {}", path.display()))?;
        table.sink.write(&batch)
    }

    /// After the pass: the polygons of the output cells, then every
    /// per-cell output. `rows` are the rows of `cells.parquet`;
    /// `gene_names` are the genes as numbered by the pass.
    pub fn finish(
        mut self,
        rows: &[CellRow],
        nuclei: &Nuclei,
        gene_names: Vec<String>,
    ) -> Result<PerCellFacts> {
        let index = cells::output_index(rows, self.outputs.min_transcripts);
        let clock = std::time::Instant::now();
        let polygons = self.polygons(rows, nuclei, &index)?;
        let cells = OutputCells {
            index,
            polygons,
            polygon_seconds: clock.elapsed().as_secs_f64(),
        };
        if let Some((parquet, geojson)) = &self.outputs.boundaries {
            super::boundaries::write_geoparquet(parquet, rows, &cells)?;
            super::boundaries::write_geojson(geojson, rows, &cells)?;
        }
        if self.outputs.anndata.is_some() || self.outputs.spatialdata.is_some() {
            let table = self.table(rows, &cells, gene_names)?;
            if let Some((zarr, h5ad)) = &self.outputs.anndata {
                let mut store = ZarrStore::create(zarr, serde_json::json!({}))?;
                table.write_to(&mut store, "", serde_json::json!({}))?;
                let mut file = super::h5ad::H5adFile::new();
                table.write_to(&mut file, "", serde_json::json!({}))?;
                file.write(h5ad)?;
            }
            if let Some(points) = self.points_table.take() {
                points.sink.finish()?;
                super::spatialdata::finish(points.store, rows, &cells, &table)?;
            } else if self.outputs.spatialdata.is_some() {
                bail!("internal: the SpatialData points were never written");
            }
        }
        Ok(PerCellFacts {
            cells: cells.len(),
            polygon_sources: cells.polygon_sources(),
            polygon_seconds: cells.polygon_seconds,
        })
    }

    /// The polygons of the output cells `index`, a file of points at a time.
    fn polygons(
        &mut self,
        rows: &[CellRow],
        nuclei: &Nuclei,
        index: &[usize],
    ) -> Result<Vec<CellPolygon>> {
        let files = self.points.close()?;
        let per_file = self.points.cells_per_file;
        let n_nuclei = nuclei.ids.len();
        let mut polygons = Vec::with_capacity(index.len());
        let mut at = 0;
        for (f, path) in files.iter().enumerate() {
            let first = f * per_file;
            let n = per_file.min(rows.len() - first);
            let end = at + index[at..].partition_point(|&c| c < first + n);
            let points = self.points.read_cells(path, first, n)?;
            let here = &index[at..end];
            polygons.extend(cells::polygons_of(
                here.len(),
                |i| points[here[i] - first].clone(),
                |i| (here[i] < n_nuclei).then(|| &nuclei.polygons[here[i]]),
                |i| rows[here[i]].id.as_str(),
            )?);
            at = end;
        }
        Ok(polygons)
    }

    /// The AnnData, genes sorted by name as the in-memory reader numbers them.
    fn table(
        &mut self,
        rows: &[CellRow],
        cells: &OutputCells,
        gene_names: Vec<String>,
    ) -> Result<AnnData> {
        let n_genes = gene_names.len();
        let mut order: Vec<usize> = (0..n_genes).collect();
        order.sort_by(|&a, &b| gene_names[a].cmp(&gene_names[b]));
        let mut sorted = vec![0u32; n_genes];
        for (new, &old) in order.iter().enumerate() {
            sorted[old] = new as u32;
        }
        let by_name = |per_gene: &[i64]| -> Vec<i64> {
            order
                .iter()
                .map(|&old| per_gene.get(old).copied().unwrap_or(0))
                .collect()
        };
        let n_kept = by_name(&self.n_kept);
        let n_filtered = by_name(&self.n_filtered);
        let mut counts = CellCounts::new(n_genes);
        let mut genes: Vec<(u32, u64)> = Vec::new();
        for &c in &cells.index {
            genes.clear();
            genes.extend(
                std::mem::take(&mut self.counts[c])
                    .into_iter()
                    .map(|(g, n)| (sorted[g as usize], u64::from(n))),
            );
            genes.sort_unstable();
            counts.push_cell(genes.iter().copied());
        }
        let var_names = order.iter().map(|&old| gene_names[old].clone()).collect();
        Ok(AnnData::assemble(
            rows,
            cells,
            var_names,
            counts,
            n_kept,
            n_filtered,
            std::mem::take(&mut self.outputs.uns),
        ))
    }
}
