//! The GPU backend: the kernels of `shaders/*.wgsl` on any adapter wgpu
//! offers (Vulkan, Metal, DX12, GL).
//!
//! * Pipelines are compiled once per backend (per kernel variant), weights
//!   are uploaded once per model, and buffers come from a grow-only pool, so
//!   successive tiles reuse buffers and bind groups (the once-per-sample
//!   fragment stage frees its buffers when done).
//! * A tile stage (forward, scoring) is one [`program::Program`]: one command
//!   encoder holding every dispatch of every layer, one submission, one
//!   readback. Connected components iterate on the GPU, many iterations per
//!   submission (`fragments.rs`).
//! * Dispatches above the per-dimension workgroup limit become 2-D grids;
//!   arrays larger than one storage binding are processed in chunks
//!   ([`plan`]).
//! * Out-of-memory, validation failures and device loss are caught (error
//!   scopes, device-lost callback) and reported with the stage and tile sizes.

mod auto;
mod context;
mod forward;
mod fragments;
mod plan;
mod pool;
mod program;
mod record;
mod runtime;
pub mod shaders;
pub mod test_support;

use anyhow::Result;

use super::{Activations, Backend, BestMatches, EdgeSimilarity, Embeddings};
use crate::graph::{Csr, ReceptiveField, TileGraph};
use crate::kernels::{gatv2 as gat_twin, linear as linear_twin};
use crate::model::Model;

pub use auto::AutoBackend;
pub use context::{
    f16_disabled_by_env, list_adapters, AdapterReport, GpuOptions, LimitsMode, Precision,
};
use forward::ModelLayout;
use program::{Array, Program};
use record::{Aux, Planned};
use runtime::Runtime;
use shaders::{Elem, Variant};

/// Why the GPU could not do something.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter (or none usable) exists.
    #[error("no GPU adapter: {detail}")]
    NoAdapter {
        /// What was found instead.
        detail: String,
    },
    /// `--adapter NAME` matched nothing.
    #[error("no GPU adapter name contains `{name}`; available: {}", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    AdapterNotFound {
        /// The requested substring.
        name: String,
        /// Adapters present.
        available: Vec<String>,
    },
    /// The adapter cannot run seggpu's kernels.
    #[error("GPU adapter {adapter} cannot be used: {detail}")]
    Unsupported {
        /// Adapter name.
        adapter: String,
        /// Why.
        detail: String,
    },
    /// The device ran out of memory.
    #[error("GPU out of memory during {stage}: {detail}")]
    OutOfMemory {
        /// What was running, with tile sizes.
        stage: String,
        /// Details.
        detail: String,
    },
    /// The device was lost.
    #[error("GPU device lost during {stage}: {detail}")]
    DeviceLost {
        /// What was running, with tile sizes.
        stage: String,
        /// Reason.
        detail: String,
    },
    /// wgpu rejected an operation (a bug in seggpu or the driver).
    #[error("GPU validation error during {stage}: {detail}")]
    Validation {
        /// What was running, with tile sizes.
        stage: String,
        /// wgpu's messages.
        detail: String,
    },
    /// The tile does not fit the device's limits.
    #[error("tile too large for the GPU during {stage}: {detail}")]
    TooLarge {
        /// What was running, with tile sizes.
        stage: String,
        /// Which array and which limit.
        detail: String,
    },
    /// Anything else.
    #[error("GPU error during {stage}: {detail}")]
    Internal {
        /// What was running.
        stage: String,
        /// Details.
        detail: String,
    },
}

impl GpuError {
    /// Whether the device is unusable from now on.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, GpuError::DeviceLost { .. })
    }
}

/// Counters describing the backend's reuse of GPU resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuStats {
    /// Bytes of pooled buffers.
    pub allocated_bytes: u64,
    /// Bind groups in the cache.
    pub cached_bind_groups: usize,
    /// Times model weights were uploaded.
    pub model_uploads: u64,
    /// Queue submissions.
    pub submissions: u64,
    /// Dispatches of the last submission.
    pub last_dispatches: usize,
    /// Of which gather (compaction) dispatches: non-zero when an array was
    /// too large for one binding.
    pub last_gathers: usize,
    /// Workgroup grids of the last submission that were split into 2-D.
    pub last_2d_grids: usize,
    /// Iterations of the last connected-components call that found an edge
    /// whose labels differed (one more confirmed convergence).
    pub last_component_iterations: u32,
    /// Submissions of the last connected-components call.
    pub last_component_submissions: u32,
}

/// The adapter a backend runs on.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// Graphics API.
    pub backend: String,
    /// Device type.
    pub device_type: String,
    /// Whether the f16 path is available (`SHADER_F16` granted).
    pub shader_f16: bool,
}

struct ModelOnGpu {
    fingerprint: u64,
    layout: ModelLayout,
}

/// Runs every kernel on a GPU through wgpu.
pub struct GpuBackend {
    rt: Runtime,
    precision: Precision,
    model: Option<ModelOnGpu>,
    stats: GpuStats,
    component_iterations: Option<u32>,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("adapter", &self.rt.dev.info.name)
            .field("precision", &self.precision)
            .finish()
    }
}

impl GpuBackend {
    /// Opens the adapter `options` select.
    pub fn new(options: GpuOptions) -> Result<Self, GpuError> {
        let adapter = context::choose(context::adapters(), &options)?;
        let mut precision = options.precision;
        if precision == Precision::F16 && f16_disabled_by_env() {
            eprintln!("seggpu: SEGGPU_F16=off: the f16 path is disabled, computing in f32");
            precision = Precision::F32;
        }
        let dev = context::open(&adapter, &options, precision == Precision::F16)?;
        if precision == Precision::F16 && !dev.shader_f16 {
            eprintln!(
                "warning: --precision f16: adapter {} has no SHADER_F16; computing in f32",
                dev.info.name
            );
            precision = Precision::F32;
        }
        Ok(Self {
            rt: Runtime::new(dev),
            precision,
            model: None,
            stats: GpuStats::default(),
            component_iterations: options.component_iterations_override.map(|i| i.max(1)),
        })
    }

    /// The precision in effect (f16 only where asked for and available).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The adapter in use.
    pub fn adapter(&self) -> AdapterSummary {
        let info = &self.rt.dev.info;
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            shader_f16: self.rt.dev.shader_f16,
        }
    }

    /// Largest storage binding the backend uses, bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.rt.dev.limits.max_binding
    }

    /// Workgroups per dispatch dimension the backend uses.
    pub fn max_workgroups_per_dim(&self) -> u32 {
        self.rt.dev.limits.max_groups_per_dim
    }

    /// Destroys the device, as a driver reset would: every later call fails
    /// with [`GpuError::DeviceLost`]. For tests of the error paths.
    #[doc(hidden)]
    pub fn lose_device_for_tests(&self) {
        self.rt.dev.device.destroy();
    }

    /// The limits in effect, for logs.
    pub fn limits_summary(&self) -> String {
        let l = self.rt.dev.limits;
        format!(
            "bindings ≤ {} bytes, buffers ≤ {} bytes, offsets aligned to {} bytes, {} workgroups per dimension",
            l.max_binding, l.max_buffer, l.storage_align, l.max_groups_per_dim
        )
    }

    /// Resource-reuse counters.
    pub fn stats(&self) -> GpuStats {
        GpuStats {
            allocated_bytes: self.rt.pool.allocated,
            cached_bind_groups: self.rt.pool.cached_groups(),
            ..self.stats
        }
    }

    fn act(&self) -> Elem {
        match self.precision {
            Precision::F32 => Elem::F32,
            Precision::F16 => Elem::F16,
        }
    }

    fn program(&self, stage: String) -> Program {
        Program::new(stage, self.rt.dev.limits)
    }

    fn run(&mut self, program: &Program) -> Result<Vec<u8>, GpuError> {
        self.stats.submissions += 1;
        self.stats.last_dispatches = program.dispatches();
        self.stats.last_gathers = program.count(|d| d.kernel == shaders::Kernel::Gather);
        self.stats.last_2d_grids = program.count(|d| d.groups.1 > 1);
        self.rt.run(program)
    }

    /// Forward pass on the GPU, with [`GpuError`]s.
    pub fn try_forward(
        &mut self,
        model: &Model,
        graph: &TileGraph,
        keep_layers: bool,
    ) -> Result<Embeddings, GpuError> {
        let act = self.act();
        let stage = format!(
            "forward ({} transcripts, {} nuclei, {} neighbour + {} belongs edges, {} layers, {:?})",
            graph.n_tx(),
            graph.n_bd(),
            graph.neighbors.n_edges(),
            graph.belongs.n_edges(),
            model.layers.len(),
            self.precision
        );
        let mut program = self.program(stage);
        let fp = forward::fingerprint(model);
        let (layout, upload) = match &self.model {
            Some(m) if m.fingerprint == fp => (m.layout.clone(), None),
            _ => {
                let (layout, bytes) = forward::layout_model(model);
                (layout, Some(bytes))
            }
        };
        if let Some(bytes) = upload.clone() {
            program.upload(forward::MODEL, bytes);
        }
        let readback = forward::build_forward(&mut program, act, &layout, graph, keep_layers)?;
        let bytes = match self.run(&program) {
            Ok(b) => b,
            Err(e) => {
                self.model = None;
                return Err(e);
            }
        };
        if upload.is_some() {
            self.stats.model_uploads += 1;
            self.model = Some(ModelOnGpu {
                fingerprint: fp,
                layout,
            });
        }
        let decode = |(tx_at, tx_n, bd_at, bd_n): (u64, u64, u64, u64)| Activations {
            tx: forward::from_act(&bytes, tx_at, tx_n, act),
            bd: forward::from_act(&bytes, bd_at, bd_n, act),
        };
        let z = decode(readback.z);
        Ok(Embeddings {
            z_tx: z.tx,
            z_bd: z.bd,
            dim: readback.dim,
            layers: readback.layers.iter().map(|&l| decode(l)).collect(),
        })
    }

    /// Scoring on the GPU, with [`GpuError`]s.
    pub fn try_score(
        &mut self,
        embeddings: &Embeddings,
        rf: &ReceptiveField,
    ) -> Result<BestMatches, GpuError> {
        let act = self.act();
        let n_tx = embeddings.z_tx.len() / embeddings.dim.max(1);
        let stage = format!(
            "scoring ({n_tx} transcripts × {} candidates, {} nuclei, width {})",
            rf.k,
            embeddings.z_bd.len() / embeddings.dim.max(1),
            embeddings.dim
        );
        if rf.index.len() != n_tx * rf.k {
            return Err(GpuError::Internal {
                stage,
                detail: format!(
                    "receptive field has {} entries, expected {n_tx} × {}",
                    rf.index.len(),
                    rf.k
                ),
            });
        }
        let mut program = self.program(stage);
        let readback = forward::build_score(
            &mut program,
            act,
            &embeddings.z_tx,
            &embeddings.z_bd,
            embeddings.dim,
            rf,
        )?;
        let bytes = self.run(&program)?;
        let (score, index) = forward::decode_score(&bytes, &readback);
        Ok(BestMatches { score, index })
    }

    /// Fragment-neighbour similarity and its histogram on the GPU, with
    /// [`GpuError`]s (see [`Backend::fragment_similarity`]).
    pub fn try_fragment_similarity(
        &mut self,
        neighbors: &[i32],
        k: usize,
        tokens: &[u32],
        unit: &[f32],
        dim: usize,
    ) -> Result<EdgeSimilarity, GpuError> {
        let vocab = unit.len() / dim.max(1);
        let stage = format!(
            "fragment similarity ({} transcripts × {k} neighbours, {vocab} genes × {dim})",
            tokens.len(),
        );
        // Out-of-range indices would read other rows without a fault on
        // the GPU; the CPU twin would panic.
        let out_of_range = neighbors
            .iter()
            .any(|&j| j >= 0 && j as usize >= tokens.len())
            || tokens.iter().any(|&t| t as usize >= vocab);
        if neighbors.len() != tokens.len() * k || unit.len() % dim.max(1) != 0 || out_of_range {
            return Err(GpuError::Internal {
                stage,
                detail: format!(
                    "{} neighbour slots for {} transcripts × {k}, {} embedding values for width {dim}{}",
                    neighbors.len(),
                    tokens.len(),
                    unit.len(),
                    if out_of_range { ", indices out of range" } else { "" }
                ),
            });
        }
        if neighbors.is_empty() {
            return Ok(EdgeSimilarity {
                similarity: Vec::new(),
                histogram: vec![0; crate::pipeline::fragments::HISTOGRAM_BINS],
            });
        }
        let mut program = self.program(stage);
        let readback = fragments::build_similarity(&mut program, neighbors, k, tokens, unit, dim)?;
        let bytes = self.run(&program);
        self.release(&fragments::SLOTS);
        let (similarity, histogram) = fragments::decode_similarity(&bytes?, &readback);
        Ok(EdgeSimilarity {
            similarity,
            histogram,
        })
    }

    /// Connected components on the GPU, with [`GpuError`]s (see
    /// [`Backend::components`]).
    pub fn try_components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>, GpuError> {
        self.stats.last_component_iterations = 0;
        self.stats.last_component_submissions = 0;
        if edges.is_empty() {
            return Ok((0..n as u32).collect());
        }
        let stage = format!("connected components ({n} nodes, {} edges)", edges.len());
        if let Some(e) = edges
            .iter()
            .find(|e| e[0] as usize >= n || e[1] as usize >= n)
        {
            return Err(GpuError::Internal {
                stage,
                detail: format!("edge {e:?} is out of range"),
            });
        }
        let result = self.components_on_gpu(stage, n, edges);
        self.release(&fragments::SLOTS);
        result
    }

    fn components_on_gpu(
        &mut self,
        stage: String,
        n: usize,
        edges: &[[u32; 2]],
    ) -> Result<Vec<u32>, GpuError> {
        loop {
            let mut program = self.program(stage.clone());
            let submission = self.stats.last_component_submissions;
            let iterations = self
                .component_iterations
                .unwrap_or_else(|| fragments::iterations_in_submission(submission));
            let readback =
                fragments::build_components(&mut program, n, edges, submission == 0, iterations)?;
            let bytes = self.run(&program)?;
            self.stats.last_component_submissions += 1;
            let productive = readback.productive(&bytes);
            self.stats.last_component_iterations += productive;
            if productive < readback.iterations {
                return Ok(readback.labels(&bytes));
            }
            // Each productive iteration carries every node's smallest label
            // at least one edge further, so more than n of them is a fault.
            if self.stats.last_component_iterations as usize > n {
                return Err(GpuError::Internal {
                    stage,
                    detail: format!(
                        "labels still changing after {} iterations",
                        self.stats.last_component_iterations
                    ),
                });
            }
        }
    }

    fn release(&mut self, slots: &[program::Slot]) {
        for slot in slots {
            self.rt.pool.release(slot);
        }
    }

    // ---- Single kernels, for parity tests against the CPU twins. ----

    /// `shaders/embed.wgsl` alone: `relu(table[tokens])`, `[tokens.len(), dim]`.
    pub fn embed_relu(
        &mut self,
        table: &[f32],
        dim: usize,
        tokens: &[u32],
    ) -> Result<Vec<f32>, GpuError> {
        let act = self.act();
        let n = tokens.len() as u64;
        let dim64 = dim as u64;
        let vocab = (table.len() / dim.max(1)) as u64;
        let mut program = self.program(format!("embed kernel ({n} rows × {dim})"));
        let mut w = forward::WeightsBuilder::new("k.weights");
        let table_arr = w.block(&[table]);
        program.upload("k.weights", w.bytes());
        let tokens_arr = program.upload_u32("k.tokens", tokens);
        program.need("k.out", n * dim64 * act.bytes());
        let mut aux = Aux::new("k.aux");
        let planned = aux.plan(
            &program,
            &plan::Problem {
                rows: n as usize,
                row_bytes: dim64 * act.bytes(),
                refs: plan::Refs::One(tokens),
                gathered_rows: vocab as usize,
                gathered_row_bytes: dim64 * 4,
                max_rows: program.max_rows(dim64, u64::from(shaders::WG)),
            },
        )?;
        record::embed(
            &mut program,
            act,
            table_arr,
            vocab,
            dim64,
            tokens_arr,
            &planned,
            &aux,
            Array::at("k.out", act.bytes(), n * dim64),
        )?;
        aux.upload(&mut program);
        let at = program.readback("k.out", 0, n * dim64 * act.bytes());
        let bytes = self.run(&program)?;
        Ok(forward::from_act(&bytes, at, n * dim64, act))
    }

    /// `shaders/linear.wgsl` alone: `linear(x[rows])` as
    /// [`crate::kernels::linear::linear`] computes it. With f16 activations,
    /// `x` is stored as f16 too.
    pub fn linear(
        &mut self,
        x: &[f32],
        rows: Option<&[u32]>,
        layer: &linear_twin::Linear,
    ) -> Result<Vec<f32>, GpuError> {
        let act = self.act();
        let (in_dim, out_dim) = (layer.in_dim as u64, layer.out_dim as u64);
        let x_rows = x.len() as u64 / in_dim.max(1);
        let n = rows.map_or(x_rows, |r| r.len() as u64);
        let mut program = self.program(format!(
            "linear kernel ({n} rows, {in_dim} → {out_dim}{})",
            if rows.is_some() { ", gathered" } else { "" }
        ));
        let mut w = forward::WeightsBuilder::new("k.weights");
        let weights = w.linear(layer.in_dim, layer.wt, layer.bias);
        program.upload("k.weights", w.bytes());
        program.upload("k.x", forward::to_act(x, act));
        let x_arr = Array::at("k.x", act.bytes(), x.len() as u64);
        program.need("k.out", n * out_dim * act.bytes());
        let mut aux = Aux::new("k.aux");
        let rows_arr = rows.map(|r| program.upload_u32("k.rows", r));
        let planned = match rows {
            Some(r) => aux.plan(
                &program,
                &plan::Problem {
                    rows: r.len(),
                    row_bytes: out_dim * act.bytes(),
                    refs: plan::Refs::One(r),
                    gathered_rows: x_rows as usize,
                    gathered_row_bytes: in_dim * act.bytes(),
                    max_rows: record::linear_max_rows(&program, out_dim),
                },
            )?,
            None => Planned::default(),
        };
        let gathered = rows.map(|_| record::Gathered {
            rows: rows_arr.expect("uploaded"),
            planned: &planned,
            x_rows,
        });
        record::linear(
            &mut program,
            Variant::of(act),
            x_arr,
            gathered.as_ref(),
            &aux,
            n,
            weights,
            layer.relu,
            Array::at("k.out", act.bytes(), n * out_dim),
        )?;
        aux.upload(&mut program);
        let at = program.readback("k.out", 0, n * out_dim * act.bytes());
        let bytes = self.run(&program)?;
        Ok(forward::from_act(&bytes, at, n * out_dim, act))
    }

    /// `shaders/gatv2.wgsl` alone, as [`crate::kernels::gatv2::gatv2`]
    /// computes it: `xl` `[n_src, H·C]`, `xr` `[n_dst, H·C]`.
    pub fn gatv2(
        &mut self,
        gat: &gat_twin::Gat,
        xl: &[f32],
        xr: &[f32],
        csr: &Csr,
    ) -> Result<Vec<f32>, GpuError> {
        let act = self.act();
        let hc = (gat.heads * gat.channels) as u64;
        let n_dst = csr.n_dst() as u64;
        let n_src = xl.len() as u64 / hc.max(1);
        let stage = format!(
            "gatv2 kernel ({n_dst} destinations, {} edges, {} heads × {} channels)",
            csr.n_edges(),
            gat.heads,
            gat.channels
        );
        let variant = forward::gat_variant(act, gat.channels as u64, &stage)?;
        let mut program = self.program(stage);
        let mut w = forward::WeightsBuilder::new("k.weights");
        let weights = w.gat(gat.heads, gat.channels, gat.att, gat.bias, gat.relu);
        program.upload("k.weights", w.bytes());
        program.upload("k.xl", forward::to_act(xl, act));
        program.upload("k.xr", forward::to_act(xr, act));
        let offsets = program.upload_u32("k.off", &csr.offsets);
        let sources = program.upload_u32("k.src", &csr.sources);
        program.need("k.out", n_dst * hc * act.bytes());
        let mut aux = Aux::new("k.aux");
        let planned = aux.plan(
            &program,
            &plan::Problem {
                rows: n_dst as usize,
                row_bytes: hc * act.bytes(),
                refs: plan::Refs::Csr {
                    offsets: &csr.offsets,
                    sources: &csr.sources,
                },
                gathered_rows: n_src as usize,
                gathered_row_bytes: hc * act.bytes(),
                max_rows: program.max_rows(gat.heads as u64, u64::from(shaders::WG)),
            },
        )?;
        record::gatv2(
            &mut program,
            variant,
            Array::at("k.xl", act.bytes(), n_src * hc),
            Array::at("k.xr", act.bytes(), n_dst * hc),
            &record::Graph {
                offsets,
                sources,
                offset_values: &csr.offsets,
                planned: &planned,
                n_src,
            },
            &aux,
            weights,
            Array::at("k.out", act.bytes(), n_dst * hc),
        )?;
        aux.upload(&mut program);
        let at = program.readback("k.out", 0, n_dst * hc * act.bytes());
        let bytes = self.run(&program)?;
        Ok(forward::from_act(&bytes, at, n_dst * hc, act))
    }

    /// `shaders/score.wgsl` alone, as [`crate::kernels::score::best`] computes it.
    pub fn best(
        &mut self,
        z_tx: &[f32],
        z_bd: &[f32],
        dim: usize,
        rf: &ReceptiveField,
    ) -> Result<(Vec<f32>, Vec<i32>), GpuError> {
        let m = self.try_score(
            &Embeddings {
                z_tx: z_tx.to_vec(),
                z_bd: z_bd.to_vec(),
                dim,
                layers: Vec::new(),
            },
            rf,
        )?;
        Ok((m.score, m.index))
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        let a = self.adapter();
        format!(
            "gpu: {} ({}, {}, {})",
            a.name,
            a.backend,
            a.device_type,
            match self.precision {
                Precision::F32 => "f32",
                Precision::F16 => "f16 activations",
            }
        )
    }

    fn forward(
        &mut self,
        model: &Model,
        graph: &TileGraph,
        keep_layers: bool,
    ) -> Result<Embeddings> {
        Ok(self.try_forward(model, graph, keep_layers)?)
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        Ok(self.try_score(embeddings, rf)?)
    }

    fn fragment_similarity(
        &mut self,
        neighbors: &[i32],
        k: usize,
        tokens: &[u32],
        unit: &[f32],
        dim: usize,
    ) -> Result<EdgeSimilarity> {
        Ok(self.try_fragment_similarity(neighbors, k, tokens, unit, dim)?)
    }

    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>> {
        Ok(self.try_components(n, edges)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn backends_can_move_between_threads() {
        assert_send::<GpuBackend>();
        assert_send::<AutoBackend>();
    }
}
