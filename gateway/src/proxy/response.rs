//! Watching a response as it streams past: when its header, first byte and first token arrived,
//! how much was sent, and the token usage it reported. Nothing here holds back a byte.

use std::time::{Duration, Instant};

use super::usage::{Usage, UsageScanner};

/// Timings, sizes and usage of one response, fed by whichever path proxied it.
#[derive(Debug)]
pub struct ResponseObserver {
    started: Instant,
    header_at: Option<Instant>,
    first_byte_at: Option<Instant>,
    ended_at: Option<Instant>,
    body_bytes: u64,
    scanner: UsageScanner,
}

impl ResponseObserver {
    /// An observer for a request that started at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            header_at: None,
            first_byte_at: None,
            ended_at: None,
            body_bytes: 0,
            scanner: UsageScanner::default(),
        }
    }

    /// The response header, with this `Content-Type`, was sent to the client. With `scan` false
    /// the body is not scanned for its first token and token usage.
    pub fn on_header(&mut self, content_type: Option<&str>, scan: bool) {
        if self.header_at.is_none() {
            self.header_at = Some(Instant::now());
            if scan {
                self.scanner.on_header(content_type);
            }
        }
    }

    /// A body chunk passed to the client.
    pub fn on_body(&mut self, chunk: &[u8]) {
        if !chunk.is_empty() {
            let now = Instant::now();
            self.first_byte_at.get_or_insert(now);
            self.body_bytes += chunk.len() as u64;
            self.scanner.on_body(chunk, now);
        }
    }

    /// The body is complete.
    pub fn on_end(&mut self) {
        if self.ended_at.is_none() {
            self.ended_at = Some(Instant::now());
            self.scanner.on_end();
        }
    }

    /// Whether anything of the response reached the client.
    pub fn response_started(&self) -> bool {
        self.header_at.is_some()
    }

    /// Time from the request's start to the first body byte.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.first_byte_at.map(|t| t.duration_since(self.started))
    }

    /// Time from the request's start to the first token (the first event with a choice; for a
    /// non-streamed answer, its first byte).
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.scanner
            .first_token_at()
            .map(|t| t.duration_since(self.started))
    }

    /// Whether the first token (for a non-streamed answer, its first byte) has passed.
    pub fn first_token_seen(&self) -> bool {
        self.scanner.first_token_at().is_some()
    }

    /// Streamed events that carried a choice so far (about one per output token for vLLM).
    pub fn token_events(&self) -> u32 {
        self.scanner.token_events()
    }

    /// Average time per output token after the first: (end − first token) / (tokens − 1).
    pub fn time_per_output_token(&self) -> Option<Duration> {
        let first = self.scanner.first_token_at()?;
        let end = self.ended_at?;
        let tokens = self.usage()?.completion_tokens;
        (tokens > 1).then(|| end.duration_since(first) / (tokens - 1))
    }

    /// Body bytes sent.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Token usage reported by the model server.
    pub fn usage(&self) -> Option<Usage> {
        self.scanner.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_is_the_first_non_empty_chunk() {
        let mut observer = ResponseObserver::new(Instant::now());
        assert!(!observer.response_started());
        observer.on_header(Some("text/event-stream"), true);
        observer.on_body(b"");
        assert!(observer.time_to_first_byte().is_none());
        observer.on_body(b": comment\n\n");
        assert!(observer.time_to_first_byte().is_some());
        assert!(
            observer.time_to_first_token().is_none(),
            "a comment is not a token"
        );
        observer.on_body(b"data: {\"choices\":[{\"text\":\"a\"}]}\n\n");
        observer.on_body(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        observer.on_end();
        assert!(observer.time_to_first_token().is_some());
        assert_eq!(observer.usage().unwrap().completion_tokens, 3);
        assert!(observer.time_per_output_token().is_some());
        assert_eq!(observer.body_bytes(), 131);
    }
}
