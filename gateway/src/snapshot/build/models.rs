//! InferenceModels to the models each pool serves: every model checked against the CRD's rules,
//! grouped by the pool it references, the oldest winning a model name two of them declare.
//!
//! A model whose pool does not exist, or whose name is taken, is reported and left out; the
//! weighted draw between target models at request time is [`crate::snapshot::models`]'s.

use std::collections::HashMap;
use std::sync::Arc;

use plugins::Criticality;

use super::index::{Located, oldest_first};
use crate::config::crds::v1alpha2::InferenceModel;
use crate::config::{ConfigIssue, IssueReason, Kind, ObjectKey};
use crate::snapshot::models::{ModelEntry, TargetModel};

/// Upper bound on `spec.targetModels` (the CRD's limit).
const MAX_TARGET_MODELS: usize = 10;
/// Upper bound on a target model's weight (the CRD's limit).
const MAX_MODEL_WEIGHT: i32 = 1_000_000;
/// Upper bound on `spec.modelName` length (the CRD's limit).
const MAX_MODEL_NAME_LEN: usize = 256;

/// Group InferenceModels by the pool they reference; the oldest of a duplicated model name wins.
pub(super) fn models_by_pool(
    models: &[Located<'_, InferenceModel>],
    pool_exists: impl Fn(&ObjectKey) -> bool,
    issues: &mut Vec<ConfigIssue>,
) -> HashMap<ObjectKey, HashMap<String, Arc<ModelEntry>>> {
    let ordered = oldest_first(models, |m| m.metadata.creation_timestamp.as_ref());
    let mut by_pool: HashMap<ObjectKey, HashMap<String, Arc<ModelEntry>>> = HashMap::new();
    for m in ordered {
        let Some(entry) = model_entry(m, issues) else {
            continue;
        };
        let spec = &m.object.spec;
        let pool_key = ObjectKey::new(
            Kind::InferencePool,
            m.key.namespace.clone(),
            spec.pool_ref.name.clone(),
        );
        if !pool_exists(&pool_key) {
            issues.push(m.warning(
                "spec.poolRef.name",
                &spec.pool_ref.name,
                format!("InferencePool {} does not exist", pool_key.qualified_name()),
            ));
            continue;
        }
        let models = by_pool.entry(pool_key).or_default();
        if let Some(winner) = models.get(&spec.model_name) {
            issues.push(
                m.warning(
                    "spec.modelName",
                    &spec.model_name,
                    format!("already served by the older {}", winner.object),
                )
                .because(IssueReason::ModelNameInUse),
            );
            continue;
        }
        models.insert(spec.model_name.clone(), Arc::new(entry));
    }
    by_pool
}

/// The model an InferenceModel declares, checked; `None` (reported) when it is invalid.
fn model_entry(
    m: &Located<'_, InferenceModel>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<ModelEntry> {
    let spec = &m.object.spec;
    let before = issues.len();
    let mut error = |field: String, value: String, reason: &str| {
        issues.push(m.error(field, value, reason));
    };
    if spec.model_name.is_empty() || spec.model_name.len() > MAX_MODEL_NAME_LEN {
        error(
            "spec.modelName".into(),
            spec.model_name.clone(),
            "must be 1 to 256 characters",
        );
    }
    let group = spec
        .pool_ref
        .group
        .as_deref()
        .unwrap_or("inference.networking.x-k8s.io");
    if !matches!(
        group,
        "inference.networking.x-k8s.io" | "inference.networking.k8s.io"
    ) {
        error(
            "spec.poolRef.group".into(),
            group.into(),
            "must be an Inference Extension API group",
        );
    }
    let kind = spec.pool_ref.kind.as_deref().unwrap_or("InferencePool");
    if kind != "InferencePool" {
        error(
            "spec.poolRef.kind".into(),
            kind.into(),
            "must be InferencePool",
        );
    }
    let criticality = match spec.criticality.as_deref() {
        None => Criticality::Standard,
        Some(text) => text
            .parse()
            .unwrap_or_else(|e: plugins::request::UnknownCriticality| {
                error("spec.criticality".into(), text.into(), &e.to_string());
                Criticality::Standard
            }),
    };
    let targets: Vec<(&str, Option<i32>)> = spec
        .target_models
        .iter()
        .flatten()
        .map(|t| (t.name.as_str(), t.weight))
        .collect();
    let resolved = weighted_targets(
        &targets,
        "spec.targetModels",
        "name",
        Some(MAX_TARGET_MODELS),
        &mut error,
    );
    (issues.len() == before).then(|| {
        ModelEntry::new(
            spec.model_name.clone(),
            m.key.clone(),
            criticality,
            resolved,
        )
    })
}

/// Weighted targets, checked against the CRDs' rules (shared by InferenceModel's `targetModels`
/// and InferenceModelRewrite's `targets`): at most `max` of them (`None`: no limit), names not
/// empty, weights 1..=1,000,000 and set on all targets or on none. `field` is the list's path,
/// `name_field` the name's field in an item; `error(field, value, reason)` reports a problem.
pub(super) fn weighted_targets(
    targets: &[(&str, Option<i32>)],
    field: &str,
    name_field: &str,
    max: Option<usize>,
    error: &mut impl FnMut(String, String, &str),
) -> Vec<TargetModel> {
    if let Some(max) = max
        && targets.len() > max
    {
        error(
            field.into(),
            targets.len().to_string(),
            &format!("at most {max} targets"),
        );
    }
    let weighted = targets.iter().filter(|(_, w)| w.is_some()).count();
    if weighted != 0 && weighted != targets.len() {
        error(
            field.into(),
            format!("{weighted} of {}", targets.len()),
            "weights must be set on all targets or on none",
        );
    }
    let mut resolved = Vec::with_capacity(targets.len());
    for (i, (name, weight)) in targets.iter().enumerate() {
        if name.is_empty() {
            error(
                format!("{field}[{i}].{name_field}"),
                String::new(),
                "must not be empty",
            );
        }
        let weight = weight.unwrap_or(1);
        if !(1..=MAX_MODEL_WEIGHT).contains(&weight) {
            error(
                format!("{field}[{i}].weight"),
                weight.to_string(),
                "must be between 1 and 1000000",
            );
        }
        resolved.push(TargetModel {
            name: (*name).to_owned(),
            weight: u32::try_from(weight.max(1)).unwrap_or(1),
        });
    }
    resolved
}
