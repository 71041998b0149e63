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
        let mine: Vec<&ConfigIssue> = gateway_issues
            .iter()
            .copied()
            .filter(|issue| issue.subject.listener() == Some(i))
            .collect();
        let mut desired = Vec::new();
        let protocol = with_reason(&mine, IssueReason::UnsupportedProtocol);
        let port: Vec<&ConfigIssue> = mine
            .iter()
            .copied()
            .filter(|issue| issue.subject == Subject::ListenerPort(i))
            .collect();
        let conflicted = with_reason(&port, IssueReason::HostnameConflict);
        let kinds = with_reason(&mine, IssueReason::InvalidRouteKinds);
        match served.get(listener.name.as_str()) {
            Some((port, _)) => {
                any_accepted = true;
                desired.push(Desired::ok("Accepted", "Accepted", "Listener is valid"));
                if cx.bound_ports.contains(port) {
                    any_programmed = true;
                    desired.push(Desired::ok(
                        "Programmed",
                        "Programmed",
                        format!("Serving on port {port}"),
                    ));
                } else {
                    desired.push(Desired::fail(
                        "Programmed",
                        "Pending",
                        format!(
                            "Port {port} is bound when the gateway restarts (listener ports are fixed at start-up)"
                        ),
                    ));
                }
            }
            None => {
                let (reason, message) = if !protocol.is_empty() {
                    (
                        IssueReason::UnsupportedProtocol.as_str(),
                        messages(&protocol),
                    )
                } else if !port.is_empty() {
                    ("PortUnavailable", messages(&port))
                } else {
                    ("Invalid", messages(&mine))
                };
                desired.push(Desired::fail("Accepted", reason, message.clone()));
                desired.push(Desired::fail("Programmed", "Invalid", message));
            }
        }
        desired.push(if kinds.is_empty() {
            Desired::ok("ResolvedRefs", "ResolvedRefs", "All references resolved")
        } else {
            Desired::fail(
                "ResolvedRefs",
                IssueReason::InvalidRouteKinds.as_str(),
                messages(&kinds),
            )
        });
        // `Conflicted` holds when there is a conflict.
        desired.push(if conflicted.is_empty() {
            Desired::fail("Conflicted", "NoConflicts", "No conflicts")
        } else {
            Desired::ok(
                "Conflicted",
                IssueReason::HostnameConflict.as_str(),
                messages(&conflicted),
            )
        });
        let existing = existing_listeners
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(listener.name.as_str()))
            .map(|l| existing_conditions(Some(l), &["conditions"]))
            .unwrap_or_default();
        let attached = served
            .get(listener.name.as_str())
            .map_or(0, |(_, routes)| routes.len());
        let supported = if kinds.is_empty() && protocol.is_empty() {
            json!([{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}])
        } else {
            json!([])
        };
        listeners.push(json!({
            "name": listener.name,
            "supportedKinds": supported,
            "attachedRoutes": attached,
            "conditions": conditions(desired, &existing, generation, &cx.now),
        }));
    }
    let mut desired = Vec::new();
    desired.push(if any_accepted {
        Desired::ok("Accepted", "Accepted", "Gateway is accepted")
    } else {
        Desired::fail(
            "Accepted",
            "ListenersNotValid",
            "No listener is valid (only HTTP listeners are supported)",
        )
    });
    desired.push(
        if let (true, Some(Err(why))) = (any_programmed, addresses) {
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
        },
    );
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
    }
}
