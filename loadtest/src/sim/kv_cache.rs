//! The paged KV cache with automatic prefix caching, as vLLM V1's `BlockPool` keeps it.
//!
//! Blocks hold `block_size` tokens. Block 0 is the reserved null block, so `num_blocks − 1` are
//! usable. A full block may carry a hash (chained over its parent's hash, its token ids and extra
//! keys such as the LoRA adapter); hashed blocks can be found again by later requests. Free
//! blocks sit in an LRU queue: a finished request's blocks are appended tail first, allocation
//! pops the head and drops that block's hash, and a cache hit on a free block pulls it out of the
//! queue. Free blocks include cached-but-unreferenced ones, which is what `kv_cache_usage_perc`
//! counts as free. This module does no scheduling: it hands out and takes back blocks.
//!
//! With KV events on ([`KvCache::enable_events`]) it logs what vLLM's block pool reports: a
//! `BlockRemoved` for every hashed block whose hash allocation evicts (the engine logs the
//! matching `BlockStored` when it registers full blocks, [`KvCache::log_event`]).

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

pub type BlockId = u32;
pub type BlockHash = u64;

/// Hash of a full block: chained over the parent's hash so equal blocks at different positions
/// (or after different prefixes) never collide, and salted with the extra keys.
pub fn chained_block_hash(parent: Option<BlockHash>, tokens: &[u32], extra_key: u64) -> BlockHash {
    let mut bytes = [0u8; 4 * 64];
    let mut seed = parent.unwrap_or(0x5eed_b10c_4a54_0001) ^ extra_key.rotate_left(17);
    // Hash in chunks of 64 tokens so any block size works without allocating.
    for chunk in tokens.chunks(64) {
        for (slot, token) in bytes.chunks_exact_mut(4).zip(chunk) {
            slot.copy_from_slice(&token.to_le_bytes());
        }
        seed = xxh3_64_with_seed(&bytes[..chunk.len() * 4], seed);
    }
    seed
}

/// The block pool: reference counts, hashes, the LRU free queue and the hash index.
#[derive(Debug, Clone)]
pub struct KvCache {
    block_size: usize,
    ref_counts: Vec<u32>,
    hashes: Vec<Option<BlockHash>>,
    /// Intrusive doubly linked LRU list over block ids; index `num_blocks` is the sentinel.
    prev: Vec<u32>,
    next: Vec<u32>,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
    prefix_caching: bool,
    /// KV events since the last [`KvCache::take_events`], when they are on.
    events: Option<Vec<kvevents::Event>>,
}

impl KvCache {
    /// A pool of `num_blocks` blocks (one reserved) of `block_size` tokens.
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let num_blocks = num_blocks.max(2);
        let sentinel = num_blocks as u32;
        let mut cache = KvCache {
            block_size,
            ref_counts: vec![0; num_blocks],
            hashes: vec![None; num_blocks],
            prev: vec![sentinel; num_blocks + 1],
            next: vec![sentinel; num_blocks + 1],
            num_free: 0,
            cached: HashMap::new(),
            prefix_caching,
            events: None,
        };
        cache.ref_counts[0] = 1; // the null block is never handed out
        for block in 1..num_blocks as u32 {
            cache.push_back(block);
        }
        cache
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// All blocks, including the reserved null block (what `num_gpu_blocks` reports).
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that can ever be handed out.
    pub fn usable_blocks(&self) -> usize {
        self.ref_counts.len() - 1
    }

    /// Free blocks, counting cached blocks that no request references.
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// `1 − free / usable`, as `vllm:kv_cache_usage_perc` reports it.
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free as f64 / self.usable_blocks() as f64
    }

    /// Number of blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }

    /// The cached block holding `hash`, if prefix caching is on and it is still cached.
    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        if !self.prefix_caching {
            return None;
        }
        self.cached.get(&hash).copied()
    }

    /// Whether `block` is in the free queue (unreferenced).
    pub fn is_free(&self, block: BlockId) -> bool {
        block != 0 && self.ref_counts[block as usize] == 0
    }

    /// Takes a reference on a cached block found by [`lookup`](Self::lookup).
    pub fn touch(&mut self, block: BlockId) {
        if self.ref_counts[block as usize] == 0 {
            self.unlink(block);
        }
        self.ref_counts[block as usize] += 1;
    }

    /// Pops the least recently freed block, evicting its hash, or `None` when none is free.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let sentinel = self.sentinel();
        let block = self.next[sentinel as usize];
        if block == sentinel {
            return None;
        }
        self.unlink(block);
        if let Some(hash) = self.hashes[block as usize].take() {
            if self.cached.get(&hash) == Some(&block) {
                self.cached.remove(&hash);
            }
            // Every block that was stored under a hash is reported removed, duplicates too,
            // so a subscriber counting stores and removals per hash stays balanced.
            self.log_event(kvevents::Event::BlockRemoved(kvevents::BlockRemoved {
                block_hashes: vec![hash],
                medium: Some(kvevents::Medium::Gpu),
                group_idx: None,
            }));
        }
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// Drops one reference on each block, last block first, so a request's tail is evicted
    /// before its head.
    pub fn free_blocks(&mut self, blocks: &[BlockId]) {
        for &block in blocks.iter().rev() {
            let count = &mut self.ref_counts[block as usize];
            debug_assert!(*count > 0, "double free of block {block}");
            *count -= 1;
            if *count == 0 {
                self.push_back(block);
            }
        }
    }

    /// Records that `block` now holds a full block whose hash is `hash`. When another block
    /// already holds that hash, the index keeps the first one (as vLLM does).
    pub fn cache_full_block(&mut self, block: BlockId, hash: BlockHash) {
        if !self.prefix_caching || self.hashes[block as usize].is_some() {
            return;
        }
        self.hashes[block as usize] = Some(hash);
        self.cached.entry(hash).or_insert(block);
    }

    /// Forget every cached hash, as vLLM's `reset_prefix_cache` does, if no block is in use
    /// (else nothing changes and `false` is returned); logs `AllBlocksCleared`.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_free != self.usable_blocks() {
            return false;
        }
        self.cached.clear();
        self.hashes.iter_mut().for_each(|hash| *hash = None);
        self.log_event(kvevents::Event::AllBlocksCleared);
        true
    }

    /// Start logging KV events.
    pub fn enable_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// Whether KV events are logged.
    pub fn events_enabled(&self) -> bool {
        self.events.is_some()
    }

    /// Log `event` if events are on.
    pub fn log_event(&mut self, event: kvevents::Event) {
        if let Some(events) = &mut self.events {
            events.push(event);
        }
    }

    /// The events logged since the last call.
    pub fn take_events(&mut self) -> Vec<kvevents::Event> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Number of blocks in the hash index (cached, referenced or not).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    fn sentinel(&self) -> u32 {
        self.ref_counts.len() as u32
    }

    fn push_back(&mut self, block: BlockId) {
        let sentinel = self.sentinel();
        let last = self.prev[sentinel as usize];
        self.next[last as usize] = block;
        self.prev[block as usize] = last;
        self.next[block as usize] = sentinel;
        self.prev[sentinel as usize] = block;
        self.num_free += 1;
    }

    fn unlink(&mut self, block: BlockId) {
        let (p, n) = (self.prev[block as usize], self.next[block as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_follows_lru_order_and_evicts_hashes() {
        let mut kv = KvCache::new(4, 16, true);
        assert_eq!(kv.usable_blocks(), 3);
        let a = kv.allocate().unwrap();
        let b = kv.allocate().unwrap();
        kv.cache_full_block(a, 11);
        kv.cache_full_block(b, 22);
        kv.free_blocks(&[a, b]); // b appended first, then a
        assert_eq!(kv.num_free(), 3);
        assert_eq!(kv.lookup(11), Some(a));
        let c = kv.allocate().unwrap(); // the never-used block 3
        assert_eq!(c, 3);
        assert_eq!(kv.allocate(), Some(b)); // b evicted before a
        assert_eq!(kv.lookup(22), None);
        assert_eq!(kv.lookup(11), Some(a));
        kv.touch(a);
        assert_eq!(kv.num_free(), 0);
        assert_eq!(kv.allocate(), None);
        assert!((kv.usage() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn chained_hashes_depend_on_the_parent() {
        let tokens = [1u32; 16];
        let first = chained_block_hash(None, &tokens, 0);
        assert_ne!(chained_block_hash(Some(first), &tokens, 0), first);
        assert_ne!(chained_block_hash(None, &tokens, 1), first);
        assert_eq!(chained_block_hash(None, &tokens, 0), first);
    }
}
