//! Forwarding a request whose body the gateway has already read.
//!
//! Stock Pingora sends a body read in `request_filter` upstream only through its 64 KiB retry
//! buffer; a larger body never reaches the upstream. Inference requests must be read before an
//! endpoint can be picked, and long prompts are megabytes, so this module forwards such requests
//! itself with Pingora's public connector: it takes a pooled or new upstream connection, writes
//! the request header and the (possibly rewritten) body, then streams the response to the client
//! chunk by chunk while watching the client connection, and finally returns the connection to the
//! pool. See `docs/architecture.md` for why and how.
//!
//! Failover: a candidate that cannot be connected to is skipped for the next one, and so is a
//! pooled connection that turns out to be dead before any response byte (the upstream closed it
//! while idle); nothing is retried once the upstream may have started on the request. A client
//! that goes away aborts the upstream request by closing its connection, which vLLM takes as an
//! abort. A deadline bounds the whole exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use plugins::Outcome;

use super::response::ResponseObserver;
use crate::openai::ApiError;
use crate::snapshot::{HealthPolicy, InFlight};

/// Response header naming the endpoint that served the request.
pub const SERVED_BY_HEADER: &str = "x-gateway-destination-endpoint-served";

/// How many dead pooled connections to skip for one candidate before giving up on it.
const MAX_STALE_RETRIES: u32 = 3;

/// One endpoint to try, with the in-flight count taken on it (released when this is dropped).
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub address: SocketAddr,
    /// The in-flight count, for pool endpoints.
    pub in_flight: Option<InFlight>,
}

/// Connection settings for upstream attempts.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Passive health of pool endpoints.
    pub health: HealthPolicy,
}

impl UpstreamSettings {
    /// A peer for `address` with these settings.
    pub fn peer(&self, address: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

/// What happened, for logging, metrics and strategy hooks.
#[derive(Debug, Default)]
pub struct ForwardReport {
    /// Status sent to the client (by the upstream or by the gateway).
    pub status: Option<u16>,
    /// The endpoint that produced the response.
    pub served_by: Option<SocketAddr>,
    /// The in-flight count of the serving attempt (kept until the request is logged).
    pub in_flight: Option<InFlight>,
    /// Connection attempts made.
    pub attempts: u32,
    /// Connect failures (and dead pooled connections) skipped over.
    pub connect_failures: u32,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// A short description of a failure.
    pub error: Option<String>,
    /// Whether the deadline cut the request.
    pub timed_out: bool,
    /// The serving endpoint's own status (not one the gateway made up).
    pub upstream_status: Option<u16>,
    /// Whether the serving endpoint's connection failed after the request was sent.
    pub upstream_failed: bool,
}

enum Attempt {
    /// The response (or a gateway error) was delivered, or the client went away.
    Done,
    /// Nothing reached the upstream's request handling; try the next candidate.
    NextCandidate,
    /// The pooled connection was dead; try the same candidate again.
    SameCandidate,
}

/// Forward `header` + `body` to the candidates `next` yields, streaming the response to `session`.
/// Always answers the client (an error in OpenAI's shape when no candidate works) unless the
/// client went away.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    session: &mut Session,
    connector: &Connector,
    settings: UpstreamSettings,
    header: RequestHeader,
    body: Bytes,
    next: &mut (dyn FnMut(&[SocketAddr]) -> Option<Target> + Send),
    deadline: Option<Instant>,
    observer: &mut ResponseObserver,
) -> ForwardReport {
    let mut report = ForwardReport::default();
    // While the gateway waits on the upstream it watches the client connection for a close. A
    // client that sends its next request early must not lose those bytes to that watch:
    // Pingora's pipelining support keeps them for the next request on the connection.
    session.as_downstream_mut().set_pipelining_enabled(true);
    let exchange = attempts(
        session,
        connector,
        settings,
        &header,
        &body,
        next,
        observer,
        &mut report,
    );
    let finished = match deadline {
        None => {
            exchange.await;
            true
        }
        Some(deadline) => tokio::time::timeout_at(deadline.into(), exchange)
            .await
            .is_ok(),
    };
    if !finished {
        report.timed_out = true;
        report.outcome = Some(Outcome::Failed);
        report.error = Some("request timeout".into());
        if observer.response_started() {
            // The client sees the stream end without its terminator; the connection is closed.
            session.set_keepalive(None);
        } else {
            let error = ApiError::new(
                504,
                "timeout_error",
                "The request timed out before the model server answered.",
            );
            report.status = Some(error.status);
            let _ = super::respond_error(session, &error).await;
        }
    }
    report
}

#[allow(clippy::too_many_arguments)]
async fn attempts(
    session: &mut Session,
    connector: &Connector,
    settings: UpstreamSettings,
    header: &RequestHeader,
    body: &Bytes,
    next: &mut (dyn FnMut(&[SocketAddr]) -> Option<Target> + Send),
    observer: &mut ResponseObserver,
    report: &mut ForwardReport,
) {
    let mut tried: Vec<SocketAddr> = Vec::new();
    while let Some(target) = next(&tried) {
        tried.push(target.address);
        let peer = settings.peer(target.address);
        let mut stale_retries = 0;
        loop {
            report.attempts += 1;
            match attempt(
                session, connector, settings, &peer, header, body, observer, report,
            )
            .await
            {
                Attempt::Done => {
                    if let Some(endpoint) = target.in_flight.as_ref().map(InFlight::endpoint) {
                        match (report.upstream_status, report.upstream_failed) {
                            (_, true) => endpoint.record_connect_failure(&settings.health),
                            (Some(status), false) => {
                                endpoint.record_response(status, &settings.health)
                            }
                            (None, false) => {}
                        }
                    }
                    report.served_by = Some(target.address);
                    report.in_flight = target.in_flight;
                    return;
                }
                Attempt::SameCandidate if stale_retries < MAX_STALE_RETRIES => stale_retries += 1,
                Attempt::SameCandidate | Attempt::NextCandidate => {
                    if let Some(endpoint) = target.in_flight.as_ref().map(InFlight::endpoint) {
                        endpoint.record_connect_failure(&settings.health);
                    }
                    report.connect_failures += 1;
                    break;
                }
            }
        }
    }
    let error = if tried.is_empty() {
        ApiError::new(
            503,
            "service_unavailable",
            "No endpoint is available to serve this request.",
        )
    } else {
        ApiError::new(
            502,
            "upstream_error",
            format!(
                "Could not connect to any of {} endpoint(s): {}",
                tried.len(),
                report.error.as_deref().unwrap_or("unknown error")
            ),
        )
    };
    report.status = Some(error.status);
    report.outcome = Some(Outcome::Failed);
    let _ = super::respond_error(session, &error).await;
}

/// Hop-by-hop headers never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// The upstream request header for a buffered body: hop-by-hop headers removed, the body's exact
/// length, and a Host header.
pub fn upstream_header(original: &RequestHeader, body_len: usize) -> RequestHeader {
    let mut header = original.clone();
    for name in HOP_BY_HOP {
        header.remove_header(name);
    }
    if header.headers.get(http::header::HOST).is_none()
        && let Some(authority) = original.uri.authority().map(|a| a.as_str().to_owned())
    {
        let _ = header.insert_header(http::header::HOST, authority);
    }
    if let Some(path) = original.uri.path_and_query().map(|p| p.as_str().to_owned())
        && let Ok(uri) = path.parse::<http::Uri>()
    {
        header.set_uri(uri);
    }
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body_len);
    header
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    session: &mut Session,
    connector: &Connector,
    settings: UpstreamSettings,
    peer: &HttpPeer,
    header: &RequestHeader,
    body: &Bytes,
    observer: &mut ResponseObserver,
    report: &mut ForwardReport,
) -> Attempt {
    let (mut upstream, reused) = match connector.get_http_session(peer).await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::warn!(endpoint = %peer.address(), error = %e, "connect failed; trying the next endpoint");
            report.error = Some(format!(
                "connect to {}: {}",
                peer.address(),
                e.etype().as_str()
            ));
            return Attempt::NextCandidate;
        }
    };
    let sent = async {
        upstream
            .write_request_header(Box::new(header.clone()))
            .await?;
        if !body.is_empty() {
            upstream.write_request_body(body.clone(), true).await?;
        }
        upstream.finish_request_body().await
    }
    .await;
    if let Err(e) = sent {
        report.error = Some(format!(
            "send to {}: {}",
            peer.address(),
            e.etype().as_str()
        ));
        return if reused {
            Attempt::SameCandidate
        } else {
            respond_bad_gateway(
                session,
                report,
                "The model server closed the connection while the request was sent.",
            )
            .await;
            Attempt::Done
        };
    }

    // Wait for the response header while watching for the client to go away.
    let mut client_idle = true;
    let header_read = tokio::select! {
        read = upstream.read_response_header() => read,
        gone = session.as_downstream_mut().read_body_or_idle(true), if client_idle => {
            client_idle = false;
            if gone.is_err() {
                abort(session, report, upstream).await;
                return Attempt::Done;
            }
            upstream.read_response_header().await
        }
    };
    if let Err(e) = header_read {
        report.error = Some(format!(
            "response from {}: {}",
            peer.address(),
            e.etype().as_str()
        ));
        return if reused {
            Attempt::SameCandidate
        } else {
            respond_bad_gateway(
                session,
                report,
                "The model server closed the connection without a response.",
            )
            .await;
            Attempt::Done
        };
    }
    let Some(upstream_response) = upstream.response_header() else {
        respond_bad_gateway(session, report, "The model server sent no response header.").await;
        return Attempt::Done;
    };
    let mut response: ResponseHeader = upstream_response.clone();
    let content_type = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    report.status = Some(response.status.as_u16());
    report.upstream_status = report.status;
    let _ = response.insert_header(SERVED_BY_HEADER, peer.address().to_string());
    let end_of_stream = upstream.response_done();
    if let Err(e) = session
        .write_response_header(Box::new(response), end_of_stream)
        .await
    {
        tracing::debug!(error = %e, "client went away before the response header");
        abort(session, report, upstream).await;
        return Attempt::Done;
    }
    observer.on_header(content_type.as_deref(), true);

    // Stream the body.
    let mut complete = end_of_stream;
    while !complete {
        let chunk = tokio::select! {
            chunk = upstream.read_response_body() => chunk,
            gone = session.as_downstream_mut().read_body_or_idle(true), if client_idle => {
                client_idle = false;
                if gone.is_err() {
                    abort(session, report, upstream).await;
                    return Attempt::Done;
                }
                continue;
            }
        };
        match chunk {
            Ok(Some(bytes)) => {
                observer.on_body(&bytes);
                if let Err(e) = session.write_response_body(Some(bytes), false).await {
                    tracing::debug!(error = %e, "client went away mid-stream");
                    abort(session, report, upstream).await;
                    return Attempt::Done;
                }
                // With a Content-Length the client now has the whole response and may send its
                // next request at once: stop watching the connection before reading that.
                complete = upstream.response_done();
            }
            Ok(None) => complete = true,
            Err(e) => {
                report.error = Some(format!(
                    "response body from {}: {}",
                    peer.address(),
                    e.etype().as_str()
                ));
                report.upstream_failed = true;
                report.outcome = Some(Outcome::Failed);
                // The client sees a truncated stream and a closed connection.
                session.set_keepalive(None);
                upstream.shutdown().await;
                return Attempt::Done;
            }
        }
    }
    observer.on_end();
    if session.write_response_body(None, true).await.is_err() {
        report.outcome = Some(Outcome::Aborted);
    } else {
        report.outcome = Some(Outcome::Completed);
    }
    if upstream.response_done() {
        connector
            .release_http_session(upstream, peer, Some(settings.idle_timeout))
            .await;
    }
    Attempt::Done
}

async fn respond_bad_gateway(session: &mut Session, report: &mut ForwardReport, message: &str) {
    report.upstream_failed = true;
    let error = ApiError::new(502, "upstream_error", message);
    report.status = Some(error.status);
    report.outcome = Some(Outcome::Failed);
    let _ = super::respond_error(session, &error).await;
}

/// The client went away: close the upstream connection so the model server aborts the request.
async fn abort(session: &mut Session, report: &mut ForwardReport, mut upstream: UpstreamSession) {
    report.outcome = Some(Outcome::Aborted);
    report.error = Some("client closed the connection".into());
    session.set_keepalive(None);
    upstream.shutdown().await;
}
