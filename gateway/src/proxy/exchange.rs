//! One request's exchange with its upstreams, as both request paths record it: the deadline, the
//! endpoints tried, the response as it passed, the endpoint that served it and how it ended.
//!
//! Service routes that Pingora proxies fill it from Pingora's phases; requests whose body the
//! gateway read fill it from [`super::forward`]. The logging phase reads it once, whichever path
//! ran, so attempts, deadlines and outcomes are counted in one place.

use std::net::SocketAddr;
use std::time::Instant;

use plugins::Outcome;

use super::error::ClientError;
use super::response::ResponseObserver;
use crate::snapshot::InFlight;

/// Connection attempts to upstream endpoints.
#[derive(Debug, Default)]
pub struct Attempts {
    /// Endpoints tried, in order.
    pub tried: Vec<SocketAddr>,
    /// Connection attempts made (a dead pooled connection retried on the same endpoint counts
    /// again).
    pub made: u32,
    /// Attempts that failed before anything reached the endpoint's request handling.
    pub connect_failures: u32,
}

impl Attempts {
    /// Attempts that reached an endpoint.
    pub fn succeeded(&self) -> u32 {
        self.made.saturating_sub(self.connect_failures)
    }
}

/// How a request the gateway forwarded itself ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The endpoint's response reached the client whole.
    Completed,
    /// The client went away first.
    ClientGone,
    /// The chosen endpoint failed after the request was sent to it: the client got a 502, or a
    /// stream cut short.
    UpstreamFailed(String),
    /// No endpoint could be reached: the client got a 502 or 503.
    Unreachable(Option<String>),
    /// The deadline passed: the client got a 504, or a stream cut short.
    TimedOut,
}

impl Ending {
    /// The outcome a strategy's `on_completed` hook is told.
    pub fn outcome(&self) -> Outcome {
        match self {
            Ending::Completed => Outcome::Completed,
            Ending::ClientGone => Outcome::Aborted,
            Ending::UpstreamFailed(_) | Ending::Unreachable(_) | Ending::TimedOut => {
                Outcome::Failed
            }
        }
    }

    /// A short description of a failure, for the access log.
    pub fn error(&self) -> Option<&str> {
        match self {
            Ending::Completed => None,
            Ending::ClientGone => Some("client closed the connection"),
            Ending::UpstreamFailed(error) => Some(error),
            Ending::Unreachable(error) => Some(error.as_deref().unwrap_or("no endpoint")),
            Ending::TimedOut => Some("request timeout"),
        }
    }
}

/// Everything between the gateway and the upstreams for one request.
#[derive(Debug)]
pub struct Exchange {
    /// When the request must be finished (the route's timeout), if ever.
    pub deadline: Option<Instant>,
    /// Endpoints tried.
    pub attempts: Attempts,
    /// The response as it passed to the client.
    pub observer: ResponseObserver,
    /// The endpoint that produced the response.
    pub served_by: Option<SocketAddr>,
    /// The serving endpoint's in-flight count, held until the request is logged.
    pub in_flight: Option<InFlight>,
    /// How a forwarded request ended (`None` for requests Pingora proxied).
    pub ending: Option<Ending>,
    /// The status sent (or being sent) to the client by the forwarder, the endpoint's or the
    /// gateway's own.
    pub status: Option<u16>,
    /// The metric label of the error the gateway answered with itself, if it did.
    pub answered: Option<&'static str>,
}

impl Exchange {
    /// An exchange for a request that arrived at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            deadline: None,
            attempts: Attempts::default(),
            observer: ResponseObserver::new(started),
            served_by: None,
            in_flight: None,
            ending: None,
            status: None,
            answered: None,
        }
    }

    /// A response body chunk passed to the client: observe it, and once the first token has
    /// arrived release the request's prefill work on its endpoint, then its output to come as
    /// tokens stream back (one per event with a choice).
    pub fn on_body(&mut self, chunk: &[u8]) {
        self.observer.on_body(chunk);
        if let Some(in_flight) = &mut self.in_flight
            && self.observer.first_token_seen()
        {
            in_flight.first_token();
            in_flight.streamed(u64::from(self.observer.token_events()));
        }
    }

    /// The gateway answers `error` itself.
    pub fn answer(&mut self, error: &ClientError) {
        self.status = Some(error.status());
        self.answered = Some(error.metric_label());
    }

    /// Whether the deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() > d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_map_to_outcomes_and_errors() {
        assert_eq!(Ending::Completed.outcome(), Outcome::Completed);
        assert_eq!(Ending::Completed.error(), None);
        assert_eq!(Ending::ClientGone.outcome(), Outcome::Aborted);
        assert_eq!(Ending::TimedOut.outcome(), Outcome::Failed);
        assert_eq!(Ending::TimedOut.error(), Some("request timeout"));
        assert_eq!(
            Ending::Unreachable(Some("connect to 10.0.0.1:80: ConnectRefused".into())).error(),
            Some("connect to 10.0.0.1:80: ConnectRefused")
        );
        let attempts = Attempts {
            tried: Vec::new(),
            made: 3,
            connect_failures: 2,
        };
        assert_eq!(attempts.succeeded(), 1);
    }
}
