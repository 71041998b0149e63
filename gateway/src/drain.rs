//! Graceful shutdown: stop being chosen, stop accepting, finish what is in flight, exit.
//!
//! On SIGTERM the gateway turns `/readyz` to 503 at once, so the load balancer in front (a
//! Kubernetes Service, another replica) stops sending it new connections, and answers every
//! request from then on with `Connection: close`, so clients holding keep-alive connections move
//! to another replica after their current request instead of finding the connection gone when
//! they send the next one. After `--drain-delay` (time for both to take effect) it tells Pingora
//! to shut down gracefully, which closes the listeners and drops connections idle between
//! requests; requests in flight, including hour-long streams, continue. The process exits as soon
//! as none is left, or when `--grace-period` ends, whichever comes first. (Pingora alone would
//! sleep the whole grace period even when idle.) SIGINT still shuts down at once; SIGQUIT is
//! Pingora's graceful upgrade.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::state::{ActiveWork, GatewayState};

/// How often the drain monitor checks for work left.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The shutdown signal watch: SIGTERM drains, SIGINT stops at once, SIGQUIT upgrades.
#[derive(Debug)]
pub struct DrainSignal {
    /// Readiness to turn off.
    pub state: Arc<GatewayState>,
    /// Time between not-ready and closing the listeners.
    pub drain_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = terminate.recv() => {
                self.state.begin_drain();
                tracing::info!(drain_delay = ?self.drain_delay, "SIGTERM: not ready; closing listeners after the drain delay");
                tokio::select! {
                    _ = tokio::time::sleep(self.drain_delay) => ShutdownSignal::GracefulTerminate,
                    _ = interrupt.recv() => ShutdownSignal::FastShutdown,
                }
            }
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => {
                self.state.begin_drain();
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// Background task that ends the process once a graceful shutdown has no request left.
#[derive(Debug)]
pub struct DrainMonitor {
    /// The work to wait for.
    pub active: Arc<ActiveWork>,
}

#[async_trait]
impl BackgroundService for DrainMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        tracing::info!(
            in_flight = self.active.count(),
            "listeners closed; draining"
        );
        loop {
            let left = self.active.count();
            if left == 0 {
                tracing::info!("drained; exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}
