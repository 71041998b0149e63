//! The proxy: Pingora's `ProxyHttp` phases wired to the routing snapshot.
//!
//! `request_filter` finds the listener (by local port and Host), the route and a weighted backend.
//! A Service backend then takes Pingora's own path (`upstream_peer` picks round-robin, the body
//! streams through untouched, `fail_to_connect` moves to the next pod). An InferencePool backend
//! needs the body first ([`inference`]); a request whose body has been read is forwarded by
//! [`forward`], which answers the client itself, so `request_filter` returns `true`. `logging`
//! always runs last and is where counts are released and metrics recorded.

pub mod connections;
pub mod forward;
pub mod inference;
pub mod response;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorSource, ErrorType, Result};

use self::forward::{ForwardReport, Target, UpstreamSettings};
use self::response::ResponseObserver;
use crate::metrics::GatewayMetrics;
use crate::openai::ApiError;
use crate::snapshot::routes::RequestParts;
use crate::snapshot::{Backend, ServiceBackend, SnapshotStore};

/// Headers that steer a gateway and must never come from clients; removed from every request.
pub const CONTROL_HEADERS: [&str; 6] = [
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-subset",
    "x-gateway-destination-endpoint-served",
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
    "x-gateway-model-name-rewrite",
];

/// The request id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Everything the proxy shares across requests.
pub struct Shared {
    /// The routing snapshot.
    pub snapshots: Arc<SnapshotStore>,
    /// Metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// Upstream connections for forwarded requests (pooled).
    pub connector: Connector,
    /// Upstream connection settings.
    pub upstream: UpstreamSettings,
    /// Largest request body read for routing (413 above).
    pub max_body_bytes: usize,
    /// Deadline for each read of a client's request body; `None` waits forever.
    pub client_read_timeout: Option<std::time::Duration>,
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
    /// Requests in progress, for draining.
    pub active: Arc<crate::drain::ActiveRequests>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("upstream", &self.upstream)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .finish()
    }
}

/// The `ProxyHttp` implementation.
#[derive(Debug, Clone)]
pub struct GatewayProxy {
    shared: Arc<Shared>,
}

impl GatewayProxy {
    /// A proxy over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Which kind of backend served a request (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// No backend: the gateway answered (404, 500, ...).
    #[default]
    None,
    /// A Service.
    Service,
    /// An InferencePool.
    Pool,
}

impl BackendKind {
    fn label(self) -> &'static str {
        match self {
            BackendKind::None => "none",
            BackendKind::Service => "service",
            BackendKind::Pool => "pool",
        }
    }
}

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    request_id: String,
    port: u16,
    backend: BackendKind,
    route: Option<Arc<str>>,
    deadline: Option<Instant>,
    service: Option<Arc<ServiceBackend>>,
    tried: Vec<SocketAddr>,
    upstream: Option<SocketAddr>,
    status: Option<u16>,
    forwarded: Option<ForwardReport>,
    inference: Option<inference::InferenceInfo>,
    observer: ResponseObserver,
    _active: crate::drain::ActiveRequest,
}

impl RequestCtx {
    fn new(active: crate::drain::ActiveRequest) -> Self {
        let started = Instant::now();
        Self {
            started,
            request_id: String::new(),
            port: 0,
            backend: BackendKind::None,
            route: None,
            deadline: None,
            service: None,
            tried: Vec::new(),
            upstream: None,
            status: None,
            forwarded: None,
            inference: None,
            observer: ResponseObserver::new(started),
            _active: active,
        }
    }
}

/// Write `error` as the whole response.
pub async fn respond_error(session: &mut Session, error: &ApiError) -> Result<()> {
    let body = error.body();
    let mut header = ResponseHeader::build(error.status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit.
    TooLarge(u64),
    /// The client connection failed.
    Client(Box<Error>),
}

/// Read the whole request body, up to `limit` bytes.
pub async fn read_body(
    session: &mut Session,
    limit: usize,
) -> std::result::Result<Bytes, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > limit as u64) {
        return Err(BodyError::TooLarge(len));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(BodyError::Client)?;
    }
    let mut body = BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(BodyError::Client)?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(new_request_id, str::to_owned)
}

/// 128 random bits as 32 lowercase hex digits.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    id.iter().map(|&b| char::from(b)).collect()
}

fn host_of(session: &Session) -> Option<String> {
    let header = session.req_header();
    let host = header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))?;
    // Strip a port, keeping IPv6 literals (`[::1]:8080`) intact.
    let host = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map_or(host, |(inner, _)| &host[..inner.len() + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    Some(host.to_ascii_lowercase())
}

impl GatewayProxy {
    async fn gateway_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: ApiError,
    ) -> Result<bool> {
        ctx.status = Some(error.status);
        // Boxed, like the other rare paths below: a future is copied whole into the box Pingora
        // makes for every `request_filter` call, so what only some requests need stays out of it.
        Box::pin(respond_error(session, &error)).await?;
        Ok(true)
    }

    async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = self.shared.snapshots.load();
        let host = host_of(session);
        let Some(listener) = snapshot
            .port(ctx.port)
            .and_then(|p| p.listener(host.as_deref()))
        else {
            let error = ApiError::new(
                404,
                "not_found_error",
                "No listener of this gateway accepts this host and port.",
            );
            return self.gateway_error(session, ctx, error).await;
        };

        // Body-based routing: routes that match on the model need the body before matching.
        let mut body = None;
        if listener.routes_on_model && !session.is_body_empty() {
            match self.read_body_or_answer(session, ctx).await? {
                Some(read) => {
                    if let Ok(request) = crate::openai::parse(&read) {
                        session.req_header_mut().insert_header(
                            crate::snapshot::build::MODEL_NAME_HEADER,
                            request.model.as_ref(),
                        )?;
                    }
                    body = Some(read);
                }
                None => return Ok(true),
            }
        }

        let header = session.req_header();
        let parts = RequestParts {
            method: &header.method,
            path: header.uri.path(),
            query: header.uri.query(),
            host: host.as_deref(),
            headers: &header.headers,
        };
        let Some(entry) = listener.route(&parts) else {
            let error = ApiError::new(
                404,
                "not_found_error",
                format!("No route matches {} {}.", header.method, header.uri.path()),
            );
            return self.gateway_error(session, ctx, error).await;
        };
        ctx.route = Some(Arc::clone(&entry.label));
        ctx.deadline = entry.action.timeout.map(|t| ctx.started + t);
        let action = Arc::clone(&entry.action);
        match action.pick_backend() {
            None => {
                let error = ApiError::new(
                    500,
                    "server_error",
                    "The matching route rule has no backend with a weight.",
                );
                self.gateway_error(session, ctx, error).await
            }
            Some(Backend::Invalid(reason)) => {
                let error = ApiError::new(
                    500,
                    "server_error",
                    format!("The route's backend is invalid: {reason}"),
                );
                self.gateway_error(session, ctx, error).await
            }
            Some(Backend::Service(service)) => {
                ctx.backend = BackendKind::Service;
                if service.balancer.is_none() {
                    let error = ApiError::new(
                        503,
                        "service_unavailable",
                        format!(
                            "Service {} has no ready endpoints.",
                            service.key.qualified_name()
                        ),
                    );
                    return self.gateway_error(session, ctx, error).await;
                }
                match body {
                    Some(body) => {
                        Box::pin(self.forward_to_service(session, ctx, Arc::clone(service), body))
                            .await?;
                        Ok(true)
                    }
                    None => {
                        ctx.service = Some(Arc::clone(service));
                        Ok(false)
                    }
                }
            }
            Some(Backend::Pool(pool)) => {
                ctx.backend = BackendKind::Pool;
                let pool = Arc::clone(pool);
                Box::pin(inference::handle(self, session, ctx, pool, body)).await
            }
        }
    }

    /// Read the body, or answer 413 (or give up on a failed client) and return `None`.
    async fn read_body_or_answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        match read_body(session, self.shared.max_body_bytes).await {
            Ok(body) => Ok(Some(body)),
            Err(BodyError::TooLarge(size)) => {
                session.set_keepalive(None);
                let error = ApiError::bad_request(format!(
                    "The request body is {size} bytes; this gateway accepts at most {} bytes.",
                    self.shared.max_body_bytes
                ))
                .with_code("request_too_large");
                let error = ApiError {
                    status: 413,
                    ..error
                };
                self.gateway_error(session, ctx, error).await?;
                Ok(None)
            }
            Err(BodyError::Client(e)) => {
                // The client went away or broke the framing while sending the body.
                ctx.status = Some(499);
                Err(e)
            }
        }
    }

    /// The Inference Extension's per-model metrics and the gateway's token timings.
    fn record_inference(
        &self,
        info: &inference::InferenceInfo,
        report: Option<&ForwardReport>,
        observer: &ResponseObserver,
        elapsed: std::time::Duration,
        status: u16,
    ) {
        let metrics = &self.shared.metrics;
        let (model, target) = info.labels(status);
        let labels = [model, target];
        metrics.model_requests.with_label_values(&labels).inc();
        let failed = report.is_some_and(|r| r.outcome != Some(plugins::Outcome::Completed));
        if status >= 400 || status == 0 || failed {
            let code = if status == 0 || (failed && status < 400) {
                "aborted".to_owned()
            } else {
                status.to_string()
            };
            metrics
                .model_errors
                .with_label_values(&[model, target, code.as_str()])
                .inc();
        }
        metrics
            .model_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        metrics
            .model_request_sizes
            .with_label_values(&labels)
            .observe(info.request_bytes as f64);
        metrics
            .model_response_sizes
            .with_label_values(&labels)
            .observe(observer.body_bytes() as f64);
        if let Some(usage) = observer.usage() {
            metrics
                .model_input_tokens
                .with_label_values(&labels)
                .observe(f64::from(usage.prompt_tokens));
            metrics
                .model_output_tokens
                .with_label_values(&labels)
                .observe(f64::from(usage.completion_tokens));
            if usage.completion_tokens > 0 {
                metrics
                    .model_ntpot
                    .with_label_values(&labels)
                    .observe(elapsed.as_secs_f64() / f64::from(usage.completion_tokens));
            }
        }
        if let Some(ttft) = observer.time_to_first_token() {
            metrics
                .time_to_first_token
                .with_label_values(&labels)
                .observe(ttft.as_secs_f64());
        }
        if let Some(tpot) = observer.time_per_output_token() {
            metrics
                .time_per_output_token
                .with_label_values(&labels)
                .observe(tpot.as_secs_f64());
        }
        if let Some(failures) = report.map(|r| r.connect_failures).filter(|&n| n > 0) {
            metrics
                .retries
                .with_label_values(&[info.pool.key.qualified_name().as_str()])
                .inc_by(u64::from(failures));
        }
        if info.running {
            metrics
                .model_running
                .with_label_values(&[info.model.as_str()])
                .dec();
        }
    }

    /// Forward an already-read request to the candidates `next` yields (see [`forward`]).
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        header: pingora::http::RequestHeader,
        body: Bytes,
        next: &mut (dyn FnMut(&[SocketAddr]) -> Option<Target> + Send),
    ) {
        let report = forward::forward(
            session,
            &self.shared.connector,
            self.shared.upstream,
            header,
            body,
            next,
            ctx.deadline,
            &mut ctx.observer,
        )
        .await;
        ctx.upstream = report.served_by;
        ctx.forwarded = Some(report);
    }

    async fn forward_to_service(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        service: Arc<ServiceBackend>,
        body: Bytes,
    ) -> Result<()> {
        let header = forward::upstream_header(session.req_header(), body.len());
        let balancer = service.balancer.clone();
        let count = service.endpoints.len();
        let mut next = move |tried: &[SocketAddr]| {
            let backend = balancer.as_ref()?.select_with(b"", count, |b, healthy| {
                healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
            })?;
            Some(Target {
                address: *backend.addr.as_inet()?,
                in_flight: None,
            })
        };
        self.forward(session, ctx, header, body, &mut next).await;
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new(self.shared.active.start())
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // No response compression: model servers' SSE must pass byte for byte, unbuffered.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        connections::request_started();
        if self.shared.active.draining() {
            // Shutting down: answer with `Connection: close` so the client reconnects elsewhere
            // rather than reusing a connection this process is about to drop.
            session.set_keepalive(None);
        }
        session.set_read_timeout(self.shared.client_read_timeout);
        ctx.request_id = request_id(session);
        ctx.port = session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .map_or(0, |a| a.port());
        let head = connections::header_bytes(session.req_header());
        if head > self.shared.max_header_bytes {
            let error = ApiError::new(
                431,
                "invalid_request_error",
                format!(
                    "The request head is {head} bytes; this gateway accepts at most {}.",
                    self.shared.max_header_bytes
                ),
            );
            return self.gateway_error(session, ctx, error).await;
        }
        let header = session.req_header_mut();
        // Control headers all start with `x-gateway-`; most requests carry none, so look once.
        let has_control = header
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("x-gateway-"));
        if has_control {
            for name in CONTROL_HEADERS {
                header.remove_header(name);
            }
            header.remove_header(crate::snapshot::build::MODEL_NAME_HEADER);
        }
        let current = header.headers.get(REQUEST_ID_HEADER).map(|v| v.as_bytes());
        if current != Some(ctx.request_id.as_bytes()) {
            header.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        }
        self.route(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let service = ctx
            .service
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no service backend chosen"))?;
        let tried = &ctx.tried;
        let backend = service
            .balancer
            .as_ref()
            .and_then(|b| {
                b.select_with(b"", service.endpoints.len(), |b, healthy| {
                    healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
                })
            })
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::HTTPStatus(502),
                    "every endpoint of the Service failed",
                )
            })?;
        let address = *backend
            .addr
            .as_inet()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "non-IP backend"))?;
        ctx.tried.push(address);
        ctx.upstream = Some(address);
        let mut peer = self.shared.upstream.peer(address);
        if let Some(deadline) = ctx.deadline {
            peer.options.read_timeout = Some(deadline.saturating_duration_since(Instant::now()));
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.shared
            .metrics
            .upstream_attempts
            .with_label_values(&["connect_error"])
            .inc();
        tracing::warn!(endpoint = %peer.address(), error = %e, "connect failed; trying the next endpoint");
        let endpoints = ctx.service.as_ref().map_or(0, |s| s.endpoints.len());
        if ctx.tried.len() < endpoints {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut pingora::http::RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.shared
            .metrics
            .upstream_attempts
            .with_label_values(&["ok"])
            .inc();
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(chunk) = body {
            ctx.observer.on_body(chunk);
        }
        if end_of_stream {
            ctx.observer.on_end();
        }
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Error::e_explain(ErrorType::HTTPStatus(504), "request timeout");
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let content_type = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        // A Service route's first token and token usage only go to the access log; finding them
        // costs a JSON parse per response, so it is skipped while that log is off.
        let scan = tracing::enabled!(target: "access", tracing::Level::INFO);
        ctx.observer.on_header(content_type, scan);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectError
            | ErrorType::ConnectNoRoute => 502,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && !ctx.observer.response_started() {
            let kind = if code == 504 {
                "timeout_error"
            } else {
                "upstream_error"
            };
            let error = ApiError::new(
                code,
                kind,
                format!(
                    "The gateway could not complete the request: {}",
                    e.etype().as_str()
                ),
            );
            ctx.status = Some(code);
            let _ = respond_error(session, &error).await;
        } else if code == 0 {
            ctx.status = Some(499);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        connections::request_finished();
        let forwarded = ctx.forwarded.take();
        let status = ctx
            .status
            .or_else(|| forwarded.as_ref().and_then(|f| f.status))
            .or_else(|| session.response_written().map(|h| h.status.as_u16()))
            .unwrap_or(0);
        let port = ctx.port.to_string();
        let backend = ctx.backend.label();
        let metrics = &self.shared.metrics;
        let status_code = http::StatusCode::from_u16(status).ok();
        let code = status_code.as_ref().map_or("0", http::StatusCode::as_str);
        metrics
            .requests
            .with_label_values(&[port.as_str(), backend, code])
            .inc();
        let elapsed = ctx.started.elapsed();
        metrics
            .request_duration
            .with_label_values(&[port.as_str(), backend])
            .observe(elapsed.as_secs_f64());
        if let Some(ttfb) = ctx.observer.time_to_first_byte() {
            metrics
                .time_to_first_byte
                .with_label_values(&[port.as_str(), backend])
                .observe(ttfb.as_secs_f64());
        }
        if let Some(report) = &forwarded {
            let ok = report.attempts.saturating_sub(report.connect_failures);
            metrics
                .upstream_attempts
                .with_label_values(&["ok"])
                .inc_by(u64::from(ok));
            metrics
                .upstream_attempts
                .with_label_values(&["connect_error"])
                .inc_by(u64::from(report.connect_failures));
        }
        let attempts = forwarded
            .as_ref()
            .map_or(ctx.tried.len() as u32, |f| f.attempts);
        if let Some(info) = &ctx.inference {
            inference::completed(info, forwarded.as_ref(), &ctx.observer, elapsed, status);
            self.record_inference(info, forwarded.as_ref(), &ctx.observer, elapsed, status);
        }
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            port = ctx.port,
            method = %session.req_header().method,
            path = %session.req_header().uri.path(),
            route = ctx.route.as_deref().unwrap_or("-"),
            backend,
            model = ctx.inference.as_ref().map_or("-", |i| i.model.as_str()),
            target_model = ctx.inference.as_ref().map_or("-", |i| i.target_model.as_str()),
            strategy = ctx.inference.as_ref().map_or("-", |i| i.strategy.as_str()),
            endpoint = %ctx.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            status,
            attempts,
            ttfb_ms = ctx.observer.time_to_first_byte().map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            ttft_ms = ctx.observer.time_to_first_token().map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            prompt_tokens = ctx.observer.usage().map_or(-1, |u| i64::from(u.prompt_tokens)),
            completion_tokens = ctx.observer.usage().map_or(-1, |u| i64::from(u.completion_tokens)),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            bytes = ctx.observer.body_bytes(),
            error = error.map(|e| e.to_string()).or_else(|| forwarded.as_ref().and_then(|f| f.error.clone())),
        );
        // Dropping the report releases the in-flight count of the serving endpoint.
        drop(forwarded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position takes more than one value (no fixed padding).
        for position in 0..32 {
            let values: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.as_bytes()[position]).collect();
            assert!(values.len() > 1, "digit {position} never changes");
        }
    }
}
