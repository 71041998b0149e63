//! The statistics `vllm bench serve` prints, computed as numpy computes them: the arithmetic mean,
//! the population standard deviation (`ddof=0`), the median, and percentiles with linear
//! interpolation between closest ranks (numpy's default `method="linear"`). An empty sample gives
//! 0 everywhere, as the client's `np.mean(values or 0)` does.

/// Mean of `values`; 0 when empty.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Population standard deviation (numpy's `np.std` default); 0 when empty.
pub fn std_dev(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let m = mean(values);
    let variance = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64;
    variance.sqrt()
}

/// A sorted copy of a sample, for many percentile queries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sorted(Vec<f64>);

impl Sorted {
    pub fn new(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Sorted(sorted)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn values(&self) -> &[f64] {
        &self.0
    }

    /// The `p`-th percentile (0..=100), numpy's linear method: rank `p/100 · (n−1)`,
    /// interpolated between its neighbours. 0 for an empty sample.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.0.len();
        if n == 0 {
            return 0.0;
        }
        let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
        let low = rank.floor() as usize;
        let high = rank.ceil() as usize;
        let fraction = rank - low as f64;
        self.0[low] + (self.0[high] - self.0[low]) * fraction
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }
}

/// How a percentile is written in labels and keys: integers without a decimal point (`99`,
/// `50`), others as given (`99.9`), as the client's `str(int(p)) if int(p) == p else str(p)`.
pub fn percentile_label(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // np.percentile([1, 2, 3, 4], [0, 25, 50, 90, 99, 100])
        // = [1.0, 1.75, 2.5, 3.7, 3.97, 4.0]
        let sorted = Sorted::new(&[4.0, 1.0, 3.0, 2.0]);
        let expected = [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (90.0, 3.7),
            (99.0, 3.97),
            (100.0, 4.0),
        ];
        for (p, value) in expected {
            assert!((sorted.percentile(p) - value).abs() < 1e-12, "p{p}");
        }
        assert_eq!(Sorted::new(&[7.0]).percentile(99.0), 7.0);
    }

    #[test]
    fn empty_samples_give_zero() {
        assert_eq!(mean(&[]), 0.0);
        assert_eq!(std_dev(&[]), 0.0);
        assert_eq!(Sorted::new(&[]).percentile(99.0), 0.0);
    }

    #[test]
    fn std_is_the_population_one() {
        // np.std([2, 4, 4, 4, 5, 5, 7, 9]) == 2.0
        assert!((std_dev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(99.0), "99");
        assert_eq!(percentile_label(50.0), "50");
        assert_eq!(percentile_label(99.9), "99.9");
    }
}
