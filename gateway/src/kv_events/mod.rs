//! KV-cache events: which pool endpoint holds which prompt blocks, from the model servers
//! themselves.
//!
//! A pool whose annotations enable events ([`KvEventsSettings`]) has every ready endpoint
//! watched: the [`Subscriber`] thread keeps a SUB socket on the address its server publishes on
//! and applies the batches to one [`kvevents::BlockIndex`] per gateway process. [`KvEvents`]
//! follows the published snapshot ([`KvEvents::reconcile`]), gives each endpoint address a
//! slot, and answers, for a request whose prompt the pool's servers tokenized
//! ([`tokenize`]), how many leading tokens each endpoint holds in GPU memory and offloaded
//! ([`KvEvents::cached`]): the [`plugins::CachedPrefix`] a strategy reads.
//!
//! Blocks are matched by their token ids, not by the engines' hashes (see
//! [`kvevents::index`](kvevents::BlockIndex)): the gateway computes the keys of the request's full
//! blocks from the token ids the model server's own `/tokenize` returns, with the block size the
//! endpoint's events carry and the adapter name the request is sent with.
//!
//! Every gateway replica subscribes to every endpoint, so replicas hold the same index without a
//! shared store; an endpoint no batch has arrived from since it was watched (its server does not
//! publish, or is unreachable) has no [`plugins::CachedPrefix`], and strategies fall back to
//! their own estimate for it.

pub mod settings;
mod subscriber;
pub mod tokenize;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use kvevents::{BlockKey, EndpointSlot, prompt_keys};
use parking_lot::Mutex;
use plugins::CachedPrefix;

pub use settings::{KV_EVENTS_PREFIX, KvEventsSettings};
pub use subscriber::{EventSource, Subscriber, SubscriberStats};

use crate::metrics::GatewayMetrics;
use crate::snapshot::{Endpoint, Snapshot};

/// Default bound of the index: (endpoint, block) entries. A million entries take about 150 MB
/// and cover 100 endpoints of 10,000 blocks (an A10 serving a 7B model holds about 5,500
/// 16-token blocks; an 80 GB GPU about 31,000).
pub const DEFAULT_MAX_BLOCKS: usize = 1_000_000;

/// The keys of a tokenized prompt's full blocks, for each block size the pool's endpoints use.
#[derive(Debug, Clone, Default)]
pub struct PromptKeys {
    /// The prompt's length in the model server's tokens.
    pub tokens: u32,
    /// (block size, keys of the full blocks of that size).
    pub by_block_size: Vec<(u32, Vec<BlockKey>)>,
}

/// A request's [`PromptKeys`] with the events they are matched against.
#[derive(Debug, Clone)]
pub struct PromptCache {
    /// The keys.
    pub keys: PromptKeys,
    /// The process's KV events.
    pub events: Arc<KvEvents>,
}

impl PromptCache {
    /// What each of `endpoints` holds of the prompt ([`KvEvents::cached`]).
    pub fn cached(&self, endpoints: &[Arc<Endpoint>]) -> Vec<Option<CachedPrefix>> {
        self.events.cached(&self.keys, endpoints)
    }
}

/// Watched endpoints and the subscriber, for one gateway process.
pub struct KvEvents {
    max_blocks: usize,
    /// Started at the first endpoint to watch; `None` inside when the thread could not start.
    subscriber: OnceLock<Option<Subscriber>>,
    /// Address → (slot, where it publishes), for reconciling.
    watched: Mutex<Watched>,
    /// Address → slot, read on the request path.
    slots: ArcSwap<HashMap<SocketAddr, EndpointSlot>>,
}

#[derive(Default)]
struct Watched {
    sources: HashMap<SocketAddr, (EndpointSlot, EventSource)>,
    next_slot: EndpointSlot,
}

impl std::fmt::Debug for KvEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvEvents")
            .field("watched", &self.slots.load().len())
            .field("subscriber", &self.subscriber.get())
            .finish()
    }
}

impl KvEvents {
    /// Nothing watched yet; the index will hold at most `max_blocks` entries.
    pub fn new(max_blocks: usize) -> Self {
        Self {
            max_blocks,
            subscriber: OnceLock::new(),
            watched: Mutex::new(Watched::default()),
            slots: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    fn subscriber(&self) -> Option<&Subscriber> {
        self.subscriber.get().and_then(Option::as_ref)
    }

    /// Watch exactly the ready endpoints of `snapshot`'s pools that enable events: new ones are
    /// subscribed to, ones that left (or now publish elsewhere) are unwatched and their blocks
    /// forgotten.
    pub fn reconcile(&self, snapshot: &Snapshot) {
        let mut wanted: HashMap<SocketAddr, EventSource> = HashMap::new();
        for pool in snapshot.pools.values() {
            let Some(settings) = &pool.kv_events else {
                continue;
            };
            for endpoint in &pool.endpoints {
                let address = endpoint.id.address();
                if let Some(source) = settings.source(address) {
                    wanted.insert(address, source);
                }
            }
        }
        let mut watched = self.watched.lock();
        if wanted.is_empty() && watched.sources.is_empty() {
            return;
        }
        let subscriber = self.subscriber.get_or_init(|| {
            Subscriber::start(self.max_blocks)
                .inspect_err(
                    |error| tracing::error!(%error, "the KV event subscriber did not start"),
                )
                .ok()
        });
        let Some(subscriber) = subscriber else {
            return;
        };
        let gone: Vec<SocketAddr> = watched
            .sources
            .iter()
            .filter(|(address, (_, source))| wanted.get(address) != Some(source))
            .map(|(address, _)| *address)
            .collect();
        for address in gone {
            if let Some((slot, _)) = watched.sources.remove(&address) {
                subscriber.unwatch(slot);
            }
        }
        for (address, source) in wanted {
            if watched.sources.contains_key(&address) {
                continue;
            }
            // Slots are never reused: a command for an old slot cannot touch a new endpoint.
            let slot = watched.next_slot;
            watched.next_slot += 1;
            tracing::debug!(%address, publisher = %source.publisher, slot, "watching KV events");
            subscriber.watch(slot, source.clone());
            watched.sources.insert(address, (slot, source));
        }
        let slots = watched
            .sources
            .iter()
            .map(|(address, (slot, _))| (*address, *slot))
            .collect();
        self.slots.store(Arc::new(slots));
    }

    /// The keys of `tokens` (a prompt sent as `lora`, `None` for the base model) for each block
    /// size `endpoints` use; empty when none of them has stored a block yet.
    pub fn prompt_keys(
        &self,
        tokens: &[u32],
        lora: Option<&str>,
        endpoints: &[Arc<Endpoint>],
    ) -> PromptKeys {
        let mut keys = PromptKeys {
            tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            by_block_size: Vec::new(),
        };
        let Some(subscriber) = self.subscriber() else {
            return keys;
        };
        let slots = self.slots.load();
        let mut sizes: Vec<u32> = {
            let index = subscriber.index().read();
            endpoints
                .iter()
                .filter_map(|e| slots.get(&e.id.address()))
                .filter_map(|&slot| index.block_size(slot))
                .collect()
        };
        sizes.sort_unstable();
        sizes.dedup();
        keys.by_block_size = sizes
            .into_iter()
            .map(|size| (size, prompt_keys(tokens, size as usize, lora)))
            .collect();
        keys
    }

    /// What each of `endpoints` holds of the prompt `keys` describe, in pool order: `None` for
    /// an endpoint whose events are not arriving (not watched, or no batch since it was).
    pub fn cached(
        &self,
        keys: &PromptKeys,
        endpoints: &[Arc<Endpoint>],
    ) -> Vec<Option<CachedPrefix>> {
        let Some(subscriber) = self.subscriber() else {
            return vec![None; endpoints.len()];
        };
        let slots = self.slots.load();
        let index = subscriber.index().read();
        let matches: Vec<(u32, Vec<kvevents::PrefixMatch>)> = keys
            .by_block_size
            .iter()
            .map(|(size, keys)| (*size, index.prefix_matches(keys)))
            .collect();
        endpoints
            .iter()
            .map(|endpoint| {
                let slot = *slots.get(&endpoint.id.address())?;
                if !subscriber.receiving(slot) {
                    return None;
                }
                let held = index.block_size(slot).and_then(|size| {
                    let (_, found) = matches.iter().find(|(s, _)| *s == size)?;
                    let m = found.iter().find(|m| m.endpoint == slot)?;
                    let tokens = |blocks: usize| {
                        u32::try_from(blocks as u64 * u64::from(size))
                            .unwrap_or(u32::MAX)
                            .min(keys.tokens)
                    };
                    Some(CachedPrefix {
                        gpu_tokens: tokens(m.gpu),
                        total_tokens: tokens(m.total),
                        prompt_tokens: keys.tokens,
                    })
                });
                Some(held.unwrap_or(CachedPrefix {
                    prompt_tokens: keys.tokens,
                    ..CachedPrefix::default()
                }))
            })
            .collect()
    }

    /// Whether `address` is watched and its events are arriving.
    pub fn receiving(&self, address: SocketAddr) -> bool {
        let slots = self.slots.load();
        match (self.subscriber(), slots.get(&address)) {
            (Some(subscriber), Some(&slot)) => subscriber.receiving(slot),
            _ => false,
        }
    }

    /// Copy the subscriber's counters and sizes into `metrics`.
    pub fn observe(&self, metrics: &GatewayMetrics) {
        let Some(subscriber) = self.subscriber() else {
            return;
        };
        let slots = self.slots.load();
        let receiving = slots
            .values()
            .filter(|&&slot| subscriber.receiving(slot))
            .count();
        metrics
            .kv_events_endpoints
            .with_label_values(&["watched"])
            .set(slots.len() as i64);
        metrics
            .kv_events_endpoints
            .with_label_values(&["receiving"])
            .set(receiving as i64);
        metrics
            .kv_events_index_blocks
            .set(subscriber.index().read().len() as i64);
        let stats = subscriber.stats();
        for (kind, value) in [
            ("batch", &stats.batches),
            ("malformed", &stats.malformed),
            ("gap", &stats.gaps),
            ("replay", &stats.replays),
            ("reset", &stats.resets),
            ("orphan_block", &stats.orphans),
        ] {
            let counter = metrics.kv_events.with_label_values(&[kind]);
            let now = value.load(Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }
}
