//! The candidates a forwarded request walks: a Service's endpoints in round-robin order, or a
//! pool's endpoints in the order its strategy ranked them.
//!
//! A pool target is counted in flight on its endpoint when it is handed out (the count is
//! released when the [`Target`] drops), reported to the strategy's `on_dispatched` hook with the
//! view the strategy ranked it with, and counted in `gateway_picks_total`.

use std::net::SocketAddr;

use pingora::http::RequestHeader;

use super::decide::{Dispatch, InferenceInfo};
use super::forward::{Target, Targets};
use crate::metrics::GatewayMetrics;
use crate::snapshot::ServiceBackend;

/// A Service's ready endpoints, round-robin, each tried once.
#[derive(Debug)]
pub struct ServiceTargets<'a>(pub &'a ServiceBackend);

impl Targets for ServiceTargets<'_> {
    fn next(&mut self, tried: &[SocketAddr], _header: &RequestHeader) -> Option<Target> {
        Some(Target {
            address: self.0.next_untried(tried)?,
            in_flight: None,
        })
    }
}

/// A pool's eligible endpoints in the strategy's order.
#[derive(Debug)]
pub struct PoolTargets<'a> {
    /// The ranked endpoints.
    pub dispatch: Dispatch,
    /// The request the strategy ranked them for (`None` for bodyless requests, which no
    /// strategy saw).
    pub inference: Option<&'a InferenceInfo>,
    /// The request id, for the strategy's view of the request.
    pub request_id: &'a str,
    /// Where picks are counted.
    pub metrics: &'a GatewayMetrics,
}

impl Targets for PoolTargets<'_> {
    fn next(&mut self, _tried: &[SocketAddr], header: &RequestHeader) -> Option<Target> {
        let candidate = self.dispatch.next_candidate()?;
        let (pool, endpoint) = (candidate.pool, candidate.endpoint);
        if let (Some(info), Some(view)) = (self.inference, &candidate.view) {
            pool.strategy
                .on_dispatched(&info.view(self.request_id, &header.headers), view);
        }
        let pool_name = &pool.name;
        let strategy = pool.resolution.implementation.as_str();
        tracing::debug!(
            pool = %pool_name,
            strategy,
            endpoint = %endpoint.id.name(),
            address = %endpoint.id.address(),
            "picked endpoint"
        );
        self.metrics
            .picks
            .with_label_values(&[pool_name.as_str(), strategy, endpoint.id.name()])
            .inc();
        Some(Target {
            address: endpoint.id.address(),
            in_flight: Some(endpoint.dispatch(candidate.tokens)),
        })
    }
}
