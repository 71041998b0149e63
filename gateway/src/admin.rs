//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/debug/snapshot`.
//!
//! It runs on its own address (loopback by default) and its own Pingora service, so probes and
//! scrapes keep answering when the proxy listeners are busy, and nothing here is reachable
//! through the data-plane ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use crate::config::Severity;
use crate::snapshot::{Backend, RewriteRule, Snapshot};
use crate::state::GatewayState;

/// The admin HTTP app.
#[derive(Debug, Clone)]
pub struct AdminApp {
    state: Arc<GatewayState>,
}

impl AdminApp {
    /// An app over `state`.
    pub fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        match path.as_str() {
            "/healthz" => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.state.is_ready() {
                    respond(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready\n".to_vec(),
                    )
                }
            }
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.state.render_metrics(),
            ),
            "/debug/snapshot" => {
                let body =
                    serde_json::to_vec_pretty(&debug_snapshot(&self.state)).unwrap_or_default();
                respond(StatusCode::OK, "application/json", body)
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// The JSON document behind `/debug/snapshot`.
pub fn debug_snapshot(state: &GatewayState) -> Value {
    let snapshot = state.snapshots.load();
    let config = state.config.load();
    let unbound: Vec<u16> = snapshot
        .ports
        .keys()
        .copied()
        .filter(|p| !state.bound_ports.contains(p))
        .collect();
    json!({
        "generation": snapshot.generation,
        "config": {
            "source": config.source,
            "last_result": config.last_result,
            "errors": config.issues.iter().filter(|i| i.severity == Severity::Error).map(ToString::to_string).collect::<Vec<_>>(),
            "warnings": config.issues.iter().filter(|i| i.severity == Severity::Warning).map(ToString::to_string).collect::<Vec<_>>(),
        },
        "bound_ports": state.bound_ports,
        "unbound_ports": unbound,
        "listeners": listeners_json(&snapshot),
        "pools": pools_json(&snapshot),
        "services": snapshot.services.values().map(|s| json!({
            "service": s.key.qualified_name(),
            "port": s.port,
            "endpoints": s.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn listeners_json(snapshot: &Snapshot) -> Vec<Value> {
    let mut out = Vec::new();
    for (port, routes) in &snapshot.ports {
        for listener in &routes.listeners {
            let entries: Vec<Value> = listener
                .entries
                .iter()
                .map(|e| {
                    let backends: Vec<Value> = e
                        .action
                        .backends
                        .iter()
                        .map(|b| {
                            let (kind, name) = match &b.backend {
                                Backend::Service(s) => ("Service", format!("{}:{}", s.key.qualified_name(), s.port)),
                                Backend::Pool(p) => ("InferencePool", p.key.qualified_name()),
                                Backend::Invalid(reason) => ("Invalid", reason.to_string()),
                            };
                            json!({"kind": kind, "name": name, "weight": b.weight})
                        })
                        .collect();
                    json!({
                        "route": e.route.qualified_name(),
                        "rule": e.rule,
                        "match": format!("{:?}", e.matcher.path),
                        "headers": e.matcher.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                        "timeout_seconds": e.action.timeout.map(|t| t.as_secs_f64()),
                        "backends": backends,
                    })
                })
                .collect();
            out.push(json!({
                "port": port,
                "gateway": listener.gateway.qualified_name(),
                "name": listener.name,
                "hostname": listener.hostname,
                "routes_on_model": listener.routes_on_model,
                "routes": entries,
            }));
        }
    }
    out
}

fn pools_json(snapshot: &Snapshot) -> Vec<Value> {
    let now = Instant::now();
    snapshot
        .pools
        .values()
        .map(|pool| {
            let mut models: Vec<&String> = pool.models.keys().collect();
            models.sort();
            let objectives: BTreeMap<&String, i32> = pool
                .objectives
                .iter()
                .map(|(name, o)| (name, o.priority))
                .collect();
            let rule = |r: &RewriteRule| {
                json!({"object": r.object.qualified_name(), "rule": r.rule, "targets": r.targets})
            };
            let exact: BTreeMap<&String, Value> = pool
                .rewrites
                .exact
                .iter()
                .map(|(model, r)| (model, rule(r)))
                .collect();
            json!({
                "pool": pool.key.qualified_name(),
                "api_version": pool.api_version,
                "strategy": {
                    "requested": pool.resolution.requested,
                    "implementation": pool.resolution.implementation,
                    "note": pool.resolution.note,
                    "parameters": pool.strategy_config,
                    "state": pool.strategy.debug_state(),
                },
                "models": models.iter().map(|m| &*pool.models[*m]).collect::<Vec<_>>(),
                "rewrites": {
                    "exact": exact,
                    "generic": pool.rewrites.generic.as_deref().map(rule),
                },
                "objectives": objectives,
                "endpoint_picker": pool.picker,
                "endpoints": pool.endpoints.iter().map(|e| {
                    let scraped = e.metrics();
                    json!({
                        "name": e.id.name(),
                        "address": e.id.address().to_string(),
                        "in_flight": e.in_flight(),
                        "in_flight_tokens": e.in_flight_tokens(),
                        "in_flight_prefill": e.in_flight_prefill(),
                        "in_flight_prefill_tokens": e.in_flight_prefill_tokens(),
                        "in_flight_output_tokens": e.in_flight_output_tokens(),
                        "dispatched_total": e.dispatched_total(),
                        "engine": e.engine,
                        "metrics": scraped.as_ref().map(|s| json!({
                            "waiting": s.metrics.waiting,
                            "running": s.metrics.running,
                            "kv_usage": s.metrics.kv_usage,
                            "model_name": s.metrics.model_name,
                            "block_size": s.metrics.block_size,
                            "num_blocks": s.metrics.num_blocks,
                            "lora": s.metrics.lora.as_ref().map(|l| json!({
                                "max_loras": l.max_loras,
                                "running": l.running,
                                "waiting": l.waiting,
                            })),
                            "age_ms": now.saturating_duration_since(s.at).as_millis() as u64,
                        })),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect()
}
