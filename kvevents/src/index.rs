//! Which endpoint holds which block, built from the endpoints' KV events, bounded.
//!
//! Block hashes in the events are each engine's own (vLLM's sha256 over CBOR with a per-deployment
//! seed, or anything a simulator chooses), so a request cannot be matched against them directly.
//! The index keys blocks the way llm-d's KV-cache manager does, by recomputing from the tokens the
//! events carry: a block's key ([`block_key`]) chains its parent's key, its token ids and its
//! adapter's name. The gateway computes the same keys from a request's token ids and asks how
//! many leading blocks each endpoint holds ([`BlockIndex::prefix_matches`]). Each endpoint also
//! maps its engine hashes to keys, so a `BlockRemoved` (which carries only engine hashes) finds
//! its block, and counts stores per hash, since an engine may store the same block twice and
//! remove it twice.
//!
//! The index holds at most `max_blocks` (endpoint, block) entries: past that, the oldest stores
//! are forgotten first, as if removed. A store whose parent the index does not know (its events
//! were missed) cannot be keyed by its prefix and is skipped, and counted.
//!
//! Blocks are kept per tier: the GPU (`medium` `"GPU"`, or none given) and everything an
//! offloading connector names (`"CPU"`, or its own tiers), because a block in GPU memory is
//! reused for free while an offloaded one must first be copied back. A match reports both.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use foldhash::quality::FixedState;

use crate::{BlockHash, Event};

/// A block's key: the chain of token ids (and adapter) from the start of the prompt to it.
pub type BlockKey = u64;

/// An endpoint as the index knows it: a small number the caller assigns (a slot).
pub type EndpointSlot = u32;

/// One endpoint's blocks in one tier: `slot << 1 | 1` for offloaded blocks, `slot << 1` for the
/// GPU's.
type Holder = u64;

fn holder(endpoint: EndpointSlot, offloaded: bool) -> Holder {
    u64::from(endpoint) << 1 | u64::from(offloaded)
}

fn slot_of(holder: Holder) -> EndpointSlot {
    (holder >> 1) as EndpointSlot
}

/// How much of a prompt one endpoint holds ([`BlockIndex::prefix_matches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefixMatch {
    /// The endpoint.
    pub endpoint: EndpointSlot,
    /// Leading blocks held in GPU memory.
    pub gpu: usize,
    /// Leading blocks held in GPU memory or offloaded (at least `gpu`).
    pub total: usize,
}

/// The first block's parent in the chain.
const ROOT: BlockKey = 0x6b76_2d72_6f6f_7431;

/// The key of a block holding `tokens` after the block keyed `parent` (`None` at the start of a
/// prompt), for the adapter `lora` (`None`: the base model). foldhash's quality hash over the
/// tokens' bytes, seeded with the parent's key: keys never leave the process that computes them
/// (each gateway replica keys the events it receives and the requests it routes alike), so they
/// need to be fast and well mixed, not portable.
pub fn block_key(parent: Option<BlockKey>, tokens: &[u32], lora: Option<&str>) -> BlockKey {
    let mut seed = parent.unwrap_or(ROOT);
    if let Some(name) = lora {
        seed = FixedState::with_seed(seed ^ LORA).hash_one(name);
    }
    FixedState::with_seed(seed).hash_one(tokens)
}

/// Whether blocks on `medium` are offloaded (not in GPU memory); no medium means the GPU.
fn is_offloaded(medium: Option<&crate::Medium>) -> bool {
    !matches!(medium, None | Some(crate::Medium::Gpu))
}

/// Seed salt for an adapter's name.
const LORA: u64 = 0x6c6f_7261_6e61_6d65;

/// The keys of a prompt's full blocks of `block_size` tokens, in order.
pub fn prompt_keys(tokens: &[u32], block_size: usize, lora: Option<&str>) -> Vec<BlockKey> {
    let mut keys = Vec::with_capacity(tokens.len() / block_size.max(1));
    let mut parent = None;
    for block in tokens.chunks_exact(block_size.max(1)) {
        let key = block_key(parent, block, lora);
        keys.push(key);
        parent = Some(key);
    }
    keys
}

/// What applying events did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Blocks stored.
    pub stored: u64,
    /// Blocks removed.
    pub removed: u64,
    /// Stored blocks skipped because their parent was unknown.
    pub orphans: u64,
    /// Removals of blocks the index did not hold.
    pub unknown_removals: u64,
}

#[derive(Debug, Default)]
struct EndpointBlocks {
    /// Engine hash → (key, stores not yet removed).
    engine: foldhash::HashMap<BlockHash, (BlockKey, u32)>,
}

/// The index (see the module documentation).
#[derive(Debug)]
pub struct BlockIndex {
    max_blocks: usize,
    /// Key → the endpoint tiers holding it, with how many of their engine hashes map to it.
    holders: foldhash::HashMap<BlockKey, Vec<(Holder, u32)>>,
    endpoints: foldhash::HashMap<Holder, EndpointBlocks>,
    /// Stores in order, for forgetting the oldest; entries already removed are skipped lazily.
    order: VecDeque<(Holder, BlockHash)>,
    /// (endpoint, engine hash) entries held.
    len: usize,
    /// Each endpoint's block size, from its latest store.
    block_sizes: foldhash::HashMap<EndpointSlot, u32>,
}

impl BlockIndex {
    /// An empty index of at most `max_blocks` (endpoint, block) entries.
    pub fn new(max_blocks: usize) -> Self {
        Self {
            max_blocks: max_blocks.max(1),
            holders: foldhash::HashMap::default(),
            endpoints: foldhash::HashMap::default(),
            order: VecDeque::new(),
            len: 0,
            block_sizes: foldhash::HashMap::default(),
        }
    }

    /// (endpoint, block) entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct block keys held anywhere.
    pub fn keys(&self) -> usize {
        self.holders.len()
    }

    /// Apply one event from `endpoint`.
    pub fn apply(&mut self, endpoint: EndpointSlot, event: &Event) -> Applied {
        let mut applied = Applied::default();
        match event {
            Event::BlockStored(stored) => {
                if stored.block_size > 0 {
                    self.block_sizes.insert(endpoint, stored.block_size);
                }
                let offloaded = is_offloaded(stored.medium.as_ref());
                let tier = holder(endpoint, offloaded);
                let size = stored.block_size as usize;
                let blocks = &stored.block_hashes;
                if size == 0 || stored.token_ids.len() < blocks.len() * size {
                    applied.orphans += blocks.len() as u64;
                    return applied;
                }
                let mut parent = match stored.parent_block_hash {
                    None => None,
                    // The parent may sit in the other tier; keys are the same in both.
                    Some(hash) => match self
                        .key_of(tier, hash)
                        .or_else(|| self.key_of(holder(endpoint, !offloaded), hash))
                    {
                        Some(key) => Some(key),
                        None => {
                            applied.orphans += blocks.len() as u64;
                            return applied;
                        }
                    },
                };
                let lora = stored.lora_name.as_deref();
                for (i, &hash) in blocks.iter().enumerate() {
                    let key = block_key(parent, &stored.token_ids[i * size..(i + 1) * size], lora);
                    self.store(tier, hash, key);
                    applied.stored += 1;
                    parent = Some(key);
                }
            }
            Event::BlockRemoved(removed) => {
                let tier = holder(endpoint, is_offloaded(removed.medium.as_ref()));
                for &hash in &removed.block_hashes {
                    if self.remove(tier, hash) {
                        applied.removed += 1;
                    } else {
                        applied.unknown_removals += 1;
                    }
                }
            }
            Event::AllBlocksCleared => {
                applied.removed += self.clear_endpoint(endpoint) as u64;
            }
        }
        applied
    }

    /// Tokens per block of `endpoint`, from its latest store (`None` before its first).
    pub fn block_size(&self, endpoint: EndpointSlot) -> Option<u32> {
        self.block_sizes.get(&endpoint).copied()
    }

    /// Forget `endpoint` altogether: its blocks and its block size (it left the pool).
    pub fn forget_endpoint(&mut self, endpoint: EndpointSlot) -> usize {
        self.block_sizes.remove(&endpoint);
        self.clear_endpoint(endpoint)
    }

    /// Forget everything `endpoint` holds (it restarted, left the pool, or its events were lost
    /// beyond replay); returns how many entries went.
    pub fn clear_endpoint(&mut self, endpoint: EndpointSlot) -> usize {
        let mut cleared = 0;
        for tier in [holder(endpoint, false), holder(endpoint, true)] {
            let Some(blocks) = self.endpoints.remove(&tier) else {
                continue;
            };
            for (key, _) in blocks.engine.values() {
                self.drop_holder(*key, tier);
            }
            self.len -= blocks.engine.len();
            cleared += blocks.engine.len();
        }
        cleared
    }

    /// For each endpoint holding `keys[0]` (in either tier), how many of `keys` it holds in a
    /// row from the start, in GPU memory and in GPU memory or offloaded; endpoints holding none
    /// are not listed. Sorted by endpoint.
    ///
    /// An endpoint's blocks of one prompt are prefix-closed: vLLM frees a request's blocks tail
    /// first into its LRU queue, and a block shared by more requests is freed later, so a chain
    /// loses its tail before its head. The run is therefore found by binary search, about
    /// log₂(n) lookups per endpoint and tier instead of n; a chain with a hole (a block evicted
    /// under a cached descendant, which that order does not produce) would be credited past the
    /// hole.
    pub fn prefix_matches(&self, keys: &[BlockKey]) -> Vec<PrefixMatch> {
        let Some(first) = keys.first().and_then(|k| self.holders.get(k)) else {
            return Vec::new();
        };
        let held_by = |depth: usize, tiers: &[Holder]| {
            self.holders
                .get(&keys[depth - 1])
                .is_some_and(|holders| holders.iter().any(|(h, _)| tiers.contains(h)))
        };
        // The longest run from 1 (held) of depths `held` accepts.
        let run = |held: &dyn Fn(usize) -> bool| {
            let (mut low, mut high) = (1, keys.len());
            while low < high {
                let middle = (low + high).div_ceil(2);
                if held(middle) {
                    low = middle;
                } else {
                    high = middle - 1;
                }
            }
            low
        };
        let mut endpoints: Vec<EndpointSlot> = first.iter().map(|&(h, _)| slot_of(h)).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        endpoints
            .into_iter()
            .map(|endpoint| {
                let gpu_tier = holder(endpoint, false);
                let tiers = [gpu_tier, holder(endpoint, true)];
                let gpu = if first.iter().any(|&(h, _)| h == gpu_tier) {
                    run(&|depth| held_by(depth, &tiers[..1]))
                } else {
                    0
                };
                let total = run(&|depth| held_by(depth, &tiers)).max(gpu);
                PrefixMatch {
                    endpoint,
                    gpu,
                    total,
                }
            })
            .collect()
    }

    fn key_of(&self, endpoint: Holder, hash: BlockHash) -> Option<BlockKey> {
        self.endpoints
            .get(&endpoint)?
            .engine
            .get(&hash)
            .map(|(key, _)| *key)
    }

    fn store(&mut self, endpoint: Holder, hash: BlockHash, key: BlockKey) {
        let blocks = self.endpoints.entry(endpoint).or_default();
        match blocks.engine.get_mut(&hash) {
            Some((held, count)) if *held == key => *count += 1,
            Some(entry) => {
                // The engine reused a hash for other tokens: the newest store wins.
                let old = std::mem::replace(entry, (key, 1)).0;
                self.drop_holder(old, endpoint);
                self.add_holder(key, endpoint);
            }
            None => {
                blocks.engine.insert(hash, (key, 1));
                self.add_holder(key, endpoint);
                self.len += 1;
                self.order.push_back((endpoint, hash));
                while self.len > self.max_blocks {
                    self.forget_oldest();
                }
                if self.order.len() > 2 * self.max_blocks {
                    self.compact_order();
                }
            }
        }
    }

    /// Remove one store of `hash` on `endpoint`; whether the index held it.
    fn remove(&mut self, endpoint: Holder, hash: BlockHash) -> bool {
        let Some(blocks) = self.endpoints.get_mut(&endpoint) else {
            return false;
        };
        let Some((key, count)) = blocks.engine.get_mut(&hash) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            let key = *key;
            blocks.engine.remove(&hash);
            self.len -= 1;
            self.drop_holder(key, endpoint);
        }
        true
    }

    fn forget_oldest(&mut self) {
        while let Some((endpoint, hash)) = self.order.pop_front() {
            let Some(blocks) = self.endpoints.get_mut(&endpoint) else {
                continue;
            };
            if let Some((key, _)) = blocks.engine.remove(&hash) {
                self.len -= 1;
                self.drop_holder(key, endpoint);
                return;
            }
        }
    }

    /// Drop order entries whose block is gone, so the queue stays proportional to the index.
    fn compact_order(&mut self) {
        let endpoints = &self.endpoints;
        self.order.retain(|(endpoint, hash)| {
            endpoints
                .get(endpoint)
                .is_some_and(|blocks| blocks.engine.contains_key(hash))
        });
    }

    fn add_holder(&mut self, key: BlockKey, endpoint: Holder) {
        let holders = self.holders.entry(key).or_default();
        match holders.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, count)) => *count += 1,
            None => holders.push((endpoint, 1)),
        }
    }

    fn drop_holder(&mut self, key: BlockKey, endpoint: Holder) {
        let Some(holders) = self.holders.get_mut(&key) else {
            return;
        };
        if let Some(at) = holders.iter().position(|(e, _)| *e == endpoint) {
            holders[at].1 -= 1;
            if holders[at].1 == 0 {
                holders.swap_remove(at);
            }
        }
        if holders.is_empty() {
            self.holders.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockRemoved, BlockStored, Medium};

    const SIZE: usize = 4;

    fn tokens(blocks: usize, seed: u32) -> Vec<u32> {
        (0..(blocks * SIZE) as u32).map(|t| t * 31 + seed).collect()
    }

    /// A store of `tokens`' blocks `from..to`, with engine hashes `engine(i)`.
    fn stored(tokens: &[u32], from: usize, to: usize, engine: impl Fn(usize) -> u64) -> Event {
        Event::BlockStored(BlockStored {
            block_hashes: (from..to).map(&engine).collect(),
            parent_block_hash: from.checked_sub(1).map(&engine),
            token_ids: tokens[from * SIZE..to * SIZE].to_vec(),
            block_size: SIZE as u32,
            medium: Some(Medium::Gpu),
            ..BlockStored::default()
        })
    }

    fn removed(hashes: Vec<u64>) -> Event {
        Event::BlockRemoved(BlockRemoved {
            block_hashes: hashes,
            ..BlockRemoved::default()
        })
    }

    /// The GPU runs (every store in these tests is on the GPU, so `total` equals `gpu`).
    fn sorted(matches: Vec<PrefixMatch>) -> Vec<(EndpointSlot, usize)> {
        assert!(matches.iter().all(|m| m.total == m.gpu));
        matches.iter().map(|m| (m.endpoint, m.gpu)).collect()
    }

    #[test]
    fn endpoints_match_the_prefix_they_hold_whatever_their_engine_hashes() {
        let prompt = tokens(4, 1);
        let keys = prompt_keys(&prompt, SIZE, None);
        let mut index = BlockIndex::new(100);
        // Endpoint 0 stored the four blocks in two events; endpoint 1 the first two, with
        // engine hashes of its own.
        index.apply(0, &stored(&prompt, 0, 2, |i| 100 + i as u64));
        index.apply(0, &stored(&prompt, 2, 4, |i| 100 + i as u64));
        index.apply(1, &stored(&prompt, 0, 2, |i| 900 + i as u64));
        assert_eq!(sorted(index.prefix_matches(&keys)), vec![(0, 4), (1, 2)]);
        assert_eq!((index.len(), index.keys()), (6, 4));
        // Another adapter's blocks are other blocks.
        assert!(
            index
                .prefix_matches(&prompt_keys(&prompt, SIZE, Some("travel-helper-v1")))
                .is_empty()
        );
        // A removal in the middle cuts endpoint 0's run there.
        index.apply(0, &removed(vec![102]));
        assert_eq!(sorted(index.prefix_matches(&keys)), vec![(0, 2), (1, 2)]);
        // A store whose parent was never seen cannot be keyed.
        let other = tokens(2, 7);
        let orphan = index.apply(2, &stored(&other, 1, 2, |i| 50 + i as u64));
        assert_eq!((orphan.stored, orphan.orphans), (0, 1));
    }

    proptest::proptest! {
        /// Whatever leading run of a prompt each endpoint holds (and whatever else it holds),
        /// the match is that run.
        #[test]
        fn matches_are_each_endpoint_s_leading_run(
            runs in proptest::collection::vec(0usize..=12, 1..8),
            others in 0u32..4,
        ) {
            let prompt = tokens(12, 11);
            let mut index = BlockIndex::new(10_000);
            for (endpoint, &run) in runs.iter().enumerate() {
                let endpoint = endpoint as u32;
                for other in 0..others {
                    let noise = tokens(5, 100 + other);
                    index.apply(endpoint, &stored(&noise, 0, 5, |i| 1_000 + (u64::from(other) << 8) + i as u64));
                }
                if run > 0 {
                    index.apply(endpoint, &stored(&prompt, 0, run, |i| i as u64));
                }
            }
            let expected: Vec<(EndpointSlot, usize)> = runs
                .iter()
                .enumerate()
                .filter(|(_, run)| **run > 0)
                .map(|(e, run)| (e as u32, *run))
                .collect();
            proptest::prop_assert_eq!(
                sorted(index.prefix_matches(&prompt_keys(&prompt, SIZE, None))),
                expected
            );
        }
    }

    #[test]
    fn offloaded_blocks_extend_the_gpu_run_and_are_told_apart() {
        let prompt = tokens(6, 9);
        let keys = prompt_keys(&prompt, SIZE, None);
        let mut index = BlockIndex::new(100);
        let on = |medium: Medium, from: usize, to: usize| {
            let Event::BlockStored(mut store) = stored(&prompt, from, to, |i| i as u64) else {
                unreachable!()
            };
            store.medium = Some(medium);
            Event::BlockStored(store)
        };
        // Endpoint 0: blocks 0-1 on the GPU, 0-4 offloaded (a CPU copy of the same hashes, its
        // parent found in either tier). Endpoint 1: only offloaded blocks.
        index.apply(0, &on(Medium::Gpu, 0, 2));
        index.apply(0, &on(Medium::Cpu, 0, 3));
        index.apply(0, &on(Medium::Cpu, 3, 5));
        index.apply(1, &on(Medium::Other("disk".into()), 0, 6));
        let expect = |endpoint, gpu, total| PrefixMatch {
            endpoint,
            gpu,
            total,
        };
        assert_eq!(
            index.prefix_matches(&keys),
            vec![expect(0, 2, 5), expect(1, 0, 6)]
        );
        // Removing the GPU copies leaves the offloaded ones; a removal names its tier.
        index.apply(
            0,
            &Event::BlockRemoved(BlockRemoved {
                block_hashes: vec![0, 1],
                medium: Some(Medium::Gpu),
                ..BlockRemoved::default()
            }),
        );
        assert_eq!(
            index.prefix_matches(&keys),
            vec![expect(0, 0, 5), expect(1, 0, 6)]
        );
        assert_eq!(index.clear_endpoint(0), 5);
        assert_eq!(index.prefix_matches(&keys), vec![expect(1, 0, 6)]);
    }

    #[test]
    fn a_block_stored_twice_stays_until_removed_twice() {
        let prompt = tokens(1, 3);
        let keys = prompt_keys(&prompt, SIZE, None);
        let mut index = BlockIndex::new(100);
        index.apply(0, &stored(&prompt, 0, 1, |_| 7));
        index.apply(0, &stored(&prompt, 0, 1, |_| 7));
        index.apply(0, &removed(vec![7]));
        assert_eq!(sorted(index.prefix_matches(&keys)), vec![(0, 1)]);
        index.apply(0, &removed(vec![7]));
        assert!(index.prefix_matches(&keys).is_empty());
        assert_eq!(index.apply(0, &removed(vec![7])).unknown_removals, 1);
        assert!(index.is_empty());
    }

    #[test]
    fn a_restarted_endpoint_holds_nothing() {
        let prompt = tokens(3, 5);
        let keys = prompt_keys(&prompt, SIZE, None);
        let mut index = BlockIndex::new(100);
        index.apply(0, &stored(&prompt, 0, 3, |i| i as u64));
        index.apply(1, &stored(&prompt, 0, 3, |i| i as u64));
        assert_eq!(index.apply(0, &Event::AllBlocksCleared).removed, 3);
        assert_eq!(sorted(index.prefix_matches(&keys)), vec![(1, 3)]);
        assert_eq!(index.clear_endpoint(1), 3);
        assert!(index.is_empty() && index.keys() == 0);
    }

    #[test]
    fn a_million_blocks_stay_under_the_bound_and_the_newest_are_kept() {
        let bound = 10_000;
        let mut index = BlockIndex::new(bound);
        // 1,000,000 blocks over 8 endpoints, as 62,500 stores of 16 chained blocks.
        let mut engine_hash = 0u64;
        let mut last_prompt = Vec::new();
        for store in 0..62_500u32 {
            let prompt = tokens(16, store);
            let base = engine_hash;
            index.apply(store % 8, &stored(&prompt, 0, 16, |i| base + i as u64));
            engine_hash += 16;
            assert!(index.len() <= bound);
            last_prompt = prompt;
        }
        assert_eq!(index.len(), bound);
        assert!(index.keys() <= bound);
        assert!(index.order.len() <= 2 * bound);
        // The newest prompt is whole on its endpoint.
        let keys = prompt_keys(&last_prompt, SIZE, None);
        assert_eq!(sorted(index.prefix_matches(&keys)), vec![(62_499 % 8, 16)]);
        // The oldest are gone.
        let first = prompt_keys(&tokens(16, 0), SIZE, None);
        assert!(index.prefix_matches(&first).is_empty());
    }
}
