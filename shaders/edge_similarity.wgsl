// Fragment-neighbour similarity and its histogram (docs/contract.md §9). Twin:
// src/kernels/edge_similarity.rs (`edge_similarity_at`, `similarity_bin`,
// `similarity_histogram`).
// One invocation per slot `e` of the `[n, k]` neighbour lists: the cosine of
// the unit embedding rows of the two transcripts' genes (0 for an empty
// slot), counted into its histogram bin when the bin lies in this
// dispatch's window of bins.
//!include common.wgsl

// Bins of the histogram over [-1, 1].
const HISTOGRAM_BINS: u32 = 65536u;
// 2^-54: negative similarities of at most this magnitude share the bin of 0
// (the bin rule is defined with s + 1 in f64, which rounds to 1 for them).
const ROUNDS_TO_ONE: f32 = 5.551115e-17;

struct Params {
    // Slots of this dispatch: [begin, end).
    begin: u32,
    end: u32,
    k: u32,
    dim: u32,
    // Bins this dispatch counts: [bin_begin, bin_end).
    bin_begin: u32,
    bin_end: u32,
    neighbor_shift: u32,
    token_shift: u32,
    nb_token_shift: u32,
    similarity_shift: u32,
    histogram_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Neighbour per slot, -1 for an empty slot (positions in `nb_tokens`).
@group(0) @binding(1) var<storage, read> neighbors: array<i32>;
// Token of each transcript.
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
// Token of each neighbour: `tokens` itself, or a compact copy of the
// neighbours' tokens when `tokens` exceeds one binding.
@group(0) @binding(3) var<storage, read> nb_tokens: array<u32>;
// `[vocab, dim]` unit embedding rows.
@group(0) @binding(4) var<storage, read> unit: array<f32>;
@group(0) @binding(5) var<storage, read_write> similarity: array<f32>;
@group(0) @binding(6) var<storage, read_write> histogram: array<atomic<u32>>;

// floor((s + 1) / 2 * 2^16) with s + 1 in f64, computed exactly in f32.
fn similarity_bin(s: f32) -> u32 {
    let half = f32(HISTOGRAM_BINS / 2u);
    var below = floor(s * half);
    if (s < 0.0 && s >= -ROUNDS_TO_ONE) {
        below = 0.0;
    }
    return u32(clamp(below + half, 0.0, f32(HISTOGRAM_BINS - 1u)));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.end - p.begin) {
        return;
    }
    let e = p.begin + i;
    let j = neighbors[e - p.neighbor_shift];
    var dot = 0.0f;
    if (j >= 0i) {
        let a = tokens[e / p.k - p.token_shift] * p.dim;
        let b = nb_tokens[u32(j) - p.nb_token_shift] * p.dim;
        for (var c = 0u; c < p.dim; c++) {
            dot += unit[a + c] * unit[b + c];
        }
        let bin = similarity_bin(dot);
        if (bin >= p.bin_begin && bin < p.bin_end) {
            atomicAdd(&histogram[bin - p.histogram_shift], 1u);
        }
    }
    similarity[e - p.similarity_shift] = dot;
}
