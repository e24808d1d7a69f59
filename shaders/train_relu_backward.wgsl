// ReLU backward in place: g[i] = 0 where the layer's output out[i] is not
// positive, for elements `first .. end` (a chunk). Twin: src/train/kernels.rs
// (`relu_backward`).
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    // Binding index of element 0 of `g` and `out`.
    g0: u32,
    out0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    if (out[p.out0 + i] <= 0.0) {
        g[p.g0 + i] = 0.0;
    }
}
