//! A request's prompt in the model server's own tokens, for matching it against KV events.
//!
//! The events name blocks by token ids, so the gateway needs the prompt as the server tokenizes
//! it, chat template and special tokens included. It asks one of the pool's servers:
//! `POST /tokenize` with the request's `model` and its `prompt` (completions) or its `messages`
//! and the fields that shape the chat template (chat completions), which vLLM (and the
//! simulator) answer with `{"tokens": [...]}` exactly as the request will be tokenized. That
//! costs one round trip to a pod per request instead of a tokenizer and a template engine in the
//! gateway that would have to match every model's (a Hugging Face `tokenizer.json` and Jinja chat
//! template per model, kept in step with the servers' versions); it works for any model the
//! pool serves and for the simulator, whose tokenizer is a rule, not a vocabulary file. A
//! completions prompt given as token ids needs no call.
//!
//! A call that fails or takes longer than the pool's `tokenize-timeout-ms` leaves the request
//! to the strategy's estimate; it is never an error for the client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use serde_json::{Map, Value};

/// Largest `/tokenize` answer read: a 128k-token prompt's ids are about a megabyte of JSON.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Chat-completions fields that change what the chat template renders, passed on to
/// `/tokenize` (vLLM's `TokenizeChatRequest` accepts each).
const CHAT_TEMPLATE_FIELDS: &[&str] = &[
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "chat_template",
    "chat_template_kwargs",
    "tools",
    "documents",
    "mm_processor_kwargs",
];

/// How a request's prompt becomes token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// The client sent token ids (a completions `prompt` of integers).
    Tokens(Vec<u32>),
    /// Ask a model server: the `/tokenize` body.
    Ask(Bytes),
}

impl PromptInput {
    /// What to do for the request `body` sent as `target_model`; `None` when it has no single
    /// prompt to tokenize (a batch of prompts, an unparsable body).
    pub fn of(body: &[u8], target_model: &str) -> Option<PromptInput> {
        let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        let mut ask = Map::new();
        ask.insert("model".into(), Value::String(target_model.to_owned()));
        if let Some(messages) = request.get("messages") {
            ask.insert("messages".into(), messages.clone());
            for field in CHAT_TEMPLATE_FIELDS {
                if let Some(value) = request.get(*field) {
                    ask.insert((*field).into(), value.clone());
                }
            }
        } else {
            match request.get("prompt")? {
                Value::String(prompt) => {
                    ask.insert("prompt".into(), Value::String(prompt.clone()));
                    if let Some(value) = request.get("add_special_tokens") {
                        ask.insert("add_special_tokens".into(), value.clone());
                    }
                }
                Value::Array(items) if items.iter().all(Value::is_u64) => {
                    let ids = items
                        .iter()
                        .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
                        .collect::<Option<Vec<u32>>>()?;
                    return Some(PromptInput::Tokens(ids));
                }
                _ => return None,
            }
        }
        Some(PromptInput::Ask(Bytes::from(
            serde_json::to_vec(&Value::Object(ask)).ok()?,
        )))
    }
}

/// Why a `/tokenize` call gave no tokens (a metrics label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// Connecting, writing or reading failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The server answered with a non-200 status.
    #[error("status {0}")]
    Status(u16),
    /// The answer was not `{"tokens": [...]}` or was too large.
    #[error("answer")]
    Answer,
    /// The call took longer than the pool allows.
    #[error("timeout")]
    Timeout,
}

impl TokenizeError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TokenizeError::Connection(_) => "connection",
            TokenizeError::Status(_) => "status",
            TokenizeError::Answer => "answer",
            TokenizeError::Timeout => "timeout",
        }
    }
}

#[derive(serde::Deserialize)]
struct Answer {
    tokens: Vec<u32>,
}

/// `POST /tokenize` `body` to the server at `address`, within `timeout`.
pub async fn tokenize(
    connector: &Connector,
    address: SocketAddr,
    body: Bytes,
    timeout: Duration,
) -> Result<Vec<u32>, TokenizeError> {
    let call = async {
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        let connection =
            |e: Box<pingora::Error>| TokenizeError::Connection(e.etype().as_str().to_owned());
        let (mut session, _reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(connection)?;
        let mut request = RequestHeader::build("POST", b"/tokenize", None).map_err(connection)?;
        for (name, value) in [
            ("host", address.to_string()),
            ("content-type", "application/json".to_owned()),
            ("content-length", body.len().to_string()),
        ] {
            request.insert_header(name, value).map_err(connection)?;
        }
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(connection)?;
        session
            .write_request_body(body, true)
            .await
            .map_err(connection)?;
        session.finish_request_body().await.map_err(connection)?;
        session.read_response_header().await.map_err(connection)?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        let mut answer = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await.map_err(connection)? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(TokenizeError::Answer);
            }
            answer.extend_from_slice(&chunk);
        }
        if session.response_done() {
            connector
                .release_http_session(session, &peer, peer.options.idle_timeout)
                .await;
        }
        if status != 200 {
            return Err(TokenizeError::Status(status));
        }
        serde_json::from_slice::<Answer>(&answer)
            .map(|a| a.tokens)
            .map_err(|_| TokenizeError::Answer)
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(TokenizeError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(body: &str, model: &str) -> Value {
        match PromptInput::of(body.as_bytes(), model) {
            Some(PromptInput::Ask(bytes)) => serde_json::from_slice(&bytes).unwrap(),
            other => panic!("expected a /tokenize body, got {other:?}"),
        }
    }

    #[test]
    fn chat_requests_carry_their_messages_and_template_fields_as_the_target_model() {
        let body = r#"{"model":"travel","messages":[{"role":"user","content":"hi"}],
            "chat_template_kwargs":{"enable_thinking":false},"max_tokens":5,"stream":true}"#;
        assert_eq!(
            ask(body, "travel-helper-v1"),
            serde_json::json!({
                "model": "travel-helper-v1",
                "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": {"enable_thinking": false},
            })
        );
    }

    #[test]
    fn completions_send_their_prompt_or_need_no_call() {
        assert_eq!(
            ask(r#"{"model":"m","prompt":"Hello","max_tokens":3}"#, "m"),
            serde_json::json!({"model": "m", "prompt": "Hello"})
        );
        assert_eq!(
            PromptInput::of(br#"{"model":"m","prompt":[1,2,3]}"#, "m"),
            Some(PromptInput::Tokens(vec![1, 2, 3]))
        );
        // A batch of prompts, ids past u32, or no prompt at all: nothing to match.
        for body in [
            r#"{"model":"m","prompt":["a","b"]}"#,
            r#"{"model":"m","prompt":[1,4294967296]}"#,
            r#"{"model":"m"}"#,
            "not json",
        ] {
            assert_eq!(PromptInput::of(body.as_bytes(), "m"), None, "{body}");
        }
    }
}
