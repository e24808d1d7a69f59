//! Splitting a training kernel's rows so that no storage binding exceeds the
//! device's limit, as [`super::plan`] does for the forward pass, for kernels
//! that read several arrays through index lists.
//!
//! A kernel's rows (destinations, sources, pairs, elements, …) are cut into
//! chunks of consecutive rows; each chunk is one dispatch binding windows of
//! the arrays streamed by row, by index entry (a destination's incoming
//! edges are contiguous) or by unit of rows (a weight gradient's reduction
//! chunks). A chunk's CSR list is a copy holding just its offsets and
//! entries. An array read through an index list is bound whole when it
//! fits, else each chunk reads a compact copy of the rows it needs
//! (`shaders/gather.wgsl`, exact) through remapped entries; an array
//! written through an index list (scattered rows) is bound as the window
//! between the least and the greatest row a chunk writes. Every row runs
//! the same arithmetic whatever the chunks, so the results are bit for bit
//! those of one dispatch.

use super::chunking::{Aux, Indexed};
use super::kernels::gather;
use super::kernels::train_common::bind_windows;
use super::program::{Array, Binding, Program, Slot};
use super::shaders::Elem;
use super::GpuError;
#[cfg(test)]
use crate::graph::Csr;

/// Slots of the compact copies, one per array read through an index list.
const COMPACT: [Slot; 2] = ["t.compact.0", "t.compact.1"];

/// Elements the aux list may pad before a copy (it aligns copies to 64).
const AUX_PAD: u64 = 64;

/// How a kernel's rows own index entries. A CSR kernel reads its first
/// [`Through`] array through the CSR's entries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entries<'a> {
    /// No entries.
    None,
    /// Entry `r` belongs to row `r`.
    PerRow,
    /// Row `r` owns entries `offsets[r] .. offsets[r + 1]`; `offsets` and
    /// the entries (`ids`, in the aux slot right after the offsets) are
    /// bound together.
    Csr {
        offsets: &'a [u32],
        /// `[rows + 1]` offsets, then the entries, on the device.
        device: (Array, Array),
    },
}

/// An array read (or written) through an index list: entry `e` reads row
/// `index[e]` of `array`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Through<'a> {
    /// The index on the host, one value per entry.
    pub index: &'a [u32],
    /// The index on the device (the CSR's entries for `Entries::Csr`).
    pub device_index: Array,
    /// `rows × width` f32.
    pub array: Array,
    pub rows: u64,
    pub width: u64,
    /// Written through the index: never copied, bound as a window.
    pub written: bool,
}

/// One kernel's rows and what they read, in bytes per row, entry and unit
/// of the arrays bound in windows (their slots name them in errors).
#[derive(Debug, Clone)]
pub(crate) struct Split<'a> {
    pub rows: u64,
    /// Chunk bounds are multiples of this many rows.
    pub unit: u64,
    pub entries: Entries<'a>,
    pub row_bytes: (u64, Slot),
    pub entry_bytes: (u64, Slot),
    pub unit_bytes: (u64, Slot),
    /// Arrays read through the entries (at most two).
    pub through: Vec<Through<'a>>,
    /// Most rows one dispatch may cover.
    pub max_rows: u64,
}

/// How one chunk reaches an array read through an index list.
#[derive(Debug, Clone)]
enum Read {
    /// The whole array, through the index as it is.
    Whole,
    /// A compact copy of rows `list` (at aux element `list_at`), through
    /// remapped entries at aux element `remapped_at`.
    Compact {
        list_at: u64,
        list: Vec<u32>,
        remapped_at: u64,
    },
    /// Rows `lo .. hi`.
    Window { lo: u64, hi: u64 },
}

/// Rows `begin .. end` (entries `e0 .. e1`) of a kernel.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub begin: u64,
    pub end: u64,
    pub e0: u64,
    pub e1: u64,
    /// The chunk's offsets and entries (a copy when the kernel is split).
    csr: Option<(Array, Array)>,
    reads: Vec<Read>,
}

/// The chunks of one kernel.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub chunks: Vec<Chunk>,
    through: Vec<Through<'a>>,
}

/// An array the kernel reads through an index list, as one chunk binds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reached {
    /// The array (or its compact copy) and its elements the chunk touches.
    pub array: Array,
    pub first: u64,
    pub end: u64,
    /// The index entries (the chunk's `e0 .. e1` are valid).
    pub index: Array,
}

impl Chunk {
    /// The chunk's CSR offsets and entries, to bind together.
    pub fn csr(&self) -> (Array, Array) {
        self.csr.expect("a CSR kernel's chunk")
    }

    /// The chunk's offsets (`begin ..= end`) and entries (`e0 .. e1`)
    /// bound together: the binding and the index of each one's element 0.
    pub fn bind_csr(&self, program: &Program) -> Result<(Binding, [u32; 2]), GpuError> {
        let (offsets, entries) = self.csr();
        bind_windows(
            program,
            [
                (offsets, self.begin, self.end + 1),
                (entries, self.e0, self.e1),
            ],
        )
    }
}

impl Plan<'_> {
    /// Array `k` read through its index by chunk `i`, recording its compact
    /// copy when it needs one.
    pub fn reach(
        &self,
        program: &mut Program,
        aux: &Aux,
        i: usize,
        k: usize,
    ) -> Result<Reached, GpuError> {
        let t = &self.through[k];
        let chunk = &self.chunks[i];
        let whole = |array: Array, index: Array| Reached {
            array,
            first: 0,
            end: array.len,
            index,
        };
        Ok(match &chunk.reads[k] {
            Read::Whole => whole(t.array, t.device_index),
            Read::Window { lo, hi } => Reached {
                array: t.array,
                first: lo * t.width,
                end: hi * t.width,
                index: t.device_index,
            },
            Read::Compact {
                list_at,
                list,
                remapped_at,
            } => {
                let src = Indexed {
                    array: t.array,
                    rows: t.rows,
                    width: t.width,
                    elem: Elem::F32,
                    index: t.device_index,
                    compact: COMPACT[k],
                };
                let copy = gather::record(program, &src, aux, *list_at, list)?;
                let index = aux.array(*remapped_at as i64 - chunk.e0 as i64, chunk.e1 - chunk.e0);
                // A CSR kernel reads the remapped entries in its CSR copy.
                let index = match (&chunk.csr, k) {
                    (Some((_, ids)), 0) => *ids,
                    _ => index,
                };
                whole(copy, index)
            }
        })
    }
}

impl Entries<'_> {
    /// Entries of rows `begin .. end`.
    fn range(&self, begin: u64, end: u64) -> (u64, u64) {
        match *self {
            Entries::None => (0, 0),
            Entries::PerRow => (begin, end),
            Entries::Csr { offsets, .. } => (
                u64::from(offsets[begin as usize]),
                u64::from(offsets[end as usize]),
            ),
        }
    }
}

/// What a chunk holds so far, to test whether one more unit of rows fits.
struct Tally {
    /// Per array read through an index: rows stamped with the chunk's id
    /// and how many; or the least and greatest row written.
    stamp: Vec<Vec<u32>>,
    distinct: Vec<u64>,
    span: Vec<Option<(u64, u64)>>,
}

/// Splits `split` into chunks whose bindings each fit the program's limit,
/// storing the chunks' CSR copies and compact lists in `aux`. One chunk,
/// reading everything as it is, when everything fits.
pub(crate) fn plan<'a>(
    program: &Program,
    aux: &mut Aux,
    what: &str,
    split: Split<'a>,
) -> Result<Plan<'a>, GpuError> {
    let limit = program.limits.max_binding;
    let budget = program.budget();
    let n = split.rows;
    let (_, n_entries) = split.entries.range(0, n);
    let n_units = n.div_ceil(split.unit.max(1));
    let csr_words = |rows: u64, entries: u64| (rows + 1 + AUX_PAD + entries) * 4;
    let is_csr = matches!(split.entries, Entries::Csr { .. });
    let fits = n <= split.max_rows
        && n * split.row_bytes.0 <= limit
        && n_entries * split.entry_bytes.0 <= limit
        && n_units * split.unit_bytes.0 <= limit
        && n_entries * 4 <= limit
        && (!is_csr || csr_words(n, n_entries) <= limit)
        && split.through.iter().all(|t| t.rows * t.width * 4 <= limit);
    if fits || n == 0 {
        let csr = match split.entries {
            Entries::Csr { device, .. } => Some(device),
            _ => None,
        };
        let chunk = Chunk {
            begin: 0,
            end: n,
            e0: 0,
            e1: n_entries,
            csr,
            reads: vec![Read::Whole; split.through.len()],
        };
        return Ok(Plan {
            chunks: vec![chunk],
            through: split.through,
        });
    }
    let too_large = |detail: String| GpuError::TooLarge {
        stage: program.stage.clone(),
        detail: format!("{what}: {detail}"),
    };
    let compacted: Vec<bool> = split
        .through
        .iter()
        .map(|t| !t.written && t.rows * t.width * 4 > limit)
        .collect();
    let mut tally = Tally {
        stamp: split
            .through
            .iter()
            .zip(&compacted)
            .map(|(t, &c)| {
                if c {
                    vec![u32::MAX; t.rows as usize]
                } else {
                    Vec::new()
                }
            })
            .collect(),
        distinct: vec![0; split.through.len()],
        span: vec![None; split.through.len()],
    };
    let unit = split.unit.max(1);
    let mut bounds = Vec::new();
    let mut begin = 0u64;
    let mut r = 0u64;
    while r < n {
        let r_end = (r + unit).min(n);
        let chunk_id = bounds.len() as u32;
        let rows_in = r_end - begin;
        let (e0, _) = split.entries.range(begin, begin);
        let (f0, f1) = split.entries.range(r, r_end);
        let entries_in = f1 - e0;
        // The first limit the chunk would exceed, by the array it concerns.
        let mut over: Option<String> = None;
        let mut check = |ok: bool, slot: &str| {
            if !ok && over.is_none() {
                over = Some(format!("`{slot}`"));
            }
        };
        check(rows_in <= split.max_rows, "workgroup grid");
        check(rows_in * split.row_bytes.0 <= budget, split.row_bytes.1);
        check(
            entries_in * split.entry_bytes.0 <= budget,
            split.entry_bytes.1,
        );
        check(
            rows_in.div_ceil(unit) * split.unit_bytes.0 <= budget,
            split.unit_bytes.1,
        );
        check(
            entries_in * 4 <= budget && (!is_csr || csr_words(rows_in, entries_in) <= budget),
            aux.slot,
        );
        let mut new_distinct = tally.distinct.clone();
        let mut new_span = tally.span.clone();
        for (k, t) in split.through.iter().enumerate() {
            let index = &t.index[f0 as usize..f1 as usize];
            if t.written {
                for &row in index {
                    let row = u64::from(row);
                    new_span[k] = Some(match new_span[k] {
                        Some((lo, hi)) => (lo.min(row), hi.max(row)),
                        None => (row, row),
                    });
                }
                let rows = new_span[k].map_or(0, |(lo, hi)| hi + 1 - lo);
                check(rows * t.width * 4 <= budget, t.array.slot);
            } else if compacted[k] {
                for &row in index {
                    if tally.stamp[k][row as usize] != chunk_id {
                        tally.stamp[k][row as usize] = chunk_id;
                        new_distinct[k] += 1;
                    }
                }
                // Stamps of a unit that does not fit are left: the next
                // chunk has another id.
                check(
                    new_distinct[k] * t.width * 4 <= budget && new_distinct[k] * 4 <= budget,
                    t.array.slot,
                );
            }
        }
        match over {
            None => {
                tally.distinct = new_distinct;
                tally.span = new_span;
                r = r_end;
            }
            Some(array) if r == begin => {
                return Err(too_large(format!(
                    "rows {r}..{r_end} alone need more of {array} than one storage binding ({limit} bytes) holds"
                )));
            }
            Some(_) => {
                bounds.push((begin, r));
                begin = r;
                tally.distinct.iter_mut().for_each(|d| *d = 0);
                tally.span.iter_mut().for_each(|s| *s = None);
            }
        }
    }
    bounds.push((begin, n));

    let mut local: Vec<Vec<u32>> = split
        .through
        .iter()
        .zip(&compacted)
        .map(|(t, &c)| {
            if c {
                vec![u32::MAX; t.rows as usize]
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut chunks = Vec::with_capacity(bounds.len());
    for (begin, end) in bounds {
        let (e0, e1) = split.entries.range(begin, end);
        let mut reads = Vec::with_capacity(split.through.len());
        let mut remapped_ids = None;
        for (k, t) in split.through.iter().enumerate() {
            let index = &t.index[e0 as usize..e1 as usize];
            let read = if t.written {
                let lo = index.iter().copied().min().map_or(0, u64::from);
                let hi = index.iter().copied().max().map_or(0, |h| u64::from(h) + 1);
                Read::Window { lo, hi }
            } else if compacted[k] {
                let mut list = index.to_vec();
                list.sort_unstable();
                list.dedup();
                for (i, &row) in list.iter().enumerate() {
                    local[k][row as usize] = i as u32;
                }
                let remapped: Vec<u32> = index.iter().map(|&row| local[k][row as usize]).collect();
                let list_at = aux.push(&list);
                let remapped_at = aux.push(&remapped);
                if k == 0 && is_csr {
                    remapped_ids = Some(remapped);
                }
                Read::Compact {
                    list_at,
                    list,
                    remapped_at,
                }
            } else {
                Read::Whole
            };
            reads.push(read);
        }
        let csr = match split.entries {
            Entries::Csr { offsets, .. } => {
                let off_at = aux.push(&offsets[begin as usize..=end as usize]);
                let ids_at = match remapped_ids {
                    Some(ids) => aux.push(&ids),
                    None => {
                        let ids = split.through.first().map_or(&[][..], |t| t.index);
                        aux.push(&ids[e0 as usize..e1 as usize])
                    }
                };
                Some((
                    aux.array(off_at as i64 - begin as i64, end + 1 - begin),
                    aux.array(ids_at as i64 - e0 as i64, e1 - e0),
                ))
            }
            _ => None,
        };
        chunks.push(Chunk {
            begin,
            end,
            e0,
            e1,
            csr,
            reads,
        });
    }
    Ok(Plan {
        chunks,
        through: split.through,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::context::EffectiveLimits;

    fn program(max_binding: u64) -> Program {
        Program::new(
            "test".into(),
            EffectiveLimits {
                max_binding,
                max_buffer: 1 << 30,
                storage_align: 256,
                uniform_align: 256,
                max_groups_per_dim: 65535,
            },
        )
    }

    /// 300 destinations with 0–6 edges from 500 sources of 16 floats.
    fn csr() -> Csr {
        let mut edges = Vec::new();
        for d in 0..300u32 {
            for j in 0..(d % 7) {
                edges.push(((d * 37 + j * 101) % 500, d));
            }
        }
        assert_eq!(edges.len(), 897);
        Csr::from_edges(300, edges.into_iter())
    }

    fn split<'a>(csr: &'a Csr, aux: &mut Aux) -> Split<'a> {
        let offsets = aux.push(&csr.offsets);
        let ids = aux.push(&csr.sources);
        let device = (
            aux.array(offsets as i64, csr.offsets.len() as u64),
            aux.array(ids as i64, csr.sources.len() as u64),
        );
        Split {
            rows: 300,
            unit: 1,
            entries: Entries::Csr {
                offsets: &csr.offsets,
                device,
            },
            row_bytes: (64, "out"),
            entry_bytes: (12, "alpha"),
            unit_bytes: (0, "out"),
            through: vec![Through {
                index: &csr.sources,
                device_index: device.1,
                array: Array::at("xl", 4, 500 * 16),
                rows: 500,
                width: 16,
                written: false,
            }],
            max_rows: u64::MAX,
        }
    }

    #[test]
    fn everything_fitting_is_one_chunk_reading_the_arrays_as_they_are() {
        let csr = csr();
        let mut aux = Aux::new("aux");
        let s = split(&csr, &mut aux);
        let before = aux.data.len();
        let plan = plan(&program(1 << 20), &mut aux, "k", s).unwrap();
        assert_eq!(plan.chunks.len(), 1);
        assert_eq!(aux.data.len(), before, "no copies");
        let c = &plan.chunks[0];
        assert_eq!(
            (c.begin, c.end, c.e0, c.e1),
            (0, 300, 0, csr.n_edges() as u64)
        );
    }

    #[test]
    fn split_chunks_cover_the_rows_with_their_own_csr_and_compact_reads() {
        let csr = csr();
        let mut aux = Aux::new("aux");
        let s = split(&csr, &mut aux);
        // xl is 32,000 bytes: compacted under 4 KiB bindings.
        let budget = 4096 - 256;
        let plan = plan(&program(4096), &mut aux, "k", s).unwrap();
        assert!(plan.chunks.len() > 1);
        let mut next = 0;
        for c in &plan.chunks {
            assert_eq!(c.begin, next);
            next = c.end;
            assert!((c.end - c.begin) * 64 <= budget);
            assert!((c.e1 - c.e0) * 12 <= budget);
            let (offsets, ids) = c.csr();
            let at = |a: Array, i: u64| aux.data[(a.base + i as i64) as usize];
            for d in c.begin..=c.end {
                assert_eq!(at(offsets, d), csr.offsets[d as usize]);
            }
            let Read::Compact { list, .. } = &c.reads[0] else {
                panic!("xl must be compacted");
            };
            assert!(list.len() as u64 * 64 <= budget);
            assert!(list.windows(2).all(|w| w[0] < w[1]));
            for e in c.e0..c.e1 {
                assert_eq!(list[at(ids, e) as usize], csr.sources[e as usize]);
            }
        }
        assert_eq!(next, 300);
    }

    #[test]
    fn units_keep_chunk_bounds_on_multiples_and_written_rows_get_a_window() {
        // 1000 rows scattered to rows 2r of 2000 (sorted), 4 rows a unit.
        let index: Vec<u32> = (0..1000).map(|r| 2 * r).collect();
        let mut aux = Aux::new("aux");
        let at = aux.push(&index);
        let s = Split {
            rows: 1000,
            unit: 4,
            entries: Entries::PerRow,
            row_bytes: (8, "dy"),
            entry_bytes: (4, "aux"),
            unit_bytes: (100, "partials"),
            through: vec![Through {
                index: &index,
                device_index: aux.array(at as i64, 1000),
                array: Array::at("dx", 4, 2000 * 2),
                rows: 2000,
                width: 2,
                written: true,
            }],
            max_rows: u64::MAX,
        };
        let plan = plan(&program(2048), &mut aux, "k", s).unwrap();
        assert!(plan.chunks.len() > 1);
        for c in &plan.chunks {
            assert!(c.begin % 4 == 0);
            assert!(c.end % 4 == 0 || c.end == 1000);
            let Read::Window { lo, hi } = c.reads[0] else {
                panic!("written rows are a window");
            };
            assert_eq!((lo, hi), (2 * c.begin, 2 * (c.end - 1) + 1));
            assert!((hi - lo) * 8 <= 2048 - 256);
        }
    }

    #[test]
    fn a_row_too_large_for_a_binding_is_an_error_naming_the_array() {
        let csr = csr();
        let mut aux = Aux::new("aux");
        let mut s = split(&csr, &mut aux);
        s.row_bytes = (8192, "t.out");
        let err = plan(&program(4096), &mut aux, "train_kernel", s).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("train_kernel") && text.contains("`t.out`"),
            "{text}"
        );
    }
}
