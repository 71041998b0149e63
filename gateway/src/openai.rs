//! OpenAI request bodies: the few fields routing needs, the `model` rewrite, and why a body
//! cannot be routed ([`BadRequest`]).
//!
//! Parsing is deliberately shallow. The body is validated as JSON once; `model`, `stream` and the
//! token limits are read; `prompt` and `messages` are kept as raw JSON slices and only rendered to
//! text when a strategy asks for the prompt. Unknown fields are never touched: the rewrite of
//! `model` splices the new value into the original bytes, so everything else reaches the model
//! server byte for byte.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a body is not a request the gateway can route: a message for the client and the parameter
/// at fault. The proxy answers it as a 400 `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// Human-readable message.
    pub message: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
}

impl BadRequest {
    /// A problem with the body as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: None,
        }
    }

    /// The same problem, naming a parameter.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

/// The parts of an OpenAI request the gateway reads.
#[derive(Debug)]
pub struct InferenceRequest<'a> {
    /// The requested model; `None` when the body has no `model` (or it is `null`), which only a
    /// generic `InferenceModelRewrite` rule can make routable.
    pub model: Option<Cow<'a, str>>,
    /// Where the new `model` goes: the byte range of the old value (with its quotes, or `null`),
    /// or, when the body has no `model` member, the empty range just inside the opening brace.
    model_span: Range<usize>,
    /// How a rewrite writes the member: `None` replaces the value in `model_span`; `Some(comma)`
    /// inserts a whole `"model":` member there, followed by a comma when other members follow.
    insert: Option<bool>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The completions `prompt`, as raw JSON.
    pub prompt: Option<&'a RawValue>,
    /// The chat `messages`, as raw JSON.
    pub messages: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Probe<'a> {
    /// Present, even as `null` (an `Option` alone would read `null` as absent, and a rewrite
    /// would then add a second `model` member).
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parse a request body.
pub fn parse(body: &[u8]) -> Result<InferenceRequest<'_>, BadRequest> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BadRequest::new(format!("The request body is not valid UTF-8: {e}")))?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return Err(BadRequest::new(
            "The request body must be a JSON object, for example {\"model\": \"...\", \"prompt\": \"...\"}.",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let probe: Probe<'_> = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let is_type_error = inner.classify() == serde_json::error::Category::Data;
        let error = BadRequest::new(format!(
            "We could not parse the JSON body of your request: {inner}"
        ));
        if is_type_error && path != "." {
            error.with_param(path)
        } else {
            error
        }
    })?;
    deserializer.end().map_err(|e| {
        BadRequest::new(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    let (model, model_span, insert) = match probe.model {
        Some(raw) => {
            let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            let span = start..start + raw.get().len();
            if raw.get() == "null" {
                (None, span, None)
            } else {
                let model: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| {
                    BadRequest::new(format!("model must be a string, not {}", raw.get()))
                        .with_param("model")
                })?;
                (Some(model), span, None)
            }
        }
        None => {
            let brace = text.len() - text.trim_start().len() + 1;
            let has_members = !text[brace..].trim_start().starts_with('}');
            (None, brace..brace, Some(has_members))
        }
    };
    let max_tokens = match probe.max_completion_tokens.or(probe.max_tokens) {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| {
            BadRequest::new(format!("max_tokens must be at most {}, got {n}", u32::MAX))
                .with_param("max_tokens")
        })?),
    };
    Ok(InferenceRequest {
        model,
        model_span,
        insert,
        stream: probe.stream.unwrap_or(false),
        max_tokens,
        prompt: probe.prompt,
        messages: probe.messages,
    })
}

impl InferenceRequest<'_> {
    /// Size of the prompt in bytes of JSON (prompt or messages), the basis of token estimates.
    pub fn prompt_bytes(&self) -> usize {
        self.prompt
            .or(self.messages)
            .map_or(0, |raw| raw.get().len())
    }

    /// Estimated prompt tokens: about four bytes of text per token.
    pub fn estimated_prompt_tokens(&self) -> u32 {
        u32::try_from(self.prompt_bytes().div_ceil(4)).unwrap_or(u32::MAX)
    }

    /// `body` with `model` replaced by `new_model`, or added as the object's first member when
    /// the body has none; every other byte is kept.
    pub fn rewrite_model(&self, body: &[u8], new_model: &str) -> Bytes {
        let quoted = serde_json::to_string(new_model).unwrap_or_else(|_| String::from("\"\""));
        let mut out = BytesMut::with_capacity(body.len() + quoted.len() + 10);
        out.extend_from_slice(&body[..self.model_span.start]);
        if self.insert.is_some() {
            out.extend_from_slice(b"\"model\":");
        }
        out.extend_from_slice(quoted.as_bytes());
        if self.insert == Some(true) {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(&body[self.model_span.end..]);
        out.freeze()
    }

    /// The prompt as stable text: a completions prompt as is (several prompts or token ids one per
    /// line), chat messages as `role: text` lines. Re-serialising JSON would make the text depend on
    /// key order and whitespace; this does not.
    pub fn prompt_text(&self) -> Option<String> {
        if let Some(raw) = self.prompt {
            let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
            let mut out = String::new();
            render_prompt(&value, &mut out);
            return Some(out);
        }
        let raw = self.messages?;
        let messages: Vec<serde_json::Value> = serde_json::from_str(raw.get()).ok()?;
        let mut out = String::new();
        for message in &messages {
            let role = message.get("role").and_then(|r| r.as_str()).unwrap_or("");
            out.push_str(role);
            out.push_str(": ");
            match message.get("content") {
                Some(serde_json::Value::String(text)) => out.push_str(text),
                Some(serde_json::Value::Array(parts)) => {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(|t| t.as_str()) {
                            out.push_str(text);
                        }
                    }
                }
                _ => {}
            }
            out.push('\n');
        }
        Some(out)
    }
}

fn render_prompt(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(text) => out.push_str(text),
        serde_json::Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        serde_json::Value::Array(items) => {
            for item in items {
                render_prompt(item, out);
                if !item.is_number() {
                    out.push('\n');
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_routing_fields() {
        let body = br#"{"model": "/model/qwen", "prompt": "hello", "stream": true, "max_tokens": 100, "ignore_eos": true}"#;
        let request = parse(body).unwrap();
        assert_eq!(request.model.as_deref(), Some("/model/qwen"));
        assert!(request.stream);
        assert_eq!(request.max_tokens, Some(100));
        assert_eq!(request.prompt.unwrap().get(), "\"hello\"");
        assert_eq!(request.prompt_text().unwrap(), "hello");
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let request =
            parse(br#"{"model":"m","messages":[],"max_tokens":5,"max_completion_tokens":7}"#)
                .unwrap();
        assert_eq!(request.max_tokens, Some(7));
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let body = br#"{ "stream":false, "model" : "travel-helper" ,"x":{"model":"inner"}}"#;
        let request = parse(body).unwrap();
        let rewritten = request.rewrite_model(body, "travel-helper-v1");
        assert_eq!(
            &rewritten[..],
            br#"{ "stream":false, "model" : "travel-helper-v1" ,"x":{"model":"inner"}}"#
        );
        let quoted = request.rewrite_model(body, "a\"b");
        assert!(
            std::str::from_utf8(&quoted)
                .unwrap()
                .contains(r#""model" : "a\"b""#)
        );
    }

    #[test]
    fn a_missing_or_null_model_is_none_and_a_rewrite_adds_it() {
        for (body, expected) in [
            (
                &br#"{"prompt":"x"}"#[..],
                &br#"{"model":"m","prompt":"x"}"#[..],
            ),
            (br#" { } "#, br#" {"model":"m" } "#),
            (
                br#"{"model":null,"prompt":"x"}"#,
                br#"{"model":"m","prompt":"x"}"#,
            ),
            (
                br#"{ "prompt": "x", "model" : null }"#,
                br#"{ "prompt": "x", "model" : "m" }"#,
            ),
        ] {
            let request = parse(body).unwrap();
            assert_eq!(request.model, None);
            let rewritten = request.rewrite_model(body, "m");
            assert_eq!(
                std::str::from_utf8(&rewritten).unwrap(),
                std::str::from_utf8(expected).unwrap()
            );
            let again = parse(&rewritten).unwrap();
            assert_eq!(again.model.as_deref(), Some("m"));
        }
    }

    #[test]
    fn escaped_model_names_are_unescaped() {
        let request = parse(br#"{"model":"\/model\/qwen"}"#).unwrap();
        assert_eq!(request.model.as_deref(), Some("/model/qwen"));
    }

    #[test]
    fn errors_name_the_parameter_at_fault() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (b"", None),
            (b"[1,2]", None),
            (b"{\"model\": ", None),
            (b"{\"model\":7}", Some("model")),
            (b"{\"model\":\"m\",\"stream\":\"yes\"}", Some("stream")),
            (
                b"{\"model\":\"m\",\"max_tokens\":99999999999}",
                Some("max_tokens"),
            ),
        ];
        for (body, param) in cases {
            let error = parse(body).unwrap_err();
            assert_eq!(error.param.as_deref(), param, "{body:?}: {}", error.message);
        }
        let duplicate = parse(br#"{"model":"a","model":"b"}"#).unwrap_err();
        assert!(
            duplicate.message.contains("duplicate field"),
            "{}",
            duplicate.message
        );
        let invalid = parse(b"{\"model\":\"\xff\"}").unwrap_err();
        assert!(invalid.message.contains("UTF-8"));
        let trailing = parse(br#"{"model":"a"} x"#).unwrap_err();
        assert!(
            trailing.message.contains("trailing"),
            "{}",
            trailing.message
        );
    }

    #[test]
    fn chat_messages_render_as_role_lines() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}]}"#;
        let request = parse(body).unwrap();
        assert_eq!(
            request.prompt_text().unwrap(),
            "system: be brief\nuser: hi there\n"
        );
        assert!(request.estimated_prompt_tokens() > 10);
    }

    #[test]
    fn token_prompts_render_as_numbers() {
        let request = parse(br#"{"model":"m","prompt":[[1,2],[3]]}"#).unwrap();
        assert_eq!(request.prompt_text().unwrap(), "1 2 \n3 \n");
    }
}
