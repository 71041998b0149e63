//! The gateway's flow-control queue: where requests to a saturated pool wait, and the order in
//! which they leave.
//!
//! Order of service, as in the Gateway API Inference Extension's flow control:
//!
//! 1. **Strict priority between bands.** A band holds the requests of one priority
//!    (`InferenceObjective` `priority`, or the `InferenceModel` criticality mapped onto it); a band
//!    is served only while every higher band is empty.
//! 2. **Fairness between flows inside a band**, by start-time fair queueing over tokens: each
//!    request costs its estimated tokens, a flow's next request is tagged with the virtual time at
//!    which its previous one finished (or the band's current virtual time, for a flow that was
//!    idle), and the flow whose head has the smallest tag goes next. Backlogged flows are served
//!    equal token rates whatever their request sizes or arrival rates; an idle flow keeps no
//!    credit. (Round-robin by requests would give a flow of long prompts more tokens than a flow
//!    of short ones.)
//! 3. **First come, first served inside a flow.**
//!
//! Bounds: a pool-wide number of requests and bytes, and the same per band. An arrival that does
//! not fit its band is rejected; one that does not fit the pool displaces the newest request of the
//! lowest band below its own, and is rejected when there is none. Expiry (time to live) and client
//! hang-ups are the caller's: it removes an entry by its [`Ticket`] at any time, in O(log n).
//!
//! This crate is a data structure: no clock reads, no I/O, no async runtime. The gateway wraps it
//! in a lock and wakes the waiting request futures; the decision *when* to dequeue (the pool has
//! room) is the gateway's too.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Identifies a queued request, for removing it (expiry, client gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A fairness key: the flow a request belongs to inside its band.
pub type FlowId = Arc<str>;

/// What a request brings to the queue besides its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Higher is served first.
    pub priority: i32,
    /// The flow, for fairness inside the band.
    pub flow: FlowId,
    /// The service it will take, in tokens (prompt and expected output); at least 1 is charged.
    pub cost: u64,
    /// Bytes it holds while queued (its body), counted against the bounds.
    pub bytes: u64,
}

/// Requests and bytes a queue or a band may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests at most.
    pub requests: usize,
    /// Bytes at most.
    pub bytes: u64,
}

/// Why an arrival was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request's band is at its bound.
    #[error("the priority band is full")]
    BandFull,
    /// The queue is at its bound and holds nothing of lower priority to displace.
    #[error("the queue is full")]
    QueueFull,
}

/// A request that left the queue, with what it brought.
#[derive(Debug, PartialEq, Eq)]
pub struct Departure<T> {
    /// Its ticket.
    pub ticket: Ticket,
    /// Its value.
    pub value: T,
    /// Its priority.
    pub priority: i32,
    /// Its flow.
    pub flow: FlowId,
}

/// The outcome of [`FlowQueue::push`].
#[derive(Debug)]
pub struct Pushed<T> {
    /// The new request's ticket.
    pub ticket: Ticket,
    /// Requests of lower priority displaced to make room, newest first; each must be answered.
    pub displaced: Vec<Departure<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    cost: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Flow<T> {
    /// Requests by ticket: ticket order is arrival order.
    entries: BTreeMap<u64, Entry<T>>,
    /// The head's start tag.
    head_tag: u128,
}

#[derive(Debug)]
struct Band<T> {
    flows: HashMap<FlowId, Flow<T>>,
    /// (head tag, head ticket, flow) of every non-empty flow: the smallest goes next.
    heads: BTreeSet<(u128, u64, FlowId)>,
    /// Finish tag of the request last served; a flow that becomes active starts here.
    virtual_time: u128,
    /// Finish tag of each flow's last served request, while above `virtual_time` (the flow is
    /// ahead of the band and waits its turn); forgotten once the band catches up.
    finish: HashMap<FlowId, u128>,
    /// Tickets of this band in arrival order (for displacing the newest).
    tickets: BTreeMap<u64, FlowId>,
    requests: usize,
    bytes: u64,
}

impl<T> Band<T> {
    fn new() -> Self {
        Self {
            flows: HashMap::new(),
            heads: BTreeSet::new(),
            virtual_time: 0,
            finish: HashMap::new(),
            tickets: BTreeMap::new(),
            requests: 0,
            bytes: 0,
        }
    }

    fn start_tag(&self, flow: &FlowId) -> u128 {
        self.finish
            .get(flow)
            .map_or(self.virtual_time, |&f| f.max(self.virtual_time))
    }

    /// Remove `ticket` of `flow`; fixes the flow's head when it was the head.
    fn remove(&mut self, flow_id: &FlowId, ticket: u64) -> Option<Entry<T>> {
        let flow = self.flows.get_mut(flow_id)?;
        let was_head = flow.entries.first_key_value().map(|(&t, _)| t) == Some(ticket);
        let entry = flow.entries.remove(&ticket)?;
        self.tickets.remove(&ticket);
        self.requests -= 1;
        self.bytes -= entry.bytes;
        if was_head {
            self.heads
                .remove(&(flow.head_tag, ticket, Arc::clone(flow_id)));
            match flow.entries.first_key_value() {
                // The next request inherits the head's tag: the removed one was never served.
                Some((&next, _)) => {
                    self.heads
                        .insert((flow.head_tag, next, Arc::clone(flow_id)));
                }
                None => {
                    self.flows.remove(flow_id);
                }
            }
        }
        Some(entry)
    }

    /// Serve the flow whose head has the smallest tag.
    fn pop(&mut self) -> Option<(u64, FlowId, Entry<T>)> {
        let (tag, ticket, flow_id) = self.heads.pop_first()?;
        let flow = self.flows.get_mut(&flow_id).expect("a head's flow exists");
        let entry = flow.entries.remove(&ticket).expect("a head is queued");
        self.tickets.remove(&ticket);
        self.requests -= 1;
        self.bytes -= entry.bytes;
        let finish = tag + u128::from(entry.cost.max(1));
        self.virtual_time = self.virtual_time.max(tag);
        match flow.entries.first_key_value() {
            Some((&next, _)) => {
                flow.head_tag = finish;
                self.heads.insert((finish, next, Arc::clone(&flow_id)));
            }
            None => {
                self.flows.remove(&flow_id);
                self.finish.insert(Arc::clone(&flow_id), finish);
            }
        }
        // Flows at or behind the band's virtual time start there anyway.
        let now = self.virtual_time;
        self.finish.retain(|_, &mut f| f > now);
        Some((ticket, flow_id, entry))
    }
}

/// The flow-control queue of one pool (see the crate documentation).
#[derive(Debug)]
pub struct FlowQueue<T> {
    bands: BTreeMap<Reverse<i32>, Band<T>>,
    /// Ticket -> (priority, flow), for removal.
    index: HashMap<u64, (i32, FlowId)>,
    next_ticket: u64,
    queue_limits: Limits,
    band_limits: Limits,
    requests: usize,
    bytes: u64,
}

impl<T> FlowQueue<T> {
    /// An empty queue holding at most `queue_limits` in all and `band_limits` per band.
    pub fn new(queue_limits: Limits, band_limits: Limits) -> Self {
        Self {
            bands: BTreeMap::new(),
            index: HashMap::new(),
            next_ticket: 0,
            queue_limits,
            band_limits,
            requests: 0,
            bytes: 0,
        }
    }

    /// New bounds, for arrivals from now on; requests already queued stay, even beyond them.
    pub fn set_limits(&mut self, queue_limits: Limits, band_limits: Limits) {
        self.queue_limits = queue_limits;
        self.band_limits = band_limits;
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.requests
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The priority of the request [`FlowQueue::pop`] would return next.
    pub fn top_priority(&self) -> Option<i32> {
        self.bands.keys().next().map(|&Reverse(priority)| priority)
    }

    /// Requests queued per priority, highest first.
    pub fn band_lengths(&self) -> impl Iterator<Item = (i32, usize)> + '_ {
        self.bands
            .iter()
            .map(|(&Reverse(priority), band)| (priority, band.requests))
    }

    /// The oldest request of each band, highest priority first (for the age of the queue).
    pub fn oldest_per_band(&self) -> impl Iterator<Item = (i32, &T)> + '_ {
        self.bands.iter().filter_map(|(&Reverse(priority), band)| {
            let (ticket, flow) = band.tickets.first_key_value()?;
            let entry = band.flows.get(flow)?.entries.get(ticket)?;
            Some((priority, &entry.value))
        })
    }

    /// Queue `value`, displacing lower-priority requests when the queue is full.
    pub fn push(&mut self, admission: Admission, value: T) -> Result<Pushed<T>, (Rejection, T)> {
        let Admission {
            priority,
            flow,
            cost,
            bytes,
        } = admission;
        let (band_requests, band_bytes) = self
            .bands
            .get(&Reverse(priority))
            .map_or((0, 0), |b| (b.requests, b.bytes));
        if band_requests + 1 > self.band_limits.requests
            || band_bytes + bytes > self.band_limits.bytes
        {
            return Err((Rejection::BandFull, value));
        }
        // Room in the queue: displace the newest requests of the lowest bands below this one,
        // if that is enough.
        let mut displaced_requests = 0;
        let mut displaced_bytes = 0;
        let mut victims = Vec::new();
        let fits = |requests: usize, bytes_held: u64| {
            requests < self.queue_limits.requests && bytes_held + bytes <= self.queue_limits.bytes
        };
        'bands: for (&Reverse(p), band) in self.bands.iter().rev() {
            if fits(
                self.requests - displaced_requests,
                self.bytes - displaced_bytes,
            ) {
                break;
            }
            if p >= priority {
                break;
            }
            for (&ticket, _) in band.tickets.iter().rev() {
                if fits(
                    self.requests - displaced_requests,
                    self.bytes - displaced_bytes,
                ) {
                    break 'bands;
                }
                let flow = &band.flows[&self.index[&ticket].1];
                displaced_requests += 1;
                displaced_bytes += flow.entries[&ticket].bytes;
                victims.push(ticket);
            }
        }
        if !fits(
            self.requests - displaced_requests,
            self.bytes - displaced_bytes,
        ) {
            return Err((Rejection::QueueFull, value));
        }
        let displaced = victims
            .into_iter()
            .filter_map(|ticket| self.remove(Ticket(ticket)))
            .collect();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let band = self
            .bands
            .entry(Reverse(priority))
            .or_insert_with(Band::new);
        let start = band.start_tag(&flow);
        let entry = Entry { value, cost, bytes };
        match band.flows.get_mut(&flow) {
            Some(existing) => {
                existing.entries.insert(ticket, entry);
            }
            None => {
                let mut entries = BTreeMap::new();
                entries.insert(ticket, entry);
                band.flows.insert(
                    Arc::clone(&flow),
                    Flow {
                        entries,
                        head_tag: start,
                    },
                );
                band.heads.insert((start, ticket, Arc::clone(&flow)));
            }
        }
        band.tickets.insert(ticket, Arc::clone(&flow));
        band.requests += 1;
        band.bytes += bytes;
        self.requests += 1;
        self.bytes += bytes;
        self.index.insert(ticket, (priority, flow));
        Ok(Pushed {
            ticket: Ticket(ticket),
            displaced,
        })
    }

    /// The next request to serve: the highest band's fairest flow's oldest request.
    pub fn pop(&mut self) -> Option<Departure<T>> {
        let (&key, band) = self.bands.iter_mut().next()?;
        let (ticket, flow, entry) = band.pop()?;
        if band.requests == 0 {
            self.bands.remove(&key);
        }
        self.index.remove(&ticket);
        self.requests -= 1;
        self.bytes -= entry.bytes;
        Some(Departure {
            ticket: Ticket(ticket),
            value: entry.value,
            priority: key.0,
            flow,
        })
    }

    /// Take a request out of the queue (expired, or its client left); `None` when it already
    /// left.
    pub fn remove(&mut self, ticket: Ticket) -> Option<Departure<T>> {
        let (priority, flow) = self.index.remove(&ticket.0)?;
        let band = self.bands.get_mut(&Reverse(priority))?;
        let entry = band.remove(&flow, ticket.0)?;
        if band.requests == 0 {
            self.bands.remove(&Reverse(priority));
        }
        self.requests -= 1;
        self.bytes -= entry.bytes;
        Some(Departure {
            ticket,
            value: entry.value,
            priority,
            flow,
        })
    }
}

#[cfg(test)]
mod tests;
