// Partial weight (and bias) gradients of y = x[rows] · wt + b over one chunk
// of `reduce_rows` rows: partial[chunk, k·out + o] = Σ_r x[row(r), k] ·
// dy[r, o] and, with `with_bias`, partial[chunk, in·out + o] = Σ_r dy[r, o],
// r increasing. Twin: src/train/kernels.rs (`linear_weight_grad_chunk`); with
// in_dim 0 the column sums of dy (`column_sums`). One invocation per
// (chunk, element); train_sum_partials.wgsl then adds the chunks in order.
// Row r of dy starts at r · dy_stride. A dispatch covers items (chunk · width
// + element) `first .. end`: a run of whole chunks.
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    n_rows: u32,
    in_dim: u32,
    out_dim: u32,
    dy_stride: u32,
    // Flags (0/1).
    with_bias: u32,
    gather: u32,
    reduce_rows: u32,
    // Binding index of element 0 of `x`, `rows`, `dy` and `partial`.
    x0: u32,
    rows0: u32,
    dy0: u32,
    part0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    let weights = p.in_dim * p.out_dim;
    let width = weights + p.with_bias * p.out_dim;
    if (i >= p.end) {
        return;
    }
    let chunk = i / width;
    let j = i % width;
    let first = chunk * p.reduce_rows;
    let last = min(first + p.reduce_rows, p.n_rows);
    var acc = 0.0f;
    if (j < weights) {
        let k = j / p.out_dim;
        let o = j % p.out_dim;
        for (var r = first; r < last; r++) {
            var src = r;
            if (p.gather != 0u) {
                src = rows[p.rows0 + r];
            }
            acc += x[p.x0 + src * p.in_dim + k] * dy[p.dy0 + r * p.dy_stride + o];
        }
    } else {
        let o = j - weights;
        for (var r = first; r < last; r++) {
            acc += dy[p.dy0 + r * p.dy_stride + o];
        }
    }
    partial[p.part0 + chunk * width + j] = acc;
}
