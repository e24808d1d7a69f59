//! Outputs (SPEC §11): `segger_transcripts.parquet`, `cells.parquet` and
//! `segmentation_log.json`, written under temporary names and renamed into
//! place only when everything succeeded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, Float32Array, Float64Array, StringArray, UInt64Array};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// File names of the outputs.
pub const TRANSCRIPTS_FILE: &str = "segger_transcripts.parquet";
/// Per-cell table.
pub const CELLS_FILE: &str = "cells.parquet";
/// Run log.
pub const LOG_FILE: &str = "segmentation_log.json";

/// A folder of outputs being written: files go to a hidden staging folder
/// inside the output folder and move to their final names in `commit`.
pub struct OutputDir {
    dir: PathBuf,
    staging: PathBuf,
}

impl OutputDir {
    /// Creates `dir` (and the staging folder in it), failing early with a
    /// clear message when it cannot be written.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let staging = dir.join(format!(".seggpu-partial-{}", std::process::id()));
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("output folder {} is not writable", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            staging,
        })
    }

    /// Where to write `name` before commit.
    pub fn staged(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// Moves every staged file to its final name and removes the staging folder.
    pub fn commit(self, names: &[&str]) -> Result<()> {
        for name in names {
            let final_path = self.dir.join(name);
            std::fs::rename(self.staging.join(name), &final_path)
                .with_context(|| format!("cannot move {name} into {}", self.dir.display()))?;
        }
        std::fs::remove_dir_all(&self.staging).ok();
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        // After a failure nothing is left behind; after commit the folder is gone already.
        std::fs::remove_dir_all(&self.staging).ok();
    }
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_size(1 << 20)
        .build()
}

/// Writes `columns` as one parquet file, in row groups of about a million rows.
pub fn write_parquet(path: &Path, columns: Vec<(String, ArrayRef)>) -> Result<()> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(name, array.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties()))?;
    let n = columns.first().map_or(0, |(_, a)| a.len());
    let arrays: Vec<ArrayRef> = columns.into_iter().map(|(_, a)| a).collect();
    let step = 1 << 20;
    let mut start = 0;
    while start < n || (n == 0 && start == 0) {
        let len = step.min(n - start);
        let slice: Vec<ArrayRef> = arrays.iter().map(|a| a.slice(start, len)).collect();
        writer.write(&RecordBatch::try_new(schema.clone(), slice)?)?;
        start += len.max(1);
        if n == 0 {
            break;
        }
    }
    writer
        .close()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

/// Per-transcript result columns appended to the passthrough columns.
pub struct TranscriptColumns {
    /// Nucleus id, fragment id or `UNASSIGNED`.
    pub segger_cell_id: Vec<String>,
    /// Best score, `None` without candidate.
    pub score: Vec<Option<f32>>,
    /// `cell`, `fragment`, `unassigned` or `filtered`.
    pub assignment: Vec<&'static str>,
    /// Filter reason or `None`.
    pub filter_reason: Vec<Option<&'static str>>,
}

/// Writes `segger_transcripts.parquet`.
pub fn write_transcripts(
    path: &Path,
    passthrough: &[(String, ArrayRef)],
    result: TranscriptColumns,
) -> Result<()> {
    let mut columns: Vec<(String, ArrayRef)> = passthrough.to_vec();
    columns.push((
        "segger_cell_id".into(),
        Arc::new(StringArray::from_iter_values(result.segger_cell_id)),
    ));
    columns.push(("score".into(), Arc::new(Float32Array::from(result.score))));
    columns.push((
        "assignment".into(),
        Arc::new(StringArray::from_iter_values(result.assignment)),
    ));
    columns.push((
        "filter_reason".into(),
        Arc::new(StringArray::from(result.filter_reason)),
    ));
    write_parquet(path, columns)
}

/// One row of `cells.parquet`.
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

/// Writes `cells.parquet`.
pub fn write_cells(path: &Path, rows: &[CellRow]) -> Result<()> {
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
    write_parquet(path, columns)
}
