// Embedding gather followed by ReLU. Twin: src/kernels/embed.rs.
// One invocation per output element `idx` of the `[n, dim]` output.
//!include common.wgsl

struct Params {
    // Elements this dispatch covers: [begin, begin + n_items).
    begin: u32,
    n_items: u32,
    dim: u32,
    table_shift: u32,
    token_shift: u32,
    out_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n_items) {
        return;
    }
    let idx = p.begin + i;
    let row = idx / p.dim;
    let col = idx % p.dim;
    let value = table[tokens[row - p.token_shift] * p.dim + col - p.table_shift];
    out[idx - p.out_shift] = act(max(value, 0.0));
}
