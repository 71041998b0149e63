//! Flow control: requests to a saturated pool wait in the gateway, in the order of
//! [`flowcontrol::FlowQueue`] (strict priority, token-fair flows, first come first served), and
//! leave when the pool has room.
//!
//! One [`PoolQueue`] per pool lives across snapshot rebuilds (like the pool's strategy instance).
//! A waiting request holds a [`Queued`] and awaits its turn, its time to live or its client's
//! departure, whichever comes first; every one of them ends with an answer. A dispatcher task per
//! pool runs while the queue is not empty: it releases requests while the pool has room (a
//! function of the current snapshot the caller provides, [`Room`]), woken when the pool may have
//! gained room ([`PoolQueue::wake`]: a first token, a finished request, a scrape, new
//! endpoints) and at least every [`RECHECK`].
//!
//! A released request is handed an [`Admit`], which counts it as about to be dispatched until it
//! is dropped (after the request was counted in flight on an endpoint): the room function sees
//! those too, so one wake-up does not release more than the pool can take before the released
//! requests show up in the in-flight counts.
//!
//! Nothing here reads the snapshot or writes a response: the proxy does (`proxy::queue`).

pub mod settings;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flowcontrol::{Admission, FlowQueue, Limits, Rejection, Ticket};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

pub use settings::{FLOW_CONTROL_PREFIX, FlowSettings};

/// How often the dispatcher looks at the pool when nothing woke it: saturation can also end
/// without an event the gateway sees (a scrape showing the KV cache drained).
pub const RECHECK: Duration = Duration::from_millis(20);

/// Whether the pool can take another request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Yes: release the next request.
    Free,
    /// Not now (saturated, or no endpoint yet).
    Full,
    /// The pool is gone from the configuration: every waiting request is answered.
    Gone,
}

/// Why a request left the queue without its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue or the request's band was full when it arrived.
    Rejected(Rejection),
    /// A request of higher priority took its place.
    Displaced,
    /// Its time to live ran out.
    Expired,
    /// Its pool was removed from the configuration while it waited.
    PoolGone,
}

impl Refusal {
    /// The value of `x-llm-d-request-dropped-reason` and of the `outcome` metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Rejected(Rejection::QueueFull) => "rejected-capacity",
            Refusal::Rejected(Rejection::BandFull) => "rejected-band-capacity",
            Refusal::Displaced => "evicted-capacity",
            Refusal::Expired => "rejected-ttl-expired",
            Refusal::PoolGone => "rejected-pool-removed",
        }
    }
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// The request's turn: dispatch it, then drop the [`Admit`].
    Admitted(Admit),
    /// No turn: answer it.
    Refused(Refusal),
    /// The client went away while it waited.
    ClientGone,
}

/// A released request, counted as about to be dispatched until dropped.
#[derive(Debug)]
pub struct Admit {
    queue: Arc<PoolQueue>,
}

impl Drop for Admit {
    fn drop(&mut self) {
        self.queue.released.fetch_sub(1, Ordering::Relaxed);
        self.queue.wake();
    }
}

#[derive(Debug)]
struct Waiter {
    turn: oneshot::Sender<Result<Admit, Refusal>>,
    since: Instant,
}

/// The flow-control queue of one pool.
#[derive(Debug)]
pub struct PoolQueue {
    queue: Mutex<FlowQueue<Waiter>>,
    /// The queue's length, readable without the lock (every request to the pool asks).
    waiting: AtomicUsize,
    /// Released requests not yet dispatched.
    released: AtomicUsize,
    wake: Notify,
    dispatching: AtomicBool,
    /// When each priority last sent a request (few priorities: a short list).
    arrivals: Mutex<Vec<(i32, Instant)>>,
}

/// Whether priorities above and below a request's were active lately ([`PoolQueue::activity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// A higher priority sent a request: this one leaves headroom for it.
    pub higher: bool,
    /// A lower priority sent a request: this one may use the headroom the lower one leaves.
    pub lower: bool,
}

/// A request waiting in a [`PoolQueue`].
#[derive(Debug)]
pub struct Queued {
    queue: Arc<PoolQueue>,
    ticket: Ticket,
    turn: oneshot::Receiver<Result<Admit, Refusal>>,
}

impl PoolQueue {
    /// An empty queue with `settings`' bounds.
    pub fn new(settings: &FlowSettings) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(FlowQueue::new(settings.queue, settings.band)),
            waiting: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            wake: Notify::new(),
            dispatching: AtomicBool::new(false),
            arrivals: Mutex::new(Vec::new()),
        })
    }

    /// Record that a request of `priority` arrived at `now` (queued or not).
    pub fn note_arrival(&self, priority: i32, now: Instant) {
        let mut arrivals = self.arrivals.lock();
        match arrivals.iter_mut().find(|(p, _)| *p == priority) {
            Some((_, at)) => *at = now,
            None => arrivals.push((priority, now)),
        }
    }

    /// Which priorities other than `priority` sent a request within `window` of `now` (one look
    /// at the list, as every request to the pool asks).
    pub fn activity(&self, priority: i32, now: Instant, window: Duration) -> Activity {
        let mut activity = Activity::default();
        for &(p, at) in self.arrivals.lock().iter() {
            if now.saturating_duration_since(at) <= window {
                activity.higher |= p > priority;
                activity.lower |= p < priority;
            }
        }
        activity
    }

    /// Whether a request of `priority` or higher waits (a newcomer of `priority` queues behind
    /// it rather than overtake it).
    pub fn waiting_at_or_above(&self, priority: i32) -> bool {
        !self.is_empty()
            && self
                .queue
                .lock()
                .top_priority()
                .is_some_and(|top| top >= priority)
    }

    /// Apply new bounds; requests already queued stay.
    pub fn set_limits(&self, queue: Limits, band: Limits) {
        self.queue.lock().set_limits(queue, band);
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Run `f` on the queue under its lock, keeping the lock-free length up to date.
    fn with_queue<R>(&self, f: impl FnOnce(&mut FlowQueue<Waiter>) -> R) -> R {
        let mut queue = self.queue.lock();
        let result = f(&mut queue);
        self.waiting.store(queue.len(), Ordering::Relaxed);
        result
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the waiting requests' bodies.
    pub fn bytes(&self) -> u64 {
        self.queue.lock().bytes()
    }

    /// Waiting requests per priority, highest first.
    pub fn band_lengths(&self) -> Vec<(i32, usize)> {
        self.queue.lock().band_lengths().collect()
    }

    /// How long the oldest request of each band has waited at `now`, highest priority first.
    pub fn oldest_ages(&self, now: Instant) -> Vec<(i32, Duration)> {
        self.queue
            .lock()
            .oldest_per_band()
            .map(|(priority, waiter)| (priority, now.saturating_duration_since(waiter.since)))
            .collect()
    }

    /// Released requests not yet dispatched.
    pub fn released(&self) -> usize {
        self.released.load(Ordering::Relaxed)
    }

    /// The pool may have room now: let the dispatcher look.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Queue a request. Requests it displaced are answered here.
    pub fn enqueue(self: &Arc<Self>, admission: Admission) -> Result<Queued, Refusal> {
        let (turn, receiver) = oneshot::channel();
        let waiter = Waiter {
            turn,
            since: Instant::now(),
        };
        let pushed = self
            .with_queue(|queue| queue.push(admission, waiter))
            .map_err(|(rejection, _)| Refusal::Rejected(rejection))?;
        for displaced in pushed.displaced {
            let _ = displaced.value.turn.send(Err(Refusal::Displaced));
        }
        Ok(Queued {
            queue: Arc::clone(self),
            ticket: pushed.ticket,
            turn: receiver,
        })
    }

    /// Start the dispatcher unless it runs: it releases requests while `room` says the pool has
    /// room for the next one (given the released requests not yet dispatched, and the next
    /// one's priority) and stops when the queue is empty. Call after every
    /// [`PoolQueue::enqueue`], from within the Tokio runtime.
    pub fn dispatch<F>(self: &Arc<Self>, room: F)
    where
        F: Fn(usize, i32) -> Room + Send + Sync + 'static,
    {
        if self.dispatching.swap(true, Ordering::AcqRel) {
            self.wake();
            return;
        }
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                queue.release(&room);
                if queue.is_empty() {
                    queue.dispatching.store(false, Ordering::Release);
                    // An enqueue between the check and the store found the flag set and only
                    // woke us: take the turn back if so.
                    if queue.is_empty() || queue.dispatching.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                }
                tokio::select! {
                    () = queue.wake.notified() => {}
                    () = tokio::time::sleep(RECHECK) => {}
                }
            }
        });
    }

    /// Release requests while the pool has room for the next one. A next one without room
    /// stops the release: what follows it has the same priority or a lower one.
    fn release(self: &Arc<Self>, room: &impl Fn(usize, i32) -> Room) {
        loop {
            let Some(next) = self.queue.lock().top_priority() else {
                return;
            };
            match room(self.released(), next) {
                Room::Full => return,
                Room::Gone => {
                    while let Some(departure) = self.with_queue(FlowQueue::pop) {
                        let _ = departure.value.turn.send(Err(Refusal::PoolGone));
                    }
                    return;
                }
                Room::Free => {}
            }
            let Some(departure) = self.with_queue(FlowQueue::pop) else {
                return;
            };
            self.released.fetch_add(1, Ordering::Relaxed);
            let admit = Admit {
                queue: Arc::clone(self),
            };
            // A waiter that is gone drops the admit, which uncounts it.
            let _ = departure.value.turn.send(Ok(admit));
        }
    }
}

impl Queued {
    /// Wait for the request's turn, at most `ttl`, or until `client_gone` completes. The request
    /// leaves the queue in every case.
    pub async fn wait(mut self, ttl: Duration, client_gone: impl Future<Output = ()>) -> Waited {
        // A client that left goes first (nothing is sent for it), then a turn already given
        // (even when its time ran out meanwhile), then the timer.
        let outcome = tokio::select! {
            biased;
            () = client_gone => Waited::ClientGone,
            turn = &mut self.turn => return match turn {
                Ok(Ok(admit)) => Waited::Admitted(admit),
                Ok(Err(refusal)) => Waited::Refused(refusal),
                // The queue dropped the waiter without a word: it cannot (the dispatcher sends
                // on every path), but answer rather than hang.
                Err(_) => Waited::Refused(Refusal::PoolGone),
            },
            () = tokio::time::sleep(ttl) => Waited::Refused(Refusal::Expired),
        };
        let ticket = self.ticket;
        if self
            .queue
            .with_queue(|queue| queue.remove(ticket))
            .is_some()
        {
            return outcome;
        }
        // Released (or displaced) while the timer or the client fired: take what was sent, so an
        // admit is not lost; a client that left drops it at once.
        match self.turn.try_recv() {
            Ok(Ok(admit)) if !matches!(outcome, Waited::ClientGone) => Waited::Admitted(admit),
            Ok(Err(refusal)) => Waited::Refused(refusal),
            _ => outcome,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        // A wait abandoned midway (its future dropped: the connection or stream went away)
        // leaves the queue here; after `wait` this finds nothing.
        let ticket = self.ticket;
        self.queue.with_queue(|queue| queue.remove(ticket));
    }
}

#[cfg(test)]
mod tests;
