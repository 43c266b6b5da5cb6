//! The probe loaded for real: sockets used by this process are attributed to it, with its
//! name and cgroup, whichever end (client, accepted server socket, unconnected UDP server).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;

use flowex_ebpf::{Attachment, OwnerMap, SocketKey, SocketOwner, SocketProbe};

fn own_name() -> String {
    // The thread group leader's name: what the probe records, whatever thread sends.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", std::process::id())).unwrap();
    comm.trim_end().to_string()
}

fn own_cgroup_id() -> u64 {
    let line = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    std::fs::metadata(format!("/sys/fs/cgroup{path}"))
        .unwrap()
        .ino()
}

fn assert_owned_by_us(owner: Option<SocketOwner>, what: &str) {
    let owner = owner.unwrap_or_else(|| panic!("no owner recorded for {what}"));
    assert_eq!(owner.pid, std::process::id(), "{what}: pid");
    assert_eq!(owner.name(), own_name(), "{what}: name");
    assert_eq!(owner.cgroup_id, own_cgroup_id(), "{what}: cgroup id");
    assert!(owner.recorded_ns > 0, "{what}: recorded_ns");
}

fn tcp_exchange(listen: &str) -> (SocketKey, SocketKey) {
    let listener = TcpListener::bind(listen).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(server_addr).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).unwrap();
    accepted.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    let c_local = client.local_addr().unwrap();
    let client_key = SocketKey::new(
        6,
        c_local.ip(),
        c_local.port(),
        server_addr.ip(),
        server_addr.port(),
    );
    let server_key = SocketKey::new(
        6,
        server_addr.ip(),
        server_addr.port(),
        c_local.ip(),
        c_local.port(),
    );
    (client_key, server_key)
}

#[test]
fn tcp_client_and_server_sockets_are_attributed_ipv4_and_ipv6() {
    let probe = SocketProbe::load(4096, None).expect("loading the probe (run as root)");
    // This kernel has BTF and allows tp_btf: the fast path is the one in use.
    assert_eq!(probe.attachment(), Attachment::BtfTracePoint);
    tcp_attribution(&probe);
}

#[test]
fn the_classic_tracepoint_fallback_attributes_the_same() {
    let probe = SocketProbe::load_tracepoints(4096, None).unwrap();
    assert_eq!(probe.attachment(), Attachment::TracePoint);
    tcp_attribution(&probe);
}

fn tcp_attribution(probe: &SocketProbe) {
    let before = probe.stats();
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let (client, server) = tcp_exchange(listen);
        assert_owned_by_us(probe.owners().get(&client), &format!("{listen} client"));
        assert_owned_by_us(
            probe.owners().get(&server),
            &format!("{listen} accepted socket"),
        );
        assert_owned_by_us(probe.owners().find(&server), &format!("{listen} find"));
    }
    let after = probe.stats();
    // 2 families x (client + accepted socket), each recorded once; 2 x 4 calls at least.
    assert!(
        after.recorded >= before.recorded + 4,
        "{before:?} -> {after:?}"
    );
    assert!(after.calls >= before.calls + 8, "{before:?} -> {after:?}");
    assert_eq!(after.map_errors, before.map_errors);
}

/// A connect that never carries data (a health check, a port probe) is still attributed:
/// the owner is taken at SYN_SENT and recorded once the tuple is complete.
#[test]
fn a_connection_without_data_is_attributed_to_the_connecting_process() {
    for probe in [
        SocketProbe::load(4096, None).unwrap(),
        SocketProbe::load_tracepoints(4096, None).unwrap(),
    ] {
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(listen).unwrap();
            let server = listener.local_addr().unwrap();
            let client = TcpStream::connect(server).unwrap();
            let local = client.local_addr().unwrap();
            let key = SocketKey::new(6, local.ip(), local.port(), server.ip(), server.port());
            drop(client);
            assert_owned_by_us(
                probe.owners().get(&key),
                &format!("{:?} data-less client on {listen}", probe.attachment()),
            );
        }
    }
}

#[test]
fn unconnected_udp_server_is_found_through_the_wildcard() {
    let probe = SocketProbe::load(4096, None).unwrap();
    let server = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"hello", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = server.recv_from(&mut buf).unwrap();
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    // The flow's server end: local 127.0.0.1:port, remote the client. The socket itself is
    // bound to any address and not connected, so only the wildcard entry exists.
    let flow_end = SocketKey::new(17, localhost, port, from.ip(), from.port());
    assert_eq!(probe.owners().get(&flow_end), None);
    assert_owned_by_us(probe.owners().find(&flow_end), "UDP server");
    // The client is bound to 127.0.0.1 and not connected.
    let client_end = SocketKey::new(17, localhost, from.port(), localhost, port);
    assert_owned_by_us(probe.owners().find(&client_end), "UDP client");
}

/// Runs `f` on a thread inside the named network namespace.
fn in_netns<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd changes only this thread's netns.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .unwrap()
}

fn sh(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{args:?}");
}

/// Two namespaces with distinct addresses, and in each a UDP server on 0.0.0.0:9999: the
/// wildcard sockets have the same key but for the namespace, and each flow finds its own
/// namespace's server.
#[test]
fn wildcard_udp_servers_in_two_namespaces_are_told_apart() {
    let probe = SocketProbe::load(4096, None).unwrap();
    let names: Vec<String> = (1..=2)
        .map(|i| format!("fxprobe{}-{i}", std::process::id()))
        .collect();
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", name])
                    .status();
            }
        }
    }
    let _cleanup = Cleanup(names.clone());
    let mut seen = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let address = format!("10.77.0.{}", i + 1);
        sh(&["ip", "netns", "add", name]);
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        sh(&[
            "ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ]);
        sh(&["ip", "-n", name, "link", "set", "d1", "up"]);
        sh(&[
            "ip",
            "-n",
            name,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "d0",
        ]);
        sh(&["ip", "-n", name, "link", "set", "d0", "up"]);
        let ip: IpAddr = address.parse().unwrap();
        let (netns, client_port) = in_netns(name, move || {
            // A connected socket on the address teaches the probe the address's namespace.
            let listener = TcpListener::bind((ip, 0)).unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut accepted, _) = listener.accept().unwrap();
            client.write_all(b"x").unwrap();
            accepted.read_exact(&mut [0u8; 1]).unwrap();
            // The UDP server, bound to any address, unconnected.
            let server = UdpSocket::bind("0.0.0.0:9999").unwrap();
            let client = UdpSocket::bind((ip, 0)).unwrap();
            client.send_to(b"hello", (ip, 9999)).unwrap();
            server.recv_from(&mut [0u8; 16]).unwrap();
            (
                flowex_ebpf::current_netns(),
                client.local_addr().unwrap().port(),
            )
        });
        seen.push((netns, address, client_port));
    }
    assert_ne!(seen[0].0, seen[1].0);
    for (netns, address, client_port) in &seen {
        let ip: IpAddr = address.parse().unwrap();
        let flow_end = SocketKey::new(17, ip, 9999, ip, *client_port);
        let owner = probe
            .owners()
            .find(&flow_end)
            .expect("the server of this namespace");
        assert_eq!(owner.netns, *netns, "{address}");
        assert_eq!(owner.pid, std::process::id());
    }
    // An address whose namespace was never seen finds no unconnected socket.
    let stranger: IpAddr = "10.77.0.99".parse().unwrap();
    assert_eq!(
        probe
            .owners()
            .find(&SocketKey::new(17, stranger, 9999, stranger, 1)),
        None
    );
}

#[test]
fn a_pinned_map_is_readable_by_another_handle_and_removed_on_drop() {
    let path = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/flowex-test-{}/socket_owners",
        std::process::id()
    ));
    let probe = SocketProbe::load(1024, Some(&path)).unwrap();
    let (client, _) = tcp_exchange("127.0.0.1:0");
    let reader = OwnerMap::open_pinned(&path).unwrap();
    assert_owned_by_us(reader.get(&client), "through the pin");
    assert!(reader.entries().any(|(key, _)| key == client));
    drop(probe);
    assert!(!path.exists());
    let _ = std::fs::remove_dir(path.parent().unwrap());
}

/// A map too small for the sockets in use evicts owners of live sockets; the periodic
/// re-check finds them missing, counts the eviction, and records them again.
#[test]
fn evicted_owners_of_live_sockets_are_counted_and_recorded_again() {
    let probe = SocketProbe::load(16, None).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let first = UdpSocket::bind("127.0.0.1:0").unwrap();
    first.connect(sink.local_addr().unwrap()).unwrap();
    first.send(b"x").unwrap();
    let first_addr = first.local_addr().unwrap();
    let key = SocketKey::new(
        17,
        first_addr.ip(),
        first_addr.port(),
        sink.local_addr().unwrap().ip(),
        sink.local_addr().unwrap().port(),
    );
    assert_owned_by_us(probe.owners().get(&key), "first socket");
    // 256 other sockets push it out of a 16-entry map.
    let others: Vec<UdpSocket> = (0..256)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"y", sink.local_addr().unwrap()).unwrap();
            s
        })
        .collect();
    assert_eq!(
        probe.owners().get(&key),
        None,
        "not evicted: the test proves nothing"
    );
    let before = probe.stats().evicted;
    for _ in 0..4096 {
        first.send(b"x").unwrap();
    }
    assert!(probe.stats().evicted > before, "{:?}", probe.stats());
    assert_owned_by_us(probe.owners().get(&key), "first socket, recorded again");
    drop(others);
}

#[test]
fn a_zero_sized_map_is_refused() {
    assert!(matches!(
        SocketProbe::load(0, None),
        Err(flowex_ebpf::ProbeError::ZeroSize)
    ));
}
