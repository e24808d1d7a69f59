// Fused GATv2 aggregation. Twin: src/kernels/gatv2.rs (`gatv2_at`).
// One invocation per destination and head: attention logits, online softmax,
// weighted sum of messages, bias and optional ReLU, over the destination's
// incoming edges (CSR by destination) in order. No float atomics and no
// per-edge temporaries beyond one batch of EDGE_BATCH logits.
// Incoming edges are taken in batches: logits of a batch (each summed over c
// in increasing order), then one online-softmax step.
//!include common.wgsl

const EDGE_BATCH: u32 = 8u;

struct Params {
    // Destinations of this dispatch: [dst_begin, dst_end).
    dst_begin: u32,
    dst_end: u32,
    heads: u32,
    channels: u32,
    relu: u32,
    off_shift: u32,
    src_shift: u32,
    xl_shift: u32,
    xr_shift: u32,
    out_shift: u32,
    // Indices of att[0] and bias[0] in the `w` binding.
    att_base: u32,
    bias_base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Messages `[n_src, H·C]`, read through `sources`.
@group(0) @binding(1) var<storage, read> xl: array<act>;
// Destination projections `[n_dst, H·C]`.
@group(0) @binding(2) var<storage, read> xr: array<act>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> sources: array<u32>;
@group(0) @binding(5) var<storage, read> w: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<act>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= (p.dst_end - p.dst_begin) * p.heads) {
        return;
    }
    let dst = p.dst_begin + i / p.heads;
    let head = i % p.heads;
    let hc = p.heads * p.channels;
    let base = head * p.channels;
    let xr_row = dst * hc + base - p.xr_shift;
    let att = p.att_base + base;
    let edge_begin = offsets[dst - p.off_shift];
    let edge_end = offsets[dst + 1u - p.off_shift];
    // The running maximum starts at the lowest finite float (WGSL has no
    // infinity literal); the first batch always raises it.
    var running_max = F32_LOWEST;
    var denom = 0.0f;
    var acc: array<f32, MAX_C>;
    var batch_begin = edge_begin;
    while (batch_begin < edge_end) {
        let batch_len = min(EDGE_BATCH, edge_end - batch_begin);
        var rows: array<u32, EDGE_BATCH>;
        for (var b = 0u; b < batch_len; b++) {
            rows[b] = sources[batch_begin + b - p.src_shift] * hc + base - p.xl_shift;
        }
        var logits: array<f32, EDGE_BATCH>;
        for (var c = 0u; c < p.channels; c++) {
            for (var b = 0u; b < batch_len; b++) {
                logits[b] += w[att + c] * leaky_relu(f32(xl[rows[b] + c]) + f32(xr[xr_row + c]));
            }
        }
        var new_max = running_max;
        for (var b = 0u; b < batch_len; b++) {
            new_max = max(new_max, logits[b]);
        }
        if (new_max > running_max) {
            // Before the first batch there is nothing to rescale.
            if (denom > 0.0) {
                let rescale = exp(running_max - new_max);
                denom *= rescale;
                for (var c = 0u; c < p.channels; c++) {
                    acc[c] *= rescale;
                }
            }
            running_max = new_max;
        }
        for (var b = 0u; b < batch_len; b++) {
            let weight = exp(logits[b] - running_max);
            denom += weight;
            for (var c = 0u; c < p.channels; c++) {
                acc[c] += weight * f32(xl[rows[b] + c]);
            }
        }
        batch_begin += batch_len;
    }
    let out_row = dst * hc + base - p.out_shift;
    for (var c = 0u; c < p.channels; c++) {
        var v = acc[c] / (denom + SOFTMAX_EPS) + w[p.bias_base + base + c];
        if (p.relu != 0u) {
            v = max(v, 0.0);
        }
        out[out_row + c] = act(v);
    }
}
