//! Status of GatewayClasses and Gateways: class acceptance, per-listener conditions with attached
//! routes, and the addresses of the gateway's own Service.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

use super::{
    GATEWAY_GROUP, Issues, OurGateway, StatusContext, StatusKind, StatusUpdate,
    existing_conditions, messages, status_json, with_reason,
};
use crate::config::{ConfigIssue, IssueReason, Object, ObjectKey, ObjectSet, Subject};
use crate::kubernetes::conditions::{Desired, conditions};
use crate::snapshot::Snapshot;

/// The addresses of the gateway's Service: its load-balancer ingress for a LoadBalancer Service,
/// its cluster IP otherwise. `Err` says why there is none yet.
pub(super) fn service_addresses(
    objects: &ObjectSet,
    key: &ObjectKey,
) -> Result<Vec<Value>, String> {
    let service = objects
        .iter()
        .find_map(|d| match &d.object {
            Object::Service(s) if d.object.key() == *key => Some(s),
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "Service {} (--kube-gateway-service) not found",
                key.qualified_name()
            )
        })?;
    let spec = service.spec.as_ref();
    let load_balancer = spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let addresses: Vec<Value> = if load_balancer {
        service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| match (&i.ip, &i.hostname) {
                (Some(ip), _) => Some(json!({"type": "IPAddress", "value": ip})),
                (None, Some(host)) => Some(json!({"type": "Hostname", "value": host})),
                _ => None,
            })
            .collect()
    } else {
        spec.and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| json!({"type": "IPAddress", "value": ip}))
            .into_iter()
            .collect()
    };
    if addresses.is_empty() {
        return Err(format!(
            "Service {} has no {} yet",
            key.qualified_name(),
            if load_balancer {
                "load-balancer address"
            } else {
                "cluster IP"
            }
        ));
    }
    Ok(addresses)
}

pub(super) fn gateway_status(
    gateway: &OurGateway<'_>,
    snapshot: &Snapshot,
    issues: &Issues<'_>,
    addresses: Option<&Result<Vec<Value>, String>>,
    cx: &StatusContext<'_>,
) -> StatusUpdate {
    let status = status_json(gateway.gateway.status.as_ref());
    let generation = gateway.meta.generation;
    let gateway_issues = issues.of(&gateway.key);
    // Listeners the build kept, with the distinct routes attached to each.
    let mut served: HashMap<&str, (u16, BTreeSet<&ObjectKey>)> = HashMap::new();
    for (port, routes) in &snapshot.ports {
        for listener in routes.listeners.iter().filter(|l| l.gateway == gateway.key) {
            let routes: BTreeSet<&ObjectKey> = listener.entries.iter().map(|e| &e.route).collect();
            served.insert(listener.name.as_str(), (*port, routes));
        }
    }
    let existing_listeners: Vec<Value> = status
        .as_ref()
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut listeners = Vec::new();
    let mut names = BTreeSet::new();
    let (mut any_accepted, mut any_programmed) = (false, false);
    for (i, listener) in gateway.gateway.spec.listeners.iter().enumerate() {
        if !names.insert(listener.name.as_str()) {
            continue;
        }
        let served = served.get(listener.name.as_str());
        let listener_issues = ListenerIssues::new(gateway_issues, i);
        let (desired, accepted, programmed) =
            listener_issues.conditions(served.map(|(port, _)| *port), cx.bound_ports);
        any_accepted |= accepted;
        any_programmed |= programmed;
        let existing = existing_listeners
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(listener.name.as_str()))
            .map(|l| existing_conditions(Some(l), &["conditions"]))
            .unwrap_or_default();
        let supported = if listener_issues.kinds.is_empty() && listener_issues.protocol.is_empty() {
            json!([{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}])
        } else {
            json!([])
        };
        listeners.push(json!({
            "name": listener.name,
            "supportedKinds": supported,
            "attachedRoutes": served.map_or(0, |(_, routes)| routes.len()),
            "conditions": conditions(desired, &existing, generation, &cx.now),
        }));
    }
    let desired = gateway_conditions(any_accepted, any_programmed, addresses);
    let existing = existing_conditions(status.as_ref(), &["conditions"]);
    let mut patch = json!({
        "conditions": conditions(desired, &existing, generation, &cx.now),
        "listeners": listeners,
    });
    if let Some(addresses) = addresses {
        patch["addresses"] = json!(addresses.as_ref().map_or(&[][..], Vec::as_slice));
    }
    StatusUpdate {
        kind: StatusKind::Gateway,
        namespace: gateway.key.namespace.clone(),
        name: gateway.key.name.clone(),
        patch,
        resource_version: gateway.meta.resource_version.clone(),
    }
}

/// The Gateway's own conditions, from whether any listener is accepted and programmed.
fn gateway_conditions(
    any_accepted: bool,
    any_programmed: bool,
    addresses: Option<&Result<Vec<Value>, String>>,
) -> Vec<Desired> {
    let accepted = if any_accepted {
        Desired::ok("Accepted", "Accepted", "Gateway is accepted")
    } else {
        Desired::fail(
            "Accepted",
            "ListenersNotValid",
            "No listener is valid (only HTTP listeners are supported)",
        )
    };
    let programmed = if let (true, Some(Err(why))) = (any_programmed, addresses) {
        Desired::fail("Programmed", "AddressNotAssigned", why.clone())
    } else if any_programmed {
        Desired::ok("Programmed", "Programmed", "Gateway is serving")
    } else if any_accepted {
        Desired::fail(
            "Programmed",
            "Pending",
            "Listener ports are bound when the gateway restarts",
        )
    } else {
        Desired::fail("Programmed", "Invalid", "No listener is valid")
    };
    vec![accepted, programmed]
}

/// The issues about one listener, by the condition they bear on.
struct ListenerIssues<'a> {
    /// Every issue about the listener.
    all: Vec<&'a ConfigIssue>,
    /// Its protocol is not HTTP.
    protocol: Vec<&'a ConfigIssue>,
    /// Its port is out of range or already serves its hostname.
    port: Vec<&'a ConfigIssue>,
    /// Another listener serves its port and hostname.
    conflicted: Vec<&'a ConfigIssue>,
    /// Its `allowedRoutes.kinds` leaves out HTTPRoute.
    kinds: Vec<&'a ConfigIssue>,
}

impl<'a> ListenerIssues<'a> {
    /// The issues about listener `index` among a Gateway's.
    fn new(gateway_issues: &[&'a ConfigIssue], index: usize) -> Self {
        let all: Vec<&ConfigIssue> = gateway_issues
            .iter()
            .copied()
            .filter(|issue| issue.subject.listener() == Some(index))
            .collect();
        let port: Vec<&ConfigIssue> = all
            .iter()
            .copied()
            .filter(|issue| issue.subject == Subject::ListenerPort(index))
            .collect();
        ListenerIssues {
            protocol: with_reason(&all, IssueReason::UnsupportedProtocol),
            conflicted: with_reason(&port, IssueReason::HostnameConflict),
            kinds: with_reason(&all, IssueReason::InvalidRouteKinds),
            port,
            all,
        }
    }

    /// The listener's conditions, and whether it is accepted and programmed. `served` is the
    /// port it is served on, when the build kept it.
    fn conditions(&self, served: Option<u16>, bound_ports: &[u16]) -> (Vec<Desired>, bool, bool) {
        let mut desired = Vec::new();
        let (accepted, programmed) = match served {
            Some(port) => {
                desired.push(Desired::ok("Accepted", "Accepted", "Listener is valid"));
                let programmed = bound_ports.contains(&port);
                desired.push(if programmed {
                    Desired::ok("Programmed", "Programmed", format!("Serving on port {port}"))
                } else {
                    Desired::fail(
                        "Programmed",
                        "Pending",
                        format!(
                            "Port {port} is bound when the gateway restarts (listener ports are fixed at start-up)"
                        ),
                    )
                });
                (true, programmed)
            }
            None => {
                let (reason, message) = if !self.protocol.is_empty() {
                    (
                        IssueReason::UnsupportedProtocol.as_str(),
                        messages(&self.protocol),
                    )
                } else if !self.port.is_empty() {
                    ("PortUnavailable", messages(&self.port))
                } else {
                    ("Invalid", messages(&self.all))
                };
                desired.push(Desired::fail("Accepted", reason, message.clone()));
                desired.push(Desired::fail("Programmed", "Invalid", message));
                (false, false)
            }
        };
        desired.push(if self.kinds.is_empty() {
            Desired::ok("ResolvedRefs", "ResolvedRefs", "All references resolved")
        } else {
            Desired::fail(
                "ResolvedRefs",
                IssueReason::InvalidRouteKinds.as_str(),
                messages(&self.kinds),
            )
        });
        // `Conflicted` holds when there is a conflict.
        desired.push(if self.conflicted.is_empty() {
            Desired::fail("Conflicted", "NoConflicts", "No conflicts")
        } else {
            Desired::ok(
                "Conflicted",
                IssueReason::HostnameConflict.as_str(),
                messages(&self.conflicted),
            )
        });
        (desired, accepted, programmed)
    }
}
