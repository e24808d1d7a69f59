// Dense layer: y[r, o] = Σ_k x[row(r), k] · wt[k, o] (+ b[o]) (then ReLU).
// Twin: src/kernels/linear.rs (`Linear::at`). Every output element is summed
// over k from 0 upwards in one f32 accumulator that starts at zero, each step
// a fused multiply-add; the bias is added after the sum.
//
// Tiled: a TILE×TILE workgroup computes a (TILE·TM rows) × (TILE·TN columns)
// block of the output, each invocation TM×TN elements of it (rows
// lid.y + TILE·i, columns lid.x + TILE·j). Slices of TILE k-values of x and
// wt are staged in workgroup memory.
// Rows may be gathered through an index list (`gather`).
//!include common.wgsl

struct Params {
    // Output rows of this dispatch: [row_begin, row_end).
    row_begin: u32,
    row_end: u32,
    in_dim: u32,
    out_dim: u32,
    // Flags (0/1).
    gather: u32,
    has_bias: u32,
    relu: u32,
    // Column blocks per row block: ceil(out_dim / (TILE·TN)).
    n_col_tiles: u32,
    x_shift: u32,
    rows_shift: u32,
    // Indices of wt[0, 0] and b[0] in the `w` binding.
    w_base: u32,
    b_base: u32,
    out_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<act_in>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<act>;

// x_tile[i][kk] = x[row i of the block, k0 + kk]; w_tile[kk][j] = wt[k0 + kk, column j of the block].
var<workgroup> x_tile: array<array<f32, TILE>, TILE * TM>;
var<workgroup> w_tile: array<array<f32, TILE * TN>, TILE>;

@compute @workgroup_size(TILE, TILE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    // Workgroups form a 2-D grid when there are more than the per-dimension limit.
    let group = wid.x + wid.y * nwg.x;
    let row_tile = group / p.n_col_tiles;
    let col_tile = group % p.n_col_tiles;
    let first_row = p.row_begin + row_tile * TILE * TM;
    if (first_row >= p.row_end) {
        return;
    }
    // This invocation's rows (gathered or not) and columns.
    var row_ok: array<bool, TM>;
    var src: array<u32, TM>;
    for (var i = 0u; i < TM; i++) {
        let r = first_row + lid.y + TILE * i;
        row_ok[i] = r < p.row_end;
        src[i] = r;
        if (p.gather != 0u && row_ok[i]) {
            src[i] = rows[r - p.rows_shift];
        }
    }
    let first_col = col_tile * TILE * TN;
    var acc: array<array<f32, TN>, TM>;
    for (var k0 = 0u; k0 < p.in_dim; k0 += TILE) {
        let kx = k0 + lid.x;
        for (var i = 0u; i < TM; i++) {
            var xv = 0.0f;
            if (row_ok[i] && kx < p.in_dim) {
                xv = f32(x[src[i] * p.in_dim + kx - p.x_shift]);
            }
            x_tile[lid.y + TILE * i][lid.x] = xv;
        }
        let kw = k0 + lid.y;
        for (var j = 0u; j < TN; j++) {
            let o = first_col + lid.x + TILE * j;
            var wv = 0.0f;
            if (o < p.out_dim && kw < p.in_dim) {
                wv = w[p.w_base + kw * p.out_dim + o];
            }
            w_tile[lid.y][lid.x + TILE * j] = wv;
        }
        workgroupBarrier();
        let k_end = min(TILE, p.in_dim - k0);
        for (var kk = 0u; kk < k_end; kk++) {
            var xv: array<f32, TM>;
            for (var i = 0u; i < TM; i++) {
                xv[i] = x_tile[lid.y + TILE * i][kk];
            }
            for (var j = 0u; j < TN; j++) {
                let wv = w_tile[kk][lid.x + TILE * j];
                for (var i = 0u; i < TM; i++) {
                    acc[i][j] = fma(xv[i], wv, acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let r = first_row + lid.y + TILE * i;
        for (var j = 0u; j < TN; j++) {
            let o = first_col + lid.x + TILE * j;
            if (row_ok[i] && o < p.out_dim) {
                var v = acc[i][j];
                if (p.has_bias != 0u) {
                    v = acc[i][j] + w[p.b_base + o];
                }
                if (p.relu != 0u) {
                    v = max(v, 0.0);
                }
                out[r * p.out_dim + o - p.out_shift] = act(v);
            }
        }
    }
}
