//! InferenceObjectives and InferenceModelRewrites to what each pool applies at request time: the
//! objectives by name with their priority, and the rewrite rules merged with their precedence.
//!
//! Rewrite precedence, as the API defines it: a rule with an `Exact` match on the requested
//! model beats a generic rule (one with empty `matches`); between rules of the same standing, the
//! oldest object wins (creation time, then source order), and within one object the first rule.
//! Merging once here means the request path does one map lookup.
//!
//! An invalid object (a bad pool reference, match type or weight, a bad flow-control `ttl-ms`
//! annotation on an objective) is reported against the field and left out whole. Nothing here looks at requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::index::{Located, oldest_first};
use super::models::weighted_targets;
use crate::config::crds::apix::{Objective, PoolRef, Rewrite};
use crate::config::{ConfigIssue, Kind, ObjectKey};
use crate::flow::FLOW_CONTROL_PREFIX;
use crate::snapshot::models::{self, RewriteRule, Rewrites, WeightedTargets};

/// The pool group an objective or a rewrite names when it names none.
const DEFAULT_POOL_GROUP: &str = "inference.networking.k8s.io";

/// The pool `pool_ref` names from `referrer`'s namespace, checked; `None` (reported) when the
/// reference is not to an InferencePool or the pool does not exist.
fn pool_of<T>(
    referrer: &Located<'_, T>,
    pool_ref: &PoolRef,
    pool_exists: &impl Fn(&ObjectKey) -> bool,
    issues: &mut Vec<ConfigIssue>,
) -> Option<ObjectKey> {
    let group = pool_ref.group.as_deref().unwrap_or(DEFAULT_POOL_GROUP);
    if !matches!(
        group,
        "inference.networking.k8s.io" | "inference.networking.x-k8s.io"
    ) {
        issues.push(referrer.error(
            "spec.poolRef.group",
            group,
            "must be an Inference Extension API group",
        ));
        return None;
    }
    let kind = pool_ref.kind.as_deref().unwrap_or("InferencePool");
    if kind != "InferencePool" {
        issues.push(referrer.error("spec.poolRef.kind", kind, "must be InferencePool"));
        return None;
    }
    let key = ObjectKey::new(
        Kind::InferencePool,
        referrer.key.namespace.clone(),
        pool_ref.name.clone(),
    );
    if !pool_exists(&key) {
        issues.push(referrer.warning(
            "spec.poolRef.name",
            &pool_ref.name,
            format!("InferencePool {} does not exist", key.qualified_name()),
        ));
        return None;
    }
    Some(key)
}

/// The objective's own flow-control time to live (`Some(None)`: none set); `None` (reported)
/// when its annotation is invalid.
fn objective_ttl(
    o: &Located<'_, Objective>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Option<Duration>> {
    let key = format!("{FLOW_CONTROL_PREFIX}ttl-ms");
    let Some(value) = o
        .object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&key))
    else {
        return Some(None);
    };
    match value.trim().parse::<u64>() {
        Ok(ms @ 1..=86_400_000) => Some(Some(Duration::from_millis(ms))),
        _ => {
            issues.push(o.error(
                format!("metadata.annotations[{key}]"),
                value,
                "must be a whole number of milliseconds between 1 and 86400000",
            ));
            None
        }
    }
}

/// Every valid objective, by the pool it names and then by its own name.
pub(super) fn objectives_by_pool(
    objectives: &[Located<'_, Objective>],
    pool_exists: impl Fn(&ObjectKey) -> bool,
    issues: &mut Vec<ConfigIssue>,
) -> HashMap<ObjectKey, HashMap<String, Arc<models::Objective>>> {
    let mut by_pool: HashMap<ObjectKey, HashMap<String, Arc<models::Objective>>> = HashMap::new();
    for o in objectives {
        let Some(pool) = pool_of(o, &o.object.spec.pool_ref, &pool_exists, issues) else {
            continue;
        };
        let Some(ttl) = objective_ttl(o, issues) else {
            continue;
        };
        let objective = models::Objective {
            object: o.key.clone(),
            priority: o.object.spec.priority.unwrap_or(0),
            ttl,
        };
        by_pool
            .entry(pool)
            .or_default()
            .insert(o.key.name.clone(), Arc::new(objective));
    }
    by_pool
}

/// Every valid rewrite's rules, merged per pool with the precedence of the module documentation.
pub(super) fn rewrites_by_pool(
    rewrites: &[Located<'_, Rewrite>],
    pool_exists: impl Fn(&ObjectKey) -> bool,
    issues: &mut Vec<ConfigIssue>,
) -> HashMap<ObjectKey, Rewrites> {
    let mut by_pool: HashMap<ObjectKey, Rewrites> = HashMap::new();
    let ordered = oldest_first(rewrites, |r| r.metadata.creation_timestamp.as_ref());
    for r in ordered {
        let Some(rules) = checked_rules(r, issues) else {
            continue;
        };
        let Some(pool) = pool_of(r, &r.object.spec.pool_ref, &pool_exists, issues) else {
            continue;
        };
        let merged = by_pool.entry(pool).or_default();
        for (rule, matches) in rules {
            let rule = Arc::new(rule);
            if matches.is_empty() {
                merged.generic.get_or_insert_with(|| Arc::clone(&rule));
            }
            for model in matches {
                merged
                    .exact
                    .entry(model)
                    .or_insert_with(|| Arc::clone(&rule));
            }
        }
    }
    by_pool
}

/// A rewrite's rules with the model names each matches (empty: generic), checked; `None`
/// (reported) when any of it is invalid.
fn checked_rules(
    r: &Located<'_, Rewrite>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Vec<(RewriteRule, Vec<String>)>> {
    let before = issues.len();
    let mut error = |field: String, value: String, reason: &str| {
        issues.push(r.error(field, value, reason));
    };
    let mut rules = Vec::with_capacity(r.object.spec.rules.len());
    for (i, rule) in r.object.spec.rules.iter().enumerate() {
        let mut matches = Vec::with_capacity(rule.matches.len());
        for (j, criterion) in rule.matches.iter().enumerate() {
            let field = format!("spec.rules[{i}].matches[{j}].model");
            let Some(model) = &criterion.model else {
                error(field, String::new(), "is required");
                continue;
            };
            let match_type = model.type_.as_deref().unwrap_or("Exact");
            if match_type != "Exact" {
                error(
                    format!("{field}.type"),
                    match_type.into(),
                    "must be Exact (the only match type)",
                );
            }
            if model.value.is_empty() {
                error(format!("{field}.value"), String::new(), "must not be empty");
            }
            matches.push(model.value.clone());
        }
        let field = format!("spec.rules[{i}].targets");
        if rule.targets.is_empty() {
            error(
                field.clone(),
                String::new(),
                "at least one target is required",
            );
        }
        let targets: Vec<(&str, Option<i32>)> = rule
            .targets
            .iter()
            .map(|t| (t.model_rewrite.as_str(), t.weight))
            .collect();
        let targets = weighted_targets(&targets, &field, "modelRewrite", None, &mut error);
        let rule = RewriteRule {
            object: r.key.clone(),
            rule: i,
            targets: WeightedTargets::new(targets),
        };
        rules.push((rule, matches));
    }
    (issues.len() == before).then_some(rules)
}
