//! KV-cache events published as vLLM publishes them (`--kv-events-config`).
//!
//! The engine logs `BlockStored` when a step fills blocks and registers them in the prefix cache
//! and `BlockRemoved` when allocation evicts a cached block ([`crate::sim::engine`]); the engine
//! loop hands each step's events to the [`Publisher`] as one batch. The publisher runs on its own
//! thread, like vLLM's: it encodes the batch with msgpack in vLLM's current layout, sends
//! `[topic, sequence (8 bytes, big-endian, from 0), payload]` on a ZeroMQ PUB socket (libzmq, as
//! pyzmq uses), keeps the last `buffer_steps` payloads, and answers replay requests on a ROUTER
//! socket when `replay_endpoint` is set: every buffered batch from the asked sequence on, then
//! an end marker (sequence −1, empty payload). As in vLLM, an endpoint with `*`, `::`, `ipc://` or
//! `inproc://` is bound and any other is connected to.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use kvevents::{EventBatch, Layout, REPLAY_END, encode_batch};
use serde::Deserialize;

/// vLLM's `KVEventsConfig`, read from the flag's JSON (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Whether the engine logs KV events at all.
    pub enable_kv_cache_events: bool,
    /// `zmq` or `null`; unset, `zmq` when events are enabled.
    pub publisher: Option<String>,
    /// The PUB socket's address.
    pub endpoint: String,
    /// The ROUTER socket's address for replays, if any.
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    pub buffer_steps: usize,
    /// The PUB socket's send high-water mark (messages).
    pub hwm: i32,
    /// Batches waiting for the publisher thread at most; a step's batch beyond that is dropped
    /// (and counted) instead of stalling the engine.
    pub max_queue_size: usize,
    /// The topic frame.
    pub topic: String,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            enable_kv_cache_events: false,
            publisher: None,
            endpoint: "tcp://*:5557".into(),
            replay_endpoint: None,
            buffer_steps: 10_000,
            hwm: 100_000,
            max_queue_size: 100_000,
            topic: String::new(),
        }
    }
}

impl KvEventsConfig {
    /// Parse the flag's JSON.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: KvEventsConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match config.publisher.as_deref() {
            None | Some("zmq" | "null") => {}
            Some(other) => return Err(format!("unknown publisher `{other}` (zmq or null)")),
        }
        if config.buffer_steps == 0 || config.max_queue_size == 0 {
            return Err("buffer_steps and max_queue_size must be positive".into());
        }
        Ok(config)
    }

    /// Whether events are logged and published over ZeroMQ.
    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher.as_deref().unwrap_or("zmq") == "zmq"
    }
}

/// `endpoint` as bound by a simulated pod whose only address is `host`: a `*` in a TCP endpoint
/// (all of the pod's interfaces, in vLLM) becomes `host`, so simulators on several loopback
/// addresses of one machine each publish on their own address and the same port, as pods of one
/// pool do. A host of `0.0.0.0` or `::` (every interface) leaves the endpoint as it is.
fn on_host(endpoint: &str, host: &str) -> String {
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return endpoint.to_owned();
    };
    match endpoint.strip_prefix("tcp://*:") {
        Some(port) if !ip.is_unspecified() => match ip {
            std::net::IpAddr::V4(ip) => format!("tcp://{ip}:{port}"),
            std::net::IpAddr::V6(ip) => format!("tcp://[{ip}]:{port}"),
        },
        _ => endpoint.to_owned(),
    }
}

/// Whether vLLM binds `endpoint` (else it connects).
fn binds(endpoint: &str) -> bool {
    endpoint.contains('*')
        || endpoint.contains("::")
        || endpoint.starts_with("ipc://")
        || endpoint.starts_with("inproc://")
}

/// The publisher thread's handle; dropping it lets the thread finish what is queued and exit.
pub struct Publisher {
    queue: Option<SyncSender<EventBatch>>,
    thread: Option<JoinHandle<()>>,
    dropped: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Publisher {
    /// Open the sockets of a simulated pod at `host` ([`on_host`]; errors, such as a port in
    /// use, surface here) and start the thread.
    pub fn start(config: &KvEventsConfig, host: &str) -> Result<Publisher, String> {
        let context = zmq::Context::new();
        let publish = context.socket(zmq::PUB).map_err(|e| e.to_string())?;
        publish.set_sndhwm(config.hwm).map_err(|e| e.to_string())?;
        let opened = if binds(&config.endpoint) {
            publish.bind(&on_host(&config.endpoint, host))
        } else {
            publish.connect(&config.endpoint)
        };
        opened.map_err(|e| format!("{}: {e}", config.endpoint))?;
        let replay = match &config.replay_endpoint {
            Some(endpoint) => {
                let router = context.socket(zmq::ROUTER).map_err(|e| e.to_string())?;
                router
                    .bind(&on_host(endpoint, host))
                    .map_err(|e| format!("{endpoint}: {e}"))?;
                Some(router)
            }
            None => None,
        };
        let (queue, batches) = sync_channel(config.max_queue_size);
        let thread = PublisherThread {
            publish,
            replay,
            topic: config.topic.clone().into_bytes(),
            buffer: VecDeque::new(),
            buffer_steps: config.buffer_steps,
            next_seq: 0,
        };
        let thread = std::thread::Builder::new()
            .name("kv-events".into())
            .spawn(move || thread.run(batches))
            .map_err(|e| e.to_string())?;
        Ok(Publisher {
            queue: Some(queue),
            thread: Some(thread),
            dropped: 0,
        })
    }

    /// Queue one step's batch; a full queue drops it (counted).
    pub fn publish(&mut self, batch: EventBatch) {
        if let Some(queue) = &self.queue
            && let Err(TrySendError::Full(_)) = queue.try_send(batch)
        {
            self.dropped += 1;
            tracing::warn!(dropped = self.dropped, "KV event queue full; batch dropped");
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct PublisherThread {
    publish: zmq::Socket,
    replay: Option<zmq::Socket>,
    topic: Vec<u8>,
    buffer: VecDeque<(u64, Vec<u8>)>,
    buffer_steps: usize,
    next_seq: u64,
}

impl PublisherThread {
    fn run(mut self, batches: Receiver<EventBatch>) {
        loop {
            self.serve_replays();
            match batches.recv_timeout(Duration::from_millis(100)) {
                Ok(batch) => self.send(&batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn send(&mut self, batch: &EventBatch) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload = encode_batch(batch, Layout::Map);
        let frames: [&[u8]; 3] = [&self.topic, &seq.to_be_bytes(), &payload];
        if let Err(error) = self.publish.send_multipart(frames, 0) {
            tracing::warn!(%error, seq, "KV event batch not sent");
        }
        self.buffer.push_back((seq, payload));
        if self.buffer.len() > self.buffer_steps {
            self.buffer.pop_front();
        }
    }

    /// Answer every replay request waiting on the ROUTER socket.
    fn serve_replays(&mut self) {
        let Some(router) = &self.replay else {
            return;
        };
        while router.poll(zmq::POLLIN, 0).unwrap_or(0) > 0 {
            let Ok(frames) = router.recv_multipart(0) else {
                return;
            };
            let [identity, _delimiter, start] = frames.as_slice() else {
                tracing::warn!(frames = frames.len(), "invalid KV event replay request");
                continue;
            };
            let Ok(start) = <[u8; 8]>::try_from(start.as_slice()) else {
                tracing::warn!("invalid KV event replay start");
                continue;
            };
            let start = u64::from_be_bytes(start);
            for (seq, payload) in self.buffer.iter().filter(|(seq, _)| *seq >= start) {
                let frames: [&[u8]; 4] = [identity, b"", &seq.to_be_bytes(), payload];
                let _ = router.send_multipart(frames, 0);
            }
            let end: [&[u8]; 4] = [identity, b"", &REPLAY_END.to_be_bytes(), b""];
            let _ = router.send_multipart(end, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_reads_vllm_s_json() {
        let config = KvEventsConfig::parse(
            r#"{"enable_kv_cache_events": true, "endpoint": "tcp://*:6000", "topic": "kv"}"#,
        )
        .unwrap();
        assert!(config.publishes());
        assert_eq!((config.buffer_steps, config.hwm), (10_000, 100_000));
        assert_eq!(config.replay_endpoint, None);
        let off = KvEventsConfig::parse(r#"{"enable_kv_cache_events": false}"#).unwrap();
        assert!(!off.publishes());
        let null =
            KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "publisher": "null"}"#)
                .unwrap();
        assert!(!null.publishes());
        assert!(KvEventsConfig::parse(r#"{"publisher": "kafka"}"#).is_err());
        assert!(KvEventsConfig::parse(r#"{"enable_kv_cache_event": true}"#).is_err());
        assert!(KvEventsConfig::parse(r#"{"buffer_steps": 0}"#).is_err());
    }

    #[test]
    fn a_simulated_pod_binds_its_own_address() {
        assert_eq!(on_host("tcp://*:5557", "127.0.0.5"), "tcp://127.0.0.5:5557");
        assert_eq!(on_host("tcp://*:5557", "::1"), "tcp://[::1]:5557");
        assert_eq!(on_host("tcp://*:5557", "0.0.0.0"), "tcp://*:5557");
        assert_eq!(on_host("ipc:///tmp/kv", "127.0.0.5"), "ipc:///tmp/kv");
    }

    #[test]
    fn wildcards_bind_and_addresses_connect() {
        assert!(binds("tcp://*:5557"));
        assert!(binds("tcp://[::]:5557"));
        assert!(binds("ipc:///tmp/kv"));
        assert!(!binds("tcp://10.0.0.1:5557"));
    }
}
