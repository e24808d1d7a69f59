// Adam, PyTorch's update, one element per invocation. Twin:
// src/train/kernels.rs (`adam_at`); the bias corrections 1 − β^t are
// computed on the host exactly as the twin computes them. A dispatch covers
// elements `first .. end`: a chunk.
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // 1 − β1^t and 1 − β2^t.
    bias1: f32,
    bias2: f32,
    // Binding index of element 0 of each array.
    param0: u32,
    grad0: u32,
    m0: u32,
    v0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + linear_index(gid, nwg);
    if (i >= p.end) {
        return;
    }
    let g = grad[p.grad0 + i];
    let m_new = p.beta1 * m[p.m0 + i] + (1.0 - p.beta1) * g;
    let v_new = p.beta2 * v[p.v0 + i] + (1.0 - p.beta2) * g * g;
    m[p.m0 + i] = m_new;
    v[p.v0 + i] = v_new;
    let denom = sqrt(v_new) / sqrt(p.bias2) + p.eps;
    param[p.param0 + i] -= p.lr / p.bias1 * m_new / denom;
}
