//! Outputs (docs/contract.md §11): the transcripts and cells tables (parquet
//! or CSV), cell polygons (GeoParquet and GeoJSON), the AnnData (h5ad and zarr) and the
//! SpatialData store, the Xenium Ranger import files (`--xenium-ranger`) and
//! `segmentation_log.json`, written under temporary
//! names and renamed into place only when everything succeeded.
//!
//! Every output that lists cells lists the same ones ([`cells::OutputCells`]).

use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, Float32Array, Float64Array, StringArray, UInt64Array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

pub mod aggregate;
pub mod anndata;
pub mod boundaries;
pub mod cells;
pub mod h5ad;
pub mod html_report;
pub mod polygons;
pub mod spatialdata;
pub mod xenium_ranger;
pub mod zarr;

use crate::io::FilterReason;
use crate::pipeline::Segmentation;
use crate::staging::StagedSet;

/// File names of the outputs (the tables with `--table-format parquet`).
pub const TRANSCRIPTS_FILE: &str = "segger_transcripts.parquet";
/// Per-cell table.
pub const CELLS_FILE: &str = "cells.parquet";
/// Cell polygons, GeoParquet 1.1.
pub const BOUNDARIES_FILE: &str = "cell_boundaries.parquet";
/// Cell polygons, GeoJSON.
pub const BOUNDARIES_GEOJSON_FILE: &str = "cell_boundaries.geojson";
/// The AnnData (zarr).
pub const ANNDATA_FILE: &str = "cells.anndata.zarr";
/// The AnnData (HDF5).
pub const H5AD_FILE: &str = "cells.h5ad";
/// The SpatialData store.
pub const SPATIALDATA_FILE: &str = "segmentation.zarr";
/// Run log.
pub const LOG_FILE: &str = "segmentation_log.json";

/// A folder of outputs being written: every output (a file, or a folder
/// such as a `.zarr` store) is staged in the folder's staging area and all
/// move to their final names in `commit` ([`StagedSet`]: one run at a time
/// per folder, stale staging of dead runs removed, nothing left by a failed
/// run).
pub struct OutputDir {
    set: StagedSet,
}

impl OutputDir {
    /// Creates `dir` (when needed) and takes it for this run, failing early
    /// with a clear message when it cannot be written or another run holds it.
    pub fn create(dir: &Path) -> Result<Self> {
        Ok(Self {
            set: StagedSet::create(dir)?,
        })
    }

    /// Where to write output `name` (a file, or a folder the writer creates)
    /// before commit.
    pub fn staged(&mut self, name: &str) -> Result<PathBuf> {
        self.set.staged(name)
    }

    /// Moves every staged output to its final name.
    pub fn commit(self) -> Result<()> {
        self.set.commit()
    }
}

/// File format of the transcripts and cells tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Apache Parquet (zstd).
    Parquet,
    /// Comma-separated text with a header; nulls are empty fields.
    Csv,
}

impl TableFormat {
    /// `name` with this format's extension in place of `.parquet`.
    pub fn file_name(self, parquet_name: &str) -> String {
        match self {
            TableFormat::Parquet => parquet_name.to_string(),
            TableFormat::Csv => format!("{}.csv", parquet_name.trim_end_matches(".parquet")),
        }
    }
}

/// One output `segment` can write (`--outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// `segger_transcripts.parquet` (or `.csv`).
    Transcripts,
    /// `cells.parquet` (or `.csv`).
    Cells,
    /// `cell_boundaries.parquet` (GeoParquet) and `cell_boundaries.geojson`.
    Polygons,
    /// `cells.h5ad` and `cells.anndata.zarr`.
    Anndata,
    /// `segmentation.zarr`.
    Spatialdata,
    /// `segmentation_report.html`.
    Report,
}

/// The outputs written when `--outputs` is not given: all of them.
pub const DEFAULT_OUTPUTS: &str = "transcripts,cells,polygons,anndata,spatialdata,report";

/// Rows per row group (and per written batch) of the outputs.
pub const ROW_GROUP: usize = 1 << 20;

/// Writes a parquet file (zstd) from `batch(range)` for consecutive row
/// ranges of at most `row_group` rows; an empty file still gets its schema.
pub fn write_parquet_batches(
    path: &Path,
    schema: SchemaRef,
    rows: usize,
    row_group: usize,
    batch: impl Fn(Range<usize>) -> Result<RecordBatch>,
) -> Result<()> {
    write_parquet_batches_with(path, schema, rows, row_group, Vec::new(), batch)
}

/// [`write_parquet_batches`] with file key-value metadata (GeoParquet's `geo`).
pub fn write_parquet_batches_with(
    path: &Path,
    schema: SchemaRef,
    rows: usize,
    row_group: usize,
    metadata: Vec<KeyValue>,
    batch: impl Fn(Range<usize>) -> Result<RecordBatch>,
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let properties = parquet_properties(row_group, metadata)?;
    let mut writer = ArrowWriter::try_new(BufWriter::new(file), schema, Some(properties))?;
    let cannot_write = || format!("cannot write {}", path.display());
    if rows == 0 {
        writer.write(&batch(0..0)?).with_context(cannot_write)?;
    }
    let mut start = 0;
    while start < rows {
        let end = (start + row_group).min(rows);
        writer
            .write(&batch(start..end)?)
            .with_context(cannot_write)?;
        start = end;
    }
    writer
        .close()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

/// The parquet settings of every output: zstd level 1, `row_group` rows per group.
pub(crate) fn parquet_properties(
    row_group: usize,
    metadata: Vec<KeyValue>,
) -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_size(row_group)
        .set_key_value_metadata((!metadata.is_empty()).then_some(metadata))
        .build())
}

/// A table written batch by batch in `format`, with the bytes of
/// [`write_table`] when the batches hold [`ROW_GROUP`] rows (the last fewer).
/// The batches are encoded and compressed on a thread of its own, in order,
/// while the caller makes the next ones; at most [`WRITE_AHEAD`] wait.
pub struct TableSink {
    path: PathBuf,
    send: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Batches handed to a [`TableSink`] and not yet written: one waiting in
/// the channel, one being encoded.
pub const WRITE_AHEAD: usize = 2;

enum SinkWriter {
    Parquet(Box<ArrowWriter<BufWriter<std::fs::File>>>),
    Csv(Box<arrow::csv::Writer<BufWriter<std::fs::File>>>),
}

impl SinkWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            SinkWriter::Parquet(w) => w.write(batch).map_err(anyhow::Error::from),
            SinkWriter::Csv(w) => w.write(batch).map_err(anyhow::Error::from),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            SinkWriter::Parquet(w) => w.close().map(|_| ()).map_err(anyhow::Error::from),
            SinkWriter::Csv(w) => w
                .into_inner()
                .into_inner()
                .map(|_| ())
                .map_err(|e| e.into_error().into()),
        }
    }
}

impl TableSink {
    /// Creates the file.
    pub fn create(path: &Path, schema: SchemaRef, format: TableFormat) -> Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = match format {
            TableFormat::Parquet => SinkWriter::Parquet(Box::new(ArrowWriter::try_new(
                BufWriter::new(file),
                schema,
                Some(parquet_properties(ROW_GROUP, Vec::new())?),
            )?)),
            TableFormat::Csv => SinkWriter::Csv(Box::new(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(BufWriter::new(file)),
            )),
        };
        let (send, receive) = std::sync::mpsc::sync_channel::<RecordBatch>(WRITE_AHEAD - 1);
        let named = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("seggpu-writer".into())
            .spawn(move || {
                // The first error stops the thread; the caller learns of it
                // at its next write or at finish.
                for batch in receive {
                    writer
                        .write(&batch)
                        .with_context(|| format!("cannot write {}", named.display()))?;
                }
                writer
                    .finish()
                    .with_context(|| format!("cannot finish {}", named.display()))
            })
            .context("cannot start the writer thread")?;
        Ok(TableSink {
            path: path.to_path_buf(),
            send: Some(send),
            thread: Some(thread),
        })
    }

    /// Appends a batch (written on the sink's thread; an error of an
    /// earlier batch is returned here).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let sent = self
            .send
            .as_ref()
            .is_some_and(|send| send.send(batch.clone()).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: its error.
        self.send = None;
        self.join()?;
        bail!("internal: the writer of {} stopped", self.path.display())
    }

    /// Finishes the file.
    pub fn finish(mut self) -> Result<()> {
        self.send = None;
        self.join()
    }

    /// Waits for the writer thread; its result.
    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "internal: the writer of {} panicked",
                    self.path.display()
                ))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for TableSink {
    /// A sink dropped unfinished (on an error) still waits for its thread,
    /// so that nothing writes the file after the caller moved on.
    fn drop(&mut self) {
        self.send = None;
        let _ = self.join();
    }
}

/// Writes `columns` (all nullable) as one parquet file.
pub fn write_parquet(path: &Path, columns: Vec<(String, ArrayRef)>) -> Result<()> {
    write_parquet_with(path, columns, Vec::new())
}

/// The schema of `columns` (every field nullable).
pub fn schema_of(columns: &[(String, ArrayRef)]) -> SchemaRef {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(name, array.data_type().clone(), true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// [`write_parquet`] with file key-value metadata.
pub fn write_parquet_with(
    path: &Path,
    columns: Vec<(String, ArrayRef)>,
    metadata: Vec<KeyValue>,
) -> Result<()> {
    let schema = schema_of(&columns);
    let rows = columns.first().map_or(0, |(_, a)| a.len());
    write_parquet_batches_with(path, schema.clone(), rows, ROW_GROUP, metadata, |range| {
        let slice = columns
            .iter()
            .map(|(_, a)| a.slice(range.start, range.len()))
            .collect();
        Ok(RecordBatch::try_new(schema.clone(), slice)?)
    })
}

/// Writes `columns` as CSV with a header (nulls as empty fields).
pub fn write_csv(path: &Path, columns: Vec<(String, ArrayRef)>) -> Result<()> {
    let schema = schema_of(&columns);
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(BufWriter::new(file));
    let rows = columns.first().map_or(0, |(_, a)| a.len());
    let mut start = 0;
    loop {
        let end = (start + ROW_GROUP).min(rows);
        let slice = columns
            .iter()
            .map(|(_, a)| a.slice(start, end - start))
            .collect();
        writer
            .write(&RecordBatch::try_new(schema.clone(), slice)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        start = end;
        if start >= rows {
            break;
        }
    }
    writer
        .into_inner()
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

/// Writes a table in `format`.
pub fn write_table(
    path: &Path,
    columns: Vec<(String, ArrayRef)>,
    format: TableFormat,
) -> Result<()> {
    match format {
        TableFormat::Parquet => write_parquet(path, columns),
        TableFormat::Csv => write_csv(path, columns),
    }
}

/// Writes `segger_transcripts.parquet` (or `.csv`). Parquet is written one
/// row group at a time, the result columns made per row group, so that
/// they never exist for all rows at once (the same bytes as writing the
/// whole columns in [`ROW_GROUP`] slices).
pub fn write_transcripts(
    path: &Path,
    passthrough: &[(String, ArrayRef)],
    result: &Segmentation,
    format: TableFormat,
) -> Result<()> {
    match format {
        TableFormat::Parquet => {
            let schema = schema_of(&transcript_columns_of(passthrough, result, 0..0));
            write_parquet_batches(path, schema.clone(), result.len(), ROW_GROUP, |range| {
                let columns = transcript_columns_of(passthrough, result, range);
                Ok(RecordBatch::try_new(
                    schema.clone(),
                    columns.into_iter().map(|(_, a)| a).collect(),
                )?)
            })
        }
        TableFormat::Csv => write_csv(path, transcript_columns(passthrough, result)),
    }
}

/// The columns of `segger_transcripts.parquet`.
pub fn transcript_columns(
    passthrough: &[(String, ArrayRef)],
    result: &Segmentation,
) -> Vec<(String, ArrayRef)> {
    transcript_columns_of(passthrough, result, 0..result.len())
}

/// The columns of `segger_transcripts.parquet` for the input rows `rows`.
fn transcript_columns_of(
    passthrough: &[(String, ArrayRef)],
    result: &Segmentation,
    rows: Range<usize>,
) -> Vec<(String, ArrayRef)> {
    let mut columns: Vec<(String, ArrayRef)> = passthrough
        .iter()
        .map(|(name, a)| (name.clone(), a.slice(rows.start, rows.len())))
        .collect();
    push_result_columns(
        &mut columns,
        rows.clone().map(|r| result.segger_cell_id(r)),
        rows.clone().map(|r| result.score(r)),
        result.assignment[rows.clone()].iter().map(|a| a.as_str()),
        result.filter_reason[rows]
            .iter()
            .map(|f| f.map(FilterReason::as_str)),
    );
    columns
}

/// Appends the result columns of `segger_transcripts.parquet`
/// (`segger_cell_id`, `score`, `assignment`, `filter_reason`) of some rows.
pub fn push_result_columns<'a>(
    columns: &mut Vec<(String, ArrayRef)>,
    cell_id: impl Iterator<Item = &'a str>,
    score: impl Iterator<Item = Option<f32>>,
    assignment: impl Iterator<Item = &'static str>,
    filter_reason: impl Iterator<Item = Option<&'static str>>,
) {
    columns.push((
        "segger_cell_id".into(),
        Arc::new(StringArray::from_iter_values(cell_id)),
    ));
    columns.push(("score".into(), Arc::new(Float32Array::from_iter(score))));
    columns.push((
        "assignment".into(),
        Arc::new(StringArray::from_iter_values(assignment)),
    ));
    columns.push((
        "filter_reason".into(),
        Arc::new(StringArray::from_iter(filter_reason)),
    ));
}

/// One row of `cells.parquet`.
#[derive(Clone)]
pub struct CellRow {
    /// Nucleus id or fragment id.
    pub id: String,
    /// `cell` or `fragment`.
    pub kind: &'static str,
    /// Transcripts assigned.
    pub n_transcripts: u64,
    /// Mean x of its transcripts (`None` when it has none).
    pub centroid_x: Option<f64>,
    /// Mean y of its transcripts.
    pub centroid_y: Option<f64>,
    /// Nucleus polygon area (`None` for fragments).
    pub nucleus_area: Option<f32>,
}

/// Writes `cells.parquet` (or `.csv`).
pub fn write_cells(path: &Path, rows: &[CellRow], format: TableFormat) -> Result<()> {
    let columns: Vec<(String, ArrayRef)> = vec![
        (
            "id".into(),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.id.as_str()),
            )),
        ),
        (
            "kind".into(),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
        ),
        (
            "n_transcripts".into(),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.n_transcripts),
            )),
        ),
        (
            "centroid_x".into(),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.centroid_x))),
        ),
        (
            "centroid_y".into(),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.centroid_y))),
        ),
        (
            "nucleus_area".into(),
            Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.nucleus_area))),
        ),
    ];
    write_table(path, columns, format)
}
