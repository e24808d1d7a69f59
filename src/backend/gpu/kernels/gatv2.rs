//! `shaders/gatv2.wgsl`: fused GATv2 aggregation (attention logits, online
//! softmax, weighted sum, bias, ReLU). Twin: [`crate::kernels::gatv2`].

use crate::backend::gpu::chunking::{Aux, Indexed, Planned, COMPACT};
use crate::backend::gpu::program::{Array, Program};
use crate::backend::gpu::shaders::{self, Elem, Variant, LARGEST_MAX_C, MIN_MAX_C, WG};
use crate::backend::gpu::GpuError;

declare_kernel! {
    file: "gatv2.wgsl",
    variants: variants,
    params {
        /// Destinations of this dispatch: `dst_begin .. dst_end`.
        dst_begin: u32,
        dst_end: u32,
        heads: u32,
        channels: u32,
        relu: u32,
        off_shift: u32,
        src_shift: u32,
        xl_shift: u32,
        xr_shift: u32,
        out_shift: u32,
        /// Indices of att[0] and bias[0] in the `w` binding.
        att_base: u32,
        bias_base: u32,
    }
    bindings {
        xl: Read,
        xr: Read,
        offsets: Read,
        sources: Read,
        w: Read,
        out: ReadWrite,
    }
}

/// f32 and f16 activations, each for every channels-per-head capacity.
fn variants() -> Vec<Variant> {
    let mut all = Vec::new();
    for act in [Elem::F32, Elem::F16] {
        let mut max_c = MIN_MAX_C;
        while max_c <= LARGEST_MAX_C {
            all.push(Variant {
                max_c,
                ..Variant::of(act)
            });
            max_c *= 2;
        }
    }
    all
}

/// The variant for `channels` per head.
pub(crate) fn variant(act: Elem, channels: u64, stage: &str) -> Result<Variant, GpuError> {
    let max_c = shaders::max_c_for(channels as usize).ok_or_else(|| GpuError::Unsupported {
        adapter: String::new(),
        detail: format!(
            "{stage}: {channels} channels per head; the GATv2 kernel supports at most {LARGEST_MAX_C}"
        ),
    })?;
    Ok(Variant {
        max_c,
        ..Variant::of(act)
    })
}

/// A GATv2 convolution's attention and bias in a weights slot: `att` then `bias`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatWeights {
    pub block: Array,
    pub heads: u64,
    pub channels: u64,
    pub relu: bool,
}

/// A CSR graph on the GPU.
pub(crate) struct Graph<'a> {
    pub offsets: Array,
    pub sources: Array,
    pub offset_values: &'a [u32],
    pub planned: &'a Planned,
    /// Rows of `xl`.
    pub n_src: u64,
}

/// Fused GATv2 aggregation into `out` for every destination of `graph`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
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
    let (w_binding, w_shift) = program.bind(w.block, 0, w.block.len)?;
    let messages = Indexed {
        array: xl,
        rows: graph.n_src,
        width: hc,
        elem: variant.act,
        index: graph.sources,
        compact: COMPACT,
    };
    for (i, chunk) in graph.planned.chunks.iter().enumerate() {
        let (d0, d1) = (chunk.begin as u64, chunk.end as u64);
        let e0 = u64::from(graph.offset_values[chunk.begin]);
        let e1 = u64::from(graph.offset_values[chunk.end]);
        let (xl, sources) = graph.planned.reads(program, aux, i, &messages, (e0, e1))?;
        let (xl, xl_shift) = program.bind(xl, 0, xl.len)?;
        let (xr, xr_shift) = program.bind(xr, d0 * hc, d1 * hc)?;
        let (offsets, off_shift) = program.bind(graph.offsets, d0, d1 + 1)?;
        let (sources, src_shift) = program.bind(sources, e0, e1)?;
        let (out, out_shift) = program.bind(out, d0 * hc, d1 * hc)?;
        let items = (d1 - d0) * w.heads;
        program.dispatch(
            variant,
            Params {
                dst_begin: d0 as u32,
                dst_end: d1 as u32,
                heads: w.heads as u32,
                channels: w.channels as u32,
                relu: u32::from(w.relu),
                off_shift,
                src_shift,
                xl_shift,
                xr_shift,
                out_shift,
                att_base: 0u32.wrapping_sub(w_shift),
                bias_base: (hc as u32).wrapping_sub(w_shift),
            },
            Bindings {
                xl,
                xr,
                offsets,
                sources,
                w: w_binding,
                out,
            },
            items.div_ceil(u64::from(WG)),
        )?;
    }
    Ok(())
}
