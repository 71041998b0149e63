//! The endpoints around generation: `/metrics` (with its injected faults), `/tokenize`,
//! `/detokenize`, LoRA load/unload, and the simulator's own `/sim/stats` (how faithfully the
//! engine loop kept to its step-time model).

use serde::Deserialize;
use serde_json::{Value, json};

use super::driver::EngineCommand;
use super::{SimBody, SimState, error_response, full_response};
use crate::sim::openai::ApiError;
use crate::sim::openai::request::{ChatMessage, chat_prompt};
use crate::sim::tokenizer::{detokenize, tokenize};

pub(super) async fn metrics(state: &SimState) -> hyper::Response<SimBody> {
    let delay = state.faults.config().metrics_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = state.faults.metrics_failure() {
        return full_response(
            status,
            "text/plain",
            "injected /metrics failure (vllm-sim)\n",
        );
    }
    let text = state.metrics.lock().render();
    full_response(200, "text/plain; version=0.0.4; charset=utf-8", text)
}

pub(super) fn pacing_stats(state: &SimState) -> hyper::Response<SimBody> {
    let stats = *state.pacing.lock();
    let scale = state.config.time_scale;
    let samples = stats.itl_samples.max(1) as f64;
    let body = json!({
        "profile": state.config.profile.name,
        "time_scale": scale,
        "steps": stats.steps,
        "virtual_seconds": stats.virtual_seconds,
        "tokens": stats.tokens,
        "itl_samples": stats.itl_samples,
        "itl_model_mean_seconds": stats.itl_model_sum / samples,
        "itl_measured_mean_seconds": stats.itl_wall_sum * scale / samples,
        "itl_measured_over_model": if stats.itl_model_sum > 0.0 { stats.itl_wall_sum * scale / stats.itl_model_sum } else { 1.0 },
        "itl_mean_abs_error_seconds": stats.itl_abs_error_sum / samples,
        "slips": stats.slips,
        "slip_wall_seconds": stats.slip_wall_seconds,
        "lora_gpu_loads": stats.lora_gpu_loads,
        "lora_disk_loads": stats.lora_disk_loads,
        "kv_event_batches": stats.kv_event_batches,
        "kv_events": stats.kv_events,
    });
    full_response(200, "application/json", body.to_string())
}

#[derive(Deserialize)]
struct TokenizeBody {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
}

#[derive(Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct LoraBody {
    lora_name: Option<String>,
    lora_path: Option<String>,
}

fn invalid_input(message: &str) -> ApiError {
    ApiError {
        status: 400,
        kind: "InvalidUserInput",
        message: message.to_string(),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

pub(super) fn post(state: &SimState, path: &str, body: &[u8]) -> hyper::Response<SimBody> {
    let result = match path {
        "/tokenize" => tokenize_endpoint(state, body),
        "/detokenize" => detokenize_endpoint(state, body),
        "/v1/load_lora_adapter" => load_lora(state, body),
        _ => unload_lora(state, body),
    };
    match result {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

fn tokenize_endpoint(state: &SimState, body: &[u8]) -> Result<hyper::Response<SimBody>, ApiError> {
    let body: TokenizeBody = parse(body)?;
    state.models.resolve(body.model.as_deref())?;
    let tokens = match (body.prompt, body.messages) {
        (Some(prompt), _) => tokenize(&prompt),
        (None, Some(messages)) => chat_prompt(&messages)?.tokens.to_vec(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "Either prompt or messages must be provided.",
            ));
        }
    };
    let answer = json!({
        "count": tokens.len(),
        "max_model_len": state.config.engine.max_model_len,
        "tokens": tokens,
        "token_strs": Value::Null,
    });
    Ok(full_response(200, "application/json", answer.to_string()))
}

fn detokenize_endpoint(
    state: &SimState,
    body: &[u8],
) -> Result<hyper::Response<SimBody>, ApiError> {
    let body: DetokenizeBody = parse(body)?;
    state.models.resolve(body.model.as_deref())?;
    let prompt = detokenize(&body.tokens).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(full_response(
        200,
        "application/json",
        json!({ "prompt": prompt }).to_string(),
    ))
}

fn load_lora(state: &SimState, body: &[u8]) -> Result<hyper::Response<SimBody>, ApiError> {
    let body: LoraBody = parse(body)?;
    let (Some(name), Some(path)) = (body.lora_name, body.lora_path) else {
        return Err(invalid_input(
            "Both 'lora_name' and 'lora_path' must be provided.",
        ));
    };
    if !state.config.lora_enabled {
        return Err(invalid_input(
            "LoRA is not enabled. Use --enable-lora to enable LoRA.",
        ));
    }
    let id = state.models.add_lora(&name, &path)?;
    let _ = state.engine.send(EngineCommand::PreloadLora(id));
    Ok(full_response(
        200,
        "text/plain; charset=utf-8",
        format!("Success: LoRA adapter '{name}' added successfully."),
    ))
}

fn unload_lora(state: &SimState, body: &[u8]) -> Result<hyper::Response<SimBody>, ApiError> {
    let body: LoraBody = parse(body)?;
    let Some(name) = body.lora_name else {
        return Err(invalid_input(
            "'lora_name' needs to be provided to unload a LoRA adapter.",
        ));
    };
    let id = state.models.remove_lora(&name)?;
    let _ = state.engine.send(EngineCommand::RemoveLora(id));
    Ok(full_response(
        200,
        "text/plain; charset=utf-8",
        format!("Success: LoRA adapter '{name}' removed successfully."),
    ))
}
