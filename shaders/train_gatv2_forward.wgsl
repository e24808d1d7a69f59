// GATv2 forward that keeps its attention weights, for training.
// Twin: src/train/kernels.rs (`gatv2_forward_at`). One invocation per
// destination and head: logits over the incoming edges in order (each summed
// over c increasing), stored in `alpha`; the maximum; exp and their sum; then
// each weight divided by (sum + 1e-16) and the messages summed in edge order
// straight into `out`; bias and optional ReLU last. A dispatch covers items
// (destination · heads + head) `first .. end`: a chunk of destinations.
//!include common.wgsl
//!include train_exp.wgsl

struct Params {
    first: u32,
    end: u32,
    heads: u32,
    channels: u32,
    relu: u32,
    // Binding index of element 0 of each array: `xl`, `xr`, offsets and
    // sources in `csr`, att and bias in `w`, `out`, `alpha`.
    xl0: u32,
    xr0: u32,
    off0: u32,
    src0: u32,
    att0: u32,
    bias0: u32,
    out0: u32,
    alpha0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// `[n_src, H·C]`, read through the sources.
@group(0) @binding(1) var<storage, read> xl: array<f32>;
// `[n_dst, H·C]`.
@group(0) @binding(2) var<storage, read> xr: array<f32>;
// CSR by destination: offsets `[n_dst + 1]` and sources `[E]`.
@group(0) @binding(3) var<storage, read> csr: array<u32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
// `[n_dst, H·C]`.
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// `[E, H]` attention weights.
@group(0) @binding(6) var<storage, read_write> alpha: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    let dst = i / p.heads;
    let head = i % p.heads;
    let hc = p.heads * p.channels;
    let base = head * p.channels;
    let xr_row = p.xr0 + dst * hc + base;
    let att = p.att0 + base;
    let begin = csr[p.off0 + dst];
    let end = csr[p.off0 + dst + 1u];
    var max_logit = F32_LOWEST;
    for (var e = begin; e < end; e++) {
        let row = p.xl0 + csr[p.src0 + e] * hc + base;
        var logit = 0.0f;
        for (var c = 0u; c < p.channels; c++) {
            logit += w[att + c] * leaky_relu(xl[row + c] + xr[xr_row + c]);
        }
        alpha[p.alpha0 + e * p.heads + head] = logit;
        max_logit = max(max_logit, logit);
    }
    var denom = 0.0f;
    for (var e = begin; e < end; e++) {
        let slot = p.alpha0 + e * p.heads + head;
        let v = portable_exp(alpha[slot] - max_logit);
        alpha[slot] = v;
        denom += v;
    }
    let out_row = p.out0 + dst * hc + base;
    for (var c = 0u; c < p.channels; c++) {
        out[out_row + c] = 0.0;
    }
    for (var e = begin; e < end; e++) {
        let slot = p.alpha0 + e * p.heads + head;
        let a = alpha[slot] / (denom + SOFTMAX_EPS);
        alpha[slot] = a;
        let row = p.xl0 + csr[p.src0 + e] * hc + base;
        for (var c = 0u; c < p.channels; c++) {
            out[out_row + c] += a * xl[row + c];
        }
    }
    for (var c = 0u; c < p.channels; c++) {
        var v = out[out_row + c] + w[p.bias0 + base + c];
        if (p.relu != 0u) {
            v = max(v, 0.0);
        }
        out[out_row + c] = v;
    }
}
