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
    let cut = match score_cut {
        ScoreCut::Fixed(v) => v,
        ScoreCut::Auto => stats.knee.map_or(crate::defaults::SCORE_CUT, |k| k as f32),
    };
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

/// The knee of the sorted best-score curve (Kneedle, concave increasing):
/// with scores sorted ascending, x = score and y = rank, both normalised to
/// [0, 1], the knee is the first argmax of y − x. Returns the score there,
/// or `None` for fewer than two distinct scores.
pub fn knee(scores: &[f32]) -> Option<f32> {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let (lo, hi) = (*sorted.first()?, *sorted.last()?);
    if hi <= lo {
        return None;
    }
    let n = sorted.len();
    let mut best = (f64::NEG_INFINITY, lo);
    for (rank, &s) in sorted.iter().enumerate() {
        let x = (s - lo) as f64 / (hi - lo) as f64;
        let y = rank as f64 / (n - 1) as f64;
        if y - x > best.0 {
            best = (y - x, s);
        }
    }
    Some(best.1)
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
    if sorted.is_empty() {
        return ScoreStats::default();
    }
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let mean = sorted.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
    let var = sorted
        .iter()
        .map(|&s| (s as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let pct = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
    ScoreStats {
        n,
        mean,
        std: var.sqrt(),
        min: sorted[0] as f64,
        max: sorted[n - 1] as f64,
        p25: pct(25.0),
        p50: pct(50.0),
        p75: pct(75.0),
        p90: pct(90.0),
        p95: pct(95.0),
        p99: pct(99.0),
        knee: knee(&sorted).map(f64::from),
    }
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
