//! Where a training step's arithmetic runs. The loop ([`super::run`]) only
//! talks to a [`TrainEngine`]: it hands over a window's [`Batch`] and the
//! learning rate, and asks for the weights when it validates or saves. The
//! CPU engine runs [`super::grad`] and [`super::kernels`]; a GPU engine runs
//! their shader twins and may keep weights, moments and activations on the
//! device between steps.

use anyhow::Result;

use super::data::Batch;
use super::grad::{loss_and_grad, zeros_like};
use super::kernels::AdamConfig;
use super::Adam;
use crate::model::Model;

/// One training step at a time, on some device.
pub trait TrainEngine {
    /// What runs the steps, for logs (`cpu (2 threads)`).
    fn describe(&self) -> String;

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
}

impl CpuEngine {
    /// An engine that starts from `model` with fresh Adam moments.
    pub fn new(model: Model, config: AdamConfig) -> Self {
        let mut adam = Adam::new(&model);
        adam.config = config;
        Self {
            grads: zeros_like(&model),
            model,
            adam,
        }
    }
}

impl TrainEngine for CpuEngine {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn step(&mut self, batch: &Batch, lr: f32) -> Result<f32> {
        for (_, tensor) in super::params_mut(&mut self.grads) {
            tensor.fill(0.0);
        }
        let loss = loss_and_grad(&self.model, &batch.graph, &batch.pairs, &mut self.grads);
        self.adam.update(&mut self.model, &mut self.grads, lr);
        Ok(loss)
    }

    fn loss_and_grad(&mut self, batch: &Batch) -> Result<(f32, Model)> {
        let mut grads = zeros_like(&self.model);
        let loss = loss_and_grad(&self.model, &batch.graph, &batch.pairs, &mut grads);
        Ok((loss, grads))
    }

    fn model(&mut self) -> Result<Model> {
        Ok(self.model.clone())
    }

    fn steps(&self) -> u32 {
        self.adam.step
    }
}
