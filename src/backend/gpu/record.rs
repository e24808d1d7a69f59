//! Records the dispatches of one kernel call into a [`Program`], chunked by
//! [`plan`] so that every binding fits the device's limit; gathered arrays too
//! large for one binding are first copied per chunk into a compact buffer
//! (`shaders/gather.wgsl`).

use super::plan::{self, Chunk, Problem, Refs};
use super::program::{Array, Program, Slot};
use super::shaders::{Elem, Kernel, Variant, TILE, TM, TN, WG};
use super::GpuError;

/// Slot of compact activation copies.
pub(super) const COMPACT: Slot = "compact";
/// Slot of compact weight (embedding table) copies.
pub(super) const COMPACT_W: Slot = "compact.w";

/// Aux element offsets of a chunk's compact list and remapped entries.
pub(super) type AuxAt = Option<(u64, u64)>;

/// A plan whose compact lists and remapped indices live in the aux slot.
#[derive(Debug, Default)]
pub(super) struct Planned {
    pub chunks: Vec<Chunk>,
    /// Per chunk: aux element offsets of its list and remapped entries.
    pub aux: Vec<AuxAt>,
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
        while self.data.len() % 64 != 0 {
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

/// Copies rows `list` of `src` (`width` elements per row) into the compact
/// slot, one dispatch per binding-sized window of `src`. Returns the compact
/// array.
#[allow(clippy::too_many_arguments)]
fn gather(
    program: &mut Program,
    elem: Elem,
    src: Array,
    src_rows: u64,
    width: u64,
    aux: &Aux,
    list_at: u64,
    list: &[u32],
    compact: Slot,
) -> Result<Array, GpuError> {
    let variant = Variant::of(elem);
    let row_bytes = width * elem.bytes();
    program.need(compact, list.len() as u64 * row_bytes);
    let out = Array::at(compact, elem.bytes(), list.len() as u64 * width);
    let list_arr = aux.array(list_at as i64, list.len() as u64);
    let rows_per_window = (program.budget() / row_bytes.max(1)).max(1);
    let mut lo = 0u64;
    while lo < src_rows {
        let hi = (lo + rows_per_window).min(src_rows);
        let j_lo = list.partition_point(|&s| u64::from(s) < lo) as u64;
        let j_hi = list.partition_point(|&s| u64::from(s) < hi) as u64;
        let piece = program.max_rows(width, u64::from(WG)) as u64;
        let mut j_lo = j_lo;
        while j_lo < j_hi {
            let j_end = j_hi.min(j_lo + piece);
            let (b_list, list_shift) = program.bind(list_arr, j_lo, j_end)?;
            let (b_src, src_shift) = program.bind(src, lo * width, hi * width)?;
            let (b_out, out_shift) = program.bind(out, j_lo * width, j_end * width)?;
            let items = (j_end - j_lo) * width;
            program.dispatch(
                Kernel::Gather,
                variant,
                vec![b_list, b_src, b_out],
                &[
                    (j_lo * width) as u32,
                    items as u32,
                    width as u32,
                    list_shift,
                    src_shift,
                    out_shift,
                ],
                items.div_ceil(u64::from(WG)),
            )?;
            j_lo = j_end;
        }
        lo = hi;
    }
    Ok(out)
}

/// `out[r, :] = relu(table[tokens[r], :])` for `n` rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn embed(
    program: &mut Program,
    act: Elem,
    table: Array,
    vocab: u64,
    dim: u64,
    tokens: Array,
    planned: &Planned,
    aux: &Aux,
    out: Array,
) -> Result<(), GpuError> {
    for (chunk, at) in planned.chunks.iter().zip(&planned.aux) {
        let (begin, end) = (chunk.begin as u64, chunk.end as u64);
        let (table, tokens) = match (&chunk.compact, at) {
            (Some(c), Some((list_at, remapped_at))) => {
                let t = gather(
                    program,
                    Elem::F32,
                    table,
                    vocab,
                    dim,
                    aux,
                    *list_at,
                    &c.list,
                    COMPACT_W,
                )?;
                (
                    t,
                    aux.array(*remapped_at as i64 - begin as i64, end - begin),
                )
            }
            _ => (table, tokens),
        };
        let (b_table, table_shift) = program.bind(table, 0, table.len)?;
        let (b_tokens, token_shift) = program.bind(tokens, begin, end)?;
        let (b_out, out_shift) = program.bind(out, begin * dim, end * dim)?;
        let items = (end - begin) * dim;
        program.dispatch(
            Kernel::Embed,
            Variant::of(act),
            vec![b_table, b_tokens, b_out],
            &[
                (begin * dim) as u32,
                items as u32,
                dim as u32,
                table_shift,
                token_shift,
                out_shift,
            ],
            items.div_ceil(u64::from(WG)),
        )?;
    }
    Ok(())
}

/// Most rows one linear dispatch may cover: whole row tiles of a full grid.
pub(super) fn linear_max_rows(program: &Program, out_dim: u64) -> usize {
    let row_tiles = (program.max_groups() / linear_col_tiles(out_dim)).max(1);
    usize::try_from(row_tiles * u64::from(TILE * TM)).unwrap_or(usize::MAX)
}

/// Column blocks of a linear dispatch.
fn linear_col_tiles(out_dim: u64) -> u64 {
    out_dim.div_ceil(u64::from(TILE * TN)).max(1)
}

/// A dense layer's weights in a weights slot: `wt` `[in, out]` then `bias`.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinearWeights {
    pub block: Array,
    pub in_dim: u64,
    pub out_dim: u64,
    pub has_bias: bool,
}

/// Rows read through an index list.
pub(super) struct Gathered<'a> {
    pub rows: Array,
    pub planned: &'a Planned,
    /// Rows of `x`.
    pub x_rows: u64,
}

/// `out[r, :] = linear(x[row(r), :])` for `n_rows` rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    program: &mut Program,
    variant: Variant,
    x: Array,
    gathered: Option<&Gathered>,
    aux: &Aux,
    n_rows: u64,
    w: LinearWeights,
    relu: bool,
    out: Array,
) -> Result<(), GpuError> {
    let (in_dim, out_dim) = (w.in_dim, w.out_dim);
    let streamed;
    let (chunks, ats): (&[Chunk], Vec<AuxAt>) = match gathered {
        Some(g) => (&g.planned.chunks, g.planned.aux.clone()),
        None => {
            let row_bytes = (in_dim * variant.act_in.bytes()).max(out_dim * variant.act.bytes());
            let max_rows = linear_max_rows(program, out_dim);
            streamed = streamed_chunks(program, n_rows as usize, row_bytes, max_rows)?;
            (&streamed, vec![None; streamed.len()])
        }
    };
    let (b_w, w_shift) = program.bind(w.block, 0, w.block.len)?;
    let n_col_tiles = linear_col_tiles(out_dim);
    for (chunk, at) in chunks.iter().zip(&ats) {
        let (begin, end) = (chunk.begin as u64, chunk.end as u64);
        let (b_x, x_shift, b_rows, rows_shift) = match (gathered, &chunk.compact, at) {
            (Some(g), Some(c), Some((list_at, remapped_at))) => {
                let x = gather(
                    program,
                    variant.act_in,
                    x,
                    g.x_rows,
                    in_dim,
                    aux,
                    *list_at,
                    &c.list,
                    COMPACT,
                )?;
                let rows = aux.array(*remapped_at as i64 - begin as i64, end - begin);
                let (b_x, x_shift) = program.bind(x, 0, x.len)?;
                let (b_rows, rows_shift) = program.bind(rows, begin, end)?;
                (b_x, x_shift, b_rows, rows_shift)
            }
            (Some(g), _, _) => {
                let (b_x, x_shift) = program.bind(x, 0, x.len)?;
                let (b_rows, rows_shift) = program.bind(g.rows, begin, end)?;
                (b_x, x_shift, b_rows, rows_shift)
            }
            (None, _, _) => {
                let (b_x, x_shift) = program.bind(x, begin * in_dim, end * in_dim)?;
                // Unused: bind the weights again as a placeholder.
                (b_x, x_shift, b_w, 0)
            }
        };
        let (b_out, out_shift) = program.bind(out, begin * out_dim, end * out_dim)?;
        let row_tiles = (end - begin).div_ceil(u64::from(TILE * TM));
        program.dispatch(
            Kernel::Linear,
            variant,
            vec![b_x, b_rows, b_w, b_out],
            &[
                begin as u32,
                end as u32,
                in_dim as u32,
                out_dim as u32,
                u32::from(gathered.is_some()),
                u32::from(w.has_bias),
                u32::from(relu),
                n_col_tiles as u32,
                x_shift,
                rows_shift,
                0u32.wrapping_sub(w_shift),
                ((in_dim * out_dim) as u32).wrapping_sub(w_shift),
                out_shift,
            ],
            row_tiles * n_col_tiles,
        )?;
    }
    Ok(())
}

/// A GATv2 convolution's attention and bias in a weights slot: `att` then `bias`.
#[derive(Debug, Clone, Copy)]
pub(super) struct GatWeights {
    pub block: Array,
    pub heads: u64,
    pub channels: u64,
    pub relu: bool,
}

/// A CSR graph on the GPU.
pub(super) struct Graph<'a> {
    pub offsets: Array,
    pub sources: Array,
    pub offset_values: &'a [u32],
    pub planned: &'a Planned,
    /// Rows of `xl`.
    pub n_src: u64,
}

/// Fused GATv2 aggregation into `out` for every destination of `graph`.
#[allow(clippy::too_many_arguments)]
pub(super) fn gatv2(
    program: &mut Program,
    variant: Variant,
    xl: Array,
    xr: Array,
    graph: &Graph,
    aux: &Aux,
    w: GatWeights,
    out: Array,
) -> Result<(), GpuError> {
    let hc = w.heads * w.channels;
    let (b_w, w_shift) = program.bind(w.block, 0, w.block.len)?;
    for (chunk, at) in graph.planned.chunks.iter().zip(&graph.planned.aux) {
        let (d0, d1) = (chunk.begin as u64, chunk.end as u64);
        let e0 = u64::from(graph.offset_values[chunk.begin]);
        let e1 = u64::from(graph.offset_values[chunk.end]);
        let (xl, sources) = match (&chunk.compact, at) {
            (Some(c), Some((list_at, remapped_at))) => {
                let x = gather(
                    program,
                    variant.act,
                    xl,
                    graph.n_src,
                    hc,
                    aux,
                    *list_at,
                    &c.list,
                    COMPACT,
                )?;
                (x, aux.array(*remapped_at as i64 - e0 as i64, e1 - e0))
            }
            _ => (xl, graph.sources),
        };
        let (b_xl, xl_shift) = program.bind(xl, 0, xl.len)?;
        let (b_xr, xr_shift) = program.bind(xr, d0 * hc, d1 * hc)?;
        let (b_off, off_shift) = program.bind(graph.offsets, d0, d1 + 1)?;
        let (b_src, src_shift) = program.bind(sources, e0, e1)?;
        let (b_out, out_shift) = program.bind(out, d0 * hc, d1 * hc)?;
        let items = (d1 - d0) * w.heads;
        program.dispatch(
            Kernel::Gatv2,
            variant,
            vec![b_xl, b_xr, b_off, b_src, b_w, b_out],
            &[
                d0 as u32,
                d1 as u32,
                w.heads as u32,
                w.channels as u32,
                u32::from(w.relu),
                off_shift,
                src_shift,
                xl_shift,
                xr_shift,
                out_shift,
                0u32.wrapping_sub(w_shift),
                (hc as u32).wrapping_sub(w_shift),
            ],
            items.div_ceil(u64::from(WG)),
        )?;
    }
    Ok(())
}

/// Best nucleus per transcript into `best_score` / `best_index`.
#[allow(clippy::too_many_arguments)]
pub(super) fn score(
    program: &mut Program,
    act: Elem,
    z_tx: Array,
    z_bd: Array,
    n_bd: u64,
    dim: u64,
    rf: Array,
    k: u64,
    planned: &Planned,
    aux: &Aux,
    best_score: Array,
    best_index: Array,
) -> Result<(), GpuError> {
    for (chunk, at) in planned.chunks.iter().zip(&planned.aux) {
        let (t0, t1) = (chunk.begin as u64, chunk.end as u64);
        let (z_bd, rf) = match (&chunk.compact, at) {
            (Some(c), Some((list_at, remapped_at))) => {
                let z = gather(
                    program, act, z_bd, n_bd, dim, aux, *list_at, &c.list, COMPACT,
                )?;
                (
                    z,
                    aux.array(*remapped_at as i64 - (t0 * k) as i64, (t1 - t0) * k),
                )
            }
            _ => (z_bd, rf),
        };
        let (b_ztx, ztx_shift) = program.bind(z_tx, t0 * dim, t1 * dim)?;
        let (b_zbd, zbd_shift) = program.bind(z_bd, 0, z_bd.len)?;
        let (b_rf, rf_shift) = program.bind(rf, t0 * k, t1 * k)?;
        let (b_score, out_shift) = program.bind(best_score, t0, t1)?;
        let (b_index, index_shift) = program.bind(best_index, t0, t1)?;
        debug_assert_eq!(out_shift, index_shift);
        program.dispatch(
            Kernel::Score,
            Variant::of(act),
            vec![b_ztx, b_zbd, b_rf, b_score, b_index],
            &[
                t0 as u32, t1 as u32, dim as u32, k as u32, ztx_shift, zbd_shift, rf_shift,
                out_shift,
            ],
            (t1 - t0).div_ceil(u64::from(WG)),
        )?;
    }
    Ok(())
}
