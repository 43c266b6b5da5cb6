//! Updating a connection the store already knows performs no heap allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowex_agent::sources::conntrack::{ConntrackEntry, Counters, Tuple};
use flowex_agent::store::{ConnectionStore, Timeouts};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn entry(i: u32, bytes: u64) -> ConntrackEntry {
    let src = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
    let dst = IpAddr::from([10, 2, 0, 1]);
    ConntrackEntry {
        family: 2,
        original: Tuple {
            source: src,
            destination: dst,
            protocol: 6,
            source_port: 1000 + (i % 50_000) as u16,
            destination_port: 80,
            ..Tuple::default()
        },
        reply: Tuple {
            source: dst,
            destination: src,
            protocol: 6,
            source_port: 80,
            destination_port: 1000 + (i % 50_000) as u16,
            ..Tuple::default()
        },
        original_counters: Some(Counters {
            packets: bytes / 100,
            bytes,
        }),
        reply_counters: Some(Counters {
            packets: 1,
            bytes: 60,
        }),
        tcp_state: Some(3),
        ..ConntrackEntry::default()
    }
}

#[test]
fn updates_of_known_connections_do_not_allocate() {
    let store = ConnectionStore::new(Timeouts {
        active_ms: 5_000,
        idle_ms: 15_000,
        deny_idle_ms: 15_000,
    });
    let entries: Vec<_> = (0..10_000).map(|i| entry(i, 1_000)).collect();
    let changed: Vec<_> = (0..10_000).map(|i| entry(i, 2_000)).collect();
    let g = store.begin_poll();
    for e in &entries {
        store.update(e, g, 0);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let g = store.begin_poll();
    for e in &changed {
        store.update(e, g, 1_000);
    }
    for e in &entries {
        store.update(e, 0, 2_000);
    }
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0);
    assert_eq!(store.len(), 10_000);
}
