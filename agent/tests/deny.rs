//! NFLOG deny events against the real kernel: nftables `log group N prefix ... drop`
//! rules on input and output, IPv4 and IPv6, TCP and UDP.

mod support;

use std::net::{IpAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowex_agent::sources::deny::{DEFAULT_COPY_RANGE, DenyError, DenyListener, PacketTuple};
use support::{Netns, Pair};

const GROUP: u16 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    tuple: PacketTuple,
    hook: u8,
    in_ifindex: Option<u32>,
    out_ifindex: Option<u32>,
    prefix: String,
    policy: Option<(String, String, String)>,
}

/// Adds the deny rules to the server namespace: input drops of TCP 7100 and UDP 7101,
/// output drops of UDP to port 7200.
fn deny_rules(ns: &Netns) {
    ns.exec(&[
        "nft",
        "insert rule inet fx in tcp dport 7100 log group 5 prefix \"flowex:shop/deny-web/ingress-0\" drop",
    ]);
    ns.exec(&[
        "nft",
        "insert rule inet fx in udp dport 7101 log group 5 prefix \"flowex:shop/deny-dns/ingress-1\" drop",
    ]);
    ns.exec(&[
        "nft",
        "add chain inet fx out { type filter hook output priority 0; policy accept; }",
    ]);
    ns.exec(&[
        "nft",
        "add rule inet fx out udp dport 7200 log group 5 prefix \"flowex:/egress-lockdown/egress-0\" drop",
    ]);
}

fn listen(ns: &Netns, until: usize) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Vec<Seen>>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = ns.enter_async(move || {
        let mut listener = DenyListener::bind(GROUP, DEFAULT_COPY_RANGE).expect("bind group 5");
        ready_tx.send(()).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < until && Instant::now() < deadline {
            listener
                .receive(Some(Duration::from_millis(100)), |event| {
                    seen.push(Seen {
                        tuple: event.tuple,
                        hook: event.hook,
                        in_ifindex: event.in_ifindex,
                        out_ifindex: event.out_ifindex,
                        prefix: event.prefix.to_owned(),
                        policy: event.policy.map(|p| {
                            (p.namespace.to_owned(), p.name.to_owned(), p.rule.to_owned())
                        }),
                    })
                })
                .expect("receive");
        }
        seen
    });
    (ready_rx, handle)
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn denied_traffic_is_reported(client_ip: IpAddr, server_ip: IpAddr) {
    let pair = Pair::new();
    deny_rules(&pair.server);
    let server_if = ifindex(&pair.server, "vs");
    let (ready, listener) = listen(&pair.server, 3);
    ready.recv().unwrap();

    // A TCP SYN and a UDP datagram from the client, both dropped on input.
    let client_ports = pair.client.enter(move || {
        let tcp = TcpStream::connect_timeout(&(server_ip, 7100).into(), Duration::from_millis(300));
        assert!(tcp.is_err(), "the SYN must be dropped");
        let udp = UdpSocket::bind((client_ip, 0)).unwrap();
        udp.send_to(b"denied", (server_ip, 7101)).unwrap();
        udp.local_addr().unwrap().port()
    });
    // A UDP datagram from the server to the client, dropped on output.
    let server_port = pair.server.enter(move || {
        let udp = UdpSocket::bind((server_ip, 0)).unwrap();
        udp.send_to(b"leak", (client_ip, 7200)).unwrap_err();
        udp.local_addr().unwrap().port()
    });
    let seen = listener.join().unwrap();

    let tcp = seen
        .iter()
        .find(|s| s.tuple.protocol == 6)
        .expect("denied SYN");
    assert_eq!(
        (tcp.tuple.source, tcp.tuple.destination),
        (client_ip, server_ip)
    );
    assert_eq!(tcp.tuple.destination_port, 7100);
    assert_eq!(tcp.hook, 1);
    assert_eq!(tcp.in_ifindex, Some(server_if));
    assert_eq!(tcp.prefix, "flowex:shop/deny-web/ingress-0");
    assert_eq!(
        tcp.policy,
        Some(("shop".into(), "deny-web".into(), "ingress-0".into()))
    );

    let udp_in = seen
        .iter()
        .find(|s| s.tuple.protocol == 17 && s.tuple.destination_port == 7101)
        .expect("denied UDP on input");
    assert_eq!(udp_in.tuple.source_port, client_ports);
    let header = if server_ip.is_ipv4() { 20 } else { 40 };
    assert_eq!(udp_in.tuple.ip_length, header + 8 + 6);
    assert_eq!(udp_in.hook, 1);

    let udp_out = seen
        .iter()
        .find(|s| s.tuple.destination_port == 7200)
        .expect("denied UDP on output");
    assert_eq!(
        (udp_out.tuple.source, udp_out.tuple.source_port),
        (server_ip, server_port)
    );
    assert_eq!(udp_out.hook, 3);
    assert_eq!(udp_out.out_ifindex, Some(server_if));
    assert_eq!(udp_out.tuple.ip_length, header + 8 + 4);
    assert_eq!(
        udp_out.policy,
        Some(("".into(), "egress-lockdown".into(), "egress-0".into()))
    );
}

#[test]
fn ipv4_denials_arrive_with_tuple_hook_and_policy() {
    denied_traffic_is_reported("10.200.0.1".parse().unwrap(), "10.200.0.2".parse().unwrap());
}

#[test]
fn ipv6_denials_arrive_with_tuple_hook_and_policy() {
    denied_traffic_is_reported(
        "fd00:200::1".parse().unwrap(),
        "fd00:200::2".parse().unwrap(),
    );
}

#[test]
fn a_second_listener_on_the_group_gets_a_clear_error() {
    let ns = Netns::new("g");
    let message = ns.enter(|| {
        let _first = DenyListener::bind(GROUP, DEFAULT_COPY_RANGE).expect("first bind");
        match DenyListener::bind(GROUP, DEFAULT_COPY_RANGE) {
            Err(error @ DenyError::GroupTaken(5)) => error.to_string(),
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a second listener was accepted"),
        }
    });
    assert!(
        message.contains("NFLOG group 5 already has a listener"),
        "{message}"
    );
    // Once the first listener is gone the group is free again.
    ns.enter(|| {
        DenyListener::bind(GROUP, DEFAULT_COPY_RANGE)
            .map(|_| ())
            .unwrap()
    });
}

#[test]
fn an_overflowing_nflog_socket_counts_its_losses_and_reads_on() {
    const SENT: usize = 3_000;
    let ns = Netns::new("o");
    ns.exec(&["nft", "add table inet fx"]);
    ns.exec(&[
        "nft",
        "add chain inet fx out { type filter hook output priority 0; policy accept; }",
    ]);
    ns.exec(&[
        "nft",
        "add rule inet fx out udp dport 7300 log group 5 prefix \"flowex:/flood/egress-0\" drop",
    ]);
    let (events, stats, last_seen) = ns.enter(|| {
        let mut listener = DenyListener::bind(GROUP, DEFAULT_COPY_RANGE).expect("bind group 5");
        // The smallest buffer the kernel grants: a few logged batches fill it.
        let granted = listener.set_receive_buffer(1);
        assert!(granted < 16 * 1024, "granted {granted}");
        let udp = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        for _ in 0..SENT {
            // Dropped on output by the rule: the send itself fails.
            let _ = udp.send_to(b"flood", ("127.0.0.1", 7300));
        }
        let mut events = 0;
        // Reads until two waits in a row bring nothing.
        let read_all = |listener: &mut DenyListener, events: &mut usize, last: &mut u16| {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut idle = 0;
            while idle < 2 && Instant::now() < deadline {
                let delivered = listener
                    .receive(Some(Duration::from_millis(300)), |event| {
                        *events += 1;
                        *last = event.tuple.source_port;
                    })
                    .expect("receive");
                idle = if delivered == 0 { idle + 1 } else { 0 };
            }
        };
        let mut last = 0;
        read_all(&mut listener, &mut events, &mut last);
        // After the losses the group still delivers: one packet from another port.
        let after = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let _ = after.send_to(b"after", ("127.0.0.1", 7300));
        let mut last_seen = 0;
        let mut more = 0;
        read_all(&mut listener, &mut more, &mut last_seen);
        assert_eq!(more, 1, "the packet sent after the losses");
        assert_eq!(last_seen, after.local_addr().unwrap().port());
        (events, listener.stats(), last_seen)
    });
    assert!(stats.lost >= 1, "{stats:?}");
    assert!(
        (1..SENT).contains(&events),
        "{events} of {SENT} read: {stats:?}"
    );
    assert_eq!(stats.events as usize, events + 1, "{stats:?}");
    assert_eq!(stats.unreadable, 0);
    assert_ne!(last_seen, 0);
}
