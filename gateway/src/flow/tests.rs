use std::sync::atomic::AtomicUsize;

use super::*;

fn admission(priority: i32, flow: &str) -> Admission {
    Admission {
        priority,
        flow: flow.into(),
        cost: 100,
        bytes: 10,
    }
}

/// A pool with `capacity` slots: room while fewer than that are in flight or released; priorities
/// below [`TOP`] leave `headroom` slots free.
#[derive(Debug, Default)]
struct Slots {
    capacity: AtomicUsize,
    in_flight: AtomicUsize,
    headroom: AtomicUsize,
}

const TOP: i32 = 10;

impl Slots {
    fn room(self: &Arc<Self>) -> impl Fn(usize, i32) -> Room + Send + Sync + 'static {
        let slots = Arc::clone(self);
        move |released, priority| {
            let mut used = slots.in_flight.load(Ordering::Relaxed) + released;
            if priority < TOP {
                used += slots.headroom.load(Ordering::Relaxed);
            }
            if used < slots.capacity.load(Ordering::Relaxed) {
                Room::Free
            } else {
                Room::Full
            }
        }
    }
}

const FOREVER: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn requests_wait_for_room_and_leave_by_priority() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let slots = Arc::new(Slots::default());
    let low = queue.enqueue(admission(0, "a")).unwrap();
    let high = queue.enqueue(admission(1, "a")).unwrap();
    queue.dispatch(slots.room());
    assert_eq!(queue.len(), 2);
    let low = tokio::spawn(low.wait(FOREVER, std::future::pending()));
    let high = tokio::spawn(high.wait(FOREVER, std::future::pending()));
    tokio::time::sleep(RECHECK * 3).await;
    assert!(!high.is_finished() && !low.is_finished(), "no room yet");
    // One slot: the high-priority request goes first, and holds it until dispatched.
    slots.capacity.store(1, Ordering::Relaxed);
    queue.wake();
    let Waited::Admitted(admit) = high.await.unwrap() else {
        panic!("admitted")
    };
    assert_eq!(queue.released(), 1);
    tokio::time::sleep(RECHECK * 3).await;
    assert!(
        !low.is_finished(),
        "the released request still holds the slot"
    );
    // Dispatched: it is in flight now, and the slot stays taken until it finishes.
    slots.in_flight.fetch_add(1, Ordering::Relaxed);
    drop(admit);
    assert_eq!(queue.released(), 0);
    tokio::time::sleep(RECHECK * 3).await;
    assert!(!low.is_finished());
    slots.in_flight.fetch_sub(1, Ordering::Relaxed);
    queue.wake();
    assert!(matches!(low.await.unwrap(), Waited::Admitted(_)));
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_expired_request_leaves_the_queue_with_its_reason() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let slots = Arc::new(Slots::default());
    let waiting = queue.enqueue(admission(0, "a")).unwrap();
    queue.dispatch(slots.room());
    let started = tokio::time::Instant::now();
    let outcome = waiting
        .wait(Duration::from_secs(60), std::future::pending())
        .await;
    assert!(
        matches!(outcome, Waited::Refused(Refusal::Expired)),
        "{outcome:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(Refusal::Expired.reason(), "rejected-ttl-expired");
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_leaves_the_queue_at_once() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let slots = Arc::new(Slots::default());
    let first = queue.enqueue(admission(0, "a")).unwrap();
    let second = queue.enqueue(admission(0, "a")).unwrap();
    queue.dispatch(slots.room());
    let (hang_up, gone) = oneshot::channel::<()>();
    let first = tokio::spawn(first.wait(FOREVER, async move {
        let _ = gone.await;
    }));
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(hang_up);
    assert!(matches!(first.await.unwrap(), Waited::ClientGone));
    assert_eq!(queue.len(), 1);
    // The slot goes to the next in line, not to the one that left.
    slots.capacity.store(1, Ordering::Relaxed);
    queue.wake();
    let outcome = second.wait(FOREVER, std::future::pending()).await;
    assert!(matches!(outcome, Waited::Admitted(_)));
}

#[tokio::test(start_paused = true)]
async fn an_admit_for_a_client_that_left_is_given_back() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let slots = Arc::new(Slots::default());
    let waiting = queue.enqueue(admission(0, "a")).unwrap();
    slots.capacity.store(1, Ordering::Relaxed);
    queue.dispatch(slots.room());
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Released before anyone awaited it; the client is gone by the time it looks.
    assert_eq!(queue.released(), 1);
    let outcome = waiting.wait(FOREVER, std::future::ready(())).await;
    assert!(matches!(outcome, Waited::ClientGone), "{outcome:?}");
    assert_eq!(queue.released(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_and_a_higher_priority_displaces() {
    let settings = FlowSettings {
        queue: Limits {
            requests: 1,
            bytes: 1_000,
        },
        ..FlowSettings::default()
    };
    let queue = PoolQueue::new(&settings);
    let slots = Arc::new(Slots::default());
    let low = queue.enqueue(admission(0, "a")).unwrap();
    queue.dispatch(slots.room());
    assert_eq!(
        queue.enqueue(admission(0, "b")).err(),
        Some(Refusal::Rejected(Rejection::QueueFull))
    );
    let _high = queue.enqueue(admission(5, "c")).unwrap();
    let outcome = low.wait(FOREVER, std::future::pending()).await;
    assert!(
        matches!(outcome, Waited::Refused(Refusal::Displaced)),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_goes_away_answers_everyone_waiting() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let waiting: Vec<Queued> = (0..3)
        .map(|i| queue.enqueue(admission(i, "a")).unwrap())
        .collect();
    queue.dispatch(|_, _| Room::Gone);
    for w in waiting {
        let outcome = w.wait(FOREVER, std::future::pending()).await;
        assert!(
            matches!(outcome, Waited::Refused(Refusal::PoolGone)),
            "{outcome:?}"
        );
    }
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_dispatcher_stops_when_the_queue_empties_and_restarts() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let slots = Arc::new(Slots::default());
    slots.capacity.store(10, Ordering::Relaxed);
    for round in 0..3 {
        let waiting = queue.enqueue(admission(0, "a")).unwrap();
        queue.dispatch(slots.room());
        let outcome = waiting.wait(FOREVER, std::future::pending()).await;
        assert!(matches!(outcome, Waited::Admitted(_)), "round {round}");
        tokio::time::sleep(RECHECK * 2).await;
        assert!(!queue.dispatching.load(Ordering::Acquire), "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_wait_leaves_the_queue() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let waiting = queue.enqueue(admission(0, "a")).unwrap();
    let _other = queue.enqueue(admission(0, "a")).unwrap();
    let task = tokio::spawn(waiting.wait(FOREVER, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    task.abort();
    let _ = task.await;
    assert_eq!(queue.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_band_without_room_stops_the_release_while_a_higher_one_goes() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let slots = Arc::new(Slots::default());
    slots.capacity.store(2, Ordering::Relaxed);
    slots.headroom.store(1, Ordering::Relaxed);
    // One slot in use: a low-priority request would take the one kept for the top band.
    slots.in_flight.store(1, Ordering::Relaxed);
    let low = queue.enqueue(admission(0, "a")).unwrap();
    queue.dispatch(slots.room());
    let low = tokio::spawn(low.wait(FOREVER, std::future::pending()));
    tokio::time::sleep(RECHECK * 3).await;
    assert!(!low.is_finished(), "the headroom is kept");
    assert!(queue.waiting_at_or_above(0) && !queue.waiting_at_or_above(TOP));
    let top = queue.enqueue(admission(TOP, "b")).unwrap();
    queue.dispatch(slots.room());
    let top = tokio::spawn(top.wait(FOREVER, std::future::pending()));
    let Waited::Admitted(admit) = top.await.unwrap() else {
        panic!("the top band uses the headroom")
    };
    drop(admit);
    tokio::time::sleep(RECHECK * 3).await;
    assert!(!low.is_finished());
    slots.in_flight.store(0, Ordering::Relaxed);
    queue.wake();
    assert!(matches!(low.await.unwrap(), Waited::Admitted(_)));
}

#[test]
fn a_priority_is_active_for_its_window_after_its_last_request() {
    let queue = PoolQueue::new(&FlowSettings::default());
    let start = Instant::now();
    let window = Duration::from_secs(30);
    let active = |priority, at| {
        let a = queue.activity(priority, at, window);
        (a.higher, a.lower)
    };
    assert_eq!(active(0, start), (false, false));
    queue.note_arrival(10, start);
    queue.note_arrival(0, start);
    assert_eq!(active(0, start + window), (true, false));
    assert_eq!(
        active(10, start),
        (false, true),
        "only higher ones are higher"
    );
    assert_eq!(active(5, start), (true, true));
    assert_eq!(active(0, start + window * 2), (false, false));
    queue.note_arrival(10, start + window * 2);
    assert_eq!(active(-1, start + window * 2), (true, false));
}
