//! The InferencePool part of the decision: parse the body, resolve the model against the pool's
//! InferenceModels, draw the target model by weight and splice it into the body, shed sheddable
//! requests to a saturated pool, and ask the pool's strategy to rank the eligible endpoints.
//!
//! The result keeps what later steps need: an [`InferenceInfo`] for metrics, logging and the
//! strategy's hooks, and a [`Dispatch`], the ranked endpoints with the samples the strategy saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plugins::load::pool_saturation;
use plugins::{Criticality, EndpointView, NoEndpoint, PoolView};

use super::plan::{BackendKind, Decision, Dispatch, Forward, Head, InferenceInfo, Step, Upstreams};
use crate::openai;
use crate::proxy::error::{ClientError, ShedCause};
use crate::snapshot::endpoint::eligible;
use crate::snapshot::{EndpointSample, Pool, UnknownModel};

/// Decide for a request to `pool` whose body is `body`.
pub fn decide(pool: Arc<Pool>, head: &Head<'_>, body: Bytes) -> Decision {
    if body.is_empty() {
        // No body, no model (GET /v1/models, /health): any healthy endpoint will do.
        let endpoints = eligible(&pool.endpoints);
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        fastrand::shuffle(&mut order);
        let dispatch = Dispatch {
            pool,
            endpoints,
            samples: Vec::new(),
            sampled_at: Instant::now(),
            order: order.into_iter(),
            tokens: 0,
        };
        return forward(None, dispatch, body);
    }
    let (info, body) = match resolve(pool, head, &body) {
        Ok(resolved) => resolved,
        Err(error) => return answer(None, error),
    };
    pick(info, head, body)
}

/// Parse the body, resolve its model and rewrite it: the inference request and the body to send.
///
/// The model sent upstream is an InferenceModel's target drawn by weight when it declares
/// targets; otherwise the client's model-name-rewrite hint, if it sent one; otherwise the
/// requested model.
fn resolve(
    pool: Arc<Pool>,
    head: &Head<'_>,
    body: &Bytes,
) -> Result<(InferenceInfo, Bytes), ClientError> {
    let request = openai::parse(body).map_err(ClientError::InvalidBody)?;
    let entry = pool
        .model(&request.model)
        .map_err(|UnknownModel| ClientError::ModelNotFound {
            model: request.model.to_string(),
        })?;
    let client_rewrite = head
        .hints
        .model_rewrite
        .as_deref()
        .filter(|_| entry.is_none_or(|e| e.targets.is_empty()));
    let target_model = match (entry, client_rewrite) {
        (_, Some(rewrite)) => rewrite,
        (Some(entry), None) => entry.draw(),
        (None, None) => request.model.as_ref(),
    };
    let outgoing = if target_model != request.model {
        request.rewrite_model(body, target_model)
    } else {
        body.clone()
    };
    let prompt = if pool.strategy.inputs().prompt {
        request.prompt_text()
    } else {
        None
    };
    let info = InferenceInfo {
        model: request.model.to_string(),
        target_model: target_model.to_owned(),
        criticality: entry.map_or(Criticality::Standard, |e| e.criticality),
        prompt,
        prompt_tokens: request.estimated_prompt_tokens(),
        max_tokens: request.max_tokens,
        stream: request.stream,
        declared: entry.is_some(),
        client_rewrite: client_rewrite.is_some(),
        request_bytes: outgoing.len(),
        running: false,
        pick_duration: Duration::ZERO,
        invalid_candidates: 0,
        pool,
    };
    Ok((info, outgoing))
}

/// Shed or rank: the strategy's candidates over the pool's eligible endpoints.
fn pick(mut info: InferenceInfo, head: &Head<'_>, body: Bytes) -> Decision {
    let pool = Arc::clone(&info.pool);
    let endpoints = eligible(&pool.endpoints);
    let samples: Vec<EndpointSample> = endpoints.iter().map(|e| EndpointSample::of(e)).collect();
    let sampled_at = Instant::now();
    let views: Vec<EndpointView<'_>> = samples
        .iter()
        .zip(&endpoints)
        .map(|(sample, endpoint)| sample.view(endpoint, sampled_at))
        .collect();
    let pool_view = PoolView {
        name: &pool.name,
        endpoints: &views,
    };
    if info.criticality == Criticality::Sheddable {
        let saturation = pool_saturation(&pool_view, &pool.strategy.load_config());
        if saturation >= 1.0 {
            let cause = ShedCause::Saturation(saturation);
            return answer(
                None,
                ClientError::Shed {
                    pool: pool.name.clone(),
                    cause,
                },
            );
        }
    }
    let started = Instant::now();
    let span = tracing::debug_span!("pick", pool = %pool.name, strategy = %info.strategy());
    let picked = span.in_scope(|| {
        pool.strategy
            .pick(&info.view(head.request_id, head.headers), &pool_view)
    });
    info.pick_duration = started.elapsed();
    info.running = picked.is_ok() && info.declared;
    drop(views);
    match picked {
        Err(NoEndpoint::Shed(reason)) => {
            let cause = ShedCause::Strategy(reason);
            answer(
                Some(info),
                ClientError::Shed {
                    pool: pool.name.clone(),
                    cause,
                },
            )
        }
        Err(no_endpoint) => answer(Some(info), ClientError::NoEndpoint(no_endpoint)),
        Ok(candidates) => {
            // Whatever the strategy returned, only indexes into these endpoints remain, once each.
            let resolved = candidates.resolve(endpoints.len());
            info.invalid_candidates = resolved.dropped;
            let dispatch = Dispatch {
                pool,
                endpoints,
                samples,
                sampled_at,
                order: resolved.order.into_iter(),
                tokens: u64::from(info.prompt_tokens),
            };
            forward(Some(info), dispatch, body)
        }
    }
}

fn answer(inference: Option<InferenceInfo>, error: ClientError) -> Decision {
    Decision {
        inference,
        ..Decision::new(BackendKind::Pool, Step::Answer(error))
    }
}

fn forward(inference: Option<InferenceInfo>, dispatch: Dispatch, body: Bytes) -> Decision {
    Decision {
        inference,
        ..Decision::new(
            BackendKind::Pool,
            Step::Forward(Forward {
                body,
                model_header: None,
                upstreams: Upstreams::Pool(dispatch),
            }),
        )
    }
}
