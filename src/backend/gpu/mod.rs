//! The GPU backend: the kernels of `shaders/*.wgsl` on any adapter wgpu
//! offers (Vulkan, Metal, DX12, GL).
//!
//! * Pipelines are compiled once per backend (per kernel variant), weights
//!   are uploaded once per model, and buffers come from a grow-only pool, so
//!   successive tiles reuse buffers and bind groups (the once-per-sample
//!   fragment stage frees its buffers when done).
//! * A tile is one [`program::Program`]: one command encoder holding every
//!   dispatch of every layer and of scoring, one submission, one readback of
//!   the best score and nucleus per transcript; the embeddings stay on the
//!   GPU. Connected components iterate on the GPU, many iterations per
//!   submission ([`kernels::components`]).
//! * Every kernel is declared once, with typed parameters and bindings
//!   ([`kernels`]).
//! * Dispatches above the per-dimension workgroup limit become 2-D grids;
//!   arrays larger than one storage binding are processed in chunks
//!   ([`plan`], [`chunking`]).
//! * Out-of-memory, validation failures and device loss are caught (error
//!   scopes, device-lost callback) and reported with the stage and tile
//!   sizes, as [`GpuError`]s inside the `anyhow::Error`s of [`Backend`].

mod auto;
mod chunking;
mod context;
mod forward;
mod kernels;
mod plan;
mod pool;
mod program;
mod runtime;
mod shaders;
#[cfg(any(test, feature = "testing"))]
mod single_kernels;
#[cfg(any(test, feature = "testing"))]
pub mod test_support;
mod train;
mod train_chunks;
#[cfg(any(test, feature = "testing"))]
mod train_single_kernels;

use anyhow::Result;

use super::{
    receptive_field, Activations, Backend, BestMatches, EdgeSimilarity, Embeddings, FragmentSlots,
};
use crate::graph::{ReceptiveField, TileGraph};
use crate::kernels::edge_similarity::HISTOGRAM_BINS;
use crate::model::{Architecture, Model};

pub use auto::{open_for_auto, AutoBackend};
pub use context::{
    f16_disabled_by_env, list_adapters, AdapterReport, GpuOptions, LimitsMode, Precision,
};
use forward::ModelLayout;
use kernels::{components, edge_similarity, Kernel};
use program::{Program, Slot};
use runtime::Runtime;
use shaders::Elem;
pub use train::{GpuTrainer, TrainerState, MAX_LAYERS};

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
    /// Bytes the last submission read back.
    pub last_readback_bytes: u64,
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

/// What identifies a model's weights: the sha256 of its file and its
/// architecture. A model without a sha256 (built in memory) has none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelKey {
    sha256: String,
    arch: Architecture,
}

impl ModelKey {
    fn of(model: &Model) -> Option<Self> {
        (!model.sha256.is_empty()).then(|| Self {
            sha256: model.sha256.clone(),
            arch: model.arch,
        })
    }
}

/// The weights on the GPU.
struct ModelOnGpu {
    /// `None`: a model without identity, uploaded again by every call.
    key: Option<ModelKey>,
    layout: ModelLayout,
}

/// Runs every kernel on a GPU through wgpu.
pub struct GpuBackend {
    rt: Runtime,
    precision: Precision,
    model: Option<ModelOnGpu>,
    stats: GpuStats,
    /// Hook + jump iterations per components submission, when a test fixes them.
    component_iterations: Option<u32>,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("adapter", &self.rt.dev.info.name)
            .field("precision", &self.precision)
            .field("stats", &self.stats)
            .finish()
    }
}

/// The stage name of a tile's forward pass, with its sizes.
fn forward_stage(what: &str, model: &Model, graph: &TileGraph, precision: Precision) -> String {
    format!(
        "{what} ({} transcripts, {} nuclei, {} neighbour + {} belongs edges, {} layers, {precision:?})",
        graph.n_tx(),
        graph.n_bd(),
        graph.neighbors.n_edges(),
        graph.belongs.n_edges(),
        model.layers.len(),
    )
}

impl GpuBackend {
    /// Opens the adapter `options` select.
    pub fn new(options: GpuOptions) -> Result<Self, GpuError> {
        let adapter = context::choose(context::adapters(), &options)?;
        let mut precision = options.precision;
        if precision == Precision::F16 && f16_disabled_by_env() {
            log::warn!("SEGGPU_F16=off: the f16 path is disabled, computing in f32");
            precision = Precision::F32;
        }
        let dev = context::open(&adapter, &options, precision == Precision::F16)?;
        if precision == Precision::F16 && !dev.shader_f16 {
            log::warn!(
                "--precision f16: adapter {} has no SHADER_F16; computing in f32",
                dev.info.name
            );
            precision = Precision::F32;
        }
        Ok(Self {
            rt: Runtime::new(dev),
            precision,
            model: None,
            stats: GpuStats::default(),
            component_iterations: options.test_hooks().component_iterations.map(|i| i.max(1)),
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
        self.stats.last_gathers = program.count(|d| d.kernel == Kernel::Gather);
        self.stats.last_2d_grids = program.count(|d| d.groups.1 > 1);
        self.stats.last_readback_bytes = program.readback_bytes;
        self.rt.run(program)
    }

    /// Records with `record` a program that runs `model` (uploading its
    /// weights unless they are on the GPU already) and runs it; returns the
    /// staging bytes and what `record` returned.
    fn run_with_model<R>(
        &mut self,
        stage: String,
        model: &Model,
        record: impl FnOnce(&mut Program, &ModelLayout) -> Result<R, GpuError>,
    ) -> Result<(Vec<u8>, R), GpuError> {
        let key = ModelKey::of(model);
        let cached = self
            .model
            .as_ref()
            .filter(|m| key.is_some() && m.key == key)
            .map(|m| m.layout.clone());
        let mut program = self.program(stage);
        let uploaded = cached.is_none();
        let layout = cached.unwrap_or_else(|| {
            let (layout, bytes) = forward::layout_model(model);
            program.upload(forward::MODEL, bytes);
            layout
        });
        let recorded = record(&mut program, &layout)?;
        match self.run(&program) {
            Ok(bytes) => {
                if uploaded {
                    self.stats.model_uploads += 1;
                    self.model = Some(ModelOnGpu { key, layout });
                }
                Ok((bytes, recorded))
            }
            Err(e) => {
                // The weights on the GPU are no longer known to be intact.
                self.model = None;
                Err(e)
            }
        }
    }

    /// Scoring of embeddings computed elsewhere: uploads them first.
    fn score_uploaded(
        &mut self,
        z_tx: &[f32],
        z_bd: &[f32],
        dim: usize,
        rf: &ReceptiveField,
    ) -> Result<BestMatches, GpuError> {
        let act = self.act();
        let n_tx = z_tx.len() / dim.max(1);
        let stage = format!(
            "scoring ({n_tx} transcripts × {} candidates, {} nuclei, width {dim})",
            rf.k,
            z_bd.len() / dim.max(1),
        );
        check_receptive_field(&stage, rf, n_tx)?;
        let mut program = self.program(stage);
        let z = forward::upload_z(&mut program, act, z_tx, z_bd, dim);
        let readback = forward::build_score(&mut program, act, z, rf)?;
        let bytes = self.run(&program)?;
        let (score, index) = forward::decode_score(&bytes, &readback);
        Ok(BestMatches { score, index })
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
                .unwrap_or_else(|| components::iterations_in_submission(submission));
            let readback = components::build(&mut program, n, edges, submission == 0, iterations)?;
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

    fn release(&mut self, slots: &[Slot]) {
        for slot in slots {
            self.rt.pool.release(slot);
        }
    }
}

/// Fails unless `rf` has `k` entries for each of `n_tx` transcripts.
fn check_receptive_field(stage: &str, rf: &ReceptiveField, n_tx: usize) -> Result<(), GpuError> {
    if rf.index.len() != n_tx * rf.k {
        return Err(GpuError::Internal {
            stage: stage.to_owned(),
            detail: format!(
                "receptive field has {} entries, expected {n_tx} × {}",
                rf.index.len(),
                rf.k
            ),
        });
    }
    Ok(())
}

impl Backend for GpuBackend {
    fn runs_on_gpu(&self) -> bool {
        true
    }

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
        let act = self.act();
        let stage = forward_stage("forward", model, graph, self.precision);
        let (bytes, (forward, z_at)) = self.run_with_model(stage, model, |program, layout| {
            let forward = forward::build_forward(program, act, layout, graph, keep_layers)?;
            let z_at = forward::read_z(program, &forward.z);
            Ok((forward, z_at))
        })?;
        let decode = |(tx_at, tx_n, bd_at, bd_n): forward::StageAt| Activations {
            tx: forward::from_act(&bytes, tx_at, tx_n, act),
            bd: forward::from_act(&bytes, bd_at, bd_n, act),
        };
        let z = decode(z_at);
        Ok(Embeddings {
            z_tx: z.tx,
            z_bd: z.bd,
            dim: forward.z.dim as usize,
            layers: forward.layers.into_iter().map(decode).collect(),
        })
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        Ok(self.score_uploaded(&embeddings.z_tx, &embeddings.z_bd, embeddings.dim, rf)?)
    }

    fn score_tile(&mut self, model: &Model, graph: &TileGraph) -> Result<BestMatches> {
        let rf = receptive_field(graph)?;
        let act = self.act();
        let stage = forward_stage("forward and scoring", model, graph, self.precision);
        check_receptive_field(&stage, rf, graph.n_tx())?;
        let (bytes, readback) = self.run_with_model(stage, model, |program, layout| {
            let forward = forward::build_forward(program, act, layout, graph, false)?;
            forward::build_score(program, act, forward.z, rf)
        })?;
        let (score, index) = forward::decode_score(&bytes, &readback);
        Ok(BestMatches { score, index })
    }

    fn fragment_similarity(&mut self, slots: FragmentSlots) -> Result<EdgeSimilarity> {
        let FragmentSlots {
            neighbors,
            k,
            tokens,
            unit,
            dim,
        } = slots;
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
            }
            .into());
        }
        if neighbors.is_empty() {
            return Ok(EdgeSimilarity {
                similarity: Vec::new(),
                histogram: vec![0; HISTOGRAM_BINS],
            });
        }
        let mut program = self.program(stage);
        let readback = edge_similarity::build(&mut program, neighbors, k, tokens, unit, dim)?;
        let bytes = self.run(&program);
        self.release(&edge_similarity::SLOTS);
        let (similarity, histogram) = readback.decode(&bytes?);
        Ok(EdgeSimilarity {
            similarity,
            histogram,
        })
    }

    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>> {
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
            }
            .into());
        }
        let result = self.components_on_gpu(stage, n, edges);
        self.release(&components::SLOTS);
        Ok(result?)
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
