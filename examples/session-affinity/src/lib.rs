//! `SESSION_AFFINITY`: a routing strategy that keeps a conversation on one endpoint, written
//! outside the gateway against its public API only (`plugins` and `gateway::GatewayBuilder`).
//!
//! Multi-turn chats resend their whole history every turn; on the endpoint that served the previous
//! turn that history is already in the KV cache. This strategy remembers, per session id (a request
//! header, `x-session-id` by default), the endpoint that served the session last, and sends the
//! next turn there, unless that endpoint has left the pool or is overloaded: outside the load window
//! of [`plugins::load::LoadWindow`] or saturated. Then it falls back to the DEFAULT ranking and the
//! session moves.
//!
//! A session seen for the first time is placed by rendezvous hashing of its id over the endpoints
//! inside the load window: independent gateway replicas place it on the same endpoint without
//! sharing the table. Requests without the header are ranked like DEFAULT.
//!
//! The session table is bounded: two generations of at most `max-sessions / 2` entries each; a
//! session found in the older generation is promoted, and when the newer one is full the older one
//! is dropped. Lookups and inserts are O(1); memory never exceeds `max-sessions` entries.
//!
//! | Parameter | Default | Why |
//! |---|---|---|
//! | `session-header` | `x-session-id` | A common convention; anything a client or an upstream proxy sets per conversation works |
//! | `max-sessions` | 100000 | About 10 MB of table for a day of active conversations on a busy pool |
//! | `window-requests`, `window-ratio` | 8, 0.5 | As PREFIX_CACHE: a few more sequences cost less than re-prefilling a long history |
//! | DEFAULT's weights and `stale-after-ms` | as DEFAULT | Ranking of new sessions' failover order and of moved sessions |

use std::collections::HashMap;
use std::net::SocketAddr;

use http::HeaderName;
use parking_lot::Mutex;
use plugins::load::{LoadConfig, LoadWindow};
use plugins::params::Params;
use plugins::strategies::LoadScoring;
use plugins::{
    Candidates, ConfigError, EndpointId, EndpointView, NoEndpoint, PoolView, RequestView, Strategy,
    StrategyConfig,
};

/// The bounded session table: two generations, the older one dropped whole when the newer fills.
#[derive(Debug, Default)]
struct SessionTable {
    recent: HashMap<String, SocketAddr>,
    older: HashMap<String, SocketAddr>,
    generation_capacity: usize,
}

impl SessionTable {
    fn new(max_sessions: usize) -> Self {
        Self {
            generation_capacity: (max_sessions / 2).max(1),
            ..Self::default()
        }
    }

    fn get(&mut self, session: &str) -> Option<SocketAddr> {
        if let Some(address) = self.recent.get(session) {
            return Some(*address);
        }
        let address = self.older.remove(session)?;
        self.insert(session, address);
        Some(address)
    }

    fn insert(&mut self, session: &str, address: SocketAddr) {
        if !self.recent.contains_key(session) && self.recent.len() >= self.generation_capacity {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(session.to_owned(), address);
    }

    fn forget(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        self.recent.retain(|_, a| keep(a));
        self.older.retain(|_, a| keep(a));
    }

    fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

/// The session-affinity strategy.
#[derive(Debug)]
pub struct SessionAffinity {
    header: HeaderName,
    sessions: Mutex<SessionTable>,
    max_sessions: usize,
    scoring: LoadScoring,
    window: LoadWindow,
}

impl SessionAffinity {
    /// Registry name (the value of the pool's routing-strategy annotation).
    pub const NAME: &'static str = "SESSION_AFFINITY";

    /// Build from the pool's parameters (see the module documentation).
    pub fn from_config(config: &StrategyConfig) -> Result<Self, ConfigError> {
        let mut params = Params::new(Self::NAME, config);
        let header_name = params.string("session-header", "x-session-id")?;
        let header =
            HeaderName::from_bytes(header_name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::new("session-header", &header_name, "not a valid header name")
            })?;
        let max_sessions = params.usize("max-sessions", 100_000, 2..=100_000_000)?;
        let window = LoadWindow::from_params(&mut params)?;
        let scoring = LoadScoring::from_params(&mut params)?;
        params.finish()?;
        Ok(Self {
            header,
            sessions: Mutex::new(SessionTable::new(max_sessions)),
            max_sessions,
            scoring,
            window,
        })
    }

    fn session<'a>(&self, request: &'a RequestView<'_>) -> Option<&'a str> {
        request
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
    }

    /// Sessions remembered right now.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().len()
    }
}

impl Strategy for SessionAffinity {
    fn load_config(&self) -> LoadConfig {
        self.scoring.load
    }

    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        let scored = self.scoring.score(request, pool)?;
        let Some(session) = self.session(request) else {
            return Ok(scored.ranked());
        };
        let in_window = scored.window_members(&self.window);
        let usable = |i: usize| in_window[i] && scored.saturation(i) < 1.0;
        let remembered = self
            .sessions
            .lock()
            .get(session)
            .and_then(|address| {
                pool.endpoints
                    .iter()
                    .position(|e| e.id.address() == address)
            })
            .filter(|&i| usable(i));
        let first = remembered.or_else(|| {
            let key = xxhash_rust::xxh3::xxh3_64(session.as_bytes());
            scored.place(key, &in_window)
        });
        Ok(scored.first_then_ranked(first))
    }

    fn on_dispatched(&self, request: &RequestView<'_>, endpoint: &EndpointView<'_>) {
        if let Some(session) = self.session(request) {
            self.sessions.lock().insert(session, endpoint.id.address());
        }
    }

    fn on_endpoints_changed(&self, endpoints: &[EndpointId]) {
        let present: std::collections::HashSet<SocketAddr> =
            endpoints.iter().map(EndpointId::address).collect();
        self.sessions
            .lock()
            .forget(|address| present.contains(address));
    }

    fn debug_state(&self) -> serde_json::Value {
        serde_json::json!({
            "session_header": self.header.as_str(),
            "sessions": self.sessions(),
            "max_sessions": self.max_sessions,
            "window": self.window,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plugins::EndpointMetrics;

    use super::*;

    fn ids(n: usize) -> Vec<EndpointId> {
        (0..n)
            .map(|i| {
                EndpointId::new(
                    SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)),
                    format!("pod-{i}"),
                )
            })
            .collect()
    }

    fn views<'a>(ids: &'a [EndpointId], metrics: &'a [EndpointMetrics]) -> Vec<EndpointView<'a>> {
        ids.iter()
            .zip(metrics)
            .map(|(id, m)| EndpointView {
                id,
                metrics: Some(m),
                metrics_age: Some(Duration::ZERO),
                in_flight: 0,
                in_flight_tokens: 0,
                in_flight_prefill: 0,
                in_flight_prefill_tokens: 0,
                in_flight_output_tokens: 0,
                prefill_elapsed: std::time::Duration::ZERO,
                dispatched_since_scrape: 0,
                cached_prefix: None,
            })
            .collect()
    }

    fn request<'a>(headers: &'a http::HeaderMap) -> RequestView<'a> {
        RequestView {
            request_id: "r",
            model: "m",
            target_model: "m",
            priority: 0,
            prompt: None,
            prompt_tokens: 10,
            max_tokens: None,
            stream: false,
            headers,
        }
    }

    fn with_session(id: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-session-id", id.parse().unwrap());
        headers
    }

    #[test]
    fn a_session_sticks_while_its_endpoint_is_usable() {
        let ids = ids(3);
        let idle = vec![
            EndpointMetrics {
                kv_usage: 0.1,
                ..Default::default()
            };
            3
        ];
        let views = views(&ids, &idle);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let strategy = SessionAffinity::from_config(&StrategyConfig::new()).unwrap();
        let headers = with_session("chat-42");
        let first = strategy
            .pick(&request(&headers), &pool)
            .unwrap()
            .first()
            .unwrap();
        strategy.on_dispatched(&request(&headers), &views[first]);
        for _ in 0..10 {
            assert_eq!(
                strategy.pick(&request(&headers), &pool).unwrap().first(),
                Some(first)
            );
        }
        // The endpoint fills up: the session moves, and then sticks to its new endpoint.
        let mut busy = idle.clone();
        busy[first].waiting = 30;
        let views = self::views(&ids, &busy);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let moved = strategy
            .pick(&request(&headers), &pool)
            .unwrap()
            .first()
            .unwrap();
        assert_ne!(moved, first);
        strategy.on_dispatched(&request(&headers), &views[moved]);
        assert_eq!(
            strategy.pick(&request(&headers), &pool).unwrap().first(),
            Some(moved)
        );
    }

    #[test]
    fn new_sessions_are_placed_alike_by_every_replica_and_spread() {
        let ids = ids(4);
        let idle = vec![EndpointMetrics::default(); 4];
        let views = views(&ids, &idle);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let (a, b) = (
            SessionAffinity::from_config(&StrategyConfig::new()).unwrap(),
            SessionAffinity::from_config(&StrategyConfig::new()).unwrap(),
        );
        let mut used = std::collections::HashSet::new();
        for n in 0..40 {
            let headers = with_session(&format!("session-{n}"));
            let pick = a.pick(&request(&headers), &pool).unwrap().first();
            assert_eq!(pick, b.pick(&request(&headers), &pool).unwrap().first());
            used.insert(pick);
        }
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_endpoints_that_leave() {
        let ids = ids(2);
        let metrics = vec![EndpointMetrics::default(); 2];
        let views = views(&ids, &metrics);
        let config: StrategyConfig = [("max-sessions".to_owned(), "10".to_owned())].into();
        let strategy = SessionAffinity::from_config(&config).unwrap();
        for n in 0..1000 {
            let headers = with_session(&format!("s{n}"));
            strategy.on_dispatched(&request(&headers), &views[n % 2]);
            assert!(strategy.sessions() <= 10);
        }
        strategy.on_endpoints_changed(&ids[..1]);
        assert!(strategy.sessions() <= 5);
    }

    #[test]
    fn parameters_are_validated() {
        let bad: StrategyConfig = [("session-header".to_owned(), "x session".to_owned())].into();
        assert_eq!(
            SessionAffinity::from_config(&bad).unwrap_err().reason,
            "not a valid header name"
        );
        let unknown: StrategyConfig = [("ttl".to_owned(), "5".to_owned())].into();
        assert!(SessionAffinity::from_config(&unknown).is_err());
    }
}
