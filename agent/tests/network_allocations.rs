//! A refresh of the interface metrics performs no heap allocation once every interface is
//! known and every pod found: counters, channels and driver statistics of node devices,
//! and counters of pod veths, all read into buffers and series kept from the last time.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowex_agent::network::{Links, PodName};
use support::{Netns, run};

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

#[test]
fn a_steady_refresh_allocates_nothing() {
    let host = Netns::new("alloc");
    let pods = Netns::new("allocpods");
    // Quiet namespaces: no IPv6 on the host, nothing sent from the pods.
    host.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    host.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    pods.exec(&["nft", "add table inet quiet"]);
    pods.exec(&[
        "nft",
        "add chain inet quiet out { type filter hook output priority 0; policy drop; }",
    ]);
    host.exec(&[
        "ip", "link", "add", "nic0", "type", "veth", "peer", "name", "nic1",
    ]);
    host.exec(&["ip", "link", "set", "nic0", "up"]);
    host.exec(&["ip", "link", "set", "nic1", "up"]);
    for i in 0..20 {
        let (veth, inside) = (format!("veth{i}"), format!("e{i}"));
        run(
            "ip",
            &[
                "-n", &host.name, "link", "add", &veth, "type", "veth", "peer", "name", &inside,
                "netns", &pods.name,
            ],
        );
        host.exec(&["ip", "link", "set", &veth, "up"]);
        pods.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.204.0.{}/24", i + 1),
            "dev",
            &inside,
        ]);
        pods.exec(&["ip", "link", "set", &inside, "up"]);
    }
    let registry = prometheus::Registry::new();
    let mut links = {
        let registry = registry.clone();
        host.enter(move || Links::open(&registry).unwrap())
    };
    links.set_pod_lookup(Box::new(|ip: IpAddr| {
        Some(PodName {
            namespace: "alloc".to_owned(),
            name: ip.to_string(),
        })
    }));
    for _ in 0..3 {
        links.refresh();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..50 {
        links.refresh();
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    // The refreshes did read: 22 interfaces, and a node device's channels and statistics.
    let families = registry.gather();
    let series = |name: &str| {
        families
            .iter()
            .find(|family| family.name() == name)
            .map_or(0, |family| family.get_metric().len())
    };
    assert_eq!(series("flowex_network_receive_packets_total"), 22);
    assert_eq!(series("flowex_network_channels_rx_current"), 2);
    assert!(series("flowex_network_driver_stat_total") >= 20);
    assert_eq!(allocations, 0, "{allocations} allocations in 50 refreshes");
}
