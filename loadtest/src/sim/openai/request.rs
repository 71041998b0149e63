//! Request bodies as vLLM accepts them, normalized into one [`Generation`] for both
//! `/v1/completions` and `/v1/chat/completions`.
//!
//! Like vLLM (pydantic models with `extra="allow"`), unknown fields are accepted and ignored, and
//! the sampling fields (`temperature`, `top_p`, `top_k`, `repetition_penalty`, `logprobs`,
//! `stop`, `best_of`, `seed`, ...) are accepted; they change nothing in a simulation. The checks
//! vLLM makes before generating are made here or in [`Generation::validate`], with vLLM's
//! messages.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::sim::tokenizer::{ChatTurn, VOCAB_SIZE, render_chat_prompt, tokenize};

/// Which endpoint a generation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    pub continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    model: Option<String>,
    prompt: Option<Value>,
    max_tokens: Option<i64>,
    min_tokens: Option<i64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ignore_eos: Option<bool>,
    echo: Option<bool>,
    cache_salt: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    min_tokens: Option<i64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ignore_eos: Option<bool>,
    cache_salt: Option<String>,
}

/// A chat message; `content` is a string, a list of parts, or absent.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

/// One prompt: its token ids and, for `echo`, its text.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub tokens: Arc<[u32]>,
    pub text: Option<String>,
}

/// A generation request, whichever endpoint it came through.
#[derive(Debug, Clone)]
pub struct Generation {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub prompts: Vec<Prompt>,
    /// The explicit limit; `None` means the endpoint default.
    pub max_tokens: Option<usize>,
    pub min_tokens: usize,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub ignore_eos: bool,
    pub echo: bool,
    pub cache_salt: Option<String>,
}

/// The default `max_tokens` of `/v1/completions` (OpenAI's and vLLM's).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

fn parse_error(error: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "[{{'type': 'json_invalid', 'loc': ('body', {}), 'msg': 'JSON decode error', 'ctx': {{'error': '{}'}}}}]",
        error.column(),
        error
    ))
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(format!(
        "[{{'type': 'missing', 'loc': ('body', '{field}'), 'msg': 'Field required'}}]"
    ))
}

fn non_negative(name: &str, value: Option<i64>, minimum: i64) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v >= minimum => Ok(Some(v as usize)),
        Some(v) => Err(ApiError::bad_request(format!(
            "{name} must be at least {minimum}, got {v}."
        ))),
    }
}

fn token_prompt(values: &[Value]) -> Result<Prompt, ApiError> {
    let mut tokens = Vec::with_capacity(values.len());
    for value in values {
        let id = value
            .as_u64()
            .ok_or_else(|| ApiError::bad_request("prompt must be a string, array of strings, array of tokens, or array of token arrays"))?;
        if id >= u64::from(VOCAB_SIZE) {
            return Err(ApiError::bad_request(format!(
                "Token id {id} is out of vocabulary"
            )));
        }
        tokens.push(id as u32);
    }
    Ok(Prompt {
        tokens: Arc::from(tokens),
        text: None,
    })
}

fn text_prompt(text: &str) -> Prompt {
    Prompt {
        tokens: Arc::from(tokenize(text)),
        text: Some(text.to_string()),
    }
}

fn prompts_of(prompt: &Value) -> Result<Vec<Prompt>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "prompt must be a string, array of strings, array of tokens, or array of token arrays",
        )
    };
    match prompt {
        Value::String(text) => Ok(vec![text_prompt(text)]),
        Value::Array(items) if items.is_empty() => Err(ApiError::bad_request(
            "Either prompt or prompt_embeds must be provided and non-empty.",
        )),
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|item| item.as_str().map(text_prompt).ok_or_else(invalid))
                .collect(),
            Value::Number(_) => Ok(vec![token_prompt(items)?]),
            Value::Array(_) => items
                .iter()
                .map(|item| {
                    item.as_array()
                        .ok_or_else(invalid)
                        .and_then(|t| token_prompt(t))
                })
                .collect(),
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// The text of a chat message's content: a string, or its text parts joined by newlines.
pub fn message_text(content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(
                        part.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| missing("text"))?
                            .to_string(),
                    ),
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "Unsupported content part type for a text-only model: '{other}'"
                        )));
                    }
                    None => return Err(missing("type")),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(ApiError::bad_request(
            "content must be a string or a list of parts",
        )),
    }
}

/// The chat prompt's token ids under the simulator's chat template.
pub fn chat_prompt(messages: &[ChatMessage]) -> Result<Prompt, ApiError> {
    let texts = messages
        .iter()
        .map(|m| message_text(m.content.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let turns: Vec<ChatTurn<'_>> = messages
        .iter()
        .zip(&texts)
        .map(|(m, text)| ChatTurn {
            role: &m.role,
            content: text,
        })
        .collect();
    Ok(text_prompt(&render_chat_prompt(&turns)))
}

fn stream_flags(
    stream: Option<bool>,
    options: Option<StreamOptions>,
) -> Result<(bool, bool, bool), ApiError> {
    let stream = stream.unwrap_or(false);
    match options {
        Some(_) if !stream => Err(ApiError::bad_request(
            "Stream options can only be defined when `stream=True`.",
        )),
        Some(options) => Ok((
            true,
            options.include_usage.unwrap_or(false),
            options.continuous_usage_stats.unwrap_or(false),
        )),
        None => Ok((stream, false, false)),
    }
}

impl Generation {
    /// Parses a `/v1/completions` body.
    pub fn from_completions_body(body: &[u8]) -> Result<Generation, ApiError> {
        let body: CompletionBody = serde_json::from_slice(body).map_err(parse_error)?;
        let prompt = body.prompt.as_ref().ok_or_else(|| missing("prompt"))?;
        let (stream, include_usage, continuous_usage) =
            stream_flags(body.stream, body.stream_options)?;
        Ok(Generation {
            endpoint: Endpoint::Completions,
            model: body.model,
            prompts: prompts_of(prompt)?,
            max_tokens: non_negative("max_tokens", body.max_tokens, 1)?,
            min_tokens: non_negative("min_tokens", body.min_tokens, 0)?.unwrap_or(0),
            n: non_negative("n", body.n, 1)?.unwrap_or(1),
            stream,
            include_usage,
            continuous_usage,
            ignore_eos: body.ignore_eos.unwrap_or(false),
            echo: body.echo.unwrap_or(false),
            cache_salt: body.cache_salt,
        })
    }

    /// Parses a `/v1/chat/completions` body.
    pub fn from_chat_body(body: &[u8]) -> Result<Generation, ApiError> {
        let body: ChatBody = serde_json::from_slice(body).map_err(parse_error)?;
        let messages = body.messages.as_ref().ok_or_else(|| missing("messages"))?;
        let (stream, include_usage, continuous_usage) =
            stream_flags(body.stream, body.stream_options)?;
        let limit = body.max_completion_tokens.or(body.max_tokens);
        Ok(Generation {
            endpoint: Endpoint::Chat,
            model: body.model,
            prompts: vec![chat_prompt(messages)?],
            max_tokens: non_negative("max_tokens", limit, 1)?,
            min_tokens: non_negative("min_tokens", body.min_tokens, 0)?.unwrap_or(0),
            n: non_negative("n", body.n, 1)?.unwrap_or(1),
            stream,
            include_usage,
            continuous_usage,
            ignore_eos: body.ignore_eos.unwrap_or(false),
            echo: false,
            cache_salt: body.cache_salt,
        })
    }

    /// Checks every prompt against `max_model_len` and returns each prompt's token limit.
    pub fn validate(&self, max_model_len: usize) -> Result<Vec<usize>, ApiError> {
        self.prompts
            .iter()
            .map(|prompt| {
                let input = prompt.tokens.len();
                if input >= max_model_len {
                    return Err(ApiError::bad_request(format!(
                        "This model's maximum context length is {max_model_len} tokens. However, \
                         your request has {input} input tokens. Please reduce the length of the \
                         input messages."
                    )));
                }
                let room = max_model_len - input;
                match (self.max_tokens, self.endpoint) {
                    (Some(limit), _) if limit > room => Err(ApiError::bad_request(format!(
                        "'max_tokens' or 'max_completion_tokens' is too large: {limit}. This \
                         model's maximum context length is {max_model_len} tokens and your \
                         request has {input} input tokens ({limit} > {max_model_len} - {input})."
                    ))),
                    (Some(limit), _) => Ok(limit),
                    (None, Endpoint::Completions) => Ok(COMPLETIONS_DEFAULT_MAX_TOKENS.min(room)),
                    (None, Endpoint::Chat) => Ok(room),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_accept_every_prompt_form() {
        for (prompt, count) in [
            (r#""hello world""#, 1),
            (r#"["a", "b"]"#, 2),
            ("[1, 2, 3]", 1),
            ("[[1, 2], [3]]", 2),
        ] {
            let body = format!(
                r#"{{"model":"m","prompt":{prompt},"temperature":0.0,"best_of":1,"unknown":{{}}}}"#
            );
            let generation = Generation::from_completions_body(body.as_bytes()).unwrap();
            assert_eq!(generation.prompts.len(), count, "{prompt}");
        }
    }

    #[test]
    fn stream_options_need_stream() {
        let error = Generation::from_completions_body(
            br#"{"prompt":"x","stream_options":{"include_usage":true}}"#,
        )
        .unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.message.contains("stream=True"));
    }

    #[test]
    fn chat_prefers_max_completion_tokens_and_joins_parts() {
        let generation = Generation::from_chat_body(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_tokens":5,"max_completion_tokens":7}"#,
        )
        .unwrap();
        assert_eq!(generation.max_tokens, Some(7));
        let text = generation.prompts[0].text.as_deref().unwrap();
        assert!(text.contains("<|im_start|>user\na\nb<|im_end|>"));
    }

    #[test]
    fn context_limits_use_vllms_messages() {
        let generation =
            Generation::from_completions_body(br#"{"prompt":" a b c","max_tokens":100}"#).unwrap();
        let error = generation.validate(50).unwrap_err();
        assert_eq!(
            error.message,
            "'max_tokens' or 'max_completion_tokens' is too large: 100. This model's maximum \
             context length is 50 tokens and your request has 3 input tokens (100 > 50 - 3)."
        );
        assert_eq!(generation.validate(200).unwrap(), [100]);
        assert!(
            generation
                .validate(3)
                .unwrap_err()
                .message
                .contains("has 3 input tokens")
        );
    }
}
