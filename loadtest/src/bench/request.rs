//! The HTTP requests the benchmark sends: the bodies and headers of `vllm bench serve`
//! (`shared/reference/benchmark-client.md` §2), field for field and in the client's key order.
//!
//! Two body styles exist ([`BodyStyle`]). **Current** is today's client: completions send
//! `repetition_penalty: 1.0`, `logprobs: null`, `stream_options.include_usage` and `ignore_eos`
//! only when it is true; chat sends the prompt as one text part and `max_completion_tokens`.
//! **Legacy** is the older `benchmark_serving.py` the seed ran: `temperature: 0.0`, `best_of: 1`,
//! `ignore_eos` always present, no `stream_options` (so no usage chunk: output tokens are counted
//! by tokenizing the streamed text), chat with `max_tokens`, and `Authorization: Bearer None` when
//! no API key is set.

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;

use super::dataset::{Message, Prompt};

/// The client's `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Completions (`/v1/completions`).
    Openai,
    /// The same request function as `openai`.
    Vllm,
    /// Chat completions (`/v1/chat/completions`).
    OpenaiChat,
}

impl Backend {
    pub fn is_chat(self) -> bool {
        self == Backend::OpenaiChat
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Openai => "openai",
            Backend::Vllm => "vllm",
            Backend::OpenaiChat => "openai-chat",
        }
    }

    /// The endpoint the client uses when `--endpoint` is not given.
    pub fn default_endpoint(self) -> &'static str {
        if self.is_chat() {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        }
    }
}

/// Which client version's bodies to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyStyle {
    #[default]
    Current,
    Legacy,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct CurrentCompletion<'a> {
    model: &'a str,
    prompt: &'a str,
    repetition_penalty: f64,
    max_tokens: usize,
    logprobs: Option<u32>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
}

#[derive(Serialize)]
struct LegacyCompletion<'a> {
    model: &'a str,
    prompt: &'a str,
    temperature: f64,
    best_of: u32,
    max_tokens: usize,
    logprobs: Option<u32>,
    stream: bool,
    ignore_eos: bool,
}

#[derive(Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Parts(Vec<TextPart<'a>>),
    Text(&'a str),
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: Content<'a>,
}

#[derive(Serialize)]
struct CurrentChat<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    max_completion_tokens: usize,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
}

#[derive(Serialize)]
struct LegacyChat<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    temperature: f64,
    max_tokens: usize,
    stream: bool,
    ignore_eos: bool,
}

/// Everything that shapes a request besides its content.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub url: String,
    pub backend: Backend,
    pub style: BodyStyle,
    pub ignore_eos: bool,
    /// `OPENAI_API_KEY`, when set.
    pub api_key: Option<String>,
    /// `x-request-id` prefix (current style only).
    pub request_id_prefix: String,
    /// `--header KEY=VALUE` pairs.
    pub extra_headers: Vec<(String, String)>,
    /// More URLs serving the same API (gateway replicas): request `i` goes to the `i`-th of
    /// `url` and these in turn, as a Service spreads its clients over replicas.
    pub more_urls: Vec<String>,
}

fn chat_messages<'a>(prompt: &'a Prompt) -> Vec<ChatMessage<'a>> {
    match prompt {
        // The client sends a single user message with one text part.
        Prompt::Text(text) => vec![ChatMessage {
            role: "user",
            content: Content::Parts(vec![TextPart { kind: "text", text }]),
        }],
        Prompt::Chat(messages) => messages
            .iter()
            .map(|Message { role, content }| ChatMessage {
                role,
                content: Content::Text(content),
            })
            .collect(),
    }
}

impl RequestShape {
    /// The JSON body for `prompt` (the completions endpoint gets a conversation rendered with the
    /// chat template, as the server would render it).
    pub fn body(&self, model: &str, prompt: &Prompt, max_tokens: usize) -> String {
        let rendered;
        let result = if self.backend.is_chat() {
            let messages = chat_messages(prompt);
            match self.style {
                BodyStyle::Current => serde_json::to_string(&CurrentChat {
                    model,
                    messages,
                    max_completion_tokens: max_tokens,
                    stream: true,
                    stream_options: StreamOptions {
                        include_usage: true,
                    },
                    ignore_eos: self.ignore_eos,
                }),
                BodyStyle::Legacy => serde_json::to_string(&LegacyChat {
                    model,
                    messages,
                    temperature: 0.0,
                    max_tokens,
                    stream: true,
                    ignore_eos: self.ignore_eos,
                }),
            }
        } else {
            let text = match prompt {
                Prompt::Text(text) => text.as_str(),
                Prompt::Chat(_) => {
                    rendered = prompt.server_text(false);
                    rendered.as_str()
                }
            };
            match self.style {
                BodyStyle::Current => serde_json::to_string(&CurrentCompletion {
                    model,
                    prompt: text,
                    repetition_penalty: 1.0,
                    max_tokens,
                    logprobs: None,
                    stream: true,
                    stream_options: StreamOptions {
                        include_usage: true,
                    },
                    ignore_eos: self.ignore_eos,
                }),
                BodyStyle::Legacy => serde_json::to_string(&LegacyCompletion {
                    model,
                    prompt: text,
                    temperature: 0.0,
                    best_of: 1,
                    max_tokens,
                    logprobs: None,
                    stream: true,
                    ignore_eos: self.ignore_eos,
                }),
            }
        };
        result.expect("request bodies always serialize")
    }

    /// The URL request `index` goes to: `url` and `more_urls` in turn.
    pub fn url_for(&self, index: usize) -> &str {
        match index % (1 + self.more_urls.len()) {
            0 => &self.url,
            k => &self.more_urls[k - 1],
        }
    }

    /// The full HTTP request for dataset index `index`.
    pub fn request(
        &self,
        index: usize,
        body: String,
    ) -> Result<http::Request<Full<Bytes>>, http::Error> {
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.url_for(index))
            .header("content-type", "application/json");
        match (&self.api_key, self.style) {
            (Some(key), _) => builder = builder.header("authorization", format!("Bearer {key}")),
            (None, BodyStyle::Legacy) => builder = builder.header("authorization", "Bearer None"),
            (None, BodyStyle::Current) => {}
        }
        if self.style == BodyStyle::Current {
            builder = builder.header("x-request-id", format!("{}{index}", self.request_id_prefix));
        }
        for (name, value) in &self.extra_headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder.body(Full::new(Bytes::from(body)))
    }

    /// Whether the response carries a usage chunk (otherwise output tokens are counted from the
    /// streamed text).
    pub fn expects_usage(&self) -> bool {
        self.style == BodyStyle::Current
    }
}

/// The client's default request-id prefix: `bench-` and eight hex digits.
pub fn default_request_id_prefix(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "bench-{:08x}-",
        crate::sim::tokenizer::mix_seed(seed, nanos) as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(backend: Backend, style: BodyStyle, ignore_eos: bool) -> RequestShape {
        RequestShape {
            url: "http://127.0.0.1:8000/v1/completions".into(),
            backend,
            style,
            ignore_eos,
            api_key: None,
            request_id_prefix: "bench-0000abcd-".into(),
            extra_headers: vec![("x-team".into(), "a".into())],
            more_urls: Vec::new(),
        }
    }

    #[test]
    fn current_completion_body_matches_the_client() {
        let body = shape(Backend::Vllm, BodyStyle::Current, true).body(
            "/model/qwen",
            &Prompt::Text("hi".into()),
            7,
        );
        assert_eq!(
            body,
            r#"{"model":"/model/qwen","prompt":"hi","repetition_penalty":1.0,"max_tokens":7,"logprobs":null,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true}"#
        );
        let without = shape(Backend::Openai, BodyStyle::Current, false).body(
            "m",
            &Prompt::Text("hi".into()),
            7,
        );
        assert!(!without.contains("ignore_eos"));
    }

    #[test]
    fn legacy_completion_body_matches_the_old_script() {
        let body = shape(Backend::Vllm, BodyStyle::Legacy, false).body(
            "/model/qwen",
            &Prompt::Text("hi".into()),
            7,
        );
        assert_eq!(
            body,
            r#"{"model":"/model/qwen","prompt":"hi","temperature":0.0,"best_of":1,"max_tokens":7,"logprobs":null,"stream":true,"ignore_eos":false}"#
        );
    }

    #[test]
    fn chat_bodies() {
        let current = shape(Backend::OpenaiChat, BodyStyle::Current, true).body(
            "m",
            &Prompt::Text("hi".into()),
            5,
        );
        assert_eq!(
            current,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true}"#
        );
        let conversation =
            Prompt::Chat(vec![Message::new("system", "s"), Message::new("user", "u")]);
        let legacy =
            shape(Backend::OpenaiChat, BodyStyle::Legacy, false).body("m", &conversation, 5);
        assert_eq!(
            legacy,
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.0,"max_tokens":5,"stream":true,"ignore_eos":false}"#
        );
    }

    #[test]
    fn headers_follow_the_style() {
        let current = shape(Backend::Vllm, BodyStyle::Current, true)
            .request(42, "{}".into())
            .unwrap();
        assert_eq!(current.headers()["x-request-id"], "bench-0000abcd-42");
        assert_eq!(current.headers()["content-type"], "application/json");
        assert_eq!(current.headers()["x-team"], "a");
        assert!(current.headers().get("authorization").is_none());
        let legacy = shape(Backend::Vllm, BodyStyle::Legacy, true)
            .request(42, "{}".into())
            .unwrap();
        assert_eq!(legacy.headers()["authorization"], "Bearer None");
        assert!(legacy.headers().get("x-request-id").is_none());
        let mut keyed = shape(Backend::Vllm, BodyStyle::Current, true);
        keyed.api_key = Some("sk-1".into());
        let keyed = keyed.request(1, "{}".into()).unwrap();
        assert_eq!(keyed.headers()["authorization"], "Bearer sk-1");
    }

    #[test]
    fn request_id_prefix_shape() {
        let prefix = default_request_id_prefix(0);
        assert_eq!(prefix.len(), "bench-".len() + 8 + 1);
        assert!(prefix.starts_with("bench-") && prefix.ends_with('-'));
    }

    #[test]
    fn requests_go_to_the_urls_in_turn() {
        let mut shape = shape(Backend::Vllm, BodyStyle::Current, false);
        assert_eq!(shape.url_for(7), shape.url);
        shape.more_urls = vec!["http://b".into(), "http://c".into()];
        let urls: Vec<&str> = (0..4).map(|i| shape.url_for(i)).collect();
        assert_eq!(
            urls,
            [
                shape.url.as_str(),
                "http://b",
                "http://c",
                shape.url.as_str()
            ]
        );
        let request = shape.request(4, String::new()).unwrap();
        assert_eq!(request.uri(), "http://b");
    }
}
