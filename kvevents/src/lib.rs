//! vLLM's KV-cache events as they travel between a model server and its subscribers.
//!
//! With `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", ...}'` vLLM
//! publishes, once per engine step that changed its prefix cache, an event batch on a ZeroMQ PUB
//! socket as three frames: the topic, an 8-byte big-endian sequence number (per publisher,
//! from 0), and the batch encoded with msgpack ([`Message`]). A ROUTER socket, when configured,
//! replays buffered batches from a sequence number on request ([`replay_request`],
//! [`ReplayReply`]).
//!
//! A batch ([`EventBatch`]) holds a timestamp, the events and the data-parallel rank. The events
//! ([`Event`]) are `BlockStored` (full blocks entered the prefix cache: their hashes, the hash of
//! the block before the first, their token ids), `BlockRemoved` (blocks left it) and
//! `AllBlocksCleared` (the cache was reset). vLLM encodes them with msgspec in one of two layouts,
//! both decoded here ([`decode_batch`]): current releases write each struct as a map, events
//! tagged under `"type"`, fields in declaration order and defaulted fields left out while `None`;
//! older ones wrote positional arrays with the tag first ([`Layout`]). Block hashes are integers (vLLM's
//! default, the low 64 bits of its block hash) or, with `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`,
//! the hash bytes, reduced here to the same low 64 bits ([`BlockHash`]).
//!
//! The decoder reads untrusted bytes: every length is checked against what is left before
//! anything is allocated, nesting is bounded, and unknown fields are skipped, so a newer vLLM that
//! adds a field still decodes. It has a fuzz target (`fuzz/fuzz_targets/kv_events.rs`).

mod decode;
mod encode;
pub mod index;
#[cfg(test)]
mod tests;

pub use decode::{DecodeError, decode_batch};
pub use encode::{Layout, encode_batch};
pub use index::{BlockIndex, BlockKey, EndpointSlot, PrefixMatch, block_key, prompt_keys};

/// A block's hash as a subscriber keys it: vLLM's integer form (the low 64 bits of the engine's
/// block hash, big-endian), which is also what byte hashes reduce to.
pub type BlockHash = u64;

/// Where a block is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Medium {
    /// GPU memory (`"GPU"`).
    Gpu,
    /// Host memory, for an offloading connector (`"CPU"`).
    Cpu,
    /// Any other tier a connector names.
    Other(String),
}

impl Medium {
    /// The medium named `name` on the wire.
    pub fn from_name(name: &str) -> Medium {
        match name {
            "GPU" => Medium::Gpu,
            "CPU" => Medium::Cpu,
            other => Medium::Other(other.to_string()),
        }
    }

    /// Its name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Medium::Gpu => "GPU",
            Medium::Cpu => "CPU",
            Medium::Other(name) => name,
        }
    }
}

/// Full blocks that entered the prefix cache, in chain order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    /// The blocks' hashes.
    pub block_hashes: Vec<BlockHash>,
    /// The hash of the block before the first one; `None` when the first block starts a prompt.
    pub parent_block_hash: Option<BlockHash>,
    /// The token ids of all the blocks, `block_size` per block.
    pub token_ids: Vec<u32>,
    /// Tokens per block.
    pub block_size: u32,
    /// The LoRA adapter's integer id (deprecated by vLLM in favour of `lora_name`).
    pub lora_id: Option<i64>,
    /// Where the blocks are stored; `None` from releases that did not say (GPU).
    pub medium: Option<Medium>,
    /// The LoRA adapter's name, part of the block key.
    pub lora_name: Option<String>,
    /// The KV-cache group (hybrid models), when given.
    pub group_idx: Option<i64>,
}

/// Blocks that left the prefix cache.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockRemoved {
    /// The blocks' hashes.
    pub block_hashes: Vec<BlockHash>,
    /// Where they were stored; `None` from releases that did not say (GPU).
    pub medium: Option<Medium>,
    /// The KV-cache group (hybrid models), when given.
    pub group_idx: Option<i64>,
}

/// One change to a model server's prefix cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Blocks were stored.
    BlockStored(BlockStored),
    /// Blocks were removed.
    BlockRemoved(BlockRemoved),
    /// Every block was removed (the prefix cache was reset).
    AllBlocksCleared,
}

/// The events of one engine step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventBatch {
    /// When the batch was made, in seconds since the Unix epoch.
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<Event>,
    /// The data-parallel rank that published it, when given.
    pub data_parallel_rank: Option<i64>,
}

/// The sequence number of a replay's end marker (−1 as a signed 64-bit integer).
pub const REPLAY_END: u64 = u64::MAX;

/// One published message: the PUB socket's three frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// The topic frame (vLLM's `topic` setting; empty by default).
    pub topic: &'a [u8],
    /// The publisher's sequence number.
    pub seq: u64,
    /// The msgpack-encoded [`EventBatch`].
    pub payload: &'a [u8],
}

/// Why a message's frames are not a KV-event message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not three frames.
    #[error("expected 3 frames (topic, sequence, payload), got {0}")]
    FrameCount(usize),
    /// The sequence frame is not 8 bytes.
    #[error("the sequence frame has {0} bytes, expected 8")]
    Sequence(usize),
}

impl<'a> Message<'a> {
    /// Read a PUB message from its frames.
    pub fn from_frames(frames: &[&'a [u8]]) -> Result<Message<'a>, FrameError> {
        let [topic, seq, payload] = frames else {
            return Err(FrameError::FrameCount(frames.len()));
        };
        Ok(Message {
            topic,
            seq: sequence(seq)?,
            payload,
        })
    }

    /// Its frames, as the publisher sends them.
    pub fn frames(&self) -> [Vec<u8>; 3] {
        [
            self.topic.to_vec(),
            self.seq.to_be_bytes().to_vec(),
            self.payload.to_vec(),
        ]
    }
}

fn sequence(frame: &[u8]) -> Result<u64, FrameError> {
    let bytes: [u8; 8] = frame
        .try_into()
        .map_err(|_| FrameError::Sequence(frame.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The frames a subscriber sends to the replay (ROUTER) socket to ask for every buffered batch
/// from `start` on: an empty delimiter and the 8-byte big-endian sequence number (a DEALER socket
/// sends them as they are; the ROUTER prepends the peer's identity).
pub fn replay_request(start: u64) -> [Vec<u8>; 2] {
    [Vec::new(), start.to_be_bytes().to_vec()]
}

/// One reply from the replay socket, as a DEALER receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayReply<'a> {
    /// A buffered batch.
    Batch {
        /// Its sequence number.
        seq: u64,
        /// Its payload.
        payload: &'a [u8],
    },
    /// Nothing more: every buffered batch from the start asked for was sent.
    End,
}

impl<'a> ReplayReply<'a> {
    /// Read a reply from its frames: an empty delimiter, the sequence number and the payload.
    pub fn from_frames(frames: &[&'a [u8]]) -> Result<ReplayReply<'a>, FrameError> {
        let [_delimiter, seq, payload] = frames else {
            return Err(FrameError::FrameCount(frames.len()));
        };
        match sequence(seq)? {
            REPLAY_END => Ok(ReplayReply::End),
            seq => Ok(ReplayReply::Batch { seq, payload }),
        }
    }
}
