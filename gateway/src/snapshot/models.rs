//! Served models of a pool (from `InferenceModel`s) and the weighted draw of a target model.

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
    pub targets: Vec<TargetModel>,
    total_weight: u64,
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
        let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
        Self {
            model_name,
            object,
            criticality,
            targets,
            total_weight,
        }
    }

    /// Draw a target by weight with `roll` uniform in `0..total_weight` (see [`Self::draw`]).
    pub fn target_for_roll(&self, roll: u64) -> &str {
        let mut remaining = roll;
        for target in &self.targets {
            let weight = u64::from(target.weight);
            if remaining < weight {
                return &target.name;
            }
            remaining -= weight;
        }
        &self.model_name
    }

    /// The model to send upstream: a weighted random target, or the requested name when the entry
    /// has no targets.
    pub fn draw(&self) -> &str {
        if self.total_weight == 0 {
            return &self.model_name;
        }
        self.target_for_roll(fastrand::u64(0..self.total_weight))
    }
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
        let picks: Vec<&str> = (0..4).map(|r| e.target_for_roll(r)).collect();
        assert_eq!(picks, vec!["a", "b", "b", "b"]);
    }

    #[test]
    fn no_targets_keep_the_requested_name() {
        assert_eq!(entry(&[]).draw(), "m");
    }

    #[test]
    fn draws_follow_weights() {
        let e = entry(&[("v1", 90), ("v2", 10)]);
        let n = 10_000;
        let v2 = (0..n).filter(|_| e.draw() == "v2").count();
        let share = v2 as f64 / n as f64;
        // 10% expected; the standard deviation of the share is 0.3%, so 2 points is > 6 sigma.
        assert!((share - 0.10).abs() < 0.02, "v2 share {share}");
    }
}
