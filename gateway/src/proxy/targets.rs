//! The candidates a forwarded request walks: a Service's endpoints in round-robin order, a pool's
//! endpoints in the order its strategy ranked them, or the endpoints an external picker chose.
//!
//! A pool target is counted in flight on its endpoint when it is handed out (the count is
//! released when the [`Target`] drops), reported to the strategy's `on_dispatched` hook with the
//! view the strategy ranked it with, and counted in `gateway_picks_total`.

use std::net::SocketAddr;

use bytes::Bytes;
use futures::future::BoxFuture;
use pingora::http::{RequestHeader, ResponseHeader};

use super::decide::{Dispatch, InferenceInfo, PickedUpstreams};
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
        let target = Target {
            address: endpoint.id.address(),
            in_flight: Some(endpoint.dispatch(
                candidate.tokens,
                candidate.prefill_tokens,
                candidate.output_tokens,
            )),
        };
        self.dispatch.dispatched();
        Some(target)
    }
}

/// The endpoints an external picker chose, in its order (destination, then the fallback list);
/// the served endpoint is reported back to the picker before the response reaches the client.
#[derive(Debug)]
pub struct PickedTargets<'a> {
    /// The picker's choice.
    pub picked: PickedUpstreams,
    /// Where picks are counted.
    pub metrics: &'a GatewayMetrics,
}

/// The `strategy` label of picks an external picker made.
const EXTERNAL_PICKER: &str = "external-picker";

impl Targets for PickedTargets<'_> {
    fn next(&mut self, tried: &[SocketAddr], _header: &RequestHeader) -> Option<Target> {
        let address = *self
            .picked
            .destinations
            .iter()
            .find(|address| !tried.contains(address))?;
        let pool = &self.picked.pool;
        // A destination outside the pool's ready endpoints is still tried, as Envoy would, but
        // counted under `unknown` so a picker cannot mint label values.
        let endpoint = pool.endpoints.iter().find(|e| e.id.address() == address);
        let name = endpoint.map_or("unknown", |e| e.id.name());
        tracing::debug!(pool = %pool.name, endpoint = name, %address, "endpoint picker's choice");
        self.metrics
            .picks
            .with_label_values(&[pool.name.as_str(), EXTERNAL_PICKER, name])
            .inc();
        Some(Target {
            address,
            // A picker gives no cache estimate: the whole prompt counts as prefill work.
            in_flight: endpoint.map(|e| {
                let prefill = u32::try_from(self.picked.tokens).unwrap_or(u32::MAX);
                e.dispatch(self.picked.tokens, prefill, self.picked.output_tokens)
            }),
        })
    }

    fn on_response<'a>(
        &'a mut self,
        served: SocketAddr,
        response: &'a mut ResponseHeader,
    ) -> BoxFuture<'a, ()> {
        let Some(report) = self.picked.served.take() else {
            return Box::pin(std::future::ready(()));
        };
        Box::pin(async move {
            let headers: Vec<(String, Bytes)> = response
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        Bytes::copy_from_slice(value.as_bytes()),
                    )
                })
                .collect();
            let status = response.status.as_u16();
            match report.served(served, status, &headers).await {
                Ok(changes) => {
                    for name in &changes.remove_headers {
                        response.remove_header(name.as_str());
                    }
                    for (name, value) in changes.set_headers {
                        if let Err(error) = response.insert_header(name.clone(), value.as_ref()) {
                            tracing::debug!(header = %name, %error, "endpoint picker's response header ignored");
                        }
                    }
                }
                Err(error) => {
                    // The request is served; only the picker's bookkeeping of it failed.
                    tracing::warn!(pool = %self.picked.pool.name, %error, "reporting the served endpoint to the endpoint picker failed");
                    self.metrics
                        .picker_requests
                        .with_label_values(&[
                            self.picked.pool.name.as_str(),
                            "served_report_failed",
                        ])
                        .inc();
                }
            }
        })
    }
}
