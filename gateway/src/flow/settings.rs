//! A pool's flow-control settings, from its annotations under [`FLOW_CONTROL_PREFIX`].
//!
//! | Annotation (after the prefix) | Default | Why |
//! |---|---|---|
//! | `enabled` | `true` | Requests to a saturated pool wait in the gateway, ordered by priority and fairness, instead of piling into the model servers' first-come-first-served queues |
//! | `max-requests` | 10000 | Requests queued per pool at most: about a minute of a busy pool's arrivals, small enough that a flood cannot exhaust the gateway's memory |
//! | `max-bytes` | 1073741824 | Bytes of queued bodies per pool at most (1 GiB); the Inference Extension's per-band default |
//! | `band-max-requests` | 10000 | Requests per priority band at most: by default one band may fill the whole queue |
//! | `band-max-bytes` | 1073741824 | Bytes per priority band at most |
//! | `ttl-ms` | 60000 | How long a request may wait for room before it is answered 429: a minute, the patience of an interactive client |
//! | `empty-pool-ttl-ms` | 300000 | How long a request may wait while the pool has no endpoint at all (scaled to zero, or every pod restarting): five minutes, about what a vLLM pod takes to pull its image and load a 7B model |
//! | `shed-negative-priority` | `true` | Requests of negative priority (`Sheddable`) are answered 429 at once while the pool is saturated, as without flow control, rather than queued behind everything else |
//! | `priority-headroom-kv` | 0.1 | While priorities mix, a tenth of each endpoint's KV cache is the higher priority's: a lower priority is sent only while the requests already on an endpoint, grown to their full length (scraped usage plus the prompt tokens still to prefill and the output tokens still to come, over the capacity vLLM reports in `cache_config_info`), fill at most 0.9 of it, and while its current usage is under the usual 0.8; the highest active priority sees the cache full at 0.95, inside the tenth kept for it. Lower-priority requests keep growing after they are sent (each decoded token takes KV), and the higher priority must find room above that growth instead of waiting for a lower-priority request to finish (vLLM preempts the newest request when the cache runs out). Projecting the growth instead of keeping a fixed margin below the threshold lets the batch tenant run as full as it safely can: batch throughput 0.92–0.97 of flow control off against 0.89 with the fixed margin (0.72 / 0.88), interactive TTFT p95 1.16–1.24 of alone with the projection, 1.18–1.31 with the fixed margin. Where the capacity is unknown the fixed margin applies: 0.8 × 0.9 = 0.72 for the lower priority. Measured on `compare --scenario qos`, see `docs/flow-control.md` |
//! | `priority-headroom-queue` | 0.75 | While a higher priority is active, a lower one keeps at most this many requests awaiting their first token per endpoint, counted over the pool (instead of the strategy's queue threshold, 5): on five endpoints at most three prefill lower-priority work at once, so a higher-priority request usually finds one with no prefill ahead of it. Measured on `compare --scenario qos --size 120` (KV headroom 0.1): 1 left every endpoint prefilling batch work (interactive TTFT p95 4.2× alone), 0.5 starved the batch tenant's prefills (about 0.74× its throughput); the table is in `docs/flow-control.md` |
//! | `priority-headroom-window-ms` | 30000 | How recently a higher priority must have sent a request for the headroom to be kept: long enough to bridge the gaps of an interactive tenant's traffic, short enough that a tenant gone quiet stops costing the others capacity |

use std::collections::BTreeMap;
use std::time::Duration;

use flowcontrol::Limits;
use plugins::params::Params;
use plugins::{ConfigError, StrategyConfig};

/// Pool annotation prefix of the flow-control settings.
pub const FLOW_CONTROL_PREFIX: &str = "flow-control.inference-gateway.dev/";

/// How a pool queues requests while it is saturated (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowSettings {
    /// Whether requests queue at all; off, a saturated pool sheds negative priorities and sends
    /// everything else to the model servers.
    pub enabled: bool,
    /// Bounds of the whole queue.
    pub queue: Limits,
    /// Bounds of each priority band.
    pub band: Limits,
    /// Longest wait for room.
    pub ttl: Duration,
    /// Longest wait while the pool has no endpoint.
    pub empty_pool_ttl: Duration,
    /// Whether negative priorities are shed at once when the pool is saturated.
    pub shed_negative_priority: bool,
    /// Share of the KV cache a lower priority leaves free while a higher one is active.
    pub priority_headroom_kv: f64,
    /// Requests awaiting a first token per endpoint a lower priority may keep while a higher one
    /// is active.
    pub priority_headroom_queue: f64,
    /// How recently a higher priority must have sent a request to count as active.
    pub priority_headroom_window: Duration,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self::from_annotations(&BTreeMap::new()).expect("the defaults are valid")
    }
}

impl FlowSettings {
    /// Read the settings from a pool's annotations; an error names the annotation (without the
    /// prefix), its value and the reason.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let config: StrategyConfig = annotations
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(FLOW_CONTROL_PREFIX)?.to_owned(), v.clone())))
            .collect();
        let mut params = Params::new("flow control", &config);
        const GIB: usize = 1 << 30;
        let enabled = params.bool("enabled", true)?;
        let queue = Limits {
            requests: params.usize("max-requests", 10_000, 1..=10_000_000)?,
            bytes: params.usize("max-bytes", GIB, 1..=1 << 40)? as u64,
        };
        let band = Limits {
            requests: params.usize("band-max-requests", 10_000, 1..=10_000_000)?,
            bytes: params.usize("band-max-bytes", GIB, 1..=1 << 40)? as u64,
        };
        let ttl = params.millis("ttl-ms", Duration::from_secs(60), 1..=86_400_000)?;
        let empty_pool_ttl = params.millis(
            "empty-pool-ttl-ms",
            Duration::from_secs(300),
            1..=86_400_000,
        )?;
        let shed_negative_priority = params.bool("shed-negative-priority", true)?;
        let priority_headroom_kv = params.f64("priority-headroom-kv", 0.1, 0.0..=0.9)?;
        let priority_headroom_queue = params.f64("priority-headroom-queue", 0.75, 0.0..=1000.0)?;
        let priority_headroom_window = params.millis(
            "priority-headroom-window-ms",
            Duration::from_secs(30),
            1..=86_400_000,
        )?;
        params.finish()?;
        Ok(Self {
            enabled,
            queue,
            band,
            ttl,
            empty_pool_ttl,
            shed_negative_priority,
            priority_headroom_kv,
            priority_headroom_queue,
            priority_headroom_window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{FLOW_CONTROL_PREFIX}{k}"), v.to_string()))
            .chain([("unrelated/annotation".to_owned(), "x".to_owned())])
            .collect()
    }

    #[test]
    fn defaults_queue_with_a_minute_to_live() {
        let s = FlowSettings::default();
        assert!(s.enabled && s.shed_negative_priority);
        assert_eq!(s.queue.requests, 10_000);
        assert_eq!(s.band.bytes, 1 << 30);
        assert_eq!(s.ttl, Duration::from_secs(60));
        assert_eq!(s.empty_pool_ttl, Duration::from_secs(300));
        assert_eq!(
            (s.priority_headroom_kv, s.priority_headroom_queue),
            (0.1, 0.75)
        );
        assert_eq!(s.priority_headroom_window, Duration::from_secs(30));
    }

    #[test]
    fn annotations_override_and_bad_values_name_themselves() {
        let s = FlowSettings::from_annotations(&annotations(&[
            ("enabled", "false"),
            ("ttl-ms", "1500"),
            ("band-max-requests", "10"),
            ("priority-headroom-kv", "0"),
        ]))
        .unwrap();
        assert_eq!(s.priority_headroom_kv, 0.0);
        assert!(!s.enabled);
        assert_eq!(s.ttl, Duration::from_millis(1500));
        assert_eq!(s.band.requests, 10);
        let err =
            FlowSettings::from_annotations(&annotations(&[("max-requests", "0")])).unwrap_err();
        assert_eq!(
            (err.parameter.as_str(), err.value.as_str()),
            ("max-requests", "0")
        );
        let err = FlowSettings::from_annotations(&annotations(&[("priority-headroom-kv", "1")]))
            .unwrap_err();
        assert!(err.reason.contains("between 0 and 0.9"), "{}", err.reason);
        let err = FlowSettings::from_annotations(&annotations(&[("ttl", "60s")])).unwrap_err();
        assert_eq!(err.parameter, "ttl");
        assert!(
            err.reason.starts_with("unknown parameter of flow control"),
            "{}",
            err.reason
        );
    }
}
