//! Mirrors Antrea's AddOrUpdateConns benchmark: a poll of 10,000 connections of which 1,000
//! are new and 1,000 from the previous poll are gone, into the store, followed by the expiry
//! pass that notices the gone ones (more work than Antrea's op, which has no expiry).
//! Data is generated outside the timed region. A sweep over new connections per poll shows
//! time, bytes and allocations per op growing linearly; B/op and allocs/op are printed like
//! Go's -benchmem.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flowex_agent::sources::conntrack::ConntrackEntry;
use flowex_agent::store::{ConnectionStore, Timeouts};
use flowex_benches::{CountingAllocator, allocations_per_op, tcp_entry};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Precomputed conntrack entries, distinct tuples.
fn pool(size: usize) -> Vec<ConntrackEntry> {
    (0..size as u32)
        .map(|i| {
            let src = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let dst = IpAddr::from([10, 96, 0, (i % 200) as u8]);
            tcp_entry(
                src,
                dst,
                1024 + (i % 60_000) as u16,
                443,
                (10, 1_000),
                (10, 9_000),
            )
        })
        .collect()
}

struct Poller {
    store: ConnectionStore,
    pool: Vec<ConntrackEntry>,
    window: usize,
    new: usize,
    start: usize,
    now_ms: u64,
}

impl Poller {
    fn new(window: usize, new: usize) -> Self {
        let mut poller = Self {
            store: ConnectionStore::new(Timeouts {
                active_ms: 1_000,
                idle_ms: 60_000,
                deny_idle_ms: 60_000,
            }),
            // large enough that an entry leaves the window long before it comes back
            pool: pool((window + new) * 12),
            window,
            new,
            start: 0,
            now_ms: 0,
        };
        for _ in 0..4 {
            poller.poll();
        }
        poller
    }

    /// One poll: the window's entries (the last `new` of them never seen before) go into
    /// the store, counters of the rest grow; then the expiry pass at the next second.
    fn poll(&mut self) -> usize {
        self.now_ms += 1_000;
        let generation = self.store.begin_poll();
        let len = self.pool.len();
        for offset in 0..self.window {
            let entry = &mut self.pool[(self.start + offset) % len];
            if let Some(c) = entry.original_counters.as_mut() {
                c.packets += 1;
                c.bytes += 100;
            }
            self.store.update(entry, generation, self.now_ms);
        }
        self.start = (self.start + self.new) % len;
        self.store.expire(self.now_ms, true, |e| {
            black_box(e.delta.bytes);
        })
    }
}

fn poll(c: &mut Criterion) {
    let mut poller = Poller::new(10_000, 1_000);
    let (allocs, bytes) = allocations_per_op(50, || {
        poller.poll();
    });
    println!(
        "poll/10k_1k_new_1k_gone: {bytes:.0} B/op, {allocs:.2} allocs/op, {} connections in the store",
        poller.store.len()
    );
    c.bench_function("poll/10k_1k_new_1k_gone", |b| b.iter(|| poller.poll()));

    let mut group = c.benchmark_group("poll/sweep_new_per_poll");
    for new in (2_000..=14_000).step_by(2_000) {
        let mut poller = Poller::new(15_000, new);
        let (allocs, bytes) = allocations_per_op(20, || {
            poller.poll();
        });
        println!("poll/sweep_new_per_poll/{new}: {bytes:.0} B/op, {allocs:.2} allocs/op");
        group.bench_with_input(BenchmarkId::from_parameter(new), &new, |b, _| {
            b.iter(|| poller.poll())
        });
    }
    group.finish();
}

criterion_group!(benches, poll);
criterion_main!(benches);
