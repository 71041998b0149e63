//! Reading time to first token and token usage from a response as it streams past.
//!
//! Server-sent events are scanned line by line across chunk boundaries: the first `data:` event
//! whose `choices` is non-empty is the first token (the rule `vllm bench serve` uses), and the
//! final `choices: []` event with `usage` gives the token counts. Only an incomplete last line is
//! kept between chunks, and only small events are ever parsed as JSON. A non-streamed JSON body is
//! copied aside (up to [`MAX_JSON_BODY`]) while it is forwarded, and its `usage` read at the end.
//! Nothing here delays a byte on its way to the client.

use std::time::Instant;

/// Largest non-streamed body copied for its `usage`; larger ones are not counted.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest SSE line kept across chunks; a longer one is skipped.
const MAX_LINE: usize = 1 << 20;

/// The kind of response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Body {
    /// Not known yet (no header seen).
    #[default]
    Unknown,
    /// `text/event-stream`.
    Events,
    /// `application/json`.
    Json,
    /// Anything else: not scanned.
    Other,
}

/// Token usage of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u32,
    /// `usage.completion_tokens`.
    pub completion_tokens: u32,
}

/// Incremental scanner of one response body.
#[derive(Debug, Default)]
pub struct UsageScanner {
    body: Body,
    carry: Vec<u8>,
    skipping_line: bool,
    json: Vec<u8>,
    first_token_at: Option<Instant>,
    token_events: u32,
    usage: Option<Usage>,
}

#[derive(serde::Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<UsageFields>,
}

#[derive(serde::Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

fn usage_of(json: &[u8]) -> Option<Usage> {
    let parsed: UsageOnly = serde_json::from_slice(json).ok()?;
    parsed.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    })
}

/// Whether an event's `choices` array has an element (`"choices":[{`, whitespace allowed).
fn has_choice(event: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(event, b"\"choices\"") else {
        return false;
    };
    let rest = &event[at + 9..];
    let mut bytes = rest.iter().skip_while(|b| b.is_ascii_whitespace());
    if bytes.next() != Some(&b':') {
        return false;
    }
    let mut bytes = bytes.skip_while(|b| b.is_ascii_whitespace());
    if bytes.next() != Some(&b'[') {
        return false;
    }
    bytes
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b != b']')
}

impl UsageScanner {
    /// A scanner for a response with this `Content-Type`.
    pub fn on_header(&mut self, content_type: Option<&str>) {
        let content_type = content_type.unwrap_or("").as_bytes();
        let is = |prefix: &str| {
            content_type
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        self.body = if is("text/event-stream") {
            Body::Events
        } else if is("application/json") {
            Body::Json
        } else {
            Body::Other
        };
    }

    /// A body chunk passed to the client at `now`.
    pub fn on_body(&mut self, chunk: &[u8], now: Instant) {
        match self.body {
            Body::Events => self.scan_events(chunk, now),
            Body::Json => {
                self.first_token_at.get_or_insert(now);
                if self.json.len() + chunk.len() <= MAX_JSON_BODY {
                    self.json.extend_from_slice(chunk);
                } else {
                    self.json = Vec::new();
                    self.body = Body::Other;
                }
            }
            Body::Unknown | Body::Other => {}
        }
    }

    /// The body ended.
    pub fn on_end(&mut self) {
        if self.body == Body::Json && !self.json.is_empty() {
            self.usage = usage_of(&self.json);
            self.json = Vec::new();
        }
    }

    fn scan_events(&mut self, chunk: &[u8], now: Instant) {
        let mut rest = chunk;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            let (piece, after) = rest.split_at(newline);
            rest = &after[1..];
            if self.skipping_line {
                self.skipping_line = false;
                self.carry.clear();
                continue;
            }
            if self.carry.is_empty() {
                self.line(piece, now);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(piece);
                self.line(&line, now);
                line.clear();
                self.carry = line;
            }
        }
        if !rest.is_empty() && !self.skipping_line {
            if self.carry.len() + rest.len() > MAX_LINE {
                self.carry.clear();
                self.skipping_line = true;
            } else {
                self.carry.extend_from_slice(rest);
            }
        }
    }

    fn line(&mut self, line: &[u8], now: Instant) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return;
        }
        if has_choice(data) {
            self.first_token_at.get_or_insert(now);
            self.token_events += 1;
        } else if memchr::memmem::find(data, b"\"usage\"").is_some()
            && let Some(usage) = usage_of(data)
        {
            self.usage = Some(usage);
        }
    }

    /// When the first token reached the client.
    pub fn first_token_at(&self) -> Option<Instant> {
        self.first_token_at
    }

    /// Events that carried tokens (streams only).
    pub fn token_events(&self) -> u32 {
        self.token_events
    }

    /// Token usage, when the response reported it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(scanner: &mut UsageScanner, body: &str, splits: &[usize]) {
        let now = Instant::now();
        let mut start = 0;
        for &at in splits.iter().chain(std::iter::once(&body.len())) {
            scanner.on_body(&body.as_bytes()[start..at], now);
            start = at;
        }
        scanner.on_end();
    }

    const STREAM: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
        data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"}}]}\n\n\
        : keep-alive\n\n\
        data: {\"id\":\"c\",\"choices\": [ ],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":14,\"completion_tokens\":2}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn streams_give_first_token_and_usage_whatever_the_chunking() {
        for splits in [
            vec![],
            vec![3],
            vec![10, 90, 91, 150, 200],
            (1..STREAM.len()).collect(),
        ] {
            let mut scanner = UsageScanner::default();
            scanner.on_header(Some("text/event-stream; charset=utf-8"));
            feed(&mut scanner, STREAM, &splits);
            assert!(scanner.first_token_at().is_some());
            assert_eq!(scanner.token_events(), 2, "splits {splits:?}");
            assert_eq!(
                scanner.usage(),
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 2
                })
            );
        }
    }

    #[test]
    fn json_bodies_give_usage_at_the_end() {
        let mut scanner = UsageScanner::default();
        scanner.on_header(Some("application/json"));
        feed(
            &mut scanner,
            r#"{"choices":[{"text":"x"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
            &[20],
        );
        assert_eq!(
            scanner.usage(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7
            })
        );
    }

    #[test]
    fn no_usage_and_other_bodies() {
        let mut scanner = UsageScanner::default();
        scanner.on_header(Some("text/event-stream"));
        feed(
            &mut scanner,
            "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
            &[],
        );
        assert_eq!((scanner.first_token_at(), scanner.usage()), (None, None));
        let mut other = UsageScanner::default();
        other.on_header(Some("text/plain"));
        feed(&mut other, "usage", &[]);
        assert_eq!(other.usage(), None);
    }

    #[test]
    fn choice_detection() {
        assert!(has_choice(br#"{"choices":[{"text":""}]}"#));
        assert!(has_choice(br#"{"choices" : [ {"text":""}]}"#));
        assert!(!has_choice(br#"{"choices":[]}"#));
        assert!(!has_choice(br#"{"choices": [ ] }"#));
        assert!(!has_choice(br#"{"usage":{}}"#));
    }
}
