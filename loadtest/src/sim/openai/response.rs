//! Response bodies and SSE chunks exactly as vLLM sends them (reference §3).
//!
//! Streaming: nothing is sent before a choice's first token exists; chat sends the role-only
//! chunk together with the first content chunk; the last token's chunk carries `finish_reason`
//! and `stop_reason`; the usage chunk (`choices: []`) is sent only when
//! `stream_options.include_usage` was asked for; `data: [DONE]` ends the stream. Completion
//! chunks carry `"usage":null`, chat chunks omit unset keys. Chunks are appended to a caller's
//! buffer so one engine step's tokens become one write.

use std::fmt::Write as _;

use super::push_json_string;
use super::request::Endpoint;
use crate::sim::engine::FinishReason;
use crate::sim::tokenizer::generated_token_text;

/// Identity of one response: `id`, `created`, `model` and the endpoint's object names.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    /// `{"id":..,"object":..,"created":..,"model":..,` for chunks (`full` = non-streaming).
    fn head(&self, full: bool) -> String {
        let object = match (self.endpoint, full) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion.chunk",
            (Endpoint::Chat, true) => "chat.completion",
        };
        let mut head = String::with_capacity(96 + self.model.len());
        head.push_str("{\"id\":");
        push_json_string(&mut head, &self.id);
        let _ = write!(
            head,
            ",\"object\":\"{object}\",\"created\":{},\"model\":",
            self.created
        );
        push_json_string(&mut head, &self.model);
        head.push(',');
        head
    }
}

fn push_usage(out: &mut String, prompt: usize, completion: usize, details: bool) {
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{prompt},\"total_tokens\":{},\"completion_tokens\":{completion}",
        prompt + completion
    );
    out.push_str(if details {
        ",\"prompt_tokens_details\":null}"
    } else {
        "}"
    });
}

/// One choice of a streamed response.
#[derive(Debug, Clone)]
pub struct StreamChoice {
    /// Seed of the generated tokens.
    pub seed: u64,
    pub prompt_tokens: usize,
    /// Prompt text to put before the first token (`echo`).
    pub echo: Option<String>,
}

/// Turns token events into SSE chunks for one response.
#[derive(Debug)]
pub struct StreamEncoder {
    endpoint: Endpoint,
    head: String,
    choices: Vec<StreamChoice>,
    generated: Vec<usize>,
    finished: usize,
    prompt_tokens: usize,
    include_usage: bool,
    continuous_usage: bool,
}

impl StreamEncoder {
    /// `prompt_tokens` is the response's prompt total (each prompt once, whatever `n` is).
    pub fn new(
        meta: &ResponseMeta,
        choices: Vec<StreamChoice>,
        prompt_tokens: usize,
        include_usage: bool,
        continuous_usage: bool,
    ) -> Self {
        StreamEncoder {
            endpoint: meta.endpoint,
            head: meta.head(false),
            generated: vec![0; choices.len()],
            choices,
            finished: 0,
            prompt_tokens,
            include_usage,
            continuous_usage,
        }
    }

    pub fn all_finished(&self) -> bool {
        self.finished == self.choices.len()
    }

    pub fn completion_tokens(&self) -> usize {
        self.generated.iter().sum()
    }

    /// Appends the chunk(s) for the `index`-th token of `choice`.
    pub fn push_token(
        &mut self,
        out: &mut String,
        choice: usize,
        index: usize,
        finish: Option<FinishReason>,
    ) {
        let Some(state) = self.choices.get_mut(choice) else {
            return;
        };
        self.generated[choice] = index + 1;
        let text = generated_token_text(state.seed, index);
        let finish_json = match finish {
            Some(reason) => {
                self.finished += 1;
                format!(
                    "\"finish_reason\":\"{}\",\"stop_reason\":null",
                    reason.as_str()
                )
            }
            None => "\"finish_reason\":null".to_string(),
        };
        let echo = if index == 0 { state.echo.take() } else { None };
        let usage = self
            .continuous_usage
            .then_some((state.prompt_tokens, index + 1));
        match self.endpoint {
            Endpoint::Completions => {
                out.push_str("data: ");
                out.push_str(&self.head);
                let _ = write!(out, "\"choices\":[{{\"index\":{choice},\"text\":");
                match echo {
                    Some(prompt) => push_json_string(out, &(prompt + text)),
                    None => push_json_string(out, text),
                }
                out.push_str(",\"logprobs\":null,");
                out.push_str(&finish_json);
                if finish.is_none() {
                    out.push_str(",\"stop_reason\":null");
                }
                out.push_str("}],\"usage\":");
                match usage {
                    Some((prompt, completion)) => push_usage(out, prompt, completion, false),
                    None => out.push_str("null"),
                }
                out.push_str("}\n\n");
            }
            Endpoint::Chat => {
                if index == 0 {
                    out.push_str("data: ");
                    out.push_str(&self.head);
                    let _ = write!(
                        out,
                        "\"choices\":[{{\"index\":{choice},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]"
                    );
                    if let Some((prompt, _)) = usage {
                        out.push_str(",\"usage\":");
                        push_usage(out, prompt, 0, false);
                    }
                    out.push_str("}\n\n");
                }
                out.push_str("data: ");
                out.push_str(&self.head);
                let _ = write!(
                    out,
                    "\"choices\":[{{\"index\":{choice},\"delta\":{{\"content\":"
                );
                push_json_string(out, text);
                out.push_str("},\"logprobs\":null,");
                out.push_str(&finish_json);
                out.push_str("}]");
                if let Some((prompt, completion)) = usage {
                    out.push_str(",\"usage\":");
                    push_usage(out, prompt, completion, false);
                }
                out.push_str("}\n\n");
            }
        }
    }

    /// Appends the usage chunk (if asked for) and `data: [DONE]`.
    pub fn push_end(&self, out: &mut String) {
        if self.include_usage {
            out.push_str("data: ");
            out.push_str(&self.head);
            out.push_str("\"choices\":[],\"usage\":");
            push_usage(out, self.prompt_tokens, self.completion_tokens(), false);
            out.push_str("}\n\n");
        }
        out.push_str("data: [DONE]\n\n");
    }
}

/// One finished choice of a non-streaming response.
#[derive(Debug, Clone)]
pub struct ChoiceResult {
    pub seed: u64,
    pub tokens: usize,
    pub finish: FinishReason,
    pub echo: Option<String>,
}

/// The complete non-streaming body.
pub fn render_full(meta: &ResponseMeta, choices: &[ChoiceResult], prompt_tokens: usize) -> String {
    let mut out = meta.head(true);
    out.push_str("\"choices\":[");
    for (index, choice) in choices.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let mut text = choice.echo.clone().unwrap_or_default();
        text.reserve(choice.tokens * 5);
        for token in 0..choice.tokens {
            text.push_str(generated_token_text(choice.seed, token));
        }
        let _ = write!(out, "{{\"index\":{index},");
        match meta.endpoint {
            Endpoint::Completions => {
                out.push_str("\"text\":");
                push_json_string(&mut out, &text);
            }
            Endpoint::Chat => {
                out.push_str("\"message\":{\"role\":\"assistant\",\"content\":");
                push_json_string(&mut out, &text);
                out.push('}');
            }
        }
        let _ = write!(
            out,
            ",\"logprobs\":null,\"finish_reason\":\"{}\",\"stop_reason\":null}}",
            choice.finish.as_str()
        );
    }
    out.push_str("],\"usage\":");
    let completion = choices.iter().map(|c| c.tokens).sum();
    push_usage(&mut out, prompt_tokens, completion, true);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn meta(endpoint: Endpoint) -> ResponseMeta {
        ResponseMeta {
            endpoint,
            id: "cmpl-1".into(),
            created: 5,
            model: "m".into(),
        }
    }

    fn events(text: &str) -> Vec<Value> {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    #[test]
    fn completion_stream_matches_vllm() {
        let choice = StreamChoice {
            seed: 1,
            prompt_tokens: 3,
            echo: None,
        };
        let mut encoder =
            StreamEncoder::new(&meta(Endpoint::Completions), vec![choice], 3, true, false);
        let mut out = String::new();
        encoder.push_token(&mut out, 0, 0, None);
        encoder.push_token(&mut out, 0, 1, Some(FinishReason::Length));
        encoder.push_end(&mut out);
        assert!(out.ends_with("data: [DONE]\n\n"));
        let events = events(&out);
        assert_eq!(events.len(), 3);
        let first_text = generated_token_text(1, 0);
        assert_eq!(
            events[0],
            json!({"id":"cmpl-1","object":"text_completion","created":5,"model":"m",
                "choices":[{"index":0,"text":first_text,"logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null})
        );
        assert_eq!(events[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            events[2],
            json!({"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[],
                "usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}})
        );
    }

    #[test]
    fn chat_stream_sends_the_role_chunk_with_the_first_token() {
        let choice = StreamChoice {
            seed: 1,
            prompt_tokens: 3,
            echo: None,
        };
        let mut encoder = StreamEncoder::new(&meta(Endpoint::Chat), vec![choice], 3, false, false);
        let mut out = String::new();
        encoder.push_token(&mut out, 0, 0, Some(FinishReason::Stop));
        encoder.push_end(&mut out);
        let events = events(&out);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0]["choices"][0],
            json!({"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null})
        );
        assert_eq!(events[0]["object"], "chat.completion.chunk");
        assert_eq!(
            events[1]["choices"][0],
            json!({"index":0,"delta":{"content":generated_token_text(1, 0)},"logprobs":null,"finish_reason":"stop","stop_reason":null})
        );
        assert!(events[1].get("usage").is_none());
    }

    #[test]
    fn full_bodies_carry_usage_with_details() {
        let choice = ChoiceResult {
            seed: 2,
            tokens: 3,
            finish: FinishReason::Length,
            echo: None,
        };
        let body: Value =
            serde_json::from_str(&render_full(&meta(Endpoint::Chat), &[choice], 7)).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens":7,"total_tokens":10,"completion_tokens":3,"prompt_tokens_details":null})
        );
    }
}
