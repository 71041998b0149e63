//! One request as the engine tracks it: its tokens (prompt plus what it has generated so far),
//! how many of them have KV in the cache, which blocks hold them and their chained hashes.
//!
//! Generated tokens are never stored: the `index`-th one is a fixed function of the request's
//! output seed (`tokenizer::generated_token_id`), so a preempted request recomputes exactly the
//! same tokens and hits its own cached blocks on resume.

use std::sync::Arc;

use super::{FinishReason, RequestId};
use crate::sim::kv_cache::{BlockHash, BlockId, chained_block_hash};
use crate::sim::lora::LoraId;
use crate::sim::tokenizer::generated_token_id;

#[derive(Debug, Clone)]
pub(super) struct Sequence {
    pub id: RequestId,
    pub prompt: Arc<[u32]>,
    pub output_seed: u64,
    pub output_len: usize,
    pub finish_reason: FinishReason,
    pub lora: Option<LoraId>,
    /// The adapter's name, for KV events.
    pub lora_name: Option<std::sync::Arc<str>>,
    pub extra_key: u64,
    pub max_tokens: usize,
    pub n: usize,
    /// Tokens whose KV is in `blocks`.
    pub num_computed: usize,
    /// Tokens generated so far.
    pub num_output: usize,
    pub blocks: Vec<BlockId>,
    /// Hashes of the full blocks of the known tokens, extended lazily.
    pub hashes: Vec<BlockHash>,
    /// Leading blocks already registered in the prefix cache by this sequence.
    pub num_registered_blocks: usize,
    pub arrival: f64,
    pub first_scheduled: Option<f64>,
    pub first_token: Option<f64>,
    pub last_token: f64,
    pub preemptions: u32,
}

impl Sequence {
    pub fn prompt_len(&self) -> usize {
        self.prompt.len()
    }

    /// Prompt plus generated tokens.
    pub fn total_tokens(&self) -> usize {
        self.prompt.len() + self.num_output
    }

    pub fn token_at(&self, position: usize) -> u32 {
        match self.prompt.get(position) {
            Some(&token) => token,
            None => generated_token_id(self.output_seed, position - self.prompt.len()),
        }
    }

    /// Extends `hashes` to every full block of the known tokens.
    pub fn ensure_hashes(&mut self, block_size: usize) {
        let full = self.total_tokens() / block_size;
        if self.hashes.len() >= full {
            return;
        }
        let mut tokens = vec![0u32; block_size];
        while self.hashes.len() < full {
            let start = self.hashes.len() * block_size;
            for (offset, slot) in tokens.iter_mut().enumerate() {
                *slot = self.token_at(start + offset);
            }
            let parent = self.hashes.last().copied();
            self.hashes
                .push(chained_block_hash(parent, &tokens, self.extra_key));
        }
    }
}
