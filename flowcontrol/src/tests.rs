use super::*;
use proptest::prelude::*;

const ROOMY: Limits = Limits {
    requests: 1_000_000,
    bytes: u64::MAX / 4,
};

fn queue() -> FlowQueue<u32> {
    FlowQueue::new(ROOMY, ROOMY)
}

fn admission(priority: i32, flow: &str, cost: u64) -> Admission {
    Admission {
        priority,
        flow: flow.into(),
        cost,
        bytes: 100,
    }
}

fn limits(requests: usize, bytes: u64) -> Limits {
    Limits { requests, bytes }
}

/// Push, expecting a rejection; the value comes back with it.
fn rejected(queue: &mut FlowQueue<u32>, admission: Admission, value: u32) -> Rejection {
    let (rejection, back) = queue.push(admission, value).expect_err("rejected");
    assert_eq!(back, value);
    rejection
}

/// Push, expecting room; the values of the requests displaced for it.
fn displaced_by(queue: &mut FlowQueue<u32>, admission: Admission, value: u32) -> Vec<u32> {
    let pushed = queue.push(admission, value).expect("queued");
    pushed.displaced.into_iter().map(|d| d.value).collect()
}

fn drain(queue: &mut FlowQueue<u32>) -> Vec<u32> {
    std::iter::from_fn(|| queue.pop().map(|d| d.value)).collect()
}

#[test]
fn higher_bands_go_first_and_a_flow_is_first_come_first_served() {
    let mut q = queue();
    q.push(admission(-1, "batch", 10), 1).unwrap();
    q.push(admission(0, "chat", 10), 2).unwrap();
    q.push(admission(5, "chat", 10), 3).unwrap();
    q.push(admission(0, "chat", 10), 4).unwrap();
    q.push(admission(-1, "batch", 10), 5).unwrap();
    assert_eq!(
        q.band_lengths().collect::<Vec<_>>(),
        [(5, 1), (0, 2), (-1, 2)]
    );
    let oldest: Vec<(i32, u32)> = q.oldest_per_band().map(|(p, &v)| (p, v)).collect();
    assert_eq!(oldest, [(5, 3), (0, 2), (-1, 1)]);
    assert_eq!(q.top_priority(), Some(5));
    assert_eq!(drain(&mut q), [3, 2, 4, 1, 5]);
    assert!(q.is_empty());
    assert_eq!(q.top_priority(), None);
    assert_eq!(q.bytes(), 0);
}

#[test]
fn backlogged_flows_get_equal_tokens_whatever_their_request_sizes() {
    let mut q = queue();
    // Flow "long" sends 300-token requests, flow "short" 100-token ones, both backlogged.
    for i in 0..300 {
        q.push(admission(0, "long", 300), 1000 + i).unwrap();
        q.push(admission(0, "short", 100), i).unwrap();
    }
    let (mut long, mut short) = (0u64, 0u64);
    for _ in 0..200 {
        let d = q.pop().unwrap();
        match &*d.flow {
            "long" => long += 300,
            _ => short += 100,
        }
    }
    // Equal token shares, to within one request of the larger size.
    assert!(long.abs_diff(short) <= 300, "long {long} short {short}");
}

#[test]
fn an_idle_flow_keeps_no_credit() {
    let mut q = queue();
    for i in 0..50 {
        q.push(admission(0, "busy", 100), i).unwrap();
    }
    for _ in 0..40 {
        q.pop().unwrap();
    }
    // A flow that arrives now competes from the band's current virtual time: it alternates
    // with the busy flow, rather than being owed the 40 requests it did not send.
    for i in 0..20 {
        q.push(admission(0, "late", 100), 100 + i).unwrap();
    }
    let next: Vec<&str> = (0..6)
        .map(|_| q.pop().unwrap().flow)
        .map(|f| if &*f == "late" { "late" } else { "busy" })
        .collect();
    assert_eq!(next.iter().filter(|&&f| f == "late").count(), 3, "{next:?}");
}

#[test]
fn a_flow_ahead_of_the_band_waits_its_turn_after_going_idle() {
    let mut q = queue();
    q.push(admission(0, "a", 1000), 1).unwrap();
    q.push(admission(0, "b", 10), 2).unwrap();
    assert_eq!(q.pop().unwrap().value, 1); // a's 1,000 tokens: a finishes at tag 1,000
    q.push(admission(0, "a", 10), 3).unwrap();
    q.push(admission(0, "b", 10), 4).unwrap();
    // b is still far behind a: b's requests go first.
    assert_eq!(drain(&mut q), [2, 4, 3]);
}

#[test]
fn removed_requests_never_leave_by_pop() {
    let mut q = queue();
    let a = q.push(admission(0, "f", 10), 1).unwrap().ticket;
    let b = q.push(admission(0, "f", 10), 2).unwrap().ticket;
    let c = q.push(admission(0, "g", 10), 3).unwrap().ticket;
    assert_eq!(q.remove(b).map(|d| d.value), Some(2)); // not a head
    assert_eq!(q.remove(a).map(|d| d.value), Some(1)); // a head, flow now empty
    assert_eq!(q.remove(a), None);
    assert_eq!((q.len(), q.bytes()), (1, 100));
    assert_eq!(drain(&mut q), [3]);
    assert_eq!(q.remove(c), None);
}

#[test]
fn a_full_band_rejects_its_own_arrivals() {
    let mut q = FlowQueue::new(ROOMY, limits(2, 1_000));
    q.push(admission(0, "f", 1), 1).unwrap();
    q.push(admission(0, "f", 1), 2).unwrap();
    assert_eq!(
        rejected(&mut q, admission(0, "f", 1), 3),
        Rejection::BandFull
    );
    // Another band has its own room.
    q.push(admission(1, "f", 1), 4).unwrap();
    let big = Admission {
        bytes: 1_001,
        ..admission(2, "f", 1)
    };
    assert_eq!(rejected(&mut q, big, 5), Rejection::BandFull);
}

#[test]
fn a_full_queue_displaces_the_newest_of_the_lowest_band() {
    let mut q = FlowQueue::new(limits(3, 10_000), ROOMY);
    q.push(admission(-1, "batch", 1), 1).unwrap();
    q.push(admission(-1, "batch", 1), 2).unwrap();
    q.push(admission(0, "chat", 1), 3).unwrap();
    // Same priority as the lowest band: nothing below it to displace.
    let same = admission(-1, "batch", 1);
    assert_eq!(rejected(&mut q, same, 4), Rejection::QueueFull);
    assert_eq!(displaced_by(&mut q, admission(1, "vip", 1), 5), [2]);
    assert_eq!(displaced_by(&mut q, admission(0, "chat", 1), 6), [1]);
    // Only equal or higher bands remain below a priority-0 arrival: full.
    let chat = admission(0, "chat", 1);
    assert_eq!(rejected(&mut q, chat, 7), Rejection::QueueFull);
    assert_eq!(drain(&mut q), [5, 3, 6]);
}

#[test]
fn byte_bounds_displace_as_many_as_needed() {
    let mut q = FlowQueue::new(limits(100, 300), ROOMY);
    for i in 0..3 {
        q.push(admission(-1, "batch", 1), i).unwrap();
    }
    let big = Admission {
        bytes: 200,
        ..admission(0, "chat", 1)
    };
    assert_eq!(displaced_by(&mut q, big, 9), [2, 1]);
    assert_eq!((q.len(), q.bytes()), (2, 300));
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        priority: i32,
        flow: u8,
        cost: u64,
        bytes: u64,
    },
    Pop,
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (-2i32..3, 0u8..4, 1u64..500, 0u64..300).prop_map(|(priority, flow, cost, bytes)| Op::Push { priority, flow, cost, bytes }),
        2 => Just(Op::Pop),
        1 => (0usize..64).prop_map(Op::Remove),
    ]
}

proptest! {
    /// Whatever happens, every request leaves exactly once (popped, removed or displaced) or is
    /// still queued; counts and bytes add up; bounds hold; a pop never skips a higher band; a
    /// flow leaves in arrival order.
    #[test]
    fn every_request_is_accounted_for(ops in proptest::collection::vec(op(), 1..300)) {
        let (total, band) = (limits(20, 2_000), limits(12, 1_500));
        let mut q: FlowQueue<u32> = FlowQueue::new(total, band);
        let mut queued: BTreeMap<u32, (Ticket, i32, u8, u64)> = BTreeMap::new();
        let mut next = 0u32;
        let mut tickets = Vec::new();
        let mut last_popped_of_flow: HashMap<(i32, u8), u32> = HashMap::new();
        for op in ops {
            match op {
                Op::Push { priority, flow, cost, bytes } => {
                    let value = next;
                    next += 1;
                    let a = Admission { priority, flow: flow.to_string().into(), cost, bytes };
                    match q.push(a, value) {
                        Ok(pushed) => {
                            for d in pushed.displaced {
                                let (_, p, _, _) = queued.remove(&d.value).expect("displaced a queued request");
                                prop_assert!(p < priority);
                            }
                            queued.insert(value, (pushed.ticket, priority, flow, bytes));
                            tickets.push(pushed.ticket);
                        }
                        Err((_, back)) => prop_assert_eq!(back, value),
                    }
                }
                Op::Pop => {
                    let highest = queued.values().map(|v| v.1).max();
                    match q.pop() {
                        Some(d) => {
                            let (ticket, p, flow, _) = queued.remove(&d.value).expect("popped a queued request");
                            prop_assert_eq!(d.ticket, ticket);
                            prop_assert_eq!(Some(p), highest);
                            prop_assert_eq!(d.priority, p);
                            if let Some(&before) = last_popped_of_flow.get(&(p, flow)) {
                                prop_assert!(before < d.value);
                            }
                            // Nothing older of the same flow is still queued.
                            prop_assert!(!queued.iter().any(|(&v, e)| e.1 == p && e.2 == flow && v < d.value));
                            last_popped_of_flow.insert((p, flow), d.value);
                        }
                        None => prop_assert!(highest.is_none()),
                    }
                }
                Op::Remove(i) => {
                    if let Some(&ticket) = tickets.get(i) {
                        let held = queued.iter().find(|(_, e)| e.0 == ticket).map(|(&v, _)| v);
                        match (q.remove(ticket), held) {
                            (Some(d), Some(v)) => { prop_assert_eq!(d.value, v); queued.remove(&v); }
                            (None, None) => {}
                            (got, want) => prop_assert!(false, "remove gave {:?}, expected {:?}", got.map(|d| d.value), want),
                        }
                    }
                }
            }
            prop_assert_eq!(q.len(), queued.len());
            prop_assert_eq!(q.bytes(), queued.values().map(|e| e.3).sum::<u64>());
            prop_assert!(q.len() <= total.requests && q.bytes() <= total.bytes);
            for (p, n) in q.band_lengths() {
                prop_assert!(n <= band.requests);
                prop_assert_eq!(n, queued.values().filter(|e| e.1 == p).count());
            }
        }
    }
}
