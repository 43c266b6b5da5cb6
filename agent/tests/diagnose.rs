//! `flowex diagnose` run as a user runs it, inside namespaces made here: a quiet
//! namespace is healthy (exit 0), a conntrack table filled to its limit is found with the
//! numbers `conntrack -C`/`-S` and sysctl give independently (exit 1), and `--watch`
//! turns what grew in its window into an active finding.

mod support;

use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use support::{Netns, run};

/// Tests here that change the (global) nf_conntrack_max run one at a time.
static GLOBAL_SYSCTL: Mutex<()> = Mutex::new(());

fn flowex(ns: &Netns, args: &[&str]) -> Output {
    let mut all = vec![
        "netns",
        "exec",
        ns.name.as_str(),
        env!("CARGO_BIN_EXE_flowex"),
    ];
    all.extend_from_slice(args);
    Command::new("ip").args(&all).output().unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn sysctl(name: &str) -> u64 {
    let out = run("sysctl", &["-n", name]);
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Sets nf_conntrack_max (global: it cannot be set inside a namespace) and puts the old
/// value back when dropped, also when the test fails. The limit applies per namespace's
/// count, so other namespaces with fewer entries are not affected.
struct ConntrackMax(u64);

impl ConntrackMax {
    fn set(value: u64) -> Self {
        let old = sysctl("net.netfilter.nf_conntrack_max");
        run(
            "sysctl",
            &["-qw", &format!("net.netfilter.nf_conntrack_max={value}")],
        );
        Self(old)
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("net.netfilter.nf_conntrack_max={}", self.0)])
            .status();
    }
}

/// Sends one UDP datagram to each port, from one socket on loopback: one conntrack entry
/// per port while the table has room.
fn udp_flows(ns: &Netns, ports: std::ops::Range<u16>) {
    ns.enter(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for port in ports {
            // Refused once the table is full (EPERM): that is the point.
            let _ = socket.send_to(b"x", ("127.0.0.1", port));
        }
    });
}

/// conntrack -S's counter `name`, summed over CPUs.
fn conntrack_stat(ns: &Netns, name: &str) -> u64 {
    let out = ns.exec(&["conntrack", "-S"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .filter_map(|field| field.strip_prefix(&format!("{name}=")))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_quiet_namespace_is_healthy() {
    let _one_at_a_time = GLOBAL_SYSCTL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("dq");
    let output = flowex(&ns, &["diagnose", "--json"]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["healthy"], true);
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["window_seconds"], serde_json::Value::Null);
    let cpus = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .count();
    let checked = report["checked"].as_array().unwrap();
    assert!(
        checked.contains(&format!("softnet on {cpus} CPU(s)").into()),
        "{report}"
    );
    let max = sysctl("net.netfilter.nf_conntrack_max");
    assert!(
        checked.contains(&format!("conntrack: 0 of {max} entries, {cpus} CPU(s)").into()),
        "{report}"
    );
    // The text form says the same.
    let text = flowex(&ns, &["diagnose"]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.ends_with("healthy\n") && !text.contains("NOT healthy"),
        "{text}"
    );
}

#[test]
fn a_full_conntrack_table_is_an_active_finding_with_the_kernels_numbers() {
    let _one_at_a_time = GLOBAL_SYSCTL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("dfull");
    ns.track_connections();
    let _max = ConntrackMax::set(200);
    udp_flows(&ns, 20_000..20_260);

    // Independent numbers: the table's count and the refusals, from conntrack(8).
    let count = String::from_utf8(ns.exec(&["conntrack", "-C"]).stdout).unwrap();
    assert_eq!(count.trim(), "200");
    let drop = conntrack_stat(&ns, "drop");
    let early_drop = conntrack_stat(&ns, "early_drop");
    assert_eq!(drop + early_drop, 60, "260 flows, room for 200");

    let output = flowex(&ns, &["diagnose", "--json"]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["healthy"], false);
    let findings = report["findings"].as_array().unwrap();
    let refused = [("drop", drop), ("early_drop", early_drop)]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Counted since the namespace was made: history, not a rate.
    assert_eq!(findings[0]["active"], false, "{report}");
    assert_eq!(
        findings[0]["summary"],
        format!(
            "new connections refused: {refused} since boot, at 100% of nf_conntrack_max (200 of 200)"
        )
    );
    // The level is active.
    assert_eq!(findings[1]["active"], true);
    assert_eq!(
        findings[1]["summary"],
        "the table is at 100% of nf_conntrack_max (200 of 200)"
    );
    assert_eq!(
        findings[1]["advice"],
        "raise net.netfilter.nf_conntrack_max (now 200), or find what opens so many connections"
    );

    // With --watch, refusals during the window are active, as rates.
    let watching = {
        let name = ns.name.clone();
        std::thread::spawn(move || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    env!("CARGO_BIN_EXE_flowex"),
                    "diagnose",
                    "--json",
                    "--watch",
                    "2",
                ])
                .output()
                .unwrap()
        })
    };
    // Refused flows all through the window, however late its first sample comes.
    let mut port = 30_000;
    while !watching.is_finished() {
        udp_flows(&ns, port..port + 10);
        port += 10;
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = watching.join().unwrap();
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let window = report["window_seconds"].as_f64().unwrap();
    assert!((2.0..3.0).contains(&window), "{report}");
    let summary = report["findings"][0]["summary"].as_str().unwrap();
    assert_eq!(report["findings"][0]["active"], true, "{report}");
    assert!(
        summary.starts_with("new connections refused: ")
            && summary.ends_with("/s, at 100% of nf_conntrack_max (200 of 200)"),
        "{summary}"
    );
    // The 60 refused before, and every flow sent during the window.
    assert_eq!(
        conntrack_stat(&ns, "drop") + conntrack_stat(&ns, "early_drop"),
        60 + u64::from(port - 30_000)
    );
}

#[test]
fn a_bad_watch_value_is_refused_with_a_clear_error() {
    let ns = Netns::new("dbad");
    let output = flowex(&ns, &["diagnose", "--watch", "0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("\"0\": a number of seconds above 0, at most 3600"),
        "{stderr}"
    );
}

/// tx_dropped of a veth in `ns` as `ip -s -j link` reports it.
fn ip_tx_dropped(ns: &Netns, device: &str) -> u64 {
    let out = ns.exec(&["ip", "-s", "-j", "link", "show", "dev", device]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
}

#[test]
fn a_veth_dropping_what_it_sends_is_found_with_the_kernels_count() {
    // A veth whose peer (in a second namespace) is down drops everything sent to it.
    let node = Netns::new("dnode");
    let pod = Netns::new("dpod");
    run(
        "ip",
        &[
            "-n", &node.name, "link", "add", "fxv0", "type", "veth", "peer", "name", "fxv1",
            "netns", &pod.name,
        ],
    );
    node.exec(&["ip", "addr", "add", "10.201.0.1/24", "dev", "fxv0"]);
    node.exec(&["ip", "link", "set", "fxv0", "up"]);
    // A permanent neighbour: the datagrams need no ARP to be sent (and dropped).
    node.exec(&[
        "ip",
        "neigh",
        "add",
        "10.201.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "fxv0",
        "nud",
        "permanent",
    ]);
    let before = ip_tx_dropped(&node, "fxv0");
    let watching = {
        let name = node.name.clone();
        std::thread::spawn(move || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    env!("CARGO_BIN_EXE_flowex"),
                    "diagnose",
                    "--json",
                    "--watch",
                    "2",
                ])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    node.enter(|| {
        let socket = std::net::UdpSocket::bind("10.201.0.1:0").unwrap();
        for _ in 0..25 {
            socket.send_to(b"lost", "10.201.0.2:9").unwrap();
        }
    });
    let output = watching.join().unwrap();
    let dropped = ip_tx_dropped(&node, "fxv0") - before;
    assert_eq!(dropped, 25, "ip -s link");
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == "fxv0")
        .unwrap_or_else(|| panic!("no finding for fxv0: {report}"));
    assert_eq!(finding["active"], true);
    let summary = finding["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("fxv0 drops packets it sends: tx_dropped ") && summary.ends_with("/s"),
        "{summary}"
    );
    assert_eq!(finding["evidence"][0], format!("tx_dropped +{dropped}"));
    assert_eq!(
        finding["advice"],
        "the other end of this veth is down or its pod cannot take more"
    );
    // Only that device has a finding.
    assert_eq!(report["findings"].as_array().unwrap().len(), 1, "{report}");
}
