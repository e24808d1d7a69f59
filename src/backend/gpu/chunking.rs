//! What every launcher shares to keep each binding within the device's limit:
//! the chunks of a kernel's rows ([`plan`]), the index lists of a program
//! ([`Aux`]), and the compact copies of gathered arrays too large for one
//! binding (made by `shaders/gather.wgsl`, [`Planned::reads`]).

use super::kernels::gather;
use super::plan::{self, Chunk, Problem, Refs};
use super::program::{Array, Program, Slot};
use super::shaders::Elem;
use super::GpuError;

/// Slot of compact activation copies.
pub(super) const COMPACT: Slot = "compact";
/// Slot of compact weight (embedding table) copies.
pub(super) const COMPACT_W: Slot = "compact.w";

/// A plan whose compact lists and remapped indices live in the aux slot.
#[derive(Debug, Default)]
pub(super) struct Planned {
    pub chunks: Vec<Chunk>,
    /// Per chunk: aux element offsets of its compact list and remapped
    /// entries, when it has them.
    pub aux: Vec<Option<(u64, u64)>>,
}

/// An array a kernel reads rows of through an index list.
#[derive(Debug, Clone, Copy)]
pub(super) struct Indexed {
    /// `rows` × `width` elements of `elem`.
    pub array: Array,
    pub rows: u64,
    pub width: u64,
    pub elem: Elem,
    /// The index list: logical entries are rows of `array`.
    pub index: Array,
    /// Slot of the compact copies.
    pub compact: Slot,
}

impl Planned {
    /// What chunk `i` reads: `src.array` through `src.index`, or, when the
    /// chunk is compacted, a compact copy of the rows it reads (recorded
    /// now) through its remapped entries, which stand for index entries
    /// `entries.0 .. entries.1`.
    pub fn reads(
        &self,
        program: &mut Program,
        aux: &Aux,
        i: usize,
        src: &Indexed,
        entries: (u64, u64),
    ) -> Result<(Array, Array), GpuError> {
        match (&self.chunks[i].compact, self.aux[i]) {
            (Some(compact), Some((list_at, remapped_at))) => {
                let copy = gather::record(program, src, aux, list_at, &compact.list)?;
                let remapped =
                    aux.array(remapped_at as i64 - entries.0 as i64, entries.1 - entries.0);
                Ok((copy, remapped))
            }
            _ => Ok((src.array, src.index)),
        }
    }
}

/// Index lists of a program, uploaded once into one u32 slot.
#[derive(Debug)]
pub(super) struct Aux {
    pub slot: Slot,
    pub data: Vec<u32>,
}

impl Aux {
    pub fn new(slot: Slot) -> Self {
        Self {
            slot,
            data: Vec::new(),
        }
    }

    /// Appends `values`; returns their element offset.
    pub fn push(&mut self, values: &[u32]) -> u64 {
        // Start every list on a 64-element (256-byte) boundary.
        while !self.data.len().is_multiple_of(64) {
            self.data.push(0);
        }
        let at = self.data.len() as u64;
        self.data.extend_from_slice(values);
        at
    }

    /// Plans `problem` and stores its compact lists.
    pub fn plan(&mut self, program: &Program, problem: &Problem) -> Result<Planned, GpuError> {
        let chunks = plan_chunks(program, problem)?;
        let aux = chunks
            .iter()
            .map(|c| {
                c.compact
                    .as_ref()
                    .map(|k| (self.push(&k.list), self.push(&k.remapped)))
            })
            .collect();
        Ok(Planned { chunks, aux })
    }

    /// Uploads the lists (call after every plan of the program).
    pub fn upload(self, program: &mut Program) {
        let mut data = self.data;
        if data.is_empty() {
            data.push(0);
        }
        program.upload_u32(self.slot, &data);
    }

    /// The logical array whose element 0 is aux element `base`.
    pub fn array(&self, base: i64, len: u64) -> Array {
        Array {
            slot: self.slot,
            elem: 4,
            base,
            len,
        }
    }
}

/// Chunks of `problem` under the program's limits.
pub(super) fn plan_chunks(program: &Program, problem: &Problem) -> Result<Vec<Chunk>, GpuError> {
    plan::plan(problem, program.limits.max_binding, program.budget()).map_err(|detail| {
        GpuError::TooLarge {
            stage: program.stage.clone(),
            detail,
        }
    })
}

/// Rows per chunk of a kernel that only streams rows of `row_bytes`.
pub(super) fn streamed_chunks(
    program: &Program,
    rows: usize,
    row_bytes: u64,
    max_rows: usize,
) -> Result<Vec<Chunk>, GpuError> {
    plan_chunks(
        program,
        &Problem {
            rows,
            row_bytes,
            refs: Refs::None,
            gathered_rows: 0,
            gathered_row_bytes: 0,
            max_rows,
        },
    )
}
