//! The simulator's KV-cache events over real ZeroMQ sockets (libzmq on both sides), decoded with
//! `kvevents`: blocks stored when a prefill fills them, removed when evicted, sequence numbers
//! from 0 without gaps, and the replay socket's answer. Conditions are awaited with a deadline.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::{DEADLINE, TestSim, start};
use kvevents::{Event, EventBatch, Medium, Message, ReplayReply, decode_batch, replay_request};
use loadtest::sim::tokenizer::prompt_with_exact_tokens;
use serde_json::json;

const TOPIC: &[u8] = b"kv@127.0.0.1:8000@qwen";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Events {
    sim: TestSim,
    sub: zmq::Socket,
    replay: String,
    _context: zmq::Context,
}

/// A simulator with `flags` publishing on fresh ports, and a subscriber that already receives.
async fn subscribed(flags: &[&str]) -> Events {
    let (publish, replay) = (free_port(), free_port());
    let config = json!({
        "enable_kv_cache_events": true,
        "publisher": "zmq",
        "endpoint": format!("tcp://*:{publish}"),
        "replay_endpoint": format!("tcp://*:{replay}"),
        "topic": String::from_utf8_lossy(TOPIC),
    })
    .to_string();
    let mut argv = vec!["--kv-events-config", config.as_str()];
    argv.extend_from_slice(flags);
    let sim = start(&argv).await;
    let context = zmq::Context::new();
    let sub = context.socket(zmq::SUB).unwrap();
    sub.set_rcvtimeo(100).unwrap();
    sub.connect(&format!("tcp://127.0.0.1:{publish}")).unwrap();
    sub.set_subscribe(TOPIC).unwrap();
    // A subscription reaches the publisher some time after connecting (ZeroMQ's slow joiner):
    // send requests until one's events arrive.
    let started = Instant::now();
    let mut seed = 1_000;
    loop {
        assert!(started.elapsed() < DEADLINE, "no KV event arrived");
        complete(&sim, &prompt_with_exact_tokens(32, seed)).await;
        seed += 1;
        if sub.recv_multipart(0).is_ok() {
            break;
        }
    }
    Events {
        sim,
        sub,
        replay: format!("tcp://127.0.0.1:{replay}"),
        _context: context,
    }
}

async fn complete(sim: &TestSim, prompt: &str) {
    let (status, body) = sim
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 1, "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn tokens_of(sim: &TestSim, prompt: &str) -> Vec<u32> {
    let (status, body) = sim.post("/tokenize", &json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

impl Events {
    /// The next message: its sequence number and batch (the topic checked).
    fn next(&self) -> Option<(u64, EventBatch)> {
        let frames = self.sub.recv_multipart(0).ok()?;
        let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let message = Message::from_frames(&frames).expect("three frames");
        assert_eq!(message.topic, TOPIC);
        Some((message.seq, decode_batch(message.payload).expect("decodes")))
    }

    /// Messages until `found` returns something, within the deadline.
    fn until<T>(&self, mut found: impl FnMut(u64, &EventBatch) -> Option<T>) -> T {
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            if let Some((seq, batch)) = self.next()
                && let Some(value) = found(seq, &batch)
            {
                return value;
            }
        }
        panic!("the expected KV event did not arrive");
    }

    /// Every batch the replay socket holds from `start` on, in order.
    fn replay_from(&self, start: u64) -> Vec<(u64, EventBatch)> {
        let dealer = self._context.socket(zmq::DEALER).unwrap();
        dealer.set_rcvtimeo(DEADLINE.as_millis() as i32).unwrap();
        dealer.connect(&self.replay).unwrap();
        dealer.send_multipart(replay_request(start), 0).unwrap();
        let mut batches = Vec::new();
        loop {
            let frames = dealer.recv_multipart(0).expect("a replay reply");
            let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            match ReplayReply::from_frames(&frames).expect("replay frames") {
                ReplayReply::Batch { seq, payload } => {
                    batches.push((seq, decode_batch(payload).expect("decodes")));
                }
                ReplayReply::End => return batches,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_stores_its_full_blocks_and_the_replay_has_every_batch() {
    let events = subscribed(&[]).await;
    // 40 tokens: two full blocks of 16 are stored, the last 8 tokens are not a block.
    let prompt = prompt_with_exact_tokens(40, 7);
    let tokens = tokens_of(&events.sim, &prompt).await;
    assert_eq!(tokens.len(), 40);
    complete(&events.sim, &prompt).await;
    let (seq, stored) = events.until(|seq, batch| {
        batch.events.iter().find_map(|event| match event {
            Event::BlockStored(stored) if stored.token_ids[..] == tokens[..32] => {
                Some((seq, stored.clone()))
            }
            _ => None,
        })
    });
    assert_eq!(stored.block_hashes.len(), 2);
    assert_eq!(stored.parent_block_hash, None);
    assert_eq!(stored.block_size, 16);
    assert_eq!(stored.medium, Some(Medium::Gpu));
    assert_eq!((stored.lora_id, stored.lora_name), (None, None));

    // The same prompt again: a cache hit stores nothing new; a longer one sharing it stores only
    // its new block, chained to the second.
    let longer = format!("{prompt}{}", prompt_with_exact_tokens(8, 8));
    let longer_tokens = tokens_of(&events.sim, &longer).await;
    assert_eq!(longer_tokens[..40], tokens[..]);
    complete(&events.sim, &longer).await;
    let extension = events.until(|_, batch| {
        batch.events.iter().find_map(|event| match event {
            Event::BlockStored(s) if s.parent_block_hash == Some(stored.block_hashes[1]) => {
                Some(s.clone())
            }
            _ => None,
        })
    });
    assert_eq!(extension.token_ids[..], longer_tokens[32..48]);

    // Everything published so far, from sequence 0 without a gap, the batches above included.
    let replayed = events.replay_from(0);
    let seqs: Vec<u64> = replayed.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.contains(&seq));
    assert!(
        replayed
            .iter()
            .all(|(_, b)| b.data_parallel_rank == Some(0))
    );
    let from_seq = events.replay_from(seq);
    assert_eq!(from_seq.first().map(|(s, _)| *s), Some(seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_removes_blocks_that_were_stored() {
    // 20 blocks (19 usable, 304 tokens): a few 64-token prompts evict the first ones' blocks.
    let events = subscribed(&["--num-gpu-blocks-override", "20", "--max-model-len", "256"]).await;
    let mut seed = 50;
    let removed = loop {
        complete(&events.sim, &prompt_with_exact_tokens(64, seed)).await;
        seed += 1;
        let mut removed = None;
        while let Some((_, batch)) = events.next() {
            for event in &batch.events {
                if let Event::BlockRemoved(r) = event
                    && removed.is_none()
                {
                    removed = Some(r.clone());
                }
            }
        }
        if let Some(removed) = removed {
            break removed;
        }
        assert!(seed < 80, "no block was evicted");
    };
    assert_eq!(removed.medium, Some(Medium::Gpu));
    // Every block published so far, the ones sent before the subscription took hold included.
    let mut stored = HashSet::new();
    for (_, batch) in events.replay_from(0) {
        for event in &batch.events {
            if let Event::BlockStored(s) = event {
                stored.extend(s.block_hashes.iter().copied());
            }
        }
    }
    assert!(
        removed.block_hashes.iter().all(|h| stored.contains(h)),
        "only stored blocks are removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_the_prefix_cache_clears_every_block() {
    let events = subscribed(&[]).await;
    // Every request is done (each `complete` waited for its answer): nothing holds blocks.
    let (status, _) = events.sim.post("/reset_prefix_cache", &json!({})).await;
    assert_eq!(status, 200);
    events.until(|_, batch| {
        batch
            .events
            .contains(&Event::AllBlocksCleared)
            .then_some(())
    });
    // The cache starts over: the same prompt is stored again.
    let prompt = prompt_with_exact_tokens(32, 1_000);
    complete(&events.sim, &prompt).await;
    let tokens = tokens_of(&events.sim, &prompt).await;
    events.until(|_, batch| {
        batch.events.iter().find_map(|event| match event {
            Event::BlockStored(s) if s.token_ids[..] == tokens[..32] => Some(()),
            _ => None,
        })
    });
}
