//! The random dataset of `vllm bench serve`: a shared prefix of `--random-prefix-len` tokens, then
//! a body of an input length drawn per request, and an output length drawn per request.
//!
//! Two rules for the range ratio `r` exist ([`RangeSemantics`]):
//! - **current** (vLLM ≥ 0.8.5): lengths uniform in `[⌊L·(1−r)⌋, ⌈L·(1+r)⌉]`, `r` in `[0, 1)`;
//! - **legacy** (the older `benchmark_serving.py`, which the seed ran): lengths uniform in
//!   `[⌊L·r⌋, L]`, `r` in `[0, 1]`.
//!
//! Output lengths are at least 1. The input length needs no special-token adjustment: the
//! simulated Qwen tokenizer adds none. Bodies are exact-length prompts from per-request seeds, so
//! two bodies share no prefix block: only the shared prefix is a prefix-cache signal, as in the
//! client, whose bodies are runs of consecutive vocabulary ids from random offsets.

use super::{DatasetError, Prompt, Session, Workload, invalid, prompt_seed};
use crate::sim::tokenizer::prompt_with_exact_tokens;

/// Which meaning `--random-range-ratio` has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeSemantics {
    /// `[⌊L(1−r)⌋, ⌈L(1+r)⌉]` (vLLM ≥ 0.8.5).
    #[default]
    Current,
    /// `[⌊L·r⌋, L]` (`benchmark_serving.py` before v0.8.5).
    Legacy,
}

/// The random dataset's parameters (the client's flag names without `--random-`).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomSpec {
    pub num_prompts: usize,
    pub prefix_len: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub semantics: RangeSemantics,
}

/// Seed purposes, so that the prefix and the bodies never reuse a prompt seed.
const PREFIX_PURPOSE: u64 = 1;
const BODY_PURPOSE: u64 = 2;

/// The inclusive range of lengths the rule allows for nominal length `length`.
pub fn length_range(length: usize, ratio: f64, semantics: RangeSemantics) -> (usize, usize) {
    let nominal = length as f64;
    match semantics {
        RangeSemantics::Current => (
            (nominal * (1.0 - ratio)).floor() as usize,
            (nominal * (1.0 + ratio)).ceil() as usize,
        ),
        RangeSemantics::Legacy => ((nominal * ratio).floor() as usize, length),
    }
}

impl RandomSpec {
    fn validate(&self) -> Result<(), DatasetError> {
        let ok = match self.semantics {
            RangeSemantics::Current => (0.0..1.0).contains(&self.range_ratio),
            RangeSemantics::Legacy => (0.0..=1.0).contains(&self.range_ratio),
        };
        if !ok {
            return Err(invalid(
                "random-range-ratio",
                format!(
                    "{} is outside [0, 1){} for the {:?} rule",
                    self.range_ratio,
                    if self.semantics == RangeSemantics::Legacy {
                        " (or 1 itself)"
                    } else {
                        ""
                    },
                    self.semantics
                ),
            ));
        }
        if self.num_prompts == 0 {
            return Err(invalid("num-prompts", "must be at least 1"));
        }
        Ok(())
    }

    /// Draws `(input_len, output_len)` for every request, in dataset order.
    pub fn lengths(&self, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (in_low, in_high) = length_range(self.input_len, self.range_ratio, self.semantics);
        let (out_low, out_high) = length_range(self.output_len, self.range_ratio, self.semantics);
        (0..self.num_prompts)
            .map(|_| {
                let input = rng.usize(in_low..=in_high);
                let output = rng.usize(out_low..=out_high).max(1);
                (input, output)
            })
            .collect()
    }

    /// The shared prefix text (`prefix_len` tokens).
    pub fn prefix(&self, seed: u64) -> String {
        prompt_with_exact_tokens(self.prefix_len, prompt_seed(seed, PREFIX_PURPOSE, 0))
    }

    /// The prompts and output lengths, in dataset order.
    pub fn requests(&self, seed: u64) -> Result<Vec<(String, usize)>, DatasetError> {
        self.validate()?;
        let prefix = self.prefix(seed);
        Ok(self
            .lengths(seed)
            .into_iter()
            .enumerate()
            .map(|(index, (input, output))| {
                let body =
                    prompt_with_exact_tokens(input, prompt_seed(seed, BODY_PURPOSE, index as u64));
                (format!("{prefix}{body}"), output)
            })
            .collect())
    }

    /// The workload: one single-turn session per prompt.
    pub fn workload(&self, seed: u64) -> Result<Workload, DatasetError> {
        let sessions = self
            .requests(seed)?
            .into_iter()
            .enumerate()
            .map(|(index, (prompt, output))| Session::single(index, Prompt::Text(prompt), output))
            .collect();
        Ok(Workload {
            description: format!(
                "random: prefix {} + input {} / output {} tokens, range ratio {} ({:?} rule), {} prompts",
                self.prefix_len,
                self.input_len,
                self.output_len,
                self.range_ratio,
                self.semantics,
                self.num_prompts
            ),
            sessions,
            forces_ignore_eos: self.semantics == RangeSemantics::Current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::{count_tokens, tokenize};

    fn seed_spec(semantics: RangeSemantics) -> RandomSpec {
        RandomSpec {
            num_prompts: 300,
            prefix_len: 10,
            input_len: 1550,
            output_len: 1800,
            range_ratio: 0.2,
            semantics,
        }
    }

    #[test]
    fn the_seed_ranges_match_the_reference_table() {
        // shared/reference/benchmark-client.md §3, "The seed's run".
        assert_eq!(
            length_range(1550, 0.2, RangeSemantics::Current),
            (1240, 1860)
        );
        assert_eq!(
            length_range(1800, 0.2, RangeSemantics::Current),
            (1440, 2160)
        );
        assert_eq!(length_range(1550, 0.2, RangeSemantics::Legacy), (310, 1550));
        assert_eq!(length_range(1800, 0.2, RangeSemantics::Legacy), (360, 1800));
        // The old default ratio 1.0 meant a fixed length.
        assert_eq!(
            length_range(1024, 1.0, RangeSemantics::Legacy),
            (1024, 1024)
        );
    }

    #[test]
    fn prompts_have_exact_lengths_within_the_rule() {
        for semantics in [RangeSemantics::Current, RangeSemantics::Legacy] {
            let spec = seed_spec(semantics);
            let (in_low, in_high) = length_range(1550, 0.2, semantics);
            let (out_low, out_high) = length_range(1800, 0.2, semantics);
            let lengths = spec.lengths(7);
            let requests = spec.requests(7).unwrap();
            assert_eq!(requests.len(), 300);
            for ((prompt, output), (input, drawn_output)) in requests.iter().zip(&lengths) {
                assert_eq!(count_tokens(prompt), 10 + input);
                assert_eq!(output, drawn_output);
                assert!((in_low..=in_high).contains(input));
                assert!((out_low..=out_high).contains(output));
            }
            // The draws cover the range, not one corner of it.
            let min = lengths.iter().map(|l| l.0).min().unwrap();
            let max = lengths.iter().map(|l| l.0).max().unwrap();
            assert!(min < in_low + (in_high - in_low) / 10);
            assert!(max > in_high - (in_high - in_low) / 10);
        }
    }

    #[test]
    fn only_the_prefix_is_shared() {
        let spec = seed_spec(RangeSemantics::Current);
        let requests = spec.requests(1).unwrap();
        let first = tokenize(&requests[0].0);
        let second = tokenize(&requests[1].0);
        let common = first
            .iter()
            .zip(&second)
            .take_while(|(a, b)| a == b)
            .count();
        assert_eq!(common, 10);
    }

    #[test]
    fn the_same_seed_gives_the_same_dataset_and_another_does_not() {
        let spec = seed_spec(RangeSemantics::Legacy);
        assert_eq!(spec.requests(3).unwrap(), spec.requests(3).unwrap());
        assert_ne!(spec.requests(3).unwrap(), spec.requests(4).unwrap());
    }

    #[test]
    fn outputs_are_at_least_one_and_ratios_are_checked() {
        let spec = RandomSpec {
            num_prompts: 50,
            prefix_len: 0,
            input_len: 4,
            output_len: 1,
            range_ratio: 0.9,
            semantics: RangeSemantics::Current,
        };
        assert!(spec.lengths(0).iter().all(|&(_, output)| output >= 1));
        let bad = RandomSpec {
            range_ratio: 1.0,
            ..spec.clone()
        };
        assert!(bad.requests(0).is_err());
        let legacy_one = RandomSpec {
            range_ratio: 1.0,
            semantics: RangeSemantics::Legacy,
            ..spec
        };
        assert!(legacy_one.requests(0).is_ok());
    }

    #[test]
    fn only_the_current_rule_forces_ignore_eos() {
        assert!(
            seed_spec(RangeSemantics::Current)
                .workload(0)
                .unwrap()
                .forces_ignore_eos
        );
        assert!(
            !seed_spec(RangeSemantics::Legacy)
                .workload(0)
                .unwrap()
                .forces_ignore_eos
        );
    }
}
