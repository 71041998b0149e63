//! `--epp-pool`: this gateway's built-in strategies served as an endpoint picker (EPP) over
//! Envoy's ext_proc protocol, so that Envoy Gateway, Istio, kgateway or agentgateway can route an
//! InferencePool with them without changing proxy.
//!
//! The picker reads the same snapshot as the proxy (same sources, same objects) and decides
//! exactly as the proxy's pool path does ([`crate::proxy::decide::pool::decide_builtin`]): the
//! body is parsed, the model resolved and rewritten (InferenceModelRewrite, InferenceModel), the
//! priority found, negative priorities shed while saturated, and the pool's strategy ranks the
//! endpoints. The proxy's subset hint then filters the ranking; the first allowed endpoint is the
//! destination and the next two the fallback list. The chosen endpoint is counted in flight until
//! the ext_proc stream ends (the proxy half-closes after the response headers, or goes away).
//! Refusals are the gateway's own OpenAI-shaped errors with their status and
//! `x-llm-d-request-dropped-reason`. What the picker cannot see: completions (the proxy does not
//! stream response bodies here), so strategies learn from dispatches and scraped metrics only.
//!
//! It serves one pool, as an Inference Extension EPP does (`--pool-name`/`--pool-namespace`).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use epp::{Held, Picker, PickerAnswer, PickerRequest, Rejection};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;

use crate::config::ObjectKey;
use crate::headers::{self, ClientHints};
use crate::proxy::decide::{Forward, Head, Step, Upstreams, pool};
use crate::proxy::error::ClientError;
use crate::proxy::queue::{self, Turn};
use crate::proxy::tokenize;
use crate::state::GatewayState;

/// How many endpoints an answer names: the destination and a fallback list of two.
const DESTINATIONS: usize = 3;

/// The gateway's strategies as an endpoint picker for one pool.
pub struct GatewayPicker {
    state: Arc<GatewayState>,
    pool: ObjectKey,
    /// For `/tokenize` calls when the pool's KV events are watched.
    connector: Connector,
}

impl GatewayPicker {
    /// A picker for `pool` over the snapshots of `state`.
    pub fn new(state: Arc<GatewayState>, pool: ObjectKey) -> Self {
        Self {
            state,
            pool,
            connector: Connector::new(Some(ConnectorOptions::new(64))),
        }
    }
}

/// The refusal for one of the gateway's own errors: its status, OpenAI-shaped body and, on 429
/// and 503, the dropped-reason header.
fn refusal(error: &ClientError) -> Rejection {
    let mut rejection = Rejection::new(error.status(), error.body());
    rejection.headers.push((
        "content-type".into(),
        Bytes::from_static(b"application/json"),
    ));
    rejection.details = error.metric_label().to_owned();
    match error.dropped_reason() {
        Some(reason) => rejection.with_dropped_reason(reason),
        None => rejection,
    }
}

/// The proxy's request as the decision reads it: method, path, query and headers (pseudo-headers
/// apart), with the client hints read and the control headers removed as the proxy does.
struct Parts {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    hints: ClientHints,
    request_id: String,
}

fn parts(request: &PickerRequest) -> Parts {
    let mut method = Method::POST;
    let mut path_and_query = String::from("/");
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for (name, value) in &request.headers {
        match name.as_str() {
            ":method" => method = Method::from_bytes(value).unwrap_or(Method::POST),
            ":path" => path_and_query = String::from_utf8_lossy(value).into_owned(),
            name if name.starts_with(':') => {}
            name => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value),
                ) {
                    headers.append(name, value);
                }
            }
        }
    }
    let hints = ClientHints::read(&headers);
    for name in headers::removed_from_clients() {
        headers.remove(name);
    }
    let request_id = headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (path_and_query, None),
    };
    Parts {
        method,
        path,
        query,
        headers,
        hints,
        request_id,
    }
}

#[async_trait]
impl Picker for GatewayPicker {
    async fn pick(&self, request: &PickerRequest) -> Result<PickerAnswer, Rejection> {
        let snapshot = self.state.snapshots.load();
        let Some(pool) = snapshot.pools.get(&self.pool).cloned() else {
            let error = ClientError::NoEndpointToTry;
            tracing::warn!(pool = %self.pool.qualified_name(), "the endpoint picker's pool is not in the snapshot");
            return Err(refusal(&error));
        };
        let parts = parts(request);
        let head = Head {
            port: 0,
            host: None,
            method: &parts.method,
            path: &parts.path,
            query: parts.query.as_deref(),
            headers: &parts.headers,
            has_body: !request.body.is_empty(),
            request_id: &parts.request_id,
            hints: &parts.hints,
        };
        let mut decision = pool::decide_builtin(pool, &head, request.body.clone());
        if let Step::Tokenize(call) = decision.step {
            let (info, body) = tokenize::prepare(&self.state, &self.connector, call).await;
            decision = pool::pick_tokenized(info, &head, body);
        }
        if let Step::Queue(waiting) = decision.step {
            // The pool is saturated: wait in its queue like a proxied request. The stream's end
            // drops this future, which takes the request out of the queue.
            let fairness_id = parts.hints.fairness_id.as_deref();
            let turn = queue::wait_turn(
                &self.state,
                waiting,
                fairness_id,
                None,
                std::future::pending(),
            );
            decision = match turn.await {
                Turn::Admitted { info, body, admit } => {
                    pool::pick_admitted(*info, &head, body, admit)
                }
                Turn::Refused(_, error) => return Err(refusal(&error)),
                Turn::ClientGone(_) => return Err(refusal(&ClientError::NoEndpointToTry)),
            };
        }
        if let Some(info) = &decision.inference {
            // Only the pick's duration: the running-requests gauge needs the request's end,
            // which a picker does not see.
            self.state
                .metrics
                .pick_duration
                .with_label_values(&[info.pool.name.as_str(), info.strategy()])
                .observe(info.pick_duration.as_secs_f64());
        }
        let inference = decision.inference;
        let (body, mut dispatch) = match decision.step {
            Step::Forward(Forward {
                body,
                upstreams: Upstreams::Pool(dispatch),
                ..
            }) => (body, dispatch),
            Step::Answer(error) => return Err(refusal(&error)),
            other => {
                tracing::error!(step = ?other, "unexpected decision for an endpoint-picker request");
                return Err(refusal(&ClientError::NoEndpointToTry));
            }
        };
        let mut destinations: Vec<SocketAddr> = Vec::with_capacity(DESTINATIONS);
        let mut held = None;
        while let Some(candidate) = dispatch.next_candidate() {
            let address = candidate.endpoint.id.address();
            if !request.subset_allows(address) {
                continue;
            }
            if held.is_none() {
                if let (Some(info), Some(view)) = (&inference, &candidate.view) {
                    candidate
                        .pool
                        .strategy
                        .on_dispatched(&info.view(&parts.request_id, &parts.headers), view);
                }
                self.state
                    .metrics
                    .picks
                    .with_label_values(&[
                        candidate.pool.name.as_str(),
                        candidate.pool.resolution.implementation.as_str(),
                        candidate.endpoint.id.name(),
                    ])
                    .inc();
                held = Some(candidate.endpoint.dispatch(
                    candidate.tokens,
                    candidate.prefill_tokens,
                    candidate.output_tokens,
                ));
            }
            if held.is_some() {
                dispatch.dispatched();
            }
            destinations.push(address);
            if destinations.len() == DESTINATIONS {
                break;
            }
        }
        if destinations.is_empty() {
            return Err(refusal(&ClientError::NoEndpointToTry));
        }
        let body = (body != request.body).then_some(body);
        Ok(PickerAnswer {
            destinations,
            body,
            held: Held(held.map(|h| Arc::new(h) as Arc<dyn std::any::Any + Send + Sync>)),
            ..PickerAnswer::default()
        })
    }
}

/// The endpoint-picker server as one of the process's background services: serves until the
/// process shuts down, then reports NOT_SERVING and drains its open streams.
pub struct EppService {
    picker: Arc<GatewayPicker>,
    ext_proc: parking_lot::Mutex<Option<std::net::TcpListener>>,
    health: parking_lot::Mutex<Option<std::net::TcpListener>>,
}

impl EppService {
    /// Bind both listeners now (so a taken port fails start-up) for a picker of `pool`.
    pub fn bind(
        state: Arc<GatewayState>,
        pool: &str,
        ext_proc: SocketAddr,
        health: SocketAddr,
    ) -> anyhow::Result<Self> {
        let (namespace, name) = pool
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("--epp-pool {pool:?}: expected namespace/name"))?;
        let key = ObjectKey::new(crate::config::Kind::InferencePool, namespace, name);
        let bind = |addr: SocketAddr| -> anyhow::Result<std::net::TcpListener> {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("endpoint picker: cannot listen on {addr}: {e}"))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        Ok(Self {
            picker: Arc::new(GatewayPicker::new(state, key)),
            ext_proc: parking_lot::Mutex::new(Some(bind(ext_proc)?)),
            health: parking_lot::Mutex::new(Some(bind(health)?)),
        })
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for EppService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let (Some(ext_proc), Some(health)) =
            (self.ext_proc.lock().take(), self.health.lock().take())
        else {
            return;
        };
        let listeners = tokio::net::TcpListener::from_std(ext_proc)
            .and_then(|e| Ok((e, tokio::net::TcpListener::from_std(health)?)));
        let (ext_proc, health) = match listeners {
            Ok(listeners) => listeners,
            Err(error) => {
                tracing::error!(%error, "endpoint picker: cannot use its listeners");
                return;
            }
        };
        let pool = self.picker.pool.qualified_name();
        tracing::info!(%pool, ext_proc = ?ext_proc.local_addr().ok(), health = ?health.local_addr().ok(), "endpoint picker serving");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        let server = epp::EppServer::new(Arc::clone(&self.picker));
        if let Err(error) = server.serve(ext_proc, Some(health), stop).await {
            tracing::error!(%error, %pool, "endpoint picker stopped");
        }
    }
}
