//! Mirrors Antrea's AddOrUpdateConns benchmark: a poll of 10,000 connections of which 1,000
//! are new and 1,000 from the previous poll are gone, into the store, followed by the expiry
//! pass that notices the gone ones (more work than Antrea's op, which has no expiry).
//! Data is generated outside the timed region. A sweep over new connections per poll shows
//! time, bytes and allocations per op growing linearly; B/op and allocs/op are printed like
//! Go's -benchmem. `during_export`: the same poll while another thread exports 20,000
//! other connections of the same store again and again (expiry, record building with pod
//! lookups, encoding), as the agent's expiry task does: records are built outside the
//! store's locks, so the poll should barely notice.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flowex_agent::enrich::attribution::Attribution;
use flowex_agent::enrich::metadata::Metadata;
use flowex_agent::export::BatchBuilder;
use flowex_agent::records::{EXPIRY_CHUNK, PodNetworks, RecordBuilder};
use flowex_agent::sources::conntrack::ConntrackEntry;
use flowex_agent::store::{ConnectionStore, Due, Timeouts};
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
    store: Arc<ConnectionStore>,
    /// Expired connections, reused poll after poll as the agent does.
    due: Vec<Due>,
    pool: Vec<ConntrackEntry>,
    window: usize,
    new: usize,
    start: usize,
    now_ms: u64,
    /// Run the expiry pass after the updates (off: the updates alone, which is all the
    /// agent's conntrack thread does; expiry is the export task's).
    expire: bool,
}

impl Poller {
    fn new(window: usize, new: usize) -> Self {
        Self::with_timeouts(
            window,
            new,
            Timeouts {
                active_ms: 1_000,
                idle_ms: 60_000,
                deny_idle_ms: 60_000,
            },
        )
    }

    fn with_timeouts(window: usize, new: usize, timeouts: Timeouts) -> Self {
        let mut poller = Self {
            store: Arc::new(ConnectionStore::new(timeouts)),
            due: Vec::new(),
            // large enough that an entry leaves the window long before it comes back
            pool: pool((window + new) * 12),
            window,
            new,
            start: 0,
            now_ms: 0,
            expire: true,
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
        self.due.clear();
        if !self.expire {
            return 0;
        }
        self.store
            .expire_into(self.now_ms, true, usize::MAX, &mut self.due)
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

/// Adds `connections` connections the poller's window never touches.
fn add_export_connections(store: &ConnectionStore, connections: usize) {
    for i in 0..connections as u32 {
        let src = IpAddr::from([10, 244, (i >> 8) as u8, i as u8]);
        let entry = tcp_entry(
            src,
            IpAddr::from([10, 97, 0, 1]),
            1024 + (i % 60_000) as u16,
            8080,
            (10, 1_000),
            (10, 9_000),
        );
        store.update(entry, 0, 0);
    }
}

/// Exports `connections` other connections of `store` round after round until `stop`:
/// every round moves its own clock a second on, so each is due again (active timeout).
fn exporter(
    store: Arc<ConnectionStore>,
    connections: usize,
    stop: Arc<AtomicBool>,
    records: Arc<AtomicU64>,
    pause: Option<std::time::Duration>,
    start_ms: u64,
) -> std::thread::JoinHandle<()> {
    add_export_connections(&store, connections);
    std::thread::spawn(move || {
        let metadata = Metadata::disabled(None);
        metadata.mark_active();
        let networks = PodNetworks::new(vec![("10.244.0.0".parse().expect("ip"), 16)]);
        let mut builder = RecordBuilder::new(networks, Attribution::disabled(), metadata);
        let mut batch = BatchBuilder::default();
        let mut due = Vec::new();
        // Far ahead of the poller's clock: its connections are due here too.
        let mut now = start_ms;
        while !stop.load(Ordering::Relaxed) {
            now += 1_000;
            // In the agent's chunks (RecordBuilder::export_due): each expiry call copies
            // at most EXPIRY_CHUNK connections, a few hundred per shard lock.
            loop {
                due.clear();
                let taken = store.expire_into(now, false, EXPIRY_CHUNK, &mut due);
                for d in &due {
                    builder.push(&store, d, &mut batch);
                }
                drop(batch.finish());
                records.fetch_add(taken as u64, Ordering::Relaxed);
                if taken < EXPIRY_CHUNK {
                    break;
                }
            }
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
        }
    })
}

fn poll_during_export(c: &mut Criterion) {
    // Nothing goes idle: the exporter's clock runs far ahead of the poller's.
    let timeouts = Timeouts {
        active_ms: 1_000,
        idle_ms: 1 << 50,
        deny_idle_ms: 60_000,
    };
    let mut group = c.benchmark_group("poll_during_export");
    // The conntrack thread's share of a poll: the updates (expiry is the export task's).
    // No connection comes or goes (nothing would remove the gone ones without the
    // poller's expiry pass, and a growing store would blur the comparison): 10,000 known
    // connections updated per poll, the common case.
    let mut quiet = Poller::with_timeouts(10_000, 0, timeouts);
    quiet.expire = false;
    add_export_connections(&quiet.store, 20_000);
    group.bench_function("10k_updates_idle", |b| b.iter(|| quiet.poll()));
    let mut poller = Poller::with_timeouts(10_000, 0, timeouts);
    poller.expire = false;
    let stop = Arc::new(AtomicBool::new(false));
    let exported = Arc::new(AtomicU64::new(0));
    let thread = exporter(
        Arc::clone(&poller.store),
        20_000,
        Arc::clone(&stop),
        Arc::clone(&exported),
        None,
        1_000_000_000,
    );
    let started = std::time::Instant::now();
    group.bench_function("10k_updates_while_exporting_20k", |b| {
        b.iter(|| poller.poll())
    });
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("exporter");
    println!(
        "poll_during_export: the exporter built {:.2} M records/s alongside the polls",
        exported.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64() / 1e6
    );
    // The control: the same exporter on a store of its own. What the poll loses here is
    // the machine's (two CPUs busy), not the store's locks or shared connections.
    let other = Arc::new(ConnectionStore::new(timeouts));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = exporter(
        other,
        30_000,
        Arc::clone(&stop),
        Arc::new(AtomicU64::new(0)),
        None,
        1_000_000_000,
    );
    group.bench_function("10k_updates_while_another_store_exports_30k", |b| {
        b.iter(|| quiet.poll())
    });
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("exporter");
    // Paced as the agent's expiry task is: a round (all 30,000 connections of the store
    // due, the poller's among them) every 100 ms, the expiry tick.
    let stop = Arc::new(AtomicBool::new(false));
    let paced = Arc::new(AtomicU64::new(0));
    let thread = exporter(
        Arc::clone(&poller.store),
        0,
        Arc::clone(&stop),
        Arc::clone(&paced),
        Some(std::time::Duration::from_millis(100)),
        // Past every deadline the flat-out exporter above set.
        1_000_000_000_000,
    );
    let started = std::time::Instant::now();
    group.bench_function("10k_updates_while_exporting_every_100ms", |b| {
        b.iter(|| poller.poll())
    });
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("exporter");
    println!(
        "poll_during_export: the paced exporter built {:.2} M records/s alongside the polls",
        paced.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64() / 1e6
    );
    group.finish();
}

/// The two halves of a poll op apart, on 10,000 known connections: the updates alone (the
/// conntrack thread's work) and updates with the expiry pass (the export task's share).
fn updates_only(c: &mut Criterion) {
    let mut poller = Poller::new(10_000, 0);
    poller.expire = false;
    c.bench_function("updates_only/10k", |b| b.iter(|| poller.poll()));
    let mut poller = Poller::new(10_000, 0);
    c.bench_function("updates_and_expiry/10k", |b| b.iter(|| poller.poll()));
}

criterion_group!(benches, poll, poll_during_export, updates_only);
criterion_main!(benches);
