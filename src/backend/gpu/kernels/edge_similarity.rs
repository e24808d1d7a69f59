//! `shaders/edge_similarity.wgsl`: the similarity of every fragment-neighbour
//! slot and its histogram (docs/contract.md §9), as one program. Twin:
//! [`crate::kernels::edge_similarity`].

use crate::backend::gpu::chunking::{plan_chunks, Aux};
use crate::backend::gpu::plan::{Problem, Refs};
use crate::backend::gpu::program::{words, Array, Program, Slot};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::GpuError;
use crate::kernels::edge_similarity::HISTOGRAM_BINS;

declare_kernel! {
    file: "edge_similarity.wgsl",
    variants: f32_only,
    params {
        /// Slots of this dispatch: `begin .. end`.
        begin: u32,
        end: u32,
        k: u32,
        dim: u32,
        /// Bins this dispatch counts: `bin_begin .. bin_end`.
        bin_begin: u32,
        bin_end: u32,
        neighbor_shift: u32,
        token_shift: u32,
        nb_token_shift: u32,
        similarity_shift: u32,
        histogram_shift: u32,
    }
    bindings {
        neighbors: Read,
        tokens: Read,
        nb_tokens: Read,
        unit: Read,
        similarity: ReadWrite,
        histogram: ReadWrite,
    }
}

const NEIGHBORS: Slot = "f.neighbors";
const TOKENS: Slot = "f.tokens";
const UNIT: Slot = "f.unit";
const SIMILARITY: Slot = "f.similarity";
const HISTOGRAM: Slot = "f.histogram";
const AUX: Slot = "f.aux";

/// Slots of the program, freed once it is done: unlike a tile's buffers they
/// are not reused by the next call.
pub(crate) const SLOTS: [Slot; 6] = [NEIGHBORS, TOKENS, UNIT, SIMILARITY, HISTOGRAM, AUX];

/// Where the program's results are in the staging bytes.
pub(crate) struct Readback {
    similarity_at: u64,
    histogram_at: u64,
    slots: u64,
}

impl Readback {
    /// Similarity per slot and the histogram.
    pub fn decode(&self, bytes: &[u8]) -> (Vec<f32>, Vec<u32>) {
        let similarity = words(bytes, self.similarity_at, self.slots as usize)
            .map(f32::from_bits)
            .collect();
        let histogram = words(bytes, self.histogram_at, HISTOGRAM_BINS).collect();
        (similarity, histogram)
    }
}

/// Records the similarity of every slot of the `[n, k]` lists `neighbors`
/// and its histogram. Rows of transcripts are chunked so that the lists fit
/// a binding; when the tokens do not fit one, each chunk reads a compact copy
/// of its neighbours' tokens; the histogram is counted one binding-sized
/// window of bins at a time.
pub(crate) fn build(
    program: &mut Program,
    neighbors: &[i32],
    k: usize,
    tokens: &[u32],
    unit: &[f32],
    dim: usize,
) -> Result<Readback, GpuError> {
    let (n, k64) = (tokens.len() as u64, k as u64);
    let slots = n * k64;
    program.check_u32_indexable("neighbour slots", slots)?;
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
        for (chunk, &(chunk_neighbors, chunk_nb_tokens)) in chunks.iter().zip(&sources) {
            let (begin, end) = (chunk.begin as u64, chunk.end as u64);
            let (neighbors, neighbor_shift) =
                program.bind(chunk_neighbors, begin * k64, end * k64)?;
            let (tokens, token_shift) = program.bind(tokens_arr, begin, end)?;
            let (nb_tokens, nb_token_shift) =
                program.bind(chunk_nb_tokens, 0, chunk_nb_tokens.len)?;
            let (unit, unit_shift) = program.bind(unit_arr, 0, unit_arr.len)?;
            debug_assert_eq!(unit_shift, 0, "the table is bound from its start");
            let (similarity, similarity_shift) =
                program.bind(similarity, begin * k64, end * k64)?;
            let (histogram, histogram_shift) = program.bind(histogram, bin_begin, bin_end)?;
            let items = (end - begin) * k64;
            program.dispatch(
                Variant::of(Elem::F32),
                Params {
                    begin: (begin * k64) as u32,
                    end: (end * k64) as u32,
                    k: k as u32,
                    dim: dim as u32,
                    bin_begin: bin_begin as u32,
                    bin_end: bin_end as u32,
                    neighbor_shift,
                    token_shift,
                    nb_token_shift,
                    similarity_shift,
                    histogram_shift,
                },
                Bindings {
                    neighbors,
                    tokens,
                    nb_tokens,
                    unit,
                    similarity,
                    histogram,
                },
                items.div_ceil(u64::from(WG)),
            )?;
        }
        bin_begin = bin_end;
    }
    aux.upload(program);
    Ok(Readback {
        similarity_at: program.readback(SIMILARITY, 0, slots * 4),
        histogram_at: program.readback(HISTOGRAM, 0, HISTOGRAM_BINS as u64 * 4),
        slots,
    })
}
