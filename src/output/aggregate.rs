//! The per-cell outputs of the flow that reads and writes in batches
//! (`--max-memory`, docs/streaming.md): the cell polygons, the AnnData, the
//! SpatialData store and the report, made from what the last pass hands
//! over row by row instead of from every row held in memory.
//!
//! - Polygons and gene counts need every transcript of a cell: the
//!   assigned transcripts' (cell, x, y, gene) are spilled to files of
//!   consecutive cell ranges under `--tmp-dir`
//!   (`.seggpu-cell-points-<hash of OUT>/`), in input order, and each
//!   file's cells get their polygons and counts after the pass (one file in
//!   memory at a time). The counts (X of the AnnData) go to files there as
//!   well, which the AnnData writers copy a block at a time; per gene the
//!   kept and filtered transcripts are counted in the pass.
//! - The SpatialData points (the transcripts table with the gene as a
//!   categorical) are written batch by batch as the transcripts table is.
//! - The report reads its rows (position, gene, assignment, score: 25
//!   bytes each) from a file under `--tmp-dir`, once per statistic.
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
use super::cells::{self, OutputCells, PolygonWriter};
use super::html_report::{
    self, Outlines, ReportData, ReportRow, ReportRows, RowFile, RowFileWriter,
};
use super::xenium_ranger::{self, AssignmentWriter};
use super::zarr::ZarrStore;
use super::{CellRow, TableFormat, TableSink};
use crate::io::scratch::ScratchDir;
use crate::io::Nuclei;
use crate::pipeline::{Assignment, SegmentParams, Segmentation, Summary};

/// Where the per-cell outputs go (staged paths) and what they record.
#[derive(Clone)]
pub struct PerCellOutputs {
    /// `cell_boundaries.parquet` and `cell_boundaries.geojson`.
    pub boundaries: Option<(PathBuf, PathBuf)>,
    /// `cells.anndata.zarr` and `cells.h5ad`.
    pub anndata: Option<(PathBuf, PathBuf)>,
    /// `segmentation.zarr`.
    pub spatialdata: Option<PathBuf>,
    /// Whether the report is written ([`PendingReport`]).
    pub report: bool,
    /// `uns["seggpu"]` of the AnnData.
    pub uns: Vec<(String, String)>,
    /// `--min-transcripts` of the run (the output cells have at least
    /// `max(1, min_transcripts)`).
    pub min_transcripts: usize,
    /// Folder for the spilled cell points and report rows (`--tmp-dir`).
    pub tmp_dir: PathBuf,
    /// The output folder, naming the spill folder.
    pub out: PathBuf,
    /// `xenium_ranger/` (`--xenium-ranger`).
    pub xenium_ranger: Option<xenium_ranger::Folder>,
}

/// What the per-cell outputs hold, for the log.
pub struct PerCellFacts {
    /// Output cells.
    pub cells: usize,
    /// Polygons per source, when polygons were made.
    pub polygon_sources: Option<BTreeMap<&'static str, usize>>,
    /// Seconds spent on the polygons.
    pub polygon_seconds: f64,
    /// The report, made once the run's summary is known.
    pub report: Option<PendingReport>,
}

/// A row of the last pass, as handed to [`CellAggregator::add`].
#[derive(Debug, Clone, Copy)]
pub struct WrittenRow {
    /// Its cell ([`Segmentation::NO_CELL`] for none).
    pub cell: u32,
    /// Its gene, numbered as the pass reads them.
    pub gene: u32,
    /// x, µm.
    pub x: f64,
    /// y, µm.
    pub y: f64,
    /// What became of it.
    pub assignment: Assignment,
    /// Best score, NaN without candidate.
    pub score: f32,
}

/// The folder under `--tmp-dir` for the spilled points and report rows.
type Scratch = ScratchDir;

/// Prefix of [`Scratch`]'s name.
const SCRATCH_PREFIX: &str = ".seggpu-cell-points-";

/// The report's rows and everything else it shows but the summary and the
/// stage seconds, which are known only at the end of the run.
pub struct PendingReport {
    rows: RowFile,
    gene_names: Vec<String>,
    cells: Vec<CellRow>,
    outlines: PendingOutlines,
    // Holds the rows' and the polygons' files until the report is written.
    _scratch: Scratch,
}

/// What the report draws: the output cells' polygons, or (without them)
/// the nuclei's outer rings.
enum PendingOutlines {
    Cells(OutputCells),
    Nuclei(Vec<Vec<[f64; 2]>>),
}

impl PendingReport {
    /// Writes `segmentation_report.html` to `path`.
    pub fn write(
        &self,
        path: &Path,
        summary: &Summary,
        params: &SegmentParams,
        command_line: &[String],
        stage_seconds: &[(&'static str, f64)],
    ) -> Result<()> {
        let data = ReportData::from_parts(
            summary,
            ReportRows::File(&self.rows),
            &self.gene_names,
            &self.cells,
            params,
            command_line,
            stage_seconds,
            Some(match &self.outlines {
                PendingOutlines::Cells(cells) => (Outlines::Cells(cells), "cell polygons"),
                PendingOutlines::Nuclei(rings) => (Outlines::Rings(rings), "nucleus polygons"),
            }),
        )?;
        html_report::write(path, &data)
    }
}

/// Cells per file of spilled points, unless there are more than
/// [`POINT_FILES`] such files.
const CELLS_PER_FILE: usize = 4096;
/// Environment variable (builds with the `testing` feature only): cells
/// per file of spilled points instead of [`CELLS_PER_FILE`].
pub const CELLS_PER_FILE_ENV: &str = "SEGGPU_TEST_CELLS_PER_FILE";

fn cells_per_file() -> usize {
    crate::test_hooks::value(CELLS_PER_FILE_ENV).map_or(CELLS_PER_FILE, |n: usize| n.max(1))
}

/// Most files of spilled points (all open during the pass).
const POINT_FILES: usize = 256;
/// Bytes of a spilled point: cell (u32), x, y (f64), gene (u32),
/// little-endian.
const POINT_BYTES: usize = 24;

/// The assigned transcripts' (cell, x, y, gene), spilled by cell range.
struct PointSpill {
    cells_per_file: usize,
    files: Vec<(PathBuf, BufWriter<std::fs::File>)>,
}

impl PointSpill {
    fn create(scratch: &Scratch, n_cells: usize) -> Result<Self> {
        let cells_per_file = cells_per_file().max(n_cells.div_ceil(POINT_FILES));
        let mut files = Vec::new();
        for f in 0..n_cells.div_ceil(cells_per_file) {
            let path = scratch.dir.join(format!("points-{f}.bin"));
            let file =
                std::fs::File::create(&path).with_context(|| scratch.error(&path, "create"))?;
            files.push((path, BufWriter::new(file)));
        }
        Ok(PointSpill {
            cells_per_file,
            files,
        })
    }

    fn push(&mut self, scratch: &Scratch, cell: u32, x: f64, y: f64, gene: u32) -> Result<()> {
        let mut bytes = [0u8; POINT_BYTES];
        bytes[..4].copy_from_slice(&cell.to_le_bytes());
        bytes[4..12].copy_from_slice(&x.to_le_bytes());
        bytes[12..20].copy_from_slice(&y.to_le_bytes());
        bytes[20..].copy_from_slice(&gene.to_le_bytes());
        let (path, file) = &mut self.files[cell as usize / self.cells_per_file];
        file.write_all(&bytes)
            .with_context(|| scratch.error(path, "write"))
    }

    /// Closes the files; then file `f` holds the points of cells
    /// `f * cells_per_file ..`, in input order.
    fn close(&mut self, scratch: &Scratch) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (path, mut file) in std::mem::take(&mut self.files) {
            file.flush()
                .with_context(|| scratch.error(&path, "write"))?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// The transcripts of one file of cells: per cell their positions and
/// genes, in input order.
struct FileCells {
    points: Vec<Vec<[f64; 2]>>,
    genes: Vec<Vec<u32>>,
}

/// The points of cells `first..first + n` from `path`, grouped by cell
/// (input order within a cell).
fn read_cells(scratch: &Scratch, path: &Path, first: usize, n: usize) -> Result<FileCells> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| scratch.error(path, "read"))?;
    let mut points = vec![Vec::new(); n];
    let mut genes = vec![Vec::new(); n];
    for record in bytes.chunks_exact(POINT_BYTES) {
        let word = |a: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&record[a..a + 8]);
            f64::from_le_bytes(w)
        };
        let cell = u32::from_le_bytes([record[0], record[1], record[2], record[3]]) as usize;
        let gene = u32::from_le_bytes([record[20], record[21], record[22], record[23]]);
        match cell.checked_sub(first).filter(|&c| c < n) {
            Some(c) => {
                points[c].push([word(4), word(12)]);
                genes[c].push(gene);
            }
            None => bail!(
                "{}: a point of cell {cell} outside the file's cells",
                path.display()
            ),
        }
    }
    Ok(FileCells { points, genes })
}

/// The SpatialData store while its points are written.
struct PointsTable {
    store: ZarrStore,
    sink: TableSink,
}

/// Running aggregates of the last pass for the per-cell outputs.
pub struct CellAggregator {
    outputs: PerCellOutputs,
    /// Per gene (numbered as read): kept transcripts.
    n_kept: Vec<i64>,
    /// Per gene (numbered as read): filtered transcripts.
    n_filtered: Vec<i64>,
    scratch: Scratch,
    /// When polygons are made.
    points: Option<PointSpill>,
    points_table: Option<PointsTable>,
    /// When the report is made.
    report_rows: Option<RowFileWriter>,
    /// `--xenium-ranger`'s assignment file, once the output cells are known
    /// ([`Self::start_assignment`]).
    assignment: Option<AssignmentWriter>,
}

impl CellAggregator {
    /// Aggregates for `n_cells` cells (nuclei, then fragments).
    pub fn new(outputs: &PerCellOutputs, n_cells: usize) -> Result<Self> {
        let scratch = Scratch::create(SCRATCH_PREFIX, &outputs.tmp_dir, &outputs.out)?;
        let table = outputs.anndata.is_some() || outputs.spatialdata.is_some();
        let points = (table || outputs.boundaries.is_some() || outputs.xenium_ranger.is_some())
            .then(|| PointSpill::create(&scratch, n_cells))
            .transpose()?;
        let report_rows = outputs
            .report
            .then(|| RowFileWriter::create(&scratch.dir.join("report-rows.bin")))
            .transpose()?;
        Ok(CellAggregator {
            outputs: outputs.clone(),
            n_kept: Vec::new(),
            n_filtered: Vec::new(),
            scratch,
            points,
            points_table: None,
            report_rows,
            assignment: None,
        })
    }

    /// With `--xenium-ranger`: creates `transcript_assignment.csv` for the
    /// cells' transcripts (nuclei, then fragments) counted before the pass,
    /// which decide the output cells and so their numbers.
    pub fn start_assignment(&mut self, transcripts_per_cell: &[u64]) -> Result<()> {
        let Some(folder) = &self.outputs.xenium_ranger else {
            return Ok(());
        };
        let floor = self.outputs.min_transcripts.max(1) as u64;
        let index: Vec<usize> = (0..transcripts_per_cell.len())
            .filter(|&c| transcripts_per_cell[c] >= floor)
            .collect();
        let positions = OutputCells::positions(transcripts_per_cell.len(), &index);
        self.assignment = Some(AssignmentWriter::create(folder, positions)?);
        Ok(())
    }

    /// Whether [`Self::write_assignment`] writes rows.
    pub fn writes_assignment(&self) -> bool {
        self.assignment.is_some()
    }

    /// The next rows' passthrough columns and cells, for `--xenium-ranger`'s
    /// assignment file (nothing without it).
    pub fn write_assignment(&mut self, columns: &[(String, ArrayRef)], cell: &[u32]) -> Result<()> {
        match self.assignment.as_mut() {
            Some(assignment) => assignment.write(columns, cell),
            None => Ok(()),
        }
    }

    /// Whether the SpatialData points are written ([`Self::write_points`]).
    pub fn writes_points(&self) -> bool {
        self.outputs.spatialdata.is_some()
    }

    /// The next input row, in input order.
    pub fn add(&mut self, row: WrittenRow) -> Result<()> {
        if let Some(rows) = self.report_rows.as_mut() {
            rows.push(ReportRow {
                x: row.x,
                y: row.y,
                gene: row.gene,
                assignment: row.assignment,
                score: row.score,
            })?;
        }
        let (gene, cell) = (row.gene, row.cell);
        let g = gene as usize;
        if g >= self.n_kept.len() {
            self.n_kept.resize(g + 1, 0);
            self.n_filtered.resize(g + 1, 0);
        }
        if row.assignment == Assignment::Filtered {
            self.n_filtered[g] += 1;
            return Ok(());
        }
        self.n_kept[g] += 1;
        if cell == Segmentation::NO_CELL {
            return Ok(());
        }
        match self.points.as_mut() {
            Some(points) => points.push(&self.scratch, cell, row.x, row.y, gene),
            None => Ok(()),
        }
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
        rows: Vec<CellRow>,
        nuclei: &Nuclei,
        gene_names: Vec<String>,
    ) -> Result<PerCellFacts> {
        let index = cells::output_index(&rows, self.outputs.min_transcripts);
        // Genes sorted by name, as the in-memory reader numbers them.
        let mut order: Vec<usize> = (0..gene_names.len()).collect();
        order.sort_by(|&a, &b| gene_names[a].cmp(&gene_names[b]));
        let mut sorted = vec![0u32; gene_names.len()];
        for (new, &old) in order.iter().enumerate() {
            sorted[old] = new as u32;
        }
        let var_names: Vec<String> = order.iter().map(|&old| gene_names[old].clone()).collect();
        let wants_table = self.outputs.anndata.is_some() || self.outputs.spatialdata.is_some();
        let mut counts = wants_table
            .then(|| CellCounts::spilled(var_names.len(), &self.scratch.dir))
            .transpose()
            .with_context(|| self.scratch.error(&self.scratch.dir, "create"))?;
        let clock = std::time::Instant::now();
        let cells = match self.points.take() {
            Some(mut points) => {
                let polygons = self.polygons_and_counts(
                    &mut points,
                    &rows,
                    nuclei,
                    &index,
                    &sorted,
                    counts.as_mut(),
                )?;
                let cells = polygons
                    .finish(index, clock.elapsed().as_secs_f64())
                    .with_context(|| self.scratch.error(&self.scratch.dir, "write"))?;
                Some(cells)
            }
            None => None,
        };
        if let (Some((parquet, geojson)), Some(cells)) = (&self.outputs.boundaries, &cells) {
            super::boundaries::write_geoparquet(parquet, &rows, cells)?;
            super::boundaries::write_geojson(geojson, &rows, cells)?;
        }
        if let (Some(counts), Some(cells)) = (counts, &cells) {
            let table = self.table(&rows, cells, counts, var_names.clone(), &order)?;
            if let Some((zarr, h5ad)) = &self.outputs.anndata {
                let mut store = ZarrStore::create(zarr, serde_json::json!({}))?;
                table.write_to(&mut store, "", serde_json::json!({}))?;
                let mut file = super::h5ad::H5adFile::new();
                table.write_to(&mut file, "", serde_json::json!({}))?;
                file.write(h5ad)?;
            }
            if let Some(points) = self.points_table.take() {
                points.sink.finish()?;
                super::spatialdata::finish(points.store, &rows, cells, &table)?;
            } else if self.outputs.spatialdata.is_some() {
                bail!("internal: the SpatialData points were never written");
            }
        }
        if let Some(folder) = &self.outputs.xenium_ranger {
            let (Some(assignment), Some(cells)) = (self.assignment.take(), &cells) else {
                bail!("internal: the Xenium Ranger files were not started");
            };
            // The output cells counted before the pass are those of the pass.
            anyhow::ensure!(
                assignment.numbers(rows.len(), cells),
                "internal: the cells counted before the last pass differ from its cells"
            );
            let low = assignment.finish()?;
            xenium_ranger::finish(folder, &rows, cells, low)?;
        }
        let n_cells = cells.as_ref().map_or(0, OutputCells::len);
        let polygon_sources = cells.as_ref().map(OutputCells::polygon_sources);
        let polygon_seconds = cells.as_ref().map_or(0.0, |c| c.polygon_seconds);
        let report = match self.report_rows.take() {
            Some(writer) => {
                let rows_file = writer.finish(sorted)?;
                let outlines = match cells {
                    Some(cells) => PendingOutlines::Cells(cells),
                    None => PendingOutlines::Nuclei(html_report::nucleus_rings(nuclei)?),
                };
                Some(PendingReport {
                    rows: rows_file,
                    gene_names: var_names,
                    cells: rows,
                    outlines,
                    _scratch: self.scratch,
                })
            }
            None => None,
        };
        Ok(PerCellFacts {
            cells: n_cells,
            polygon_sources,
            polygon_seconds,
            report,
        })
    }

    /// The polygons of the output cells `index`, a file of points at a
    /// time, and their gene `counts` when wanted (`sorted[g]`: gene `g`'s
    /// column).
    fn polygons_and_counts(
        &self,
        points: &mut PointSpill,
        rows: &[CellRow],
        nuclei: &Nuclei,
        index: &[usize],
        sorted: &[u32],
        mut counts: Option<&mut CellCounts>,
    ) -> Result<PolygonWriter> {
        let files = points.close(&self.scratch)?;
        let per_file = points.cells_per_file;
        let n_nuclei = nuclei.ids.len();
        let spilled = |what| self.scratch.error(&self.scratch.dir, what);
        let mut polygons = PolygonWriter::create(&self.scratch.dir.join("polygons.bin"))
            .with_context(|| spilled("create"))?;
        let mut at = 0;
        for (f, path) in files.iter().enumerate() {
            let first = f * per_file;
            let n = per_file.min(rows.len() - first);
            let end = at + index[at..].partition_point(|&c| c < first + n);
            let file = read_cells(&self.scratch, path, first, n)?;
            // The nuclei among the file's cells (read back when spilled).
            let nucleus_polygons =
                nuclei.polygons_in(first.min(n_nuclei)..(first + n).min(n_nuclei))?;
            let here = &index[at..end];
            if let Some(counts) = counts.as_mut() {
                let mut genes: Vec<u32> = Vec::new();
                for &c in here {
                    genes.clear();
                    genes.extend(file.genes[c - first].iter().map(|&g| sorted[g as usize]));
                    genes.sort_unstable();
                    counts
                        .push_cell(
                            genes
                                .chunk_by(|a, b| a == b)
                                .map(|run| (run[0], run.len() as u64)),
                        )
                        .with_context(|| spilled("write"))?;
                }
            }
            for polygon in cells::polygons_of(
                here.len(),
                |i| file.points[here[i] - first].clone(),
                |i| (here[i] < n_nuclei).then(|| &nucleus_polygons[here[i] - first]),
                |i| rows[here[i]].id.as_str(),
            )? {
                polygons.push(&polygon).with_context(|| spilled("write"))?;
            }
            at = end;
        }
        Ok(polygons)
    }

    /// The AnnData of the output cells with their `counts`; `order[new]`
    /// is the gene numbered `new` among `var_names` (sorted by name).
    fn table(
        &mut self,
        rows: &[CellRow],
        cells: &OutputCells,
        counts: CellCounts,
        var_names: Vec<String>,
        order: &[usize],
    ) -> Result<AnnData> {
        let by_name = |per_gene: &[i64]| -> Vec<i64> {
            order
                .iter()
                .map(|&old| per_gene.get(old).copied().unwrap_or(0))
                .collect()
        };
        let n_kept = by_name(&self.n_kept);
        let n_filtered = by_name(&self.n_filtered);
        AnnData::assemble(
            rows,
            cells,
            var_names,
            counts,
            n_kept,
            n_filtered,
            std::mem::take(&mut self.outputs.uns),
        )
    }
}
