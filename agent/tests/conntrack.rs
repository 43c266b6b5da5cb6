//! The conntrack source against the real kernel, in namespaces each test creates.
//! Runs as root (the README's test command).

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use flowex_agent::sources::conntrack::{ConntrackEntry, ConntrackSocket, DumpFilter};
use support::{CliEntry, Netns, Pair, conntrack_cli};

fn dump(
    ns: &Netns,
    filter: DumpFilter,
) -> (
    Vec<ConntrackEntry>,
    flowex_agent::sources::conntrack::DumpStats,
) {
    ns.enter(move || {
        let mut socket = ConntrackSocket::open().expect("ctnetlink socket");
        let mut entries = Vec::new();
        let stats = socket.dump(&filter, |e| entries.push(*e)).expect("dump");
        (entries, stats)
    })
}

fn as_cli(entry: &ConntrackEntry) -> CliEntry {
    let tuple = |t: &flowex_agent::sources::conntrack::Tuple| {
        (
            t.source.to_string(),
            t.destination.to_string(),
            t.source_port,
            t.destination_port,
        )
    };
    let counters = |c: Option<flowex_agent::sources::conntrack::Counters>| {
        c.map_or((0, 0), |c| (c.packets, c.bytes))
    };
    CliEntry {
        protocol: entry.original.protocol,
        original: tuple(&entry.original),
        reply: tuple(&entry.reply),
        original_counters: counters(entry.original_counters),
        reply_counters: counters(entry.reply_counters),
        zone: entry.zone,
        mark: entry.mark,
    }
}

/// Real TCP and UDP exchanges over the veth, IPv4 and IPv6, from client to server.
fn exchange(pair: &Pair, server: IpAddr) {
    let tcp_port = 8080;
    let udp_port = 9090;
    let listener = pair.server.enter(move || {
        let listener = TcpListener::bind((server, tcp_port)).unwrap();
        let udp = UdpSocket::bind((server, udp_port)).unwrap();
        (listener, udp)
    });
    let (listener, udp) = listener;
    let serve = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 300];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(&[7u8; 5000]).unwrap();
        drop(stream);
        let mut datagram = [0u8; 100];
        for _ in 0..3 {
            let (n, peer) = udp.recv_from(&mut datagram).unwrap();
            assert_eq!(n, 40);
            udp.send_to(&[1u8; 60], peer).unwrap();
        }
    });
    pair.client.enter(move || {
        let mut stream = TcpStream::connect((server, tcp_port)).unwrap();
        stream.write_all(&[1u8; 300]).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 5000);
        drop(stream);
        let udp = UdpSocket::bind((if server.is_ipv4() { "0.0.0.0" } else { "::" }, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 100];
        for _ in 0..3 {
            udp.send_to(&[2u8; 40], (server, udp_port)).unwrap();
            assert_eq!(udp.recv(&mut buf).unwrap(), 60);
        }
    });
    serve.join().unwrap();
    // Let the final ACKs of the TCP close reach the table.
    std::thread::sleep(Duration::from_millis(300));
}

fn real_traffic_matches_conntrack_cli(server: IpAddr) {
    let pair = Pair::new();
    exchange(&pair, server);
    let (entries, stats) = dump(&pair.server, DumpFilter::default());
    let mut ours: Vec<CliEntry> = entries.iter().map(as_cli).collect();
    let mut theirs = conntrack_cli(&pair.server);
    ours.sort_by(|a, b| a.original.cmp(&b.original));
    theirs.sort_by(|a, b| a.original.cmp(&b.original));
    assert_eq!(ours, theirs);
    assert_eq!(stats.entries, 2);
    let tcp = ours.iter().find(|e| e.protocol == 6).expect("tcp entry");
    let udp = ours.iter().find(|e| e.protocol == 17).expect("udp entry");
    assert_eq!(tcp.original.3, 8080);
    assert_eq!(udp.original.3, 9090);
    // Three 40-byte datagrams each way (60 back): L3 bytes = payload + UDP 8 + IP header.
    let ip_header = if server.is_ipv4() { 20 } else { 40 };
    assert_eq!(udp.original_counters, (3, 3 * (40 + 8 + ip_header)));
    assert_eq!(udp.reply_counters, (3, 3 * (60 + 8 + ip_header)));
    // The TCP entry carries counters, and more bytes flowed back than forth.
    assert!(tcp.original_counters.0 >= 4 && tcp.reply_counters.1 > 5000);
    let entry = entries.iter().find(|e| e.original.protocol == 6).unwrap();
    assert!(entry.tcp_state.is_some() && entry.start_ns.is_some());
}

#[test]
fn ipv4_tcp_and_udp_entries_match_the_conntrack_cli() {
    real_traffic_matches_conntrack_cli("10.200.0.2".parse().unwrap());
}

#[test]
fn ipv6_tcp_and_udp_entries_match_the_conntrack_cli() {
    real_traffic_matches_conntrack_cli("fd00:200::2".parse().unwrap());
}

/// Loads `count` synthetic TCP entries: zone i % 3, mark i % 8.
fn load_synthetic(ns: &Netns, count: u32) {
    let path = std::env::temp_dir().join(format!("{}-table.txt", ns.name));
    let mut lines = String::new();
    for i in 0..count {
        lines.push_str(&format!(
            "-I -s 10.{}.{}.{} -d 192.0.2.1 -p tcp --sport {} --dport 443 --state ESTABLISHED -t 3600 -u SEEN_REPLY -w {} -m {}\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            10_000 + i % 50_000,
            i % 3,
            i % 8,
        ));
    }
    std::fs::write(&path, lines).unwrap();
    ns.exec(&["conntrack", "-R", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

fn synthetic_filters_are_exact(count: u32) {
    let ns = Netns::new("t");
    load_synthetic(&ns, count);
    let expect = |pred: &dyn Fn(u32) -> bool| (0..count).filter(|i| pred(*i)).count() as u64;

    let (all, stats) = dump(&ns, DumpFilter::default());
    assert_eq!(all.len() as u64, u64::from(count));
    assert!(!stats.interrupted);

    let (zone1, stats) = dump(
        &ns,
        DumpFilter {
            zone: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(stats.entries, expect(&|i| i % 3 == 1));
    assert!(zone1.iter().all(|e| e.zone == 1));
    assert!(stats.kernel_filtered, "this kernel filters dumps by zone");
    assert_eq!(stats.filtered_in_user_space, 0);

    let (marked, stats) = dump(
        &ns,
        DumpFilter {
            mark: Some((0x4, 0x4)),
            ..Default::default()
        },
    );
    assert_eq!(stats.entries, expect(&|i| i % 8 >= 4));
    assert!(marked.iter().all(|e| e.mark & 4 == 4));
    assert!(stats.kernel_filtered);

    let (both, _) = dump(
        &ns,
        DumpFilter {
            zone: Some(2),
            mark: Some((5, 0xffff_ffff)),
            ..Default::default()
        },
    );
    assert_eq!(both.len() as u64, expect(&|i| i % 3 == 2 && i % 8 == 5));

    let table = ns.enter(|| ConntrackSocket::open().unwrap().table_stats().unwrap());
    assert_eq!(table.entries, count);
    assert!(table.max_entries >= count);

    // The CLI's count agrees.
    let output = ns.exec(&[
        env!("CARGO_BIN_EXE_flowex"),
        "conntrack",
        "--zone",
        "1",
        "--count",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["entries"], expect(&|i| i % 3 == 1));
}

#[test]
fn zone_and_mark_filters_on_10k_entries_are_exact() {
    synthetic_filters_are_exact(10_000);
}

#[test]
fn zone_and_mark_filters_on_100k_entries_are_exact() {
    synthetic_filters_are_exact(100_000);
}

#[test]
fn cli_lists_entries_as_json_lines() {
    let ns = Netns::new("j");
    load_synthetic(&ns, 16);
    let output = ns.exec(&[
        env!("CARGO_BIN_EXE_flowex"),
        "conntrack",
        "--json",
        "--mark",
        "3",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["mark"], 3);
        assert_eq!(line["protocol"], 6);
        assert_eq!(line["tcp_state"], "ESTABLISHED");
        assert_eq!(line["original"]["dport"], 443);
        assert_eq!(line["reply"]["src"], "192.0.2.1");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_flowex"))
        .args(["conntrack", "--mark", "12/zz"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a 32-bit number"));
}

#[test]
fn startup_checks_report_and_set_the_sysctls_of_the_agents_namespace() {
    use flowex_agent::sources::conntrack::{check_settings, default_root};
    let ns = Netns::new("k");
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0"]);
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=2"]);
    let checks = ns.enter(|| check_settings(&default_root(), false));
    let by_name = |name: &str| {
        checks
            .iter()
            .find(|c| c.setting.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("nf_conntrack_acct").value, Some(0));
    assert!(!by_name("nf_conntrack_acct").ok());
    assert!(
        by_name("nf_conntrack_acct")
            .describe()
            .contains("no packet or byte counters")
    );
    assert_eq!(by_name("nf_conntrack_events").value, Some(2));
    assert!(by_name("nf_conntrack_timestamp").ok());

    let set = ns.enter(|| check_settings(&default_root(), true));
    assert!(set.iter().all(|c| c.ok()), "{set:?}");
    assert!(set.iter().filter(|c| c.changed).count() == 2);
    // Only this namespace changed: the sysctl is per namespace.
    let out = ns.exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_acct"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

/// Conntrack's per-CPU counters as the agent reads them (and exports them) equal what
/// `conntrack -S` prints, with invalid packets made for the test so they are not all 0.
#[test]
fn per_cpu_counters_match_conntrack_dash_s() {
    use flowex_agent::network::{NodeNetwork, Sources};
    use prometheus::{Encoder, Registry, TextEncoder};

    let ns = Netns::new("st");
    ns.track_connections();
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    // Bare ACKs of no connection: conntrack counts them invalid.
    let sent = ns.exec(&[
        "python3",
        "-c",
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n\
         ack = struct.pack('!HHIIBBHHH', 40000, 9, 12345, 67890, 5 << 4, 0x10, 1024, 0, 0)\n\
         for _ in range(3): s.sendto(ack, ('127.0.0.1', 0))",
    ]);
    assert!(sent.status.success(), "{sent:?}");
    let cpus = ns.enter(|| {
        let mut cpus = Vec::new();
        ConntrackSocket::open()
            .unwrap()
            .cpu_stats(&mut cpus)
            .unwrap();
        cpus
    });
    let cli = String::from_utf8(ns.exec(&["conntrack", "-S"]).stdout).unwrap();
    let mut compared = 0;
    for line in cli.lines() {
        let mut fields = line.split_whitespace();
        let cpu: u16 = fields
            .next()
            .and_then(|f| f.strip_prefix("cpu="))
            .unwrap()
            .parse()
            .unwrap();
        let ours = cpus.iter().find(|c| c.cpu == cpu).expect("every CPU read");
        for field in fields {
            let (name, value) = field.split_once('=').unwrap();
            let value: u32 = value.parse().unwrap();
            let mine = match name {
                "found" => ours.found,
                "invalid" => ours.invalid,
                "insert" => ours.insert,
                "insert_failed" => ours.insert_failed,
                "drop" => ours.drop,
                "early_drop" => ours.early_drop,
                "error" => ours.error,
                "search_restart" => ours.search_restart,
                "clash_resolve" => ours.clash_resolve,
                "chaintoolong" => ours.chain_too_long,
                other => panic!("conntrack -S printed {other}"),
            };
            assert_eq!(mine, value, "cpu {cpu} {name}");
            compared += 1;
        }
    }
    assert_eq!(compared, 10 * cpus.len());
    let invalid: u32 = cpus.iter().map(|c| c.invalid).sum();
    assert!(invalid >= 3, "{cpus:?}");
    // The metrics carry the same values.
    let registry = Registry::new();
    let network = NodeNetwork::new(
        &registry,
        Sources {
            interfaces: false,
            ..Sources::default()
        },
    );
    network.observe_conntrack(&cpus);
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    for cpu in &cpus {
        let series = format!(
            "flowex_conntrack_stat_invalid_total{{cpu=\"{}\"}} {}",
            cpu.cpu, cpu.invalid
        );
        assert!(text.lines().any(|l| l == series), "{series} not in\n{text}");
    }
}
