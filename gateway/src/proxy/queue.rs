//! A request waiting in its pool's flow-control queue ([`crate::flow`]): it is queued with its
//! priority, flow and size, waits for its turn, its time to live or its client's departure, and
//! then is ranked (by the caller, with [`super::decide::pool::pick_admitted`], against the pool
//! as the current snapshot has it) or answered. The proxy and the endpoint-picker server both
//! queue this way.
//!
//! The flow is the fairness id the client sent (`x-llm-d-inference-fairness-id`), else the model
//! it asked for: by default each model's traffic is one flow. The cost counted for fairness is the
//! request's estimated prompt tokens plus its `max_tokens` (or [`DEFAULT_OUTPUT_TOKENS`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowcontrol::Admission;
use plugins::PoolView;
use plugins::load::{LoadConfig, free_slots};

use super::decide::{InferenceInfo, Waiting};
use super::error::ClientError;
use crate::config::ObjectKey;
use crate::flow::{Admit, Refusal, Room, Waited};
use crate::snapshot::Pool;
use crate::snapshot::endpoint::{EndpointSample, eligible};
use crate::state::GatewayState;

/// Output tokens counted for a request that names no `max_tokens`: about what a chat answer
/// takes, so requests that leave it open are not free for fairness.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 256;

/// How a wait ended.
#[derive(Debug)]
pub enum Turn {
    /// Its turn came: rank it ([`decide::pool::pick_admitted`]) against its pool as the current
    /// snapshot has it (`info.pool`), holding `admit` until it is dispatched.
    Admitted {
        /// The request, its pool updated.
        info: Box<InferenceInfo>,
        /// The body to send.
        body: Bytes,
        /// Its release from the queue.
        admit: Admit,
    },
    /// No turn: answer this.
    Refused(Box<InferenceInfo>, ClientError),
    /// The client left while it waited.
    ClientGone(Box<InferenceInfo>),
}

/// The thresholds a request of `priority` is judged by: the strategy's, lowered by the pool's
/// priority headroom while a higher priority is active, and with the KV threshold raised by the
/// same share while only lower ones are ([`crate::flow::FlowSettings`]).
pub fn load_config_for(pool: &Pool, priority: i32, now: Instant) -> LoadConfig {
    let config = pool.strategy.load_config();
    let flow = &pool.flow;
    let activity = pool
        .queue
        .activity(priority, now, flow.priority_headroom_window);
    if activity.higher {
        config.with_headroom(flow.priority_headroom_queue, flow.priority_headroom_kv)
    } else if activity.lower {
        config.with_headroom_above(flow.priority_headroom_kv)
    } else {
        config
    }
}

/// Whether the pool `key` names in the current snapshot has room for another request of
/// `priority`, given `released` requests about to be dispatched to it.
pub fn room(state: &GatewayState, key: &ObjectKey, released: usize, priority: i32) -> Room {
    let snapshot = state.snapshots.load();
    let Some(pool) = snapshot.pools.get(key) else {
        return Room::Gone;
    };
    if !pool.flow.enabled {
        // Flow control was turned off while requests waited: let them all go.
        return Room::Free;
    }
    let endpoints = eligible(&pool.endpoints);
    let samples: Vec<EndpointSample> = endpoints.iter().map(|e| EndpointSample::of(e)).collect();
    let now = Instant::now();
    let views: Vec<_> = samples
        .iter()
        .zip(&endpoints)
        .map(|(sample, endpoint)| sample.view(endpoint, now))
        .collect();
    let view = PoolView {
        name: &pool.name,
        endpoints: &views,
    };
    if free_slots(&view, &load_config_for(pool, priority, now)) > released as f64 {
        Room::Free
    } else {
        Room::Full
    }
}

/// Queue `waiting` in its pool's queue and wait for its turn, its time to live (shortened to
/// `deadline`, the route's timeout, when that comes first) or `client_gone`.
pub async fn wait_turn(
    state: &Arc<GatewayState>,
    waiting: Waiting,
    fairness_id: Option<&str>,
    deadline: Option<Instant>,
    client_gone: impl Future<Output = ()>,
) -> Turn {
    let Waiting {
        mut info,
        body,
        pool_empty,
    } = waiting;
    let pool = Arc::clone(&info.pool);
    let flow = fairness_id.unwrap_or(&info.model);
    let admission = Admission {
        priority: info.priority,
        flow: flow.into(),
        cost: u64::from(info.prompt_tokens) + info.output_budget(),
        bytes: body.len() as u64,
    };
    let refused = |info: InferenceInfo, refusal: Refusal| {
        let error = ClientError::Queue {
            pool: info.pool.name.clone(),
            refusal,
        };
        Turn::Refused(Box::new(info), error)
    };
    let queued = match pool.queue.enqueue(admission) {
        Ok(queued) => queued,
        Err(refusal) => {
            state
                .metrics
                .flow_queue_duration
                .with_label_values(&[
                    pool.name.as_str(),
                    &info.priority.to_string(),
                    refusal.reason(),
                ])
                .observe(0.0);
            return refused(info, refusal);
        }
    };
    let dispatcher_state = Arc::clone(state);
    let key = pool.key.clone();
    pool.queue
        .dispatch(move |released, priority| room(&dispatcher_state, &key, released, priority));
    let since = Instant::now();
    let priority = info.priority.to_string();
    let observe = |outcome: &str| {
        state
            .metrics
            .flow_queue_duration
            .with_label_values(&[pool.name.as_str(), priority.as_str(), outcome])
            .observe(since.elapsed().as_secs_f64());
    };
    let objective_ttl = info
        .objective
        .as_deref()
        .and_then(|name| pool.objectives.get(name))
        .and_then(|objective| objective.ttl);
    let mut ttl = if pool_empty {
        pool.flow.empty_pool_ttl
    } else {
        objective_ttl.unwrap_or(pool.flow.ttl)
    };
    if let Some(deadline) = deadline {
        ttl = ttl.min(deadline.saturating_duration_since(Instant::now()));
    }
    match queued
        .wait(ttl.max(Duration::from_millis(1)), client_gone)
        .await
    {
        Waited::Admitted(admit) => {
            let snapshot = state.snapshots.load();
            let Some(current) = snapshot.pools.get(&pool.key) else {
                observe(Refusal::PoolGone.reason());
                return refused(info, Refusal::PoolGone);
            };
            observe("dispatched");
            info.pool = Arc::clone(current);
            Turn::Admitted {
                info: Box::new(info),
                body,
                admit,
            }
        }
        Waited::Refused(refusal) => {
            observe(refusal.reason());
            refused(info, refusal)
        }
        Waited::ClientGone => {
            observe("client-gone");
            Turn::ClientGone(Box::new(info))
        }
    }
}
