//! Validation: the held-out nuclear transcripts (never message edges, never
//! positives) scored on the whole sample (docs/contract.md §8), as
//! `tools/reference/train_real.py`'s `validate`.

use anyhow::Result;

use super::data::TrainingData;
use crate::backend::Backend;
use crate::model::Model;

/// Validation figures at one point of training.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Validation {
    /// Held-out transcripts whose best receptive-field nucleus is their own
    /// and scores at least the cut, as a fraction of the held-out ones.
    pub accuracy: f64,
    /// Those whose best nucleus is their own, whatever its score.
    pub best_is_own: f64,
    /// Those whose own nucleus is in their receptive field at all (the ceiling).
    pub own_in_rf: f64,
    /// Held-out transcripts.
    pub held_out: usize,
}

/// Runs `model` on the validation graph with `backend` and scores the
/// held-out transcripts. Only the held-out transcripts are scored
/// ([`Backend::score_tile`] on [`TrainingData::validation`]), so the
/// forward pass skips the rows their scores do not depend on; the figures
/// are those of the whole forward pass and scoring (a test checks it).
pub fn validate(
    model: &Model,
    data: &TrainingData,
    score_cut: f32,
    backend: &mut dyn Backend,
) -> Result<Validation> {
    let best = backend.score_tile(model, &data.validation)?;
    let rf = data.receptive_field();
    let (mut correct, mut own_best, mut reach) = (0usize, 0usize, 0usize);
    for (&t, &own) in data.held_out.iter().zip(&data.held_out_nucleus) {
        let t = t as usize;
        let is_own = best.index[t] == own as i32;
        own_best += usize::from(is_own);
        correct += usize::from(is_own && best.score[t] >= score_cut);
        reach += usize::from(rf.index[t * rf.k..(t + 1) * rf.k].contains(&(own as i32)));
    }
    let n = data.held_out.len();
    let fraction = |k: usize| {
        if n == 0 {
            f64::NAN
        } else {
            k as f64 / n as f64
        }
    };
    Ok(Validation {
        accuracy: fraction(correct),
        best_is_own: fraction(own_best),
        own_in_rf: fraction(reach),
        held_out: n,
    })
}
