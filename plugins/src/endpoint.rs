//! What a strategy can see of a pool: its eligible endpoints, their scraped metrics and load.
//!
//! The gateway builds a [`PoolView`] per request from its snapshot; it holds only endpoints that are
//! ready and not ejected, so a strategy never has to filter for readiness itself.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Identity of one endpoint: a pod address and target port (`podIP:port`), plus a display name.
///
/// Two endpoints are the same endpoint exactly when their addresses are equal; the name is for
/// humans (logs, metrics labels, debug output) and does not take part in comparisons.
#[derive(Clone)]
pub struct EndpointId {
    address: SocketAddr,
    name: Arc<str>,
}

impl EndpointId {
    /// An endpoint at `address`, shown as `name` (usually `namespace/pod`).
    pub fn new(address: SocketAddr, name: impl Into<Arc<str>>) -> Self {
        Self {
            address,
            name: name.into(),
        }
    }

    /// The address the gateway dials.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A human-readable name (for example `default/qwen-0`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PartialEq for EndpointId {
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address
    }
}

impl Eq for EndpointId {}

impl std::hash::Hash for EndpointId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.address.hash(state);
    }
}

impl PartialOrd for EndpointId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EndpointId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.address.cmp(&other.address)
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.address, f)
    }
}

/// LoRA adapter residency as the model server reports it (`vllm:lora_requests_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraState {
    /// Adapters the server can hold in one batch (`max_lora`).
    pub max_loras: u32,
    /// Adapters with running requests.
    pub running: Vec<String>,
    /// Adapters with waiting requests.
    pub waiting: Vec<String>,
}

impl LoraState {
    /// Whether `adapter` has requests running on this endpoint.
    pub fn is_running(&self, adapter: &str) -> bool {
        self.running.iter().any(|a| a == adapter)
    }

    /// Whether `adapter` has requests waiting on this endpoint.
    pub fn is_waiting(&self, adapter: &str) -> bool {
        self.waiting.iter().any(|a| a == adapter)
    }

    /// Whether another adapter could join the running batch.
    pub fn has_free_slot(&self) -> bool {
        (self.running.len() as u64) < u64::from(self.max_loras)
    }
}

/// The latest values scraped from one endpoint's `/metrics`, normalised across engines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointMetrics {
    /// Requests waiting in the server's queue (includes preempted requests).
    pub waiting: u32,
    /// Requests in the running batch.
    pub running: u32,
    /// KV-cache usage in `0.0..=1.0`.
    pub kv_usage: f64,
    /// LoRA residency, when the server reports it.
    pub lora: Option<LoraState>,
    /// Tokens per KV block (`cache_config_info{block_size}`), when reported.
    pub block_size: Option<u32>,
    /// KV blocks in the cache (`cache_config_info{num_gpu_blocks}`), when reported.
    pub num_blocks: Option<u64>,
    /// The served (base) model name, from the metrics' `model_name` label, when reported.
    pub model_name: Option<String>,
}

impl EndpointMetrics {
    /// KV-cache capacity in tokens, when both block size and block count are known.
    pub fn kv_capacity_tokens(&self) -> Option<u64> {
        Some(u64::from(self.block_size?) * self.num_blocks?)
    }
}

/// What an endpoint's KV-cache events say it holds of the request's prompt, in tokens of the
/// model server's own tokenization ([`EndpointView::cached_prefix`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachedPrefix {
    /// Leading prompt tokens whose KV blocks are in GPU memory: reused without any work.
    pub gpu_tokens: u32,
    /// Leading prompt tokens held in GPU memory or offloaded (CPU memory, or a connector's own
    /// tier): at least `gpu_tokens`. The offloaded part is copied back instead of computed.
    pub total_tokens: u32,
    /// The whole prompt's length in the same tokens. The strategies' own figures
    /// ([`crate::RequestView::prompt_tokens`], the estimate's blocks of text) are in other units,
    /// so what is held is read as a share of the prompt: `total_tokens / prompt_tokens`.
    pub prompt_tokens: u32,
}

/// One eligible endpoint as a strategy sees it at pick time.
#[derive(Debug, Clone, Copy)]
pub struct EndpointView<'a> {
    /// Which endpoint.
    pub id: &'a EndpointId,
    /// The latest scraped metrics, if any scrape has succeeded yet.
    pub metrics: Option<&'a EndpointMetrics>,
    /// How old `metrics` are. `None` when there are no metrics.
    pub metrics_age: Option<Duration>,
    /// Requests this gateway has dispatched to the endpoint and not yet seen finish.
    pub in_flight: u32,
    /// Estimated prompt tokens of those requests.
    pub in_flight_tokens: u64,
    /// Of the requests in flight, those whose first token has not arrived yet: their prefill is
    /// still queued or running on the endpoint.
    pub in_flight_prefill: u32,
    /// The prompt tokens those requests are expected to prefill: each one's uncached estimate
    /// when its strategy gave one ([`crate::Candidates::with_prefill_tokens`]), else its whole
    /// prompt. Released at each request's first token, or at its end on every other path.
    pub in_flight_prefill_tokens: u64,
    /// Output tokens the requests in flight may still generate: each one's `max_tokens` (or 256
    /// when it names none) less the tokens streamed back so far. With the prefill tokens above,
    /// the KV cache the requests already sent will still take ([`crate::load::Load::kv_projected`]).
    pub in_flight_output_tokens: u64,
    /// How long the endpoint has been working on the oldest of those prefills: the time since
    /// the latest first token it returned while more prefills were waiting, or since the prefill
    /// was dispatched to an endpoint that had none. Zero when no prefill is in flight. The part
    /// of the prefill ahead that is already done, so a pod about to finish its prefill is told
    /// apart from one that has just started (both hold the same tokens in flight).
    pub prefill_elapsed: Duration,
    /// Requests this gateway dispatched to the endpoint after `metrics` were scraped: the part of
    /// the load the scraped numbers cannot know about yet.
    pub dispatched_since_scrape: u32,
    /// What the endpoint holds of this request's prompt according to its KV-cache events, when
    /// the pool publishes them, the gateway is receiving this endpoint's, and the prompt could be
    /// tokenized by the pool's model servers: the truth, where the strategy's own record of what
    /// it sent where is an estimate. `None` otherwise; a strategy then falls back to its estimate
    /// for this endpoint.
    pub cached_prefix: Option<CachedPrefix>,
}

/// The eligible endpoints of one pool at pick time.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// Pool name (`namespace/name`).
    pub name: &'a str,
    /// Ready, non-ejected endpoints, in a stable order (sorted by address).
    pub endpoints: &'a [EndpointView<'a>],
}

impl<'a> PoolView<'a> {
    /// Number of eligible endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the pool has no eligible endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}
