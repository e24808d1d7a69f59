// Gradient of the pair loss w.r.t. one side's embeddings: node i sums
// d_logit[p] · other[partner[p], :] over its pairs (CSR, pair ids
// ascending). Twin: src/train/kernels.rs (`pair_grad_at`). The partners are
// given per CSR entry (partner of the entry's pair), so that a chunk of
// nodes binds a window of them. A dispatch covers nodes `first .. end`.
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    dim: u32,
    // Binding index of element 0 of offsets and pair ids in `csr`, of the
    // entries' partners in `partner`, of d_logit in `loss`, of `other` and
    // `out`.
    off0: u32,
    ids0: u32,
    partner0: u32,
    dlogit0: u32,
    other0: u32,
    out0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> csr: array<u32>;
@group(0) @binding(2) var<storage, read> partner: array<u32>;
@group(0) @binding(3) var<storage, read> loss: array<f32>;
@group(0) @binding(4) var<storage, read> other: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    let out_row = p.out0 + i * p.dim;
    for (var c = 0u; c < p.dim; c++) {
        out[out_row + c] = 0.0;
    }
    let end = csr[p.off0 + i + 1u];
    for (var j = csr[p.off0 + i]; j < end; j++) {
        let pair = csr[p.ids0 + j];
        let row = p.other0 + partner[p.partner0 + j] * p.dim;
        let d_logit = loss[p.dlogit0 + pair];
        for (var c = 0u; c < p.dim; c++) {
            out[out_row + c] += d_logit * other[row + c];
        }
    }
}
