//! The CPU backend: the kernel twins of `crate::kernels`, parallel with rayon.

use std::borrow::Cow;

use anyhow::Result;

use super::{
    receptive_field, Activations, Backend, BestMatches, EdgeSimilarity, Embeddings, FragmentSlots,
};
use rayon::prelude::*;

use crate::graph::{Csr, ReceptiveField, TileGraph};
use crate::kernels::{components, edge_similarity, embed, gatv2, linear, score, ROWS_PER_TASK};
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

/// The rows one forward pass computes.
struct Plan {
    /// For each layer input l = 0..=L (l = L: the output), the transcripts
    /// whose activations are computed, increasing; `None`: all of them.
    tx: Vec<Option<Vec<u32>>>,
    /// The nuclei computed at every layer, increasing; `None`: all of them.
    bd: Option<Vec<u32>>,
}

impl Plan {
    /// Every row of every layer.
    fn all(model: &Model) -> Self {
        Self {
            tx: vec![None; model.layers.len() + 1],
            bd: None,
        }
    }

    /// The rows the scores of `rf` depend on. The last layer: transcripts
    /// with a candidate, and their candidate nuclei. A layer's nuclei need
    /// the same nuclei one layer down and their belongs sources; a layer's
    /// transcripts need themselves and their neighbour sources one layer down.
    fn for_scores(model: &Model, graph: &TileGraph, rf: &ReceptiveField) -> Self {
        let n_tx = graph.n_tx();
        let mut nucleus_needed = vec![false; graph.n_bd()];
        let mut needed = vec![false; n_tx];
        for (tx, row) in rf.index.chunks(rf.k.max(1)).enumerate().take(n_tx) {
            for &n in row.iter().filter(|&&n| n >= 0) {
                needed[tx] = true;
                nucleus_needed[n as usize] = true;
            }
        }
        let bd: Vec<u32> = (0..graph.n_bd() as u32)
            .filter(|&n| nucleus_needed[n as usize])
            .collect();
        let listed = |needed: &[bool]| -> Vec<u32> {
            (0..n_tx as u32).filter(|&i| needed[i as usize]).collect()
        };
        let senders: Vec<u32> = bd
            .iter()
            .flat_map(|&n| graph.belongs.sources_of(n as usize))
            .copied()
            .collect();
        let mut tx = vec![listed(&needed)];
        for _ in 0..model.layers.len() {
            let mut below = needed.clone();
            for &s in &senders {
                below[s as usize] = true;
            }
            for (d, _) in needed.iter().enumerate().filter(|(_, &need)| need) {
                for &s in graph.neighbors.sources_of(d) {
                    below[s as usize] = true;
                }
            }
            tx.push(listed(&below));
            needed = below;
        }
        tx.reverse();
        Self {
            tx: tx.into_iter().map(Some).collect(),
            bd: Some(bd),
        }
    }
}

/// Position of each node in a list of rows (`u32::MAX` where absent), or
/// the identity when every row is there.
struct Positions(Option<Vec<u32>>);

impl Positions {
    fn new(rows: Option<&[u32]>, n: usize) -> Self {
        Self(rows.map(|rows| {
            let mut pos = vec![u32::MAX; n];
            for (i, &r) in rows.iter().enumerate() {
                pos[r as usize] = i as u32;
            }
            pos
        }))
    }

    fn of(&self, node: u32) -> u32 {
        self.0.as_ref().map_or(node, |pos| pos[node as usize])
    }
}

/// The incoming edges of the destinations `dst` (all when `None`), sources
/// renumbered by `positions`.
fn sub_csr<'a>(csr: &'a Csr, dst: Option<&[u32]>, positions: &Positions) -> Cow<'a, Csr> {
    if dst.is_none() && positions.0.is_none() {
        return Cow::Borrowed(csr);
    }
    let n = dst.map_or(csr.n_dst(), <[u32]>::len);
    let node = |i: usize| dst.map_or(i, |d| d[i] as usize);
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0u32);
    let mut sources = Vec::new();
    for i in 0..n {
        sources.extend(csr.sources_of(node(i)).iter().map(|&s| positions.of(s)));
        offsets.push(sources.len() as u32);
    }
    Cow::Owned(Csr { offsets, sources })
}

/// `out[i] = table[keys[i]]` for rows of `width` values.
fn gather_rows(table: &[f32], width: usize, keys: impl Fn(usize) -> usize + Sync, out: &mut [f32]) {
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, block)| {
            for (i, row) in block.chunks_exact_mut(width).enumerate() {
                let key = keys(chunk * ROWS_PER_TASK + i);
                row.copy_from_slice(&table[key * width..(key + 1) * width]);
            }
        });
}

/// A dense layer of a GATv2 convolution (no ReLU).
fn projection<'a>(in_dim: usize, hc: usize, wt: &'a [f32], b: &'a [f32]) -> linear::Linear<'a> {
    linear::Linear {
        in_dim,
        out_dim: hc,
        wt,
        bias: Some(b),
        relu: false,
    }
}

/// The aggregation constants of `w`.
fn gat(w: &GatWeights, relu: bool) -> gatv2::Gat<'_> {
    gatv2::Gat {
        heads: w.heads,
        channels: w.channels,
        att: &w.att,
        bias: &w.bias,
        relu,
    }
}

/// `lin` applied to every vocabulary row of the first layer's transcript
/// input, ReLU(embedding): the first layer's projections of a transcript
/// are the row of its token.
fn token_table(model: &Model, lin: &linear::Linear) -> Vec<f32> {
    let (vocab, emb) = (model.arch.vocab, model.arch.emb);
    let tokens: Vec<u32> = (0..vocab as u32).collect();
    let mut input = vec![0.0; vocab * emb];
    embed::embed_relu(&model.tx_embedding, emb, &tokens, &mut input);
    let mut table = vec![0.0; vocab * lin.out_dim];
    linear::linear(&input, None, lin, &mut table);
    table
}

impl CpuBackend {
    /// The forward pass over the rows of `plan`: returns z_tx over
    /// `plan.tx[L]` and z_bd over `plan.bd`, each in list order. With
    /// `layers` (a plan of all rows only), pushes every layer's activations.
    fn run(
        &mut self,
        model: &Model,
        graph: &TileGraph,
        plan: &Plan,
        mut layers: Option<&mut Vec<Activations>>,
    ) -> (Vec<f32>, Vec<f32>) {
        let (n_tx, n_bd) = (graph.n_tx(), graph.n_bd());
        let emb = model.arch.emb;
        let bd_rows = plan.bd.as_deref();
        let n_bd_rows = bd_rows.map_or(n_bd, <[u32]>::len);
        // Layer 0 of the nuclei: lin0 of the features with NaN → 0.
        let mut bd_x = vec![0.0; n_bd_rows * BD_FEATURES];
        for (i, row) in bd_x.chunks_exact_mut(BD_FEATURES).enumerate() {
            let n = bd_rows.map_or(i, |rows| rows[i] as usize);
            for (v, &x) in row.iter_mut().zip(&graph.bd_x[n * BD_FEATURES..]) {
                *v = nan_to_num(x);
            }
        }
        let mut h_bd = vec![0.0; n_bd_rows * emb];
        let lin0 = linear::Linear {
            in_dim: BD_FEATURES,
            out_dim: emb,
            wt: &model.lin0_bd_wt,
            bias: None,
            relu: true,
        };
        linear::linear(&bd_x, None, &lin0, &mut h_bd);
        // Belongs edges of the computed nuclei, sources renumbered into the
        // distinct senders (only they need lin_l of that edge type).
        let (senders, belongs) = {
            let sub = sub_csr(&graph.belongs, bd_rows, &Positions(None));
            sub.compact_sources()
        };
        let tokens = &graph.tx_token;
        let [xl, xr, next_tx_buf] = &mut self.scratch;
        // h_tx of the layer below; empty before layer 1 (the token tables stand in).
        let mut h_tx: Vec<f32> = Vec::new();
        for (l, layer) in model.layers.iter().enumerate() {
            let (below, here) = (plan.tx[l].as_deref(), plan.tx[l + 1].as_deref());
            let below_pos = Positions::new(below, n_tx);
            let n_below = below.map_or(n_tx, <[u32]>::len);
            let n_here = here.map_or(n_tx, <[u32]>::len);
            let node = |rows: Option<&[u32]>, i: usize| rows.map_or(i, |r| r[i] as usize);
            let (nb, bl) = (&layer.neighbors, &layer.belongs);
            let hc = nb.out_dim();
            let in_dim = nb.in_dim;
            let nb_l = projection(in_dim, hc, &nb.lin_l_wt, &nb.lin_l_b);
            let nb_r = projection(in_dim, hc, &nb.lin_r_wt, &nb.lin_r_b);
            let bl_l = projection(in_dim, hc, &bl.lin_l_wt, &bl.lin_l_b);
            let bl_r = projection(in_dim, hc, &bl.lin_r_wt, &bl.lin_r_b);
            // Rows of the layer below that the destinations of this layer are.
            let here_rows: Option<Vec<u32>> =
                here.map(|h| h.iter().map(|&t| below_pos.of(t)).collect());
            let sender_rows: Vec<u32> = senders.iter().map(|&t| below_pos.of(t)).collect();

            // tx → tx.
            let tx_l = window(xl, n_below * hc);
            let tx_r = window(xr, n_here * hc);
            if l == 0 {
                let table_l = token_table(model, &nb_l);
                gather_rows(&table_l, hc, |i| tokens[node(below, i)] as usize, tx_l);
                let table_r = token_table(model, &nb_r);
                gather_rows(&table_r, hc, |i| tokens[node(here, i)] as usize, tx_r);
            } else {
                linear::linear(&h_tx, None, &nb_l, tx_l);
                linear::linear(&h_tx, here_rows.as_deref(), &nb_r, tx_r);
            }
            let csr = sub_csr(&graph.neighbors, here, &below_pos);
            let next_tx = window(next_tx_buf, n_here * hc);
            gatv2::gatv2(&gat(nb, layer.relu), tx_l, tx_r, &csr, next_tx);

            // tx → bd.
            let bd_l = window(xl, senders.len() * hc);
            if l == 0 {
                let table = token_table(model, &bl_l);
                gather_rows(&table, hc, |i| tokens[senders[i] as usize] as usize, bd_l);
            } else {
                linear::linear(&h_tx, Some(&sender_rows), &bl_l, bd_l);
            }
            let bd_r = window(xr, n_bd_rows * hc);
            linear::linear(&h_bd, None, &bl_r, bd_r);
            let mut next_bd = vec![0.0; n_bd_rows * hc];
            gatv2::gatv2(&gat(bl, layer.relu), bd_l, bd_r, &belongs, &mut next_bd);

            // Swap rather than copy: the old activations become the next layer's scratch.
            next_tx_buf.truncate(n_here * hc);
            std::mem::swap(&mut h_tx, next_tx_buf);
            h_bd = next_bd;
            if let Some(layers) = layers.as_deref_mut() {
                layers.push(Activations {
                    tx: h_tx.clone(),
                    bd: h_bd.clone(),
                });
            }
        }
        (h_tx, h_bd)
    }
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
        let plan = Plan::all(model);
        let mut layers = Vec::new();
        if keep_layers {
            let input = input_layer(model, graph);
            layers.push(Activations {
                tx: input.tx,
                bd: input.bd,
            });
        }
        let (z_tx, z_bd) = self.run(model, graph, &plan, keep_layers.then_some(&mut layers));
        Ok(Embeddings {
            z_tx,
            z_bd,
            dim: model.arch.z_dim(),
            layers,
        })
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        let (score, index) = score::best(&embeddings.z_tx, &embeddings.z_bd, embeddings.dim, rf);
        Ok(BestMatches { score, index })
    }

    /// Computes only what the scores need: the transcripts with a candidate
    /// at the last layer, and at each earlier layer the rows those depend on
    /// (see [`Plan::for_scores`]); every computed value is the one the full
    /// forward pass computes, so the result equals `forward` then `score`.
    fn score_tile(&mut self, model: &Model, graph: &TileGraph) -> Result<BestMatches> {
        let rf = receptive_field(graph)?;
        let plan = Plan::for_scores(model, graph, rf);
        let (z_tx, z_bd) = self.run(model, graph, &plan, None);
        let scored = plan.tx.last().expect("a plan has layer rows");
        let Some(scored) = scored else {
            let (score, index) = score::best(&z_tx, &z_bd, model.arch.z_dim(), rf);
            return Ok(BestMatches { score, index });
        };
        let nuclei = plan.bd.as_deref().expect("a pruned plan lists its nuclei");
        // Receptive-field rows of the scored transcripts, nuclei renumbered
        // into the computed ones (increasing, so ties still go to the lower).
        let mut compact = ReceptiveField {
            k: rf.k,
            index: Vec::with_capacity(scored.len() * rf.k),
        };
        for &tx in scored {
            compact.index.extend(
                rf.index[tx as usize * rf.k..(tx as usize + 1) * rf.k]
                    .iter()
                    .map(|&n| {
                        if n < 0 {
                            -1
                        } else {
                            nuclei.binary_search(&(n as u32)).expect("planned") as i32
                        }
                    }),
            );
        }
        let (best_score, best_index) = score::best(&z_tx, &z_bd, model.arch.z_dim(), &compact);
        // A transcript without candidate scores (0, −1), as `score::best_at` gives it.
        let mut out = BestMatches {
            score: vec![0.0; graph.n_tx()],
            index: vec![-1; graph.n_tx()],
        };
        for (j, &tx) in scored.iter().enumerate() {
            if best_index[j] >= 0 {
                out.score[tx as usize] = best_score[j];
                out.index[tx as usize] = nuclei[best_index[j] as usize] as i32;
            }
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With part of the receptive field empty (as for a tile's margin),
    /// `score_tile` computes only the rows the scores depend on and still
    /// equals the full forward pass then scoring, bit for bit.
    #[test]
    fn pruned_score_tile_equals_forward_then_score() {
        let (model, mut graph) = crate::synthetic::tile(6000, 3);
        let rf = graph.receptive_field.as_mut().unwrap();
        // Keep candidates for a third of the transcripts, in runs, so that
        // the rows needed below reach into the unscored ones.
        for (tx, row) in rf.index.chunks_mut(rf.k).enumerate() {
            if (tx / 500) % 3 != 1 {
                row.fill(-1);
            }
        }
        let mut cpu = CpuBackend::new();
        let plan = Plan::for_scores(&model, &graph, graph.receptive_field.as_ref().unwrap());
        let first = plan.tx[0].as_ref().unwrap();
        let last = plan.tx.last().unwrap().as_ref().unwrap();
        assert!(last.len() < first.len() && first.len() < graph.n_tx());
        let tile = cpu.score_tile(&model, &graph).unwrap();
        let z = cpu.forward(&model, &graph, false).unwrap();
        let full = cpu
            .score(&z, graph.receptive_field.as_ref().unwrap())
            .unwrap();
        assert_eq!(tile, full);
        assert!(tile.index.iter().filter(|&&i| i >= 0).count() > 1000);
    }
}
