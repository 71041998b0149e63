//! The InferencePool part of the decision: parse the body, resolve the model against the pool's
//! InferenceModels and InferenceModelRewrites, draw the target model by weight and splice it into
//! the body, find the request's priority, shed negative-priority requests to a saturated pool, and ask the pool's strategy to rank the eligible endpoints.
//!
//! The result keeps what later steps need: an [`InferenceInfo`] for metrics, logging and the
//! strategy's hooks, and a [`Dispatch`], the ranked endpoints with the samples the strategy saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plugins::load::{free_slots, pool_saturation};
use plugins::{EndpointView, NoEndpoint, PoolView};

use super::plan::{
    BackendKind, Decision, Dispatch, Forward, Head, InferenceInfo, PickerCall, Step, TokenizeCall,
    Upstreams, Waiting,
};
use crate::kv_events::tokenize::PromptInput;
use crate::openai;
use crate::proxy::error::{ClientError, ShedCause};
use crate::proxy::queue::load_config_for;
use crate::snapshot::endpoint::eligible;
use crate::snapshot::{EndpointSample, Pool, UnknownModel};

/// Decide for a request to `pool` whose body is `body`: ask its external endpoint picker when it
/// has one (500 when that reference is invalid), else its built-in strategy.
pub fn decide(pool: Arc<Pool>, head: &Head<'_>, body: Bytes) -> Decision {
    match &pool.picker_binding {
        None => decide_builtin(pool, head, body),
        Some(Err(reason)) => answer(
            None,
            ClientError::InvalidPicker {
                pool: pool.name.clone(),
                reason: Arc::clone(reason),
            },
        ),
        Some(Ok(binding)) => {
            let binding = Arc::clone(binding);
            Decision::new(
                BackendKind::Pool,
                Step::Pick(PickerCall {
                    pool,
                    binding,
                    body,
                }),
            )
        }
    }
}

/// Decide for a request to `pool` with the pool's own strategy (also a `FailOpen` pool's
/// fallback when its picker does not answer).
pub fn decide_builtin(pool: Arc<Pool>, head: &Head<'_>, body: Bytes) -> Decision {
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
            prefill_tokens: None,
            output_tokens: 0,
            admit: None,
        };
        return forward(None, dispatch, body);
    }
    let (info, body) = match resolve(pool, head, &body) {
        Ok(resolved) => resolved,
        Err(error) => return answer(None, error),
    };
    // A pool whose KV events are watched, and a strategy that reads prompts: match the prompt
    // against the events, in the model server's tokens.
    if info.pool.kv_events.is_some()
        && info.prompt.is_some()
        && let Some(input) = PromptInput::of(&body, &info.target_model)
    {
        return Decision::new(
            BackendKind::Pool,
            Step::Tokenize(TokenizeCall {
                info: Box::new(info),
                body,
                input,
            }),
        );
    }
    pick(info, head, body)
}

/// Rank a request whose prompt was tokenized for matching against KV events
/// ([`Step::Tokenize`]); as [`decide_builtin`] from there.
pub fn pick_tokenized(info: InferenceInfo, head: &Head<'_>, body: Bytes) -> Decision {
    pick(info, head, body)
}

/// Parse the body, resolve its model and rewrite it: the inference request and the body to send.
///
/// The model sent upstream is, in this order: a target of the pool's InferenceModelRewrite rule
/// for the requested model (an exact match, else the generic rule), drawn by weight; an
/// InferenceModel's target drawn by weight; the client's model-name-rewrite hint; the requested
/// model. What the operator configured comes before what the client asks for. The priority is
/// the named InferenceObjective's, else the InferenceModel's criticality, else `0`.
fn resolve(
    pool: Arc<Pool>,
    head: &Head<'_>,
    body: &Bytes,
) -> Result<(InferenceInfo, Bytes), ClientError> {
    let request = openai::parse(body).map_err(ClientError::InvalidBody)?;
    let requested = request.model.as_deref();
    let served = pool
        .model(requested)
        .map_err(|UnknownModel| match requested {
            Some(model) => ClientError::ModelNotFound {
                model: model.to_owned(),
            },
            None => ClientError::InvalidBody(
                openai::BadRequest::new("you must provide a model parameter").with_param("model"),
            ),
        })?;
    let entry = served.entry;
    let configured = served
        .rewrite
        .and_then(|rule| rule.targets.draw())
        .or_else(|| entry.and_then(|e| e.targets.draw()));
    let client_rewrite = head
        .hints
        .model_rewrite
        .as_deref()
        .filter(|_| configured.is_none());
    let target_model = configured
        .or(client_rewrite)
        .or(requested)
        .unwrap_or_default();
    let outgoing = if Some(target_model) != requested {
        request.rewrite_model(body, target_model)
    } else {
        body.clone()
    };
    let prompt = if pool.strategy.inputs().prompt {
        request.prompt_text()
    } else {
        None
    };
    let exact_rewrite = requested.is_some_and(|m| pool.rewrites.exact.contains_key(m));
    let declared = entry.is_some() || exact_rewrite;
    let objective = head
        .hints
        .objective
        .as_deref()
        .filter(|name| pool.objectives.contains_key(*name));
    let info = InferenceInfo {
        model: requested.unwrap_or_default().to_owned(),
        target_model: target_model.to_owned(),
        priority: pool.priority(objective, entry.map(|e| &**e)),
        objective: objective.map(str::to_owned),
        prompt,
        prompt_tokens: request.estimated_prompt_tokens(),
        max_tokens: request.max_tokens,
        stream: request.stream,
        declared,
        target_declared: configured.is_some() || (declared && client_rewrite.is_none()),
        client_rewrite: client_rewrite.is_some(),
        request_bytes: outgoing.len(),
        running: false,
        pick_duration: Duration::ZERO,
        invalid_candidates: 0,
        prompt_cache: None,
        pool,
    };
    Ok((info, outgoing))
}

/// What the gateway records of a request an external picker routed: the model the client asked
/// for (`original`), the one the picker sent (`sent`, the body it returned), the priority, sizes.
/// `None` when the body is not an OpenAI request (the picker accepted it anyway; it is forwarded
/// without inference metrics).
pub fn external_info(
    pool: &Arc<Pool>,
    head: &Head<'_>,
    original: &[u8],
    sent: &[u8],
    pick_duration: Duration,
) -> Option<InferenceInfo> {
    let request = openai::parse(original).ok()?;
    let requested = request.model.as_deref();
    let target = openai::parse(sent)
        .ok()
        .and_then(|r| r.model.map(|m| m.into_owned()));
    let entry = requested.and_then(|m| pool.models.get(m));
    let objective = head
        .hints
        .objective
        .as_deref()
        .filter(|name| pool.objectives.contains_key(*name));
    Some(InferenceInfo {
        model: requested.unwrap_or_default().to_owned(),
        target_model: target.unwrap_or_else(|| requested.unwrap_or_default().to_owned()),
        priority: pool.priority(objective, entry.map(|e| &**e)),
        objective: objective.map(str::to_owned),
        prompt: None,
        prompt_tokens: request.estimated_prompt_tokens(),
        max_tokens: request.max_tokens,
        stream: request.stream,
        declared: entry.is_some(),
        // The picker chose the target: a label once a model server accepted it.
        target_declared: false,
        client_rewrite: false,
        request_bytes: sent.len(),
        running: false,
        pick_duration,
        invalid_candidates: 0,
        prompt_cache: None,
        pool: Arc::clone(pool),
    })
}

/// Shed, queue or rank: the strategy's candidates over the pool's eligible endpoints.
fn pick(info: InferenceInfo, head: &Head<'_>, body: Bytes) -> Decision {
    pick_with(info, head, body, None)
}

/// Rank a request that waited its turn in the pool's flow-control queue: it is neither shed nor
/// queued again, and `admit` keeps its place in the pool's load until it is dispatched.
pub fn pick_admitted(
    info: InferenceInfo,
    head: &Head<'_>,
    body: Bytes,
    admit: crate::flow::Admit,
) -> Decision {
    pick_with(info, head, body, Some(admit))
}

fn pick_with(
    mut info: InferenceInfo,
    head: &Head<'_>,
    body: Bytes,
    admit: Option<crate::flow::Admit>,
) -> Decision {
    let pool = Arc::clone(&info.pool);
    let endpoints = eligible(&pool.endpoints);
    let samples: Vec<EndpointSample> = endpoints.iter().map(|e| EndpointSample::of(e)).collect();
    let sampled_at = Instant::now();
    let mut views: Vec<EndpointView<'_>> = samples
        .iter()
        .zip(&endpoints)
        .map(|(sample, endpoint)| sample.view(endpoint, sampled_at))
        .collect();
    if let Some(cache) = &info.prompt_cache {
        for (view, cached) in views.iter_mut().zip(cache.cached(&endpoints)) {
            view.cached_prefix = cached;
        }
    }
    let pool_view = PoolView {
        name: &pool.name,
        endpoints: &views,
    };
    if admit.is_none() && pool.flow.enabled {
        pool.queue.note_arrival(info.priority, sampled_at);
    }
    if admit.is_none() && info.priority < 0 && shed_negative(&pool) {
        // Saturated for this priority: with a higher one active, the tighter thresholds that
        // keep its headroom.
        let config = load_config_for(&pool, info.priority, sampled_at);
        let saturation = pool_saturation(&pool_view, &config);
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
    // Flow control: with no room left for its priority, or others of its priority or higher
    // already waiting, the request waits its turn.
    if admit.is_none()
        && pool.flow.enabled
        && queue_first(&pool, &pool_view, info.priority, sampled_at)
    {
        let pool_empty = pool.endpoints.is_empty();
        drop(views);
        return Decision::new(
            BackendKind::Pool,
            Step::Queue(Waiting {
                info,
                body,
                pool_empty,
            }),
        );
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
                prefill_tokens: resolved.prefill_tokens,
                output_tokens: info.output_budget(),
                admit,
            };
            forward(Some(info), dispatch, body)
        }
    }
}

/// Whether a request of `priority` arriving at `now` must wait in the pool's queue: a request of
/// its priority or higher already waits (it does not overtake), or the pool has no room for it
/// (a lower priority keeps headroom for an active higher one).
fn queue_first(pool: &Pool, view: &PoolView<'_>, priority: i32, now: Instant) -> bool {
    pool.queue.waiting_at_or_above(priority)
        || free_slots(view, &load_config_for(pool, priority, now)) <= 0.0
}

/// Whether negative priorities are shed while the pool is saturated: always without flow
/// control, and by default with it (`shed-negative-priority`).
fn shed_negative(pool: &Pool) -> bool {
    !pool.flow.enabled || pool.flow.shed_negative_priority
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
