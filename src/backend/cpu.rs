//! The CPU backend: the kernel twins of `crate::kernels`, parallel with rayon.

use anyhow::Result;

use super::{
    receptive_field, Activations, Backend, BestMatches, EdgeSimilarity, Embeddings, FragmentSlots,
};
use crate::graph::{ReceptiveField, TileGraph};
use crate::kernels::{components, edge_similarity, embed, gatv2, linear, score};
use crate::model::{GatWeights, Model, BD_FEATURES};

/// Runs every kernel on the CPU.
#[derive(Debug, Default)]
pub struct CpuBackend {
    /// Scratch buffers reused across layers and tiles, so large activations
    /// are not allocated (and page-faulted) afresh for every layer.
    scratch: [Vec<f32>; 3],
}

impl CpuBackend {
    /// A CPU backend using rayon's global thread pool.
    pub fn new() -> Self {
        Self::default()
    }
}

/// `torch.nan_to_num`: NaN → 0, ±inf → the largest finite values.
fn nan_to_num(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(f32::MIN, f32::MAX)
    }
}

/// The first `len` elements of `buf`, growing it when needed. Contents are
/// stale: every kernel writes all of its output.
fn window(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Inputs of one GATv2 convolution.
struct ConvInput<'a> {
    /// Source activations `[n, in]`.
    src: &'a [f32],
    /// Rows of `src` that send messages (all when `None`).
    src_rows: Option<&'a [u32]>,
    /// Number of message rows.
    n_src_rows: usize,
    /// Destination activations `[n_dst, in]`.
    dst: &'a [f32],
    /// Incoming edges per destination, sources indexing the message rows.
    csr: &'a crate::graph::Csr,
}

/// One GATv2 convolution: project sources and destinations, then aggregate
/// into `out` (`[n_dst, H·C]`). `xl` and `xr` are scratch space.
fn conv(
    weights: &GatWeights,
    relu: bool,
    input: ConvInput,
    xl: &mut Vec<f32>,
    xr: &mut Vec<f32>,
    out: &mut [f32],
) {
    let in_dim = weights.in_dim;
    let hc = weights.out_dim();
    let n_dst = input.csr.n_dst();
    let xl = window(xl, input.n_src_rows * hc);
    let lin_l = linear::Linear {
        in_dim,
        out_dim: hc,
        wt: &weights.lin_l_wt,
        bias: Some(&weights.lin_l_b),
        relu: false,
    };
    linear::linear(input.src, input.src_rows, &lin_l, xl);
    let xr = window(xr, n_dst * hc);
    let lin_r = linear::Linear {
        in_dim,
        out_dim: hc,
        wt: &weights.lin_r_wt,
        bias: Some(&weights.lin_r_b),
        relu: false,
    };
    linear::linear(&input.dst[..n_dst * in_dim], None, &lin_r, xr);
    let gat = gatv2::Gat {
        heads: weights.heads,
        channels: weights.channels,
        att: &weights.att,
        bias: &weights.bias,
        relu,
    };
    gatv2::gatv2(&gat, xl, xr, input.csr, out);
}

/// Layer 0 of the network: ReLU of the token embedding for transcripts and
/// of `lin0` for nuclei (features with NaN → 0 first).
pub struct InputLayer {
    /// Nucleus features after `nan_to_num`, `[n_bd, BD_FEATURES]`.
    pub bd_x: Vec<f32>,
    /// Transcript embeddings, `[n_tx, emb]`.
    pub tx: Vec<f32>,
    /// Nucleus embeddings, `[n_bd, emb]`.
    pub bd: Vec<f32>,
}

/// Computes [`InputLayer`] for `graph`; inference and training share it.
pub fn input_layer(model: &Model, graph: &TileGraph) -> InputLayer {
    let emb = model.arch.emb;
    let mut tx = vec![0.0; graph.n_tx() * emb];
    embed::embed_relu(&model.tx_embedding, emb, &graph.tx_token, &mut tx);
    let bd_x: Vec<f32> = graph.bd_x.iter().map(|&v| nan_to_num(v)).collect();
    let mut bd = vec![0.0; graph.n_bd() * emb];
    let lin0 = linear::Linear {
        in_dim: BD_FEATURES,
        out_dim: emb,
        wt: &model.lin0_bd_wt,
        bias: None,
        relu: true,
    };
    linear::linear(&bd_x, None, &lin0, &mut bd);
    InputLayer { bd_x, tx, bd }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn forward(
        &mut self,
        model: &Model,
        graph: &TileGraph,
        keep_layers: bool,
    ) -> Result<Embeddings> {
        let (n_tx, n_bd) = (graph.n_tx(), graph.n_bd());
        let InputLayer {
            tx: mut h_tx,
            bd: mut h_bd,
            ..
        } = input_layer(model, graph);

        // Only transcripts that send a belongs message need lin_l of that edge type.
        let (belongs_rows, belongs) = graph.belongs.compact_sources();
        let [xl, xr, next_tx_buf] = &mut self.scratch;
        let mut layers = Vec::new();
        for layer in &model.layers {
            if keep_layers {
                layers.push(Activations {
                    tx: h_tx.clone(),
                    bd: h_bd.clone(),
                });
            }
            let width = layer.neighbors.out_dim();
            let next_tx = window(next_tx_buf, n_tx * width);
            conv(
                &layer.neighbors,
                layer.relu,
                ConvInput {
                    src: &h_tx,
                    src_rows: None,
                    n_src_rows: n_tx,
                    dst: &h_tx,
                    csr: &graph.neighbors,
                },
                xl,
                xr,
                next_tx,
            );
            let mut next_bd = vec![0.0; n_bd * width];
            conv(
                &layer.belongs,
                layer.relu,
                ConvInput {
                    src: &h_tx,
                    src_rows: Some(&belongs_rows),
                    n_src_rows: belongs_rows.len(),
                    dst: &h_bd,
                    csr: &belongs,
                },
                xl,
                xr,
                &mut next_bd,
            );
            // Swap rather than copy: the old activations become the next layer's scratch.
            next_tx_buf.truncate(n_tx * width);
            std::mem::swap(&mut h_tx, next_tx_buf);
            h_bd = next_bd;
        }
        if keep_layers {
            layers.push(Activations {
                tx: h_tx.clone(),
                bd: h_bd.clone(),
            });
        }
        Ok(Embeddings {
            z_tx: h_tx,
            z_bd: h_bd,
            dim: model.arch.z_dim(),
            layers,
        })
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        let (score, index) = score::best(&embeddings.z_tx, &embeddings.z_bd, embeddings.dim, rf);
        Ok(BestMatches { score, index })
    }

    fn score_tile(&mut self, model: &Model, graph: &TileGraph) -> Result<BestMatches> {
        let rf = receptive_field(graph)?;
        let embeddings = self.forward(model, graph, false)?;
        self.score(&embeddings, rf)
    }

    fn fragment_similarity(&mut self, slots: FragmentSlots) -> Result<EdgeSimilarity> {
        let FragmentSlots {
            neighbors,
            k,
            tokens,
            unit,
            dim,
        } = slots;
        let similarity = edge_similarity::edge_similarity(neighbors, k, tokens, unit, dim);
        let histogram = edge_similarity::similarity_histogram(neighbors, &similarity);
        Ok(EdgeSimilarity {
            similarity,
            histogram,
        })
    }

    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>> {
        Ok(components::components(n, edges))
    }
}
