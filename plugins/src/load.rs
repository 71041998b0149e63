//! Load of an endpoint as a strategy should see it: scraped numbers corrected by what the gateway
//! itself sent since the scrape, and stale numbers treated as saturation.
//!
//! Two lessons from the reference systems are built in here rather than left to each strategy:
//! scraped metrics are already old when they arrive (a burst decided on one scrape herds onto the
//! endpoint that looked emptiest, so requests dispatched since the scrape are added to the queue),
//! and an endpoint whose metrics stopped coming is not empty but unknown (it is treated as
//! saturated: never preferred, still used when nothing else is left).

use std::time::Duration;

use crate::endpoint::{EndpointView, PoolView};
use crate::params::Params;
use crate::strategy::ConfigError;

/// Thresholds shared by load estimates and the saturation detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadConfig {
    /// Metrics older than this are stale. Default 200 ms: four missed scrapes at the default 50 ms
    /// interval, the same limit the Inference Extension's saturation detector uses.
    pub stale_after: Duration,
    /// A queue this long counts as saturated. Default 5 (the Inference Extension's
    /// `QUEUE_THRESHOLD_CRITICAL`): beyond it, time to first token grows by whole prefills.
    pub queue_threshold: f64,
    /// KV-cache usage this high counts as saturated. Default 0.8: above it vLLM starts preempting
    /// under bursty decode growth.
    pub kv_threshold: f64,
    /// The share of the KV cache a priority may fill while it keeps headroom for a higher one
    /// ([`LoadConfig::with_headroom`]): an endpoint whose capacity is known is then also judged by
    /// its projected usage ([`Load::kv_projected`]: what the requests already sent will take once
    /// prefilled and grown to their full length) against this share; one whose capacity is
    /// unknown by its current usage against `kv_threshold` times this share. Unset by default.
    pub projected_kv_threshold: Option<f64>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_millis(200),
            queue_threshold: 5.0,
            kv_threshold: 0.8,
            projected_kv_threshold: None,
        }
    }
}

/// The highest KV threshold headroom raises a priority to: vLLM admits a request only while
/// free blocks remain (and keeps a 1% watermark), and a cache this full preempts on the next
/// burst of decode growth.
pub const MAX_KV_THRESHOLD: f64 = 0.95;

impl LoadConfig {
    /// The thresholds a lower priority is judged by while a higher one is active: at most
    /// `queue` requests awaiting their first token per endpoint (if below the usual threshold),
    /// and the share `kv_headroom` of the KV cache left to the higher one. Where an endpoint's
    /// capacity is known, the requests already sent there, grown to their full length, may fill
    /// `1 − kv_headroom` of it (projected usage), and its current usage stays under the usual
    /// KV threshold; elsewhere the current usage is judged against the KV threshold lowered by
    /// the same share. The pool looks saturated to the lower priority earlier, and the room it
    /// leaves is the higher one's. A `kv_headroom` of 0 keeps no KV share: the usual KV
    /// threshold applies.
    pub fn with_headroom(self, queue: f64, kv_headroom: f64) -> LoadConfig {
        LoadConfig {
            queue_threshold: self.queue_threshold.min(queue),
            projected_kv_threshold: (kv_headroom > 0.0)
                .then(|| (1.0 - kv_headroom).clamp(0.0, 1.0)),
            ..self
        }
    }

    /// The thresholds of the highest active priority while a lower one keeps headroom for it:
    /// the KV threshold raised by the share `kv_headroom`, at least to `1 − kv_headroom / 2` and
    /// at most to [`MAX_KV_THRESHOLD`]. The lower priority's requests are bounded by what they
    /// will take once grown (`1 − headroom` of the cache where its size is known), and the higher
    /// one's room is measured above that bound. A `kv_headroom` of 0 keeps no share, so it
    /// raises nothing.
    pub fn with_headroom_above(self, kv_headroom: f64) -> LoadConfig {
        if kv_headroom <= 0.0 {
            return self;
        }
        let headroom = kv_headroom.min(1.0);
        let raised = (self.kv_threshold * (1.0 + headroom)).max(1.0 - headroom / 2.0);
        LoadConfig {
            kv_threshold: raised.min(MAX_KV_THRESHOLD.max(self.kv_threshold)),
            ..self
        }
    }
}

/// The load estimate of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Whether scraped metrics are present and fresh.
    pub fresh: bool,
    /// Waiting requests: scraped, plus requests dispatched since the scrape.
    pub queue: f64,
    /// Running requests, as scraped.
    pub running: f64,
    /// KV-cache usage in `0..=1`, as scraped.
    pub kv: f64,
    /// The KV-cache usage the requests already sent will reach: the scraped usage plus, over the
    /// capacity the endpoint reports, the prompt tokens of this gateway's requests still awaiting
    /// their first token and the output tokens its requests may still generate. An upper bound
    /// (prompts being prefilled are partly counted twice, prefix sharing is ignored, and not
    /// every request runs to its `max_tokens`). `None` when the capacity is unknown or the
    /// metrics are not fresh.
    pub kv_projected: Option<f64>,
    /// Requests this gateway has in flight there.
    pub in_flight: u32,
}

impl Load {
    /// The estimate for `view`.
    pub fn of(view: &EndpointView<'_>, config: &LoadConfig) -> Self {
        let fresh_metrics = view.metrics.filter(|_| {
            view.metrics_age
                .is_some_and(|age| age <= config.stale_after)
        });
        match fresh_metrics {
            Some(m) => {
                let kv = m.kv_usage.clamp(0.0, 1.0);
                let kv_projected = m.kv_capacity_tokens().filter(|&c| c > 0).map(|capacity| {
                    let coming = view
                        .in_flight_prefill_tokens
                        .saturating_add(view.in_flight_output_tokens);
                    kv + coming as f64 / capacity as f64
                });
                Load {
                    fresh: true,
                    queue: f64::from(m.waiting) + f64::from(view.dispatched_since_scrape),
                    running: f64::from(m.running),
                    kv,
                    kv_projected,
                    in_flight: view.in_flight,
                }
            }
            None => Load {
                fresh: false,
                queue: config.queue_threshold,
                running: 0.0,
                kv: 1.0,
                kv_projected: None,
                in_flight: view.in_flight,
            },
        }
    }

    /// The KV part of saturation, 1 or more when the cache counts as full: the current usage
    /// over the KV threshold, and with a [`LoadConfig::projected_kv_threshold`] also the
    /// projected usage over it (or, when the capacity is unknown, the current usage over the KV
    /// threshold lowered by that share).
    pub fn kv_saturation(&self, config: &LoadConfig) -> f64 {
        let current = self.kv / config.kv_threshold;
        match (config.projected_kv_threshold, self.kv_projected) {
            (None, _) => current,
            (Some(share), Some(projected)) => current.max(projected / share),
            (Some(share), None) => current / share,
        }
    }

    /// Requests the endpoint has or is about to have: running plus queued.
    pub fn requests(&self) -> f64 {
        self.running + self.queue
    }

    /// Saturation: `max(queue / queue threshold, kv / kv threshold)`; at least 1 when stale.
    pub fn saturation(&self, config: &LoadConfig) -> f64 {
        let value = (self.queue / config.queue_threshold).max(self.kv_saturation(config));
        if self.fresh { value } else { value.max(1.0) }
    }
}

/// How far above the least-loaded endpoint an endpoint may be and still be chosen for affinity
/// (a cached prefix, a resident adapter).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LoadWindow {
    /// Extra requests (running plus queued) allowed over the least-loaded endpoint.
    pub requests: f64,
    /// Extra load allowed as a fraction of the least-loaded endpoint's requests.
    pub ratio: f64,
}

impl LoadWindow {
    /// Read `window-requests` (default 8) and `window-ratio` (default 0.5) from `params`. Eight
    /// more sequences raise a decode step by a few percent (decode is memory-bound), while missing
    /// a cached prefix or swapping an adapter costs a whole prefill; at high load the window grows
    /// with it, 50% over the least-loaded endpoint.
    pub fn from_params(params: &mut Params<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            requests: params.f64("window-requests", 8.0, 0.0..=100_000.0)?,
            ratio: params.f64("window-ratio", 0.5, 0.0..=100.0)?,
        })
    }

    /// Which endpoints are inside the window. With fresh metrics somewhere, the measure is running
    /// plus queued requests among fresh endpoints, and endpoints over the KV threshold are out while
    /// some endpoint is under it; with no fresh metrics at all, it is the gateway's in-flight count
    /// over every endpoint.
    pub fn members(&self, loads: &[Load], config: &LoadConfig) -> Vec<bool> {
        let any_fresh = loads.iter().any(|l| l.fresh);
        let measure = |l: &Load| {
            if any_fresh {
                l.requests()
            } else {
                f64::from(l.in_flight)
            }
        };
        let eligible = |l: &Load| !any_fresh || l.fresh;
        let minimum = loads
            .iter()
            .filter(|l| eligible(l))
            .map(measure)
            .fold(f64::INFINITY, f64::min);
        let limit = minimum + self.requests.max(self.ratio * minimum);
        let under = |l: &Load| l.kv_saturation(config) < 1.0;
        let kv_room = loads.iter().any(|l| l.fresh && under(l));
        loads
            .iter()
            .map(|l| eligible(l) && measure(l) <= limit && (!kv_room || under(l)))
            .collect()
    }
}

/// Load estimates of every endpoint of `pool`, in order.
pub fn loads(pool: &PoolView<'_>, config: &LoadConfig) -> Vec<Load> {
    pool.endpoints.iter().map(|e| Load::of(e, config)).collect()
}

/// Pool saturation: the average of the endpoints' saturation. The pool is saturated at 1 or
/// more; an empty pool counts as saturated.
pub fn pool_saturation(pool: &PoolView<'_>, config: &LoadConfig) -> f64 {
    if pool.is_empty() {
        return f64::INFINITY;
    }
    let total: f64 = pool
        .endpoints
        .iter()
        .map(|e| Load::of(e, config).saturation(config))
        .sum();
    total / pool.len() as f64
}

/// Requests the pool can take before it is saturated, for flow control (0 or less: none). Per
/// endpoint, `queue threshold × (1 − saturation)`, where an endpoint's saturation is
/// `max(queue / queue threshold, KV saturation)` as in [`Load::saturation`], except that
/// its queue is the larger of the requests this gateway sent there that await their first token
/// (exact, never stale) and its scraped queue plus what was sent since the scrape; an endpoint
/// past its threshold counts against the others, but by one threshold at most, so an endpoint
/// flooded from elsewhere cannot hold back requests that idle endpoints could serve. An endpoint
/// whose metrics are missing or stale is judged by the gateway's own count alone, so a scrape that
/// stopped slows nothing down by itself. The pool decides as a whole, so a released request goes
/// wherever its strategy ranks best (KV usage included). An empty pool has no room.
pub fn free_slots(pool: &PoolView<'_>, config: &LoadConfig) -> f64 {
    pool.endpoints
        .iter()
        .map(|view| {
            let awaiting = f64::from(view.in_flight_prefill);
            let load = Load::of(view, config);
            let (queue, kv) = if load.fresh {
                (load.queue.max(awaiting), load.kv_saturation(config))
            } else {
                (awaiting, 0.0)
            };
            let saturation = (queue / config.queue_threshold).max(kv);
            (config.queue_threshold * (1.0 - saturation)).max(-config.queue_threshold)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointId, EndpointMetrics};

    #[test]
    fn free_slots_count_each_endpoints_room_from_the_gateways_count_and_the_scrape() {
        let ids: Vec<EndpointId> = (1..=4)
            .map(|i| EndpointId::new(format!("10.0.0.{i}:8000").parse().unwrap(), "e"))
            .collect();
        let scraped = |waiting, kv_usage| EndpointMetrics {
            waiting,
            kv_usage,
            ..Default::default()
        };
        let metrics = [
            scraped(1, 0.3),
            scraped(0, 0.3),
            scraped(0, 0.85),
            scraped(9, 0.1),
        ];
        let mut views: Vec<EndpointView<'_>> = ids
            .iter()
            .zip(&metrics)
            .map(|(id, m)| view(id, Some(m), 10, 0))
            .collect();
        // 0: scrape 1 + 1 sent since, 3 awaiting a first token: queue 3, 5 - 3 = 2 free.
        views[0].dispatched_since_scrape = 1;
        views[0].in_flight_prefill = 3;
        // 1: stale metrics, 4 awaiting: judged by the gateway's count, 1 free.
        views[1].metrics_age = Some(Duration::from_secs(5));
        views[1].in_flight_prefill = 4;
        // 2: KV 0.85 over 0.8: saturation 1.0625, 0.3125 over. 3: a scraped queue of 9: 4 over.
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        assert_eq!(free_slots(&pool, &LoadConfig::default()), -1.3125);
        // An endpoint far past its threshold takes at most one threshold's worth from the others.
        let flooded = [scraped(40, 0.3)];
        let mut two = vec![views[0], view(&ids[3], Some(&flooded[0]), 10, 0)];
        two[0].in_flight_prefill = 0;
        let pool = PoolView {
            name: "p",
            endpoints: &two,
        };
        // 5 − 2 (scrape 1 + 1 sent since) = 3, and −5 for the flooded one.
        assert_eq!(free_slots(&pool, &LoadConfig::default()), -2.0);
        // KV usage counts before the threshold: 0.6 of 0.8 leaves a quarter of the queue.
        let half_full = [scraped(0, 0.6)];
        let view = [view(&ids[0], Some(&half_full[0]), 10, 0)];
        let pool = PoolView {
            name: "p",
            endpoints: &view,
        };
        let room = free_slots(&pool, &LoadConfig::default());
        assert!((room - 1.25).abs() < 1e-9, "{room}");
        // With headroom for a higher priority and no capacity reported: 0.6 of 0.8 × 0.8, a
        // sixteenth of a queue of 1.
        let lower = LoadConfig::default().with_headroom(1.0, 0.2);
        assert_eq!(lower.queue_threshold, 1.0);
        assert_eq!(lower.projected_kv_threshold, Some(0.8));
        let room = free_slots(&pool, &lower);
        assert!((room - 0.0625).abs() < 1e-9, "{room}");
        // The highest active priority's threshold sits inside the headroom the lower one keeps.
        let upper = LoadConfig::default().with_headroom_above(0.1);
        assert!((upper.kv_threshold - 0.95).abs() < 1e-9);
        assert_eq!(upper.queue_threshold, 5.0);
        let big_threshold = LoadConfig {
            kv_threshold: 0.5,
            ..LoadConfig::default()
        };
        assert!((big_threshold.with_headroom_above(0.4).kv_threshold - 0.8).abs() < 1e-9);
        assert_eq!(
            LoadConfig::default().with_headroom_above(0.5).kv_threshold,
            MAX_KV_THRESHOLD
        );
        // No KV share kept: the usual threshold on both sides, only the queue headroom.
        let none = LoadConfig::default().with_headroom(1.0, 0.0);
        assert_eq!(
            (
                none.queue_threshold,
                none.kv_threshold,
                none.projected_kv_threshold
            ),
            (1.0, 0.8, None)
        );
        assert_eq!(
            LoadConfig::default().with_headroom_above(0.0),
            LoadConfig::default()
        );
        let empty = PoolView {
            name: "p",
            endpoints: &[],
        };
        assert_eq!(free_slots(&empty, &LoadConfig::default()), 0.0);
    }

    fn view<'a>(
        id: &'a EndpointId,
        metrics: Option<&'a EndpointMetrics>,
        age_ms: u64,
        since: u32,
    ) -> EndpointView<'a> {
        EndpointView {
            id,
            metrics,
            metrics_age: metrics.map(|_| Duration::from_millis(age_ms)),
            in_flight: 3,
            in_flight_tokens: 0,
            in_flight_prefill: 0,
            in_flight_prefill_tokens: 0,
            in_flight_output_tokens: 0,
            prefill_elapsed: std::time::Duration::ZERO,
            dispatched_since_scrape: since,
            cached_prefix: None,
        }
    }

    #[test]
    fn headroom_projects_the_kv_the_requests_in_flight_will_take() {
        let id = EndpointId::new("10.0.0.1:8000".parse().unwrap(), "a");
        // 1,000 blocks of 16 tokens; half full now.
        let m = EndpointMetrics {
            kv_usage: 0.5,
            block_size: Some(16),
            num_blocks: Some(1_000),
            ..Default::default()
        };
        let mut v = view(&id, Some(&m), 10, 0);
        v.in_flight_prefill_tokens = 2_000;
        v.in_flight_output_tokens = 4_000;
        let config = LoadConfig::default();
        let load = Load::of(&v, &config);
        // 0.5 + 6,000 / 16,000.
        assert_eq!(load.kv_projected, Some(0.875));
        // Alone, the current usage counts: 0.5 / 0.8.
        assert!((load.kv_saturation(&config) - 0.625).abs() < 1e-9);
        // Keeping a tenth for a higher priority: 0.875 of 0.9.
        let lower = config.with_headroom(5.0, 0.1);
        assert!((load.kv_saturation(&lower) - 0.875 / 0.9).abs() < 1e-9);
        let pool = PoolView {
            name: "p",
            endpoints: std::slice::from_ref(&v),
        };
        let room = free_slots(&pool, &lower);
        assert!((room - 5.0 * (1.0 - 0.875 / 0.9)).abs() < 1e-9, "{room}");
        // More output to come than the cache holds past 0.9: no room for the lower priority.
        v.in_flight_output_tokens = 6_000;
        let pool = PoolView {
            name: "p",
            endpoints: std::slice::from_ref(&v),
        };
        assert!(free_slots(&pool, &lower) < 0.0);
        assert!(free_slots(&pool, &config) > 0.0);
        // The current usage still bounds it: 0.85 now is past 0.8 whatever the projection.
        let full_now = EndpointMetrics {
            kv_usage: 0.85,
            ..m.clone()
        };
        let mut idle = view(&id, Some(&full_now), 10, 0);
        idle.in_flight_output_tokens = 0;
        assert!(Load::of(&idle, &config).kv_saturation(&lower) > 1.0);
        // Stale metrics project nothing.
        assert_eq!(
            Load::of(&view(&id, Some(&m), 500, 0), &config).kv_projected,
            None
        );
    }

    #[test]
    fn dispatches_since_the_scrape_count_as_queue() {
        let id = EndpointId::new("10.0.0.1:8000".parse().unwrap(), "a");
        let m = EndpointMetrics {
            waiting: 2,
            running: 7,
            kv_usage: 0.4,
            ..Default::default()
        };
        let load = Load::of(&view(&id, Some(&m), 10, 3), &LoadConfig::default());
        assert!(load.fresh);
        assert_eq!(
            (load.queue, load.running, load.kv, load.in_flight),
            (5.0, 7.0, 0.4, 3)
        );
        assert_eq!(load.requests(), 12.0);
        assert_eq!(load.saturation(&LoadConfig::default()), 1.0);
    }

    #[test]
    fn stale_or_missing_metrics_are_saturated() {
        let id = EndpointId::new("10.0.0.1:8000".parse().unwrap(), "a");
        let m = EndpointMetrics::default();
        let config = LoadConfig::default();
        let stale = Load::of(&view(&id, Some(&m), 500, 0), &config);
        assert!(!stale.fresh);
        assert!(stale.saturation(&config) >= 1.0);
        let missing = Load::of(&view(&id, None, 0, 0), &config);
        assert!(!missing.fresh && missing.saturation(&config) >= 1.0);
    }

    #[test]
    fn windows_bound_load_above_the_minimum() {
        let fresh = |requests: f64, kv: f64| Load {
            fresh: true,
            queue: 0.0,
            running: requests,
            kv,
            kv_projected: None,
            in_flight: 0,
        };
        let config = LoadConfig::default();
        let window = LoadWindow {
            requests: 4.0,
            ratio: 0.5,
        };
        let loads = [
            fresh(10.0, 0.2),
            fresh(14.0, 0.3),
            fresh(16.0, 0.3),
            fresh(11.0, 0.85),
        ];
        assert_eq!(
            window.members(&loads, &config),
            vec![true, true, false, false]
        );
        let stale = Load {
            fresh: false,
            queue: 5.0,
            running: 0.0,
            kv: 1.0,
            kv_projected: None,
            in_flight: 1,
        };
        let mut mixed = loads.to_vec();
        mixed.push(stale);
        assert!(
            !window.members(&mixed, &config)[4],
            "stale endpoints are outside"
        );
        let blind = [
            Load {
                in_flight: 2,
                ..stale
            },
            Load {
                in_flight: 9,
                ..stale
            },
        ];
        assert_eq!(
            window.members(&blind, &config),
            vec![true, false],
            "in-flight counts without metrics"
        );
    }

    #[test]
    fn pool_saturation_averages() {
        let a = EndpointId::new("10.0.0.1:8000".parse().unwrap(), "a");
        let b = EndpointId::new("10.0.0.2:8000".parse().unwrap(), "b");
        let idle = EndpointMetrics::default();
        let full = EndpointMetrics {
            waiting: 10,
            kv_usage: 0.9,
            ..Default::default()
        };
        let views = [view(&a, Some(&idle), 0, 0), view(&b, Some(&full), 0, 0)];
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let s = pool_saturation(&pool, &LoadConfig::default());
        assert!((s - 1.0).abs() < 1e-9, "{s}");
        assert!(
            pool_saturation(
                &PoolView {
                    name: "p",
                    endpoints: &[]
                },
                &LoadConfig::default()
            )
            .is_infinite()
        );
    }
}
