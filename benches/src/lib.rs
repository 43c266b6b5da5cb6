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
