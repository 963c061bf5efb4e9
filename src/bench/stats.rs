//! Order statistics of a set of samples (milliseconds).

use serde::{Deserialize, Serialize};

/// Summary of one series of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min: f64,
    /// Median (the mean of the two middle samples for an even count).
    pub median: f64,
    /// 95th percentile, linearly interpolated between closest ranks (numpy's default).
    pub p95: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The `q`-th percentile (`0..=100`) of sorted samples, linearly interpolated between the
/// closest ranks; `None` for no samples.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = last as f64 * q.clamp(0.0, 100.0) / 100.0;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// Summarize samples; `None` when there are none (or one is not a finite number).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut xs = samples.to_vec();
    xs.sort_by(f64::total_cmp);
    Some(Summary {
        n: xs.len(),
        min: *xs.first()?,
        median: percentile(&xs, 50.0)?,
        p95: percentile(&xs, 95.0)?,
        max: *xs.last()?,
        mean: xs.iter().sum::<f64>() / xs.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
    }

    #[test]
    fn p95_interpolates_like_numpy() {
        // numpy.percentile(range(1, 21), 95) == 19.05
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = summarize(&xs).unwrap();
        assert!((s.p95 - 19.05).abs() < 1e-9, "{}", s.p95);
        assert_eq!((s.min, s.max, s.n), (1.0, 20.0, 20));
        assert!((s.mean - 10.5).abs() < 1e-9);
        // numpy.percentile([10, 20], 95) == 19.5
        assert!((percentile(&[10.0, 20.0], 95.0).unwrap() - 19.5).abs() < 1e-9);
    }

    #[test]
    fn one_sample_and_no_samples() {
        let s = summarize(&[7.5]).unwrap();
        assert_eq!((s.median, s.p95, s.min, s.max), (7.5, 7.5, 7.5, 7.5));
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
        assert!(percentile(&[], 50.0).is_none());
    }
}
