//! The metrics scraper: every pool endpoint's `/metrics`, every `--scrape-interval`, published to
//! the endpoint for the strategies to read.
//!
//! One task per endpoint scrapes on its own tick with a timeout, parses the page with the
//! endpoint's engine mapping ([`crate::engine`]) and publishes the values with their time. A failed or slow
//! scrape publishes nothing, so the previous values age and, past the strategies' staleness limit,
//! count as saturation, never as an empty server. The set of tasks follows the snapshot: an
//! endpoint that joins a pool is scraped from the next reconcile, one that leaves is no longer
//! scraped. All tasks stop on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;

use crate::engine;
use crate::snapshot::{Endpoint, ScrapedMetrics};
use crate::state::GatewayState;

/// Largest `/metrics` page read; a vLLM page with LoRA series is tens of kilobytes.
const MAX_PAGE_BYTES: usize = 4 << 20;
/// How often the task set is reconciled with the snapshot.
const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// Scraper settings.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeSettings {
    /// Time between scrapes of one endpoint.
    pub interval: Duration,
    /// Limit of one scrape (connect, request, whole page).
    pub timeout: Duration,
}

/// Why a scrape failed (a metrics label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// Connecting, writing or reading failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The server answered with a non-200 status.
    #[error("status {0}")]
    Status(u16),
    /// The page was larger than the limit.
    #[error("page larger than {MAX_PAGE_BYTES} bytes")]
    TooLarge,
    /// The page had none of the expected series.
    #[error("{0}")]
    Parse(#[from] engine::ParseError),
    /// The scrape took longer than the timeout.
    #[error("timeout")]
    Timeout,
}

impl ScrapeError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ScrapeError::Connection(_) => "connection",
            ScrapeError::Status(_) => "status",
            ScrapeError::TooLarge => "too_large",
            ScrapeError::Parse(_) => "parse",
            ScrapeError::Timeout => "timeout",
        }
    }
}

/// Fetch and parse one endpoint's metrics.
pub async fn scrape(
    connector: &Connector,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<plugins::EndpointMetrics, ScrapeError> {
    let fetch = async {
        let address = endpoint.id.address();
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(4));
        let connection =
            |e: Box<pingora::Error>| ScrapeError::Connection(e.etype().as_str().to_owned());
        let (mut session, _reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(connection)?;
        let mut request = RequestHeader::build("GET", b"/metrics", None).map_err(connection)?;
        request
            .insert_header("host", address.to_string())
            .map_err(connection)?;
        request
            .insert_header("accept", "text/plain")
            .map_err(connection)?;
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(connection)?;
        session.finish_request_body().await.map_err(connection)?;
        session.read_response_header().await.map_err(connection)?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        let mut page = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await.map_err(connection)? {
            if page.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(ScrapeError::TooLarge);
            }
            page.extend_from_slice(&chunk);
        }
        if session.response_done() {
            connector
                .release_http_session(session, &peer, peer.options.idle_timeout)
                .await;
        }
        if status != 200 {
            return Err(ScrapeError::Status(status));
        }
        let text = String::from_utf8_lossy(&page);
        Ok(engine::parse(&text, endpoint.engine)?)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err(ScrapeError::Timeout))
}

/// The background service.
#[derive(Debug)]
pub struct Scraper {
    state: Arc<GatewayState>,
    settings: ScrapeSettings,
}

impl Scraper {
    /// A scraper of the pools in `state`'s snapshots; it marks `state` ready after its first round.
    pub fn new(state: Arc<GatewayState>, settings: ScrapeSettings) -> Self {
        Self { state, settings }
    }
}

struct Task {
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[async_trait]
impl BackgroundService for Scraper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let connector = Arc::new(Connector::new(Some(ConnectorOptions::new(1024))));
        let mut tasks: HashMap<usize, Task> = HashMap::new();
        let first_round = Arc::new(AtomicUsize::new(0));
        let mut first_round_size = None;
        let mut generation = None;
        let started = Instant::now();
        // An endpoint removed before its first scrape never reports; readiness does not wait for it
        // longer than one scrape can take.
        let round_limit = self.settings.timeout + self.settings.interval + RECONCILE_EVERY;
        let mut ticker = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            let snapshot = self.state.snapshots.load();
            if generation != Some(snapshot.generation) {
                generation = Some(snapshot.generation);
                self.state.kv_events.reconcile(&snapshot);
                let mut wanted: HashMap<usize, Arc<Endpoint>> = HashMap::new();
                for pool in snapshot.pools.values() {
                    for endpoint in &pool.endpoints {
                        wanted.insert(Arc::as_ptr(endpoint) as usize, Arc::clone(endpoint));
                    }
                }
                tasks.retain(|key, _| wanted.contains_key(key));
                for (key, endpoint) in wanted {
                    tasks.entry(key).or_insert_with(|| Task {
                        handle: tokio::spawn(scrape_loop(
                            endpoint,
                            Arc::clone(&connector),
                            Arc::clone(&self.state),
                            self.settings,
                            Arc::clone(&first_round),
                        )),
                    });
                }
                first_round_size.get_or_insert(tasks.len());
            }
            if let Some(size) = first_round_size
                && (first_round.load(Ordering::Relaxed) >= size || started.elapsed() > round_limit)
                && !self.state.set_ready(true)
            {
                tracing::info!(endpoints = size, "first metrics scrape round done; ready");
            }
        }
        tasks.clear();
    }
}

async fn scrape_loop(
    endpoint: Arc<Endpoint>,
    connector: Arc<Connector>,
    state: Arc<GatewayState>,
    settings: ScrapeSettings,
    first_round: Arc<AtomicUsize>,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let name = endpoint.id.name().to_owned();
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let span = tracing::debug_span!("scrape", endpoint = %name);
        let result =
            tracing::Instrument::instrument(scrape(&connector, &endpoint, settings.timeout), span)
                .await;
        state
            .metrics
            .scrape_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(metrics) => endpoint.publish_metrics(ScrapedMetrics {
                metrics,
                at: Instant::now(),
            }),
            Err(error) => {
                state
                    .metrics
                    .scrape_errors
                    .with_label_values(&[name.as_str(), error.metric_label()])
                    .inc();
                tracing::debug!(endpoint = %name, %error, "metrics scrape failed");
            }
        }
        if first {
            first = false;
            first_round.fetch_add(1, Ordering::Relaxed);
        }
    }
}
