//! How long a simulated answer is: the natural length at which the "model" would emit EOS, and
//! the resulting plan (tokens to generate and the finish reason) for one request.
//!
//! Without `ignore_eos` a request stops at a natural length drawn from a configurable
//! distribution (`--natural-output-len`), reported as `finish_reason: "stop"`; if the token limit
//! comes first, or with `ignore_eos`, it stops at the limit with `"length"`. `min_tokens` is
//! honoured as vLLM does (EOS is suppressed until then).

use std::fmt;
use std::str::FromStr;

use super::engine::FinishReason;

/// The distribution of natural (EOS) output lengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NaturalLength {
    /// The model never emits EOS: every request runs to its limit.
    Never,
    /// Always exactly this many tokens.
    Fixed(usize),
    /// Uniform over `low..=high`.
    Uniform { low: usize, high: usize },
    /// Log-normal with this median and σ of the underlying normal (long right tail, like chat
    /// answers).
    LogNormal { median: f64, sigma: f64 },
}

/// Default: median 256 tokens, σ = 1 (so about 1 answer in 6 exceeds ~700 tokens): a typical
/// instruction-tuned chat answer length.
pub const DEFAULT_NATURAL_LENGTH: NaturalLength = NaturalLength::LogNormal {
    median: 256.0,
    sigma: 1.0,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid natural output length `{0}`: expected never, fixed:N, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA"
)]
pub struct NaturalLengthParseError(String);

impl FromStr for NaturalLength {
    type Err = NaturalLengthParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || NaturalLengthParseError(text.to_string());
        let parts: Vec<&str> = text.split(':').collect();
        let int = |s: &str| s.parse::<usize>().map_err(|_| error());
        let float = |s: &str| s.parse::<f64>().map_err(|_| error());
        match parts.as_slice() {
            ["never"] => Ok(NaturalLength::Never),
            ["fixed", n] => Ok(NaturalLength::Fixed(int(n)?.max(1))),
            ["uniform", low, high] => {
                let (low, high) = (int(low)?.max(1), int(high)?);
                if high < low {
                    return Err(error());
                }
                Ok(NaturalLength::Uniform { low, high })
            }
            ["lognormal", median, sigma] => {
                let (median, sigma) = (float(median)?, float(sigma)?);
                if !(median >= 1.0 && sigma >= 0.0) {
                    return Err(error());
                }
                Ok(NaturalLength::LogNormal { median, sigma })
            }
            _ => Err(error()),
        }
    }
}

impl fmt::Display for NaturalLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NaturalLength::Never => write!(f, "never"),
            NaturalLength::Fixed(n) => write!(f, "fixed:{n}"),
            NaturalLength::Uniform { low, high } => write!(f, "uniform:{low}:{high}"),
            NaturalLength::LogNormal { median, sigma } => write!(f, "lognormal:{median}:{sigma}"),
        }
    }
}

impl NaturalLength {
    /// A natural length, or `None` when the model never stops on its own.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Option<usize> {
        match *self {
            NaturalLength::Never => None,
            NaturalLength::Fixed(n) => Some(n),
            NaturalLength::Uniform { low, high } => Some(rng.usize(low..=high)),
            NaturalLength::LogNormal { median, sigma } => {
                // Box–Muller; 1 − u keeps the logarithm finite.
                let (u1, u2) = (1.0 - rng.f64(), rng.f64());
                let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                Some((median * (sigma * normal).exp()).round().max(1.0) as usize)
            }
        }
    }
}

/// Tokens to generate and the finish reason reported when they exist.
pub fn plan_output(
    max_tokens: usize,
    min_tokens: usize,
    ignore_eos: bool,
    natural: &NaturalLength,
    rng: &mut fastrand::Rng,
) -> (usize, FinishReason) {
    let max_tokens = max_tokens.max(1);
    if ignore_eos {
        return (max_tokens, FinishReason::Length);
    }
    match natural.sample(rng) {
        Some(length) if length.max(min_tokens) < max_tokens => {
            (length.max(min_tokens).max(1), FinishReason::Stop)
        }
        _ => (max_tokens, FinishReason::Length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for text in ["never", "fixed:7", "uniform:3:9", "lognormal:256:1"] {
            assert_eq!(text.parse::<NaturalLength>().unwrap().to_string(), text);
        }
        assert!("uniform:9:3".parse::<NaturalLength>().is_err());
        assert!("gamma:1".parse::<NaturalLength>().is_err());
    }

    #[test]
    fn ignore_eos_runs_to_the_limit() {
        let mut rng = fastrand::Rng::with_seed(1);
        let plan = plan_output(100, 0, true, &NaturalLength::Fixed(5), &mut rng);
        assert_eq!(plan, (100, FinishReason::Length));
        let plan = plan_output(100, 0, false, &NaturalLength::Fixed(5), &mut rng);
        assert_eq!(plan, (5, FinishReason::Stop));
        let plan = plan_output(100, 20, false, &NaturalLength::Fixed(5), &mut rng);
        assert_eq!(plan, (20, FinishReason::Stop));
        let plan = plan_output(4, 0, false, &NaturalLength::Fixed(5), &mut rng);
        assert_eq!(plan, (4, FinishReason::Length));
    }

    #[test]
    fn lognormal_median_is_about_right() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut samples: Vec<usize> = (0..4001)
            .map(|_| DEFAULT_NATURAL_LENGTH.sample(&mut rng).unwrap())
            .collect();
        samples.sort_unstable();
        let median = samples[2000];
        assert!((220..300).contains(&median), "{median}");
    }
}
