//! The process state every part of the gateway reads: the published snapshot, the metrics, the
//! outcome of the latest configuration load, readiness, and the work still in progress.
//!
//! One [`GatewayState`] is made at start-up and shared (`Arc`) by the proxy, the admin listener,
//! the configuration sources, the metrics scraper and the drain. Everything in it is lock-free on
//! the request path (`ArcSwap`, atomics). It depends only on the snapshot, the configuration
//! model and the metrics; nothing here knows about listeners, Pingora phases or sources, so every
//! other module can depend on it without a circle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::config::ConfigIssue;
use crate::kv_events::KvEvents;
use crate::metrics::GatewayMetrics;
use crate::snapshot::{Snapshot, SnapshotStore};

/// The outcome of the latest configuration load, for `/debug/snapshot`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    /// Where the configuration comes from.
    pub source: String,
    /// `applied`, `applied-partially` (kube: bad objects left out), `rejected` (the previous
    /// snapshot stays) or `initial`.
    pub last_result: String,
    /// Problems of the latest load.
    pub issues: Vec<ConfigIssue>,
}

/// State shared by every part of the running gateway.
#[derive(Debug)]
pub struct GatewayState {
    /// The routing snapshot.
    pub snapshots: SnapshotStore,
    /// The gateway's own metrics.
    pub metrics: GatewayMetrics,
    /// Latest configuration load.
    pub config: ArcSwap<ConfigStatus>,
    /// Ports the proxy listens on (fixed at start-up).
    pub bound_ports: Vec<u16>,
    /// Work the process must finish before it exits.
    pub active: Arc<ActiveWork>,
    /// The pools' KV-cache events (subscribed to from the first pool that enables them).
    pub kv_events: Arc<KvEvents>,
    ready: AtomicBool,
}

impl GatewayState {
    /// The state of a gateway that starts serving `snapshot` on `bound_ports`. It is not ready
    /// until [`GatewayState::set_ready`] (the scraper calls it after its first round).
    pub fn new(snapshot: Snapshot, config: ConfigStatus, bound_ports: Vec<u16>) -> Self {
        let metrics = GatewayMetrics::new();
        metrics.snapshot_generation.set(0);
        Self {
            snapshots: SnapshotStore::new(snapshot),
            metrics,
            config: ArcSwap::from_pointee(config),
            bound_ports,
            active: Arc::new(ActiveWork::default()),
            kv_events: Arc::new(KvEvents::new(crate::kv_events::DEFAULT_MAX_BLOCKS)),
            ready: AtomicBool::new(false),
        }
    }

    /// The Prometheus text of the gateway's metrics, with the gauges of the current snapshot
    /// and of the KV-event subscriber.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.kv_events.observe(&self.metrics);
        self.metrics.render(&self.snapshots.load())
    }

    /// Whether the gateway should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Turn readiness on or off; returns the previous value.
    pub fn set_ready(&self, ready: bool) -> bool {
        self.ready.swap(ready, Ordering::Relaxed)
    }

    /// Shutting down: not ready from now on, and no connection is kept alive.
    pub fn begin_drain(&self) {
        self.set_ready(false);
        self.active.begin_drain();
    }

    /// Record the outcome of a configuration load.
    pub fn record_config(&self, source: String, result: &str, issues: Vec<ConfigIssue>) {
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        self.config.store(Arc::new(ConfigStatus {
            source,
            last_result: result.to_owned(),
            issues,
        }));
    }

    /// Publish `snapshot` as the next generation; returns that generation.
    pub fn publish(&self, snapshot: Snapshot) -> u64 {
        let previous = self.snapshots.load();
        for port in snapshot
            .ports
            .keys()
            .filter(|p| !self.bound_ports.contains(p) && !previous.ports.contains_key(p))
        {
            tracing::warn!(target: "config", port, "the configuration adds listener port {port}; new ports are bound at the next restart");
        }
        self.snapshots.publish(snapshot);
        let generation = self.snapshots.load().generation;
        self.metrics.snapshot_generation.set(generation as i64);
        generation
    }
}

/// Work in progress in this process: requests on every listener, and shutdown tasks that must
/// finish before it exits (releasing the Lease).
#[derive(Debug, Default)]
pub struct ActiveWork {
    count: AtomicUsize,
    draining: AtomicBool,
}

impl ActiveWork {
    /// Count one unit of work until the guard drops.
    pub fn start(self: &Arc<Self>) -> WorkGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        WorkGuard(Arc::clone(self))
    }

    /// Units of work in progress.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Mark the process as shutting down: from now on no connection is kept alive.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the process is shutting down (SIGTERM or SIGQUIT received).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// One unit of work counted in [`ActiveWork`].
#[derive(Debug)]
pub struct WorkGuard(Arc<ActiveWork>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_work_and_drain_turns_readiness_off() {
        let state = GatewayState::new(Snapshot::default(), ConfigStatus::default(), vec![8080]);
        assert!(!state.is_ready());
        assert!(!state.set_ready(true));
        assert!(state.is_ready());
        let a = state.active.start();
        let b = state.active.start();
        assert_eq!(state.active.count(), 2);
        drop(a);
        drop(b);
        assert_eq!(state.active.count(), 0);
        assert!(!state.active.draining());
        state.begin_drain();
        assert!(state.active.draining());
        assert!(!state.is_ready());
    }

    #[test]
    fn publishing_stamps_generations_and_sets_the_gauge() {
        let state = GatewayState::new(Snapshot::default(), ConfigStatus::default(), vec![]);
        assert_eq!(state.publish(Snapshot::default()), 1);
        assert_eq!(state.publish(Snapshot::default()), 2);
        assert_eq!(state.metrics.snapshot_generation.get(), 2);
        state.record_config("test".into(), "rejected", Vec::new());
        assert_eq!(state.config.load().last_result, "rejected");
        assert_eq!(
            state
                .metrics
                .config_reloads
                .with_label_values(&["rejected"])
                .get(),
            1
        );
    }
}
