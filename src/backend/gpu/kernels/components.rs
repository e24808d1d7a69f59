//! `shaders/components.wgsl`: connected components (docs/contract.md §9) by min-label
//! hooking and pointer jumping, many iterations per submission
//! ([`iterations_in_submission`]). Twin: [`crate::kernels::components`].

use crate::backend::gpu::chunking::streamed_chunks;
use crate::backend::gpu::program::{words, Array, Program, Slot};
use crate::backend::gpu::shaders::{f32_only, Elem, Variant, WG};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "components.wgsl",
    variants: f32_only,
    params {
        /// [`HOOK`]: edges `begin .. end`; [`JUMP`]: nodes `begin .. end`.
        mode: u32,
        begin: u32,
        end: u32,
        iteration: u32,
        /// In edges.
        edge_shift: u32,
    }
    bindings {
        edges: Read,
        labels: ReadWrite,
        flags: ReadWrite,
    }
}

/// `mode` of a hook pass over edges, as the shader names it.
const HOOK: u32 = 0;
/// `mode` of a pointer-jumping pass over nodes.
const JUMP: u32 = 1;

const EDGES: Slot = "c.edges";
const LABELS: Slot = "c.labels";
const FLAGS: Slot = "c.flags";

/// Slots of the program, freed once the components are known.
pub(crate) const SLOTS: [Slot; 3] = [EDGES, LABELS, FLAGS];

/// Hook + jump iterations recorded in the first submission.
const FIRST_ITERATIONS: u32 = 16;
/// Hook + jump iterations recorded in each later submission.
const LATER_ITERATIONS: u32 = 32;

/// Most workgroups of a dispatch (enough to fill the largest GPUs); each
/// invocation strides over the rest.
const MAX_GROUPS: u64 = 4096;

/// Iterations recorded in submission `s` (0, 1, …). Passes after
/// convergence return at once and launch a capped grid, so spare iterations
/// cost little, whereas each further submission waits for a readback.
/// kNN-like graphs of 1M–10M nodes took 8–10 iterations when every
/// invocation read the previous pass's labels (the slow case), 3–5 on
/// lavapipe, where later invocations see earlier ones' writes.
pub(crate) fn iterations_in_submission(s: u32) -> u32 {
    if s == 0 {
        FIRST_ITERATIONS
    } else {
        LATER_ITERATIONS
    }
}

/// Where a submission's results are in the staging bytes.
pub(crate) struct Readback {
    flags_at: u64,
    labels_at: u64,
    n: usize,
    /// Iterations recorded.
    pub iterations: u32,
}

impl Readback {
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
pub(crate) fn build(
    program: &mut Program,
    n: usize,
    edges: &[[u32; 2]],
    first: bool,
    iterations: u32,
) -> Result<Readback, GpuError> {
    let (n64, m) = (n as u64, edges.len() as u64);
    program.check_u32_indexable("edges", m)?;
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
    let (labels, _) = program.bind(labels_arr, 0, n64)?;
    let (flags, _) = program.bind(flags_arr, 0, flags_arr.len)?;
    // The jump pass reads no edges; the binding is only filled.
    let (no_edges, _) = program.bind(edges_arr, 0, 0)?;
    let groups = |begin: u64, end: u64| (end - begin).div_ceil(u64::from(WG)).min(MAX_GROUPS);
    for iteration in 0..iterations {
        for c in &edge_chunks {
            let (begin, end) = (c.begin as u64, c.end as u64);
            let (edges, edge_shift) = program.bind(edges_arr, begin, end)?;
            program.dispatch(
                Variant::of(Elem::F32),
                Params {
                    mode: HOOK,
                    begin: begin as u32,
                    end: end as u32,
                    iteration,
                    edge_shift,
                },
                Bindings {
                    edges,
                    labels,
                    flags,
                },
                groups(begin, end),
            )?;
        }
        for c in &node_chunks {
            let (begin, end) = (c.begin as u64, c.end as u64);
            program.dispatch(
                Variant::of(Elem::F32),
                Params {
                    mode: JUMP,
                    begin: begin as u32,
                    end: end as u32,
                    iteration,
                    edge_shift: 0,
                },
                Bindings {
                    edges: no_edges,
                    labels,
                    flags,
                },
                groups(begin, end),
            )?;
        }
    }
    Ok(Readback {
        flags_at: program.readback(FLAGS, 0, flags_arr.len * 4),
        labels_at: program.readback(LABELS, 0, n64 * 4),
        n,
        iterations,
    })
}
