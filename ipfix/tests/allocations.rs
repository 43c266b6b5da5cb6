//! Adding a record whose values are in memory performs no heap allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use flowex_ipfix::antrea::{self, Counters, FlowRecord};
use flowex_ipfix::{EncodeError, Encoder, Registry};

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
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn encoding_records_does_not_allocate() {
    let registry = Registry::default();
    let template = antrea::ipv4_template(&registry).unwrap();
    let mut encoder = Encoder::new(42, 1472).unwrap();
    let record = FlowRecord {
        source_address: IpAddr::V4(Ipv4Addr::new(10, 10, 0, 5)),
        destination_address: IpAddr::V4(Ipv4Addr::new(10, 10, 1, 7)),
        source_port: 43_512,
        destination_port: 8080,
        protocol: 6,
        forward: Counters {
            packet_total: 10,
            octet_total: 1500,
            packet_delta: 2,
            octet_delta: 300,
        },
        source_pod_name: "frontend-5c7b8d9f4-x2k8p",
        source_pod_namespace: "shop",
        source_node_name: "worker-3",
        tcp_state: "ESTABLISHED",
        ..Default::default()
    };

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut messages = 0;
    let mut bytes = 0;
    for _ in 0..10_000 {
        match encoder.add_record(&template, &record) {
            Ok(()) => {}
            Err(EncodeError::MessageFull) => {
                bytes += encoder.finish(1_700_000_000).len();
                messages += 1;
                encoder.add_record(&template, &record).unwrap();
            }
            Err(other) => panic!("{other}"),
        }
    }
    bytes += encoder.finish(1_700_000_000).len();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "encoding allocated");
    assert!(messages > 100 && bytes > 10_000 * 100);
    assert_eq!(encoder.sequence_number(), 10_000);
}
