//! The record builder's cache: a connection's owners and pods are looked up at its first
//! export and kept with it in the store, so later exports name what held its addresses
//! when it started, and an end not found yet is looked up again a bounded number of times.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;

use flowex_agent::config::AttributionConfig;
use flowex_agent::enrich::attribution::Attribution;
use flowex_agent::enrich::metadata::Metadata;
use flowex_agent::records::{BuilderStats, PodNetworks, RecordBuilder};
use flowex_agent::sources::conntrack::{ConntrackEntry, Counters, Tuple};
use flowex_agent::store::{ConnectionStore, Due, Timeouts};
use flowex_ipfix::antrea::FlowType;
use k8s_openapi::api::core::v1::{Node, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

const ACTIVE: u64 = 1_000;

fn store() -> ConnectionStore {
    ConnectionStore::new(Timeouts {
        active_ms: ACTIVE,
        idle_ms: 600_000,
        deny_idle_ms: 1_000,
    })
}

fn tcp(
    source: IpAddr,
    source_port: u16,
    destination: IpAddr,
    port: u16,
    packets: u64,
) -> ConntrackEntry {
    let tuple = |source, destination, source_port, destination_port| Tuple {
        source,
        destination,
        protocol: 6,
        source_port,
        destination_port,
        ..Tuple::default()
    };
    ConntrackEntry {
        family: 2,
        original: tuple(source, destination, source_port, port),
        reply: tuple(destination, source, port, source_port),
        original_counters: Some(Counters {
            packets,
            bytes: 100 * packets,
        }),
        reply_counters: Some(Counters {
            packets,
            bytes: 100 * packets,
        }),
        tcp_state: Some(3),
        id: 7,
        ..ConntrackEntry::default()
    }
}

fn pod(name: &str, uid: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-a".into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..PodStatus::default()
        }),
    }
}

/// Expires what is due at `now` and returns (source port, source pod, source process)
/// of each record.
fn export(
    store: &ConnectionStore,
    builder: &mut RecordBuilder,
    now: u64,
) -> Vec<(u16, String, String)> {
    let mut due: Vec<Due> = Vec::new();
    store.expire_into(now, false, usize::MAX, &mut due);
    due.iter()
        .map(|due| {
            builder.with_record(store, due, |record| {
                (
                    record.flow.source_port,
                    record.flow.source_pod_name.to_owned(),
                    record
                        .owners
                        .source
                        .as_ref()
                        .map_or(String::new(), |o| o.name().to_owned()),
                )
            })
        })
        .collect()
}

#[test]
fn a_connection_keeps_the_pod_that_held_its_address_when_it_started() {
    let metadata = Metadata::disabled(None);
    metadata.on_pod_event(Event::Apply(pod("cart-1", "uid-1", "10.244.0.5")), 0);
    metadata.mark_active();
    let networks = PodNetworks::new(vec![("10.244.0.0".parse().unwrap(), 16)]);
    let mut builder = RecordBuilder::new(networks, Attribution::disabled(), Arc::clone(&metadata));
    let store = store();
    let client: IpAddr = "10.244.0.5".parse().unwrap();
    let server: IpAddr = "10.0.0.9".parse().unwrap();
    store.update(tcp(client, 40_000, server, 443, 1), 0, 100);
    assert_eq!(
        export(&store, &mut builder, 100 + ACTIVE),
        [(40_000, "cart-1".to_owned(), String::new())]
    );
    assert_eq!(
        builder.stats(),
        BuilderStats {
            cached: 0,
            resolved: 1,
            interned: 1
        }
    );
    // The pod goes; four others take its address one after another, so the index no
    // longer remembers that cart-1 ever held it.
    let mut now = 5_000;
    metadata.on_pod_event(Event::Delete(pod("cart-1", "uid-1", "10.244.0.5")), now);
    for n in 2..=6 {
        now += 1_000;
        let name = format!("cart-{n}");
        let uid = format!("uid-{n}");
        metadata.on_pod_event(Event::Apply(pod(&name, &uid, "10.244.0.5")), now);
        if n < 6 {
            metadata.on_pod_event(Event::Delete(pod(&name, &uid, "10.244.0.5")), now + 500);
        }
    }
    assert!(metadata.pods().pod_at(client, 100).is_none());
    // The old connection, still going, still names the pod it started in, without a lookup.
    store.update(tcp(client, 40_000, server, 443, 2), 0, now);
    assert_eq!(
        export(&store, &mut builder, now + ACTIVE),
        [(40_000, "cart-1".to_owned(), String::new())]
    );
    assert_eq!(builder.stats().cached, 1);
    assert_eq!(builder.stats().resolved, 1);
    // A new connection from the address names the pod that holds it now.
    now += 2 * ACTIVE;
    store.update(tcp(client, 40_001, server, 443, 1), 0, now);
    let mut records = export(&store, &mut builder, now + ACTIVE);
    records.sort();
    assert_eq!(
        records,
        [
            (40_000, "cart-1".to_owned(), String::new()),
            (40_001, "cart-6".to_owned(), String::new()),
        ]
    );
    assert_eq!(builder.stats().resolved, 2);
}

#[test]
fn an_end_whose_owner_was_not_known_yet_is_found_at_a_later_export() {
    let config = AttributionConfig {
        pin_path: String::new(),
        ..AttributionConfig::default()
    };
    // Tests run as root: the probe loads.
    let attribution = Attribution::start(&config).expect("loading the eBPF socket probe");
    let mut builder = RecordBuilder::new(
        PodNetworks::default(),
        attribution,
        Metadata::disabled(None),
    );
    let store = store();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    // The client's port, reserved before any packet: the probe has not seen its socket.
    let client = socket2_free_port();
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    store.update(tcp(localhost, client, localhost, server_port, 1), 0, 100);
    assert_eq!(
        export(&store, &mut builder, 100 + ACTIVE),
        [(client, String::new(), String::new())]
    );
    // Now the client talks from that port: the probe records its socket and owner.
    let mut stream = connect_from(client, server_port);
    let (mut accepted, _) = listener.accept().unwrap();
    stream.write_all(b"hello").unwrap();
    let mut buffer = [0u8; 5];
    accepted.read_exact(&mut buffer).unwrap();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let me = me.trim_end().to_owned();
    let mut now = 100 + ACTIVE;
    for exports in 2..=4 {
        now += ACTIVE;
        store.update(
            tcp(localhost, client, localhost, server_port, exports),
            0,
            now,
        );
        assert_eq!(
            export(&store, &mut builder, now),
            [(client, String::new(), me.clone())],
            "export {exports}"
        );
    }
    // Looked up at the first two exports; kept from the third on.
    assert_eq!(builder.stats().resolved, 2);
    assert_eq!(builder.stats().cached, 2);
}

/// Expires what is due at `now` and returns (source port, source pod, destination pod,
/// flow type) of each record.
fn export_pods(
    store: &ConnectionStore,
    builder: &mut RecordBuilder,
    now: u64,
) -> Vec<(u16, String, String, FlowType)> {
    let mut due: Vec<Due> = Vec::new();
    store.expire_into(now, false, usize::MAX, &mut due);
    due.iter()
        .map(|due| {
            builder.with_record(store, due, |record| {
                (
                    record.flow.source_port,
                    record.flow.source_pod_name.to_owned(),
                    record.flow.destination_pod_name.to_owned(),
                    record.flow.flow_type,
                )
            })
        })
        .collect()
}

/// A pod created at the epoch (before every connection of these tests).
fn pod_on(name: &str, node: &str, ip: &str, container: Option<&str>, host_network: bool) -> Pod {
    let statuses: Vec<_> = container
        .iter()
        .map(|id| serde_json::json!({"name": "main", "ready": true, "restartCount": 0, "image": "app", "imageID": "", "containerID": format!("containerd://{id}")}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("uid-{name}"),
            "creationTimestamp": "1970-01-01T00:00:00Z",
        },
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": []},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": ip}],
            "containerStatuses": statuses,
        },
    }))
    .unwrap()
}

/// Feeds the first lists of the three indexes as the watchers do (Init, InitApply...,
/// InitDone): `pods`, no Service, and node-b with pod CIDR 10.244.2.0/24.
fn first_lists(metadata: &Metadata, pods: Vec<Pod>, now: u64) {
    metadata.on_pod_event(Event::Init, now);
    for pod in pods {
        metadata.on_pod_event(Event::InitApply(pod), now);
    }
    metadata.on_pod_event(Event::InitDone, now);
    metadata.on_service_event(Event::Init);
    metadata.on_service_event(Event::InitDone);
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "node-b", "uid": "0a0b0c0d-0e0f-4a1b-8c2d-3e4f50617283"},
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}
    }))
    .unwrap();
    metadata.on_node_event(Event::Init);
    metadata.on_node_event(Event::InitApply(node));
    metadata.on_node_event(Event::InitDone);
}

#[test]
fn what_a_lookup_misses_before_the_first_lists_are_in_is_looked_up_again() {
    let metadata = Metadata::disabled(None);
    // The watchers run; no index has its first list yet.
    metadata.activate();
    // No export.podCIDRs: only the pod index and the nodes' pod CIDRs say what a pod is.
    let mut builder = RecordBuilder::new(
        PodNetworks::default(),
        Attribution::disabled(),
        Arc::clone(&metadata),
    );
    let store = store();
    let client: IpAddr = "10.244.1.5".parse().unwrap();
    let server: IpAddr = "10.244.2.7".parse().unwrap();
    store.update(tcp(client, 40_000, server, 5432, 1), 0, 100);
    // Nothing listed: neither address is known as a pod's. Settled on that, the
    // connection would be exported like this for good.
    assert_eq!(
        export_pods(&store, &mut builder, 100 + ACTIVE),
        [(40_000, String::new(), String::new(), FlowType::Unspecified)]
    );
    let mut now = 100 + ACTIVE;
    first_lists(
        &metadata,
        vec![
            pod_on("web", "node-a", "10.244.1.5", None, false),
            pod_on("db", "node-b", "10.244.2.7", None, false),
        ],
        now,
    );
    assert!(metadata.is_synced());
    for packets in 2..=3 {
        now += ACTIVE;
        store.update(tcp(client, 40_000, server, 5432, packets), 0, now);
        assert_eq!(
            export_pods(&store, &mut builder, now),
            [(
                40_000,
                "web".to_owned(),
                "db".to_owned(),
                FlowType::InterNode
            )],
            "export {packets}"
        );
    }
    // Looked up at the first two exports (the first one did not count), kept from then on.
    assert_eq!(builder.stats().resolved, 2);
    assert_eq!(builder.stats().cached, 1);
}

/// A cgroup named as containerd names a container's (`cri-containerd-<id>.scope`), in the
/// cgroup v2 hierarchy (mounted for the test where the machine has none); removed when
/// dropped.
struct ContainerCgroup {
    path: std::path::PathBuf,
    mounted: Option<std::path::PathBuf>,
}

impl ContainerCgroup {
    fn new(id: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        // Fields: ... mount point (5th) ... " - " fstype ...
        let existing = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        });
        let (root, mounted) = match existing {
            Some(root) => (root, None),
            None => {
                let root = std::env::temp_dir().join(format!("flowex-cg2-{}", std::process::id()));
                std::fs::create_dir_all(&root).unwrap();
                let status = std::process::Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&root)
                    .status()
                    .unwrap();
                assert!(status.success(), "mounting cgroup2 at {}", root.display());
                (root.clone(), Some(root))
            }
        };
        let path = root.join(format!("cri-containerd-{id}.scope"));
        // Left by a run that was killed (empty by now: its processes are gone).
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap();
        Self { path, mounted }
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
        if let Some(root) = &self.mounted {
            let _ = std::process::Command::new("umount").arg(root).status();
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// A child process, killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_owner_found_late_finds_a_host_network_pod_by_its_container() {
    // 64 hex digits, this process's own.
    let container = format!("c0ffee{:058x}", std::process::id());
    let cgroup = ContainerCgroup::new(&container);
    let metadata = Metadata::disabled(None);
    metadata.mark_active();
    // A host-network pod: its address is the node's, so only its container names it.
    metadata.on_pod_event(
        Event::Apply(pod_on(
            "agent",
            "node-a",
            "192.0.2.10",
            Some(&container),
            true,
        )),
        0,
    );
    let config = AttributionConfig {
        pin_path: String::new(),
        ..AttributionConfig::default()
    };
    let attribution = Attribution::start(&config).expect("loading the eBPF socket probe");
    let mut builder =
        RecordBuilder::new(PodNetworks::default(), attribution, Arc::clone(&metadata));
    let store = store();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let client = socket2_free_port();
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    store.update(tcp(localhost, client, localhost, server_port, 1), 0, 100);
    // No owner yet, and 127.0.0.1 is no pod's address: the pods look settled.
    assert_eq!(
        export(&store, &mut builder, 100 + ACTIVE),
        [(client, String::new(), String::new())]
    );
    // The client, in the container's cgroup, talks from that port.
    let script = r#"
import os, socket, sys
with open(sys.argv[1] + "/cgroup.procs", "w") as procs:
    procs.write(str(os.getpid()))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[2])))
s.connect(("127.0.0.1", int(sys.argv[3])))
s.sendall(b"hello")
sys.stdin.read()
"#;
    // Killed and reaped before the cgroup is removed (declared after it, dropped first).
    let mut child = KillOnDrop(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&cgroup.path)
            .arg(client.to_string())
            .arg(server_port.to_string())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut accepted = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let exited = child.0.try_wait().unwrap();
                assert!(exited.is_none(), "the client exited: {exited:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection in 10 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    accepted.set_nonblocking(false).unwrap();
    accepted
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buffer = [0u8; 5];
    accepted.read_exact(&mut buffer).unwrap();
    let now = 100 + 2 * ACTIVE;
    store.update(tcp(localhost, client, localhost, server_port, 2), 0, now);
    let records = export(&store, &mut builder, now);
    drop(child);
    // The owner found now names the pod by its container, although the pods had looked
    // settled.
    assert_eq!(
        records,
        [(client, "agent".to_owned(), "python3".to_owned())]
    );
    assert_eq!(builder.stats().resolved, 2);
}

/// A loopback port free now (bound and released).
fn socket2_free_port() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// A TCP connection to `port` from local port `from` (SO_REUSEADDR so the just-released
/// port binds at once).
fn connect_from(from: u16, port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let address = |port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = address(from);
        let size = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), size),
            0
        );
        let remote = address(port);
        assert_eq!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), size),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}
