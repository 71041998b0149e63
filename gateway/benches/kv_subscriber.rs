//! CPU the KV-event subscriber costs: 100 endpoints, each publishing one batch per engine step
//! (a block stored, one removed: what a busy pod's step reports) every 40 ms, i.e. 2,500 batches
//! per second, for 10 seconds. The publishers run in a child process (this binary again), so the
//! figure is the subscriber's process alone: its thread plus libzmq's I/O thread, from
//! `/proc/self/task/*/stat`, as a percentage of one core.
//!
//! `cargo bench -p inference-gateway --bench kv_subscriber [-- ENDPOINTS BATCHES_PER_SECOND SECONDS]`

use std::time::{Duration, Instant};

use gateway::kv_events::{EventSource, Subscriber};
use kvevents::{BlockRemoved, BlockStored, Event, EventBatch, Layout, Medium, encode_batch};

const TOPIC: &[u8] = b"kv";

fn batch(endpoint: u64, n: u64) -> Vec<u8> {
    let hash = (endpoint << 40) | n;
    encode_batch(
        &EventBatch {
            ts: n as f64,
            events: vec![
                Event::BlockStored(BlockStored {
                    block_hashes: vec![hash],
                    parent_block_hash: None,
                    token_ids: (0..16).map(|t| t + n as u32).collect(),
                    block_size: 16,
                    medium: Some(Medium::Gpu),
                    ..BlockStored::default()
                }),
                Event::BlockRemoved(BlockRemoved {
                    block_hashes: vec![hash.wrapping_sub(5_000)],
                    medium: Some(Medium::Gpu),
                    group_idx: None,
                }),
            ],
            data_parallel_rank: Some(0),
        },
        Layout::Map,
    )
}

/// The child: bind a PUB socket on each of `ports`, then publish round-robin at `rate` batches
/// per second until killed.
fn publish(ports: &[u16], rate: f64) {
    let context = zmq::Context::new();
    let sockets: Vec<zmq::Socket> = ports
        .iter()
        .map(|port| {
            let socket = context.socket(zmq::PUB).unwrap();
            socket.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();
            socket
        })
        .collect();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut seqs = vec![0u64; sockets.len()];
    for sent in 0u64.. {
        let due = started + interval.mul_f64(sent as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let i = (sent % sockets.len() as u64) as usize;
        let payload = batch(i as u64, seqs[i]);
        let frames: [&[u8]; 3] = [TOPIC, &seqs[i].to_be_bytes(), &payload];
        sockets[i].send_multipart(frames, 0).unwrap();
        seqs[i] += 1;
    }
}

/// CPU seconds (user + system) of each of this process's threads, by thread id.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which ends with ')'): utime is the 12th and stime
        // the 13th of them.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        let cpu = (at(11).unwrap_or(0.0) + at(12).unwrap_or(0.0)) / ticks;
        threads.insert(task.file_name().to_string_lossy().into_owned(), cpu);
    }
    threads
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--publish") {
        let ports: Vec<u16> = args[at + 1]
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        publish(&ports, args[at + 2].parse().unwrap());
        return;
    }
    let numbers: Vec<f64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let endpoints = numbers.first().copied().unwrap_or(100.0) as u16;
    let rate = numbers.get(1).copied().unwrap_or(2_500.0);
    let seconds = numbers.get(2).copied().unwrap_or(10.0);
    // Free ports, held until all are chosen so none repeats.
    let listeners: Vec<std::net::TcpListener> = (0..endpoints)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(listeners);
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--publish", &list.join(","), &rate.to_string()])
        .spawn()
        .expect("the publisher process");
    let subscriber = Subscriber::start(1_000_000).unwrap();
    for (i, port) in ports.iter().enumerate() {
        subscriber.watch(
            i as u32,
            EventSource {
                publisher: format!("tcp://127.0.0.1:{port}"),
                replay: None,
                topic: TOPIC.to_vec(),
            },
        );
    }
    let joined = Instant::now();
    while !(0..endpoints).all(|i| subscriber.receiving(u32::from(i))) {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "not every endpoint arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = subscriber.stats();
    let batches = || stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    let (before, applied, started) = (thread_cpu(), batches(), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (after, applied, wall) = (
        thread_cpu(),
        batches() - applied,
        started.elapsed().as_secs_f64(),
    );
    let mut busy: Vec<f64> = after
        .iter()
        .map(|(tid, cpu)| cpu - before.get(tid).copied().unwrap_or(0.0))
        .filter(|cpu| *cpu > 0.0)
        .collect();
    busy.sort_by(|a, b| b.total_cmp(a));
    let cpu: f64 = busy.iter().sum();
    let _ = child.kill();
    let _ = child.wait();
    let threads: Vec<String> = busy
        .iter()
        .map(|cpu| format!("{:.2}%", cpu / wall * 100.0))
        .collect();
    println!(
        "{endpoints} endpoints, {:.0} batches/s applied over {wall:.1} s: subscriber process CPU {:.2}% of a core (busiest threads {}; {:.2} µs per batch); gaps {}, malformed {}",
        applied as f64 / wall,
        cpu / wall * 100.0,
        threads.join(", "),
        cpu / applied.max(1) as f64 * 1e6,
        stats.gaps.load(std::sync::atomic::Ordering::Relaxed),
        stats.malformed.load(std::sync::atomic::Ordering::Relaxed),
    );
}
