//! Chunking of a kernel's rows so that no storage binding exceeds the
//! device's `max_storage_buffer_binding_size`.
//!
//! A kernel writes rows `0..n` of its outputs and reads row-aligned inputs
//! (streamed: a chunk binds a window of them) and possibly one array through
//! an index list (gathered: the embedding table through the tokens, messages
//! through CSR sources, nucleus embeddings through the receptive field).
//! When the gathered array fits one binding it is bound whole; otherwise each
//! chunk gets a compact copy of just the rows it reads (`Compact::list`,
//! copied exactly by `shaders/gather.wgsl`) and its index entries are
//! remapped to positions in that copy. The list is sorted, so remapping
//! keeps index order (the scoring kernel's tie rule is unaffected).

/// How each row reads the gathered array.
#[derive(Debug, Clone, Copy)]
pub enum Refs<'a> {
    /// No gathered array.
    None,
    /// Row `r` reads entry `index[r]`.
    One(&'a [u32]),
    /// Row `r` reads entries `index[r·k .. (r+1)·k]`; negative entries are empty.
    Fixed {
        /// Entries per row.
        k: usize,
        /// The entries.
        index: &'a [i32],
    },
    /// Row `r` reads `sources[offsets[r] .. offsets[r + 1]]`.
    Csr {
        /// `rows + 1` offsets.
        offsets: &'a [u32],
        /// Entries.
        sources: &'a [u32],
    },
}

impl Refs<'_> {
    /// Range of index entries of rows `begin..end`.
    pub fn entries(&self, begin: usize, end: usize) -> (usize, usize) {
        match *self {
            Refs::None => (0, 0),
            Refs::One(_) => (begin, end),
            Refs::Fixed { k, .. } => (begin * k, end * k),
            Refs::Csr { offsets, .. } => (offsets[begin] as usize, offsets[end] as usize),
        }
    }

    /// Entry `e` as a gathered row, `None` when empty.
    fn entry(&self, e: usize) -> Option<u32> {
        match *self {
            Refs::None => None,
            Refs::One(index) => Some(index[e]),
            Refs::Fixed { index, .. } => u32::try_from(index[e]).ok(),
            Refs::Csr { sources, .. } => Some(sources[e]),
        }
    }
}

/// One kernel's rows and what they read.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// Rows (outputs) of the kernel.
    pub rows: usize,
    /// Largest bytes per row of any row-streamed array.
    pub row_bytes: u64,
    /// Index entries into the gathered array.
    pub refs: Refs<'a>,
    /// Rows of the gathered array.
    pub gathered_rows: usize,
    /// Bytes per row of the gathered array.
    pub gathered_row_bytes: u64,
    /// Most rows one dispatch can cover (its workgroup grid is bounded).
    pub max_rows: usize,
}

/// A compact copy of the gathered rows one chunk reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compact {
    /// Gathered rows read by the chunk, increasing.
    pub list: Vec<u32>,
    /// The chunk's index entries as positions in `list` (`u32::MAX`, that is
    /// -1, for an empty entry).
    pub remapped: Vec<u32>,
}

/// Rows `begin..end` of a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// First row.
    pub begin: usize,
    /// One past the last row.
    pub end: usize,
    /// Present when the gathered array is too large for one binding.
    pub compact: Option<Compact>,
}

/// Splits `p` into chunks whose bindings each hold at most `budget` bytes
/// (the binding limit less the offset-alignment slack); a single chunk when
/// every array fits `limit` whole.
pub fn plan(p: &Problem, limit: u64, budget: u64) -> Result<Vec<Chunk>, String> {
    let (_, total_entries) = p.refs.entries(0, p.rows);
    let gathered_bytes = p.gathered_rows as u64 * p.gathered_row_bytes;
    let fits = p.rows <= p.max_rows
        && p.rows as u64 * p.row_bytes <= limit
        && total_entries as u64 * 4 <= limit
        && (p.rows as u64 + 1) * 4 <= limit
        && gathered_bytes <= limit;
    if fits || p.rows == 0 {
        return Ok(vec![Chunk {
            begin: 0,
            end: p.rows,
            compact: None,
        }]);
    }
    let compact = gathered_bytes > limit;
    let mut stamp = if compact {
        vec![u32::MAX; p.gathered_rows]
    } else {
        Vec::new()
    };
    let mut bounds = Vec::new();
    let mut begin = 0usize;
    let mut distinct = 0u64;
    let mut fresh = Vec::new();
    let mut r = 0usize;
    while r < p.rows {
        let chunk_id = bounds.len() as u32;
        let rows_in = (r + 1 - begin) as u64;
        let (e0, _) = p.refs.entries(begin, r);
        let (_, e1) = p.refs.entries(r, r + 1);
        let mut ok = rows_in as usize <= p.max_rows
            && rows_in * p.row_bytes <= budget
            && (e1 - e0) as u64 * 4 <= budget
            && (rows_in + 1) * 4 <= budget;
        fresh.clear();
        if ok && compact {
            let (f0, f1) = p.refs.entries(r, r + 1);
            for e in f0..f1 {
                if let Some(s) = p.refs.entry(e) {
                    if stamp[s as usize] != chunk_id {
                        stamp[s as usize] = chunk_id;
                        fresh.push(s);
                    }
                }
            }
            let n = distinct + fresh.len() as u64;
            ok = n * p.gathered_row_bytes <= budget && n * 4 <= budget;
            if ok {
                distinct = n;
            } else {
                for &s in &fresh {
                    stamp[s as usize] = u32::MAX;
                }
            }
        }
        if ok {
            r += 1;
        } else if r == begin {
            return Err(format!(
                "row {r} alone needs more than one storage binding ({limit} bytes) holds"
            ));
        } else {
            bounds.push((begin, r));
            begin = r;
            distinct = 0;
        }
    }
    bounds.push((begin, p.rows));

    let mut local = if compact {
        vec![u32::MAX; p.gathered_rows]
    } else {
        Vec::new()
    };
    Ok(bounds
        .into_iter()
        .map(|(begin, end)| {
            let compact = compact.then(|| {
                let (e0, e1) = p.refs.entries(begin, end);
                let mut list: Vec<u32> = (e0..e1).filter_map(|e| p.refs.entry(e)).collect();
                list.sort_unstable();
                list.dedup();
                for (i, &s) in list.iter().enumerate() {
                    local[s as usize] = i as u32;
                }
                let remapped = (e0..e1)
                    .map(|e| p.refs.entry(e).map_or(u32::MAX, |s| local[s as usize]))
                    .collect();
                Compact { list, remapped }
            });
            Chunk {
                begin,
                end,
                compact,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_problem<'a>(offsets: &'a [u32], sources: &'a [u32], n_src: usize) -> Problem<'a> {
        Problem {
            rows: offsets.len() - 1,
            row_bytes: 16,
            refs: Refs::Csr { offsets, sources },
            gathered_rows: n_src,
            gathered_row_bytes: 16,
            max_rows: usize::MAX,
        }
    }

    #[test]
    fn everything_fitting_is_one_chunk() {
        let offsets = [0, 2, 3];
        let sources = [1, 0, 1];
        let chunks = plan(&csr_problem(&offsets, &sources, 2), 1 << 20, 1 << 19).unwrap();
        assert_eq!(
            chunks,
            vec![Chunk {
                begin: 0,
                end: 2,
                compact: None
            }]
        );
    }

    #[test]
    fn compact_chunks_cover_rows_and_remap_in_order() {
        // 100 destinations, each reading 3 sources spread over 1000 rows.
        let n = 100;
        let mut offsets = vec![0u32];
        let mut sources = Vec::new();
        for d in 0..n {
            for j in 0..3 {
                sources.push(((d * 37 + j * 401) % 1000) as u32);
            }
            offsets.push(sources.len() as u32);
        }
        let p = csr_problem(&offsets, &sources, 1000);
        // 1000 rows × 16 bytes = 16000 > 4096: compaction needed.
        let chunks = plan(&p, 4096, 3840).unwrap();
        assert!(chunks.len() > 1);
        let mut next = 0;
        for c in &chunks {
            assert_eq!(c.begin, next);
            next = c.end;
            let compact = c.compact.as_ref().unwrap();
            assert!(compact.list.len() as u64 * 16 <= 3840);
            assert!(compact.list.windows(2).all(|w| w[0] < w[1]));
            let (e0, e1) = p.refs.entries(c.begin, c.end);
            for (i, e) in (e0..e1).enumerate() {
                assert_eq!(compact.list[compact.remapped[i] as usize], sources[e]);
            }
        }
        assert_eq!(next, n);
    }

    #[test]
    fn empty_receptive_field_slots_stay_empty() {
        let index = [3, -1, 0, 2, -1, -1];
        let p = Problem {
            rows: 3,
            row_bytes: 2048,
            refs: Refs::Fixed {
                k: 2,
                index: &index,
            },
            gathered_rows: 4,
            gathered_row_bytes: 1024,
            max_rows: usize::MAX,
        };
        let chunks = plan(&p, 4000, 3840).unwrap();
        assert_eq!(chunks.len(), 3);
        let first = chunks[0].compact.as_ref().unwrap();
        assert_eq!(first.list, vec![3]);
        assert_eq!(first.remapped, vec![0, u32::MAX]);
        let second = chunks[1].compact.as_ref().unwrap();
        assert_eq!(second.list, vec![0, 2]);
        assert_eq!(second.remapped, vec![0, 1]);
    }

    #[test]
    fn chunks_respect_the_row_cap() {
        let p = Problem {
            rows: 10,
            row_bytes: 4,
            refs: Refs::None,
            gathered_rows: 0,
            gathered_row_bytes: 0,
            max_rows: 4,
        };
        let chunks = plan(&p, 1 << 20, 1 << 19).unwrap();
        let bounds: Vec<_> = chunks.iter().map(|c| (c.begin, c.end)).collect();
        assert_eq!(bounds, vec![(0, 4), (4, 8), (8, 10)]);
    }

    #[test]
    fn a_row_too_large_for_a_binding_is_an_error() {
        let p = Problem {
            rows: 2,
            row_bytes: 8192,
            refs: Refs::None,
            gathered_rows: 0,
            gathered_row_bytes: 0,
            max_rows: usize::MAX,
        };
        assert!(plan(&p, 4096, 3840).is_err());
    }
}
