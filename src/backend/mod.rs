//! The boundary between the pipeline and the compute kernels. The pipeline
//! talks to a [`Backend`]; only the backends know about rayon or wgpu.

use anyhow::{anyhow, Result};

use crate::graph::{ReceptiveField, TileGraph};
use crate::model::Model;

pub mod cpu;
pub mod gpu;

/// Node activations after one stage of the model.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    /// `[n_tx, width]` transcript activations.
    pub tx: Vec<f32>,
    /// `[n_bd, width]` nucleus activations.
    pub bd: Vec<f32>,
}

/// Result of a forward pass over one tile.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    /// `[n_tx, dim]` final transcript embeddings.
    pub z_tx: Vec<f32>,
    /// `[n_bd, dim]` final nucleus embeddings.
    pub z_bd: Vec<f32>,
    /// Width of z (H·C_out).
    pub dim: usize,
    /// When requested: activations after the input stage (index 0) and after
    /// every GATv2 layer (1..=L). Empty otherwise.
    pub layers: Vec<Activations>,
}

/// Best candidate nucleus per transcript.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BestMatches {
    /// Best score; meaningful only where `index` ≥ 0 (0 otherwise).
    pub score: Vec<f32>,
    /// Index of the best nucleus, −1 when the transcript has no candidate.
    pub index: Vec<i32>,
}

/// Inputs of [`Backend::fragment_similarity`].
#[derive(Debug, Clone, Copy)]
pub struct FragmentSlots<'a> {
    /// `[n, k]` fragment-neighbour lists (−1 = empty slot).
    pub neighbors: &'a [i32],
    /// Slots per transcript.
    pub k: usize,
    /// Token of every transcript.
    pub tokens: &'a [u32],
    /// Unit embedding rows, `[vocab, dim]`.
    pub unit: &'a [f32],
    /// Embedding width.
    pub dim: usize,
}

/// Fragment-neighbour similarities (docs/contract.md §9) with their histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeSimilarity {
    /// Per neighbour slot: cosine of the two genes' unit embeddings (0 for
    /// an empty slot).
    pub similarity: Vec<f32>,
    /// [`crate::kernels::edge_similarity::HISTOGRAM_BINS`] counts of the
    /// non-empty slots' similarities
    /// ([`crate::kernels::edge_similarity::similarity_bin`]).
    pub histogram: Vec<u32>,
}

impl BestMatches {
    /// Best scores with NaN where the transcript has no candidate.
    pub fn score_or_nan(&self) -> Vec<f32> {
        self.score
            .iter()
            .zip(&self.index)
            .map(|(&s, &i)| if i < 0 { f32::NAN } else { s })
            .collect()
    }
}

/// A compute engine able to run the Segger model and scoring on one tile,
/// and the fragment stage's kernels. The GPU backend's failures are
/// [`gpu::GpuError`]s inside the returned errors.
pub trait Backend {
    /// Human-readable name, with the adapter for GPU backends.
    fn describe(&self) -> String;

    /// Whether the model runs on a GPU (not the CPU), so that building the
    /// next tile's graphs on the CPU meanwhile does not compete with it.
    fn runs_on_gpu(&self) -> bool {
        false
    }

    /// Runs the model over `graph`. With `keep_layers`, also returns every
    /// intermediate activation (for parity checks).
    fn forward(
        &mut self,
        model: &Model,
        graph: &TileGraph,
        keep_layers: bool,
    ) -> Result<Embeddings>;

    /// Scores every transcript against its receptive field.
    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches>;

    /// The best nucleus of every transcript of a tile: the forward pass and
    /// scoring against `graph.receptive_field` (an error when it is `None`),
    /// equal to [`Backend::forward`] then [`Backend::score`]. The GPU keeps
    /// the embeddings on the device and reads back only the best matches.
    fn score_tile(&mut self, model: &Model, graph: &TileGraph) -> Result<BestMatches>;

    /// Similarity of every fragment-neighbour slot, and their histogram.
    fn fragment_similarity(&mut self, slots: FragmentSlots) -> Result<EdgeSimilarity>;

    /// Connected components of an undirected graph on `n` nodes: every node
    /// labelled with the smallest node index of its component.
    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>>;
}

/// The receptive field [`Backend::score_tile`] scores against.
fn receptive_field(graph: &TileGraph) -> Result<&ReceptiveField> {
    graph.receptive_field.as_ref().ok_or_else(|| {
        anyhow!(
            "scoring a tile of {} transcripts needs its receptive field, and the tile graph has none",
            graph.n_tx()
        )
    })
}
