//! `seggpu train`: Segger's self-supervised training on the CPU
//! (docs/contract.md §12). [`data`] reads the slide into whole-sample graphs
//! and draws the random windows, [`session`] is the loop, which runs each
//! step on a [`engine::TrainEngine`] ([`engine::CpuEngine`]: [`grad`], one
//! step's forward and backward, over [`fast`], the CPU's kernels, and
//! [`Adam`]; [`kernels`] holds the twins of the training shaders, the GPU's
//! reference, which [`fast`] agrees with up to rounding); [`validate`] scores the held-out nuclear
//! transcripts; [`command`] is `seggpu train` and `segment --train`.

pub mod command;
pub mod data;
pub mod engine;
pub mod fast;
pub mod grad;
pub mod init;
pub mod kernels;
mod rows;
pub mod session;
pub mod validate;
pub mod weights;

pub use command::{TrainArgs, TrainFlags};

use crate::model::Model;

/// Every trainable tensor of a model with its weights-file name, in a fixed
/// order (the optimiser's state follows it). Linear weights are in the
/// model's transposed layout.
pub fn params_mut(model: &mut Model) -> Vec<(String, &mut Vec<f32>)> {
    let mut out: Vec<(String, &mut Vec<f32>)> = vec![
        ("tx_embedding.tx.weight".into(), &mut model.tx_embedding),
        ("lin0.bd.weight".into(), &mut model.lin0_bd_wt),
    ];
    for layer in &mut model.layers {
        for (relation, w) in [
            ("tx__neighbors__tx", &mut layer.neighbors),
            ("tx__belongs__bd", &mut layer.belongs),
        ] {
            let prefix = format!("{}.{relation}", layer.name);
            out.push((format!("{prefix}.lin_l.weight"), &mut w.lin_l_wt));
            out.push((format!("{prefix}.lin_l.bias"), &mut w.lin_l_b));
            out.push((format!("{prefix}.lin_r.weight"), &mut w.lin_r_wt));
            out.push((format!("{prefix}.lin_r.bias"), &mut w.lin_r_b));
            out.push((format!("{prefix}.att"), &mut w.att));
            out.push((format!("{prefix}.bias"), &mut w.bias));
        }
    }
    out
}

/// [`params_mut`], read-only.
pub fn params(model: &Model) -> Vec<(String, Vec<f32>)> {
    let mut copy = model.clone();
    params_mut(&mut copy)
        .into_iter()
        .map(|(name, t)| (name, std::mem::take(t)))
        .collect()
}

/// Adam's state: the moments of every tensor and the step count.
#[derive(Debug, Clone)]
pub struct Adam {
    /// Constants.
    pub config: kernels::AdamConfig,
    /// Steps taken.
    pub step: u32,
    first: Vec<Vec<f32>>,
    second: Vec<Vec<f32>>,
}

impl Adam {
    /// Zero moments for `model`'s tensors.
    pub fn new(model: &Model) -> Self {
        let zeros: Vec<Vec<f32>> = params(model)
            .into_iter()
            .map(|(_, t)| vec![0.0; t.len()])
            .collect();
        Self {
            config: kernels::AdamConfig::default(),
            step: 0,
            first: zeros.clone(),
            second: zeros,
        }
    }

    /// Adam's state after `step` steps with moments `first_moment` and
    /// `second_moment`, laid out as `model`'s weights (a checkpoint of the
    /// GPU trainer, to go on on the CPU). Errors when a tensor's size
    /// differs from `model`'s.
    pub fn resume(
        config: kernels::AdamConfig,
        step: u32,
        model: &Model,
        first_moment: &Model,
        second_moment: &Model,
    ) -> anyhow::Result<Self> {
        let shapes: Vec<(String, usize)> = params(model)
            .into_iter()
            .map(|(name, t)| (name, t.len()))
            .collect();
        let moments = |which: &str, m: &Model| -> anyhow::Result<Vec<Vec<f32>>> {
            let tensors = params(m);
            anyhow::ensure!(
                tensors.len() == shapes.len(),
                "Adam's {which} moments have {} tensors, the model {}",
                tensors.len(),
                shapes.len()
            );
            for ((name, t), (_, len)) in tensors.iter().zip(&shapes) {
                anyhow::ensure!(
                    t.len() == *len,
                    "Adam's {which} moment of {name} has {} values, the weights {len}",
                    t.len()
                );
            }
            Ok(tensors.into_iter().map(|(_, t)| t).collect())
        };
        Ok(Self {
            config,
            step,
            first: moments("first", first_moment)?,
            second: moments("second", second_moment)?,
        })
    }

    /// One update of every tensor of `model` by the gradients in `grads`.
    pub fn update(&mut self, model: &mut Model, grads: &mut Model, lr: f32) {
        self.step += 1;
        let grads = params_mut(grads);
        for (((_, param), (_, grad)), (m, v)) in params_mut(model)
            .into_iter()
            .zip(grads)
            .zip(self.first.iter_mut().zip(self.second.iter_mut()))
        {
            fast::adam(&self.config, lr, self.step, param, grad, m, v);
        }
    }
}

/// train.py's learning rate at `step` of `steps`: cosine decay from `lr` to 5 % of it.
pub fn learning_rate(lr: f32, step: usize, steps: usize) -> f32 {
    let frac = step as f64 / steps.max(1) as f64;
    (lr as f64 * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()))) as f32
}
