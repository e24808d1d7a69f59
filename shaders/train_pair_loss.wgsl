// Binary cross-entropy with logits of each (transcript, nucleus) pair, logit
// z_tx[s] · z_bd[d] (c increasing), positives (the first n_pos pairs)
// weighted by pos_weight, both the loss term and d loss / d logit divided by
// the number of pairs. Twin: src/train/kernels.rs (`pair_loss_at`). A
// dispatch covers pairs `first .. end`: a chunk.
//!include common.wgsl
//!include train_exp.wgsl

struct Params {
    n_pairs: u32,
    first: u32,
    end: u32,
    n_pos: u32,
    dim: u32,
    pos_weight: f32,
    // Binding index of element 0 of z_tx, z_bd, the pairs' transcripts
    // `ptx` and nuclei `pbd`, the loss terms `loss` and d/d logit `dlogit`.
    tx0: u32,
    bd0: u32,
    ptx0: u32,
    pbd0: u32,
    loss0: u32,
    dlogit0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z_tx: array<f32>;
@group(0) @binding(2) var<storage, read> z_bd: array<f32>;
@group(0) @binding(3) var<storage, read> ptx: array<u32>;
@group(0) @binding(4) var<storage, read> pbd: array<u32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> dlogit: array<f32>;

// log(1 + y) for y in [0, 1], accurate for tiny y (WGSL has no log1p).
fn log1p_unit(y: f32) -> f32 {
    let u = 1.0 + y;
    if (u == 1.0) {
        return y;
    }
    return log(u) * y / (u - 1.0);
}

// log(1 + exp(v)) without overflow.
fn softplus(v: f32) -> f32 {
    return max(v, 0.0) + log1p_unit(portable_exp(-abs(v)));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    let s = ptx[p.ptx0 + i];
    let d = pbd[p.pbd0 + i];
    var logit = 0.0f;
    for (var c = 0u; c < p.dim; c++) {
        logit += z_tx[p.tx0 + s * p.dim + c] * z_bd[p.bd0 + d * p.dim + c];
    }
    // exp overflows above 88.7; past 88 the sigmoid is 0 to f32 precision.
    let sigmoid = 1.0 / (1.0 + portable_exp(min(-logit, 88.0)));
    let n = f32(p.n_pairs);
    if (i < p.n_pos) {
        loss[p.loss0 + i] = p.pos_weight * softplus(-logit) / n;
        dlogit[p.dlogit0 + i] = p.pos_weight * (sigmoid - 1.0) / n;
    } else {
        loss[p.loss0 + i] = softplus(logit) / n;
        dlogit[p.dlogit0 + i] = sigmoid / n;
    }
}
