//! Training on the GPU: one step (the forward pass keeping what the backward
//! pass needs, the pair loss, every gradient, Adam) as one program, one
//! submission and one readback — the pairs' loss terms, summed on the host in
//! the CPU trainer's order. Weights, Adam's moments, activations and
//! gradients stay on the device between steps; [`GpuTrainer::model`] reads
//! the weights back. With [`GpuTrainer::with_checkpoints`] (`--backend
//! auto`) every n-th step's readback also carries the weights and moments: a
//! checkpoint from which the CPU can go on (replaying the steps since it)
//! after a lost device.
//!
//! The arithmetic is that of [`crate::train::grad::loss_and_grad`] and
//! [`crate::train::Adam`], kernel for kernel: the forward layers run the
//! inference kernels (embedding, dense layers, twins of
//! [`crate::kernels`]), the GATv2 forward with attention weights, every
//! backward kernel and Adam run the `train_*` shaders, twins of
//! [`crate::train::kernels`] with the same reduction order (no float
//! atomics: sources sum their edges' contributions through a source-sorted
//! list, parameter gradients sum fixed row chunks in chunk order).
//!
//! Limits: no array needs to fit one storage binding. The dense layers and
//! the embedding are chunked as in the forward pass; every training kernel
//! runs on chunks of its rows ([`super::train_chunks`]): windows of the
//! arrays streamed by row or by edge, a CSR copy per chunk, compact copies
//! of arrays read through an index list when they are too large, weight
//! gradients over runs of whole reduction chunks summed in chunk order. The
//! arithmetic of every row is unchanged, so a split step gives the bits of
//! an unsplit one. What cannot be split is a [`GpuError::TooLarge`] naming
//! the array: a single row (one destination's edges, one token's
//! transcripts) or a weight block larger than a binding, or a slot larger
//! than the device's largest buffer.

use super::chunking::Aux;
use super::forward::{self, ModelLayout, MODEL};
use super::kernels::gatv2::GatWeights;
use super::kernels::linear::{self, Gathered, LinearWeights};
use super::kernels::train_gather_rows::DeviceCsr;
use super::kernels::train_gatv2_backward::{self as gat_backward, Grads};
use super::kernels::train_gatv2_forward::{self as gat_forward, Relation};
use super::kernels::train_linear_input_grad::{self as input_grad, Store};
use super::kernels::train_linear_weight_grad::{self as weight_grad, WeightGrad};
use super::kernels::train_pair_loss::{self as pair_loss, DevicePairs};
use super::kernels::{embed, train_adam, train_gather_rows, train_pair_grad, train_relu_backward};
use super::plan::{Problem, Refs};
use super::program::{Array, Program, Slot};
use super::shaders::{Elem, Variant, WG};
use super::{GpuBackend, GpuError, GpuOptions};
use crate::graph::{Csr, TileGraph};
use crate::model::{Model, BD_FEATURES};
use crate::train::grad::Pairs;
use crate::train::kernels::{edges_by_source, AdamConfig};

/// Slot of every index list of a step (u32).
pub(super) const INDEX: Slot = "t.index";
/// Slot of the gradients, laid out as the weights.
const GRAD: Slot = "t.grad";
/// Slots of Adam's first and second moments, laid out as the weights.
const ADAM_M: Slot = "t.adam.m";
const ADAM_V: Slot = "t.adam.v";
/// Slot of the nucleus features (NaN → 0).
const BD_X: Slot = "t.bd_x";
/// Slots of the pairs' loss terms and of their d loss / d logit.
const LOSS: Slot = "t.loss";
const D_LOGIT: Slot = "t.dlogit";
/// Slot of the parameter-gradient partial sums.
const PARTIALS: Slot = "t.partials";
/// Gradients w.r.t. h_tx and h_bd, two of each (one layer's output, the
/// next one's input).
const D_TX: [Slot; 2] = ["t.dtx.a", "t.dtx.b"];
const D_BD: [Slot; 2] = ["t.dbd.a", "t.dbd.b"];
/// Per relation (neighbours, belongs): the GATv2 backward's outputs (d xr
/// and d att per destination, d xl per edge) and d xl per source.
const GAT_GRADS: [[Slot; 3]; 2] = [
    ["t.gb.nb", "t.ge.nb", "t.dxl.nb"],
    ["t.gb.bl", "t.ge.bl", "t.dxl.bl"],
];

/// Most GATv2 layers a trained model may have.
pub const MAX_LAYERS: usize = 8;
/// h_tx and h_bd before each layer and after the last.
const H_TX: [Slot; MAX_LAYERS + 1] = [
    "t.htx.0", "t.htx.1", "t.htx.2", "t.htx.3", "t.htx.4", "t.htx.5", "t.htx.6", "t.htx.7",
    "t.htx.8",
];
const H_BD: [Slot; MAX_LAYERS + 1] = [
    "t.hbd.0", "t.hbd.1", "t.hbd.2", "t.hbd.3", "t.hbd.4", "t.hbd.5", "t.hbd.6", "t.hbd.7",
    "t.hbd.8",
];
/// Per layer and relation: xl then xr.
const X_NB: [Slot; MAX_LAYERS] = [
    "t.xnb.0", "t.xnb.1", "t.xnb.2", "t.xnb.3", "t.xnb.4", "t.xnb.5", "t.xnb.6", "t.xnb.7",
];
const X_BL: [Slot; MAX_LAYERS] = [
    "t.xbl.0", "t.xbl.1", "t.xbl.2", "t.xbl.3", "t.xbl.4", "t.xbl.5", "t.xbl.6", "t.xbl.7",
];
/// Per layer and relation: the attention weights `[E, H]`.
const ALPHA_NB: [Slot; MAX_LAYERS] = [
    "t.anb.0", "t.anb.1", "t.anb.2", "t.anb.3", "t.anb.4", "t.anb.5", "t.anb.6", "t.anb.7",
];
const ALPHA_BL: [Slot; MAX_LAYERS] = [
    "t.abl.0", "t.abl.1", "t.abl.2", "t.abl.3", "t.abl.4", "t.abl.5", "t.abl.6", "t.abl.7",
];

/// An f32 array at the start of `slot`, declaring the slot's size.
fn f32s(program: &mut Program, slot: Slot, len: u64) -> Array {
    program.need(slot, len * 4);
    Array::at(slot, 4, len)
}

/// Elements `first .. first + len` of `a` as an array of their own.
fn part(a: Array, first: u64, len: u64) -> Array {
    Array {
        base: a.base + first as i64,
        len,
        ..a
    }
}

/// The same block in another slot of the weights' layout (gradients, moments).
fn in_slot(a: Array, slot: Slot) -> Array {
    Array { slot, ..a }
}

fn push_csr<'a>(aux: &mut Aux, csr: &'a Csr) -> DeviceCsr<'a> {
    let at = aux.push(&csr.offsets);
    let offsets = aux.array(at as i64, csr.offsets.len() as u64);
    let at = aux.push(&csr.sources);
    DeviceCsr {
        host: csr,
        offsets,
        ids: aux.array(at as i64, csr.sources.len() as u64),
    }
}

fn push_u32(aux: &mut Aux, values: &[u32]) -> Array {
    let at = aux.push(values);
    aux.array(at as i64, values.len() as u64)
}

/// A weight-gradient problem with its partial sums in [`PARTIALS`].
fn record_weight_grad(
    program: &mut Program,
    aux: &mut Aux,
    p: &WeightGrad,
    out: Array,
) -> Result<(), GpuError> {
    weight_grad::record(program, aux, p, Array::at(PARTIALS, 4, 0), Some(out))
}

/// Where a step's results are in the staging bytes.
struct StepAt {
    loss_at: u64,
    n_pairs: u64,
    grads_at: Option<u64>,
}

/// One relation of one layer: its weights, graph and arrays.
struct Conv<'a> {
    l_weights: LinearWeights,
    r_weights: LinearWeights,
    gat: &'a GatWeights,
    relation: Relation<'a>,
    n_src: u64,
    n_dst: u64,
    /// Source rows of h_tx (belongs, device and host), or all of them.
    src_rows: Option<(Array, &'a [u32])>,
    h_src: Array,
    h_dst: Array,
    by_source: &'a DeviceCsr<'a>,
}

/// Records the backward of one relation given `g` (its output gradient,
/// ReLU mask applied): every parameter gradient into [`GRAD`]; returns d xl
/// per source (rows H·C apart) and d xr (rows [`Grads::row`] apart), for the
/// input gradients.
fn conv_backward(
    program: &mut Program,
    aux: &mut Aux,
    conv: &Conv,
    g: Array,
    slots: [Slot; 3],
) -> Result<(Array, Array), GpuError> {
    let [grads_slot, edges_slot, dxl_slot] = slots;
    let hc = conv.gat.heads * conv.gat.channels;
    let n_edges = conv.relation.sources.len;
    let gat_block = in_slot(conv.gat.block, GRAD);
    let column_sums = |dy: Array, dy_stride: u64| WeightGrad {
        n_rows: conv.n_dst,
        in_dim: 0,
        out_dim: hc,
        with_bias: true,
        x: dy,
        rows: None,
        dy,
        dy_stride,
    };
    record_weight_grad(program, aux, &column_sums(g, hc), part(gat_block, hc, hc))?;
    let grads = Grads {
        per_dst: f32s(program, grads_slot, Grads::row(hc) * conv.n_dst),
        dxl_edge: f32s(program, edges_slot, n_edges * hc),
    };
    gat_backward::record(program, aux, &conv.relation, g, &grads)?;
    record_weight_grad(
        program,
        aux,
        &column_sums(grads.datt(hc), Grads::row(hc)),
        part(gat_block, 0, hc),
    )?;
    // lin_l's bias from the destinations' rows, not as the column sums of
    // d xl (equal in exact arithmetic; see the shader).
    let l_weights = conv.l_weights.in_dim * hc;
    record_weight_grad(
        program,
        aux,
        &column_sums(grads.dbias_l(hc), Grads::row(hc)),
        part(in_slot(conv.l_weights.block, GRAD), l_weights, hc),
    )?;
    let dxl = f32s(program, dxl_slot, conv.n_src * hc);
    train_gather_rows::record(
        program,
        aux,
        conv.by_source,
        hc,
        grads.dxl_edge,
        n_edges,
        dxl,
    )?;
    let dxr = grads.dxr(hc);
    for (weights, x, rows, n_rows, dy, dy_stride, with_bias) in [
        (
            conv.l_weights,
            conv.h_src,
            conv.src_rows,
            conv.n_src,
            dxl,
            hc,
            false,
        ),
        (
            conv.r_weights,
            conv.h_dst,
            None,
            conv.n_dst,
            dxr,
            Grads::row(hc),
            true,
        ),
    ] {
        let p = WeightGrad {
            n_rows,
            in_dim: weights.in_dim,
            out_dim: hc,
            with_bias,
            x,
            rows,
            dy,
            dy_stride,
        };
        record_weight_grad(program, aux, &p, in_slot(weights.block, GRAD))?;
    }
    Ok((dxl, dxr))
}

/// Records one training step on `graph` and `pairs`: the forward pass,
/// the loss terms (read back), every gradient into [`GRAD`] and, with
/// `adam` (learning rate, step t), the update. With `read_grads` the
/// gradients are read back too (tests).
fn record_step(
    program: &mut Program,
    layout: &ModelLayout,
    graph: &TileGraph,
    pairs: &Pairs,
    adam: Option<(&AdamConfig, f32, u32)>,
    read_grads: bool,
) -> Result<StepAt, GpuError> {
    let (n_tx, n_bd) = (graph.n_tx() as u64, graph.n_bd() as u64);
    let emb = layout.emb;
    let n_layers = layout.layers.len();
    if n_layers > MAX_LAYERS {
        return Err(GpuError::Unsupported {
            adapter: String::new(),
            detail: format!("training models of {n_layers} layers; at most {MAX_LAYERS}"),
        });
    }
    program.need(MODEL, layout.len * 4);
    for slot in [GRAD, ADAM_M, ADAM_V] {
        program.need(slot, layout.len * 4);
    }

    // Structure, as src/train/grad.rs builds it.
    let (bl_rows_v, bl_csr) = graph.belongs.compact_sources();
    let n_rows = bl_rows_v.len() as u64;
    let nb_by_source_v = edges_by_source(&graph.neighbors, n_tx as usize);
    let bl_by_source_v = edges_by_source(&bl_csr, n_rows as usize);
    let vocab = layout.vocab as usize;
    let by_token_v = Csr::from_edges(
        vocab,
        graph
            .tx_token
            .iter()
            .enumerate()
            .map(|(r, &t)| (r as u32, t)),
    );
    let all: Vec<(u32, u32)> = pairs
        .positive
        .iter()
        .chain(&pairs.negative)
        .copied()
        .collect();
    let n_pairs = all.len() as u64;
    let tx_of: Vec<u32> = all.iter().map(|p| p.0).collect();
    let bd_of: Vec<u32> = all.iter().map(|p| p.1).collect();
    let pairs_by_tx_v = Csr::from_edges(
        n_tx as usize,
        (0..n_pairs as u32).map(|p| (p, tx_of[p as usize])),
    );
    let pairs_by_bd_v = Csr::from_edges(
        n_bd as usize,
        (0..n_pairs as u32).map(|p| (p, bd_of[p as usize])),
    );
    // Each entry's partner: the nucleus of a transcript's pair, and back.
    let bd_by_tx_entry: Vec<u32> = pairs_by_tx_v
        .sources
        .iter()
        .map(|&p| bd_of[p as usize])
        .collect();
    let tx_by_bd_entry: Vec<u32> = pairs_by_bd_v
        .sources
        .iter()
        .map(|&p| tx_of[p as usize])
        .collect();

    let mut aux = Aux::new(INDEX);
    let tokens = push_u32(&mut aux, &graph.tx_token);
    let nb = push_csr(&mut aux, &graph.neighbors);
    let bl = push_csr(&mut aux, &bl_csr);
    let bl_rows = push_u32(&mut aux, &bl_rows_v);
    let nb_by_source = push_csr(&mut aux, &nb_by_source_v);
    let bl_by_source = push_csr(&mut aux, &bl_by_source_v);
    let by_token = push_csr(&mut aux, &by_token_v);
    let device_pairs = DevicePairs {
        n_pairs,
        n_pos: pairs.positive.len() as u64,
        pos_weight: pairs.pos_weight(),
        tx: push_u32(&mut aux, &tx_of),
        bd: push_u32(&mut aux, &bd_of),
        tx_of: &tx_of,
        bd_of: &bd_of,
    };
    let pairs_by_tx = push_csr(&mut aux, &pairs_by_tx_v);
    let pairs_by_bd = push_csr(&mut aux, &pairs_by_bd_v);
    let bd_by_tx_entry_d = push_u32(&mut aux, &bd_by_tx_entry);
    let tx_by_bd_entry_d = push_u32(&mut aux, &tx_by_bd_entry);
    // torch.nan_to_num, as the forward pass applies it.
    let bd_x: Vec<f32> = graph
        .bd_x
        .iter()
        .map(|&v| {
            if v.is_nan() {
                0.0
            } else {
                v.clamp(f32::MIN, f32::MAX)
            }
        })
        .collect();
    program.upload(BD_X, bytemuck::cast_slice(&bd_x).to_vec());
    let bd_x = Array::at(BD_X, 4, bd_x.len() as u64);

    // Forward: layer 0 with the inference kernels.
    let f32v = Variant::of(Elem::F32);
    let emb_plan = aux.plan(
        program,
        &Problem {
            rows: n_tx as usize,
            row_bytes: emb * 4,
            refs: Refs::One(&graph.tx_token),
            gathered_rows: vocab,
            gathered_row_bytes: emb * 4,
            max_rows: program.max_rows(emb, u64::from(WG)),
        },
    )?;
    let max_in = layout
        .layers
        .iter()
        .map(|l| l.nb_l.in_dim)
        .max()
        .unwrap_or(emb);
    let rows_plan = aux.plan(
        program,
        &Problem {
            rows: n_rows as usize,
            row_bytes: layout
                .layers
                .iter()
                .map(|l| l.bl_l.out_dim)
                .max()
                .unwrap_or(emb)
                * 4,
            refs: Refs::One(&bl_rows_v),
            gathered_rows: n_tx as usize,
            gathered_row_bytes: max_in * 4,
            max_rows: layout
                .layers
                .iter()
                .map(|l| linear::max_rows(program, l.bl_l.out_dim))
                .min()
                .unwrap_or(usize::MAX),
        },
    )?;
    let mut h_tx = f32s(program, H_TX[0], n_tx * emb);
    let mut h_bd = f32s(program, H_BD[0], n_bd * emb);
    embed::record(
        program,
        Elem::F32,
        layout.table,
        layout.vocab,
        emb,
        tokens,
        &emb_plan,
        &aux,
        h_tx,
    )?;
    linear::record(
        program,
        f32v,
        bd_x,
        None,
        &aux,
        n_bd,
        layout.lin0,
        true,
        h_bd,
    )?;
    let mut inputs = vec![(h_tx, h_bd)];
    let mut relations = Vec::with_capacity(n_layers);
    for (l, layer) in layout.layers.iter().enumerate() {
        let hc = layer.nb_l.out_dim;
        #[allow(clippy::too_many_arguments)]
        fn make<'a>(
            program: &mut Program,
            hc: u64,
            x_slot: Slot,
            alpha_slot: Slot,
            n_src: u64,
            n_dst: u64,
            csr: &DeviceCsr<'a>,
            gat: &GatWeights,
        ) -> Relation<'a> {
            let x = f32s(program, x_slot, (n_src + n_dst) * hc);
            let n_edges = csr.ids.len;
            Relation {
                n_src,
                n_dst,
                heads: gat.heads,
                channels: gat.channels,
                xl: part(x, 0, n_src * hc),
                xr: part(x, n_src * hc, n_dst * hc),
                csr: csr.host,
                offsets: csr.offsets,
                sources: csr.ids,
                att: part(gat.block, 0, hc),
                bias: part(gat.block, hc, hc),
                alpha: f32s(program, alpha_slot, n_edges * gat.heads),
            }
        }
        let nb_rel = make(
            program,
            hc,
            X_NB[l],
            ALPHA_NB[l],
            n_tx,
            n_tx,
            &nb,
            &layer.nb,
        );
        let bl_rel = make(
            program,
            hc,
            X_BL[l],
            ALPHA_BL[l],
            n_rows,
            n_bd,
            &bl,
            &layer.bl,
        );
        linear::record(
            program, f32v, h_tx, None, &aux, n_tx, layer.nb_l, false, nb_rel.xl,
        )?;
        linear::record(
            program, f32v, h_tx, None, &aux, n_tx, layer.nb_r, false, nb_rel.xr,
        )?;
        let next_tx = f32s(program, H_TX[l + 1], n_tx * hc);
        gat_forward::record(program, &mut aux, &nb_rel, layer.nb.relu, next_tx)?;
        let gathered = Gathered {
            rows: bl_rows,
            planned: &rows_plan,
            x_rows: n_tx,
        };
        linear::record(
            program,
            f32v,
            h_tx,
            Some(&gathered),
            &aux,
            n_rows,
            layer.bl_l,
            false,
            bl_rel.xl,
        )?;
        linear::record(
            program, f32v, h_bd, None, &aux, n_bd, layer.bl_r, false, bl_rel.xr,
        )?;
        let next_bd = f32s(program, H_BD[l + 1], n_bd * hc);
        gat_forward::record(program, &mut aux, &bl_rel, layer.bl.relu, next_bd)?;
        relations.push((nb_rel, bl_rel));
        h_tx = next_tx;
        h_bd = next_bd;
        inputs.push((h_tx, h_bd));
    }
    let dim = layout.layers.last().map_or(emb, |l| l.nb_l.out_dim);

    // Loss, read back, and its gradient w.r.t. z.
    let loss = f32s(program, LOSS, n_pairs);
    let d_logit = f32s(program, D_LOGIT, n_pairs);
    pair_loss::record(
        program,
        &mut aux,
        &device_pairs,
        dim,
        h_tx,
        h_bd,
        loss,
        d_logit,
    )?;
    let loss_at = program.readback(LOSS, 0, n_pairs * 4);
    let max_w = layout
        .layers
        .iter()
        .map(|l| l.nb_l.in_dim.max(l.nb_l.out_dim))
        .max()
        .unwrap_or(emb)
        .max(emb);
    for slot in D_TX {
        program.need(slot, n_tx * max_w * 4);
    }
    for slot in D_BD {
        program.need(slot, n_bd * max_w * 4);
    }
    let mut cur = 0;
    let mut d_tx = Array::at(D_TX[cur], 4, n_tx * dim);
    let mut d_bd = Array::at(D_BD[cur], 4, n_bd * dim);
    train_pair_grad::record(
        program,
        &mut aux,
        &pairs_by_tx,
        dim,
        (bd_by_tx_entry_d, &bd_by_tx_entry),
        d_logit,
        h_bd,
        n_bd,
        d_tx,
    )?;
    train_pair_grad::record(
        program,
        &mut aux,
        &pairs_by_bd,
        dim,
        (tx_by_bd_entry_d, &tx_by_bd_entry),
        d_logit,
        h_tx,
        n_tx,
        d_bd,
    )?;

    // Backward, layer by layer.
    for (l, layer) in layout.layers.iter().enumerate().rev() {
        let (nb_rel, bl_rel) = &relations[l];
        let (out_tx, out_bd) = inputs[l + 1];
        if layer.nb.relu {
            train_relu_backward::record(program, d_tx, out_tx)?;
            train_relu_backward::record(program, d_bd, out_bd)?;
        }
        let (in_tx, in_bd) = inputs[l];
        let nb_conv = Conv {
            l_weights: layer.nb_l,
            r_weights: layer.nb_r,
            gat: &layer.nb,
            relation: *nb_rel,
            n_src: n_tx,
            n_dst: n_tx,
            src_rows: None,
            h_src: in_tx,
            h_dst: in_tx,
            by_source: &nb_by_source,
        };
        let (dxl_nb, dxr_nb) = conv_backward(program, &mut aux, &nb_conv, d_tx, GAT_GRADS[0])?;
        let bl_conv = Conv {
            l_weights: layer.bl_l,
            r_weights: layer.bl_r,
            gat: &layer.bl,
            relation: *bl_rel,
            n_src: n_rows,
            n_dst: n_bd,
            src_rows: Some((bl_rows, &bl_rows_v)),
            h_src: in_tx,
            h_dst: in_bd,
            by_source: &bl_by_source,
        };
        let (dxl_bl, dxr_bl) = conv_backward(program, &mut aux, &bl_conv, d_bd, GAT_GRADS[1])?;
        // d h_tx: neighbour sources, then neighbour destinations, then
        // belongs sources, as the CPU sums them.
        let next = 1 - cur;
        let in_dim = layer.nb_l.in_dim;
        let hc = layer.nb_l.out_dim;
        let next_tx = Array::at(D_TX[next], 4, n_tx * in_dim);
        let next_bd = Array::at(D_BD[next], 4, n_bd * in_dim);
        let wt = |w: LinearWeights| part(w.block, 0, w.in_dim * w.out_dim);
        for (n, dy, w, store, dx) in [
            (n_tx, (dxl_nb, hc), layer.nb_l, Store::Overwrite, next_tx),
            (
                n_tx,
                (dxr_nb, Grads::row(hc)),
                layer.nb_r,
                Store::Add,
                next_tx,
            ),
            (
                n_rows,
                (dxl_bl, hc),
                layer.bl_l,
                Store::AddTo(bl_rows, &bl_rows_v),
                next_tx,
            ),
            (
                n_bd,
                (dxr_bl, Grads::row(hc)),
                layer.bl_r,
                Store::Overwrite,
                next_bd,
            ),
        ] {
            input_grad::record(program, &mut aux, n, in_dim, hc, dy, wt(w), store, dx)?;
        }
        cur = next;
        d_tx = next_tx;
        d_bd = next_bd;
    }

    // Layer 0: the ReLU of the embedding and of lin0.
    let (in_tx, in_bd) = inputs[0];
    train_relu_backward::record(program, d_tx, in_tx)?;
    train_relu_backward::record(program, d_bd, in_bd)?;
    train_gather_rows::record(
        program,
        &mut aux,
        &by_token,
        emb,
        d_tx,
        n_tx,
        in_slot(layout.table, GRAD),
    )?;
    record_weight_grad(
        program,
        &mut aux,
        &WeightGrad {
            n_rows: n_bd,
            in_dim: BD_FEATURES as u64,
            out_dim: emb,
            with_bias: false,
            x: bd_x,
            rows: None,
            dy: d_bd,
            dy_stride: emb,
        },
        in_slot(layout.lin0.block, GRAD),
    )?;
    let grads_at = read_grads.then(|| program.readback(GRAD, 0, layout.len * 4));
    if let Some((config, lr, t)) = adam {
        let all = |slot| Array::at(slot, 4, layout.len);
        train_adam::record(
            program,
            config,
            lr,
            t,
            all(MODEL),
            all(GRAD),
            all(ADAM_M),
            all(ADAM_V),
        )?;
    }
    aux.upload(program);
    Ok(StepAt {
        loss_at,
        n_pairs,
        grads_at,
    })
}

/// A model of `template`'s shape with the values of the weights layout `data`.
fn unpack(layout: &ModelLayout, data: &[f32], template: &Model) -> Model {
    let mut model = template.clone();
    let take = |a: Array, first: u64, len: usize| -> Vec<f32> {
        let at = (a.base + first as i64) as usize;
        data[at..at + len].to_vec()
    };
    model.tx_embedding = take(layout.table, 0, model.tx_embedding.len());
    model.lin0_bd_wt = take(layout.lin0.block, 0, model.lin0_bd_wt.len());
    for (layer, l) in model.layers.iter_mut().zip(&layout.layers) {
        for (w, lw, rw, gat) in [
            (&mut layer.neighbors, l.nb_l, l.nb_r, l.nb),
            (&mut layer.belongs, l.bl_l, l.bl_r, l.bl),
        ] {
            let weights = w.lin_l_wt.len();
            let hc = w.out_dim();
            w.lin_l_wt = take(lw.block, 0, weights);
            w.lin_l_b = take(lw.block, weights as u64, hc);
            w.lin_r_wt = take(rw.block, 0, weights);
            w.lin_r_b = take(rw.block, weights as u64, hc);
            w.att = take(gat.block, 0, hc);
            w.bias = take(gat.block, hc as u64, hc);
        }
    }
    // The weights are no longer those of the file the template came from.
    model.sha256 = String::new();
    model
}

/// Sums the pairs' loss terms in order in f64, as the CPU trainer does.
fn loss_of(bytes: &[u8], at: &StepAt) -> f32 {
    forward::from_act(bytes, at.loss_at, at.n_pairs, Elem::F32)
        .iter()
        .map(|&t| t as f64)
        .sum::<f64>() as f32
}

/// What resuming training elsewhere needs, read back from the device.
#[derive(Debug, Clone)]
pub struct TrainerState {
    /// The weights.
    pub model: Model,
    /// Adam's first moments, laid out as the weights.
    pub first_moment: Model,
    /// Adam's second moments, laid out as the weights.
    pub second_moment: Model,
    /// Adam steps taken.
    pub steps: u32,
}

/// Trains a model on the GPU: [`GpuTrainer::step`] is one step of
/// [`crate::train::grad::loss_and_grad`] followed by [`crate::train::Adam`]'s
/// update, with everything but the loss staying on the device.
pub struct GpuTrainer {
    gpu: GpuBackend,
    layout: ModelLayout,
    /// The model as given: shape, vocabulary and metadata of what
    /// [`GpuTrainer::model`] returns.
    template: Model,
    /// Weights uploaded and moments zeroed.
    on_device: bool,
    /// A step failed: the weights on the device are no longer known.
    failed: bool,
    config: AdamConfig,
    steps: u32,
    /// Steps whose number is a multiple of this also read back the
    /// weights and moments (a checkpoint).
    checkpoint_every: Option<u32>,
    /// The last checkpoint, with `checkpoint_every`.
    checkpoint: Option<TrainerState>,
}

impl std::fmt::Debug for GpuTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTrainer")
            .field("gpu", &self.gpu)
            .field("steps", &self.steps)
            .finish()
    }
}

impl GpuTrainer {
    /// Opens the adapter `options` select (f32 whatever the precision asked
    /// for) and prepares `model` for training with Adam's default constants.
    pub fn new(options: GpuOptions, model: &Model) -> Result<Self, GpuError> {
        Ok(Self::with_backend(GpuBackend::new(options)?, model))
    }

    /// As [`GpuTrainer::new`] on an opened backend.
    pub fn with_backend(mut gpu: GpuBackend, model: &Model) -> Self {
        // Training overwrites the weights slot the forward pass caches.
        gpu.model = None;
        let (layout, _) = forward::layout_model(model);
        Self {
            gpu,
            layout,
            template: model.clone(),
            on_device: false,
            failed: false,
            config: AdamConfig::default(),
            steps: 0,
            checkpoint_every: None,
            checkpoint: None,
        }
    }

    /// Makes the readback of every `every`-th step (steps `every`,
    /// `2·every`, …) also carry the weights and Adam's moments after the
    /// update (three times the weights' bytes, in the same readback as the
    /// loss), kept as [`GpuTrainer::checkpoint`]: what going on elsewhere
    /// after a device loss needs, since the device's memory is gone with
    /// it. The other steps read back only the loss. Before the first step.
    pub fn with_checkpoints(mut self, every: u32) -> Self {
        self.checkpoint_every = Some(every.max(1));
        if self.steps == 0 {
            let zeros = crate::train::grad::zeros_like(&self.template);
            self.checkpoint = Some(TrainerState {
                model: self.template.clone(),
                first_moment: zeros.clone(),
                second_moment: zeros,
                steps: 0,
            });
        }
        self
    }

    /// With [`GpuTrainer::with_checkpoints`]: the last checkpoint (the
    /// starting state before the first step).
    pub fn checkpoint(&self) -> Option<&TrainerState> {
        self.checkpoint.as_ref()
    }

    /// Reads the state back now (one readback) and keeps it as the
    /// checkpoint, unless the last one is of the current step.
    pub fn checkpoint_now(&mut self) -> Result<&TrainerState, GpuError> {
        if self
            .checkpoint
            .as_ref()
            .is_none_or(|c| c.steps != self.steps)
        {
            self.checkpoint = Some(self.state()?);
        }
        Ok(self.checkpoint.as_ref().expect("kept just now"))
    }

    /// Uses Adam's constants `config` (before the first step).
    pub fn with_adam(mut self, config: AdamConfig) -> Self {
        self.config = config;
        self
    }

    /// The backend the trainer runs on (adapter, statistics).
    pub fn backend(&self) -> &GpuBackend {
        &self.gpu
    }

    /// The backend, giving up the trainer.
    pub fn into_backend(mut self) -> GpuBackend {
        self.gpu.model = None;
        self.gpu
    }

    /// Adam steps taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    fn stage(&self, what: &str, graph: &TileGraph, pairs: &Pairs) -> String {
        format!(
            "{what} ({} transcripts, {} nuclei, {} neighbour + {} belongs edges, {} + {} pairs)",
            graph.n_tx(),
            graph.n_bd(),
            graph.neighbors.n_edges(),
            graph.belongs.n_edges(),
            pairs.positive.len(),
            pairs.negative.len(),
        )
    }

    /// Uploads the weights and zero moments with the first program.
    fn upload_state(&self, program: &mut Program) {
        if self.on_device {
            return;
        }
        let (_, bytes) = forward::layout_model(&self.template);
        let zeros = vec![0u8; bytes.len()];
        program.upload(MODEL, bytes);
        program.upload(GRAD, zeros.clone());
        program.upload(ADAM_M, zeros.clone());
        program.upload(ADAM_V, zeros);
    }

    fn run(&mut self, program: &Program) -> Result<Vec<u8>, GpuError> {
        if self.failed {
            return Err(GpuError::Internal {
                stage: program.stage.clone(),
                detail: "an earlier training step failed; the weights on the GPU are lost".into(),
            });
        }
        match self.gpu.run(program) {
            Ok(bytes) => {
                self.on_device = true;
                Ok(bytes)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// One training step on `graph` and its `pairs` with learning rate `lr`:
    /// forward, loss, gradients and Adam's update on the device, in one
    /// submission. Returns the loss (the one readback, which carries the
    /// weights and moments too on a checkpoint step).
    pub fn step(&mut self, graph: &TileGraph, pairs: &Pairs, lr: f32) -> Result<f32, GpuError> {
        let stage = self.stage("training step", graph, pairs);
        let mut program = self.gpu.program(stage);
        self.upload_state(&mut program);
        let t = self.steps + 1;
        let at = record_step(
            &mut program,
            &self.layout,
            graph,
            pairs,
            Some((&self.config, lr, t)),
            false,
        )?;
        let checkpoint = self.checkpoint_every.is_some_and(|n| t.is_multiple_of(n));
        let state_at: Option<Vec<u64>> = checkpoint.then(|| {
            [MODEL, ADAM_M, ADAM_V]
                .iter()
                .map(|&slot| program.readback(slot, 0, self.layout.len * 4))
                .collect()
        });
        let bytes = self.run(&program)?;
        self.steps = t;
        if let Some(state_at) = state_at {
            let [model, first_moment, second_moment] = [0, 1, 2].map(|i| {
                let data = forward::from_act(&bytes, state_at[i], self.layout.len, Elem::F32);
                unpack(&self.layout, &data, &self.template)
            });
            self.checkpoint = Some(TrainerState {
                model,
                first_moment,
                second_moment,
                steps: t,
            });
        }
        Ok(loss_of(&bytes, &at))
    }

    /// The loss and every gradient at the current weights, without an
    /// update: the step's arithmetic with the gradients read back, for
    /// checks against [`crate::train::grad::loss_and_grad`].
    pub fn loss_and_grad(
        &mut self,
        graph: &TileGraph,
        pairs: &Pairs,
    ) -> Result<(f32, Model), GpuError> {
        let stage = self.stage("gradients", graph, pairs);
        let mut program = self.gpu.program(stage);
        self.upload_state(&mut program);
        let at = record_step(&mut program, &self.layout, graph, pairs, None, true)?;
        let bytes = self.run(&program)?;
        let grads = forward::from_act(
            &bytes,
            at.grads_at.expect("gradients read back"),
            self.layout.len,
            Elem::F32,
        );
        Ok((
            loss_of(&bytes, &at),
            unpack(&self.layout, &grads, &self.template),
        ))
    }

    /// The current weights, read back from the device.
    pub fn model(&mut self) -> Result<Model, GpuError> {
        Ok(self.read_back(&[MODEL])?.remove(0))
    }

    /// The weights and Adam's moments, read back from the device (a
    /// checkpoint to resume from, on the CPU after a device loss).
    pub fn state(&mut self) -> Result<TrainerState, GpuError> {
        let mut all = self.read_back(&[MODEL, ADAM_M, ADAM_V])?;
        let second_moment = all.pop().expect("second moment");
        let first_moment = all.pop().expect("first moment");
        Ok(TrainerState {
            model: all.pop().expect("weights"),
            first_moment,
            second_moment,
            steps: self.steps,
        })
    }

    /// `slots` (laid out as the weights) as models.
    fn read_back(&mut self, slots: &[Slot]) -> Result<Vec<Model>, GpuError> {
        if !self.on_device {
            let zeros = crate::train::grad::zeros_like(&self.template);
            return Ok(slots
                .iter()
                .map(|&s| {
                    if s == MODEL {
                        self.template.clone()
                    } else {
                        zeros.clone()
                    }
                })
                .collect());
        }
        let mut program = self.gpu.program("reading the training state back".into());
        let at: Vec<u64> = slots
            .iter()
            .map(|&slot| {
                program.need(slot, self.layout.len * 4);
                program.readback(slot, 0, self.layout.len * 4)
            })
            .collect();
        let bytes = self.run(&program)?;
        Ok(at
            .into_iter()
            .map(|at| {
                let data = forward::from_act(&bytes, at, self.layout.len, Elem::F32);
                unpack(&self.layout, &data, &self.template)
            })
            .collect())
    }
}
