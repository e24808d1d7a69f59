//! One training step's arithmetic on the CPU: the forward pass keeping what
//! the backward pass needs, the pair loss, and the gradient of every
//! parameter (docs/contract.md, training section). Gradients are held in a
//! [`Model`] of the same shape, laid out as the weights are. The heavy
//! kernels are [`super::fast`]'s; the GPU runs the twins in [`super::kernels`].

use rayon::prelude::*;

use super::fast::{self, GatBackward};
use super::kernels;
use super::rows::Rows;
use crate::backend::cpu::{input_layer, InputLayer};
use crate::graph::{Csr, TileGraph};
use crate::kernels::{gatv2::Gat, linear};
use crate::model::{GatWeights, Model, BD_FEATURES};

/// The pairs one step learns from: positives (label 1) and negatives (label 0).
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    /// `(transcript, nucleus)` of every positive pair.
    pub positive: Vec<(u32, u32)>,
    /// `(transcript, nucleus)` of every negative pair.
    pub negative: Vec<(u32, u32)>,
}

impl Pairs {
    /// The positive class weight of the loss: negatives / positives (each at least 1).
    pub fn pos_weight(&self) -> f32 {
        self.negative.len().max(1) as f32 / self.positive.len().max(1) as f32
    }
}

/// What one relation's forward keeps.
struct ConvCache {
    xl: Buf,
    xr: Buf,
    alpha: Buf,
}

/// The forward activations of one graph.
struct Forward {
    /// `h_tx` before each layer and after the last (L + 1 entries).
    tx: Vec<Buf>,
    /// `h_bd` likewise.
    bd: Vec<Buf>,
    /// Per layer: (neighbours, belongs).
    convs: Vec<(ConvCache, ConvCache)>,
    bd_x: Vec<f32>,
}

/// The belongs graph as the kernels read it (every layer computes every nucleus).
struct Structure {
    /// Transcripts that send belongs messages, ascending.
    belongs_rows: Vec<u32>,
    /// The belongs graph with sources indexing `belongs_rows`.
    belongs: Csr,
    /// Belongs edge ids by source row.
    belongs_by_source: Csr,
    /// Each belongs edge's destination.
    belongs_dst: Vec<u32>,
}

impl Structure {
    fn of(graph: &TileGraph) -> Self {
        let (belongs_rows, belongs) = graph.belongs.compact_sources();
        Self {
            belongs_by_source: kernels::edges_by_source(&belongs, belongs_rows.len()),
            belongs_dst: fast::edge_destinations(&belongs),
            belongs_rows,
            belongs,
        }
    }
}

fn gat_of(w: &GatWeights, relu: bool) -> Gat<'_> {
    Gat {
        heads: w.heads,
        channels: w.channels,
        att: &w.att,
        bias: &w.bias,
        relu,
    }
}

/// Float buffers kept from one step to the next: a step reuses the last
/// step's memory instead of faulting in fresh pages from the system (about a
/// tenth of a step's time otherwise). Contents never carry over: a buffer
/// is only handed to a kernel that overwrites all of it. A buffer keeps
/// every value it ever held (a [`Buf`] shows the first `len`), so that
/// handing it out again writes nothing: after the first steps no buffer
/// is zeroed (resizing the vectors instead was a serial `memset` of about 2%
/// of a step).
#[derive(Debug, Default)]
pub struct Buffers {
    free: Vec<Vec<f32>>,
}

/// A buffer from [`Buffers`]: the first `len` values of a vector that may hold more.
#[derive(Debug)]
struct Buf {
    values: Vec<f32>,
    len: usize,
}

impl From<Vec<f32>> for Buf {
    fn from(values: Vec<f32>) -> Self {
        Self {
            len: values.len(),
            values,
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values[..self.len]
    }
}

impl Buffers {
    /// `n` values for a kernel that writes every one of them: the smallest
    /// free buffer that holds `n` values already, else the largest one
    /// lengthened (with zeros) to `n`, or a new one.
    fn overwritten(&mut self, n: usize) -> Buf {
        let pick = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= n)
            .min_by_key(|(_, v)| v.len())
            .or_else(|| self.free.iter().enumerate().max_by_key(|(_, v)| v.len()))
            .map(|(i, _)| i);
        let mut values = pick.map_or_else(Vec::new, |i| self.free.swap_remove(i));
        if values.len() < n {
            values.resize(n, 0.0);
        }
        Buf { values, len: n }
    }

    /// Takes `buf` back for later steps.
    fn give(&mut self, buf: Buf) {
        self.free.push(buf.values);
    }
}

#[allow(clippy::too_many_arguments)]
fn project(
    bufs: &mut Buffers,
    x: &[f32],
    rows: Option<&[u32]>,
    n: usize,
    wt: &[f32],
    b: &[f32],
    in_dim: usize,
    out_dim: usize,
) -> Buf {
    let mut out = bufs.overwritten(n * out_dim);
    linear::linear(
        x,
        rows,
        &linear::Linear {
            in_dim,
            out_dim,
            wt,
            bias: Some(b),
            relu: false,
        },
        &mut out,
    );
    out
}

/// The forward of one relation onto the destinations of `csr`: sources
/// `src[src_rows]` (`n_src` rows), destinations `dst[dst_rows]`.
#[allow(clippy::too_many_arguments)]
fn conv_forward(
    bufs: &mut Buffers,
    w: &GatWeights,
    relu: bool,
    src: &[f32],
    src_rows: Option<&[u32]>,
    n_src: usize,
    dst: &[f32],
    dst_rows: Option<&[u32]>,
    csr: &Csr,
) -> (Buf, ConvCache) {
    let hc = w.out_dim();
    let n_dst = csr.n_dst();
    let xl = project(
        bufs,
        src,
        src_rows,
        n_src,
        &w.lin_l_wt,
        &w.lin_l_b,
        w.in_dim,
        hc,
    );
    let xr = project(
        bufs,
        dst,
        dst_rows,
        n_dst,
        &w.lin_r_wt,
        &w.lin_r_b,
        w.in_dim,
        hc,
    );
    let mut out = bufs.overwritten(n_dst * hc);
    let mut alpha = bufs.overwritten(csr.n_edges() * w.heads);
    fast::gatv2_forward(&gat_of(w, relu), &xl, &xr, csr, &mut out, &mut alpha);
    (out, ConvCache { xl, xr, alpha })
}

/// The forward pass over the rows of `rows`: `tx[l]` holds the rows of
/// level l, `bd[l]` every nucleus.
fn forward(
    bufs: &mut Buffers,
    model: &Model,
    graph: &TileGraph,
    structure: &Structure,
    rows: &Rows,
) -> Forward {
    let InputLayer {
        bd_x,
        tx: h_tx,
        bd: h_bd,
    } = input_layer(model, graph);
    let h_tx = if rows.levels[0].len() == graph.n_tx() {
        Buf::from(h_tx)
    } else {
        let emb = model.arch.emb;
        let mut compact = bufs.overwritten(rows.levels[0].len() * emb);
        for (row, &t) in compact.chunks_exact_mut(emb).zip(&rows.levels[0]) {
            row.copy_from_slice(&h_tx[t as usize * emb..(t as usize + 1) * emb]);
        }
        compact
    };
    let mut tx = vec![h_tx];
    let mut bd = vec![Buf::from(h_bd)];
    let mut convs = Vec::new();
    for ((layer, layer_rows), n_in) in model
        .layers
        .iter()
        .zip(&rows.layers)
        .zip(rows.levels.iter().map(Vec::len))
    {
        let (h_tx, h_bd) = (tx.last().expect("input"), bd.last().expect("input"));
        let (next_tx, tt) = conv_forward(
            bufs,
            &layer.neighbors,
            layer.relu,
            h_tx,
            None,
            n_in,
            h_tx,
            Some(&layer_rows.out_in_input),
            &layer_rows.neighbors,
        );
        let (next_bd, tb) = conv_forward(
            bufs,
            &layer.belongs,
            layer.relu,
            h_tx,
            Some(&layer_rows.belongs_in_input),
            structure.belongs_rows.len(),
            h_bd,
            None,
            &structure.belongs,
        );
        tx.push(next_tx);
        bd.push(next_bd);
        convs.push((tt, tb));
    }
    Forward {
        tx,
        bd,
        convs,
        bd_x,
    }
}

/// A model of the same shape with every tensor zero: a gradient buffer.
pub fn zeros_like(model: &Model) -> Model {
    let mut grads = model.clone();
    for (_, tensor) in super::params_mut(&mut grads) {
        tensor.fill(0.0);
    }
    grads
}

/// Gradients one relation hands back to its inputs.
struct ConvBack {
    d_src: Buf,
    d_dst: Buf,
}

/// Backward of one relation, inputs as in [`conv_forward`]. `g` is d loss /
/// d output (ReLU mask applied); `d_src` and `d_dst` are per source and
/// destination row (`dst_rows` not applied).
#[allow(clippy::too_many_arguments)]
fn conv_backward(
    bufs: &mut Buffers,
    w: &GatWeights,
    dw: &mut GatWeights,
    cache: &ConvCache,
    g: &[f32],
    src: &[f32],
    src_rows: Option<&[u32]>,
    n_src: usize,
    dst: &[f32],
    dst_rows: Option<&[u32]>,
    csr: &Csr,
    by_source: &Csr,
    edge_dst: &[u32],
) -> ConvBack {
    let hc = w.out_dim();
    let n_dst = csr.n_dst();
    fast::column_sums(g, hc, &mut dw.bias);
    let mut dxr = bufs.overwritten(n_dst * hc);
    let mut dxl = bufs.overwritten(n_src * hc);
    let mut datt_dst = bufs.overwritten(n_dst * hc);
    let mut dbias_l_dst = bufs.overwritten(n_dst * hc);
    fast::gatv2_backward(
        &gat_of(w, false),
        &cache.xl,
        &cache.xr,
        csr,
        &cache.alpha,
        g,
        by_source,
        edge_dst,
        GatBackward {
            dxr: &mut dxr,
            dxl: &mut dxl,
            datt_dst: &mut datt_dst,
            dbias_l_dst: &mut dbias_l_dst,
        },
    );
    fast::column_sums(&datt_dst, hc, &mut dw.att);
    bufs.give(datt_dst);
    // lin_l's bias from the destinations, not as Σ d xl: the same in exact
    // arithmetic, without the rounding noise of attention terms that cancel.
    fast::column_sums(&dbias_l_dst, hc, &mut dw.lin_l_b);
    bufs.give(dbias_l_dst);
    fast::linear_weight_grad(src, src_rows, &dxl, w.in_dim, hc, &mut dw.lin_l_wt, None);
    fast::linear_weight_grad(
        dst,
        dst_rows,
        &dxr,
        w.in_dim,
        hc,
        &mut dw.lin_r_wt,
        Some(&mut dw.lin_r_b),
    );
    let mut d_src = bufs.overwritten(n_src * w.in_dim);
    fast::linear_input_grad(&dxl, &w.lin_l_wt, w.in_dim, hc, &mut d_src);
    let mut d_dst = bufs.overwritten(n_dst * w.in_dim);
    fast::linear_input_grad(&dxr, &w.lin_r_wt, w.in_dim, hc, &mut d_dst);
    bufs.give(dxl);
    bufs.give(dxr);
    ConvBack { d_src, d_dst }
}

/// The loss of one graph and its pairs, and (added to `grads`) the gradient
/// of every parameter. Returns the loss.
pub fn loss_and_grad(model: &Model, graph: &TileGraph, pairs: &Pairs, grads: &mut Model) -> f32 {
    loss_and_grad_with(&mut Buffers::default(), model, graph, pairs, grads)
}

/// [`loss_and_grad`] with its float buffers taken from (and returned to)
/// `bufs`, for a loop of steps; the results do not depend on `bufs`.
pub fn loss_and_grad_with(
    bufs: &mut Buffers,
    model: &Model,
    graph: &TileGraph,
    pairs: &Pairs,
    grads: &mut Model,
) -> f32 {
    let structure = Structure::of(graph);
    let all: Vec<(u32, u32)> = pairs
        .positive
        .iter()
        .chain(&pairs.negative)
        .copied()
        .collect();
    let rows = Rows::of(
        graph,
        model.layers.len(),
        &structure.belongs_rows,
        all.iter().map(|p| p.0),
    );
    let fwd = forward(bufs, model, graph, &structure, &rows);
    let (n_out, n_bd) = (rows.levels[model.layers.len()].len(), graph.n_bd());
    let dim = model.arch.z_dim();
    let z_tx = fwd.tx.last().expect("output");
    let z_bd = fwd.bd.last().expect("output");

    // Loss and d loss / d logit, pair by pair (positives then negatives);
    // transcripts as rows of the last level.
    let all: Vec<(u32, u32)> = all
        .into_iter()
        .map(|(t, b)| (rows.last_level_index(t), b))
        .collect();
    let n_pos = pairs.positive.len();
    let pos_weight = pairs.pos_weight();
    let terms: Vec<(f32, f32)> = all
        .par_iter()
        .enumerate()
        .map(|(p, &pair)| {
            kernels::pair_loss_at(z_tx, z_bd, dim, pair, p < n_pos, pos_weight, all.len())
        })
        .collect();
    let loss = terms.iter().map(|t| t.0 as f64).sum::<f64>() as f32;
    let d_logit: Vec<f32> = terms.iter().map(|t| t.1).collect();
    let tx_of: Vec<u32> = all.iter().map(|p| p.0).collect();
    let bd_of: Vec<u32> = all.iter().map(|p| p.1).collect();
    let pairs_by_tx = Csr::from_edges(n_out, (0..all.len() as u32).map(|p| (p, tx_of[p as usize])));
    let pairs_by_bd = Csr::from_edges(n_bd, (0..all.len() as u32).map(|p| (p, bd_of[p as usize])));
    let mut d_tx = bufs.overwritten(n_out * dim);
    d_tx.par_chunks_mut(dim).enumerate().for_each(|(t, row)| {
        kernels::pair_grad_at(&pairs_by_tx, &bd_of, &d_logit, z_bd, dim, t, row)
    });
    let mut d_bd = bufs.overwritten(n_bd * dim);
    d_bd.par_chunks_mut(dim).enumerate().for_each(|(b, row)| {
        kernels::pair_grad_at(&pairs_by_bd, &tx_of, &d_logit, z_tx, dim, b, row)
    });

    for (l, layer) in model.layers.iter().enumerate().rev() {
        if layer.relu {
            fast::relu_backward(&mut d_tx, &fwd.tx[l + 1]);
            fast::relu_backward(&mut d_bd, &fwd.bd[l + 1]);
        }
        let (tt, tb) = &fwd.convs[l];
        let layer_rows = &rows.layers[l];
        let layer_grads = &mut grads.layers[l];
        let (h_tx, h_bd) = (&fwd.tx[l], &fwd.bd[l]);
        let back_tt = conv_backward(
            bufs,
            &layer.neighbors,
            &mut layer_grads.neighbors,
            tt,
            &d_tx,
            h_tx,
            None,
            rows.levels[l].len(),
            h_tx,
            Some(&layer_rows.out_in_input),
            &layer_rows.neighbors,
            &layer_rows.neighbors_by_source,
            &layer_rows.neighbors_dst,
        );
        let back_tb = conv_backward(
            bufs,
            &layer.belongs,
            &mut layer_grads.belongs,
            tb,
            &d_bd,
            h_tx,
            Some(&layer_rows.belongs_in_input),
            structure.belongs_rows.len(),
            h_bd,
            None,
            &structure.belongs,
            &structure.belongs_by_source,
            &structure.belongs_dst,
        );
        // d h_tx: neighbour sources, then neighbour destinations, then belongs sources.
        let mut next_tx = back_tt.d_src;
        fast::scatter_add_rows(
            &mut next_tx,
            layer.neighbors.in_dim,
            [
                (&layer_rows.out_in_input[..], &back_tt.d_dst[..]),
                (&layer_rows.belongs_in_input[..], &back_tb.d_src[..]),
            ],
        );
        bufs.give(back_tt.d_dst);
        bufs.give(back_tb.d_src);
        bufs.give(std::mem::replace(&mut d_tx, next_tx));
        bufs.give(std::mem::replace(&mut d_bd, back_tb.d_dst));
    }
    // Layer 0: ReLU of the embedding and of lin0.
    fast::relu_backward(&mut d_tx, &fwd.tx[0]);
    fast::relu_backward(&mut d_bd, &fwd.bd[0]);
    let emb = model.arch.emb;
    let tokens: Vec<u32> = rows.levels[0]
        .iter()
        .map(|&t| graph.tx_token[t as usize])
        .collect();
    kernels::embedding_grad(&tokens, &d_tx, emb, &mut grads.tx_embedding);
    fast::linear_weight_grad(
        &fwd.bd_x,
        None,
        &d_bd,
        BD_FEATURES,
        emb,
        &mut grads.lin0_bd_wt,
        None,
    );
    let Forward { tx, bd, convs, .. } = fwd;
    for v in tx.into_iter().chain(bd).chain([d_tx, d_bd]) {
        bufs.give(v);
    }
    for cache in convs.into_iter().flat_map(|(tt, tb)| [tt, tb]) {
        for v in [cache.xl, cache.xr, cache.alpha] {
            bufs.give(v);
        }
    }
    loss
}
