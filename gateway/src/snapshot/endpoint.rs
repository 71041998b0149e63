//! Per-endpoint runtime state that outlives snapshots: in-flight counts and scraped metrics.
//!
//! A snapshot rebuild reuses the [`Endpoint`] of every address that stays in a pool, so a reload
//! never loses the load it has counted, and a request that started on an older snapshot releases its
//! count on the very object the new snapshot reads. Everything here is atomics or `ArcSwap`: the
//! request path never takes a lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use plugins::{DispatchedLoad, EndpointId, EndpointMetrics, EndpointView};

use crate::engine::Engine;

/// Passive health: how the gateway reacts to endpoints that fail requests.
///
/// A connection failure ejects an endpoint at once: nothing was sent, so the request moved on, and
/// the next requests should not try it first. Five 5xx answers in a row eject it too (outlier
/// detection): a server that answers but fails is worse than one that is busy. Ejections last one
/// second, doubling with every ejection that follows another within the current one's length plus a
/// minute, up to thirty seconds; a success resets the count. An ejected endpoint is left out of
/// the pool view, unless every endpoint of the pool is ejected (then none is: failing open).
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// Consecutive 5xx answers that eject an endpoint. Five: one error is noise, five in a row at
    /// inference request rates is a broken server.
    pub consecutive_errors: u32,
    /// First ejection. One second: long enough to skip a restarting pod's refused connects, short
    /// enough that a transient failure costs little capacity.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            consecutive_errors: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// The instant this process first read the endpoint clock; the atomics below count from it.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A monotonic clock in milliseconds since [`START`], for atomics.
fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64 + 1
}

/// Microseconds since [`START`], plus one so that 0 can mean "not set".
fn now_us() -> u64 {
    START.elapsed().as_micros() as u64 + 1
}

/// The instant a [`now_us`] reading stands for; `None` for 0.
fn instant_of(us: u64) -> Option<Instant> {
    START.checked_add(Duration::from_micros(us.checked_sub(1)?))
}

/// Metrics of one endpoint with the time they were scraped.
#[derive(Debug, Clone)]
pub struct ScrapedMetrics {
    /// The values.
    pub metrics: EndpointMetrics,
    /// When the scrape completed.
    pub at: Instant,
}

/// One model-server endpoint (`podIP:port`) of a pool.
#[derive(Debug)]
pub struct Endpoint {
    /// Identity.
    pub id: EndpointId,
    /// The metric dialect its `/metrics` speaks.
    pub engine: Engine,
    in_flight: AtomicU32,
    in_flight_tokens: AtomicU64,
    in_flight_prefill: AtomicU32,
    in_flight_prefill_tokens: AtomicU64,
    in_flight_output_tokens: AtomicU64,
    /// When the oldest prefill in flight started ([`now_us`]): set by a dispatch that finds none
    /// in flight and by a first token that leaves others waiting. Read only while
    /// `in_flight_prefill` is above zero.
    prefill_head_since_us: AtomicU64,
    dispatched_total: AtomicU64,
    dispatched_since_scrape: AtomicU32,
    metrics: ArcSwapOption<ScrapedMetrics>,
    consecutive_errors: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// The flow-control queue of its pool, woken when this endpoint may have room again (a first
    /// token, a request's end, a scrape).
    queue: std::sync::OnceLock<Arc<crate::flow::PoolQueue>>,
}

impl Endpoint {
    /// A fresh endpoint with no load and no metrics.
    pub fn new(id: EndpointId, engine: Engine) -> Self {
        Self {
            id,
            engine,
            in_flight: AtomicU32::new(0),
            in_flight_tokens: AtomicU64::new(0),
            in_flight_prefill: AtomicU32::new(0),
            in_flight_prefill_tokens: AtomicU64::new(0),
            in_flight_output_tokens: AtomicU64::new(0),
            prefill_head_since_us: AtomicU64::new(0),
            dispatched_total: AtomicU64::new(0),
            dispatched_since_scrape: AtomicU32::new(0),
            metrics: ArcSwapOption::empty(),
            consecutive_errors: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            queue: std::sync::OnceLock::new(),
        }
    }

    /// Wake `queue` whenever this endpoint may have room again. An endpoint belongs to one pool,
    /// whose queue lives as long as the pool: later calls keep the first queue.
    pub fn attach_queue(&self, queue: &Arc<crate::flow::PoolQueue>) {
        let _ = self.queue.set(Arc::clone(queue));
    }

    /// Tell the pool's queue this endpoint may have room.
    fn wake_queue(&self) {
        if let Some(queue) = self.queue.get() {
            queue.wake();
        }
    }

    /// Whether the endpoint is ejected right now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    fn eject(&self, policy: &HealthPolicy) {
        let now = now_ms();
        let previous_until = self.ejected_until_ms.load(Ordering::Relaxed);
        // Ejections in a row back off; after a quiet minute they start over.
        let recent = previous_until + 60_000 > now;
        let count = if recent {
            self.ejections.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.ejections.store(1, Ordering::Relaxed);
            1
        };
        let factor = 1u32 << (count - 1).min(16);
        let length = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        self.ejected_until_ms
            .store(now + length.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_errors.store(0, Ordering::Relaxed);
    }

    /// A connection to the endpoint failed: eject it.
    pub fn record_connect_failure(&self, policy: &HealthPolicy) {
        self.eject(policy);
    }

    /// The endpoint answered with `status`.
    pub fn record_response(&self, status: u16, policy: &HealthPolicy) {
        if status >= 500 {
            let errors = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if errors >= policy.consecutive_errors {
                self.eject(policy);
            }
        } else {
            self.consecutive_errors.store(0, Ordering::Relaxed);
            if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
                self.ejections.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Requests dispatched here and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Estimated prompt tokens of those requests.
    pub fn in_flight_tokens(&self) -> u64 {
        self.in_flight_tokens.load(Ordering::Relaxed)
    }

    /// Requests in flight here whose first token has not arrived.
    pub fn in_flight_prefill(&self) -> u32 {
        self.in_flight_prefill.load(Ordering::Relaxed)
    }

    /// The prompt tokens those requests are expected to prefill.
    pub fn in_flight_prefill_tokens(&self) -> u64 {
        self.in_flight_prefill_tokens.load(Ordering::Relaxed)
    }

    /// Output tokens the requests in flight here may still generate (each one's budget less
    /// what it streamed back so far).
    pub fn in_flight_output_tokens(&self) -> u64 {
        self.in_flight_output_tokens.load(Ordering::Relaxed)
    }

    /// How long the oldest prefill in flight has been under way; zero when none is.
    pub fn prefill_elapsed(&self) -> Duration {
        prefill_elapsed(
            self.in_flight_prefill(),
            self.prefill_head_since_us.load(Ordering::Relaxed),
            Instant::now(),
        )
    }

    /// Requests ever dispatched here.
    pub fn dispatched_total(&self) -> u64 {
        self.dispatched_total.load(Ordering::Relaxed)
    }

    /// Requests dispatched since the last scrape was published.
    pub fn dispatched_since_scrape(&self) -> u32 {
        self.dispatched_since_scrape.load(Ordering::Relaxed)
    }

    /// The latest scraped metrics.
    pub fn metrics(&self) -> Option<Arc<ScrapedMetrics>> {
        self.metrics.load_full()
    }

    /// Publish a new scrape; the dispatched-since-scrape count starts over.
    pub fn publish_metrics(&self, scraped: ScrapedMetrics) {
        self.metrics.store(Some(Arc::new(scraped)));
        self.dispatched_since_scrape.store(0, Ordering::Relaxed);
        self.wake_queue();
    }

    /// Count a request as in flight here until the returned guard is dropped: `tokens` estimated
    /// prompt tokens, of which `prefill_tokens` are expected to be prefilled here (the rest
    /// cached) and count as prefill work until [`InFlight::first_token`], and up to
    /// `output_tokens` to generate, counted until they stream back ([`InFlight::streamed`]).
    pub fn dispatch(
        self: &Arc<Self>,
        tokens: u64,
        prefill_tokens: u32,
        output_tokens: u64,
    ) -> InFlight {
        let head_since = self.prefill_head_since_us.load(Ordering::Relaxed);
        let prefilling = self.in_flight_prefill.fetch_add(1, Ordering::Relaxed);
        let now = now_us();
        if prefilling == 0 {
            self.prefill_head_since_us.store(now, Ordering::Relaxed);
        }
        // One clock reading for both: the head's age is a difference of two readings.
        let head_age = if prefilling > 0 && head_since > 0 {
            Duration::from_micros(now.saturating_sub(head_since))
        } else {
            Duration::ZERO
        };
        let at_dispatch = DispatchedLoad {
            in_flight: self.in_flight.fetch_add(1, Ordering::Relaxed),
            in_flight_prefill: prefilling,
            in_flight_prefill_tokens: self
                .in_flight_prefill_tokens
                .fetch_add(u64::from(prefill_tokens), Ordering::Relaxed),
            prefill_elapsed: head_age,
            running: self.metrics.load().as_ref().map(|s| s.metrics.running),
        };
        self.in_flight_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.in_flight_output_tokens
            .fetch_add(output_tokens, Ordering::Relaxed);
        self.dispatched_total.fetch_add(1, Ordering::Relaxed);
        self.dispatched_since_scrape.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
            tokens,
            prefill_tokens,
            prefilling: true,
            output_budget: output_tokens,
            output_left: output_tokens,
            at_dispatch,
        }
    }
}

/// A request counted in flight on an endpoint; dropping it releases the count, on every path.
///
/// Its prefill work is released at its first token ([`InFlight::first_token`]) or, when no token
/// came (a failure, an abort, a retry on another endpoint, a non-streamed answer), when it drops.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    tokens: u64,
    prefill_tokens: u32,
    prefilling: bool,
    /// Output tokens it was counted for, and those of them not yet streamed back.
    output_budget: u64,
    output_left: u64,
    at_dispatch: DispatchedLoad,
}

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The prompt tokens counted as this request's prefill.
    pub fn prefill_tokens(&self) -> u32 {
        self.prefill_tokens
    }

    /// The endpoint's load just before this request was counted.
    pub fn at_dispatch(&self) -> DispatchedLoad {
        self.at_dispatch
    }

    /// The request's first token arrived: its prefill is done. Later calls do nothing.
    pub fn first_token(&mut self) {
        if std::mem::replace(&mut self.prefilling, false) {
            let before = self
                .endpoint
                .in_flight_prefill
                .fetch_sub(1, Ordering::Relaxed);
            if before > 1 {
                // The engine turns to the next prefill now.
                self.endpoint
                    .prefill_head_since_us
                    .store(now_us(), Ordering::Relaxed);
            }
            self.endpoint
                .in_flight_prefill_tokens
                .fetch_sub(u64::from(self.prefill_tokens), Ordering::Relaxed);
            self.endpoint.wake_queue();
        }
    }
}

impl InFlight {
    /// `tokens` output tokens have streamed back so far: those of its budget stop counting as
    /// output to come. Counts only go up; beyond the budget nothing is left to release.
    pub fn streamed(&mut self, tokens: u64) {
        let left = self.output_budget.saturating_sub(tokens);
        if left < self.output_left {
            self.endpoint
                .in_flight_output_tokens
                .fetch_sub(self.output_left - left, Ordering::Relaxed);
            self.output_left = left;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.first_token();
        self.endpoint
            .in_flight_output_tokens
            .fetch_sub(self.output_left, Ordering::Relaxed);
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint
            .in_flight_tokens
            .fetch_sub(self.tokens, Ordering::Relaxed);
        self.endpoint.wake_queue();
    }
}

/// How long the head prefill has run at `now`, given the prefills in flight and when the head
/// started; zero when none is in flight or the start is unknown.
fn prefill_elapsed(in_flight_prefill: u32, head_since_us: u64, now: Instant) -> Duration {
    match instant_of(head_since_us) {
        Some(since) if in_flight_prefill > 0 => now.saturating_duration_since(since),
        _ => Duration::ZERO,
    }
}

/// The endpoints of `all` that are not ejected, or all of them when every one is.
pub fn eligible(all: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
    let healthy: Vec<Arc<Endpoint>> = all.iter().filter(|e| !e.is_ejected()).cloned().collect();
    if healthy.is_empty() {
        all.to_vec()
    } else {
        healthy
    }
}

/// An endpoint's load and metrics read once, so a strategy's pick and the hooks that follow it see
/// the same numbers.
#[derive(Debug, Clone)]
pub struct EndpointSample {
    /// The latest scraped metrics.
    pub metrics: Option<Arc<ScrapedMetrics>>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Estimated prompt tokens in flight.
    pub in_flight_tokens: u64,
    /// Requests in flight before their first token.
    pub in_flight_prefill: u32,
    /// Prefill tokens of those requests.
    pub in_flight_prefill_tokens: u64,
    /// Output tokens the requests in flight may still generate.
    pub in_flight_output_tokens: u64,
    /// When the oldest of them started ([`now_us`]; meaningful while `in_flight_prefill` > 0).
    pub prefill_head_since_us: u64,
    /// Requests dispatched since the scrape.
    pub dispatched_since_scrape: u32,
}

impl EndpointSample {
    /// Read `endpoint` now.
    pub fn of(endpoint: &Endpoint) -> Self {
        Self {
            metrics: endpoint.metrics(),
            in_flight: endpoint.in_flight(),
            in_flight_tokens: endpoint.in_flight_tokens(),
            in_flight_prefill: endpoint.in_flight_prefill(),
            in_flight_prefill_tokens: endpoint.in_flight_prefill_tokens(),
            in_flight_output_tokens: endpoint.in_flight_output_tokens(),
            prefill_head_since_us: endpoint.prefill_head_since_us.load(Ordering::Relaxed),
            dispatched_since_scrape: endpoint.dispatched_since_scrape(),
        }
    }

    /// The view a strategy sees of `endpoint` with this sample, the metrics aged as of `now`.
    pub fn view<'a>(&'a self, endpoint: &'a Endpoint, now: Instant) -> EndpointView<'a> {
        EndpointView {
            id: &endpoint.id,
            metrics: self.metrics.as_ref().map(|s| &s.metrics),
            metrics_age: self
                .metrics
                .as_ref()
                .map(|s| now.saturating_duration_since(s.at)),
            in_flight: self.in_flight,
            in_flight_tokens: self.in_flight_tokens,
            in_flight_prefill: self.in_flight_prefill,
            in_flight_prefill_tokens: self.in_flight_prefill_tokens,
            in_flight_output_tokens: self.in_flight_output_tokens,
            prefill_elapsed: prefill_elapsed(
                self.in_flight_prefill,
                self.prefill_head_since_us,
                now,
            ),
            dispatched_since_scrape: self.dispatched_since_scrape,
            cached_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_eject_with_backoff_and_successes_reset() {
        let policy = HealthPolicy {
            consecutive_errors: 3,
            base_ejection: Duration::from_millis(200),
            max_ejection: Duration::from_secs(1),
        };
        let endpoint = Endpoint::new(
            EndpointId::new("127.0.0.1:1".parse().unwrap(), "e"),
            Engine::Vllm,
        );
        assert!(!endpoint.is_ejected());
        endpoint.record_response(503, &policy);
        endpoint.record_response(500, &policy);
        endpoint.record_response(200, &policy);
        endpoint.record_response(502, &policy);
        endpoint.record_response(502, &policy);
        assert!(
            !endpoint.is_ejected(),
            "a success in between resets the count"
        );
        endpoint.record_response(502, &policy);
        assert!(endpoint.is_ejected(), "three in a row eject");
        endpoint.record_connect_failure(&policy);
        assert_eq!(
            endpoint.ejections.load(Ordering::Relaxed),
            2,
            "a second ejection backs off"
        );
        let until = endpoint.ejected_until_ms.load(Ordering::Relaxed);
        assert!(until >= now_ms() + 300, "400 ms the second time");
    }

    #[test]
    fn eligibility_fails_open() {
        let policy = HealthPolicy::default();
        let all: Vec<Arc<Endpoint>> = (1..=2)
            .map(|i| {
                Arc::new(Endpoint::new(
                    EndpointId::new(format!("127.0.0.{i}:1").parse().unwrap(), "e"),
                    Engine::Vllm,
                ))
            })
            .collect();
        all[0].record_connect_failure(&policy);
        assert_eq!(eligible(&all).len(), 1);
        all[1].record_connect_failure(&policy);
        assert_eq!(
            eligible(&all).len(),
            2,
            "every endpoint ejected: use them all"
        );
    }

    #[test]
    fn in_flight_is_released_when_the_guard_drops() {
        let endpoint = Arc::new(Endpoint::new(
            EndpointId::new("127.0.0.1:1".parse().unwrap(), "e"),
            Engine::Vllm,
        ));
        let a = endpoint.dispatch(100, 100, 0);
        let b = endpoint.dispatch(50, 50, 0);
        assert_eq!(
            (endpoint.in_flight(), endpoint.in_flight_tokens()),
            (2, 150)
        );
        drop(a);
        assert_eq!((endpoint.in_flight(), endpoint.in_flight_tokens()), (1, 50));
        drop(b);
        assert_eq!((endpoint.in_flight(), endpoint.in_flight_tokens()), (0, 0));
        assert_eq!(endpoint.dispatched_total(), 2);
        assert_eq!(endpoint.dispatched_since_scrape(), 2);
        endpoint.publish_metrics(ScrapedMetrics {
            metrics: EndpointMetrics::default(),
            at: Instant::now(),
        });
        assert_eq!(endpoint.dispatched_since_scrape(), 0);
    }

    #[test]
    fn prefill_is_released_at_the_first_token_and_the_rest_at_the_end() {
        let endpoint = Arc::new(Endpoint::new(
            EndpointId::new("127.0.0.1:1".parse().unwrap(), "e"),
            Engine::Vllm,
        ));
        let mut a = endpoint.dispatch(1000, 200, 64);
        let b = endpoint.dispatch(500, 500, 32);
        assert_eq!(
            b.at_dispatch(),
            DispatchedLoad {
                in_flight: 1,
                in_flight_prefill: 1,
                in_flight_prefill_tokens: 200,
                // a's prefill had been under way since a was sent.
                prefill_elapsed: b.at_dispatch().prefill_elapsed,
                running: None,
            }
        );
        assert!(b.at_dispatch().prefill_elapsed <= endpoint.prefill_elapsed());
        assert_eq!(
            (
                endpoint.in_flight_prefill(),
                endpoint.in_flight_prefill_tokens()
            ),
            (2, 700)
        );
        let before_first_token = Instant::now();
        a.first_token();
        a.first_token();
        // The start is kept in whole microseconds (truncated), hence the one of slack.
        assert!(
            endpoint.prefill_elapsed() <= before_first_token.elapsed() + Duration::from_micros(1),
            "b's prefill starts when a's first token comes"
        );
        assert_eq!(
            (
                endpoint.in_flight_prefill(),
                endpoint.in_flight_prefill_tokens()
            ),
            (1, 500),
            "once"
        );
        assert_eq!(endpoint.in_flight(), 2, "still decoding");
        drop(b);
        assert_eq!(
            (
                endpoint.in_flight_prefill(),
                endpoint.in_flight_prefill_tokens()
            ),
            (0, 0),
            "no first token: released at the end"
        );
        assert_eq!(
            endpoint.prefill_elapsed(),
            Duration::ZERO,
            "no prefill in flight"
        );
        assert_eq!(
            endpoint.in_flight_output_tokens(),
            64,
            "b's output to come released"
        );
        a.streamed(10);
        a.streamed(4);
        assert_eq!(endpoint.in_flight_output_tokens(), 54, "counts only go up");
        drop(a);
        assert_eq!((endpoint.in_flight(), endpoint.in_flight_tokens()), (0, 0));
        assert_eq!(endpoint.in_flight_output_tokens(), 0);
    }

    proptest::proptest! {
        /// Whatever the order of dispatches, first tokens and ends, the endpoint's counters are
        /// the sums over the requests still held, and zero once every guard is gone.
        #[test]
        fn credit_and_release_balance(
            ops in proptest::collection::vec((0u8..4, 0usize..8, 1u32..5000), 1..200),
        ) {
            let endpoint = Arc::new(Endpoint::new(
                EndpointId::new("127.0.0.1:1".parse().unwrap(), "e"),
                Engine::Vllm,
            ));
            // Each guard, whether it still prefills, its output budget and what it streamed.
            let mut held: Vec<(InFlight, bool, u64, u64)> = Vec::new();
            for (op, which, tokens) in ops {
                match op {
                    0 => {
                        let budget = u64::from(tokens % 700);
                        let guard = endpoint.dispatch(u64::from(tokens) * 2, tokens, budget);
                        held.push((guard, true, budget, 0));
                    }
                    1 if !held.is_empty() => {
                        let i = which % held.len();
                        held[i].0.first_token();
                        held[i].1 = false;
                    }
                    2 if !held.is_empty() => {
                        let i = which % held.len();
                        held[i].3 += u64::from(tokens % 300);
                        let streamed = held[i].3;
                        held[i].0.streamed(streamed);
                    }
                    _ if !held.is_empty() => {
                        held.swap_remove(which % held.len());
                    }
                    _ => {}
                }
                proptest::prop_assert_eq!(
                    endpoint.in_flight_output_tokens(),
                    held.iter().map(|(_, _, budget, streamed)| budget.saturating_sub(*streamed)).sum::<u64>()
                );
                let prefilling = held.iter().filter(|(_, p, _, _)| *p);
                proptest::prop_assert_eq!(endpoint.in_flight() as usize, held.len());
                proptest::prop_assert_eq!(endpoint.in_flight_prefill() as usize, prefilling.clone().count());
                proptest::prop_assert_eq!(
                    endpoint.in_flight_prefill_tokens(),
                    prefilling.map(|(g, _, _, _)| u64::from(g.prefill_tokens())).sum::<u64>()
                );
                proptest::prop_assert_eq!(
                    endpoint.in_flight_tokens(),
                    held.iter().map(|(g, _, _, _)| u64::from(g.prefill_tokens()) * 2).sum::<u64>()
                );
            }
            held.clear();
            proptest::prop_assert_eq!(
                (endpoint.in_flight(), endpoint.in_flight_tokens(), endpoint.in_flight_prefill(), endpoint.in_flight_prefill_tokens(), endpoint.in_flight_output_tokens()),
                (0, 0, 0, 0, 0)
            );
        }
    }
}
