//! The gateway's KV-event subscriber over real libzmq sockets: against a publisher the test
//! controls (sequence numbers skipped, a buffer that no longer reaches back, a restart) and
//! against the simulator publishing as vLLM does. Conditions are awaited with a deadline.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use gateway::kv_events::{EventSource, Subscriber};
use kvevents::{
    BlockStored, Event, EventBatch, Layout, Medium, REPLAY_END, encode_batch, prompt_keys,
};

const DEADLINE: Duration = Duration::from_secs(20);
const SIZE: usize = 16;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The tokens of prompt `n`: two blocks.
fn prompt(n: u32) -> Vec<u32> {
    (0..2 * SIZE as u32).map(|t| n * 1_000 + t).collect()
}

/// A batch storing prompt `n`'s two blocks (engine hashes 2n, 2n + 1).
fn stores(n: u32) -> Vec<u8> {
    let batch = EventBatch {
        ts: 0.0,
        events: vec![Event::BlockStored(BlockStored {
            block_hashes: vec![2 * u64::from(n), 2 * u64::from(n) + 1],
            parent_block_hash: None,
            token_ids: prompt(n),
            block_size: SIZE as u32,
            medium: Some(Medium::Gpu),
            ..BlockStored::default()
        })],
        data_parallel_rank: Some(0),
    };
    encode_batch(&batch, Layout::Map)
}

enum Publish {
    /// Send batch `seq` (and keep it for replay).
    Send(u64, Vec<u8>),
    /// Keep batch `seq` for replay without sending it (a message dropped on the way).
    Drop(u64, Vec<u8>),
    /// Forget every kept batch before `seq` (the replay buffer moved on).
    Trim(u64),
}

/// A publisher under the test's control, on its own thread: a PUB socket and a replay ROUTER.
struct Publisher {
    commands: Option<Sender<Publish>>,
    thread: Option<std::thread::JoinHandle<()>>,
    source: EventSource,
}

impl Publisher {
    fn start(topic: &str) -> Publisher {
        let (publish_port, replay_port) = (free_port(), free_port());
        let (commands, received) = channel();
        let thread = std::thread::spawn(move || serve(publish_port, replay_port, received));
        Publisher {
            commands: Some(commands),
            thread: Some(thread),
            source: EventSource {
                publisher: format!("tcp://127.0.0.1:{publish_port}"),
                replay: Some(format!("tcp://127.0.0.1:{replay_port}")),
                topic: topic.as_bytes().to_vec(),
            },
        }
    }

    fn send(&self, command: Publish) {
        self.commands.as_ref().unwrap().send(command).unwrap();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(publish_port: u16, replay_port: u16, commands: Receiver<Publish>) {
    let context = zmq::Context::new();
    let publish = context.socket(zmq::PUB).unwrap();
    publish.set_linger(0).unwrap();
    publish.bind(&format!("tcp://*:{publish_port}")).unwrap();
    let router = context.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind(&format!("tcp://*:{replay_port}")).unwrap();
    let topic = b"kv@test";
    let mut kept: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    loop {
        while router.poll(zmq::POLLIN, 0).unwrap_or(0) > 0 {
            let frames = router.recv_multipart(0).unwrap();
            let start = u64::from_be_bytes(frames[2].as_slice().try_into().unwrap());
            for (seq, payload) in kept.iter().filter(|(seq, _)| *seq >= start) {
                let reply: [&[u8]; 4] = [&frames[0], b"", &seq.to_be_bytes(), payload];
                router.send_multipart(reply, 0).unwrap();
            }
            let end: [&[u8]; 4] = [&frames[0], b"", &REPLAY_END.to_be_bytes(), b""];
            router.send_multipart(end, 0).unwrap();
        }
        match commands.recv_timeout(Duration::from_millis(5)) {
            Ok(Publish::Send(seq, payload)) => {
                let frames: [&[u8]; 3] = [topic, &seq.to_be_bytes(), &payload];
                publish.send_multipart(frames, 0).unwrap();
                kept.push_back((seq, payload));
            }
            Ok(Publish::Drop(seq, payload)) => kept.push_back((seq, payload)),
            Ok(Publish::Trim(before)) => kept.retain(|(seq, _)| *seq >= before),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// `blocks` leading blocks on `endpoint`'s GPU.
fn gpu_run(endpoint: u32, blocks: usize) -> kvevents::PrefixMatch {
    kvevents::PrefixMatch {
        endpoint,
        gpu: blocks,
        total: blocks,
    }
}

fn holds(subscriber: &Subscriber, n: u32) -> bool {
    let keys = prompt_keys(&prompt(n), SIZE, None);
    subscriber.index().read().prefix_matches(&keys) == vec![gpu_run(0, 2)]
}

/// Publish batches from `next` on until the subscriber has received one (the subscription
/// reaches a PUB socket some time after connecting); returns the next sequence number.
fn until_received(publisher: &Publisher, subscriber: &Subscriber, mut next: u64) -> u64 {
    let started = Instant::now();
    while !subscriber.receiving(0) {
        assert!(started.elapsed() < DEADLINE, "no batch arrived");
        publisher.send(Publish::Send(next, stores(next as u32)));
        next += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    next
}

#[test]
fn a_joining_subscriber_replays_what_it_missed_and_a_gap_is_filled_from_the_replay() {
    let publisher = Publisher::start("kv@test");
    // Published before anyone listened.
    for seq in 0..3 {
        publisher.send(Publish::Send(seq, stores(seq as u32)));
    }
    let subscriber = Subscriber::start(10_000).unwrap();
    subscriber.watch(0, publisher.source.clone());
    let next = until_received(&publisher, &subscriber, 3);
    wait_until("the first batches replayed", || {
        (0..next as u32).all(|n| holds(&subscriber, n))
    });
    // Two batches lost on the way, the third arrives: the two come from the replay.
    publisher.send(Publish::Drop(next, stores(next as u32)));
    publisher.send(Publish::Drop(next + 1, stores(next as u32 + 1)));
    publisher.send(Publish::Send(next + 2, stores(next as u32 + 2)));
    wait_until("the gap filled", || {
        (next as u32..next as u32 + 3).all(|n| holds(&subscriber, n))
    });
    let stats = subscriber.stats();
    assert_eq!(stats.gaps.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.resets.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_gap_the_replay_cannot_fill_and_a_restart_forget_the_endpoint_s_blocks() {
    let publisher = Publisher::start("kv@test");
    let subscriber = Subscriber::start(10_000).unwrap();
    subscriber.watch(0, publisher.source.clone());
    let next = until_received(&publisher, &subscriber, 0);
    let before = next as u32 - 1;
    wait_until("the last batch applied", || holds(&subscriber, before));
    // A batch dropped and already gone from the replay buffer.
    publisher.send(Publish::Drop(next, stores(next as u32)));
    publisher.send(Publish::Trim(next + 1));
    publisher.send(Publish::Send(next + 1, stores(next as u32 + 1)));
    wait_until("the batch after the gap applied", || {
        holds(&subscriber, next as u32 + 1)
    });
    assert!(
        !holds(&subscriber, before),
        "blocks before the gap forgotten"
    );
    assert!(!holds(&subscriber, next as u32), "the lost batch unknown");
    // The publisher restarts: sequence 0 again, with an empty cache.
    publisher.send(Publish::Trim(u64::MAX));
    publisher.send(Publish::Send(0, stores(500)));
    wait_until("the restarted publisher's batch applied", || {
        holds(&subscriber, 500)
    });
    assert!(
        !holds(&subscriber, next as u32 + 1),
        "blocks from before the restart forgotten"
    );
    assert!(
        subscriber
            .stats()
            .resets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    // The endpoint leaves the pool: its blocks go.
    subscriber.unwatch(0);
    wait_until("the endpoint forgotten", || {
        subscriber.index().read().is_empty()
    });
}

/// The simulator publishing as vLLM does: a prompt's full blocks land in the index under the
/// keys the gateway computes from the prompt's token ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_s_events_index_a_prompt_under_its_token_keys() {
    use loadtest::client::StreamClient;
    use loadtest::sim::config::SimConfig;
    use loadtest::sim::server::SimServer;

    let publish = free_port();
    let events = serde_json::json!({
        "enable_kv_cache_events": true,
        "endpoint": format!("tcp://*:{publish}"),
        "topic": "kv@sim",
    })
    .to_string();
    let config = SimConfig::from_command_line([
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--time-scale",
        "1000",
        "--kv-events-config",
        events.as_str(),
    ])
    .expect("valid flags");
    let sim = SimServer::start(config).await.expect("bind");
    let base = format!("http://{}", sim.local_addr());
    let client = StreamClient::new(4);
    let post = |path: &str, body: serde_json::Value| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move {
            let (status, body) = client
                .request(http::Method::POST, &url, Some(body.to_string()))
                .await
                .expect("request");
            assert_eq!(status, 200);
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    let subscriber = Subscriber::start(10_000).unwrap();
    subscriber.watch(
        0,
        EventSource {
            publisher: format!("tcp://127.0.0.1:{publish}"),
            replay: None,
            topic: b"kv@sim".to_vec(),
        },
    );
    // Requests until the subscription has taken hold, then the one to find.
    let started = Instant::now();
    let mut n = 0;
    while !subscriber.receiving(0) {
        assert!(started.elapsed() < DEADLINE, "no batch arrived");
        let prompt = loadtest::sim::tokenizer::prompt_with_exact_tokens(32, n);
        post(
            "/v1/completions",
            serde_json::json!({"prompt": prompt, "max_tokens": 1}),
        )
        .await;
        n += 1;
    }
    let prompt = loadtest::sim::tokenizer::prompt_with_exact_tokens(70, 4_242);
    let tokens: Vec<u32> = post("/tokenize", serde_json::json!({"prompt": prompt})).await["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    post(
        "/v1/completions",
        serde_json::json!({"prompt": prompt, "max_tokens": 1}),
    )
    .await;
    // 70 tokens: four full blocks of 16.
    let keys = prompt_keys(&tokens, SIZE, None);
    assert_eq!(keys.len(), 4);
    let indexed = tokio::task::spawn_blocking(move || {
        wait_until("the prompt's blocks indexed", || {
            subscriber.index().read().prefix_matches(&keys) == vec![gpu_run(0, 4)]
        });
    });
    indexed.await.unwrap();
}
