//! Cost of queue operations with 10,000 requests queued over 4 priority bands and 100 flows:
//! a push followed by a pop (the queue stays at 10,000), and a push followed by removing the same
//! request (a client that hangs up). Criterion measures the means; after it, a loop of single
//! operations prints p50/p99/max of each, which is what a request waiting in the gateway feels.
//!
//! `cargo bench -p inference-gateway-flowcontrol --bench queue`

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use flowcontrol::{Admission, FlowId, FlowQueue, Limits};

const QUEUED: usize = 10_000;
const FLOWS: usize = 100;
const BANDS: i32 = 4;

struct Workload {
    flows: Vec<FlowId>,
    rng: fastrand::Rng,
}

impl Workload {
    fn new() -> Self {
        Self {
            flows: (0..FLOWS).map(|i| format!("tenant-{i}").into()).collect(),
            rng: fastrand::Rng::with_seed(7),
        }
    }

    fn admission(&mut self) -> Admission {
        let r = self.rng.u64(..);
        Admission {
            priority: (r % BANDS as u64) as i32 - 1,
            flow: self.flows[(r >> 8) as usize % FLOWS].clone(),
            cost: 100 + (r >> 20) % 2_000,
            bytes: 400 + (r >> 32) % 8_000,
        }
    }

    fn filled(&mut self) -> FlowQueue<u64> {
        let roomy = Limits {
            requests: 1_000_000,
            bytes: u64::MAX / 4,
        };
        let mut queue = FlowQueue::new(roomy, roomy);
        for i in 0..QUEUED as u64 {
            queue.push(self.admission(), i).expect("room");
        }
        queue
    }
}

fn percentiles(name: &str, mut samples: Vec<std::time::Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e9;
    println!(
        "{name:<28} {:>10.0} {:>10.0} {:>10.0}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut workload = Workload::new();
    let mut queue = workload.filled();
    criterion.bench_function("queue/push+pop at 10k", |b| {
        b.iter(|| {
            let a = workload.admission();
            queue.push(a, 0).expect("room");
            black_box(queue.pop());
        })
    });
    criterion.bench_function("queue/push+remove at 10k", |b| {
        b.iter(|| {
            let a = workload.admission();
            let ticket = queue.push(a, 0).expect("room").ticket;
            black_box(queue.remove(ticket));
        })
    });
    criterion.final_summary();

    println!("\nsingle operations at {QUEUED} queued (100,000 each):");
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "operation", "p50 (ns)", "p99 (ns)", "max (ns)"
    );
    let mut queue = workload.filled();
    let (mut push, mut pop, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..100_000u64 {
        let a = workload.admission();
        let start = Instant::now();
        let ticket = queue.push(a, i).expect("room").ticket;
        push.push(start.elapsed());
        if i % 2 == 0 {
            let start = Instant::now();
            black_box(queue.pop());
            pop.push(start.elapsed());
        } else {
            let start = Instant::now();
            black_box(queue.remove(ticket));
            remove.push(start.elapsed());
        }
    }
    assert_eq!(queue.len(), QUEUED);
    percentiles("push", push);
    percentiles("pop", pop);
    percentiles("remove", remove);
}
