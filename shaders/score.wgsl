// Receptive-field scoring (docs/contract.md §8). Twin: src/kernels/score.rs (`best_at`).
// One invocation per transcript: score every candidate nucleus, keep the
// best; ties go to the lower nucleus index; (0, -1) without a candidate.
//!include common.wgsl

// Receptive-field slots scored together.
const SLOT_BATCH: u32 = 8u;

struct Params {
    // Transcripts of this dispatch: [tx_begin, tx_end).
    tx_begin: u32,
    tx_end: u32,
    dim: u32,
    k: u32,
    ztx_shift: u32,
    zbd_shift: u32,
    rf_shift: u32,
    out_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z_tx: array<act>;
@group(0) @binding(2) var<storage, read> z_bd: array<act>;
// `[n_tx, k]` nucleus indices, -1 for an empty slot.
@group(0) @binding(3) var<storage, read> rf: array<i32>;
@group(0) @binding(4) var<storage, read_write> best_score: array<f32>;
@group(0) @binding(5) var<storage, read_write> best_index: array<i32>;

// Sigmoid, except an exact zero (segger's padding) scores 0.
fn score_of(dot: f32) -> f32 {
    if (dot == 0.0) {
        return 0.0;
    }
    return 1.0 / (1.0 + exp(-dot));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.tx_end - p.tx_begin) {
        return;
    }
    let tx = p.tx_begin + i;
    let tx_row = tx * p.dim - p.ztx_shift;
    var best = -1.0f;
    var best_nucleus = -1i;
    // Candidates are scored in batches so their dot products (each summed
    // over c in increasing order) pipeline.
    var batch_begin = 0u;
    while (batch_begin < p.k) {
        let batch_len = min(SLOT_BATCH, p.k - batch_begin);
        let nuclei = tx * p.k + batch_begin - p.rf_shift;
        var dots: array<f32, SLOT_BATCH>;
        for (var c = 0u; c < p.dim; c++) {
            for (var b = 0u; b < batch_len; b++) {
                let nucleus = rf[nuclei + b];
                if (nucleus >= 0i) {
                    dots[b] += f32(z_tx[tx_row + c]) * f32(z_bd[u32(nucleus) * p.dim + c - p.zbd_shift]);
                }
            }
        }
        for (var b = 0u; b < batch_len; b++) {
            let nucleus = rf[nuclei + b];
            if (nucleus < 0i) {
                continue;
            }
            let score = score_of(dots[b]);
            if (score > best || (score == best && nucleus < best_nucleus)) {
                best = score;
                best_nucleus = nucleus;
            }
        }
        batch_begin += batch_len;
    }
    if (best_nucleus < 0i) {
        best = 0.0;
    }
    best_score[tx - p.out_shift] = best;
    best_index[tx - p.out_shift] = best_nucleus;
}
