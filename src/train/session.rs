//! The training loop: windows → [`TrainEngine`] steps with train.py's
//! cosine learning rate, validation every so many steps, progress and the
//! curves of the training log.

use std::time::Instant;

use anyhow::{bail, Result};

use super::data::{stream, streams, TrainingData, WindowScratch, WindowSettings};
use super::engine::TrainEngine;
use super::learning_rate;
use super::validate::{validate, Validation};
use crate::backend::Backend;
use crate::model::Model;
use crate::pipeline::progress::Progress;

/// What the loop does.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Settings {
    /// Optimiser steps (the cosine schedule runs over these).
    pub steps: usize,
    /// Wall-clock cap in minutes (validation included); `None` for none.
    pub minutes: Option<f64>,
    /// Seed of the held-out split, the initial weights and the windows.
    pub seed: u64,
    /// Peak learning rate.
    pub lr: f32,
    /// Windows and pairs.
    pub window: WindowSettings,
    /// Validate every this many steps (0: only before and after training).
    pub eval_every: usize,
    /// Score cut of the validation accuracy.
    pub score_cut: f32,
}

/// One point of the validation curve.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ValidationPoint {
    /// Steps taken when it was measured.
    pub step: usize,
    /// Seconds since training started.
    pub seconds: f64,
    /// The figures.
    #[serde(flatten)]
    pub validation: Validation,
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The weights after the last step.
    pub model: Model,
    /// Steps taken.
    pub steps: usize,
    /// Why training stopped: `steps` or `minutes`.
    pub stopped_by: &'static str,
    /// Loss of every step.
    pub losses: Vec<f32>,
    /// Validation before training, every `eval_every` steps, and after the last step.
    pub validations: Vec<ValidationPoint>,
    /// Seconds in the loop, validation included.
    pub seconds: f64,
    /// Seconds spent validating.
    pub validation_seconds: f64,
    /// Transcripts of all windows together.
    pub window_transcripts: usize,
}

impl Outcome {
    /// The last validation (after the last step).
    pub fn last(&self) -> &ValidationPoint {
        self.validations.last().expect("validated at least once")
    }
}

/// Trains `engine`'s model on `data`. `validator` runs the validation forward.
pub fn train(
    engine: &mut dyn TrainEngine,
    data: &TrainingData,
    settings: &Settings,
    validator: &mut dyn Backend,
    progress: &Progress,
) -> Result<Outcome> {
    let start = Instant::now();
    let budget = settings.minutes.map(|m| m * 60.0);
    let mut rng = stream(settings.seed, streams::WINDOWS);
    let mut scratch = WindowScratch::default();
    let mut losses = Vec::with_capacity(settings.steps);
    let mut validations = Vec::new();
    let mut validation_seconds = 0.0;
    let mut window_transcripts = 0;
    let bar = progress.bar("training", settings.steps as u64);
    let mut evaluate = |engine: &mut dyn TrainEngine, step: usize| -> Result<ValidationPoint> {
        let clock = Instant::now();
        let v = validate(&engine.model()?, data, settings.score_cut, validator)?;
        validation_seconds += clock.elapsed().as_secs_f64();
        Ok(ValidationPoint {
            step,
            seconds: start.elapsed().as_secs_f64(),
            validation: v,
        })
    };
    let describe = |v: &Validation| {
        format!(
            "validation accuracy {:.1}% (best nucleus own {:.1}%, own in receptive field {:.1}%, {} held out)",
            100.0 * v.accuracy,
            100.0 * v.best_is_own,
            100.0 * v.own_in_rf,
            v.held_out
        )
    };
    let first = evaluate(engine, 0)?;
    bar.suspend(|| log::info!("step 0: {}", describe(&first.validation)));
    validations.push(first);
    let mut ema: Option<f64> = None;
    let mut stopped_by = "steps";
    let mut step = 0;
    while step < settings.steps {
        if budget.is_some_and(|b| start.elapsed().as_secs_f64() >= b) {
            stopped_by = "minutes";
            break;
        }
        let batch = data.draw(&settings.window, &mut rng, &mut scratch)?;
        window_transcripts += batch.graph.n_tx();
        let lr = learning_rate(settings.lr, step, settings.steps);
        let loss = engine.step(&batch, lr)?;
        if !loss.is_finite() {
            bail!("the training loss is {loss} at step {step}; try a lower --lr");
        }
        losses.push(loss);
        step += 1;
        let smooth = ema.map_or(loss as f64, |e| 0.95 * e + 0.05 * loss as f64);
        ema = Some(smooth);
        let last = validations.last().expect("validated").validation.accuracy;
        bar.set_position(step as u64);
        bar.set_message(format!("loss {smooth:.4} val {:.1}%", 100.0 * last));
        if settings.eval_every > 0 && step % settings.eval_every == 0 && step < settings.steps {
            let point = evaluate(engine, step)?;
            bar.suspend(|| {
                log::info!(
                    "step {step}: loss {smooth:.4}, {}",
                    describe(&point.validation)
                )
            });
            validations.push(point);
        }
    }
    bar.finish_and_clear();
    let last = evaluate(engine, step)?;
    log::info!(
        "step {step} (last): loss {:.4}, {}",
        ema.unwrap_or(f64::NAN),
        describe(&last.validation)
    );
    validations.push(last);
    Ok(Outcome {
        model: engine.model()?,
        steps: step,
        stopped_by,
        losses,
        validations,
        seconds: start.elapsed().as_secs_f64(),
        validation_seconds,
        window_transcripts,
    })
}
