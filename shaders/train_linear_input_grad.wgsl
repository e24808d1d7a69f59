// Input gradient of y = x · wt + b: dx[r, k] = Σ_o dy[r, o] · wt[k, o], o
// increasing. Twin: src/train/kernels.rs (`linear_input_grad_at`). One
// invocation per (r, k). The result is stored in row r of dx, or in row
// rows[r] (`scatter`, distinct rows), overwriting or added to what is there
// (`accumulate`): d h_tx sums three such gradients in the CPU's order. Row r
// of dy starts at r · dy_stride. A dispatch covers items (r · in_dim + k)
// `first .. end`: a chunk of rows.
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    in_dim: u32,
    out_dim: u32,
    dy_stride: u32,
    // Flags (0/1).
    accumulate: u32,
    scatter: u32,
    // Binding index of element 0 of `dy`, of wt in `w`, of `rows`, of `dx`.
    dy0: u32,
    wt0: u32,
    rows0: u32,
    dx0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    let r = i / p.in_dim;
    let k = i % p.in_dim;
    let dy_row = p.dy0 + r * p.dy_stride;
    let wt_row = p.wt0 + k * p.out_dim;
    var acc = 0.0f;
    for (var o = 0u; o < p.out_dim; o++) {
        acc += dy[dy_row + o] * w[wt_row + o];
    }
    var dx_row = r;
    if (p.scatter != 0u) {
        dx_row = rows[p.rows0 + r];
    }
    let at = p.dx0 + dx_row * p.in_dim + k;
    if (p.accumulate != 0u) {
        dx[at] = dx[at] + acc;
    } else {
        dx[at] = acc;
    }
}
