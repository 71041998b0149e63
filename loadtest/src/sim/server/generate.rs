//! `/v1/completions` and `/v1/chat/completions`: parse and validate the body, hand one engine
//! request per choice to the engine loop, then stream the tokens as SSE or collect them into one
//! JSON body.
//!
//! The SSE body drains every event that is ready when hyper polls it, so the tokens one engine
//! step produced for a response leave in one write. Dropping the body (the client went away)
//! closes the event channel, which the engine loop sees and turns into an abort.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use super::driver::{ChoiceEvent, EngineCommand};
use super::{SimBody, SimState, error_response, full_response};
use crate::sim::engine::{FinishReason, NewRequest};
use crate::sim::openai::ApiError;
use crate::sim::openai::request::{Endpoint, Generation};
use crate::sim::openai::response::{
    ChoiceResult, ResponseMeta, StreamChoice, StreamEncoder, render_full,
};
use crate::sim::output::plan_output;
use crate::sim::tokenizer::mix_seed;

/// The streamed response body.
struct SseBody {
    events: mpsc::UnboundedReceiver<ChoiceEvent>,
    encoder: StreamEncoder,
    done: bool,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = String::new();
        let mut closed = false;
        loop {
            match this.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => this.encoder.push_token(
                    &mut out,
                    event.choice as usize,
                    event.index as usize,
                    event.finish,
                ),
                Poll::Ready(None) => {
                    closed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if this.encoder.all_finished() {
            this.encoder.push_end(&mut out);
            this.done = true;
        } else if closed {
            // The engine loop is gone (server shutting down): end the stream.
            this.done = true;
        }
        if out.is_empty() {
            return if this.done {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn random_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Serves one generation request.
pub async fn generate(
    state: Arc<SimState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Bytes,
    arrived: Instant,
) -> hyper::Response<SimBody> {
    match prepare(&state, endpoint, headers, &body, arrived) {
        Ok(prepared) => respond(prepared).await,
        Err(error) => error_response(&error),
    }
}

struct Prepared {
    generation: Generation,
    meta: ResponseMeta,
    choices: Vec<(u64, usize, Option<String>)>,
    prompt_tokens: usize,
    events: mpsc::UnboundedReceiver<ChoiceEvent>,
}

fn prepare(
    state: &SimState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    arrived: Instant,
) -> Result<Prepared, ApiError> {
    let generation = match endpoint {
        Endpoint::Completions => Generation::from_completions_body(body)?,
        Endpoint::Chat => Generation::from_chat_body(body)?,
    };
    let model = state.models.resolve(generation.model.as_deref())?;
    let limits = generation.validate(state.config.engine.max_model_len)?;
    let choice_count = generation.prompts.len() * generation.n;
    let first_id = state
        .next_request_id
        .fetch_add(choice_count as u64, std::sync::atomic::Ordering::Relaxed);
    let cache_salt_key = generation
        .cache_salt
        .as_deref()
        .map_or(0, |salt| xxhash_rust::xxh3::xxh3_64(salt.as_bytes()));

    let mut requests = Vec::with_capacity(choice_count);
    let mut choices = Vec::with_capacity(choice_count);
    for (prompt_index, (prompt, &limit)) in generation.prompts.iter().zip(&limits).enumerate() {
        for sample in 0..generation.n {
            let choice = prompt_index * generation.n + sample;
            let id = first_id + choice as u64;
            let seed = mix_seed(state.config.seed, id);
            let mut rng = fastrand::Rng::with_seed(seed);
            let (output_len, finish_reason) = plan_output(
                limit,
                generation.min_tokens,
                generation.ignore_eos,
                &state.config.natural_output_len,
                &mut rng,
            );
            let echo = if generation.echo {
                Some(match &prompt.text {
                    Some(text) => text.clone(),
                    None => crate::sim::tokenizer::detokenize(&prompt.tokens).unwrap_or_default(),
                })
            } else {
                None
            };
            choices.push((seed, prompt.tokens.len(), echo));
            requests.push((
                NewRequest {
                    id,
                    prompt: prompt.tokens.clone(),
                    output_seed: seed,
                    output_len,
                    finish_reason,
                    lora: model.lora,
                    lora_name: model.lora.map(|_| Arc::from(model.name.as_str())),
                    cache_salt_key,
                    arrival: 0.0,
                    max_tokens: limit,
                    n: generation.n,
                },
                choice as u32,
            ));
        }
    }
    let (sink, events) = mpsc::unbounded_channel();
    state
        .engine
        .send(EngineCommand::Submit {
            requests,
            sink,
            arrived,
        })
        .map_err(|_| ApiError::injected(503))?;

    let base_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(random_id, str::to_string);
    let prefix = match endpoint {
        Endpoint::Completions => "cmpl-",
        Endpoint::Chat => "chatcmpl-",
    };
    let meta = ResponseMeta {
        endpoint,
        id: format!("{prefix}{base_id}"),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: model.name,
    };
    let prompt_tokens = generation.prompts.iter().map(|p| p.tokens.len()).sum();
    Ok(Prepared {
        generation,
        meta,
        choices,
        prompt_tokens,
        events,
    })
}

async fn respond(prepared: Prepared) -> hyper::Response<SimBody> {
    let Prepared {
        generation,
        meta,
        choices,
        prompt_tokens,
        mut events,
    } = prepared;
    if generation.stream {
        let stream_choices = choices
            .into_iter()
            .map(|(seed, prompt_tokens, echo)| StreamChoice {
                seed,
                prompt_tokens,
                echo,
            })
            .collect();
        let encoder = StreamEncoder::new(
            &meta,
            stream_choices,
            prompt_tokens,
            generation.include_usage,
            generation.continuous_usage,
        );
        let body = SseBody {
            events,
            encoder,
            done: false,
        };
        return hyper::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream; charset=utf-8")
            .body(http_body_util::BodyExt::boxed_unsync(body))
            .unwrap_or_else(|_| error_response(&ApiError::injected(500)));
    }
    let mut results: Vec<ChoiceResult> = choices
        .into_iter()
        .map(|(seed, _, echo)| ChoiceResult {
            seed,
            tokens: 0,
            finish: FinishReason::Abort,
            echo,
        })
        .collect();
    let mut open = results.len();
    while open > 0 {
        let Some(event) = events.recv().await else {
            return error_response(&ApiError::injected(503));
        };
        if let Some(result) = results.get_mut(event.choice as usize) {
            result.tokens = event.index as usize + 1;
            if let Some(finish) = event.finish {
                result.finish = finish;
                open -= 1;
            }
        }
    }
    full_response(
        200,
        "application/json",
        render_full(&meta, &results, prompt_tokens),
    )
}
