//! The subscriber thread: model servers' KV-cache events into the [`BlockIndex`] they describe.
//!
//! One thread (`kv-events`) owns a libzmq SUB socket per watched endpoint, connected to the
//! address the pod's vLLM binds (`--kv-events-config` with `"endpoint": "tcp://*:5557"`), and
//! applies each batch to the shared index. Every replica of the gateway subscribes to every
//! endpoint itself, so all replicas hold the same index without talking to each other.
//!
//! Sequence numbers keep the index honest:
//! - the first batch from an endpoint: what it stored before is asked for from its replay socket
//!   (when configured), from sequence 0 as far as its buffer goes back, so an endpoint already
//!   warm is known at once;
//! - a gap (sequence numbers skipped, messages dropped at a high-water mark): the missing batches
//!   are replayed; if the replay cannot supply all of them, the endpoint's blocks are forgotten
//!   (a resync: they are learnt again from new stores);
//! - a sequence number lower than expected: the publisher restarted (vLLM restarts from 0 with an
//!   empty cache), so its blocks are forgotten before the batch (and what the restarted
//!   publisher's buffer holds before it) is applied.
//!
//! An endpoint no batch has come from since it was watched (not publishing, not reachable) is
//! reported by [`Subscriber::receiving`], and strategies use their own estimate for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use kvevents::{BlockIndex, EndpointSlot, Message, ReplayReply, decode_batch, replay_request};
use parking_lot::RwLock;

/// Where one endpoint publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    /// The PUB socket's address (`tcp://10.0.0.5:5557`).
    pub publisher: String,
    /// The replay ROUTER socket's address, if the server has one.
    pub replay: Option<String>,
    /// The topic its batches carry (a prefix filter for the subscription, checked exactly).
    pub topic: Vec<u8>,
}

/// How long a replay may take before the subscriber gives up on it.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the thread waits for messages before looking at its commands again.
const POLL: Duration = Duration::from_millis(50);
/// How long the thread lets messages gather after handling some, before polling again. Polling
/// asks every socket for its state, so with 100 endpoints one poll per message would cost more
/// than the messages; waking at most every 10 ms keeps the cost per message small while events
/// still reach the index well within a model server's step.
const COALESCE: Duration = Duration::from_millis(10);

/// Counters of the subscriber's work, for metrics.
#[derive(Debug, Default)]
pub struct SubscriberStats {
    /// Batches applied (replayed ones included).
    pub batches: AtomicU64,
    /// Payloads that did not decode, or messages that were not three frames.
    pub malformed: AtomicU64,
    /// Gaps in an endpoint's sequence numbers.
    pub gaps: AtomicU64,
    /// Replays asked for.
    pub replays: AtomicU64,
    /// Times an endpoint's blocks were forgotten (restart, unrecoverable gap, clear event).
    pub resets: AtomicU64,
    /// Stored blocks whose parent was unknown.
    pub orphans: AtomicU64,
}

enum Command {
    Watch(EndpointSlot, EventSource),
    Unwatch(EndpointSlot),
}

/// The subscriber thread's handle. Dropping it stops the thread.
pub struct Subscriber {
    commands: Option<Sender<Command>>,
    index: Arc<RwLock<BlockIndex>>,
    receiving: Arc<RwLock<HashMap<EndpointSlot, Arc<AtomicBool>>>>,
    stats: Arc<SubscriberStats>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("blocks", &self.index.read().len())
            .finish()
    }
}

impl Subscriber {
    /// Start the thread with an index of at most `max_blocks` (endpoint, block) entries.
    pub fn start(max_blocks: usize) -> std::io::Result<Subscriber> {
        let index = Arc::new(RwLock::new(BlockIndex::new(max_blocks)));
        let receiving = Arc::new(RwLock::new(HashMap::new()));
        let stats = Arc::new(SubscriberStats::default());
        let (commands, received) = channel();
        let worker = Worker {
            context: zmq::Context::new(),
            feeds: HashMap::new(),
            index: Arc::clone(&index),
            receiving: Arc::clone(&receiving),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("kv-events".into())
            .spawn(move || worker.run(received))?;
        Ok(Subscriber {
            commands: Some(commands),
            index,
            receiving,
            stats,
            thread: Some(thread),
        })
    }

    /// Subscribe to `slot`'s events at `source` (replacing an earlier source for it).
    pub fn watch(&self, slot: EndpointSlot, source: EventSource) {
        self.receiving
            .write()
            .insert(slot, Arc::new(AtomicBool::new(false)));
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Watch(slot, source));
        }
    }

    /// Stop listening to `slot` and forget its blocks (it left the pool).
    pub fn unwatch(&self, slot: EndpointSlot) {
        self.receiving.write().remove(&slot);
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Unwatch(slot));
        }
    }

    /// The index the events build.
    pub fn index(&self) -> &Arc<RwLock<BlockIndex>> {
        &self.index
    }

    /// Whether a batch has arrived from `slot` since it was watched: its events are flowing and
    /// its blocks in the index are the truth as far as the events reach.
    pub fn receiving(&self, slot: EndpointSlot) -> bool {
        self.receiving
            .read()
            .get(&slot)
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// The subscriber's counters.
    pub fn stats(&self) -> &SubscriberStats {
        &self.stats
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Feed {
    socket: zmq::Socket,
    source: EventSource,
    /// The sequence number expected next; `None` before the first message.
    next_seq: Option<u64>,
}

struct Worker {
    context: zmq::Context,
    feeds: HashMap<EndpointSlot, Feed>,
    index: Arc<RwLock<BlockIndex>>,
    receiving: Arc<RwLock<HashMap<EndpointSlot, Arc<AtomicBool>>>>,
    stats: Arc<SubscriberStats>,
}

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            loop {
                match commands.try_recv() {
                    Ok(Command::Watch(slot, source)) => self.watch(slot, source),
                    Ok(Command::Unwatch(slot)) => {
                        self.feeds.remove(&slot);
                        self.index.write().forget_endpoint(slot);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if self.feeds.is_empty() {
                match commands.recv_timeout(POLL) {
                    Ok(Command::Watch(slot, source)) => self.watch(slot, source),
                    Ok(Command::Unwatch(slot)) => {
                        self.index.write().forget_endpoint(slot);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            let slots: Vec<EndpointSlot> = self.feeds.keys().copied().collect();
            let ready: Vec<EndpointSlot> = {
                let mut items: Vec<zmq::PollItem<'_>> = slots
                    .iter()
                    .map(|slot| self.feeds[slot].socket.as_poll_item(zmq::POLLIN))
                    .collect();
                if zmq::poll(&mut items, POLL.as_millis() as i64).unwrap_or(0) <= 0 {
                    continue;
                }
                slots
                    .iter()
                    .zip(&items)
                    .filter(|(_, item)| item.is_readable())
                    .map(|(slot, _)| *slot)
                    .collect()
            };
            for slot in ready {
                while let Some(frames) = self
                    .feeds
                    .get(&slot)
                    .and_then(|feed| feed.socket.recv_multipart(zmq::DONTWAIT).ok())
                {
                    self.receive(slot, &frames);
                }
            }
            std::thread::sleep(COALESCE);
        }
    }

    fn watch(&mut self, slot: EndpointSlot, source: EventSource) {
        self.feeds.remove(&slot);
        self.index.write().clear_endpoint(slot);
        let socket = match self.context.socket(zmq::SUB) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "KV event socket");
                return;
            }
        };
        let subscribed = socket
            .set_rcvhwm(100_000)
            .and_then(|()| socket.connect(&source.publisher))
            .and_then(|()| socket.set_subscribe(&source.topic));
        if let Err(error) = subscribed {
            tracing::warn!(%error, publisher = %source.publisher, "KV event subscription failed");
            return;
        }
        self.feeds.insert(
            slot,
            Feed {
                socket,
                source,
                next_seq: None,
            },
        );
    }

    fn set_receiving(&self, slot: EndpointSlot) {
        if let Some(flag) = self.receiving.read().get(&slot) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn receive(&mut self, slot: EndpointSlot, frames: &[Vec<u8>]) {
        let borrowed: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let Some(feed) = self.feeds.get(&slot) else {
            return;
        };
        let message = match Message::from_frames(&borrowed) {
            Ok(message) if message.topic == feed.source.topic.as_slice() => message,
            Ok(_) => return,
            Err(_) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let (seq, expected) = (message.seq, feed.next_seq);
        match expected {
            Some(next) if seq == next => {}
            Some(next) if seq > next => {
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                if !self.replay(slot, next, seq) {
                    // What happened in between is unknown: start over from what comes next.
                    self.reset(slot);
                }
            }
            Some(_) => {
                // Lower than expected: the publisher restarted from 0 with an empty cache.
                self.reset(slot);
                self.replay(slot, 0, seq);
            }
            None => {
                // Joining: what the endpoint stored before, as far as its buffer goes back.
                self.replay(slot, 0, seq);
            }
        }
        self.apply(slot, message.payload);
        if let Some(feed) = self.feeds.get_mut(&slot) {
            feed.next_seq = Some(seq + 1);
        }
        self.set_receiving(slot);
    }

    /// Apply the batches `from..until` from the endpoint's replay socket; whether all of them
    /// came.
    fn replay(&mut self, slot: EndpointSlot, from: u64, until: u64) -> bool {
        if from >= until {
            return true;
        }
        let Some(address) = self.feeds.get(&slot).and_then(|f| f.source.replay.clone()) else {
            return false;
        };
        self.stats.replays.fetch_add(1, Ordering::Relaxed);
        let Ok(dealer) = self.context.socket(zmq::DEALER) else {
            return false;
        };
        let timeout = REPLAY_TIMEOUT.as_millis() as i32;
        let asked = dealer
            .set_rcvtimeo(timeout)
            .and_then(|()| dealer.set_sndtimeo(timeout))
            .and_then(|()| dealer.set_linger(0))
            .and_then(|()| dealer.connect(&address))
            .and_then(|()| dealer.send_multipart(replay_request(from), 0));
        if asked.is_err() {
            return false;
        }
        let mut expected = from;
        loop {
            let Ok(frames) = dealer.recv_multipart(0) else {
                return false;
            };
            let borrowed: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            match ReplayReply::from_frames(&borrowed) {
                Ok(ReplayReply::Batch { seq, payload }) => {
                    if seq >= until {
                        continue;
                    }
                    if seq != expected {
                        // The buffer no longer holds the start.
                        return false;
                    }
                    self.apply(slot, payload);
                    expected += 1;
                }
                Ok(ReplayReply::End) => return expected == until,
                Err(_) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }

    fn reset(&mut self, slot: EndpointSlot) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        self.index.write().clear_endpoint(slot);
    }

    fn apply(&mut self, slot: EndpointSlot, payload: &[u8]) {
        let batch = match decode_batch(payload) {
            Ok(batch) => batch,
            Err(error) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, slot, "KV event batch not decoded");
                return;
            }
        };
        let mut index = self.index.write();
        let mut orphans = 0;
        for event in &batch.events {
            let applied = index.apply(slot, event);
            orphans += applied.orphans;
            if matches!(event, kvevents::Event::AllBlocksCleared) {
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(index);
        self.stats.orphans.fetch_add(orphans, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
    }
}
