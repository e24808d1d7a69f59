// Row sums through a CSR list: out[i, :] = Σ values[ids[j], :] over
// j in offsets[i] .. offsets[i + 1], in list order. Twin: src/train/kernels.rs
// (`gather_edges_at`; on a zeroed table also `embedding_grad_at`). The
// gradient w.r.t. a GATv2 source (its outgoing edges' contributions) and the
// embedding gradient (the rows of each token), without float atomics. A
// dispatch covers rows `first .. end`: a chunk.
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    width: u32,
    // Binding index of element 0 of offsets and ids in `csr`, of `values`
    // and of `out`.
    off0: u32,
    ids0: u32,
    values0: u32,
    out0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> csr: array<u32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    let out_row = p.out0 + i * p.width;
    for (var c = 0u; c < p.width; c++) {
        out[out_row + c] = 0.0;
    }
    let end = csr[p.off0 + i + 1u];
    for (var j = csr[p.off0 + i]; j < end; j++) {
        let row = p.values0 + csr[p.ids0 + j] * p.width;
        for (var c = 0u; c < p.width; c++) {
            out[out_row + c] += values[row + c];
        }
    }
}
