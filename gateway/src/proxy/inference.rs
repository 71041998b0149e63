//! The InferencePool path: read and parse the body, resolve the model, draw the target model,
//! rewrite `model`, ask the pool's strategy for candidates, and forward.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::Result;
use pingora::proxy::Session;
use plugins::{
    Candidates, Completion, Criticality, EndpointView, NoEndpoint, Outcome, PoolView, RequestView,
};

use super::forward::{self, ForwardReport, Target};
use super::response::ResponseObserver;
use super::{GatewayProxy, RequestCtx};
use crate::openai::{self, ApiError};
use crate::snapshot::endpoint::{eligible, endpoint_views};
use crate::snapshot::{Endpoint, Pool, UnknownModel};
use plugins::load::pool_saturation;

/// What the logging phase needs to know about an inference request.
#[derive(Debug)]
pub struct InferenceInfo {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Requested model.
    pub model: String,
    /// Model sent upstream.
    pub target_model: String,
    /// Name of the running strategy.
    pub strategy: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// Whether an InferenceModel declares the requested model (its name is then a safe label).
    pub declared: bool,
    /// Size of the request body sent upstream.
    pub request_bytes: usize,
    /// Whether the request counts in `inference_model_running_requests` (released in logging).
    pub running: bool,
}

impl InferenceInfo {
    /// The `(model_name, target_model_name)` metric labels. A name no InferenceModel declares
    /// becomes a label only once a model server answered it with success, so clients cannot mint
    /// series with made-up names.
    pub fn labels(&self, status: u16) -> (&str, &str) {
        if self.declared || (200..300).contains(&status) {
            (&self.model, &self.target_model)
        } else {
            ("unknown", "unknown")
        }
    }
}

/// Serve a request routed to `pool`. `body` is the body if routing already read it.
pub async fn handle(
    proxy: &GatewayProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    pool: Arc<Pool>,
    body: Option<Bytes>,
) -> Result<bool> {
    let body = match body {
        Some(body) => body,
        None => match proxy.read_body_or_answer(session, ctx).await? {
            Some(body) => body,
            None => return Ok(true),
        },
    };
    if body.is_empty() {
        // No body, no model (GET /v1/models, /health): any healthy endpoint will do.
        let endpoints = eligible(&pool.endpoints);
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        fastrand::shuffle(&mut order);
        return dispatch(
            proxy,
            session,
            ctx,
            &pool,
            &endpoints,
            None,
            Candidates::new(order),
            body,
        )
        .await;
    }
    let request = match openai::parse(&body) {
        Ok(request) => request,
        Err(error) => return proxy.gateway_error(session, ctx, error).await,
    };
    let entry = match pool.model(&request.model) {
        Ok(entry) => entry,
        Err(UnknownModel) => {
            let error = ApiError::new(
                404,
                "invalid_request_error",
                format!("The model `{}` does not exist.", request.model),
            )
            .with_param("model")
            .with_code("model_not_found");
            return proxy.gateway_error(session, ctx, error).await;
        }
    };
    let target_model = entry
        .map_or(request.model.as_ref(), |e| e.draw())
        .to_owned();
    let criticality = entry.map_or(Criticality::Standard, |e| e.criticality);
    let outgoing = if target_model != request.model {
        request.rewrite_model(&body, &target_model)
    } else {
        body.clone()
    };
    let prompt = pool
        .strategy
        .inputs()
        .prompt
        .then(|| request.prompt_text())
        .flatten();
    let prompt_tokens = request.estimated_prompt_tokens();
    let headers = session.req_header().headers.clone();
    let request_id = ctx.request_id.clone();
    let view = RequestView {
        request_id: &request_id,
        model: &request.model,
        target_model: &target_model,
        criticality,
        prompt: prompt.as_deref(),
        prompt_tokens,
        max_tokens: request.max_tokens,
        stream: request.stream,
        headers: &headers,
    };
    let endpoints = eligible(&pool.endpoints);
    let metrics: Vec<_> = endpoints.iter().map(|e| e.metrics()).collect();
    let views = endpoint_views(&endpoints, &metrics, Instant::now());
    let pool_name = pool.key.qualified_name();
    if criticality == Criticality::Sheddable {
        let pool_view = PoolView {
            name: &pool_name,
            endpoints: &views,
        };
        let saturation = pool_saturation(&pool_view, &pool.strategy.load_config());
        if saturation >= 1.0 {
            let message = format!(
                "The pool {pool_name} is saturated (saturation {saturation:.2}) and this model is sheddable; retry later."
            );
            return shed(proxy, session, ctx, &pool_name, message).await;
        }
    }
    let pick_started = Instant::now();
    let span =
        tracing::debug_span!("pick", pool = %pool_name, strategy = %pool.resolution.implementation);
    let picked = span.in_scope(|| {
        pool.strategy.pick(
            &view,
            &PoolView {
                name: &pool_name,
                endpoints: &views,
            },
        )
    });
    proxy
        .shared
        .metrics
        .pick_duration
        .with_label_values(&[pool_name.as_str(), pool.resolution.implementation.as_str()])
        .observe(pick_started.elapsed().as_secs_f64());
    if let Err(NoEndpoint::Shed(reason)) = &picked {
        let message = format!("The pool {pool_name} is saturated: {reason}; retry later.");
        return shed(proxy, session, ctx, &pool_name, message).await;
    }
    let declared = entry.is_some();
    let running = picked.is_ok() && declared;
    if running {
        proxy
            .shared
            .metrics
            .model_running
            .with_label_values(&[request.model.as_ref()])
            .inc();
    }
    ctx.inference = Some(InferenceInfo {
        pool: Arc::clone(&pool),
        model: request.model.clone().into_owned(),
        target_model: target_model.clone(),
        strategy: pool.resolution.implementation.clone(),
        prompt_tokens,
        declared,
        request_bytes: outgoing.len(),
        running,
    });
    let candidates = match picked {
        Ok(candidates) => candidates,
        Err(no_endpoint) => {
            let kind = if no_endpoint.status() == 429 {
                "rate_limit_error"
            } else {
                "service_unavailable"
            };
            let error = ApiError::new(no_endpoint.status(), kind, format!("{no_endpoint}."));
            return proxy.gateway_error(session, ctx, error).await;
        }
    };
    dispatch(
        proxy,
        session,
        ctx,
        &pool,
        &endpoints,
        Some((&view, &views)),
        candidates,
        outgoing,
    )
    .await
}

/// Answer 429 to a shed request and count it in `gateway_sheds_total`, whoever shed it: the
/// gateway's saturation check or the pool's strategy ([`NoEndpoint::Shed`]).
async fn shed(
    proxy: &GatewayProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    pool_name: &str,
    message: String,
) -> Result<bool> {
    proxy
        .shared
        .metrics
        .sheds
        .with_label_values(&[pool_name])
        .inc();
    let error = ApiError::new(429, "rate_limit_error", message);
    proxy.gateway_error(session, ctx, error).await
}

#[allow(clippy::too_many_arguments)] // each is a distinct part of one dispatch; a struct would only rename them
async fn dispatch(
    proxy: &GatewayProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    pool: &Arc<Pool>,
    endpoints: &[&Arc<Endpoint>],
    picked: Option<(&RequestView<'_>, &[EndpointView<'_>])>,
    candidates: Candidates,
    body: Bytes,
) -> Result<bool> {
    let header = forward::upstream_header(session.req_header(), body.len());
    let tokens = u64::from(picked.map_or(0, |(request, _)| request.prompt_tokens));
    let pool_name = pool.key.qualified_name();
    let metrics = &proxy.shared.metrics;
    let resolved = candidates.resolve(endpoints.len());
    if resolved.dropped > 0 {
        metrics
            .invalid_candidates
            .with_label_values(&[pool_name.as_str(), pool.resolution.implementation.as_str()])
            .inc_by(resolved.dropped as u64);
        tracing::debug!(
            pool = %pool_name,
            strategy = %pool.resolution.implementation,
            dropped = resolved.dropped,
            "the strategy returned endpoint indexes outside the pool"
        );
    }
    let mut order = resolved.order.into_iter();
    let mut next = |_tried: &[SocketAddr]| -> Option<Target> {
        let index = order.next()?;
        let endpoint = endpoints[index];
        if let Some((request, views)) = picked {
            pool.strategy.on_dispatched(request, &views[index]);
        }
        tracing::debug!(
            pool = %pool_name,
            strategy = %pool.resolution.implementation,
            endpoint = %endpoint.id.name(),
            address = %endpoint.id.address(),
            "picked endpoint"
        );
        metrics
            .picks
            .with_label_values(&[
                pool_name.as_str(),
                pool.resolution.implementation.as_str(),
                endpoint.id.name(),
            ])
            .inc();
        Some(Target {
            address: endpoint.id.address(),
            in_flight: Some(endpoint.dispatch(tokens)),
        })
    };
    proxy.forward(session, ctx, header, body, &mut next).await;
    Ok(true)
}

/// Report a finished inference request to the pool's strategy.
pub fn completed(
    info: &InferenceInfo,
    report: Option<&ForwardReport>,
    observer: &ResponseObserver,
    duration: Duration,
    status: u16,
) {
    let Some(in_flight) = report.and_then(|r| r.in_flight.as_ref()) else {
        return;
    };
    let outcome = report.and_then(|r| r.outcome).unwrap_or(Outcome::Failed);
    info.pool.strategy.on_completed(&Completion {
        endpoint: &in_flight.endpoint().id,
        target_model: &info.target_model,
        outcome,
        status: (status > 0).then_some(status),
        time_to_first_byte: observer.time_to_first_byte(),
        duration,
        prompt_tokens: observer
            .usage()
            .map_or(info.prompt_tokens, |u| u.prompt_tokens),
        completion_tokens: observer.usage().map(|u| u.completion_tokens),
    });
}
