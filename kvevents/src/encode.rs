//! Encoding an event batch as vLLM's msgspec encoder writes it.

use rmp::encode;

use crate::{BlockHash, Event, EventBatch, Medium};

/// How structs are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Maps, events tagged under `"type"` first, fields in declaration order, fields whose
    /// default is `None` left out while `None` (current vLLM).
    Map,
    /// Positional arrays, events with their tag first, every position written (older vLLM,
    /// `array_like=True`; msgspec leaves defaults out of maps only).
    Array,
}

/// The msgpack bytes of `batch` in `layout`, byte for byte what msgspec writes for the same
/// batch: integers in their smallest form (unsigned when not negative), floats as float64.
pub fn encode_batch(batch: &EventBatch, layout: Layout) -> Vec<u8> {
    let mut out = Writer {
        buf: Vec::with_capacity(64 + batch.events.len() * 64),
        layout,
    };
    let rank = batch.data_parallel_rank;
    let rank_written = rank.is_some() || layout == Layout::Array;
    out.open(2 + usize::from(rank_written));
    out.key("ts");
    encode::write_f64(&mut out.buf, batch.ts).expect(VEC);
    out.key("events");
    out.array(batch.events.len());
    for event in &batch.events {
        out.event(event);
    }
    if rank_written {
        out.key("data_parallel_rank");
        out.optional_int(rank);
    }
    out.buf
}

const VEC: &str = "writing to a Vec cannot fail";

struct Writer {
    buf: Vec<u8>,
    layout: Layout,
}

impl Writer {
    /// Open a struct of `fields` fields (after a tag, if any).
    fn open(&mut self, fields: usize) {
        let len = u32::try_from(fields).expect("a handful of fields");
        match self.layout {
            Layout::Map => encode::write_map_len(&mut self.buf, len),
            Layout::Array => encode::write_array_len(&mut self.buf, len),
        }
        .expect(VEC);
    }

    /// A field's name (maps only).
    fn key(&mut self, name: &str) {
        if self.layout == Layout::Map {
            self.str(name);
        }
    }

    /// A tagged struct's tag and field count.
    fn tagged(&mut self, tag: &str, fields: usize) {
        self.open(fields + 1);
        self.key("type");
        self.str(tag);
    }

    fn str(&mut self, text: &str) {
        encode::write_str(&mut self.buf, text).expect(VEC);
    }

    fn array(&mut self, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        encode::write_array_len(&mut self.buf, len).expect(VEC);
    }

    fn int(&mut self, value: i64) {
        match u64::try_from(value) {
            Ok(unsigned) => encode::write_uint(&mut self.buf, unsigned).map(drop),
            Err(_) => encode::write_sint(&mut self.buf, value).map(drop),
        }
        .expect(VEC);
    }

    fn hash(&mut self, hash: BlockHash) {
        encode::write_uint(&mut self.buf, hash).expect(VEC);
    }

    fn nil(&mut self) {
        encode::write_nil(&mut self.buf).expect(VEC);
    }

    fn optional_int(&mut self, value: Option<i64>) {
        match value {
            Some(value) => self.int(value),
            None => self.nil(),
        }
    }

    fn optional_str(&mut self, value: Option<&str>) {
        match value {
            Some(text) => self.str(text),
            None => self.nil(),
        }
    }

    fn hashes(&mut self, hashes: &[BlockHash]) {
        self.array(hashes.len());
        for &hash in hashes {
            self.hash(hash);
        }
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::BlockStored(stored) => {
                // Always written: block_hashes, parent_block_hash, token_ids, block_size,
                // lora_id, medium, lora_name. Defaulting to None: extra_keys (never set here),
                // group_idx and the two cache-spec fields (never set here); maps leave them out
                // while None, arrays write every position.
                let group = stored.group_idx;
                let fields = match self.layout {
                    Layout::Map => 7 + usize::from(group.is_some()),
                    Layout::Array => 11,
                };
                self.tagged("BlockStored", fields);
                self.key("block_hashes");
                self.hashes(&stored.block_hashes);
                self.key("parent_block_hash");
                match stored.parent_block_hash {
                    Some(hash) => self.hash(hash),
                    None => self.nil(),
                }
                self.key("token_ids");
                self.array(stored.token_ids.len());
                for &token in &stored.token_ids {
                    encode::write_uint(&mut self.buf, u64::from(token)).expect(VEC);
                }
                self.key("block_size");
                self.int(i64::from(stored.block_size));
                self.key("lora_id");
                self.optional_int(stored.lora_id);
                self.key("medium");
                self.optional_str(stored.medium.as_ref().map(Medium::name));
                self.key("lora_name");
                self.optional_str(stored.lora_name.as_deref());
                match self.layout {
                    Layout::Map => {
                        if let Some(group) = group {
                            self.key("group_idx");
                            self.int(group);
                        }
                    }
                    Layout::Array => {
                        self.nil();
                        self.optional_int(group);
                        self.nil();
                        self.nil();
                    }
                }
            }
            Event::BlockRemoved(removed) => {
                let group = removed.group_idx;
                let written = group.is_some() || self.layout == Layout::Array;
                self.tagged("BlockRemoved", 2 + usize::from(written));
                self.key("block_hashes");
                self.hashes(&removed.block_hashes);
                self.key("medium");
                self.optional_str(removed.medium.as_ref().map(Medium::name));
                if written {
                    self.key("group_idx");
                    self.optional_int(group);
                }
            }
            Event::AllBlocksCleared => self.tagged("AllBlocksCleared", 0),
        }
    }
}
