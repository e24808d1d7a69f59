//! Stage `report`: per-row results in compact, typed form, the rows of
//! `cells.parquet` and the typed summary of the log (docs/contract.md §11).

use std::collections::BTreeMap;

use serde::Serialize;

use super::assign::{Assigned, ScoreStats};
use super::fragments::{FragmentSummary, Fragments};
use super::prepare::Prepared;
use super::score_tiles::TileScores;
use super::ScoreCut;
use crate::io::{FilterReason, Nuclei};
use crate::output::CellRow;

/// What became of one input row (the `assignment` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Assignment {
    /// Joined a nucleus.
    Cell,
    /// Joined a fragment.
    Fragment,
    /// Kept, but neither.
    Unassigned,
    /// Removed by a filter (`filter_reason` says which).
    Filtered,
}

impl Assignment {
    /// The value written to the `assignment` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Assignment::Cell => "cell",
            Assignment::Fragment => "fragment",
            Assignment::Unassigned => "unassigned",
            Assignment::Filtered => "filtered",
        }
    }
}

/// `segger_cell_id` of a row that joined neither a cell nor a fragment.
pub const UNASSIGNED_ID: &str = "UNASSIGNED";

/// Per-row results and summaries of a run. A row costs 9 bytes here plus
/// its filter reason: a cell is an index into [`Segmentation::cell_ids`],
/// not a string per row.
pub struct Segmentation {
    /// Per input row: what became of it.
    pub assignment: Vec<Assignment>,
    /// Per input row: index into `cell_ids`, [`Segmentation::NO_CELL`] for none.
    pub cell: Vec<u32>,
    /// Nucleus ids (in nucleus order), then fragment ids.
    pub cell_ids: Vec<String>,
    /// Per input row: best score, NaN without candidate.
    pub score: Vec<f32>,
    /// Per input row: why it was filtered.
    pub filter_reason: Vec<Option<FilterReason>>,
    /// Rows of cells.parquet.
    pub cells: Vec<CellRow>,
    /// Facts for the log.
    pub summary: Summary,
    /// Seconds per stage, in stage order.
    pub stage_seconds: Vec<(&'static str, f64)>,
}

impl Segmentation {
    /// `cell` of a row without cell or fragment.
    pub const NO_CELL: u32 = u32::MAX;

    /// Input rows.
    pub fn len(&self) -> usize {
        self.assignment.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.assignment.is_empty()
    }

    /// `segger_cell_id` of `row`: nucleus id, fragment id or `UNASSIGNED`.
    pub fn segger_cell_id(&self, row: usize) -> &str {
        match self.cell[row] {
            Self::NO_CELL => UNASSIGNED_ID,
            c => &self.cell_ids[c as usize],
        }
    }

    /// Best score of `row`, `None` without candidate.
    pub fn score(&self, row: usize) -> Option<f32> {
        let s = self.score[row];
        (!s.is_nan()).then_some(s)
    }
}

/// The `result` object of `segmentation_log.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Row and cell counts.
    pub counts: Counts,
    /// Score cut in use.
    pub score_cut: f32,
    /// `fixed` or `auto`.
    pub score_cut_mode: &'static str,
    /// Statistics of the best scores.
    pub scores: ScoreStats,
    /// The tiles.
    pub tiles: TileSummary,
    /// The fragment stage (`null` with `--no-fragments`).
    pub fragments: Option<FragmentSummary>,
    /// Backend and adapter.
    pub backend: String,
}

/// Row and cell counts of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    /// Input rows.
    pub read: usize,
    /// Filtered rows by reason.
    pub filtered: BTreeMap<&'static str, usize>,
    /// Rows left after filtering.
    pub kept: usize,
    /// Rows assigned to a nucleus.
    pub assigned: usize,
    /// Rows in fragments.
    pub fragment: usize,
    /// Kept rows in neither.
    pub unassigned: usize,
    /// Nuclei read.
    pub nuclei: usize,
    /// Nuclei skipped as invalid.
    pub nuclei_skipped: usize,
    /// Nuclei with at least one transcript.
    pub cells_with_transcripts: usize,
    /// Fragments.
    pub fragments: usize,
}

/// Tile facts of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TileSummary {
    /// Core side, µm.
    pub size: f64,
    /// Tiles.
    pub count: usize,
    /// Margin in use, µm.
    pub margin: f64,
    /// Exact margin, µm.
    pub exact_margin: f64,
    /// Largest nucleus radius, µm.
    pub largest_nucleus_radius: f64,
}

/// Everything the report is made from.
pub struct Stages<'a> {
    /// Filter decision of every input row.
    pub filter: Vec<Option<FilterReason>>,
    /// The nuclei.
    pub nuclei: &'a Nuclei,
    /// Stage `prepare`.
    pub prepared: &'a Prepared,
    /// Stage `score`.
    pub scores: &'a TileScores,
    /// Stage `assign`.
    pub assigned: &'a Assigned,
    /// Stage `fragments` (`None` when turned off).
    pub fragments: Option<Fragments>,
    /// How the score cut was chosen.
    pub score_cut: ScoreCut,
    /// Tile core side, µm.
    pub tile_size: f64,
    /// Backend and adapter.
    pub backend: String,
}

impl<'a> Stages<'a> {
    /// The stages of a run of `params` on `backend` (both paths); the
    /// filter decisions are moved out of `transcripts`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        transcripts: &mut crate::io::Transcripts,
        nuclei: &'a Nuclei,
        prepared: &'a Prepared,
        scores: &'a TileScores,
        assigned: &'a Assigned,
        fragments: Option<Fragments>,
        params: &super::SegmentParams,
        backend: &dyn crate::backend::Backend,
    ) -> Self {
        Stages {
            filter: std::mem::take(&mut transcripts.filter),
            nuclei,
            prepared,
            scores,
            assigned,
            fragments,
            score_cut: params.score_cut,
            tile_size: params.tile_size,
            backend: backend.describe(),
        }
    }
}

/// Per-row results, cells and summary of a run.
pub fn run(stages: Stages) -> Segmentation {
    let Stages {
        filter,
        nuclei,
        prepared,
        scores,
        assigned,
        fragments,
        score_cut,
        tile_size,
        backend,
    } = stages;
    let n_rows = filter.len();
    let n_nuclei = nuclei.ids.len();
    let (fragment_ids, fragment_of, fragment_summary) = match fragments {
        Some(f) => (f.ids, f.fragment_of, Some(f.summary)),
        None => (Vec::new(), vec![None; prepared.kept.len()], None),
    };
    let mut assignment: Vec<Assignment> = filter
        .iter()
        .map(|f| match f {
            Some(_) => Assignment::Filtered,
            None => Assignment::Unassigned,
        })
        .collect();
    let mut cell = vec![Segmentation::NO_CELL; n_rows];
    let mut score = vec![f32::NAN; n_rows];
    let mut cell_sum = vec![(0u64, 0.0f64, 0.0f64); n_nuclei];
    let mut fragment_sum = vec![(0u64, 0.0f64, 0.0f64); fragment_ids.len()];
    for (i, &row) in prepared.kept.iter().enumerate() {
        let row = row as usize;
        if scores.best_index[i] >= 0 {
            score[row] = scores.best_score[i];
        }
        let acc = if assigned.assigned[i] {
            let n = scores.best_index[i] as usize;
            cell[row] = n as u32;
            assignment[row] = Assignment::Cell;
            &mut cell_sum[n]
        } else if let Some(f) = fragment_of[i] {
            cell[row] = (n_nuclei + f as usize) as u32;
            assignment[row] = Assignment::Fragment;
            &mut fragment_sum[f as usize]
        } else {
            continue;
        };
        acc.0 += 1;
        acc.1 += prepared.pos[i][0];
        acc.2 += prepared.pos[i][1];
    }

    let cells = cell_rows(nuclei, &fragment_ids, &cell_sum, &fragment_sum);

    let count = |kind: Assignment| assignment.iter().filter(|&&a| a == kind).count();
    let mut filtered: BTreeMap<&'static str, usize> = BTreeMap::new();
    for reason in filter.iter().flatten() {
        *filtered.entry(reason.as_str()).or_default() += 1;
    }
    let summary = Summary {
        counts: Counts {
            read: n_rows,
            filtered,
            kept: prepared.kept.len(),
            assigned: count(Assignment::Cell),
            fragment: count(Assignment::Fragment),
            unassigned: count(Assignment::Unassigned),
            nuclei: n_nuclei,
            nuclei_skipped: nuclei.skipped.len(),
            cells_with_transcripts: cell_sum.iter().filter(|c| c.0 > 0).count(),
            fragments: fragment_ids.len(),
        },
        score_cut: assigned.cut,
        score_cut_mode: match score_cut {
            ScoreCut::Auto => "auto",
            ScoreCut::Fixed(_) => "fixed",
        },
        scores: assigned.stats.clone(),
        tiles: TileSummary {
            size: tile_size,
            count: prepared.grid.len(),
            margin: prepared.margin,
            exact_margin: prepared.exact_margin,
            largest_nucleus_radius: prepared.largest_radius,
        },
        fragments: fragment_summary,
        backend,
    };
    let mut cell_ids: Vec<String> = nuclei.ids.iter().map(str::to_string).collect();
    cell_ids.extend(fragment_ids);
    Segmentation {
        assignment,
        cell,
        cell_ids,
        score,
        filter_reason: filter,
        cells,
        summary,
        stage_seconds: Vec::new(),
    }
}

/// The rows of `cells.parquet`: every nucleus, then every fragment, from
/// their (transcripts, Σx, Σy) summed in input row order.
pub fn cell_rows(
    nuclei: &Nuclei,
    fragment_ids: &[String],
    cell_sum: &[(u64, f64, f64)],
    fragment_sum: &[(u64, f64, f64)],
) -> Vec<CellRow> {
    let mean = |(n, sx, sy): (u64, f64, f64)| {
        if n == 0 {
            (None, None)
        } else {
            (Some(sx / n as f64), Some(sy / n as f64))
        }
    };
    let mut cells = Vec::with_capacity(nuclei.ids.len() + fragment_ids.len());
    for (n, id) in nuclei.ids.iter().enumerate() {
        let (cx, cy) = mean(cell_sum[n]);
        cells.push(CellRow {
            id: id.to_string(),
            kind: "cell",
            n_transcripts: cell_sum[n].0,
            centroid_x: cx,
            centroid_y: cy,
            nucleus_area: Some(nuclei.nucleus_area(n)),
        });
    }
    for (f, id) in fragment_ids.iter().enumerate() {
        let (cx, cy) = mean(fragment_sum[f]);
        cells.push(CellRow {
            id: id.clone(),
            kind: "fragment",
            n_transcripts: fragment_sum[f].0,
            centroid_x: cx,
            centroid_y: cy,
            nucleus_area: None,
        });
    }
    cells
}
