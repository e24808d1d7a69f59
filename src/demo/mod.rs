//! The demo model: Segger's default architecture trained on `seggpu simulate`
//! data (provenance in `src/demo/README.md`). Its vocabulary is
//! [`crate::simulate::gene_panel`], so it segments simulated samples out of
//! the box; it is not meant for real tissue.

use std::path::Path;

use crate::model::{Model, ModelError};
use crate::pipeline::{Assignment, Segmentation};
use crate::tensorfile::TensorFile;

/// The demo weights file (safetensors, docs/contract.md §7).
pub const DEMO_MODEL: &[u8] = include_bytes!("demo_model.safetensors");

/// Name under which the demo model reports itself in errors and logs.
pub const DEMO_MODEL_NAME: &str = "<demo model>";

/// Loads [`DEMO_MODEL`].
pub fn demo_model() -> Result<Model, ModelError> {
    Model::from_file(&TensorFile::from_bytes(
        Path::new(DEMO_MODEL_NAME),
        DEMO_MODEL.to_vec(),
    )?)
}

/// How a demo run compares with the simulator's ground truth
/// (`ground_truth.parquet` of [`crate::simulate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DemoAccuracy {
    /// Rows a cell generated (noise excluded), filtered rows included.
    pub cell_rows: usize,
    /// Of those, the rows that pass the filters.
    pub cell_rows_kept: usize,
    /// Of those, the rows assigned to the cell that generated them.
    pub correct: usize,
    /// Rows assigned to any cell (fragments excluded).
    pub assigned: usize,
}

impl DemoAccuracy {
    /// Correct assignments among the kept rows a cell generated.
    pub fn recall_kept(&self) -> f64 {
        ratio(self.correct, self.cell_rows_kept)
    }

    /// Correct assignments among all rows a cell generated (filtered rows count as misses).
    pub fn recall_all_rows(&self) -> f64 {
        ratio(self.correct, self.cell_rows)
    }

    /// Correct assignments among all assignments to cells.
    pub fn precision(&self) -> f64 {
        ratio(self.correct, self.assigned)
    }

    /// The figures as JSON for `segmentation_log.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "counts": self,
            "recall_kept": self.recall_kept(),
            "recall_all_rows": self.recall_all_rows(),
            "precision": self.precision(),
        })
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    part as f64 / whole.max(1) as f64
}

/// Compares a segmentation of a simulated sample with its ground truth.
/// `result` is in the row order of the sample's `transcripts.parquet`, which
/// is also the row order of `ground_truth`.
pub fn demo_accuracy(ground_truth: &Path, result: &Segmentation) -> anyhow::Result<DemoAccuracy> {
    use crate::io::table::{to_utf8, Ctx, Table, Want};
    use arrow::array::Array;

    let table = Table::open(ground_truth)?;
    let mut acc = DemoAccuracy {
        cell_rows: 0,
        cell_rows_kept: 0,
        correct: 0,
        assigned: result.summary.counts.assigned,
    };
    let mut row = 0;
    for batch in table.batches(&[("true_cell_id", Want::Text)])? {
        let truth = to_utf8(batch?.column(0), Ctx::new(ground_truth, "true_cell_id"))?;
        for i in 0..truth.len() {
            if row >= result.len() {
                anyhow::bail!(
                    "{}: more rows than the {} transcripts segmented",
                    ground_truth.display(),
                    result.len()
                );
            }
            if truth.is_valid(i) && truth.value(i) != crate::simulate::BACKGROUND {
                acc.cell_rows += 1;
                if result.filter_reason[row].is_none() {
                    acc.cell_rows_kept += 1;
                    if result.assignment[row] == Assignment::Cell
                        && result.segger_cell_id(row) == truth.value(i)
                    {
                        acc.correct += 1;
                    }
                }
            }
            row += 1;
        }
    }
    if row != result.len() {
        anyhow::bail!(
            "{}: {row} rows, but {} transcripts were segmented",
            ground_truth.display(),
            result.len()
        );
    }
    Ok(acc)
}
