//! Gateways to listeners: which Gateways are ours, which of their listeners are served, which
//! routes each admits (`allowedRoutes`) and the request timeout a BackendTrafficPolicy gives them.
//!
//! A listener that cannot be served is reported and left out; routes are attached elsewhere
//! ([`super::attach`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::time::Duration;

use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutes,
    GatewayListenersAllowedRoutesNamespacesFrom,
};

use super::index::{Index, Located};
use super::{BuildOptions, GATEWAY_GROUP};
use crate::config::duration::parse_duration;
use crate::config::{ConfigIssue, IssueReason, ObjectKey, Subject};
use crate::snapshot::backends;
use crate::snapshot::routes::ListenerRoutes;

/// A served listener: how it admits routes, and the routes attached so far.
pub(super) struct ListenerBuild {
    pub(super) gateway: ObjectKey,
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) hostname: Option<String>,
    pub(super) namespaces: AllowedNamespaces,
    pub(super) allows_http_routes: bool,
    pub(super) request_timeout: Option<Duration>,
    pub(super) routes: ListenerRoutes,
}

/// The namespaces a listener admits routes from.
pub(super) enum AllowedNamespaces {
    Same,
    All,
    Selector(BTreeMap<String, String>),
}

/// The Gateways whose GatewayClass names our controller, and their served listeners.
pub(super) struct Listeners {
    /// Our Gateways, whether or not any of their listeners is served.
    pub(super) ours: BTreeSet<ObjectKey>,
    /// The served listeners, in Gateway and listener order.
    pub(super) built: Vec<ListenerBuild>,
}

/// Our Gateways and their listeners. Without a listener, the configuration is unusable (an
/// error).
pub(super) fn gateway_listeners(
    index: &Index<'_>,
    options: &BuildOptions<'_>,
    issues: &mut Vec<ConfigIssue>,
) -> Listeners {
    let classes: Vec<&str> = index
        .gateway_classes
        .iter()
        .filter(|c| c.object.spec.controller_name == options.controller_name)
        .map(|c| c.key.name.as_str())
        .collect();
    let mut ours = BTreeSet::new();
    let mut built: Vec<ListenerBuild> = Vec::new();
    for gateway in &index.gateways {
        if !classes.contains(&gateway.object.spec.gateway_class_name.as_str()) {
            continue;
        }
        ours.insert(gateway.key.clone());
        let timeout = gateway_request_timeout(index, &gateway.key, issues)
            .unwrap_or(options.default_request_timeout);
        for (i, listener) in gateway.object.spec.listeners.iter().enumerate() {
            let at = ListenerAt {
                gateway,
                index: i,
                listener,
            };
            if let Some(listener) = at.build(&built, timeout, issues) {
                built.push(listener);
            }
        }
    }
    if built.is_empty() {
        let issue = no_listener(index, options);
        issues.push(if options.listeners_required {
            issue
        } else {
            // Serving only as an endpoint picker: another proxy owns the Gateways.
            ConfigIssue {
                severity: crate::config::Severity::Warning,
                ..issue
            }
        });
    }
    Listeners { ours, built }
}

/// Why there is nothing to serve.
fn no_listener(index: &Index<'_>, options: &BuildOptions<'_>) -> ConfigIssue {
    let classes: Vec<String> = index
        .gateway_classes
        .iter()
        .map(|c| format!("{} names {:?}", c.key.name, c.object.spec.controller_name))
        .collect();
    ConfigIssue::error(
        "configuration",
        "GatewayClass spec.controllerName",
        options.controller_name,
        if classes.is_empty() {
            "no GatewayClass names this controller, so there is no Gateway to serve".to_owned()
        } else {
            format!(
                "no HTTP listener of a Gateway whose GatewayClass names this controller ({})",
                classes.join("; ")
            )
        },
    )
}

/// Listener `index` of a Gateway of ours.
struct ListenerAt<'g, 'a> {
    gateway: &'g Located<'a, Gateway>,
    index: usize,
    listener: &'g GatewayListeners,
}

impl ListenerAt<'_, '_> {
    fn field(&self, name: &str) -> String {
        format!("spec.listeners[{}].{name}", self.index)
    }

    /// An error about field `name` of this listener (for its port, [`Self::port_error`]).
    fn error(&self, name: &str, value: impl Display, message: impl Into<String>) -> ConfigIssue {
        self.gateway
            .error(self.field(name), value, message)
            .about(Subject::Listener(self.index))
    }

    /// A warning about field `name` of this listener.
    fn warning(&self, name: &str, value: impl Display, message: impl Into<String>) -> ConfigIssue {
        self.gateway
            .warning(self.field(name), value, message)
            .about(Subject::Listener(self.index))
    }

    /// An error about this listener's port.
    fn port_error(&self, value: impl Display, message: impl Into<String>) -> ConfigIssue {
        self.gateway
            .error(self.field("port"), value, message)
            .about(Subject::ListenerPort(self.index))
    }

    /// The listener, when it can be served beside the listeners `before` it.
    fn build(
        &self,
        before: &[ListenerBuild],
        request_timeout: Option<Duration>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<ListenerBuild> {
        let (gateway, listener) = (self.gateway, self.listener);
        let port = self.servable_port(before, issues)?;
        let (namespaces, allows_http_routes) = match &listener.allowed_routes {
            None => (AllowedNamespaces::Same, true),
            Some(allowed) => {
                let allows_http_routes = self.allows_http_routes(allowed, issues);
                (self.allowed_namespaces(allowed, issues), allows_http_routes)
            }
        };
        Some(ListenerBuild {
            gateway: gateway.key.clone(),
            name: listener.name.clone(),
            port,
            hostname: listener.hostname.clone(),
            namespaces,
            allows_http_routes,
            request_timeout,
            routes: ListenerRoutes {
                gateway: gateway.key.clone(),
                name: listener.name.clone(),
                hostname: listener.hostname.clone(),
                entries: Vec::new(),
                routes_on_model: false,
            },
        })
    }

    /// The port to serve the listener on; `None` (reported) when its name is taken, its
    /// protocol is not HTTP, or its port is out of range or already serves its hostname.
    fn servable_port(
        &self,
        before: &[ListenerBuild],
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<u16> {
        let listener = self.listener;
        let port = u16::try_from(listener.port).ok().filter(|p| *p > 0);
        let conflict = port.and_then(|port| {
            before
                .iter()
                .find(|l| l.port == port && l.hostname == listener.hostname)
        });
        let refusal = if before
            .iter()
            .any(|l| l.gateway == self.gateway.key && l.name == listener.name)
        {
            self.error("name", &listener.name, "listener names must be unique")
        } else if listener.protocol != "HTTP" {
            self.warning(
                "protocol",
                &listener.protocol,
                "only HTTP listeners are served; this listener is skipped",
            )
            .because(IssueReason::UnsupportedProtocol)
        } else if port.is_none() {
            self.port_error(listener.port, "must be between 1 and 65535")
        } else if let Some(other) = conflict {
            self.port_error(
                listener.port,
                format!(
                    "listener {} of {} already serves this port and hostname",
                    other.name, other.gateway
                ),
            )
            .because(IssueReason::HostnameConflict)
        } else {
            return port;
        };
        issues.push(refusal);
        None
    }

    /// Whether `allowedRoutes.kinds` admits HTTPRoutes.
    fn allows_http_routes(
        &self,
        allowed: &GatewayListenersAllowedRoutes,
        issues: &mut Vec<ConfigIssue>,
    ) -> bool {
        let kinds_ok = allowed.kinds.as_ref().is_none_or(|kinds| {
            kinds.iter().any(|k| {
                k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP)
            })
        });
        if !kinds_ok {
            issues.push(
                self.warning(
                    "allowedRoutes.kinds",
                    "",
                    "HTTPRoute is not allowed, so no route attaches",
                )
                .because(IssueReason::InvalidRouteKinds),
            );
        }
        kinds_ok
    }

    /// The namespaces `allowedRoutes.namespaces` admits routes from.
    fn allowed_namespaces(
        &self,
        allowed: &GatewayListenersAllowedRoutes,
        issues: &mut Vec<ConfigIssue>,
    ) -> AllowedNamespaces {
        let Some(namespaces) = allowed.namespaces.as_ref() else {
            return AllowedNamespaces::Same;
        };
        match namespaces.from {
            None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => {
                AllowedNamespaces::Same
            }
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                let selector = namespaces.selector.as_ref();
                if selector
                    .is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()))
                {
                    issues.push(self.warning(
                        "allowedRoutes.namespaces.selector.matchExpressions",
                        "",
                        "matchExpressions are not supported; only matchLabels are used",
                    ));
                }
                AllowedNamespaces::Selector(
                    selector
                        .and_then(|s| s.match_labels.clone())
                        .unwrap_or_default(),
                )
            }
        }
    }
}

/// The request timeout BackendTrafficPolicies give `gateway` (the last valid one wins), or `None`
/// when none sets one.
fn gateway_request_timeout(
    index: &Index<'_>,
    gateway: &ObjectKey,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Option<Duration>> {
    let mut result = None;
    for policy in &index.policies {
        let spec = &policy.object.spec;
        let targets = spec.target_ref.iter().chain(&spec.target_refs);
        let targets_gateway = targets.into_iter().any(|t| {
            t.kind == "Gateway"
                && (t.group.is_empty() || t.group == GATEWAY_GROUP)
                && t.name == gateway.name
        }) && policy.key.namespace == gateway.namespace;
        if !targets_gateway {
            continue;
        }
        let Some(text) = spec
            .timeout
            .as_ref()
            .and_then(|t| t.http.as_ref())
            .and_then(|h| h.request_timeout.as_deref())
        else {
            continue;
        };
        match parse_duration(text) {
            Ok(timeout) => result = Some(timeout),
            Err(reason) => {
                issues.push(policy.error("spec.timeout.http.requestTimeout", text, reason))
            }
        }
    }
    result
}

impl ListenerBuild {
    /// Whether the listener admits routes from `route_ns`.
    pub(super) fn admits_namespace(&self, route_ns: &str, index: &Index<'_>) -> bool {
        match &self.namespaces {
            AllowedNamespaces::Same => self.gateway.namespace == route_ns,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(labels) => index
                .namespaces
                .get(route_ns)
                .is_some_and(|ns| backends::selector_matches(labels, ns.metadata.labels.as_ref())),
        }
    }
}
