//! Shared pieces of flowex's criterion benchmarks: a counting global allocator that reports
//! bytes and allocations per operation, like Go's `-benchmem`. A benchmark that runs other
//! work in the same process (collector-sim receiving what the exporter sends) can count
//! only the threads it marks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A global allocator that counts allocations and allocated bytes.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static ONLY_MARKED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static MARKED: Cell<bool> = const { Cell::new(false) };
}

/// From now on, count only threads that called [`mark_this_thread`].
pub fn count_only_marked_threads() {
    ONLY_MARKED.store(true, Ordering::Relaxed);
}

/// Counts this thread's allocations (see [`count_only_marked_threads`]).
pub fn mark_this_thread() {
    MARKED.with(|m| m.set(true));
}

fn counted() -> bool {
    !ONLY_MARKED.load(Ordering::Relaxed) || MARKED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: defers every operation to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and bytes allocated so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocSnapshot {
    pub allocations: u64,
    pub bytes: u64,
}

/// Reads the counters.
pub fn alloc_snapshot() -> AllocSnapshot {
    AllocSnapshot {
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// Runs `op` `iterations` times and returns (allocations, bytes) per iteration.
pub fn allocations_per_op(iterations: u64, mut op: impl FnMut()) -> (f64, f64) {
    let before = alloc_snapshot();
    for _ in 0..iterations {
        op();
    }
    let after = alloc_snapshot();
    (
        (after.allocations - before.allocations) as f64 / iterations as f64,
        (after.bytes - before.bytes) as f64 / iterations as f64,
    )
}

/// A synthetic established TCP connection as a conntrack dump shows it (no NAT): the
/// original tuple `source:source_port -> destination:destination_port`, its mirror as the
/// reply, and the given (packets, bytes) counters per direction.
pub fn tcp_entry(
    source: std::net::IpAddr,
    destination: std::net::IpAddr,
    source_port: u16,
    destination_port: u16,
    original: (u64, u64),
    reply: (u64, u64),
) -> flowex_agent::sources::conntrack::ConntrackEntry {
    use flowex_agent::sources::conntrack::{ConntrackEntry, Counters, Tuple};
    let tuple = |source, destination, source_port, destination_port| Tuple {
        source,
        destination,
        protocol: 6,
        source_port,
        destination_port,
        ..Tuple::default()
    };
    ConntrackEntry {
        family: if source.is_ipv4() { 2 } else { 10 },
        original: tuple(source, destination, source_port, destination_port),
        reply: tuple(destination, source, destination_port, source_port),
        original_counters: Some(Counters {
            packets: original.0,
            bytes: original.1,
        }),
        reply_counters: Some(Counters {
            packets: reply.0,
            bytes: reply.1,
        }),
        tcp_state: Some(3),
        ..ConntrackEntry::default()
    }
}

/// collector-sim on a UDP loopback port and the agent's exporting process sending to it
/// (1472-byte messages, `queue_capacity` records queued), started on `runtime`.
pub fn udp_export_pair(
    runtime: &tokio::runtime::Runtime,
    queue_capacity: usize,
) -> (
    collector_sim::Collector,
    flowex_agent::export::ExportingProcess,
) {
    use flowex_agent::export::{CollectorTarget, ExportingProcess};
    let collector = collector_sim::Collector::start(collector_sim::CollectorConfig::new(vec![
        "udp://127.0.0.1:0".parse().expect("endpoint"),
    ]))
    .expect("collector");
    let target = CollectorTarget {
        name: "bench".into(),
        address: collector.udp_endpoint().expect("udp").addr().to_string(),
        transport: flowex_agent::config::Transport::Udp,
        tls: None,
        api_certificates: None,
        filter: None,
        options: false,
        max_message_size: 1472,
        template_refresh: std::time::Duration::from_secs(600),
        queue_capacity,
        max_reconnect_delay: std::time::Duration::from_secs(2),
        log_interval: flowex_agent::export::DEFAULT_LOG_INTERVAL,
    };
    let templates = std::sync::Arc::new(
        flowex_agent::records::templates(&flowex_ipfix::Registry::default()).expect("templates"),
    );
    let process = {
        let _guard = runtime.enter();
        ExportingProcess::start(&[target], templates, 1).expect("exporting process")
    };
    (collector, process)
}
