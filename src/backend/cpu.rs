//! The CPU backend: the kernel twins of `crate::kernels`, parallel with rayon.

use anyhow::Result;

use super::{Activations, Backend, BestMatches, Embeddings};
use crate::graph::{ReceptiveField, TileGraph};
use crate::kernels::{embed, gatv2, linear, score};
use crate::model::{GatWeights, Model, BD_FEATURES};

/// Runs every kernel on the CPU.
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend using rayon's global thread pool.
    pub fn new() -> Self {
        Self
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

fn dense(
    x: &[f32],
    rows: Option<&[u32]>,
    n_out: usize,
    in_dim: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let out_dim = wt.len() / in_dim;
    let mut out = vec![0.0; n_out * out_dim];
    let layer = linear::Linear {
        in_dim,
        out_dim,
        wt,
        bias,
        relu,
    };
    linear::linear(x, rows, &layer, &mut out);
    out
}

/// One GATv2 convolution: project sources and destinations, then aggregate.
fn conv(
    weights: &GatWeights,
    relu: bool,
    src: &[f32],
    src_rows: Option<&[u32]>,
    n_src_rows: usize,
    dst: &[f32],
    n_dst: usize,
    csr: &crate::graph::Csr,
) -> Vec<f32> {
    let in_dim = weights.in_dim;
    let xl = dense(
        src,
        src_rows,
        n_src_rows,
        in_dim,
        &weights.lin_l_wt,
        Some(&weights.lin_l_b),
        false,
    );
    let xr = dense(
        dst,
        None,
        n_dst,
        in_dim,
        &weights.lin_r_wt,
        Some(&weights.lin_r_b),
        false,
    );
    let mut out = vec![0.0; n_dst * weights.out_dim()];
    let gat = gatv2::Gat {
        heads: weights.heads,
        channels: weights.channels,
        att: &weights.att,
        bias: &weights.bias,
        relu,
    };
    gatv2::gatv2(&gat, &xl, &xr, csr, &mut out);
    out
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
        let emb = model.arch.emb;
        let mut h_tx = vec![0.0; n_tx * emb];
        embed::embed_relu(&model.tx_embedding, emb, &graph.tx_token, &mut h_tx);
        let bd_x: Vec<f32> = graph.bd_x.iter().map(|&v| nan_to_num(v)).collect();
        let mut h_bd = dense(
            &bd_x,
            None,
            n_bd,
            BD_FEATURES,
            &model.lin0_bd_wt,
            None,
            true,
        );

        // Only transcripts that send a belongs message need lin_l of that edge type.
        let (belongs_rows, belongs) = graph.belongs.compact_sources();
        let mut layers = Vec::new();
        for layer in &model.layers {
            if keep_layers {
                layers.push(Activations {
                    tx: h_tx.clone(),
                    bd: h_bd.clone(),
                });
            }
            let next_tx = conv(
                &layer.neighbors,
                layer.relu,
                &h_tx,
                None,
                n_tx,
                &h_tx,
                n_tx,
                &graph.neighbors,
            );
            let next_bd = conv(
                &layer.belongs,
                layer.relu,
                &h_tx,
                Some(&belongs_rows),
                belongs_rows.len(),
                &h_bd,
                n_bd,
                &belongs,
            );
            h_tx = next_tx;
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
}
