//! The fragment stage's programs (SPEC §9): similarity of the fragment
//! neighbours with its histogram (`shaders/fragments.wgsl`), and connected
//! components (`shaders/components.wgsl`), iterated on the GPU, many hook +
//! jump iterations per submission ([`iterations_in_submission`]).

use super::plan::{Problem, Refs};
use super::program::{Array, Program, Slot};
use super::record::{plan_chunks, streamed_chunks, Aux};
use super::shaders::{Elem, Kernel, Variant, WG};
use super::GpuError;
use crate::pipeline::fragments::HISTOGRAM_BINS;

const NEIGHBORS: Slot = "f.neighbors";
const TOKENS: Slot = "f.tokens";
const UNIT: Slot = "f.unit";
const SIMILARITY: Slot = "f.similarity";
const HISTOGRAM: Slot = "f.histogram";
const AUX: Slot = "f.aux";
const EDGES: Slot = "c.edges";
const LABELS: Slot = "c.labels";
const FLAGS: Slot = "c.flags";

/// Slots of the fragment stage, freed once it is done: unlike a tile's
/// buffers they are not reused by the next call.
pub(super) const SLOTS: [Slot; 9] = [
    NEIGHBORS, TOKENS, UNIT, SIMILARITY, HISTOGRAM, AUX, EDGES, LABELS, FLAGS,
];

/// Hook + jump iterations recorded in the first submission.
const FIRST_ITERATIONS: u32 = 16;
/// Hook + jump iterations recorded in each later submission.
const LATER_ITERATIONS: u32 = 32;

/// Iterations recorded in submission `s` (0, 1, …). Passes after
/// convergence return at once and launch a capped grid, so spare iterations
/// cost little, whereas each further submission waits for a readback.
/// kNN-like graphs of 1M–10M nodes took 8–10 iterations when every
/// invocation read the previous pass's labels (the slow case), 3–5 on
/// lavapipe, where later invocations see earlier ones' writes.
pub(super) fn iterations_in_submission(s: u32) -> u32 {
    if s == 0 {
        FIRST_ITERATIONS
    } else {
        LATER_ITERATIONS
    }
}

/// Fails when `count` items cannot be indexed by the kernels' u32s.
fn check_u32_indexable(program: &Program, what: &str, count: u64) -> Result<(), GpuError> {
    if count > u64::from(u32::MAX) {
        return Err(GpuError::TooLarge {
            stage: program.stage.clone(),
            detail: format!("{count} {what} exceed the kernels' 32-bit indices"),
        });
    }
    Ok(())
}

/// Most workgroups of a components dispatch (enough to fill the largest
/// GPUs); each invocation strides over the rest.
const MAX_COMPONENT_GROUPS: u64 = 4096;

/// `mode` of `components.wgsl`.
const HOOK: u32 = 0;
const JUMP: u32 = 1;

/// Where a similarity program's results are in the staging bytes.
pub(super) struct SimilarityReadback {
    pub similarity_at: u64,
    pub histogram_at: u64,
    pub slots: u64,
}

/// Records the similarity of every slot of the `[n, k]` lists `neighbors`
/// and its histogram. Rows of transcripts are chunked so that the lists fit
/// a binding; when the tokens do not fit one, each chunk reads a compact copy
/// of its neighbours' tokens; the histogram is counted one binding-sized
/// window of bins at a time.
pub(super) fn build_similarity(
    program: &mut Program,
    neighbors: &[i32],
    k: usize,
    tokens: &[u32],
    unit: &[f32],
    dim: usize,
) -> Result<SimilarityReadback, GpuError> {
    let (n, k64, dim64) = (tokens.len() as u64, k as u64, dim as u64);
    let slots = n * k64;
    check_u32_indexable(program, "neighbour slots", slots)?;
    let variant = Variant::of(Elem::F32);
    program.upload(NEIGHBORS, bytemuck::cast_slice(neighbors).to_vec());
    let tokens_arr = program.upload_u32(TOKENS, tokens);
    program.upload(UNIT, bytemuck::cast_slice(unit).to_vec());
    program.need(SIMILARITY, slots * 4);
    program.upload(HISTOGRAM, vec![0u8; HISTOGRAM_BINS * 4]);
    let neighbors_arr = Array::at(NEIGHBORS, 4, slots);
    let unit_arr = Array::at(UNIT, 4, unit.len() as u64);
    let similarity = Array::at(SIMILARITY, 4, slots);
    let histogram = Array::at(HISTOGRAM, 4, HISTOGRAM_BINS as u64);
    let chunks = plan_chunks(
        program,
        &Problem {
            rows: n as usize,
            row_bytes: (k64 * 4).max(4),
            refs: Refs::Fixed {
                k,
                index: neighbors,
            },
            gathered_rows: n as usize,
            gathered_row_bytes: 4,
            max_rows: program.max_rows(k64, u64::from(WG)),
        },
    )?;
    // Per chunk: its neighbour positions and the tokens they index.
    let mut aux = Aux::new(AUX);
    let sources: Vec<(Array, Array)> = chunks
        .iter()
        .map(|c| match &c.compact {
            Some(compact) => {
                let nb_tokens: Vec<u32> =
                    compact.list.iter().map(|&j| tokens[j as usize]).collect();
                let tokens_at = aux.push(&nb_tokens);
                let remapped_at = aux.push(&compact.remapped);
                (
                    aux.array(remapped_at as i64 - (c.begin as u64 * k64) as i64, slots),
                    aux.array(tokens_at as i64, nb_tokens.len() as u64),
                )
            }
            None => (neighbors_arr, tokens_arr),
        })
        .collect();
    let bins_per_window = (program.budget() / 4).min(HISTOGRAM_BINS as u64);
    let mut bin_begin = 0u64;
    while bin_begin < HISTOGRAM_BINS as u64 {
        let bin_end = (bin_begin + bins_per_window).min(HISTOGRAM_BINS as u64);
        for (chunk, &(nbs, nb_tokens)) in chunks.iter().zip(&sources) {
            let (begin, end) = (chunk.begin as u64, chunk.end as u64);
            let (b_nb, nb_shift) = program.bind(nbs, begin * k64, end * k64)?;
            let (b_tokens, token_shift) = program.bind(tokens_arr, begin, end)?;
            let (b_nb_tokens, nb_token_shift) = program.bind(nb_tokens, 0, nb_tokens.len)?;
            let (b_unit, unit_shift) = program.bind(unit_arr, 0, unit_arr.len)?;
            debug_assert_eq!(unit_shift, 0, "the table is bound from its start");
            let (b_sim, sim_shift) = program.bind(similarity, begin * k64, end * k64)?;
            let (b_hist, hist_shift) = program.bind(histogram, bin_begin, bin_end)?;
            let items = (end - begin) * k64;
            program.dispatch(
                Kernel::Fragments,
                variant,
                vec![b_nb, b_tokens, b_nb_tokens, b_unit, b_sim, b_hist],
                &[
                    (begin * k64) as u32,
                    (end * k64) as u32,
                    k as u32,
                    dim64 as u32,
                    bin_begin as u32,
                    bin_end as u32,
                    nb_shift,
                    token_shift,
                    nb_token_shift,
                    sim_shift,
                    hist_shift,
                ],
                items.div_ceil(u64::from(WG)),
            )?;
        }
        bin_begin = bin_end;
    }
    aux.upload(program);
    let similarity_at = program.readback(SIMILARITY, 0, slots * 4);
    let histogram_at = program.readback(HISTOGRAM, 0, HISTOGRAM_BINS as u64 * 4);
    Ok(SimilarityReadback {
        similarity_at,
        histogram_at,
        slots,
    })
}

/// Decodes a similarity readback: similarity per slot and the histogram.
pub(super) fn decode_similarity(bytes: &[u8], r: &SimilarityReadback) -> (Vec<f32>, Vec<u32>) {
    let similarity = words(bytes, r.similarity_at, r.slots as usize)
        .map(f32::from_bits)
        .collect();
    let histogram = words(bytes, r.histogram_at, HISTOGRAM_BINS).collect();
    (similarity, histogram)
}

fn words(bytes: &[u8], at: u64, n: usize) -> impl Iterator<Item = u32> + '_ {
    bytes[at as usize..at as usize + 4 * n]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Where a components submission's results are in the staging bytes.
pub(super) struct ComponentsReadback {
    flags_at: u64,
    labels_at: u64,
    n: usize,
    /// Iterations recorded.
    pub iterations: u32,
}

impl ComponentsReadback {
    /// Iterations of this submission that found differing labels; fewer
    /// than were recorded means the labels are final.
    pub fn productive(&self, bytes: &[u8]) -> u32 {
        let flags = words(bytes, self.flags_at, self.iterations as usize + 1);
        flags.skip(1).take_while(|&f| f != 0).count() as u32
    }

    /// The labels after this submission.
    pub fn labels(&self, bytes: &[u8]) -> Vec<u32> {
        words(bytes, self.labels_at, self.n).collect()
    }
}

/// Records one submission of connected components over `edges` on `n`
/// nodes: `iterations` iterations of a hook pass over the edges (in
/// binding-sized windows) and a jump pass over the nodes. The first
/// submission uploads the edges and the initial labels; later ones continue
/// from the labels on the GPU.
pub(super) fn build_components(
    program: &mut Program,
    n: usize,
    edges: &[[u32; 2]],
    first: bool,
    iterations: u32,
) -> Result<ComponentsReadback, GpuError> {
    let (n64, m) = (n as u64, edges.len() as u64);
    check_u32_indexable(program, "edges", m)?;
    let limit = program.limits.max_binding;
    if n64 * 4 > limit {
        return Err(GpuError::TooLarge {
            stage: program.stage.clone(),
            detail: format!(
                "the labels of {n} nodes ({} bytes) exceed one storage binding ({limit} bytes), which the components kernel reads them through",
                n64 * 4
            ),
        });
    }
    if first {
        program.upload(EDGES, bytemuck::cast_slice(edges).to_vec());
        let labels: Vec<u32> = (0..n as u32).collect();
        program.upload_u32(LABELS, &labels);
    }
    // flags[0] = 1: iteration 0 runs.
    let mut flags = vec![0u32; iterations as usize + 1];
    flags[0] = 1;
    let flags_arr = program.upload_u32(FLAGS, &flags);
    let edges_arr = Array::at(EDGES, 8, m);
    let labels_arr = Array::at(LABELS, 4, n64);
    let max_rows = program.max_rows(1, u64::from(WG));
    let edge_chunks = streamed_chunks(program, edges.len(), 8, max_rows)?;
    let node_chunks = streamed_chunks(program, n, 0, max_rows)?;
    let (b_labels, _) = program.bind(labels_arr, 0, n64)?;
    let (b_flags, _) = program.bind(flags_arr, 0, flags_arr.len)?;
    // The jump pass reads no edges; the binding is only filled.
    let (b_no_edges, _) = program.bind(edges_arr, 0, 0)?;
    for t in 0..iterations {
        for c in &edge_chunks {
            let (begin, end) = (c.begin as u64, c.end as u64);
            let (b_edges, edge_shift) = program.bind(edges_arr, begin, end)?;
            program.dispatch(
                Kernel::Components,
                Variant::of(Elem::F32),
                vec![b_edges, b_labels, b_flags],
                &[HOOK, begin as u32, end as u32, t, edge_shift],
                (end - begin)
                    .div_ceil(u64::from(WG))
                    .min(MAX_COMPONENT_GROUPS),
            )?;
        }
        for c in &node_chunks {
            let (begin, end) = (c.begin as u64, c.end as u64);
            program.dispatch(
                Kernel::Components,
                Variant::of(Elem::F32),
                vec![b_no_edges, b_labels, b_flags],
                &[JUMP, begin as u32, end as u32, t, 0],
                (end - begin)
                    .div_ceil(u64::from(WG))
                    .min(MAX_COMPONENT_GROUPS),
            )?;
        }
    }
    Ok(ComponentsReadback {
        flags_at: program.readback(FLAGS, 0, flags_arr.len * 4),
        labels_at: program.readback(LABELS, 0, n64 * 4),
        n,
        iterations,
    })
}
