//! Requests to a pool routed by an external endpoint picker (a v1 `endpointPickerRef`): the
//! gateway plays Envoy's part of the Inference Extension's protocol (crate `epp`).
//!
//! The request head (with the pseudo-headers Envoy sends) and the body already read go to the
//! picker with the pool's ready endpoints as the subset hint. Its answer is carried out as Envoy
//! would: header changes applied to the upstream request, the body it returned sent, the
//! destination and fallback list tried in order; an immediate response is passed to the client as
//! the picker wrote it. When no picker answers (no ready picker endpoint, a connection failure on
//! every one, an error, or `--picker-timeout`), the pool's `failureMode` decides: `FailClose`
//! answers 503, `FailOpen` routes with the pool's built-in strategy. Once a model server answered,
//! the served endpoint is reported on the same stream and the picker's response header changes
//! are applied ([`crate::proxy::targets::PickedTargets`]).
//!
//! Changes to pseudo-headers (`:path`, `:authority`) are not applied: the gateway keeps the
//! request line the client sent and logs them at debug level.

use std::time::Instant;

use bytes::Bytes;
use epp::{Immediate, PickError, PickRequest, Picked};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::context::RequestCtx;
use super::decide::{
    BackendKind, Decision, Forward, PickedUpstreams, PickerCall, Step, Upstreams, pool,
};
use super::error::ClientError;
use super::head;
use crate::metrics::GatewayMetrics;
use crate::snapshot::backends::FailureMode;
use crate::snapshot::endpoint::eligible;

/// What asking the picker came to.
pub enum Consulted {
    /// Go on with this decision (forward to the picker's endpoints, or the built-in strategy's
    /// decision of a `FailOpen` pool, or 503).
    Decided(Box<Decision>),
    /// The picker refused the request: answer its response.
    Refused(Immediate),
}

/// The request as the picker sees it: pseudo-headers first, then every header.
fn pick_request(session: &Session, call: &PickerCall) -> PickRequest {
    let header = session.req_header();
    let mut headers = Vec::with_capacity(header.headers.len() + 4);
    let path = header
        .uri
        .path_and_query()
        .map_or_else(|| header.uri.path().to_owned(), |p| p.as_str().to_owned());
    let authority = header
        .headers
        .get(http::header::HOST)
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        .or_else(|| header.uri.authority().map(|a| Bytes::from(a.to_string())))
        .unwrap_or_default();
    headers.push((":method".to_owned(), Bytes::from(header.method.to_string())));
    headers.push((":path".to_owned(), Bytes::from(path)));
    headers.push((":authority".to_owned(), authority));
    headers.push((":scheme".to_owned(), Bytes::from_static(b"http")));
    for (name, value) in &header.headers {
        headers.push((
            name.as_str().to_owned(),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    let subset = eligible(&call.pool.endpoints)
        .iter()
        .map(|e| e.id.address().to_string())
        .collect();
    PickRequest {
        headers,
        body: call.body.clone(),
        subset: Some(subset),
    }
}

/// Ask the picker endpoints in order, moving on only when one cannot be reached.
async fn ask(call: &PickerCall, request: PickRequest) -> Result<Picked, PickError> {
    let mut last = None;
    for (address, client) in call.binding.clients() {
        match client.pick(request.clone()).await {
            Err(error @ PickError::Connect(_)) => {
                tracing::warn!(picker = %address, %error, "endpoint picker unreachable; trying the next one");
                last = Some(error);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| {
        PickError::Connect(format!(
            "Service {} has no ready endpoint",
            call.binding.service.qualified_name()
        ))
    }))
}

/// Ask the pool's picker where `call`'s request goes, and apply what it says to the request.
pub async fn consult(
    call: PickerCall,
    session: &mut Session,
    ctx: &RequestCtx,
    metrics: &GatewayMetrics,
) -> Consulted {
    let started = Instant::now();
    let request = pick_request(session, &call);
    let answer = ask(&call, request).await;
    let elapsed = started.elapsed();
    let pool_name = call.pool.name.as_str();
    metrics
        .picker_duration
        .with_label_values(&[pool_name])
        .observe(elapsed.as_secs_f64());
    let result = match &answer {
        Ok(Picked::Route(_)) => "routed",
        Ok(Picked::Reject(_)) => "rejected",
        Err(error) => error.metric_label(),
    };
    metrics
        .picker_requests
        .with_label_values(&[pool_name, result])
        .inc();
    match answer {
        Ok(Picked::Route(route)) => {
            let header = session.req_header_mut();
            for name in &route.remove_headers {
                header.remove_header(name.as_str());
            }
            for (name, value) in &route.set_headers {
                if let Err(error) = header.insert_header(name.clone(), value.as_ref()) {
                    tracing::warn!(header = %name, %error, "endpoint picker set an invalid header; ignored");
                }
            }
            if !route.pseudo_headers.is_empty() {
                tracing::debug!(changes = ?route.pseudo_headers, "endpoint picker changed pseudo-headers; not applied");
            }
            let header = session.req_header();
            let head = head::view(header, ctx.port, None, true, ctx);
            let inference =
                pool::external_info(&call.pool, &head, &call.body, &route.body, elapsed);
            let tokens = inference.as_ref().map_or(0, |i| u64::from(i.prompt_tokens));
            let output_tokens = inference.as_ref().map_or(0, |i| i.output_budget());
            let upstreams = Upstreams::Picked(PickedUpstreams {
                pool: call.pool,
                destinations: route.destinations,
                served: Some(route.served),
                tokens,
                output_tokens,
            });
            let forward = Forward {
                body: route.body,
                model_header: None,
                upstreams,
            };
            Consulted::Decided(Box::new(Decision {
                inference,
                ..Decision::new(BackendKind::Pool, Step::Forward(forward))
            }))
        }
        Ok(Picked::Reject(immediate)) => Consulted::Refused(immediate),
        Err(error) => {
            tracing::warn!(pool = %pool_name, %error, failure_mode = ?call.binding.failure_mode, "endpoint picker did not answer");
            match call.binding.failure_mode {
                FailureMode::FailOpen => {
                    let header = session.req_header();
                    let head = head::view(header, ctx.port, None, true, ctx);
                    Consulted::Decided(Box::new(pool::decide_builtin(call.pool, &head, call.body)))
                }
                FailureMode::FailClose => Consulted::Decided(Box::new(Decision::new(
                    BackendKind::Pool,
                    Step::Answer(ClientError::PickerUnavailable {
                        pool: call.pool.name.clone(),
                        error: error.to_string(),
                    }),
                ))),
            }
        }
    }
}

/// Answer the picker's immediate response as it wrote it (status, headers, body), with a
/// `content-length` of its body.
pub async fn refuse(session: &mut Session, immediate: &Immediate) -> pingora::Result<()> {
    // A final response needs a final status; anything else from the picker is its failure.
    let status = if (200..=599).contains(&immediate.status) {
        immediate.status
    } else {
        500
    };
    let mut header = ResponseHeader::build(status, Some(immediate.headers.len() + 1))?;
    for (name, value) in &immediate.headers {
        if name.starts_with(':')
            || epp::wire::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        if let Err(error) = header.insert_header(name.clone(), value.as_ref()) {
            tracing::debug!(header = %name, %error, "endpoint picker's response header ignored");
        }
    }
    header.insert_header(http::header::CONTENT_LENGTH, immediate.body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(immediate.body.clone()), true)
        .await
}
