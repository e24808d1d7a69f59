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
    let flag_col = column(&transcripts.columns, "nuclear flag");
    let cell_col = column(&transcripts.columns, "cell id");
    let flagged: Vec<&str> = flags.iter().flatten().map(String::as_str).collect();
    if flagged.is_empty() {
        log::warn!(
            "{}: the nuclear flag column `{flag_col}` never marks a row `{}` with a cell id \
             (`{cell_col}`); nuclear membership comes from the polygons (point-in-polygon), as \
             without the column",
            spec.transcripts.display(),
            spec.nuclear_value
        );
        transcripts.nuclear_cell = None;
        return Ok(MembershipReport {
            source: "point_in_polygon",
            ..MembershipReport::default()
        });
    }
    let ids: HashSet<&str> = nuclei.ids.iter().map(String::as_str).collect();
    let mut unmatched = 0;
    let mut examples: Vec<String> = Vec::new();
    for cell in &flagged {
        if !ids.contains(cell) {
            unmatched += 1;
            if examples.len() < 5 && !examples.iter().any(|e| e == cell) {
                examples.push(cell.to_string());
            }
        }
    }
    let quoted = |v: &[String]| {
        v.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if unmatched == flagged.len() {
        let nucleus_examples: Vec<String> = nuclei.ids.iter().take(5).cloned().collect();
        bail!(
            "no nuclear-flagged transcript names a nucleus: the {} rows flagged nuclear in \
             column `{flag_col}` have cell ids (column `{cell_col}` of {}) such as {}, but the \
             nucleus ids (column `{}` of {}) are such as {}; choose the matching columns \
             (--cell-col, --boundary-id-col, --fov-col) or pass --nuclear-col none to place \
             transcripts by point-in-polygon",
            flagged.len(),
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
            flagged.len(),
            spec.boundaries.display(),
            quoted(&examples)
        );
    }
    Ok(MembershipReport {
        source: "flag",
        flagged: flagged.len(),
        unmatched,
        unmatched_examples: examples,
    })
}
