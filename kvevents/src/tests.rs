use proptest::prelude::*;

use super::*;

/// msgspec 0.23.0's bytes for [`roundtrip_batch`] (`tools/kv-events/fixtures.py`).
const MAP: &[u8] = include_bytes!("../tests/fixtures/batch-map.msgpack");
const ARRAY: &[u8] = include_bytes!("../tests/fixtures/batch-array.msgpack");
const EXTRAS: &[u8] = include_bytes!("../tests/fixtures/batch-extras.msgpack");

/// The batch the fixtures' `roundtrip_batch` builds.
fn roundtrip_batch() -> EventBatch {
    let mut first: Vec<u32> = (0..16).collect();
    first.extend([151_643; 16]);
    EventBatch {
        ts: 1_765_152_000.25,
        events: vec![
            Event::BlockStored(BlockStored {
                block_hashes: vec![0x1234_5678_9ABC_DEF0, u64::MAX],
                parent_block_hash: None,
                token_ids: first,
                block_size: 16,
                lora_id: None,
                medium: Some(Medium::Gpu),
                lora_name: None,
                group_idx: None,
            }),
            Event::BlockStored(BlockStored {
                block_hashes: vec![42],
                parent_block_hash: Some(u64::MAX),
                token_ids: (100..116).collect(),
                block_size: 16,
                lora_id: Some(7),
                medium: Some(Medium::Gpu),
                lora_name: Some("travel-helper-v1".into()),
                group_idx: Some(0),
            }),
            Event::BlockRemoved(BlockRemoved {
                block_hashes: vec![0x1234_5678_9ABC_DEF0],
                medium: Some(Medium::Gpu),
                group_idx: None,
            }),
            Event::BlockRemoved(BlockRemoved {
                block_hashes: vec![42, u64::MAX],
                medium: Some(Medium::Cpu),
                group_idx: Some(1),
            }),
            Event::AllBlocksCleared,
        ],
        data_parallel_rank: Some(0),
    }
}

#[test]
fn msgspec_bytes_decode_field_by_field_in_both_layouts() {
    assert_eq!(decode_batch(MAP), Ok(roundtrip_batch()));
    assert_eq!(decode_batch(ARRAY), Ok(roundtrip_batch()));
}

#[test]
fn the_encoder_writes_msgspec_s_bytes() {
    assert_eq!(encode_batch(&roundtrip_batch(), Layout::Map), MAP);
    assert_eq!(encode_batch(&roundtrip_batch(), Layout::Array), ARRAY);
}

#[test]
fn byte_hashes_extra_keys_and_unknown_fields_decode() {
    let batch = decode_batch(EXTRAS).expect("decodes");
    // sha256-sized hash bytes 0..32: the low 64 bits are bytes 24..32, big-endian.
    let low = u64::from_be_bytes([24, 25, 26, 27, 28, 29, 30, 31]);
    assert_eq!(batch.data_parallel_rank, None);
    assert_eq!(
        batch.events,
        vec![
            Event::BlockStored(BlockStored {
                block_hashes: vec![low],
                parent_block_hash: None,
                token_ids: (0..16).collect(),
                block_size: 16,
                lora_id: None,
                medium: Some(Medium::Gpu),
                lora_name: Some("travel-helper-v2".into()),
                group_idx: None,
            }),
            Event::BlockRemoved(BlockRemoved {
                block_hashes: vec![low],
                medium: None,
                group_idx: None,
            }),
        ]
    );
}

#[test]
fn every_truncation_of_a_batch_is_an_error() {
    for cut in 0..MAP.len() {
        assert!(decode_batch(&MAP[..cut]).is_err(), "cut at {cut}");
    }
    for cut in 0..ARRAY.len() {
        assert!(decode_batch(&ARRAY[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn malformed_batches_say_what_is_wrong() {
    let error = |bytes: &[u8]| decode_batch(bytes).unwrap_err().what;
    // Trailing bytes.
    let mut trailing = MAP.to_vec();
    trailing.push(0xc0);
    assert!(error(&trailing).contains("after the batch"));
    // An array of 2^32 − 1 events in a few bytes: refused before anything is allocated.
    let huge = [
        0x82, 0xa2, b't', b's', 0x00, 0xa6, b'e', b'v', b'e', b'n', b't', b's', 0xdd, 0xff, 0xff,
        0xff, 0xff,
    ];
    assert!(error(&huge).contains("more elements than the payload holds"));
    // A number where a map or an array belongs.
    assert!(error(&[0x01]).contains("map or an array"));
    // A map without `events`.
    assert!(error(&[0x81, 0xa2, b't', b's', 0x00]).contains("lacks"));
    // An unknown event type.
    let unknown = encode_batch(
        &EventBatch {
            ts: 0.0,
            events: vec![Event::AllBlocksCleared],
            data_parallel_rank: None,
        },
        Layout::Array,
    );
    let at = unknown
        .windows(16)
        .position(|w| w == b"AllBlocksCleared")
        .expect("the tag");
    let mut renamed = unknown.clone();
    renamed[at..at + 16].copy_from_slice(b"AllBlocksCleaned");
    assert!(error(&renamed).contains("unknown event type `AllBlocksCleaned`"));
    // Values nested past the limit inside a skipped field.
    let mut deep = vec![
        0x83, 0xa2, b't', b's', 0x00, 0xa6, b'e', b'v', b'e', b'n', b't', b's', 0x90,
    ];
    deep.extend([0xa1, b'x']);
    deep.extend([0x91; 40]);
    deep.push(0x00);
    assert!(error(&deep).contains("nested too deep"));
}

#[test]
fn frames_carry_topic_sequence_and_payload() {
    let payload = encode_batch(&roundtrip_batch(), Layout::Map);
    let message = Message {
        topic: b"kv@10.0.0.1:8000@qwen",
        seq: 7,
        payload: &payload,
    };
    let frames = message.frames();
    assert_eq!(frames[1], [0, 0, 0, 0, 0, 0, 0, 7]);
    let borrowed: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(Message::from_frames(&borrowed), Ok(message));
    assert_eq!(
        Message::from_frames(&borrowed[..2]),
        Err(FrameError::FrameCount(2))
    );
    assert_eq!(
        Message::from_frames(&[b"t", &[1, 2], b""]),
        Err(FrameError::Sequence(2))
    );
    let [delimiter, start] = replay_request(5);
    assert!(delimiter.is_empty());
    assert_eq!(start, 5u64.to_be_bytes());
    assert_eq!(
        ReplayReply::from_frames(&[b"", &5u64.to_be_bytes(), b"p"]),
        Ok(ReplayReply::Batch {
            seq: 5,
            payload: b"p"
        })
    );
    assert_eq!(
        ReplayReply::from_frames(&[b"", &[0xff; 8], b""]),
        Ok(ReplayReply::End)
    );
}

fn medium() -> impl Strategy<Value = Option<Medium>> {
    prop_oneof![
        Just(None),
        Just(Some(Medium::Gpu)),
        Just(Some(Medium::Cpu)),
        "[a-z]{1,8}".prop_map(|name| Some(Medium::from_name(&name))),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let stored = (
        proptest::collection::vec(any::<u64>(), 0..4),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(any::<u32>(), 0..40),
        1u32..1024,
        proptest::option::of(any::<i64>()),
        medium(),
        proptest::option::of("[a-z0-9-]{0,20}"),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(
            |(block_hashes, parent, token_ids, block_size, lora_id, medium, lora_name, group)| {
                Event::BlockStored(BlockStored {
                    block_hashes,
                    parent_block_hash: parent,
                    token_ids,
                    block_size,
                    lora_id,
                    medium,
                    lora_name,
                    group_idx: group,
                })
            },
        );
    let removed = (
        proptest::collection::vec(any::<u64>(), 0..4),
        medium(),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(block_hashes, medium, group_idx)| {
            Event::BlockRemoved(BlockRemoved {
                block_hashes,
                medium,
                group_idx,
            })
        });
    prop_oneof![stored, removed, Just(Event::AllBlocksCleared)]
}

proptest! {
    /// Whatever the batch, both layouts decode back to it.
    #[test]
    fn encoding_round_trips(
        ts in -1e12f64..1e12,
        events in proptest::collection::vec(event(), 0..6),
        rank in proptest::option::of(any::<i64>()),
    ) {
        let batch = EventBatch { ts, events, data_parallel_rank: rank };
        for layout in [Layout::Map, Layout::Array] {
            prop_assert_eq!(decode_batch(&encode_batch(&batch, layout)), Ok(batch.clone()));
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_batch(&bytes);
    }

    /// Real batches with bytes overwritten, inserted or removed: decoded or refused, and what
    /// decodes encodes and decodes to the same events.
    #[test]
    fn damaged_batches_are_answered(
        array in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = if array { ARRAY.to_vec() } else { MAP.to_vec() };
        for (at, byte, kind) in edits {
            let at = at.index(bytes.len());
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        if let Ok(batch) = decode_batch(&bytes) {
            let again = decode_batch(&encode_batch(&batch, Layout::Map)).expect("re-encoded");
            prop_assert_eq!(again.events, batch.events);
        }
    }
}
