//! The node's network health metrics: softnet counters per CPU and the receive path's
//! limits, against this machine's own /proc (read independently here) and against files
//! written by the test (a counter that wraps, a broken file); interface counters, pods'
//! veths, channels and driver statistics in namespaces of their own, against `ip -s -s -j
//! link` and `ethtool` (read independently here).

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use flowex_agent::network::{NodeNetwork, PodName, Sources};
use prometheus::{Encoder, Registry, TextEncoder};
use support::{Netns, run};

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The value of `name{labels}` in the exposition, if present.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Column `column` of every CPU line of the real file, read here without the agent's parser.
fn columns(column: usize) -> Vec<u64> {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .map(|line| {
            let field = line.split_whitespace().nth(column).unwrap();
            u64::from_str_radix(field, 16).unwrap()
        })
        .collect()
}

fn sysctl(name: &str) -> u64 {
    let out = Command::new("sysctl").args(["-n", name]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn this_machines_softnet_counters_and_limits_are_exported() {
    let registry = Registry::new();
    let network = NodeNetwork::new(&registry, Sources::default());
    let before = columns(0);
    network.refresh();
    let after = columns(0);
    let text = render(&registry);
    for (cpu, (low, high)) in before.iter().zip(&after).enumerate() {
        let processed = value(
            &text,
            &format!("flowex_softnet_processed_total{{cpu=\"{cpu}\"}}"),
        )
        .unwrap();
        assert!(
            *low <= processed && processed <= *high,
            "cpu {cpu}: {processed} not in {low}..={high}"
        );
    }
    let dropped = columns(1);
    assert_eq!(
        value(&text, "flowex_softnet_dropped_total{cpu=\"0\"}"),
        Some(dropped[0])
    );
    for (metric, name) in [
        ("flowex_netdev_budget", "net.core.netdev_budget"),
        ("flowex_netdev_budget_usecs", "net.core.netdev_budget_usecs"),
        ("flowex_netdev_max_backlog", "net.core.netdev_max_backlog"),
    ] {
        assert_eq!(value(&text, metric), Some(sysctl(name)), "{metric}");
    }
}

fn line(processed: u32, dropped: u32) -> String {
    format!(
        "{processed:08x} {dropped:08x} 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n"
    )
}

#[test]
fn a_wrapping_counter_keeps_growing_and_a_broken_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("flowex-softnet-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("core")).unwrap();
    let file: PathBuf = dir.join("softnet_stat");
    let registry = Registry::new();
    let network = NodeNetwork::new(
        &registry,
        Sources {
            softnet_stat: file.clone(),
            proc_sys_net_core: dir.join("core"),
            // The host's interfaces move on their own: the exposition must not.
            interfaces: false,
        },
    );
    std::fs::write(&file, line(0xffff_fff0, 2)).unwrap();
    network.refresh();
    std::fs::write(&file, line(0x10, 5)).unwrap();
    network.refresh();
    let text = render(&registry);
    assert_eq!(
        value(&text, "flowex_softnet_processed_total{cpu=\"0\"}"),
        Some(0xffff_fff0 + 0x20)
    );
    assert_eq!(
        value(&text, "flowex_softnet_dropped_total{cpu=\"0\"}"),
        Some(5)
    );
    // No sysctl files here: no made-up limits either.
    assert_eq!(value(&text, "flowex_netdev_budget"), None);
    std::fs::write(&file, "not hex at all\n").unwrap();
    network.refresh();
    assert_eq!(render(&registry), text);
    let _ = std::fs::remove_dir_all(dir);
}

/// A NodeNetwork whose interface sockets live in `ns`.
fn open_in(ns: &Netns, registry: &Registry) -> NodeNetwork {
    let registry = registry.clone();
    ns.enter(move || NodeNetwork::new(&registry, Sources::default()))
}

/// `ip -s -s -j link show dev <device>` in `ns`: the device's JSON object.
fn ip_link(ns: &Netns, device: &str) -> serde_json::Value {
    let out = ns.exec(&["ip", "-s", "-s", "-j", "link", "show", "dev", device]);
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.remove(0)
}

/// The exported counters next to the `ip` JSON field each must equal.
const IP_FIELDS: [(&str, &str, &str); 15] = [
    ("receive_bytes", "rx", "bytes"),
    ("receive_packets", "rx", "packets"),
    ("receive_errs", "rx", "errors"),
    ("receive_drop", "rx", "dropped"),
    ("receive_fifo", "rx", "fifo_errors"),
    ("receive_frame", "rx", "frame_errors"),
    ("receive_missed", "rx", "missed_errors"),
    ("receive_over", "rx", "over_errors"),
    ("receive_crc", "rx", "crc_errors"),
    ("transmit_bytes", "tx", "bytes"),
    ("transmit_packets", "tx", "packets"),
    ("transmit_errs", "tx", "errors"),
    ("transmit_drop", "tx", "dropped"),
    ("transmit_fifo", "tx", "fifo_errors"),
    ("transmit_carrier", "tx", "carrier_errors"),
];

/// The labels of a node interface's series.
fn node(device: &str) -> String {
    format!("{{device=\"{device}\",namespace=\"\",pod=\"\"}}")
}

/// Asserts that every exported counter of `device` (under `labels`) equals `ip`'s.
fn assert_counters_match_ip(text: &str, ns: &Netns, device: &str, labels: &str) {
    let ip = ip_link(ns, device);
    for (metric, direction, field) in IP_FIELDS {
        let series = format!("flowex_network_{metric}_total{labels}");
        let expected = ip["stats64"][direction][field].as_u64().unwrap();
        assert_eq!(value(text, &series), Some(expected), "{series}");
    }
    let up = u64::from(ip["operstate"] == "UP");
    assert_eq!(
        value(text, &format!("flowex_network_up{labels}")),
        Some(up),
        "{device} is {}",
        ip["operstate"]
    );
}

/// Series lines that name `device`.
fn series_of(text: &str, device: &str) -> Vec<String> {
    let needle = format!("device=\"{device}\"");
    text.lines()
        .filter(|line| !line.starts_with('#') && line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Disables IPv6 on the namespace's future devices: no router solicitations or MLD
/// reports to move the counters a test counts exactly.
fn quiet(ns: &Netns) {
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
}

fn send_udp(ns: &Netns, from: &'static str, to: &'static str, count: usize) {
    ns.enter(move || {
        let socket = std::net::UdpSocket::bind((from, 0)).unwrap();
        for _ in 0..count {
            socket.send_to(b"flowex", (to, 9)).unwrap();
        }
    });
}

#[test]
fn interface_counters_match_ip_and_a_downed_peer_drops_every_datagram() {
    let sender = Netns::new("tx");
    let receiver = Netns::new("rx");
    quiet(&sender);
    quiet(&receiver);
    run(
        "ip",
        &[
            "-n",
            &sender.name,
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            &receiver.name,
        ],
    );
    sender.exec(&["ip", "addr", "add", "10.201.0.1/24", "dev", "va"]);
    sender.exec(&["ip", "link", "set", "va", "up"]);
    // No ARP while the peer is down: every datagram goes straight to the veth.
    sender.exec(&[
        "ip",
        "neigh",
        "add",
        "10.201.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "va",
        "nud",
        "permanent",
    ]);
    let registry = Registry::new();
    let network = open_in(&sender, &registry);
    network.refresh();
    let before = render(&registry);
    // va's peer is in another namespace: a pod's veth, its pod not known.
    assert_counters_match_ip(&before, &sender, "va", &node("va"));
    assert_eq!(
        value(&before, &format!("flowex_network_up{}", node("va"))),
        Some(0)
    );
    let dropped = value(
        &before,
        &format!("flowex_network_transmit_drop_total{}", node("va")),
    )
    .unwrap();
    let sent = value(
        &before,
        &format!("flowex_network_transmit_packets_total{}", node("va")),
    )
    .unwrap();

    send_udp(&sender, "10.201.0.1", "10.201.0.2", 25);
    network.refresh();
    let after = render(&registry);
    assert_eq!(
        value(
            &after,
            &format!("flowex_network_transmit_drop_total{}", node("va"))
        ),
        Some(dropped + 25)
    );
    assert_eq!(
        value(
            &after,
            &format!("flowex_network_transmit_packets_total{}", node("va"))
        ),
        Some(sent)
    );
    assert_counters_match_ip(&after, &sender, "va", &node("va"));

    // The peer comes up: va is up, and the datagrams now arrive (and count as sent).
    receiver.exec(&["ip", "addr", "add", "10.201.0.2/24", "dev", "vb"]);
    receiver.exec(&["ip", "link", "set", "vb", "up"]);
    // The kernel's link watch turns va's operstate to UP a moment later (up to a second
    // under load): wait for the kernel to say so before reading it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = sender.exec(&["ip", "-j", "link", "show", "dev", "va"]);
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if links[0]["operstate"] == "UP" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "va never came up: {links}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_udp(&sender, "10.201.0.1", "10.201.0.2", 10);
    network.refresh();
    let up = render(&registry);
    assert_eq!(
        value(&up, &format!("flowex_network_up{}", node("va"))),
        Some(1)
    );
    assert_eq!(
        value(
            &up,
            &format!("flowex_network_transmit_packets_total{}", node("va"))
        ),
        Some(sent + 10)
    );
    assert_counters_match_ip(&up, &sender, "va", &node("va"));
    // Loopback is not an interface of the metrics.
    assert!(series_of(&up, "lo").is_empty());
    assert!(!up.contains("flowex_network_interface_read_errors_total{"));
}

/// A pod lookup backed by a map the test fills.
fn lookup(
    pods: &Arc<Mutex<HashMap<IpAddr, PodName>>>,
) -> impl Fn(IpAddr) -> Option<PodName> + Send + Sync + 'static {
    let pods = Arc::clone(pods);
    move |ip| pods.lock().unwrap().get(&ip).cloned()
}

fn pod(namespace: &str, name: &str) -> PodName {
    PodName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[test]
fn pod_veths_carry_their_pod_once_it_is_known_and_their_series_go_with_them() {
    let host = Netns::new("host");
    let pods_ns = Netns::new("pods");
    quiet(&host);
    // The pods keep IPv6 (one of them is found by its IPv6 address) but send nothing:
    // their router solicitations and MLD reports would move the counters compared.
    pods_ns.exec(&["nft", "add table inet quiet"]);
    pods_ns.exec(&[
        "nft",
        "add chain inet quiet out { type filter hook output priority 0; policy drop; }",
    ]);
    for (veth, inside) in [("vethp1", "eth1"), ("vethp2", "eth2"), ("vethp3", "eth3")] {
        run(
            "ip",
            &[
                "-n",
                &host.name,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                inside,
                "netns",
                &pods_ns.name,
            ],
        );
        host.exec(&["ip", "link", "set", veth, "up"]);
        pods_ns.exec(&["ip", "link", "set", inside, "up"]);
    }
    // vethp4's peer starts on the host (a node device) and moves into the pod later.
    host.exec(&[
        "ip", "link", "add", "vethp4", "type", "veth", "peer", "name", "eth4",
    ]);
    host.exec(&["ip", "link", "set", "vethp4", "up"]);
    pods_ns.exec(&["ip", "addr", "add", "10.202.0.5/24", "dev", "eth1"]);
    pods_ns.exec(&["ip", "addr", "add", "10.202.0.6/24", "dev", "eth2"]);
    // eth3 has no address yet: its pod's network is still being set up.
    let known = Arc::new(Mutex::new(HashMap::from([(
        "10.202.0.5".parse().unwrap(),
        pod("shop", "cart-1"),
    )])));
    let registry = Registry::new();
    let network = open_in(&host, &registry);
    network.set_pod_lookup(lookup(&known));
    network.refresh();
    let text = render(&registry);
    let cart1 = "{device=\"vethp1\",namespace=\"shop\",pod=\"cart-1\"}";
    assert_counters_match_ip(&text, &host, "vethp1", cart1);
    // Not known (yet): empty pod labels.
    assert_counters_match_ip(&text, &host, "vethp2", &node("vethp2"));
    assert_counters_match_ip(&text, &host, "vethp3", &node("vethp3"));
    // Pod veths have no NIC metrics; a veth with both ends on the node has.
    for line in series_of(&text, "vethp1") {
        assert!(line.starts_with("flowex_network_"), "{line}");
        assert!(
            !line.contains("driver_stat") && !line.contains("channels"),
            "{line}"
        );
    }
    assert_counters_match_ip(&text, &host, "vethp4", &node("vethp4"));
    assert!(text.contains("flowex_network_driver_stat_total{device=\"vethp4\""));

    // eth4 moves into the pod. The host hears only eth4's DELLINK, nothing of vethp4
    // (eth4 stays down, so vethp4's carrier does not change either).
    host.exec(&["ip", "link", "set", "eth4", "netns", &pods_ns.name]);
    pods_ns.exec(&["ip", "addr", "add", "10.202.0.8/24", "dev", "eth4"]);

    // The pod index learns of both pods, and eth3 gets its address.
    pods_ns.exec(&[
        "ip",
        "addr",
        "add",
        "fd00:202::7/64",
        "dev",
        "eth3",
        "nodad",
    ]);
    {
        let mut known = known.lock().unwrap();
        known.insert("10.202.0.6".parse().unwrap(), pod("shop", "cart-2"));
        known.insert("fd00:202::7".parse().unwrap(), pod("web", "front-0"));
        known.insert("10.202.0.8".parse().unwrap(), pod("web", "front-1"));
    }
    network.refresh();
    let text = render(&registry);
    let cart2 = "{device=\"vethp2\",namespace=\"shop\",pod=\"cart-2\"}";
    let front = "{device=\"vethp3\",namespace=\"web\",pod=\"front-0\"}";
    let moved = "{device=\"vethp4\",namespace=\"web\",pod=\"front-1\"}";
    assert_counters_match_ip(&text, &host, "vethp2", cart2);
    assert_counters_match_ip(&text, &host, "vethp3", front);
    assert_counters_match_ip(&text, &host, "vethp4", moved);
    assert!(series_of(&text, "eth4").is_empty());
    assert!(!text.contains("flowex_network_driver_stat_total{device=\"vethp4\""));
    for device in ["vethp2", "vethp3", "vethp4"] {
        assert!(
            series_of(&text, device)
                .iter()
                .all(|line| !line.contains("pod=\"\"")),
            "{device}'s unlabelled series are gone"
        );
    }

    host.exec(&["ip", "link", "del", "vethp1"]);
    network.refresh();
    let text = render(&registry);
    assert_eq!(series_of(&text, "vethp1"), Vec::<String>::new());
    assert_counters_match_ip(&text, &host, "vethp2", cart2);
}

#[test]
fn new_renamed_recreated_and_deleted_interfaces_follow_the_kernel() {
    let ns = Netns::new("chg");
    quiet(&ns);
    let registry = Registry::new();
    let network = open_in(&ns, &registry);
    network.refresh();
    assert!(series_of(&render(&registry), "nic9").is_empty());

    // Both ends in this namespace: node devices, with their driver statistics.
    ns.exec(&[
        "ip", "link", "add", "nic9", "type", "veth", "peer", "name", "nic9p",
    ]);
    network.refresh();
    let text = render(&registry);
    assert_counters_match_ip(&text, &ns, "nic9", &node("nic9"));
    assert_counters_match_ip(&text, &ns, "nic9p", &node("nic9p"));
    assert!(
        text.contains("flowex_network_driver_stat_total{device=\"nic9\",stat=\"peer_ifindex\"}")
    );

    ns.exec(&["ip", "link", "set", "nic9", "name", "wan0"]);
    network.refresh();
    let text = render(&registry);
    assert_eq!(series_of(&text, "nic9"), Vec::<String>::new());
    assert_counters_match_ip(&text, &ns, "wan0", &node("wan0"));
    assert!(
        text.contains("flowex_network_driver_stat_total{device=\"wan0\",stat=\"peer_ifindex\"}")
    );

    // Traffic, then the pair is deleted and created again under the same name between
    // two scrapes: the counters are the new device's, lower than before. The datagrams go
    // to a neighbour that is not there, so they leave through wan0 (not loopback) and
    // nic9p drops them.
    ns.exec(&["ip", "addr", "add", "10.203.0.1/24", "dev", "wan0"]);
    ns.exec(&["ip", "link", "set", "wan0", "up"]);
    ns.exec(&["ip", "link", "set", "nic9p", "up"]);
    ns.exec(&[
        "ip",
        "neigh",
        "add",
        "10.203.0.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "wan0",
        "nud",
        "permanent",
    ]);
    send_udp(&ns, "10.203.0.1", "10.203.0.9", 20);
    network.refresh();
    let busy = render(&registry);
    assert_counters_match_ip(&busy, &ns, "wan0", &node("wan0"));
    let series = format!("flowex_network_transmit_packets_total{}", node("wan0"));
    let before = value(&busy, &series).unwrap();
    assert!(before >= 20, "{before} packets sent");
    ns.exec(&["ip", "link", "del", "wan0"]);
    ns.exec(&[
        "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p",
    ]);
    network.refresh();
    let text = render(&registry);
    assert_counters_match_ip(&text, &ns, "wan0", &node("wan0"));
    assert!(value(&text, &series).unwrap() < before);
    assert!(
        series_of(&text, "nic9p").is_empty(),
        "the old peer went with the pair"
    );

    ns.exec(&["ip", "link", "del", "wan0"]);
    network.refresh();
    let text = render(&registry);
    assert_eq!(series_of(&text, "wan0"), Vec::<String>::new());
    assert_eq!(series_of(&text, "wan0p"), Vec::<String>::new());
}

/// `ethtool -l <device>` in `ns`: (maximum, current) per channel kind ("RX", "TX",
/// "Combined"), None where ethtool prints n/a.
fn ethtool_channels(ns: &Netns, device: &str) -> HashMap<String, (Option<u64>, Option<u64>)> {
    let out = ns.exec(&["ethtool", "-l", device]);
    let text = String::from_utf8(out.stdout).unwrap();
    let (maximums, current) = text.split_once("Current hardware settings:").unwrap();
    let read = |part: &str| -> HashMap<String, Option<u64>> {
        part.lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().parse().ok()))
            .collect()
    };
    let (maximums, current) = (read(maximums), read(current));
    ["RX", "TX", "Combined"]
        .into_iter()
        .map(|kind| (kind.to_owned(), (maximums[kind], current[kind])))
        .collect()
}

/// `ethtool -S <device>` in `ns`: every statistic's name and value.
fn ethtool_stats(ns: &Netns, device: &str) -> Vec<(String, u64)> {
    let out = ns.exec(&["ethtool", "-S", device]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let (name, value) = line.rsplit_once(':').unwrap();
            (name.trim().to_owned(), value.trim().parse().unwrap())
        })
        .collect()
}

fn assert_nic_matches_ethtool(text: &str, ns: &Netns, device: &str) {
    for (kind, (max, current)) in ethtool_channels(ns, device) {
        let kind = kind.to_lowercase();
        for (suffix, expected) in [("max", max), ("current", current)] {
            let series = format!("flowex_network_channels_{kind}_{suffix}{{device=\"{device}\"}}");
            assert_eq!(value(text, &series), expected, "{series}");
        }
    }
    let stats = ethtool_stats(ns, device);
    assert!(stats.iter().any(|(name, _)| name == "rx_queue_0_drops"));
    for (name, expected) in &stats {
        let series =
            format!("flowex_network_driver_stat_total{{device=\"{device}\",stat=\"{name}\"}}");
        assert_eq!(value(text, &series), Some(*expected), "{series}");
    }
    let exported = series_of(text, device)
        .iter()
        .filter(|line| line.starts_with("flowex_network_driver_stat_total"))
        .count();
    assert_eq!(exported, stats.len());
}

#[test]
fn channels_and_driver_statistics_match_ethtool_and_veth_rings_are_absent() {
    let ns = Netns::new("nic");
    ns.exec(&[
        "ip", "link", "add", "nic0", "type", "veth", "peer", "name", "nic1",
    ]);
    ns.exec(&["ip", "link", "set", "nic0", "up"]);
    ns.exec(&["ip", "link", "set", "nic1", "up"]);
    let registry = Registry::new();
    let network = open_in(&ns, &registry);
    network.refresh();
    network.refresh();
    let text = render(&registry);
    assert_nic_matches_ethtool(&text, &ns, "nic0");
    assert_eq!(
        value(&text, "flowex_network_channels_rx_current{device=\"nic0\"}"),
        Some(1)
    );
    // veth has no ring parameters (EOPNOTSUPP): no series, and no error either.
    let refused = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-g", "nic0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(!text.contains("flowex_network_ring_"));
    assert!(!text.contains("flowex_network_interface_read_errors_total{"));

    // More queues: more channels, and driver statistics for the new queues.
    ns.exec(&["ethtool", "-L", "nic0", "rx", "2", "tx", "2"]);
    network.refresh();
    let text = render(&registry);
    assert_eq!(
        value(&text, "flowex_network_channels_rx_current{device=\"nic0\"}"),
        Some(2)
    );
    assert!(text.contains("stat=\"rx_queue_1_drops\""));
    assert_nic_matches_ethtool(&text, &ns, "nic0");
    assert!(!text.contains("flowex_network_interface_read_errors_total{"));
}

/// Kinds without traffic of their own (dummy, nlmon, ifb; this kernel builds only ifb)
/// are not followed (no series, no request per scrape), whether present at start or
/// added later, while a veth beside them is.
#[test]
fn interfaces_without_traffic_of_their_own_are_not_followed() {
    let ns = Netns::new("ifb");
    quiet(&ns);
    ns.exec(&["ip", "link", "add", "fxd0", "type", "ifb"]);
    ns.exec(&[
        "ip", "link", "add", "fxa", "type", "veth", "peer", "name", "fxb",
    ]);
    let registry = Registry::new();
    let network = open_in(&ns, &registry);
    network.refresh();
    ns.exec(&["ip", "link", "add", "fxd1", "type", "ifb"]);
    network.refresh();
    let text = render(&registry);
    let devices: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("flowex_network_up{device=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert_eq!(devices, ["fxa", "fxb"].into_iter().collect());
    assert!(
        !text.contains("flowex_network_interface_read_errors_total{"),
        "{text}"
    );
}
