//! A small streaming client for OpenAI-compatible servers: posts one JSON body over pooled
//! HTTP/1.1 keep-alive connections and times the SSE events the way `vllm bench serve` does
//! (TTFT = first event with non-empty `choices`; one inter-token gap per such event; output
//! tokens from the usage chunk).
//!
//! It is deliberately minimal (the five-simulator check uses it; the benchmark client in
//! [`crate::bench`] builds on it): no retries, no TLS. Results are filled in as events arrive, so
//! a caller that stops waiting keeps whatever was measured so far. Only timestamps are kept per
//! event; the generated text is parsed and kept only when asked for (multi-turn histories, and
//! the legacy client's token count, which had no usage chunk).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a request could not be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] http::Error),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("reading the response failed: {0}")]
    Body(#[from] hyper::Error),
}

/// What one streamed request showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamOutcome {
    pub status: u16,
    /// Time to the first event with non-empty `choices`.
    pub ttft: Option<Duration>,
    /// Gaps between successive events with non-empty `choices`.
    pub inter_token_gaps: Vec<Duration>,
    /// Time to the last event with non-empty `choices`.
    pub latency: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub saw_done: bool,
    /// The body of a non-200 answer, or an error event received mid-stream.
    pub error_body: Option<String>,
    /// The generated text (completions `text` / chat `delta.content`), when captured.
    pub text: String,
}

/// The part of a streamed chunk that carries text.
#[derive(serde::Deserialize)]
struct TextChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<TextChoice<'a>>,
}

#[derive(serde::Deserialize)]
struct TextChoice<'a> {
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<TextDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct TextDelta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// A cloneable client sharing one connection pool.
#[derive(Clone, Debug)]
pub struct StreamClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl StreamClient {
    /// A client keeping up to `idle_per_host` idle keep-alive connections per server.
    pub fn new(idle_per_host: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        StreamClient { inner }
    }

    /// Plain request; returns the status and the whole body.
    pub async fn request(
        &self,
        method: http::Method,
        url: &str,
        body: Option<String>,
    ) -> Result<(u16, Bytes), ClientError> {
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self.inner.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a prepared request and returns the response with its whole body.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Bytes>, ClientError> {
        let response = self.inner.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }

    /// Posts `body` to `url` and reads the SSE stream into `outcome` as it arrives.
    pub async fn stream(
        &self,
        url: &str,
        body: String,
        outcome: &mut StreamOutcome,
    ) -> Result<(), ClientError> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.stream_request(request, false, outcome).await
    }

    /// Sends a prepared request and reads its SSE stream into `outcome`; with `capture_text`
    /// the generated text is kept in `outcome.text`. Times run from the moment the request is
    /// handed to the connection pool, as the benchmark client's do.
    pub async fn stream_request(
        &self,
        request: http::Request<Full<Bytes>>,
        capture_text: bool,
        outcome: &mut StreamOutcome,
    ) -> Result<(), ClientError> {
        let sent = Instant::now();
        let response = self.inner.request(request).await?;
        outcome.status = response.status().as_u16();
        let mut body = response.into_body();
        if outcome.status != 200 {
            let bytes = body.collect().await?.to_bytes();
            outcome.error_body = Some(String::from_utf8_lossy(&bytes).into_owned());
            return Ok(());
        }
        let mut buffer = BytesMut::new();
        let mut last_event: Option<Instant> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let arrived = Instant::now();
            buffer.extend_from_slice(&data);
            while let Some(end) = find_event_end(&buffer) {
                let event = buffer.split_to(end + 2);
                handle_event(
                    &event[..end],
                    arrived,
                    sent,
                    &mut last_event,
                    capture_text,
                    outcome,
                );
            }
        }
        Ok(())
    }
}

fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn handle_event(
    event: &[u8],
    arrived: Instant,
    sent: Instant,
    last: &mut Option<Instant>,
    capture_text: bool,
    outcome: &mut StreamOutcome,
) {
    let Some(data) = event.strip_prefix(b"data: ") else {
        return; // comments and other fields
    };
    if data == b"[DONE]" {
        outcome.saw_done = true;
        return;
    }
    if contains(data, b"\"choices\":[]") {
        if let Ok(chunk) = serde_json::from_slice::<serde_json::Value>(data) {
            let usage = &chunk["usage"];
            outcome.prompt_tokens = usage["prompt_tokens"].as_u64();
            outcome.completion_tokens = usage["completion_tokens"].as_u64();
        }
        return;
    }
    if !contains(data, b"\"choices\"") {
        // An error event (`data: {"error": ...}`) or something else without choices.
        if contains(data, b"\"error\"") {
            outcome.error_body = Some(String::from_utf8_lossy(data).into_owned());
        }
        return;
    }
    if capture_text && let Ok(chunk) = serde_json::from_slice::<TextChunk<'_>>(data) {
        for choice in chunk.choices {
            if let Some(text) = choice.text {
                outcome.text.push_str(&text);
            }
            if let Some(content) = choice.delta.and_then(|d| d.content) {
                outcome.text.push_str(&content);
            }
        }
    }
    match *last {
        None => outcome.ttft = Some(arrived - sent),
        Some(previous) => outcome.inter_token_gaps.push(arrived - previous),
    }
    *last = Some(arrived);
    outcome.latency = Some(arrived - sent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_timed_like_vllm_bench() {
        let sent = Instant::now();
        let mut last = None;
        let mut outcome = StreamOutcome::default();
        let t1 = sent + Duration::from_millis(100);
        let t2 = t1 + Duration::from_millis(30);
        handle_event(
            br#"data: {"choices":[{"text":" a"}]}"#,
            t1,
            sent,
            &mut last,
            true,
            &mut outcome,
        );
        handle_event(
            br#"data: {"choices":[{"text":" b"}]}"#,
            t2,
            sent,
            &mut last,
            true,
            &mut outcome,
        );
        handle_event(
            br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            t2,
            sent,
            &mut last,
            true,
            &mut outcome,
        );
        handle_event(b"data: [DONE]", t2, sent, &mut last, true, &mut outcome);
        assert_eq!(outcome.ttft, Some(Duration::from_millis(100)));
        assert_eq!(outcome.inter_token_gaps, [Duration::from_millis(30)]);
        assert_eq!(outcome.completion_tokens, Some(2));
        assert_eq!(outcome.text, " a b");
        assert!(outcome.saw_done);
    }
}
