//! The per-scrape cost of the node network metrics (`NodeNetwork::refresh`: softnet, the
//! receive path's limits, and every followed interface's counters) for a node NIC and 100
//! pod veths, first on an otherwise empty network namespace, then beside 1,000 dummy
//! interfaces and 10,000 idle processes: the cost should follow the interfaces that
//! matter, not everything on the machine (no walk of /proc, no dump of every link).
//! Needs root: it makes its own network namespaces and removes them at the end.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use flowex_agent::netlink::socket::{Reply, RequestError, RequestSocket};
use flowex_agent::network::rtnetlink::stats_get_request;
use flowex_agent::network::{NodeNetwork, PodName, Sources};
use prometheus::Registry;

const VETHS: usize = 100;
const DUMMIES: usize = 1_000;
const PROCESSES: usize = 10_000;
/// The kind of the 1,000 interfaces that do not matter (dummy where the kernel has it).
const DUMMY_KIND: &str = "ifb";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip");
    assert!(status.success(), "ip {args:?}");
}

/// Runs `ip -batch` of `lines` in namespace `ns`.
fn ip_batch(ns: &str, lines: &str) {
    let path = std::env::temp_dir().join(format!("flowex-bench-{ns}-{}", std::process::id()));
    std::fs::write(&path, lines).expect("batch file");
    ip(&["-n", ns, "-batch", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(path);
}

/// The namespaces, deleted when dropped.
struct Namespaces {
    node: String,
    pods: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.node, &self.pods] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Opens the node network metrics inside `ns`.
fn open_in(ns: &str, registry: &Registry) -> NodeNetwork {
    let registry = registry.clone();
    in_namespace(ns, move || NodeNetwork::new(&registry, Sources::default()))
}

/// Runs `f` on a thread inside namespace `ns` (a netlink socket belongs to the namespace
/// of the thread that opens it).
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("namespace");
        // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// The indexes of the veths of namespace `ns` (the interfaces the refresh follows there).
fn veth_indexes(ns: &str) -> Vec<u32> {
    let output = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "type", "veth"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            line.split(':')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .expect("ifindex")
        })
        .collect()
}

/// The kernel's share alone: one `RTM_GETSTATS` per index, all in one send, the replies
/// read and nothing else done with them (what `Links::read_counters` asks, without the
/// table, the notifications, softnet or the ethtool requests).
fn stats_exchange(socket: &mut RequestSocket, request: &mut Vec<u8>, indexes: &[u32]) -> usize {
    let first = socket.reserve(indexes.len());
    request.clear();
    for (i, index) in indexes.iter().enumerate() {
        stats_get_request(request, first.wrapping_add(i as u32), *index);
    }
    let mut replies = 0;
    socket
        .exchange(request, first, indexes.len(), |_, reply| {
            if let Reply::Message(..) = reply {
                replies += 1;
            }
            Ok::<(), RequestError>(())
        })
        .expect("stats exchange");
    replies
}

fn node_network(c: &mut Criterion) {
    let namespaces = Namespaces {
        node: format!("fxbench{}-node", std::process::id()),
        pods: format!("fxbench{}-pods", std::process::id()),
    };
    for ns in [&namespaces.node, &namespaces.pods] {
        ip(&["netns", "add", ns]);
    }
    let mut node = String::from(
        "link add nic0 type veth peer name nic1\nlink set nic0 up\nlink set nic1 up\n",
    );
    let mut pods = String::new();
    let mut known: HashMap<IpAddr, PodName> = HashMap::new();
    for i in 0..VETHS {
        node.push_str(&format!(
            "link add veth{i} type veth peer name e{i} netns {}\nlink set veth{i} up\n",
            namespaces.pods
        ));
        let address = format!("10.211.0.{}", i + 1);
        pods.push_str(&format!(
            "addr add {address}/32 dev e{i}\nlink set e{i} up\n"
        ));
        known.insert(
            address.parse().expect("address"),
            PodName {
                namespace: "bench".into(),
                name: format!("pod-{i}"),
            },
        );
    }
    ip_batch(&namespaces.node, &node);
    ip_batch(&namespaces.pods, &pods);

    let registry = Registry::new();
    let network = open_in(&namespaces.node, &registry);
    let known = Arc::new(known);
    network.set_pod_lookup(move |ip| known.get(&ip).cloned());
    // Until every veth has its pod (a bounded number of address queries per refresh).
    for _ in 0..50 {
        network.refresh();
    }

    let indexes = veth_indexes(&namespaces.node);
    let mut socket = in_namespace(&namespaces.node, || {
        RequestSocket::open(libc::NETLINK_ROUTE as isize).expect("route socket")
    });
    let mut request = Vec::new();
    assert_eq!(
        stats_exchange(&mut socket, &mut request, &indexes),
        indexes.len()
    );

    let mut group = c.benchmark_group("node_network");
    group.bench_function("refresh/nic_and_100_pod_veths", |b| {
        b.iter(|| network.refresh())
    });
    group.bench_function("kernel_getstats/nic_and_100_pod_veths", |b| {
        b.iter(|| stats_exchange(&mut socket, &mut request, &indexes))
    });

    // The same, beside 1,000 interfaces the agent does not follow (dummy where the kernel
    // has it; this one builds ifb only) and 10,000 idle processes.
    let mut dummies = String::new();
    for i in 0..DUMMIES {
        dummies.push_str(&format!(
            "link add dummy{i} type {DUMMY_KIND}\nlink set dummy{i} up\n"
        ));
    }
    ip_batch(&namespaces.node, &dummies);
    for _ in 0..5 {
        network.refresh();
    }
    group.bench_function("refresh/nic_and_100_pod_veths_beside_1000_dummies", |b| {
        b.iter(|| network.refresh())
    });
    group.bench_function(
        "kernel_getstats/nic_and_100_pod_veths_beside_1000_dummies",
        |b| b.iter(|| stats_exchange(&mut socket, &mut request, &indexes)),
    );
    let mut idle: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            Command::new("sleep")
                .arg("3600")
                .stdout(Stdio::null())
                .spawn()
                .expect("sleep")
        })
        .collect();
    // Their notifications are read by the next refreshes.
    for _ in 0..5 {
        network.refresh();
    }
    group.bench_function(
        "refresh/nic_and_100_pod_veths_beside_1000_dummies_10000_processes",
        |b| b.iter(|| network.refresh()),
    );
    group.finish();
    let series = registry
        .gather()
        .iter()
        .find(|family| family.name() == "flowex_network_up")
        .map_or(0, |family| family.get_metric().len());
    println!(
        "node_network: {series} interfaces with series ({DUMMIES} dummies present, not followed)"
    );
    for child in &mut idle {
        let _ = child.kill();
    }
    for child in &mut idle {
        let _ = child.wait();
    }
    drop(namespaces);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = node_network
}
criterion_main!(benches);
