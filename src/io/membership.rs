//! Nuclear membership from the transcripts file, checked against the
//! nuclei (docs/contract.md §5 "belongs"): keys that never match must not
//! pass as a run in which almost nothing is nuclear.

use std::collections::HashSet;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{InputSpec, Nuclei, Transcripts};

/// What the check found, for the run log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MembershipReport {
    /// `flag` (the file's nuclear flag and cell ids), `point_in_polygon`
    /// (no flag column, or one that never marks a row nuclear).
    pub source: &'static str,
    /// Rows flagged nuclear with a cell id.
    pub flagged: usize,
    /// Flagged rows whose cell id names no nucleus of the boundaries file.
    pub unmatched: usize,
    /// A few of those cell ids.
    pub unmatched_examples: Vec<String>,
}

fn column<'a>(columns: &'a [(&'static str, String)], role: &str) -> &'a str {
    columns
        .iter()
        .find(|(r, _)| *r == role)
        .map_or("?", |(_, c)| c.as_str())
}

/// Checks the file's nuclear membership against `nuclei`:
///
/// - a flag column that never marks a row nuclear is dropped
///   (`transcripts.nuclear_cell = None`): membership then comes from the
///   polygons, as without the column, and a warning says so;
/// - flagged rows of which not one names a nucleus are an error naming both
///   id columns with example values;
/// - flagged rows naming no nucleus are counted (a warning with examples).
pub fn check_membership(
    transcripts: &mut Transcripts,
    nuclei: &Nuclei,
    spec: &InputSpec,
) -> Result<MembershipReport> {
    let Some(flags) = &transcripts.nuclear_cell else {
        return Ok(MembershipReport {
            source: "point_in_polygon",
            ..MembershipReport::default()
        });
    };
    let mut tally = MembershipTally::new(nuclei);
    for cell in flags.iter().flatten() {
        tally.see(cell);
    }
    let report = tally.finish(nuclei, spec, &transcripts.columns)?;
    if report.source == "point_in_polygon" {
        transcripts.nuclear_cell = None;
    }
    Ok(report)
}

/// The flagged rows counted one by one, in row order, for
/// [`check_membership`] or a file read in batches.
pub struct MembershipTally<'a> {
    ids: HashSet<&'a str>,
    flagged: usize,
    unmatched: usize,
    examples: Vec<String>,
}

impl<'a> MembershipTally<'a> {
    /// No row seen yet.
    pub fn new(nuclei: &'a Nuclei) -> Self {
        MembershipTally {
            ids: nuclei.ids.iter().collect(),
            flagged: 0,
            unmatched: 0,
            examples: Vec::new(),
        }
    }

    /// Counts a row flagged nuclear with cell id `cell`.
    pub fn see(&mut self, cell: &str) {
        self.flagged += 1;
        if !self.ids.contains(cell) {
            self.unmatched += 1;
            if self.examples.len() < 5 && !self.examples.iter().any(|e| e == cell) {
                self.examples.push(cell.to_string());
            }
        }
    }

    /// The verdict (see [`check_membership`]): source `point_in_polygon`
    /// when no row was flagged (the flags are then to be dropped), an error
    /// when no flagged row names a nucleus. `columns` are the transcripts'
    /// (role, name) pairs.
    pub fn finish(
        self,
        nuclei: &Nuclei,
        spec: &InputSpec,
        columns: &[(&'static str, String)],
    ) -> Result<MembershipReport> {
        let flag_col = column(columns, "nuclear flag");
        let cell_col = column(columns, "cell id");
        let MembershipTally {
            flagged,
            unmatched,
            examples,
            ..
        } = self;
        if flagged == 0 {
            log::warn!(
                "{}: the nuclear flag column `{flag_col}` never marks a row `{}` with a cell id \
                 (`{cell_col}`); nuclear membership comes from the polygons (point-in-polygon), as \
                 without the column",
                spec.transcripts.display(),
                spec.nuclear_value
            );
            return Ok(MembershipReport {
                source: "point_in_polygon",
                ..MembershipReport::default()
            });
        }
        let quoted = |v: &[String]| {
            v.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if unmatched == flagged {
            let nucleus_examples: Vec<String> =
                nuclei.ids.iter().take(5).map(str::to_string).collect();
            bail!(
                "no nuclear-flagged transcript names a nucleus: the {} rows flagged nuclear in \
                 column `{flag_col}` have cell ids (column `{cell_col}` of {}) such as {}, but the \
                 nucleus ids (column `{}` of {}) are such as {}; choose the matching columns \
                 (--cell-col, --boundary-id-col, --fov-col) or pass --nuclear-col none to place \
                 transcripts by point-in-polygon",
                flagged,
                spec.transcripts.display(),
                quoted(&examples),
                column(&nuclei.columns, "nucleus id"),
                spec.boundaries.display(),
                quoted(&nucleus_examples)
            );
        }
        if unmatched > 0 {
            log::warn!(
                "{unmatched} of {} nuclear-flagged transcripts name a cell (column `{cell_col}`) with \
                 no nucleus in {} (e.g. {}): they belong to no nucleus",
                flagged,
                spec.boundaries.display(),
                quoted(&examples)
            );
        }
        Ok(MembershipReport {
            source: "flag",
            flagged,
            unmatched,
            unmatched_examples: examples,
        })
    }
}
