//! Where a training step's arithmetic runs. The loop ([`super::run`]) only
//! talks to a [`TrainEngine`]: it hands over a window's [`Batch`] and the
//! learning rate, and asks for the weights when it validates or saves. The
//! CPU engine runs [`super::grad`] (over [`super::fast`]); a GPU engine runs
//! the shader twins of [`super::kernels`] and may keep weights, moments and activations on the
//! device between steps. [`open`] picks the engine `--backend` asks for.

use anyhow::{Context, Result};

use super::data::Batch;
use super::grad::{loss_and_grad_with, zeros_like, Buffers};
use super::kernels::AdamConfig;
use super::Adam;
use crate::backend::gpu::{self, GpuBackend, GpuError, GpuTrainer};
use crate::backend::Backend;
use crate::cli::{BackendArgs, BackendChoice};
use crate::model::Model;

/// One training step at a time, on some device.
pub trait TrainEngine {
    /// What runs the steps, for logs (`cpu (2 threads)`).
    fn describe(&self) -> String;

    /// What ran the steps, without details of the machine (`cpu`, `gpu`,
    /// `gpu, then cpu from step 12`): for the weights file, which the same
    /// inputs and seed make byte-identical.
    fn kind(&self) -> String;

    /// The loss of `batch` at the current weights, then one Adam update of
    /// every weight with learning rate `lr`. Returns the loss (before the update).
    fn step(&mut self, batch: &Batch, lr: f32) -> Result<f32>;

    /// The loss of `batch` at the current weights and its gradient (laid
    /// out as the weights), without updating anything: for benchmarks and checks.
    fn loss_and_grad(&mut self, batch: &Batch) -> Result<(f32, Model)>;

    /// The current weights.
    fn model(&mut self) -> Result<Model>;

    /// Steps taken.
    fn steps(&self) -> u32;
}

/// [`TrainEngine`] on the CPU: the model, its gradient buffer and Adam's
/// moments in memory, kernels on rayon's pool.
pub struct CpuEngine {
    model: Model,
    grads: Model,
    adam: Adam,
    bufs: Buffers,
}

impl CpuEngine {
    /// An engine that starts from `model` with fresh Adam moments.
    pub fn new(model: Model, config: AdamConfig) -> Self {
        let mut adam = Adam::new(&model);
        adam.config = config;
        Self::resume(model, adam)
    }

    /// An engine that goes on from `model` with Adam's state `adam` (see
    /// [`Adam::resume`]).
    pub fn resume(model: Model, adam: Adam) -> Self {
        Self {
            grads: zeros_like(&model),
            model,
            adam,
            bufs: Buffers::default(),
        }
    }
}

impl TrainEngine for CpuEngine {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn kind(&self) -> String {
        "cpu".into()
    }

    fn step(&mut self, batch: &Batch, lr: f32) -> Result<f32> {
        for (_, tensor) in super::params_mut(&mut self.grads) {
            tensor.fill(0.0);
        }
        // The whole step on a thread of rayon's pool: its parallel loops
        // start there instead of waking the pool from outside and sleeping
        // until it is done, loop after loop.
        let loss = rayon::scope(|_| {
            let loss = loss_and_grad_with(
                &mut self.bufs,
                &self.model,
                &batch.graph,
                &batch.pairs,
                &mut self.grads,
            );
            self.adam.update(&mut self.model, &mut self.grads, lr);
            loss
        });
        Ok(loss)
    }

    fn loss_and_grad(&mut self, batch: &Batch) -> Result<(f32, Model)> {
        let mut grads = zeros_like(&self.model);
        let loss = loss_and_grad_with(
            &mut self.bufs,
            &self.model,
            &batch.graph,
            &batch.pairs,
            &mut grads,
        );
        Ok((loss, grads))
    }

    fn model(&mut self) -> Result<Model> {
        Ok(self.model.clone())
    }

    fn steps(&self) -> u32 {
        self.adam.step
    }
}

/// What a [`GpuEngine`] does when a GPU step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGpuError {
    /// Return the error (`--backend gpu`).
    Fail,
    /// Warn and go on on the CPU, for the rest of the run (`--backend
    /// auto`): from the last checkpoint (the weights and Adam's moments,
    /// read back with the loss every [`CHECKPOINT_EVERY`] steps and
    /// whenever the weights are read, since a lost device takes its memory
    /// with it), replaying on the CPU the steps the GPU completed since.
    ResumeOnCpu,
}

/// Steps between the checkpoints of [`OnGpuError::ResumeOnCpu`]: fewer
/// steps than this are replayed on the CPU after a lost device, and the
/// engine keeps their windows in memory until the next checkpoint.
pub const CHECKPOINT_EVERY: u32 = 16;

/// [`TrainEngine`] on a GPU: a [`GpuTrainer`] (weights, moments and
/// activations on the device), and after a failed step under
/// [`OnGpuError::ResumeOnCpu`] a [`CpuEngine`] that goes on from the last
/// checkpoint, replaying the steps since.
pub struct GpuEngine {
    gpu: Option<GpuTrainer>,
    cpu: Option<CpuEngine>,
    on_error: OnGpuError,
    config: AdamConfig,
    /// The GPU, as `describe` put it while it ran.
    gpu_name: String,
    /// Steps of the checkpoint the CPU took over from.
    cpu_from: Option<u32>,
    /// Under [`OnGpuError::ResumeOnCpu`]: the windows and learning rates of
    /// the steps the GPU completed since its last checkpoint.
    since_checkpoint: Vec<(Batch, f32)>,
}

impl GpuEngine {
    /// An engine that starts from `model` with fresh Adam moments on `gpu`;
    /// under [`OnGpuError::ResumeOnCpu`] with a checkpoint every
    /// [`CHECKPOINT_EVERY`] steps.
    pub fn new(gpu: GpuBackend, model: Model, config: AdamConfig, on_error: OnGpuError) -> Self {
        Self::with_checkpoint_every(gpu, model, config, on_error, CHECKPOINT_EVERY)
    }

    /// As [`GpuEngine::new`] with a checkpoint every `every` steps under
    /// [`OnGpuError::ResumeOnCpu`].
    pub fn with_checkpoint_every(
        gpu: GpuBackend,
        model: Model,
        config: AdamConfig,
        on_error: OnGpuError,
        every: u32,
    ) -> Self {
        let gpu_name = gpu.describe();
        let mut trainer = GpuTrainer::with_backend(gpu, &model).with_adam(config);
        if on_error == OnGpuError::ResumeOnCpu {
            trainer = trainer.with_checkpoints(every);
        }
        Self {
            gpu: Some(trainer),
            cpu: None,
            on_error,
            config,
            gpu_name,
            cpu_from: None,
            since_checkpoint: Vec::new(),
        }
    }

    /// The GPU trainer, until the CPU takes over.
    pub fn trainer(&self) -> Option<&GpuTrainer> {
        self.gpu.as_ref()
    }

    /// Steps of the checkpoint the CPU took over from, if it did: the CPU
    /// computed every step after it (replaying those the GPU had done).
    pub fn cpu_from_step(&self) -> Option<u32> {
        self.cpu_from
    }

    /// Steps the GPU completed since its last checkpoint (what a lost
    /// device would make the CPU replay).
    pub fn steps_since_checkpoint(&self) -> usize {
        self.since_checkpoint.len()
    }

    /// Handles the GPU's `error`: returned under [`OnGpuError::Fail`], else
    /// the CPU engine takes over from the last checkpoint and replays the
    /// steps since.
    fn on_gpu_error(&mut self, error: GpuError) -> Result<&mut CpuEngine> {
        if self.on_error == OnGpuError::Fail {
            return Err(anyhow::Error::new(error)
                .context("training on the GPU (--backend auto goes on on the CPU)"));
        }
        let trainer = self
            .gpu
            .take()
            .context("no GPU trainer to take over from")?;
        let state = trainer
            .checkpoint()
            .cloned()
            .context("the GPU trainer kept no checkpoint")?;
        let replay = std::mem::take(&mut self.since_checkpoint);
        let done = state.steps as usize + replay.len();
        if replay.is_empty() {
            log::warn!(
                "{error}; training goes on on the CPU from step {done} (the last completed one)"
            );
        } else {
            log::warn!(
                "{error}; training goes on on the CPU from the checkpoint of step {}, replaying steps {}–{done}",
                state.steps,
                state.steps + 1
            );
        }
        let adam = Adam::resume(
            self.config,
            state.steps,
            &state.model,
            &state.first_moment,
            &state.second_moment,
        )?;
        self.cpu_from = Some(state.steps);
        let cpu = self.cpu.insert(CpuEngine::resume(state.model, adam));
        // The GPU returned these steps' losses already; the CPU's replay
        // only rebuilds the weights and moments.
        for (batch, lr) in &replay {
            cpu.step(batch, *lr)?;
        }
        Ok(cpu)
    }

    /// After a completed GPU step on `batch`: what a lost device would
    /// make the CPU replay.
    fn completed_on_gpu(&mut self, batch: &Batch, lr: f32) {
        let checkpointed = self
            .gpu
            .as_ref()
            .and_then(|gpu| Some(gpu.checkpoint()?.steps == gpu.steps()))
            .unwrap_or(true);
        if checkpointed {
            self.since_checkpoint.clear();
        } else {
            self.since_checkpoint.push((batch.clone(), lr));
        }
    }

    fn cpu(&mut self) -> Result<&mut CpuEngine> {
        self.cpu.as_mut().context("neither a GPU nor a CPU engine")
    }
}

impl TrainEngine for GpuEngine {
    fn describe(&self) -> String {
        match (&self.cpu, self.cpu_from) {
            (Some(cpu), Some(step)) => format!(
                "{} for steps 1–{step}, then {} from its checkpoint (the GPU failed)",
                self.gpu_name,
                cpu.describe()
            ),
            _ => self.gpu_name.clone(),
        }
    }

    fn kind(&self) -> String {
        match self.cpu_from {
            Some(step) => format!("gpu, then cpu from step {}", step + 1),
            None => "gpu".into(),
        }
    }

    fn step(&mut self, batch: &Batch, lr: f32) -> Result<f32> {
        if let Some(gpu) = &mut self.gpu {
            match gpu.step(&batch.graph, &batch.pairs, lr) {
                Ok(loss) => {
                    self.completed_on_gpu(batch, lr);
                    return Ok(loss);
                }
                Err(e) => return self.on_gpu_error(e)?.step(batch, lr),
            }
        }
        self.cpu()?.step(batch, lr)
    }

    fn loss_and_grad(&mut self, batch: &Batch) -> Result<(f32, Model)> {
        if let Some(gpu) = &mut self.gpu {
            match gpu.loss_and_grad(&batch.graph, &batch.pairs) {
                Ok(out) => return Ok(out),
                Err(e) => return self.on_gpu_error(e)?.loss_and_grad(batch),
            }
        }
        self.cpu()?.loss_and_grad(batch)
    }

    fn model(&mut self) -> Result<Model> {
        if let Some(gpu) = &mut self.gpu {
            if self.on_error == OnGpuError::ResumeOnCpu {
                // The weights and the moments in one readback: a checkpoint
                // too, so nothing before it is ever replayed.
                match gpu.checkpoint_now() {
                    Ok(state) => {
                        let model = state.model.clone();
                        self.since_checkpoint.clear();
                        return Ok(model);
                    }
                    Err(e) => return self.on_gpu_error(e)?.model(),
                }
            }
            match gpu.model() {
                Ok(model) => return Ok(model),
                Err(e) => return self.on_gpu_error(e)?.model(),
            }
        }
        self.cpu()?.model()
    }

    fn steps(&self) -> u32 {
        match (&self.gpu, &self.cpu) {
            (Some(gpu), _) => gpu.steps(),
            (None, Some(cpu)) => cpu.steps(),
            (None, None) => 0,
        }
    }
}

/// The engine `backend` asks for, starting from `model` with fresh Adam
/// moments: `cpu`; `gpu`, any adapter, software ones included (none is an
/// error, and so is a failed step); `auto`, a hardware GPU chosen as
/// `segment --backend auto` chooses it, going on on the CPU after a failed
/// step, else the CPU. Training computes in f32 whatever `--precision` says.
pub fn open(
    backend: &BackendArgs,
    model: Model,
    config: AdamConfig,
) -> Result<Box<dyn TrainEngine>> {
    Ok(match backend.backend {
        BackendChoice::Cpu => Box::new(CpuEngine::new(model, config)),
        BackendChoice::Gpu => Box::new(GpuEngine::new(
            crate::cli::open_gpu(backend)?,
            model,
            config,
            OnGpuError::Fail,
        )),
        BackendChoice::Auto => match gpu::open_for_auto(backend.gpu_options()) {
            Some(gpu) => Box::new(GpuEngine::new(gpu, model, config, OnGpuError::ResumeOnCpu)),
            None => Box::new(CpuEngine::new(model, config)),
        },
    })
}
