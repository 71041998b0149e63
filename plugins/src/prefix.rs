//! Prompt prefixes: chained block hashes, and an index of which endpoint has seen which blocks.
//!
//! The gateway cannot see a model server's KV cache, but it can remember where it sent each
//! prompt. A prompt is cut into blocks of [`PrefixHasher::block_bytes`] bytes of text (64 bytes,
//! about one 16-token KV block at four bytes a token); block *i*'s hash covers block *i* and, through
//! the chain, every block before it, so equal hashes mean equal prefixes. The chain is seeded with
//! the target model, so an adapter and its base model never share entries (their KV caches are
//! separate too). Only full blocks are hashed, as vLLM caches only full blocks.
//!
//! [`PrefixIndex`] maps block hashes to endpoints, with a least-recently-used bound per endpoint
//! sized like the endpoint's KV cache: memory never grows past the bound whatever the traffic, and an
//! endpoint that leaves the pool is forgotten at once. A prompt's blocks are recorded last block
//! first, so each is more recently used than every block after it and eviction takes tails before
//! heads: an endpoint's share of any chain is a prefix of it, which is what vLLM keeps too and what
//! lets a lookup bisect instead of walking every block.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;

use parking_lot::Mutex;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::endpoint::{EndpointId, EndpointView};

/// Cuts prompt text into chained block hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixHasher {
    /// Bytes of text per block. Default 64: one 16-token vLLM block at about four bytes a token.
    pub block_bytes: usize,
    /// Blocks hashed at most. Default 1024 (64 KiB of text, about 16k tokens): long shared
    /// documents still match, and a 32k-token prompt costs at most 64 KiB of hashing.
    pub max_blocks: usize,
}

impl Default for PrefixHasher {
    fn default() -> Self {
        Self {
            block_bytes: 64,
            max_blocks: 1024,
        }
    }
}

impl PrefixHasher {
    /// Chained hashes of the full blocks of `text`, seeded by `model`.
    pub fn hashes(&self, model: &str, text: &str) -> Vec<u64> {
        let mut previous = xxh3_64(model.as_bytes());
        text.as_bytes()
            .chunks_exact(self.block_bytes)
            .take(self.max_blocks)
            .map(|block| {
                previous = xxh3_64_with_seed(block, previous);
                previous
            })
            .collect()
    }

    /// How many blocks [`PrefixHasher::hashes`] cuts `text` into, without hashing it.
    pub fn block_count(&self, text: &str) -> usize {
        (text.len() / self.block_bytes).min(self.max_blocks)
    }

    /// A key for placing a prompt that no endpoint has seen: the hash of its first block, or of
    /// all of it when it is shorter than a block. Every gateway replica computes the same key.
    pub fn placement_key(&self, model: &str, text: &str) -> u64 {
        let end = text.len().min(self.block_bytes);
        xxh3_64_with_seed(&text.as_bytes()[..end], xxh3_64(model.as_bytes()))
    }
}

/// The endpoint among `candidates` that rendezvous (highest-random-weight) hashing assigns to
/// `key`: deterministic, the same on every replica, and uniform over keys.
pub fn rendezvous<'a>(
    key: u64,
    candidates: impl Iterator<Item = (usize, &'a EndpointId)>,
) -> Option<usize> {
    candidates
        .max_by_key(|(_, id)| {
            let address = id.address();
            let mut bytes = [0u8; 18];
            match address.ip() {
                std::net::IpAddr::V4(ip) => bytes[..4].copy_from_slice(&ip.octets()),
                std::net::IpAddr::V6(ip) => bytes[..16].copy_from_slice(&ip.octets()),
            }
            bytes[16..].copy_from_slice(&address.port().to_be_bytes());
            xxh3_64_with_seed(&bytes, key)
        })
        .map(|(index, _)| index)
}

/// Block hashes are already uniformly distributed: use them as their own hash.
#[derive(Debug, Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type BlockMap<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// Per-endpoint bookkeeping: a queue of (block, tick) in use order, possibly with stale entries
/// (a block used again later has a newer entry; the older one is skipped when popped).
#[derive(Debug)]
struct EndpointBlocks {
    address: SocketAddr,
    queue: VecDeque<(u64, u64)>,
    live: usize,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    tick: u64,
    /// Endpoint address -> slot (foldhash: looked up per endpoint on every pick; addresses come
    /// from the pool, not from clients).
    slots: foldhash::HashMap<SocketAddr, usize>,
    endpoints: Vec<Option<EndpointBlocks>>,
    /// Block hash -> (endpoint slot, tick of its latest use there).
    blocks: BlockMap<Vec<(u32, u64)>>,
}

/// Sizes of a [`PrefixIndex`], for debug output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    /// Endpoints tracked.
    pub endpoints: usize,
    /// Distinct block hashes stored.
    pub blocks: usize,
    /// (block, endpoint) entries that count against capacities.
    pub live_entries: usize,
    /// Queue entries, live and stale.
    pub queued_entries: usize,
    /// Sum of the endpoints' capacities.
    pub capacity: usize,
}

/// Which endpoints have seen which prompt blocks, bounded per endpoint.
#[derive(Debug)]
pub struct PrefixIndex {
    inner: Mutex<Inner>,
    default_capacity: usize,
}

impl PrefixIndex {
    /// An index that keeps at most `default_capacity` blocks per endpoint unless told a capacity
    /// for that endpoint when recording.
    pub fn new(default_capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            default_capacity: default_capacity.max(1),
        }
    }

    /// For each endpoint of `endpoints`, how many leading blocks of `hashes` it has seen.
    ///
    /// What an endpoint holds of one chain of hashes is always a prefix of it ([`PrefixIndex`]),
    /// so the endpoints holding block *d* include those holding block *d + 1*: the lengths are
    /// found by bisecting for the depths where that set shrinks, about log₂(blocks) lookups per
    /// distinct length instead of one per block and holder.
    pub fn match_lengths(&self, hashes: &[u64], endpoints: &[EndpointView<'_>]) -> Vec<usize> {
        let mut lengths = vec![0usize; endpoints.len()];
        if hashes.is_empty() {
            return lengths;
        }
        let inner = self.inner.lock();
        // Slot -> position in `endpoints`.
        let mut position_of = vec![usize::MAX; inner.endpoints.len()];
        let mut tracked = false;
        for (i, endpoint) in endpoints.iter().enumerate() {
            if let Some(&slot) = inner.slots.get(&endpoint.id.address()) {
                position_of[slot] = i;
                tracked = true;
            }
        }
        if !tracked {
            return lengths;
        }
        let holders = |depth: usize| -> Vec<usize> {
            let mut positions: Vec<usize> = inner
                .blocks
                .get(&hashes[depth])
                .into_iter()
                .flatten()
                .map(|&(slot, _)| position_of[slot as usize])
                .filter(|&i| i != usize::MAX)
                .collect();
            positions.sort_unstable();
            positions
        };
        let first = holders(0);
        if first.is_empty() {
            return lengths;
        }
        let last_depth = hashes.len() - 1;
        let last = holders(last_depth);
        for &i in &last {
            lengths[i] = hashes.len();
        }
        // Pending ranges (lo, holders at lo, hi, holders at hi), hi > lo, whose holders at hi are
        // a subset of those at lo.
        let mut ranges = vec![(0, first, last_depth, last)];
        while let Some((lo, at_lo, hi, at_hi)) = ranges.pop() {
            if at_lo.len() == at_hi.len() {
                continue; // The same endpoints all the way: no length ends inside.
            }
            if hi == lo + 1 {
                for &i in &at_lo {
                    if at_hi.binary_search(&i).is_err() {
                        lengths[i] = lo + 1;
                    }
                }
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            let at_mid = holders(mid);
            ranges.push((lo, at_lo, mid, at_mid.clone()));
            ranges.push((mid, at_mid, hi, at_hi));
        }
        lengths
    }

    /// Record that `endpoint` received a prompt with `hashes`. `capacity` overrides the default
    /// bound for this endpoint (from its KV-cache size).
    pub fn record(&self, endpoint: &EndpointId, hashes: &[u64], capacity: Option<usize>) {
        if hashes.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let address = endpoint.address();
        let slot = match inner.slots.get(&address) {
            Some(&slot) => slot,
            None => {
                let slot = inner
                    .endpoints
                    .iter()
                    .position(Option::is_none)
                    .unwrap_or(inner.endpoints.len());
                if slot == inner.endpoints.len() {
                    inner.endpoints.push(None);
                }
                inner.endpoints[slot] = Some(EndpointBlocks {
                    address,
                    queue: VecDeque::new(),
                    live: 0,
                    capacity: self.default_capacity,
                });
                inner.slots.insert(address, slot);
                slot
            }
        };
        let blocks = inner.endpoints[slot].as_mut().expect("slot is in use");
        if let Some(capacity) = capacity {
            blocks.capacity = capacity.max(1);
        }
        // Newest tick to the first block: eviction takes a prompt's tail first, so what an
        // endpoint holds of a chain is always a prefix of it (vLLM also frees a request's blocks
        // tail first).
        for &hash in hashes.iter().rev() {
            inner.tick += 1;
            let tick = inner.tick;
            let holders = inner.blocks.entry(hash).or_default();
            match holders.iter_mut().find(|(s, _)| *s as usize == slot) {
                Some(entry) => entry.1 = tick,
                None => {
                    holders.push((slot as u32, tick));
                    blocks.live += 1;
                }
            }
            blocks.queue.push_back((hash, tick));
        }
        // Evict least recently used blocks beyond capacity.
        while blocks.live > blocks.capacity {
            let Some((hash, tick)) = blocks.queue.pop_front() else {
                break;
            };
            remove_if_current(&mut inner.blocks, hash, slot, Some(tick), &mut blocks.live);
        }
        // Stale queue entries are skipped on eviction; compact when they dominate.
        if blocks.queue.len() > 2 * blocks.capacity {
            let map = &inner.blocks;
            blocks.queue.retain(|(hash, tick)| {
                map.get(hash).is_some_and(|holders| {
                    holders
                        .iter()
                        .any(|&(s, t)| s as usize == slot && t == *tick)
                })
            });
        }
    }

    /// Forget every endpoint not in `endpoints`.
    pub fn retain(&self, endpoints: &[EndpointId]) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let keep: std::collections::HashSet<SocketAddr> =
            endpoints.iter().map(EndpointId::address).collect();
        let gone: Vec<(SocketAddr, usize)> = inner
            .slots
            .iter()
            .filter(|(address, _)| !keep.contains(address))
            .map(|(&address, &slot)| (address, slot))
            .collect();
        for (address, slot) in gone {
            inner.slots.remove(&address);
            if let Some(mut blocks) = inner.endpoints[slot].take() {
                for (hash, _) in blocks.queue.drain(..) {
                    remove_if_current(&mut inner.blocks, hash, slot, None, &mut blocks.live);
                }
            }
        }
    }

    /// Current sizes.
    pub fn stats(&self) -> IndexStats {
        let inner = self.inner.lock();
        let endpoints = inner.endpoints.iter().flatten();
        IndexStats {
            endpoints: inner.slots.len(),
            blocks: inner.blocks.len(),
            live_entries: endpoints.clone().map(|e| e.live).sum(),
            queued_entries: endpoints.clone().map(|e| e.queue.len()).sum(),
            capacity: endpoints.map(|e| e.capacity).sum(),
        }
    }

    /// Live blocks and capacity of one endpoint.
    pub fn endpoint_usage(&self, endpoint: &EndpointId) -> Option<(usize, usize)> {
        let inner = self.inner.lock();
        let slot = *inner.slots.get(&endpoint.address())?;
        let blocks = inner.endpoints[slot].as_ref()?;
        debug_assert_eq!(blocks.address, endpoint.address());
        Some((blocks.live, blocks.capacity))
    }
}

/// Remove `slot` from `hash`'s holders if its entry has `tick` (or any tick when `None`).
fn remove_if_current(
    map: &mut BlockMap<Vec<(u32, u64)>>,
    hash: u64,
    slot: usize,
    tick: Option<u64>,
    live: &mut usize,
) {
    let Some(holders) = map.get_mut(&hash) else {
        return;
    };
    let Some(position) = holders
        .iter()
        .position(|&(s, t)| s as usize == slot && tick.is_none_or(|tick| tick == t))
    else {
        return;
    };
    holders.swap_remove(position);
    *live -= 1;
    if holders.is_empty() {
        map.remove(&hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pool_of;
    use proptest::prelude::*;

    #[test]
    fn the_block_count_is_the_number_of_hashes() {
        let hasher = PrefixHasher {
            block_bytes: 8,
            max_blocks: 5,
        };
        for len in [0, 7, 8, 17, 40, 41, 100] {
            let text = "x".repeat(len);
            assert_eq!(
                hasher.block_count(&text),
                hasher.hashes("m", &text).len(),
                "{len}"
            );
        }
    }

    #[test]
    fn chained_hashes_share_a_prefix_and_depend_on_the_model() {
        let hasher = PrefixHasher {
            block_bytes: 4,
            max_blocks: 100,
        };
        let a = hasher.hashes("m", "aaaabbbbccccdd");
        let b = hasher.hashes("m", "aaaabbbbXXXX");
        assert_eq!(a.len(), 3, "only full blocks");
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_ne!(hasher.hashes("adapter", "aaaabbbb"), a[..2].to_vec());
        let same_block_later = hasher.hashes("m", "bbbbaaaa");
        assert_ne!(
            same_block_later[1], a[0],
            "a block's hash depends on what precedes it"
        );
        assert_eq!(
            PrefixHasher {
                block_bytes: 4,
                max_blocks: 2
            }
            .hashes("m", "aaaabbbbcccc")
            .len(),
            2
        );
    }

    #[test]
    fn match_lengths_count_leading_blocks_per_endpoint() {
        let (ids, views) = pool_of(3);
        let index = PrefixIndex::new(100);
        let hasher = PrefixHasher {
            block_bytes: 4,
            max_blocks: 100,
        };
        index.record(&ids[0], &hasher.hashes("m", "aaaabbbbcccc"), None);
        index.record(&ids[1], &hasher.hashes("m", "aaaabbbbdddd"), None);
        let query = hasher.hashes("m", "aaaabbbbcccceeee");
        assert_eq!(index.match_lengths(&query, &views), vec![3, 2, 0]);
        assert_eq!(
            index.match_lengths(&hasher.hashes("m", "zzzz"), &views),
            vec![0, 0, 0]
        );
        index.retain(&ids[1..]);
        assert_eq!(index.match_lengths(&query, &views), vec![0, 2, 0]);
        assert_eq!(index.stats().endpoints, 1);
        assert_eq!(index.stats().live_entries, 3);
    }

    #[test]
    fn least_recently_used_blocks_go_first_tails_before_heads() {
        let (ids, views) = pool_of(1);
        let index = PrefixIndex::new(4);
        index.record(&ids[0], &[1, 2, 3], None);
        index.record(&ids[0], &[7], None);
        index.record(&ids[0], &[1], None); // 1 is now the most recent
        index.record(&ids[0], &[4], None); // evicts 3: the tail of the least recent prompt
        assert_eq!(index.match_lengths(&[1, 2, 3], &views), vec![2]);
        index.record(&ids[0], &[5], None); // then 2, its tail now
        assert_eq!(index.match_lengths(&[1, 2, 3], &views), vec![1]);
        index.record(&ids[0], &[6], None); // then 7, older than 1
        assert_eq!(index.match_lengths(&[7], &views), vec![0]);
        assert_eq!(index.match_lengths(&[1], &views), vec![1]);
        assert_eq!(index.endpoint_usage(&ids[0]), Some((4, 4)));
    }

    #[test]
    fn a_prompt_longer_than_the_capacity_keeps_its_head() {
        let (ids, views) = pool_of(1);
        let index = PrefixIndex::new(3);
        index.record(&ids[0], &[1, 2, 3, 4, 5], None);
        assert_eq!(index.match_lengths(&[1, 2, 3, 4, 5], &views), vec![3]);
    }

    #[test]
    fn rendezvous_is_deterministic_and_spreads_keys() {
        let (ids, _) = pool_of(4);
        let mut counts = [0usize; 4];
        for key in 0..4000u64 {
            let pick = rendezvous(key, ids.iter().enumerate()).unwrap();
            assert_eq!(rendezvous(key, ids.iter().enumerate()), Some(pick));
            counts[pick] += 1;
        }
        assert!(counts.iter().all(|&c| c > 850), "{counts:?}");
        // Removing an endpoint only moves the keys that were on it.
        for key in 0..1000u64 {
            let before = rendezvous(key, ids.iter().enumerate()).unwrap();
            let after = rendezvous(key, ids.iter().enumerate().filter(|(i, _)| *i != 3)).unwrap();
            if before != 3 {
                assert_eq!(before, after);
            }
        }
    }

    /// Whether `index` has `hash` for endpoint `id`.
    fn holds(index: &PrefixIndex, id: &EndpointId, hash: u64) -> bool {
        let inner = index.inner.lock();
        let slot = inner.slots.get(&id.address()).copied();
        slot.is_some_and(|slot| {
            inner
                .blocks
                .get(&hash)
                .is_some_and(|holders| holders.iter().any(|&(s, _)| s as usize == slot))
        })
    }

    /// The walk [`PrefixIndex::match_lengths`] bisects: block by block while any endpoint
    /// advances.
    fn walked_lengths(index: &PrefixIndex, hashes: &[u64], ids: &[EndpointId]) -> Vec<usize> {
        ids.iter()
            .map(|id| hashes.iter().take_while(|&&h| holds(index, id, h)).count())
            .collect()
    }

    proptest! {
        /// Prompts drawn from a few shared openings (so chains overlap), recorded on random
        /// endpoints with small capacities (so eviction runs): bisection finds what a walk finds,
        /// and every endpoint holds a prefix of every chain.
        #[test]
        fn bisected_lengths_equal_walked_lengths(
            prompts in proptest::collection::vec((0usize..5, 0u8..3, 0usize..6, 0usize..40), 1..60),
            query in (0u8..3, 0usize..6, 0usize..40),
        ) {
            let (ids, views) = pool_of(5);
            let index = PrefixIndex::new(30);
            let hasher = PrefixHasher { block_bytes: 1, max_blocks: 64 };
            let text = |opening: u8, shared: usize, tail: usize| {
                let mut text = vec![b'a' + opening; shared];
                text.extend((0..tail).map(|i| b'0' + (i % 10) as u8 + (shared % 3) as u8));
                String::from_utf8(text).unwrap()
            };
            for (endpoint, opening, shared, tail) in prompts {
                let capacity = if endpoint == 4 { Some(8) } else { None };
                index.record(&ids[endpoint], &hasher.hashes("m", &text(opening, shared * 4, tail)), capacity);
            }
            let hashes = hasher.hashes("m", &text(query.0, query.1 * 4, query.2));
            let lengths = index.match_lengths(&hashes, &views);
            prop_assert_eq!(&lengths, &walked_lengths(&index, &hashes, &ids));
            for (id, &length) in ids.iter().zip(&lengths) {
                for (depth, &hash) in hashes.iter().enumerate().skip(length) {
                    prop_assert!(!holds(&index, id, hash), "block {} held past a gap at {}", depth, length);
                }
            }
        }

        #[test]
        fn memory_stays_within_bounds(
            ops in proptest::collection::vec((0usize..4, proptest::collection::vec(0u64..64, 0..40), proptest::option::of(1usize..20)), 1..200),
            retain_mask in 0u8..16,
        ) {
            let (ids, _) = pool_of(4);
            let index = PrefixIndex::new(10);
            for (endpoint, hashes, capacity) in &ops {
                index.record(&ids[*endpoint], hashes, *capacity);
                let stats = index.stats();
                prop_assert!(stats.live_entries <= stats.capacity);
                prop_assert!(stats.queued_entries <= 2 * stats.capacity + 40);
                prop_assert!(stats.blocks <= stats.live_entries);
                for id in &ids {
                    if let Some((live, capacity)) = index.endpoint_usage(id) {
                        prop_assert!(live <= capacity);
                    }
                }
            }
            let kept: Vec<EndpointId> = ids.iter().enumerate().filter(|(i, _)| retain_mask & (1 << i) != 0).map(|(_, id)| id.clone()).collect();
            index.retain(&kept);
            let stats = index.stats();
            prop_assert!(stats.endpoints <= kept.len());
            prop_assert!(stats.live_entries <= stats.capacity);
            if kept.is_empty() {
                prop_assert_eq!(stats.blocks, 0);
            }
        }
    }
}
