//! Reusable scorers and the weighted sum that ranks endpoints.
//!
//! A scorer gives every endpoint of a pool a score in `0..=1` (1 is best) from the request, the
//! pool view and the load estimates. [`WeightedScorers`] sums weighted scores and ranks the
//! endpoints best first, breaking exact ties at random so equal endpoints share traffic instead of
//! the first one taking it all. A strategy is usually a few lines: pick scorers and weights, maybe
//! filter, rank.

use crate::endpoint::PoolView;
use crate::load::Load;
use crate::request::RequestView;
use crate::strategy::Candidates;

/// What a scorer sees.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInput<'a> {
    /// The request.
    pub request: &'a RequestView<'a>,
    /// The pool.
    pub pool: &'a PoolView<'a>,
    /// Load estimates, one per endpoint of `pool`.
    pub loads: &'a [Load],
}

/// Scores every endpoint of a pool.
pub trait Scorer: Send + Sync {
    /// A short name, for debug output.
    fn name(&self) -> &'static str;
    /// Write one score in `0..=1` per endpoint into `out` (same order as `input.pool.endpoints`).
    fn score(&self, input: &ScoreInput<'_>, out: &mut [f64]);
}

/// Scores `(max - v) / (max - min)` over the values that `usable` keeps; 1 for all when they are
/// equal; 0 for values it does not keep.
fn inverse_min_max(values: impl Iterator<Item = (f64, bool)> + Clone, out: &mut [f64]) {
    let kept = values.clone().filter(|(_, keep)| *keep).map(|(v, _)| v);
    let (min, max) = kept.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    for (slot, (value, keep)) in out.iter_mut().zip(values) {
        *slot = if !keep {
            0.0
        } else if max <= min + f64::EPSILON {
            1.0
        } else {
            (max - value) / (max - min)
        };
    }
}

/// Shorter queues score higher (min-max normalised over endpoints with fresh metrics, like the
/// Inference Extension's queue scorer, but on the queue corrected by dispatches since the scrape).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueScorer;

impl Scorer for QueueScorer {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn score(&self, input: &ScoreInput<'_>, out: &mut [f64]) {
        inverse_min_max(input.loads.iter().map(|l| (l.queue, l.fresh)), out);
    }
}

/// Lower KV-cache usage scores higher: `1 - usage` (0 for stale metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct KvCacheScorer;

impl Scorer for KvCacheScorer {
    fn name(&self) -> &'static str {
        "kv-cache"
    }

    fn score(&self, input: &ScoreInput<'_>, out: &mut [f64]) {
        for (slot, load) in out.iter_mut().zip(input.loads) {
            *slot = if load.fresh { 1.0 - load.kv } else { 0.0 };
        }
    }
}

/// Fewer requests in flight from this gateway scores higher (min-max normalised). The gateway's
/// own count is exact and never stale, so this scorer keeps balancing when metrics are missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct InFlightScorer;

impl Scorer for InFlightScorer {
    fn name(&self) -> &'static str {
        "in-flight"
    }

    fn score(&self, input: &ScoreInput<'_>, out: &mut [f64]) {
        inverse_min_max(
            input.loads.iter().map(|l| (f64::from(l.in_flight), true)),
            out,
        );
    }
}

/// LoRA residency of the request's target model: 1.0 where the adapter is running, 0.8 where a
/// slot is free, 0.6 where it is waiting, 0 otherwise (the Inference Extension's tiers). Requests
/// for a base model (a name some endpoint reports as its `model_name`) score 1 everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraAffinityScorer;

/// Whether `target` is a base model some endpoint serves, rather than an adapter.
pub fn is_base_model(pool: &PoolView<'_>, target: &str) -> bool {
    pool.endpoints
        .iter()
        .filter_map(|e| e.metrics?.model_name.as_deref())
        .any(|name| name == target)
}

impl Scorer for LoraAffinityScorer {
    fn name(&self) -> &'static str {
        "lora-affinity"
    }

    fn score(&self, input: &ScoreInput<'_>, out: &mut [f64]) {
        let target = input.request.target_model;
        let base = is_base_model(input.pool, target);
        for (slot, endpoint) in out.iter_mut().zip(input.pool.endpoints) {
            *slot = match endpoint.metrics.and_then(|m| m.lora.as_ref()) {
                _ if base => 1.0,
                None => 0.0,
                Some(lora) if lora.is_running(target) => 1.0,
                Some(lora) if lora.has_free_slot() => 0.8,
                Some(lora) if lora.is_waiting(target) => 0.6,
                Some(_) => 0.0,
            };
        }
    }
}

/// A weighted sum of scorers.
pub struct WeightedScorers {
    scorers: Vec<(Box<dyn Scorer>, f64)>,
}

impl std::fmt::Debug for WeightedScorers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (scorer, weight) in &self.scorers {
            list.entry(&(scorer.name(), weight));
        }
        list.finish()
    }
}

impl WeightedScorers {
    /// No scorers yet.
    pub fn new() -> Self {
        Self {
            scorers: Vec::new(),
        }
    }

    /// Add `scorer` with `weight` (a weight of 0 leaves it out).
    pub fn with(mut self, scorer: impl Scorer + 'static, weight: f64) -> Self {
        if weight > 0.0 {
            self.scorers.push((Box::new(scorer), weight));
        }
        self
    }

    /// `(name, weight)` of every scorer, for debug output.
    pub fn describe(&self) -> Vec<(&'static str, f64)> {
        self.scorers.iter().map(|(s, w)| (s.name(), *w)).collect()
    }

    /// The weighted total per endpoint, added onto `totals`.
    pub fn add_scores(&self, input: &ScoreInput<'_>, totals: &mut [f64]) {
        let mut scratch = vec![0.0; totals.len()];
        for (scorer, weight) in &self.scorers {
            scorer.score(input, &mut scratch);
            for (total, score) in totals.iter_mut().zip(&scratch) {
                *total += weight * score;
            }
        }
    }

    /// The weighted total per endpoint.
    pub fn totals(&self, input: &ScoreInput<'_>) -> Vec<f64> {
        let mut totals = vec![0.0; input.pool.len()];
        self.add_scores(input, &mut totals);
        totals
    }
}

impl Default for WeightedScorers {
    fn default() -> Self {
        Self::new()
    }
}

/// Endpoints ranked by `totals`, best first; equal totals in random order.
pub fn rank(totals: &[f64]) -> Candidates {
    let mut order: Vec<usize> = (0..totals.len()).collect();
    fastrand::shuffle(&mut order);
    // A stable sort keeps the shuffled order among equals.
    order.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]));
    Candidates::new(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointMetrics, LoraState};
    use crate::load::{LoadConfig, loads};
    use crate::testing::{pool_of, request};

    fn metrics(waiting: u32, kv: f64, lora: Option<LoraState>) -> EndpointMetrics {
        EndpointMetrics {
            waiting,
            kv_usage: kv,
            lora,
            model_name: Some("base".into()),
            ..Default::default()
        }
    }

    #[test]
    fn queue_kv_and_in_flight_scores() {
        let (_ids, mut views) = pool_of(3);
        let m = [
            metrics(0, 0.5, None),
            metrics(4, 0.1, None),
            metrics(2, 0.9, None),
        ];
        for (v, m) in views.iter_mut().zip(&m) {
            v.metrics = Some(Box::leak(Box::new(m.clone())));
            v.metrics_age = Some(std::time::Duration::ZERO);
        }
        views[1].in_flight = 6;
        views[2].in_flight = 3;
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let headers = http::HeaderMap::new();
        let req = request(&headers);
        let loads = loads(&pool, &LoadConfig::default());
        let input = ScoreInput {
            request: &req,
            pool: &pool,
            loads: &loads,
        };
        let mut out = [0.0; 3];
        QueueScorer.score(&input, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.5]);
        KvCacheScorer.score(&input, &mut out);
        assert_eq!(out, [0.5, 0.9, 1.0 - 0.9]);
        InFlightScorer.score(&input, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.5]);
        let totals = WeightedScorers::new()
            .with(QueueScorer, 2.0)
            .with(KvCacheScorer, 2.0)
            .totals(&input);
        assert_eq!(rank(&totals).as_slice(), &[0, 1, 2]);
    }

    #[test]
    fn lora_tiers() {
        let (_ids, mut views) = pool_of(4);
        let lora = |running: &[&str], waiting: &[&str]| LoraState {
            max_loras: 2,
            running: running.iter().map(|s| s.to_string()).collect(),
            waiting: waiting.iter().map(|s| s.to_string()).collect(),
        };
        let m = [
            metrics(0, 0.0, Some(lora(&["a", "x"], &[]))),
            metrics(0, 0.0, Some(lora(&["x"], &[]))),
            metrics(0, 0.0, Some(lora(&["x", "y"], &["a"]))),
            metrics(0, 0.0, Some(lora(&["x", "y"], &[]))),
        ];
        for (v, m) in views.iter_mut().zip(&m) {
            v.metrics = Some(Box::leak(Box::new(m.clone())));
            v.metrics_age = Some(std::time::Duration::ZERO);
        }
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let headers = http::HeaderMap::new();
        let mut req = request(&headers);
        req.target_model = "a";
        let loads = loads(&pool, &LoadConfig::default());
        let input = ScoreInput {
            request: &req,
            pool: &pool,
            loads: &loads,
        };
        let mut out = [0.0; 4];
        LoraAffinityScorer.score(&input, &mut out);
        assert_eq!(out, [1.0, 0.8, 0.6, 0.0]);
        req.target_model = "base";
        let input = ScoreInput {
            request: &req,
            pool: &pool,
            loads: &loads,
        };
        LoraAffinityScorer.score(&input, &mut out);
        assert_eq!(
            out, [1.0; 4],
            "base-model requests do not care about adapters"
        );
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut firsts = [0usize; 3];
        for _ in 0..3000 {
            firsts[rank(&[1.0, 1.0, 1.0]).first().unwrap()] += 1;
        }
        assert!(firsts.iter().all(|&n| n > 800), "{firsts:?}");
        assert_eq!(rank(&[0.1, 0.3, 0.2]).as_slice(), &[1, 2, 0]);
    }
}
