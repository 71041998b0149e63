//! A rule's action: its timeout and its weighted backends (Service ports and InferencePools),
//! or the 500 an unsupported filter gets.
//!
//! A backend that cannot be resolved keeps its share of traffic and answers 500 (a warning); a
//! malformed backend (weight, missing port) or timeout is an error and drops the rule.

use std::sync::Arc;

use gateway_api::httproutes::{HttpRoute, HttpRouteRules, HttpRouteRulesBackendRefs};

use super::INFERENCE_GROUPS;
use super::index::{Index, Located};
use crate::config::duration::parse_duration;
use crate::config::{ConfigIssue, IssueReason, Kind, ObjectKey, Subject};
use crate::snapshot::{Backend, RuleAction, ServiceBackend, Snapshot, WeightedBackend, backends};

/// Upper bound on a backendRef's weight (the CRD's limit).
const MAX_BACKEND_WEIGHT: i32 = 1_000_000;

/// The action of rule `rule`, and whether the rule sets its own timeout; `None` (with the errors
/// reported) when the rule is invalid.
pub(super) fn rule_action(
    rule: &HttpRouteRules,
    rule_index: usize,
    route: &Located<'_, HttpRoute>,
    index: &Index<'_>,
    snapshot: &mut Snapshot,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(RuleAction, bool)> {
    let field = |rest: &str| format!("spec.rules[{rule_index}]{rest}");
    let explicit = rule.timeouts.as_ref().and_then(|t| t.request.as_deref());
    let timeout = match explicit.map(parse_duration) {
        None => None,
        Some(Ok(timeout)) => timeout,
        Some(Err(reason)) => {
            let text = explicit.unwrap_or_default();
            issues.push(
                route
                    .error(field(".timeouts.request"), text, reason)
                    .about(Subject::Rule(rule_index)),
            );
            return None;
        }
    };
    if let Some(filter) = rule.filters.as_ref().and_then(|f| f.first()) {
        let name = serde_json::to_value(&filter.r#type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        issues.push(
            route
                .warning(
                    field(".filters[0].type"),
                    &name,
                    "filters are not supported yet; requests matching this rule get 500",
                )
                .about(Subject::RuleFilters(rule_index)),
        );
        let action = RuleAction {
            timeout,
            ..RuleAction::invalid("this route rule uses a filter the gateway does not support")
        };
        return Some((action, explicit.is_some()));
    }
    let mut backends = Vec::new();
    for (i, backend) in rule.backend_refs.iter().flatten().enumerate() {
        let at = BackendAt {
            route,
            rule: rule_index,
            index: i,
        };
        backends.push(at.weighted_backend(backend, index, snapshot, issues)?);
    }
    if backends.is_empty() {
        issues.push(
            route
                .warning(
                    field(".backendRefs"),
                    "",
                    "the rule has no backends; its requests get 500",
                )
                .about(Subject::Rule(rule_index)),
        );
    }
    let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
    let action = RuleAction {
        backends,
        total_weight,
        timeout,
    };
    Some((action, explicit.is_some()))
}

/// What a backendRef names, with its namespace defaulted to the route's.
enum BackendTarget {
    /// A backend in another namespace (a ReferenceGrant would be needed).
    OtherNamespace(String),
    /// A Service port.
    Service(ObjectKey, i32),
    /// An InferencePool.
    Pool(ObjectKey),
    /// Another kind.
    Unsupported { group: String, kind: String },
}

/// backendRef `index` of rule `rule` of a route.
struct BackendAt<'r, 'a> {
    route: &'r Located<'a, HttpRoute>,
    rule: usize,
    index: usize,
}

impl BackendAt<'_, '_> {
    fn field(&self, rest: &str) -> String {
        format!(
            "spec.rules[{}].backendRefs[{}]{rest}",
            self.rule, self.index
        )
    }

    fn subject(&self) -> Subject {
        Subject::BackendRef {
            rule: self.rule,
            index: self.index,
        }
    }

    /// The backend with its weight, `Backend::Invalid` when it cannot be resolved; `None` when
    /// the reference is malformed (an error).
    fn weighted_backend(
        &self,
        backend: &HttpRouteRulesBackendRefs,
        index: &Index<'_>,
        snapshot: &mut Snapshot,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<WeightedBackend> {
        let weight = backend.weight.unwrap_or(1);
        if !(0..=MAX_BACKEND_WEIGHT).contains(&weight) {
            issues.push(
                self.route
                    .error(
                        self.field(".weight"),
                        weight,
                        "must be between 0 and 1000000",
                    )
                    .about(self.subject()),
            );
            return None;
        }
        let target = self.target(backend, issues)?;
        let backend = resolve(target, index, snapshot).unwrap_or_else(|unresolved| {
            issues.push(
                self.route
                    .warning(
                        self.field(".name"),
                        &backend.name,
                        format!("{}; its share of traffic gets 500", unresolved.detail),
                    )
                    .because(unresolved.reason)
                    .about(self.subject()),
            );
            Backend::Invalid(unresolved.to_string().into())
        });
        Some(WeightedBackend {
            weight: u32::try_from(weight).unwrap_or(0),
            backend,
        })
    }

    /// What `backend` names; `None` (an error) for a Service without a port.
    fn target(
        &self,
        backend: &HttpRouteRulesBackendRefs,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<BackendTarget> {
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        let namespace = backend
            .namespace
            .clone()
            .unwrap_or_else(|| self.route.key.namespace.clone());
        let target = if namespace != self.route.key.namespace {
            BackendTarget::OtherNamespace(namespace)
        } else if group.is_empty() && kind == "Service" {
            let Some(port) = backend.port else {
                issues.push(
                    self.route
                        .error(
                            self.field(".port"),
                            "",
                            "port is required for a Service backend",
                        )
                        .about(self.subject()),
                );
                return None;
            };
            BackendTarget::Service(
                ObjectKey::new(Kind::Service, namespace, backend.name.clone()),
                port,
            )
        } else if INFERENCE_GROUPS.contains(&group) && kind == "InferencePool" {
            BackendTarget::Pool(ObjectKey::new(
                Kind::InferencePool,
                namespace,
                backend.name.clone(),
            ))
        } else {
            BackendTarget::Unsupported {
                group: group.to_owned(),
                kind: kind.to_owned(),
            }
        };
        Some(target)
    }
}

/// Why a backendRef cannot be used: the condition reason, if the specification has one, and
/// the details. It prints as the issue does (`BackendNotFound: Service default/s does not
/// exist`), which is also what the 500 of its share of traffic says.
struct Unresolved {
    reason: Option<IssueReason>,
    detail: String,
}

impl Unresolved {
    fn new(reason: IssueReason, detail: String) -> Self {
        Self {
            reason: Some(reason),
            detail,
        }
    }
}

/// A reason the specification has no name for.
impl From<String> for Unresolved {
    fn from(detail: String) -> Self {
        Self {
            reason: None,
            detail,
        }
    }
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(reason) = self.reason {
            write!(f, "{}: ", reason.label())?;
        }
        f.write_str(&self.detail)
    }
}

/// The backend `target` names, or why it cannot be used.
fn resolve(
    target: BackendTarget,
    index: &Index<'_>,
    snapshot: &mut Snapshot,
) -> Result<Backend, Unresolved> {
    match target {
        BackendTarget::OtherNamespace(namespace) => Err(Unresolved::new(
            IssueReason::RefNotPermitted,
            format!(
                "a backend in namespace {namespace} needs a ReferenceGrant, which is not supported"
            ),
        )),
        BackendTarget::Service(key, port) => {
            service_backend(&key, port, index, snapshot).map(Backend::Service)
        }
        BackendTarget::Pool(key) => match snapshot.pools.get(&key) {
            Some(pool) => Ok(Backend::Pool(Arc::clone(pool))),
            None if index.pools.iter().any(|p| p.key == key) => {
                Err(format!("{key} is invalid").into())
            }
            None => Err(Unresolved::new(
                IssueReason::BackendNotFound,
                format!("{key} does not exist"),
            )),
        },
        BackendTarget::Unsupported { group, kind } => Err(Unresolved::new(
            IssueReason::InvalidKind,
            format!("backend kind {kind:?} in group {group:?} is not supported"),
        )),
    }
}

/// Service `key` port `port` as a backend, shared by every rule that names it.
fn service_backend(
    key: &ObjectKey,
    port: i32,
    index: &Index<'_>,
    snapshot: &mut Snapshot,
) -> Result<Arc<ServiceBackend>, Unresolved> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {port} is out of range"))?;
    if let Some(existing) = snapshot.services.get(&(key.clone(), port)) {
        return Ok(Arc::clone(existing));
    }
    let service = index.services.get(key).ok_or_else(|| {
        Unresolved::new(
            IssueReason::BackendNotFound,
            format!("{key} does not exist"),
        )
    })?;
    let pods = index.pods_in(&key.namespace);
    let backend = Arc::new(backends::service_backend(key, service.object, port, pods)?);
    snapshot
        .services
        .insert((key.clone(), port), Arc::clone(&backend));
    Ok(backend)
}
