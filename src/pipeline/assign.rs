//! Stage `assign` (docs/contract.md §8): the score cut, its automatic
//! choice, which transcripts join their best nucleus, and the score
//! statistics of the log.

use super::score_tiles::TileScores;
use super::ScoreCut;

/// The cut in use and who passes it.
pub struct Assigned {
    /// Score cut in use (the knee with `--score-cut auto`).
    pub cut: f32,
    /// Statistics of the best scores.
    pub stats: ScoreStats,
    /// Per kept transcript: whether it joins its best nucleus.
    pub assigned: Vec<bool>,
}

/// Applies `score_cut` to the best matches.
pub fn run(scores: &TileScores, score_cut: ScoreCut) -> Assigned {
    let stats = statistics(&scores.best_score);
    let cut = cut_of(&stats, score_cut);
    let assigned = scores
        .best_score
        .iter()
        .zip(&scores.best_index)
        .map(|(&s, &n)| n >= 0 && s >= cut)
        .collect();
    Assigned {
        cut,
        stats,
        assigned,
    }
}

/// The score cut in use: the fixed one, or the knee of the scores with
/// `--score-cut auto` (the default cut without a knee).
pub fn cut_of(stats: &ScoreStats, score_cut: ScoreCut) -> f32 {
    match score_cut {
        ScoreCut::Fixed(v) => v,
        ScoreCut::Auto => stats.knee.map_or(crate::defaults::SCORE_CUT, |k| k as f32),
    }
}

/// The knee of the sorted best-score curve (Kneedle, concave increasing):
/// with scores sorted ascending, x = score and y = rank, both normalised to
/// [0, 1], the knee is the first argmax of y − x. Returns the score there,
/// or `None` for fewer than two distinct scores.
pub fn knee(scores: &[f32]) -> Option<f32> {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let mut scan = KneeScan::new(sorted.len(), *sorted.first()?, *sorted.last()?);
    sorted.iter().for_each(|&s| scan.see(s));
    scan.finish()
}

/// [`knee`] over scores seen one by one in ascending order, `n` of them
/// from `lo` to `hi`.
struct KneeScan {
    n: usize,
    lo: f32,
    hi: f32,
    rank: usize,
    best: (f64, f32),
}

impl KneeScan {
    fn new(n: usize, lo: f32, hi: f32) -> Self {
        KneeScan {
            n,
            lo,
            hi,
            rank: 0,
            best: (f64::NEG_INFINITY, lo),
        }
    }

    fn see(&mut self, s: f32) {
        if self.hi > self.lo {
            let x = (s - self.lo) as f64 / (self.hi - self.lo) as f64;
            let y = self.rank as f64 / (self.n - 1) as f64;
            if y - x > self.best.0 {
                self.best = (y - x, s);
            }
        }
        self.rank += 1;
    }

    fn finish(self) -> Option<f32> {
        (self.hi > self.lo).then_some(self.best.1)
    }
}

/// Summary statistics of the best scores (docs/contract.md §11).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScoreStats {
    /// Number of transcripts with a candidate.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Percentiles 25, 50, 75, 90, 95, 99 (nearest rank).
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Knee of the sorted curve.
    pub knee: Option<f64>,
}

/// Statistics of the finite scores.
pub fn statistics(scores: &[f32]) -> ScoreStats {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else {
        return ScoreStats::default();
    };
    let ascending = |see: &mut dyn FnMut(f32)| {
        sorted.iter().for_each(|&s| see(s));
        Ok::<(), std::convert::Infallible>(())
    };
    match statistics_of_sorted(sorted.len(), lo, hi, ascending) {
        Ok(stats) => stats,
        Err(never) => match never {},
    }
}

/// [`statistics`] of `n` finite scores from `lo` to `hi`, which `ascending`
/// hands to its argument one by one in ascending order ([`f32::total_cmp`])
/// each time it is called (twice: the mean is needed for the spread), so
/// that they need not be held at once; the same sums in the same order.
pub fn statistics_of_sorted<E>(
    n: usize,
    lo: f32,
    hi: f32,
    mut ascending: impl FnMut(&mut dyn FnMut(f32)) -> Result<(), E>,
) -> Result<ScoreStats, E> {
    if n == 0 {
        return Ok(ScoreStats::default());
    }
    let rank = |p: f64| ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
    let percentiles = [25.0, 50.0, 75.0, 90.0, 95.0, 99.0];
    let ranks = percentiles.map(rank);
    let mut at_rank = [0.0f64; 6];
    // Sums start at −0.0 as `Iterator::sum` does.
    let mut sum = -0.0f64;
    let mut knee = KneeScan::new(n, lo, hi);
    let mut i = 0usize;
    ascending(&mut |s| {
        sum += s as f64;
        for (r, v) in ranks.iter().zip(at_rank.iter_mut()) {
            if *r == i {
                *v = s as f64;
            }
        }
        knee.see(s);
        i += 1;
    })?;
    let mean = sum / n as f64;
    let mut squares = -0.0f64;
    ascending(&mut |s| squares += (s as f64 - mean).powi(2))?;
    let var = squares / n as f64;
    let [p25, p50, p75, p90, p95, p99] = at_rank;
    Ok(ScoreStats {
        n,
        mean,
        std: var.sqrt(),
        min: lo as f64,
        max: hi as f64,
        p25,
        p50,
        p75,
        p90,
        p95,
        p99,
        knee: knee.finish().map(f64::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knee_of_a_bent_curve_is_at_the_bend() {
        // Half the scores near 0.1, half spread between 0.8 and 1.0.
        let mut s: Vec<f32> = (0..100).map(|i| 0.1 + i as f32 * 1e-4).collect();
        s.extend((0..100).map(|i| 0.8 + i as f32 * 0.002));
        let k = knee(&s).unwrap();
        assert!((0.1..0.12).contains(&k), "{k}");
        assert_eq!(knee(&[0.5, 0.5]), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        let st = statistics(&s);
        assert_eq!((st.p25, st.p50, st.p99, st.max), (25.0, 50.0, 99.0, 100.0));
        assert!((st.mean - 50.5).abs() < 1e-9);
    }
}
