//! The LoRA mix: which model each request names. A fraction of requests goes to the base model;
//! the rest pick one of the adapters with a Zipf-skewed popularity (adapter of rank *k* has weight
//! `1 / k^s`), so a few adapters are hot and the rest form a long tail: the case where an endpoint
//! with `--max-loras` slots cannot hold every adapter and the router decides how often adapters
//! are swapped in. `s = 0` is a uniform choice; `round-robin` cycles through the adapters, as
//! `vllm bench serve --lora-assignment round-robin` does.

use super::{DatasetError, invalid};

/// How adapters are assigned to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoraAssignment {
    /// Zipf popularity with exponent `--lora-zipf-exponent` (0 = uniform, as vLLM's `random`).
    Zipf,
    /// Each request takes the next adapter in order.
    RoundRobin,
}

/// The mix's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraMixSpec {
    pub adapters: Vec<String>,
    pub base_fraction: f64,
    pub assignment: LoraAssignment,
    pub zipf_exponent: f64,
}

const MIX_PURPOSE: u64 = 31;

impl LoraMixSpec {
    /// One entry per request: `None` for the base model, otherwise the adapter's name.
    pub fn assign(&self, requests: usize, seed: u64) -> Result<Vec<Option<String>>, DatasetError> {
        if self.adapters.is_empty() {
            return Err(invalid("lora-modules", "name at least one adapter"));
        }
        if !(0.0..=1.0).contains(&self.base_fraction) {
            return Err(invalid("lora-base-fraction", "must be within [0, 1]"));
        }
        let weights: Vec<f64> = (1..=self.adapters.len())
            .map(|rank| 1.0 / (rank as f64).powf(self.zipf_exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut rng = fastrand::Rng::with_seed(super::prompt_seed(seed, MIX_PURPOSE, 0));
        let mut next = 0usize;
        Ok((0..requests)
            .map(|_| {
                if rng.f64() < self.base_fraction {
                    return None;
                }
                let pick = match self.assignment {
                    LoraAssignment::RoundRobin => {
                        next += 1;
                        (next - 1) % self.adapters.len()
                    }
                    LoraAssignment::Zipf => {
                        let mut draw = rng.f64() * total;
                        let mut chosen = weights.len() - 1;
                        for (i, w) in weights.iter().enumerate() {
                            if draw < *w {
                                chosen = i;
                                break;
                            }
                            draw -= w;
                        }
                        chosen
                    }
                };
                Some(self.adapters[pick].clone())
            })
            .collect())
    }

    /// The expected share of each adapter among adapter requests (for reports).
    pub fn popularity(&self) -> Vec<f64> {
        let weights: Vec<f64> = (1..=self.adapters.len())
            .map(|rank| 1.0 / (rank as f64).powf(self.zipf_exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(assignment: LoraAssignment) -> LoraMixSpec {
        LoraMixSpec {
            adapters: (1..=8).map(|i| format!("adapter-{i}")).collect(),
            base_fraction: 0.25,
            assignment,
            zipf_exponent: 1.0,
        }
    }

    #[test]
    fn zipf_is_skewed_and_the_base_share_holds() {
        let picks = spec(LoraAssignment::Zipf).assign(20_000, 3).unwrap();
        let base = picks.iter().filter(|p| p.is_none()).count() as f64 / 20_000.0;
        assert!((base - 0.25).abs() < 0.02, "base share {base}");
        let count = |name: &str| picks.iter().filter(|p| p.as_deref() == Some(name)).count();
        // Rank 1 has weight 1, rank 8 has 1/8.
        let ratio = count("adapter-1") as f64 / count("adapter-8") as f64;
        assert!((6.0..10.0).contains(&ratio), "rank-1/rank-8 ratio {ratio}");
        let popularity = spec(LoraAssignment::Zipf).popularity();
        assert!((popularity.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn round_robin_cycles_and_seeds_repeat() {
        let mut plan = spec(LoraAssignment::RoundRobin);
        plan.base_fraction = 0.0;
        let picks = plan.assign(10, 0).unwrap();
        assert_eq!(picks[0].as_deref(), Some("adapter-1"));
        assert_eq!(picks[8].as_deref(), Some("adapter-1"));
        let zipf = spec(LoraAssignment::Zipf);
        assert_eq!(zipf.assign(100, 5).unwrap(), zipf.assign(100, 5).unwrap());
    }
}
