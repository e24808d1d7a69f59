//! `seggpu segment` as an orchestrator of named stages, each a module with
//! typed inputs and outputs: [`prepare`] (tokens, membership, tiles) →
//! [`score_tiles`] (graphs, model and best nucleus per tile) → [`assign`]
//! (the score cut) → [`fragments`] → [`report`] (per-row results, cells,
//! summary). [`run`] is the command around it: reading and writing.

use std::time::Instant;

use anyhow::Result;

use crate::backend::Backend;
use crate::graph::build::GraphParams;
use crate::io::{Nuclei, Transcripts};
use crate::model::Model;

pub mod assign;
pub mod budget;
pub mod fragments;
pub mod prepare;
pub mod progress;
pub mod report;
pub mod run;
pub mod score_tiles;
pub mod stream;

use fragments::FragmentParams;
use progress::Progress;
pub use report::{Assignment, Segmentation, Summary};

/// What to do with genes the model does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownGenes {
    /// Stop with an error naming the missing genes.
    Error,
    /// Mark those transcripts filtered (`unknown_gene`).
    Skip,
}

/// The assignment threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreCut {
    /// A fixed value in [0, 1].
    Fixed(f32),
    /// The knee of the sorted best-score curve.
    Auto,
}

impl std::str::FromStr for ScoreCut {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ScoreCut::Auto);
        }
        match s.parse::<f32>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(ScoreCut::Fixed(v)),
            _ => Err(format!("`{s}` is neither `auto` nor a number in [0, 1]")),
        }
    }
}

/// Everything that controls a segmentation run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentParams {
    /// Graph construction.
    pub graph: GraphParams,
    /// Assignment threshold.
    pub score_cut: ScoreCut,
    /// Fragment detection; `None` turns it off.
    pub fragments: Option<FragmentSettings>,
    /// Unknown gene policy.
    pub unknown_genes: UnknownGenes,
    /// Side of a tile core in µm.
    pub tile_size: f64,
    /// Tile margin in µm; `None` for the exact margin.
    pub margin: Option<f64>,
}

/// Fragment settings as given (the cut defaults to the score cut).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FragmentSettings {
    /// Similarity cut, `None` for the score cut in use.
    pub cut: Option<f32>,
    /// Smallest fragment.
    pub min_transcripts: usize,
}

/// Segments one sample, overlapping graph building and the backend as
/// `overlap` says (results do not depend on it). The returned transcripts
/// have their filter decisions moved into [`Segmentation::filter_reason`].
pub fn segment(
    mut transcripts: Transcripts,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    progress: &Progress,
    overlap: score_tiles::OverlapMode,
) -> Result<(Segmentation, Transcripts)> {
    let mut seconds = Vec::new();
    let clock = Instant::now();
    let prepared = prepare::run(&mut transcripts, nuclei, model, params)?;
    seconds.push(("prepare", clock.elapsed().as_secs_f64()));

    let overlap = overlap.resolve(backend);
    let scores = score_tiles::run(
        &prepared,
        nuclei,
        model,
        &params.graph,
        backend,
        progress,
        overlap,
    )?;
    seconds.push(("graphs", scores.graph_seconds));
    seconds.push(("model+score", scores.model_seconds));

    let clock = Instant::now();
    let assigned = assign::run(&scores, params.score_cut);
    let fragments = match params.fragments {
        Some(settings) => Some(fragments::run(
            &prepared,
            &assigned.assigned,
            &transcripts.id_key,
            model,
            &FragmentParams {
                k_tx: params.graph.k_tx,
                dist_tx: params.graph.dist_tx,
                cut: settings.cut.unwrap_or(assigned.cut),
                min_transcripts: settings.min_transcripts,
            },
            backend,
        )?),
        None => None,
    };
    seconds.push(("assign+fragments", clock.elapsed().as_secs_f64()));

    let mut result = report::run(report::Stages::new(
        &mut transcripts,
        nuclei,
        &prepared,
        &scores,
        &assigned,
        fragments,
        params,
        backend,
    ));
    result.stage_seconds = seconds;
    Ok((result, transcripts))
}
