// Helpers shared by every seggpu kernel. Expanded into each shader by the
// `//!include common.wgsl` line (src/backend/gpu/shaders.rs).
//
// The Rust side prepends a prelude that defines, per variant:
//   alias act = f32 | f16;      element type of activation buffers
//   alias act_in = f32 | f16;   element type of a linear layer's input
//   const WG: u32;              workgroup size of the 1-D kernels
//   const TILE: u32;            tile edge of the linear kernel
//   const MAX_C: u32;           largest channels per head (gatv2)
//
// Every buffer binding may be a window of a larger array: a kernel computes
// the index an element has in the whole array and subtracts the window's
// `*_shift` (u32, wrapping) to index the binding.

// f32::MIN, the lowest finite f32: the online softmax's starting maximum.
const F32_LOWEST: f32 = -3.40282347e38f;
// GATv2's leaky ReLU slope.
const NEGATIVE_SLOPE: f32 = 0.2;
// PyG's softmax adds this to the denominator.
const SOFTMAX_EPS: f32 = 1e-16;

// Index of this invocation in a 1-D problem dispatched as a 2-D grid of
// workgroups: x runs up to the device's per-dimension limit, then y.
fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * (nwg.x * WG);
}

// Equals `v > 0 ? v : v * slope` for a slope in (0, 1), without a branch.
fn leaky_relu(v: f32) -> f32 {
    return max(v, v * NEGATIVE_SLOPE);
}
