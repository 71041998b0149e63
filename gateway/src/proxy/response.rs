//! Watching a response as it streams past: when its header and first byte arrived and how much was
//! sent. Nothing here holds on to response bytes.

use std::time::{Duration, Instant};

/// Timings and sizes of one response, fed by whichever path proxied it.
#[derive(Debug, Clone)]
pub struct ResponseObserver {
    started: Instant,
    header_at: Option<Instant>,
    first_byte_at: Option<Instant>,
    body_bytes: u64,
}

impl ResponseObserver {
    /// An observer for a request that started at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            header_at: None,
            first_byte_at: None,
            body_bytes: 0,
        }
    }

    /// The response header was sent to the client.
    pub fn on_header(&mut self) {
        self.header_at.get_or_insert_with(Instant::now);
    }

    /// A body chunk passed to the client.
    pub fn on_body(&mut self, chunk: &[u8]) {
        if !chunk.is_empty() {
            self.first_byte_at.get_or_insert_with(Instant::now);
            self.body_bytes += chunk.len() as u64;
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

    /// Body bytes sent.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_is_the_first_non_empty_chunk() {
        let mut observer = ResponseObserver::new(Instant::now());
        assert!(!observer.response_started());
        observer.on_header();
        observer.on_body(b"");
        assert!(observer.time_to_first_byte().is_none());
        observer.on_body(b"data: {}\n\n");
        observer.on_body(b"data: [DONE]\n\n");
        assert!(observer.response_started());
        assert!(observer.time_to_first_byte().is_some());
        assert_eq!(observer.body_bytes(), 24);
    }
}
