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
use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
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
