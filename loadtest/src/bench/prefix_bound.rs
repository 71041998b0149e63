//! The best prefix-cache hit rate any routing could achieve for the requests actually sent.
//!
//! Model: one model server with an unbounded KV cache sees every request, in the order they were
//! sent, and keeps every block it ever computed (prompts and, once a request finishes, its
//! generated tokens). A request's hit is then its longest run of leading full blocks already
//! seen, never the block holding its last prompt token (vLLM recomputes at least that token),
//! exactly as vLLM counts `prefix_cache_hits`. Blocks are chained hashes over token ids, keyed
//! by the model name, because an adapter's KV cache is separate from the base model's.
//!
//! No real fleet beats this: splitting requests over several servers, finite caches and
//! requests that arrive before their prefix finished computing can only lose hits. So
//! `measured hit rate / bound` says how much of the available reuse a router captured.

use std::collections::HashSet;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::sim::tokenizer::tokenize;

/// vLLM's default KV block size, and the simulator's.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// The unbounded single-server cache of the module documentation.
#[derive(Debug, Clone)]
pub struct PrefixBound {
    block_size: usize,
    seen: HashSet<u64>,
    queried_tokens: u64,
    hit_tokens: u64,
}

fn block_hashes(model: &str, ids: &[u32], block_size: usize) -> impl Iterator<Item = u64> {
    let mut parent = xxh3_64_with_seed(model.as_bytes(), 0);
    ids.chunks_exact(block_size).map(move |block| {
        let bytes: Vec<u8> = block.iter().flat_map(|id| id.to_le_bytes()).collect();
        parent = xxh3_64_with_seed(&bytes, parent);
        parent
    })
}

impl PrefixBound {
    pub fn new(block_size: usize) -> Self {
        PrefixBound {
            block_size: block_size.max(1),
            seen: HashSet::new(),
            queried_tokens: 0,
            hit_tokens: 0,
        }
    }

    /// Records a request's prompt as the server tokenizes it; returns its best-case hit tokens.
    pub fn admit(&mut self, model: &str, prompt_text: &str) -> usize {
        let ids = tokenize(prompt_text);
        // Full blocks before the one holding the last prompt token.
        let usable = ids.len().saturating_sub(1) / self.block_size;
        let mut hits = 0;
        let mut matching = true;
        for (i, hash) in block_hashes(model, &ids, self.block_size).enumerate() {
            if matching && i < usable && self.seen.contains(&hash) {
                hits += 1;
            } else {
                matching = false;
            }
            self.seen.insert(hash);
        }
        let hit_tokens = hits * self.block_size;
        self.queried_tokens += ids.len() as u64;
        self.hit_tokens += hit_tokens as u64;
        hit_tokens
    }

    /// Records the blocks of a finished request's prompt plus its generated text (which a later
    /// turn of the conversation repeats).
    pub fn remember_output(&mut self, model: &str, prompt_text: &str, generated: &str) {
        let mut ids = tokenize(prompt_text);
        ids.extend(tokenize(generated));
        for hash in block_hashes(model, &ids, self.block_size) {
            self.seen.insert(hash);
        }
    }

    pub fn queried_tokens(&self) -> u64 {
        self.queried_tokens
    }

    pub fn hit_tokens(&self) -> u64 {
        self.hit_tokens
    }

    /// Hit tokens / queried tokens (0 before any request).
    pub fn hit_rate(&self) -> f64 {
        if self.queried_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.queried_tokens as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::prompt_with_exact_tokens;

    #[test]
    fn shared_full_blocks_hit_but_never_the_last_token_block() {
        let mut bound = PrefixBound::new(16);
        let system = prompt_with_exact_tokens(64, 1);
        let a = format!("{system}{}", prompt_with_exact_tokens(20, 2));
        let b = format!("{system}{}", prompt_with_exact_tokens(20, 3));
        assert_eq!(bound.admit("m", &a), 0);
        assert_eq!(bound.admit("m", &b), 64);
        // The same 64-token prompt again: its last token sits in block 4, so 3 blocks hit.
        assert_eq!(bound.admit("m", &system), 48);
        // Another model has its own cache.
        assert_eq!(bound.admit("adapter", &a), 0);
        assert_eq!(bound.queried_tokens(), 84 + 84 + 64 + 84);
        assert_eq!(bound.hit_tokens(), 112);
    }

    #[test]
    fn generated_text_extends_the_cached_sequence() {
        let mut bound = PrefixBound::new(16);
        let prompt = prompt_with_exact_tokens(32, 5);
        let answer = prompt_with_exact_tokens(32, 6);
        bound.admit("m", &prompt);
        bound.remember_output("m", &prompt, &answer);
        let next_turn = format!("{prompt}{answer}{}", prompt_with_exact_tokens(8, 7));
        assert_eq!(bound.admit("m", &next_turn), 64);
    }
}
