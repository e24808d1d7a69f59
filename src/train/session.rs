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
    /// When to validate between the first and the last validation.
    pub eval_every: EvalEvery,
    /// Score cut of the validation accuracy.
    pub score_cut: f32,
}

/// When validation runs during training (besides before the first step
/// and after the last). It never changes the weights: only when the curve
/// is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalEvery {
    /// Every N steps, N chosen after the first [`AUTO_PROBE_STEPS`] steps
    /// from the measured costs (see [`auto_eval_every`]).
    Auto,
    /// Every this many steps (0: never).
    Steps(usize),
}

impl std::str::FromStr for EvalEvery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse().map(Self::Steps).map_err(|_| {
            format!("'{s}' is neither 'auto' nor a number of steps (0: only before and after)")
        })
    }
}

/// Steps timed before [`EvalEvery::Auto`] chooses its interval.
pub const AUTO_PROBE_STEPS: usize = 10;

/// Share of the training time that [`EvalEvery::Auto`] lets validation take, at most.
pub const AUTO_EVAL_SHARE: f64 = 0.02;

/// [`EvalEvery::Auto`]'s interval: the smallest of 10, 20, 50, 100, 200,
/// 500, … steps over which one validation (`validation_seconds`) costs at
/// most [`AUTO_EVAL_SHARE`] of the steps (`step_seconds` each). Round
/// numbers keep the curve's steps the same between runs on machines of
/// about the same speed.
pub fn auto_eval_every(validation_seconds: f64, step_seconds: f64) -> usize {
    let wanted = validation_seconds / (AUTO_EVAL_SHARE * step_seconds.max(f64::MIN_POSITIVE));
    let mut decade = 10usize;
    loop {
        for n in [decade, 2 * decade, 5 * decade] {
            if n as f64 >= wanted || n >= usize::MAX / 100 {
                return n;
            }
        }
        decade *= 10;
    }
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
    /// The interval validation ran at (chosen, under [`EvalEvery::Auto`]);
    /// `None` when training stopped before [`EvalEvery::Auto`] chose one.
    pub eval_every: Option<usize>,
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
    // Read between validations (the auto interval) while `evaluate` adds to it.
    let validation_seconds = std::cell::Cell::new(0.0);
    let mut window_transcripts = 0;
    let bar = progress.bar("training", settings.steps as u64);
    let mut evaluate = |engine: &mut dyn TrainEngine, step: usize| -> Result<ValidationPoint> {
        let clock = Instant::now();
        let v = validate(&engine.model()?, data, settings.score_cut, validator)?;
        validation_seconds.set(validation_seconds.get() + clock.elapsed().as_secs_f64());
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
    let first_cost = validation_seconds.get();
    bar.suspend(|| log::info!("step 0: {}", describe(&first.validation)));
    validations.push(first);
    let mut ema: Option<f64> = None;
    let mut stopped_by = "steps";
    let mut step = 0;
    let mut eval_every = match settings.eval_every {
        EvalEvery::Steps(n) => Some(n),
        EvalEvery::Auto => None,
    };
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
        if eval_every.is_none() && step == AUTO_PROBE_STEPS {
            // Validation has run once so far: the rest of the time went to steps.
            let step_seconds =
                (start.elapsed().as_secs_f64() - validation_seconds.get()) / step as f64;
            let n = auto_eval_every(first_cost, step_seconds);
            bar.suspend(|| {
                log::info!(
                    "validating every {n} steps: one validation takes {first_cost:.2} s, a step {step_seconds:.3} s"
                )
            });
            eval_every = Some(n);
        }
        let due = eval_every.is_some_and(|n| n > 0 && step % n == 0);
        if due && step < settings.steps {
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
        eval_every,
        seconds: start.elapsed().as_secs_f64(),
        validation_seconds: validation_seconds.get(),
        window_transcripts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_interval_is_the_smallest_round_one_within_the_share() {
        // One validation = 2.35 steps (the demo sample): 117.5 steps at 2 % → 200.
        assert_eq!(auto_eval_every(2.35, 1.0), 200);
        assert_eq!(auto_eval_every(1.0, 1.0), 50);
        assert_eq!(auto_eval_every(1.01, 1.0), 100);
        assert_eq!(auto_eval_every(0.01, 1.0), 10);
        assert_eq!(auto_eval_every(0.0, 0.0), 10);
        assert_eq!(auto_eval_every(300.0, 0.1), 200_000);
        assert_eq!("auto".parse(), Ok(EvalEvery::Auto));
        assert_eq!("25".parse(), Ok(EvalEvery::Steps(25)));
        assert!("-1".parse::<EvalEvery>().is_err());
    }
}
