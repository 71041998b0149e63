//! What a pool serves beyond its endpoints: model names (from `InferenceModel`s), model rewrites
//! (from `InferenceModelRewrite`s) and objectives (from `InferenceObjective`s), and the weighted
//! draw of a target model.

use std::collections::HashMap;
use std::sync::Arc;

use plugins::Criticality;

use crate::config::ObjectKey;

/// One weighted target model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetModel {
    /// The name sent upstream.
    pub name: String,
    /// Relative weight (at least 1).
    pub weight: u32,
}

/// Targets with their weights, drawn at random in proportion to them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WeightedTargets {
    targets: Vec<TargetModel>,
    total_weight: u64,
}

impl serde::Serialize for WeightedTargets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.targets.serialize(s)
    }
}

impl WeightedTargets {
    /// Targets whose weights are at least 1.
    pub fn new(targets: Vec<TargetModel>) -> Self {
        let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
        Self {
            targets,
            total_weight,
        }
    }

    /// Whether there is no target.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, in declaration order.
    pub fn targets(&self) -> &[TargetModel] {
        &self.targets
    }

    /// The target whose weight range holds `roll` (uniform in `0..total weight`); `None` when
    /// there is no target.
    pub fn target_for_roll(&self, roll: u64) -> Option<&str> {
        let mut remaining = roll;
        for target in &self.targets {
            let weight = u64::from(target.weight);
            if remaining < weight {
                return Some(&target.name);
            }
            remaining -= weight;
        }
        None
    }

    /// A target drawn by weight; `None` when there is no target.
    pub fn draw(&self) -> Option<&str> {
        if self.total_weight == 0 {
            return None;
        }
        self.target_for_roll(fastrand::u64(0..self.total_weight))
    }
}

/// A model name clients may ask a pool for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelEntry {
    /// The name in the request's `model` field.
    pub model_name: String,
    /// The `InferenceModel` that declares it.
    pub object: ObjectKey,
    /// Its criticality (Standard when unset).
    #[serde(serialize_with = "serialize_criticality")]
    pub criticality: Criticality,
    /// Weighted targets; empty means "send as requested".
    pub targets: WeightedTargets,
}

fn serialize_criticality<S: serde::Serializer>(c: &Criticality, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.as_str())
}

impl ModelEntry {
    /// An entry; `targets` must have weights of at least 1.
    pub fn new(
        model_name: String,
        object: ObjectKey,
        criticality: Criticality,
        targets: Vec<TargetModel>,
    ) -> Self {
        Self {
            model_name,
            object,
            criticality,
            targets: WeightedTargets::new(targets),
        }
    }
}

/// One `InferenceModelRewrite` rule as the request path applies it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RewriteRule {
    /// The rewrite that declares it.
    pub object: ObjectKey,
    /// Its position in the object's `spec.rules`.
    pub rule: usize,
    /// The models a matching request is sent with (at least one).
    pub targets: WeightedTargets,
}

/// A pool's model rewrites, merged from every `InferenceModelRewrite` that names it, with the
/// precedence already applied: per model name the one rule that wins, and the generic rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// Rules with an `Exact` match, by the model name they match.
    pub exact: HashMap<String, Arc<RewriteRule>>,
    /// The rule with empty `matches`, which matches every request no exact rule matched.
    pub generic: Option<Arc<RewriteRule>>,
}

impl Rewrites {
    /// The rule for a request asking for `model` (`None`: the body has no `model`): an exact match
    /// first, else the generic rule.
    pub fn rule_for(&self, model: Option<&str>) -> Option<&Arc<RewriteRule>> {
        model
            .and_then(|m| self.exact.get(m))
            .or(self.generic.as_ref())
    }

    /// Whether the pool has no rewrite.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.generic.is_none()
    }
}

/// An `InferenceObjective`: the priority of the requests that name it in
/// `x-llm-d-inference-objective`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Objective {
    /// The object (its name is what clients send).
    pub object: ObjectKey,
    /// `spec.priority`, `0` when unset.
    pub priority: i32,
    /// How long its requests may wait in a flow-control queue, when the objective's annotation
    /// `flow-control.inference-gateway.dev/ttl-ms` sets it (else the pool's `ttl-ms`).
    pub ttl: Option<std::time::Duration>,
}

/// Everything a pool serves beyond its endpoints: the model names it declares, its rewrites and
/// its objectives.
#[derive(Debug, Clone, Default)]
pub struct PoolModels {
    /// InferenceModels by model name.
    pub models: HashMap<String, Arc<ModelEntry>>,
    /// InferenceModelRewrites, merged.
    pub rewrites: Rewrites,
    /// InferenceObjectives by name.
    pub objectives: HashMap<String, Arc<Objective>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Kind;

    fn entry(targets: &[(&str, u32)]) -> ModelEntry {
        ModelEntry::new(
            "m".into(),
            ObjectKey::new(Kind::InferenceModel, "default", "m"),
            Criticality::Critical,
            targets
                .iter()
                .map(|(name, weight)| TargetModel {
                    name: (*name).into(),
                    weight: *weight,
                })
                .collect(),
        )
    }

    #[test]
    fn rolls_map_onto_weight_ranges() {
        let e = entry(&[("a", 1), ("b", 3)]);
        let picks: Vec<&str> = (0..4)
            .map(|r| e.targets.target_for_roll(r).unwrap())
            .collect();
        assert_eq!(picks, vec!["a", "b", "b", "b"]);
        assert_eq!(e.targets.target_for_roll(4), None);
    }

    #[test]
    fn no_targets_draw_nothing_so_the_requested_name_is_sent() {
        assert_eq!(entry(&[]).targets.draw(), None);
    }

    #[test]
    fn draws_follow_weights() {
        let e = entry(&[("v1", 90), ("v2", 10)]);
        let n = 10_000;
        let v2 = (0..n).filter(|_| e.targets.draw() == Some("v2")).count();
        let share = v2 as f64 / n as f64;
        // 10% expected; the standard deviation of the share is 0.3%, so 2 points is > 6 sigma.
        assert!((share - 0.10).abs() < 0.02, "v2 share {share}");
    }
}
