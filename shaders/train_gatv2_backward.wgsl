// GATv2 backward of one destination, all heads. Twin: src/train/kernels.rs
// (`gatv2_backward_at`). With g the output gradient of the destination, α the
// kept attention weights and m = xl[src]: dα_e = g · m_e (c increasing);
// weighted = Σ_e α_e dα_e (edge order); de_e = α_e (dα_e − weighted);
// d att += de · leaky(u), du = de · att · leaky'(u) with u = m + xr; each
// edge's d m = α g + du, written per edge (its source sums them later in a
// fixed order: no float atomics, which WGSL lacks). d xr = Σ_e du_e is
// summed as Σ_e de · att · (leaky'(u) − leaky'(u of the first edge)), equal
// as Σ_e de_e = 0, but exactly 0 where all slopes agree (no rounding noise
// for Adam to amplify); lin_l's bias row is g + d xr (0 without edges). A
// dispatch covers destinations `first .. end`: a chunk.
//!include common.wgsl

struct Params {
    first: u32,
    end: u32,
    heads: u32,
    channels: u32,
    // Binding index of element 0 of each array: `xl`, `xr`, offsets and
    // sources in `csr`, att in `w`, `alpha`, `g`, `grads` (per destination
    // dxr, datt, then lin_l's bias row, `[n_dst, 3·H·C]`: one binding for
    // the three, the kernel has eight) and `dxl` (per edge, `[E, H·C]`).
    xl0: u32,
    xr0: u32,
    off0: u32,
    src0: u32,
    att0: u32,
    alpha0: u32,
    g0: u32,
    grads0: u32,
    dxl0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xl: array<f32>;
@group(0) @binding(2) var<storage, read> xr: array<f32>;
@group(0) @binding(3) var<storage, read> csr: array<u32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read> alpha: array<f32>;
@group(0) @binding(6) var<storage, read> g: array<f32>;
@group(0) @binding(7) var<storage, read_write> grads: array<f32>;
@group(0) @binding(8) var<storage, read_write> dxl: array<f32>;

fn leaky_relu_slope(v: f32) -> f32 {
    if (v > 0.0) {
        return 1.0;
    }
    return NEGATIVE_SLOPE;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let dst = p.first + linear_index(gid, nwg);
    if (dst >= p.end) {
        return;
    }
    let hc = p.heads * p.channels;
    let begin = csr[p.off0 + dst];
    let end = csr[p.off0 + dst + 1u];
    let xr_row = p.xr0 + dst * hc;
    let g_row = p.g0 + dst * hc;
    let dxr_row = p.grads0 + dst * 3u * hc;
    let datt_row = dxr_row + hc;
    let bias_row = datt_row + hc;
    for (var c = 0u; c < hc; c++) {
        grads[dxr_row + c] = 0.0;
        grads[datt_row + c] = 0.0;
        grads[bias_row + c] = 0.0;
    }
    if (begin == end) {
        return;
    }
    let first_row = p.xl0 + csr[p.src0 + begin] * hc;
    for (var head = 0u; head < p.heads; head++) {
        let base = head * p.channels;
        var weighted = 0.0f;
        for (var e = begin; e < end; e++) {
            let row = p.xl0 + csr[p.src0 + e] * hc + base;
            var d_alpha = 0.0f;
            for (var c = 0u; c < p.channels; c++) {
                d_alpha += g[g_row + base + c] * xl[row + c];
            }
            weighted += alpha[p.alpha0 + e * p.heads + head] * d_alpha;
        }
        for (var e = begin; e < end; e++) {
            let row = p.xl0 + csr[p.src0 + e] * hc + base;
            let a = alpha[p.alpha0 + e * p.heads + head];
            var d_alpha = 0.0f;
            for (var c = 0u; c < p.channels; c++) {
                d_alpha += g[g_row + base + c] * xl[row + c];
            }
            let d_logit = a * (d_alpha - weighted);
            let edge = p.dxl0 + e * hc + base;
            for (var c = 0u; c < p.channels; c++) {
                let u = xl[row + c] + xr[xr_row + base + c];
                let u_first = xl[first_row + base + c] + xr[xr_row + base + c];
                grads[datt_row + base + c] += d_logit * leaky_relu(u);
                let d = d_logit * w[p.att0 + base + c];
                let slope = leaky_relu_slope(u);
                grads[dxr_row + base + c] += d * (slope - leaky_relu_slope(u_first));
                dxl[edge + c] = a * g[g_row + base + c] + d * slope;
            }
        }
    }
    for (var c = 0u; c < hc; c++) {
        grads[bias_row + c] = g[g_row + c] + grads[dxr_row + c];
    }
}
