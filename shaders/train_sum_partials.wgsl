// out[j] = Σ_chunk partial[chunk, j], chunks in order from a zero start (or,
// with `accumulate`, from out[j]: the sum of the chunks before this run of
// them, so that runs summed one after another round as one sum): the
// second half of the parameter gradients, whose reduction tree is fixed
// whatever the hardware. Twin: the chunk-order loops of src/train/kernels.rs
// (`linear_weight_grad`, `column_sums`) on a zeroed gradient.
//!include common.wgsl

struct Params {
    width: u32,
    n_chunks: u32,
    accumulate: u32,
    // Binding index of element 0 of `partial` and `out`.
    part0: u32,
    out0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_index(gid, nwg);
    if (j >= p.width) {
        return;
    }
    var acc = 0.0f;
    if (p.accumulate != 0u) {
        acc = out[p.out0 + j];
    }
    for (var chunk = 0u; chunk < p.n_chunks; chunk++) {
        acc += partial[p.part0 + chunk * p.width + j];
    }
    out[p.out0 + j] = acc;
}
