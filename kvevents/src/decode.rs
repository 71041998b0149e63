//! Field-by-field decoding of an event batch from untrusted msgpack bytes.

use rmp::Marker;
use rmp::decode;

use crate::{BlockHash, BlockRemoved, BlockStored, Event, EventBatch, Medium};

/// Why bytes are not an event batch: what was expected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV event batch: {what} at byte {at}")]
pub struct DecodeError {
    /// Offset into the payload.
    pub at: usize,
    /// What went wrong.
    pub what: String,
}

/// Values nested deeper than this inside a field the decoder skips are refused.
const MAX_SKIP_DEPTH: usize = 32;

/// Decode one batch (a PUB message's payload) in either of vLLM's layouts. Unknown fields are
/// skipped; missing required fields, wrong types, lengths beyond the payload and trailing bytes
/// are errors.
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, DecodeError> {
    let mut cursor = Cursor {
        rest: payload,
        len: payload.len(),
    };
    let batch = cursor.batch()?;
    if !cursor.rest.is_empty() {
        return Err(cursor.error(format!("{} bytes after the batch", cursor.rest.len())));
    }
    Ok(batch)
}

struct Cursor<'a> {
    rest: &'a [u8],
    len: usize,
}

/// The shape of a struct on the wire.
enum Shape {
    /// A map of this many fields.
    Map(usize),
    /// An array of this many positions.
    Array(usize),
}

impl<'a> Cursor<'a> {
    fn error(&self, what: impl Into<String>) -> DecodeError {
        DecodeError {
            at: self.len - self.rest.len(),
            what: what.into(),
        }
    }

    fn peek(&self) -> Result<Marker, DecodeError> {
        self.rest
            .first()
            .map(|&b| Marker::from_u8(b))
            .ok_or_else(|| self.error("unexpected end"))
    }

    /// Consume a nil if one is next.
    fn nil(&mut self) -> Result<bool, DecodeError> {
        if self.peek()? == Marker::Null {
            self.rest = &self.rest[1..];
            return Ok(true);
        }
        Ok(false)
    }

    fn int<T: int_fields::Int>(&mut self, field: &str) -> Result<T, DecodeError> {
        let at = self.error("");
        T::read(&mut self.rest).map_err(|_| DecodeError {
            what: format!("`{field}` must be an integer in range"),
            ..at
        })
    }

    fn optional_int<T: int_fields::Int>(&mut self, field: &str) -> Result<Option<T>, DecodeError> {
        if self.nil()? {
            return Ok(None);
        }
        self.int(field).map(Some)
    }

    fn float(&mut self, field: &str) -> Result<f64, DecodeError> {
        match self.peek()? {
            Marker::F64 => decode::read_f64(&mut self.rest).ok(),
            Marker::F32 => decode::read_f32(&mut self.rest).ok().map(f64::from),
            _ => decode::read_int::<i64, _>(&mut self.rest)
                .ok()
                .map(|n| n as f64),
        }
        .ok_or_else(|| self.error(format!("`{field}` must be a number")))
    }

    fn str(&mut self, field: &str) -> Result<&'a str, DecodeError> {
        match decode::read_str_from_slice(self.rest) {
            Ok((text, rest)) => {
                self.rest = rest;
                Ok(text)
            }
            Err(_) => Err(self.error(format!("`{field}` must be a UTF-8 string"))),
        }
    }

    fn optional_str(&mut self, field: &str) -> Result<Option<&'a str>, DecodeError> {
        if self.nil()? {
            return Ok(None);
        }
        self.str(field).map(Some)
    }

    /// `len` bytes, if that many are left.
    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        if len > self.rest.len() {
            return Err(self.error(format!("`{field}` is longer than the payload")));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    /// An array's length, at most what the remaining bytes can hold (one byte per element).
    fn array_len(&mut self, field: &str) -> Result<usize, DecodeError> {
        let len = decode::read_array_len(&mut self.rest)
            .map_err(|_| self.error(format!("`{field}` must be an array")))?;
        self.bounded(len as usize, 1, field)
    }

    fn bounded(&self, len: usize, min_bytes: usize, field: &str) -> Result<usize, DecodeError> {
        if len.saturating_mul(min_bytes) > self.rest.len() {
            return Err(self.error(format!(
                "`{field}` has more elements than the payload holds"
            )));
        }
        Ok(len)
    }

    /// A struct: a map of fields or an array of positions.
    fn shape(&mut self, what: &str) -> Result<Shape, DecodeError> {
        match self.peek()? {
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                let len = decode::read_map_len(&mut self.rest)
                    .map_err(|_| self.error(format!("{what}: unreadable map")))?;
                Ok(Shape::Map(self.bounded(len as usize, 2, what)?))
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                Ok(Shape::Array(self.array_len(what)?))
            }
            _ => Err(self.error(format!("{what} must be a map or an array"))),
        }
    }

    /// A block hash: an integer (vLLM's default) or the hash bytes, reduced to their low 64 bits.
    fn block_hash(&mut self, field: &str) -> Result<BlockHash, DecodeError> {
        match self.peek()? {
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = decode::read_bin_len(&mut self.rest)
                    .map_err(|_| self.error(format!("`{field}`: unreadable bytes")))?;
                let bytes = self.take(len as usize, field)?;
                let low = &bytes[bytes.len().saturating_sub(8)..];
                Ok(low.iter().fold(0u64, |hash, &b| (hash << 8) | u64::from(b)))
            }
            // Integers are kept as their 64 bits, whether written signed or unsigned.
            _ => self.int::<i128>(field).map(|n| n as u64),
        }
    }

    fn optional_block_hash(&mut self, field: &str) -> Result<Option<BlockHash>, DecodeError> {
        if self.nil()? {
            return Ok(None);
        }
        self.block_hash(field).map(Some)
    }

    fn block_hashes(&mut self, field: &str) -> Result<Vec<BlockHash>, DecodeError> {
        let len = self.array_len(field)?;
        (0..len).map(|_| self.block_hash(field)).collect()
    }

    fn token_ids(&mut self) -> Result<Vec<u32>, DecodeError> {
        let len = self.array_len("token_ids")?;
        (0..len).map(|_| self.int("token_ids")).collect()
    }

    fn medium(&mut self) -> Result<Option<Medium>, DecodeError> {
        Ok(self.optional_str("medium")?.map(Medium::from_name))
    }

    /// Skip one value of any type.
    fn skip(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_SKIP_DEPTH {
            return Err(self.error("values nested too deep"));
        }
        let marker =
            decode::read_marker(&mut self.rest).map_err(|_| self.error("unexpected end"))?;
        let (data, elements) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(len) => (usize::from(len), 0),
            Marker::FixArray(len) => (0, usize::from(len)),
            Marker::FixMap(len) => (0, 2 * usize::from(len)),
            Marker::Str8 | Marker::Bin8 => (self.length(1)?, 0),
            Marker::Str16 | Marker::Bin16 => (self.length(2)?, 0),
            Marker::Str32 | Marker::Bin32 => (self.length(4)?, 0),
            Marker::Array16 => (0, self.length(2)?),
            Marker::Array32 => (0, self.length(4)?),
            Marker::Map16 => (0, 2 * self.length(2)?),
            Marker::Map32 => (0, 2 * self.length(4)?),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (self.length(1)? + 1, 0),
            Marker::Ext16 => (self.length(2)? + 1, 0),
            Marker::Ext32 => (self.length(4)? + 1, 0),
            Marker::Reserved => return Err(self.error("reserved msgpack marker")),
        };
        self.take(data, "a skipped value")?;
        self.bounded(elements, 1, "a skipped value")?;
        for _ in 0..elements {
            self.skip(depth + 1)?;
        }
        Ok(())
    }

    /// A big-endian length of `bytes` bytes.
    fn length(&mut self, bytes: usize) -> Result<usize, DecodeError> {
        let field = self.take(bytes, "a length")?;
        Ok(field
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b)))
    }

    fn batch(&mut self) -> Result<EventBatch, DecodeError> {
        let mut batch = EventBatch::default();
        let (mut ts, mut events) = (false, false);
        match self.shape("the batch")? {
            Shape::Map(fields) => {
                for _ in 0..fields {
                    match self.str("a batch field name")? {
                        "ts" => {
                            batch.ts = self.float("ts")?;
                            ts = true;
                        }
                        "events" => {
                            batch.events = self.events()?;
                            events = true;
                        }
                        "data_parallel_rank" => {
                            batch.data_parallel_rank = self.optional_int("data_parallel_rank")?;
                        }
                        _ => self.skip(0)?,
                    }
                }
            }
            Shape::Array(positions) => {
                for position in 0..positions {
                    match position {
                        0 => {
                            batch.ts = self.float("ts")?;
                            ts = true;
                        }
                        1 => {
                            batch.events = self.events()?;
                            events = true;
                        }
                        2 => batch.data_parallel_rank = self.optional_int("data_parallel_rank")?,
                        _ => self.skip(0)?,
                    }
                }
            }
        }
        if !ts || !events {
            return Err(self.error("the batch lacks `ts` or `events`"));
        }
        Ok(batch)
    }

    fn events(&mut self) -> Result<Vec<Event>, DecodeError> {
        let len = self.array_len("events")?;
        (0..len).map(|_| self.event()).collect()
    }

    fn event(&mut self) -> Result<Event, DecodeError> {
        match self.shape("an event")? {
            Shape::Map(fields) => {
                let tag = self.map_tag(fields)?;
                self.tagged_map(tag, fields)
            }
            Shape::Array(0) => Err(self.error("an event array without its tag")),
            Shape::Array(positions) => {
                let tag = self.str("the event tag")?;
                self.tagged_array(tag, positions - 1)
            }
        }
    }

    /// The `type` of a map event of `fields` fields, read ahead without consuming the map.
    fn map_tag(&mut self, fields: usize) -> Result<&'a str, DecodeError> {
        let start = self.rest;
        let mut tag = None;
        for _ in 0..fields {
            if self.str("an event field name")? == "type" {
                tag = Some(self.str("type")?);
                break;
            }
            self.skip(0)?;
        }
        self.rest = start;
        tag.ok_or_else(|| self.error("an event without `type`"))
    }

    fn tagged_map(&mut self, tag: &str, fields: usize) -> Result<Event, DecodeError> {
        match tag {
            "BlockStored" => {
                let mut stored = BlockStored::default();
                let mut seen = (false, false, false);
                for _ in 0..fields {
                    match self.str("a BlockStored field name")? {
                        "block_hashes" => {
                            stored.block_hashes = self.block_hashes("block_hashes")?;
                            seen.0 = true;
                        }
                        "parent_block_hash" => {
                            stored.parent_block_hash =
                                self.optional_block_hash("parent_block_hash")?;
                        }
                        "token_ids" => {
                            stored.token_ids = self.token_ids()?;
                            seen.1 = true;
                        }
                        "block_size" => {
                            stored.block_size = self.int("block_size")?;
                            seen.2 = true;
                        }
                        "lora_id" => stored.lora_id = self.optional_int("lora_id")?,
                        "medium" => stored.medium = self.medium()?,
                        "lora_name" => {
                            stored.lora_name = self.optional_str("lora_name")?.map(str::to_string);
                        }
                        "group_idx" => stored.group_idx = self.optional_int("group_idx")?,
                        _ => self.skip(0)?,
                    }
                }
                if seen != (true, true, true) {
                    return Err(
                        self.error("BlockStored lacks `block_hashes`, `token_ids` or `block_size`")
                    );
                }
                Ok(Event::BlockStored(stored))
            }
            "BlockRemoved" => {
                let mut removed = BlockRemoved::default();
                let mut hashes = false;
                for _ in 0..fields {
                    match self.str("a BlockRemoved field name")? {
                        "block_hashes" => {
                            removed.block_hashes = self.block_hashes("block_hashes")?;
                            hashes = true;
                        }
                        "medium" => removed.medium = self.medium()?,
                        "group_idx" => removed.group_idx = self.optional_int("group_idx")?,
                        _ => self.skip(0)?,
                    }
                }
                if !hashes {
                    return Err(self.error("BlockRemoved lacks `block_hashes`"));
                }
                Ok(Event::BlockRemoved(removed))
            }
            "AllBlocksCleared" => {
                for _ in 0..fields {
                    self.str("an AllBlocksCleared field name")?;
                    self.skip(0)?;
                }
                Ok(Event::AllBlocksCleared)
            }
            other => Err(self.error(format!("unknown event type `{other}`"))),
        }
    }

    /// An array event after its tag: `positions` values in declaration order (older releases
    /// declared fewer fields; later positions are optional).
    fn tagged_array(&mut self, tag: &str, positions: usize) -> Result<Event, DecodeError> {
        match tag {
            "BlockStored" => {
                if positions < 4 {
                    return Err(self.error(
                        "BlockStored lacks `block_hashes`, `parent_block_hash`, `token_ids` or `block_size`",
                    ));
                }
                let mut stored = BlockStored {
                    block_hashes: self.block_hashes("block_hashes")?,
                    parent_block_hash: self.optional_block_hash("parent_block_hash")?,
                    token_ids: self.token_ids()?,
                    block_size: self.int("block_size")?,
                    ..BlockStored::default()
                };
                for position in 4..positions {
                    match position {
                        4 => stored.lora_id = self.optional_int("lora_id")?,
                        5 => stored.medium = self.medium()?,
                        6 => {
                            stored.lora_name = self.optional_str("lora_name")?.map(str::to_string);
                        }
                        8 => stored.group_idx = self.optional_int("group_idx")?,
                        _ => self.skip(0)?,
                    }
                }
                Ok(Event::BlockStored(stored))
            }
            "BlockRemoved" => {
                if positions < 1 {
                    return Err(self.error("BlockRemoved lacks `block_hashes`"));
                }
                let mut removed = BlockRemoved {
                    block_hashes: self.block_hashes("block_hashes")?,
                    ..BlockRemoved::default()
                };
                for position in 1..positions {
                    match position {
                        1 => removed.medium = self.medium()?,
                        2 => removed.group_idx = self.optional_int("group_idx")?,
                        _ => self.skip(0)?,
                    }
                }
                Ok(Event::BlockRemoved(removed))
            }
            "AllBlocksCleared" => {
                for _ in 0..positions {
                    self.skip(0)?;
                }
                Ok(Event::AllBlocksCleared)
            }
            other => Err(self.error(format!("unknown event type `{other}`"))),
        }
    }
}

/// The integer types fields are read as, through `rmp::decode::read_int`.
mod int_fields {
    use rmp::decode::{self, RmpRead};

    pub trait Int: Sized {
        fn read<R: RmpRead>(rd: &mut R) -> Result<Self, ()>;
    }

    macro_rules! int {
        ($($t:ty),*) => {$(
            impl Int for $t {
                fn read<R: RmpRead>(rd: &mut R) -> Result<Self, ()> {
                    decode::read_int(rd).map_err(|_| ())
                }
            }
        )*};
    }

    int!(u32, i64, i128);
}
