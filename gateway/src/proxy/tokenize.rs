//! The [`Step::Tokenize`](super::decide::Step::Tokenize) step: the prompt in the model server's
//! tokens, turned into block keys the pool's KV events are matched against at the pick.
//!
//! The server asked is one of the pool's eligible endpoints whose events are arriving (any
//! eligible endpoint when none is), at random: every server of a pool tokenizes alike. A failed
//! call leaves the request without keys, and the strategy uses its estimate; it is counted in
//! `gateway_prompt_tokenizations_total`.

use std::sync::Arc;

use bytes::Bytes;
use pingora::connectors::http::Connector;

use super::decide::{InferenceInfo, TokenizeCall};
use crate::kv_events::PromptCache;
use crate::kv_events::tokenize::{PromptInput, tokenize};
use crate::snapshot::Endpoint;
use crate::snapshot::endpoint::eligible;
use crate::state::GatewayState;

/// Tokenize `call`'s prompt and give its request the keys to match; returns the request and its
/// body, ready for [`super::decide::pool::pick_tokenized`].
pub async fn prepare(
    state: &GatewayState,
    connector: &Connector,
    call: TokenizeCall,
) -> (InferenceInfo, Bytes) {
    let TokenizeCall {
        mut info,
        body,
        input,
    } = call;
    let pool = Arc::clone(&info.pool);
    let Some(settings) = &pool.kv_events else {
        return (*info, body);
    };
    let endpoints = eligible(&pool.endpoints);
    let result = |label: &str| {
        state
            .metrics
            .tokenizations
            .with_label_values(&[pool.name.as_str(), label])
            .inc();
    };
    let tokens = match input {
        PromptInput::Tokens(ids) => {
            result("ids");
            Some(ids)
        }
        PromptInput::Ask(request) => {
            let receiving: Vec<&Arc<Endpoint>> = endpoints
                .iter()
                .filter(|e| state.kv_events.receiving(e.id.address()))
                .collect();
            let from = if receiving.is_empty() {
                endpoints.iter().collect()
            } else {
                receiving
            };
            match (!from.is_empty()).then(|| from[fastrand::usize(..from.len())]) {
                None => None,
                Some(server) => {
                    let answer = tokenize(
                        connector,
                        server.id.address(),
                        request,
                        settings.tokenize_timeout,
                    )
                    .await;
                    match answer {
                        Ok(tokens) => {
                            result("ok");
                            Some(tokens)
                        }
                        Err(error) => {
                            tracing::debug!(%error, endpoint = %server.id, "prompt not tokenized");
                            result(error.metric_label());
                            None
                        }
                    }
                }
            }
        }
    };
    if let Some(tokens) = tokens {
        let adapter = !serves_as_base(&endpoints, &info.target_model);
        let lora = adapter.then_some(info.target_model.as_str());
        let keys = state.kv_events.prompt_keys(&tokens, lora, &endpoints);
        // The request keeps its estimated size: every other figure of the pick and of the load
        // counted in flight is in those units, and a match is read as a share of the prompt.
        info.prompt_cache = Some(PromptCache {
            keys,
            events: Arc::clone(&state.kv_events),
        });
    }
    (*info, body)
}

/// Whether `model` is a base model of the pool (vLLM events name no adapter for it): some
/// endpoint reports it as its served model, or none reports a model name at all.
fn serves_as_base(endpoints: &[Arc<Endpoint>], model: &str) -> bool {
    let mut reported = endpoints
        .iter()
        .filter_map(|e| e.metrics())
        .filter_map(|m| m.metrics.model_name.clone())
        .peekable();
    reported.peek().is_none() || reported.any(|name| name == model)
}
