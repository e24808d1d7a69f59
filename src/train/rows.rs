//! The transcripts a training step's loss depends on, layer by layer. The
//! loss reads the last layer's embeddings of the transcripts in its pairs
//! only (about a quarter of a window's); a layer's output rows need their own
//! input rows, their neighbour sources and the transcripts that send belongs
//! messages one layer down. The CPU engine computes those rows only: every
//! computed value is the one the whole forward pass gives (the same
//! per-row and per-destination arithmetic), and every other row's
//! gradient is zero, so the gradients differ from the whole pass's by the
//! grouping of the weight-gradient sums only.

use super::{fast, kernels};
use crate::graph::{Csr, TileGraph};

/// One layer's graph restricted to the rows it computes.
pub struct LayerRows {
    /// Neighbour edges into the layer's output rows, in the graph's order:
    /// destinations index the output rows, sources the input rows.
    pub neighbors: Csr,
    /// Edge ids of `neighbors` by source (input row), ascending.
    pub neighbors_by_source: Csr,
    /// Each edge of `neighbors`' destination.
    pub neighbors_dst: Vec<u32>,
    /// The output rows as indices into the input rows.
    pub out_in_input: Vec<u32>,
    /// The transcripts that send belongs messages, as indices into the input rows.
    pub belongs_in_input: Vec<u32>,
}

/// The rows of every layer a step computes.
pub struct Rows {
    /// Per level 0..=L (the input of layer l + 1 is level l, the output
    /// of the last layer level L): the transcripts computed, ascending. Each
    /// level holds the next.
    pub levels: Vec<Vec<u32>>,
    /// Per layer (level l → l + 1).
    pub layers: Vec<LayerRows>,
}

impl Rows {
    /// The rows of a model of `n_layers` layers whose loss reads the
    /// transcripts `pair_tx`; `belongs_rows` are the transcripts that send
    /// belongs messages (ascending).
    pub fn of(
        graph: &TileGraph,
        n_layers: usize,
        belongs_rows: &[u32],
        pair_tx: impl Iterator<Item = u32>,
    ) -> Self {
        let n_tx = graph.n_tx();
        let mut needed = vec![false; n_tx];
        for t in pair_tx {
            needed[t as usize] = true;
        }
        let listed = |needed: &[bool]| -> Vec<u32> {
            (0..n_tx as u32).filter(|&t| needed[t as usize]).collect()
        };
        let mut levels = vec![Vec::new(); n_layers + 1];
        levels[n_layers] = listed(&needed);
        for l in (0..n_layers).rev() {
            for &t in &levels[l + 1] {
                for &s in graph.neighbors.sources_of(t as usize) {
                    needed[s as usize] = true;
                }
            }
            for &t in belongs_rows {
                needed[t as usize] = true;
            }
            levels[l] = listed(&needed);
        }
        // Every lookup below is of a row of the current input level (which
        // holds its outputs, their sources and the belongs senders), so the
        // entries of earlier levels left in `local` are never read.
        let mut local = vec![u32::MAX; n_tx];
        let layers = (0..n_layers)
            .map(|l| {
                let (input, output) = (&levels[l], &levels[l + 1]);
                for (i, &t) in input.iter().enumerate() {
                    local[t as usize] = i as u32;
                }
                let mut offsets = Vec::with_capacity(output.len() + 1);
                let mut sources = Vec::new();
                offsets.push(0u32);
                for &t in output {
                    sources.extend(
                        graph
                            .neighbors
                            .sources_of(t as usize)
                            .iter()
                            .map(|&s| local[s as usize]),
                    );
                    offsets.push(sources.len() as u32);
                }
                let neighbors = Csr { offsets, sources };
                LayerRows {
                    neighbors_by_source: kernels::edges_by_source(&neighbors, input.len()),
                    neighbors_dst: fast::edge_destinations(&neighbors),
                    neighbors,
                    out_in_input: output.iter().map(|&t| local[t as usize]).collect(),
                    belongs_in_input: belongs_rows.iter().map(|&t| local[t as usize]).collect(),
                }
            })
            .collect();
        Self { levels, layers }
    }

    /// The index of transcript `t` among the last level's rows (`t` must be one).
    pub fn last_level_index(&self, t: u32) -> u32 {
        let last = self.levels.last().expect("level L");
        last.binary_search(&t)
            .expect("pair transcripts are in the last level") as u32
    }
}
