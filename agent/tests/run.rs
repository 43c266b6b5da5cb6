//! End to end: `flowex run` in a "node" namespace exports real TCP, UDP and denied traffic
//! to collector-sim there; deltas sum exactly to conntrack's final counters.

#[path = "support/fake_api.rs"]
mod fake_api;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use collector_sim::{Collector, CollectorConfig};
use fake_api::{FakeApi, node, pod};
use serde_json::Value;
use support::{CliEntry, Pair, conntrack_cli};

fn records_for(
    records: &[Value],
    protocol: u64,
    source_port: u16,
    destination_port: u16,
) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| {
            r["protocolIdentifier"] == protocol
                && r["sourceTransportPort"] == source_port
                && r["destinationTransportPort"] == destination_port
        })
        .collect()
}

fn sums(records: &[&Value]) -> ((u64, u64), (u64, u64)) {
    let sum = |key: &str| {
        records
            .iter()
            .map(|r| r[key].as_u64().unwrap())
            .sum::<u64>()
    };
    (
        (sum("packetDeltaCount"), sum("octetDeltaCount")),
        (
            sum("reversePacketDeltaCount"),
            sum("reverseOctetDeltaCount"),
        ),
    )
}

fn reasons(records: &[&Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["flowEndReason"].as_u64().unwrap())
        .collect()
}

fn cli_entry(cli: &[CliEntry], protocol: u8, source_port: u16, destination_port: u16) -> &CliEntry {
    cli.iter()
        .find(|e| {
            e.protocol == protocol
                && e.original.2 == source_port
                && e.original.3 == destination_port
        })
        .unwrap_or_else(|| {
            panic!("no conntrack entry for {protocol} {source_port}->{destination_port}")
        })
}

/// The agent watches this node's pods: records name the client's pod only.
#[test]
fn the_agent_exports_real_ipv4_traffic_with_exact_counters_and_node_scoped_pods() {
    exports_real_traffic(
        "10.200.0.1".parse().unwrap(),
        "10.200.0.2".parse().unwrap(),
        "node",
    );
}

/// The agent watches every pod: records name both ends' pods.
#[test]
fn the_agent_exports_real_ipv6_traffic_with_exact_counters_and_cluster_scoped_pods() {
    exports_real_traffic(
        "fd00:200::1".parse().unwrap(),
        "fd00:200::2".parse().unwrap(),
        "cluster",
    );
}

fn exports_real_traffic(client_ip: IpAddr, server_ip: IpAddr, pod_scope: &str) {
    let pair = Pair::new();
    // The API server the agent watches: the client is a pod of the agent's node (node-a),
    // the server a pod of node-b.
    let api = FakeApi::start(
        pair.server
            .enter(|| TcpListener::bind("127.0.0.1:0").unwrap()),
    );
    api.add(
        "pods",
        pod("e2e", "client", "node-a", &[&client_ip.to_string()], &[]),
    );
    api.add(
        "pods",
        pod("e2e", "server", "node-b", &[&server_ip.to_string()], &[]),
    );
    // No export.podCIDRs: the nodes' pod CIDRs tell the agent that the server, a pod it does
    // not watch in node scope, is a pod (inter-node), not an external address.
    let (node_a, node_b) = if client_ip.is_ipv4() {
        ("10.200.0.0/31", "10.200.0.2/31")
    } else {
        ("fd00:200::/127", "fd00:200::2/127")
    };
    api.add("nodes", node("node-a", &[node_a]));
    api.add("nodes", node("node-b", &[node_b]));
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", pair.server.name));
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    pair.server.exec(&[
        "nft",
        "insert rule inet fx in tcp dport 7303 log group 7 prefix \"flowex:test/deny-it/ingress-0\" drop",
    ]);
    let collector = pair.server.enter(|| {
        let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    });
    let port = collector.udp_endpoint().unwrap().addr().port();
    let config_path = std::env::temp_dir().join(format!("{}.yaml", pair.server.name));
    std::fs::write(
        &config_path,
        format!(
            "nodeName: node-a\n\
             conntrack: {{pollInterval: 500ms}}\n\
             export: {{activeTimeout: 1s, idleTimeout: 3s, enterpriseNumber: 4242, statistics: {{interfaces: true}}, podLabels: true, kubernetesUIDs: true}}\n\
             deny: {{nflogGroup: 7, idleTimeout: 1s}}\n\
             kubernetes: {{kubeconfig: {}, podScope: {pod_scope}}}\n\
             state: {{directory: {}}}\n",
            kubeconfig.display(),
            std::env::temp_dir()
                .join(format!("{}-state", pair.server.name))
                .display()
        ),
    )
    .unwrap();
    let agent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.server.name,
            env!("CARGO_BIN_EXE_flowex"),
            "run",
        ])
        .arg("--config")
        .arg(&config_path)
        .args([
            "--collector",
            &format!("udp://127.0.0.1:{port}"),
            "--duration",
            "7",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));

    // Servers in the node namespace.
    let at = move |port: u16| SocketAddr::new(server_ip, port);
    let (short, long, udp) = pair.server.enter(move || {
        (
            TcpListener::bind(at(7300)).unwrap(),
            TcpListener::bind(at(7301)).unwrap(),
            UdpSocket::bind(at(7302)).unwrap(),
        )
    });
    let servers = std::thread::spawn(move || {
        for _ in 0..5 {
            let (mut s, _) = short.accept().unwrap();
            let mut request = [0u8; 100];
            s.read_exact(&mut request).unwrap();
            s.write_all(&[5u8; 1000]).unwrap();
        }
        let (mut s, _) = long.accept().unwrap();
        let mut buf = [0u8; 100];
        for _ in 0..12 {
            s.read_exact(&mut buf).unwrap();
        }
        let mut datagram = [0u8; 64];
        for _ in 0..3 {
            let (_, peer) = udp.recv_from(&mut datagram).unwrap();
            udp.send_to(&[1u8; 30], peer).unwrap();
        }
        s
    });
    // Clients.
    let (short_ports, long_stream, udp_port) = pair.client.enter(move || {
        let mut ports = Vec::new();
        for _ in 0..5 {
            let mut s = TcpStream::connect(at(7300)).unwrap();
            ports.push(s.local_addr().unwrap().port());
            s.write_all(&[1u8; 100]).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).unwrap();
        }
        let mut long = TcpStream::connect(at(7301)).unwrap();
        for _ in 0..12 {
            long.write_all(&[2u8; 100]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        let udp = UdpSocket::bind(SocketAddr::new(client_ip, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            udp.send_to(&[3u8; 20], at(7302)).unwrap();
            udp.recv(&mut buf).unwrap();
        }
        let denied = TcpStream::connect_timeout(&at(7303), Duration::from_millis(300));
        assert!(denied.is_err());
        (ports, long, udp.local_addr().unwrap().port())
    });
    let long_server = servers.join().unwrap();
    let long_port = long_stream.local_addr().unwrap().port();

    // While the agent runs: its metrics and health endpoints answer.
    // (NFLOG delivers in batches: scrape until the denied packet has been counted. The
    // agent's veth leads to the client, a pod the agent knows: scrape until its
    // interface counters carry the pod, which the first scrape may not know yet.)
    let client_veth = "{device=\"vs\",namespace=\"e2e\",pod=\"client\"}";
    let (metrics, health) = pair.server.enter(move || {
        let mut metrics = http_get("/metrics");
        for _ in 0..30 {
            if metrics
                .lines()
                .any(|l| l.starts_with("flowex_deny_packets_total ") && !l.ends_with(" 0"))
                && metrics.contains(&format!("flowex_network_up{client_veth}"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            metrics = http_get("/metrics");
        }
        (metrics, http_get("/healthz"))
    });
    assert!(health.ends_with("ok\n"), "{health}");
    // The node's network findings, as `flowex diagnose` gives them, read in the agent's
    // namespace (its conntrack numbers come from its own polls).
    let diagnosis = pair.server.enter(|| http_get("/diagnose?format=json"));
    let body = diagnosis.split("\r\n\r\n").nth(1).unwrap();
    let report: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(report["healthy"], true, "{report}");
    let max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").unwrap();
    let checked = report["checked"].as_array().unwrap();
    assert!(
        checked.iter().any(|c| {
            let c = c.as_str().unwrap();
            c.starts_with("conntrack: ") && c.contains(&format!(" of {} entries", max.trim()))
        }),
        "{report}"
    );
    let text = pair.server.enter(|| http_get("/diagnose"));
    assert!(text.contains("content-type: text/plain"), "{text}");
    assert!(text.ends_with("\nhealthy\n"), "{text}");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(value("flowex_records_exported_total{collector=\"collector-0\"}") >= 5.0);
    // Every TCP and UDP packet of the test crossed the veth to the client pod.
    assert!(
        value(&format!(
            "flowex_network_receive_packets_total{client_veth}"
        )) >= 20.0
    );
    for reason in [
        "queue_full",
        "collector_refused",
        "send_failed",
        "too_large",
        "shutdown",
    ] {
        assert_eq!(
            value(&format!(
                "flowex_records_dropped_total{{collector=\"collector-0\",reason=\"{reason}\"}}"
            )),
            0.0
        );
    }
    assert!(
        value("flowex_records_produced_total")
            >= value("flowex_records_exported_total{collector=\"collector-0\"}")
    );
    assert_eq!(
        value("flowex_collector_connected{collector=\"collector-0\"}"),
        1.0
    );
    assert!(value("flowex_tracked_connections") >= 2.0);
    assert!(value("flowex_conntrack_events_received_total") > 0.0);
    assert!(value("flowex_poll_duration_seconds_count") >= 2.0);
    assert!(value("flowex_deny_packets_total") >= 1.0);
    assert_eq!(value("flowex_kubernetes_synced{resource=\"pods\"}"), 1.0);
    assert_eq!(
        value("flowex_kubernetes_pods"),
        if pod_scope == "node" { 1.0 } else { 2.0 }
    );

    let status = wait(agent, Duration::from_secs(30));
    assert!(status.success(), "flowex run failed: {status}");
    let cli = conntrack_cli(&pair.server);
    drop((long_stream, long_server));
    let summary = collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(10));
    let records = collector.records();
    assert_eq!(summary.sequence_gaps, 0);
    assert_eq!(summary.decode_error_total(), 0);

    // The statistics sent at shutdown: what this collector got and missed, the flows the
    // sources observed (each counted when its last record was built), and the veth's
    // drops as `ip -s link` gives them. The process elements below are under enterprise
    // number 4242, which collector-sim's registry does not know: the type records the
    // agent sent with its templates named them.
    assert!(
        summary.type_records >= 13 && summary.type_records.is_multiple_of(13),
        "{summary:?}"
    );
    let options = collector.options_records();
    let last_of = |template: u16, key: &str, value: u64| -> &Value {
        options
            .iter()
            .rfind(|r| r["optionsTemplateId"] == template && r[key] == value)
            .unwrap_or_else(|| panic!("no options record {template} with {key}={value}"))
    };
    let exporting = last_of(258, "exportingProcessId", 1);
    assert_eq!(exporting["exportedFlowRecordTotalCount"], summary.records);
    assert_eq!(exporting["notSentFlowTotalCount"], 0);
    let ended = |denied: bool| {
        records
            .iter()
            .filter(|r| r["flowEndReason"] != 2)
            .filter(|r| (r["ingressNetworkPolicyRuleAction"] == 2) == denied)
            .count() as u64
    };
    let observed =
        |id: u64| last_of(259, "meteringProcessId", id)["observedFlowTotalCount"].clone();
    assert_eq!(observed(1), ended(false));
    assert_eq!(observed(2), ended(true));
    let out = pair
        .server
        .exec(&["ip", "-s", "-j", "link", "show", "dev", "vs"]);
    let link: Value = serde_json::from_slice(&out.stdout).unwrap();
    let veth = |template: u64| {
        options
            .iter()
            .rfind(|r| r["optionsTemplateId"] == template && r["interfaceName"] == "vs")
            .unwrap_or_else(|| panic!("no drops of vs: {options:?}"))["droppedPacketTotalCount"]
            .clone()
    };
    // Receive drops under ingressInterface (260), transmit drops under egressInterface (262).
    assert_eq!(veth(260), link[0]["stats64"]["rx"]["dropped"]);
    assert_eq!(veth(262), link[0]["stats64"]["tx"]["dropped"]);

    for port in &short_ports {
        let found = records_for(&records, 6, *port, 7300);
        assert!(
            reasons(&found).contains(&3),
            "short connection {port}: {:?}",
            reasons(&found)
        );
        let entry = cli_entry(&cli, 6, *port, 7300);
        assert_eq!(
            sums(&found),
            (entry.original_counters, entry.reply_counters),
            "port {port}"
        );
    }
    let found = records_for(&records, 6, long_port, 7301);
    let long_reasons = reasons(&found);
    assert!(long_reasons.contains(&2), "{long_reasons:?}");
    assert_eq!(long_reasons.last(), Some(&4), "{long_reasons:?}");
    let entry = cli_entry(&cli, 6, long_port, 7301);
    assert_eq!(
        sums(&found),
        (entry.original_counters, entry.reply_counters)
    );

    let found = records_for(&records, 17, udp_port, 7302);
    let entry = cli_entry(&cli, 17, udp_port, 7302);
    assert_eq!(
        sums(&found),
        (entry.original_counters, entry.reply_counters)
    );

    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["destinationTransportPort"] == 7303)
        .collect();
    assert!(!denied.is_empty(), "no deny record");
    let d = denied[0];
    assert_eq!(d["ingressNetworkPolicyRuleAction"], 2);
    assert_eq!(d["ingressNetworkPolicyName"], "deny-it");
    assert_eq!(d["ingressNetworkPolicyNamespace"], "test");
    assert_eq!(d["ingressNetworkPolicyRuleName"], "ingress-0");
    let source_key = if client_ip.is_ipv4() {
        "sourceIPv4Address"
    } else {
        "sourceIPv6Address"
    };
    assert_eq!(d[source_key], client_ip.to_string());
    // The attempt carried no data and never got past SYN_SENT: the probe still names the
    // process that tried (this test), from the connect.
    assert_eq!(d["sourceProcessId"], std::process::id(), "{d}");
    assert!(records.iter().all(|r| r.get(source_key).is_some()));
    let denied_packets: u64 = denied
        .iter()
        .map(|r| r["packetDeltaCount"].as_u64().unwrap())
        .sum();
    assert!(denied_packets >= 1);
    // Pods: the client (this node's) always; the server (node-b's) only in cluster scope.
    // Client and server are pods of two nodes: inter-node.
    let (server_pod, server_node) = if pod_scope == "node" {
        ("", "")
    } else {
        ("server", "node-b")
    };
    let exchanged: Vec<&Value> = records
        .iter()
        .filter(|r| r[source_key] == client_ip.to_string())
        .collect();
    assert!(exchanged.len() >= 8, "{}", exchanged.len());
    for r in exchanged {
        assert_eq!(r["sourcePodName"], "client", "{r}");
        assert_eq!(r["sourcePodNamespace"], "e2e", "{r}");
        assert_eq!(r["sourceNodeName"], "node-a", "{r}");
        assert_eq!(r["destinationPodName"], server_pod, "{r}");
        assert_eq!(r["destinationNodeName"], server_node, "{r}");
        assert_eq!(r["flowType"], 2, "{r}");
        // Opt-in Kubernetes elements: labels as Antrea's JSON, uids as 16 bytes (hex here).
        let uid = |text: &str| fake_api::uid_of(text).replace('-', "");
        assert_eq!(r["sourcePodLabels"], r#"{"app":"client"}"#, "{r}");
        assert_eq!(r["sourcePodUUID"], uid("pod/e2e/client"), "{r}");
        assert_eq!(r["sourceNodeUUID"], uid("node/node-a"), "{r}");
        let zero = "0".repeat(32);
        let (labels, pod_uid, node_uid) = if pod_scope == "node" {
            (String::new(), zero.clone(), zero.clone())
        } else {
            (
                r#"{"app":"server"}"#.to_owned(),
                uid("pod/e2e/server"),
                uid("node/node-b"),
            )
        };
        assert_eq!(r["destinationPodLabels"], labels, "{r}");
        assert_eq!(r["destinationPodUUID"], pod_uid, "{r}");
        assert_eq!(r["destinationNodeUUID"], node_uid, "{r}");
        assert_eq!(r["destinationServiceUUID"], zero, "{r}");
    }
    let _ = std::fs::remove_file(config_path);
    let _ = std::fs::remove_file(kubeconfig);
}

/// A source thread that fails (here a panic injected in the test build) is reported on
/// `/healthz` with 503 and its reason while the agent flushes; the flush still exports
/// every tracked connection (flowEndReason 4) and the agent exits with status 1.
#[test]
fn a_failed_source_turns_healthz_to_503_and_the_agent_flushes_and_exits_non_zero() {
    let pair = Pair::new();
    let server_ip: IpAddr = "10.200.0.2".parse().unwrap();
    let collector = pair.server.enter(|| {
        let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    });
    let port = collector.udp_endpoint().unwrap().addr().port();
    // A connection the agent finds at its first poll.
    let listener = pair
        .server
        .enter(move || TcpListener::bind(SocketAddr::new(server_ip, 7310)).unwrap());
    let client = pair
        .client
        .enter(move || TcpStream::connect(SocketAddr::new(server_ip, 7310)).unwrap());
    let client_port = client.local_addr().unwrap().port();
    let (mut accepted, _) = listener.accept().unwrap();
    (&client).write_all(&[1u8; 10]).unwrap();
    let mut ten = [0u8; 10];
    accepted.read_exact(&mut ten).unwrap();
    // Besides collector-sim, a TCP collector that is down: its records wait in its queue
    // until the shutdown deadline, which keeps the failing agent up long enough to ask it.
    let config_path = std::env::temp_dir().join(format!("{}-fault.yaml", pair.server.name));
    std::fs::write(
        &config_path,
        format!(
            "conntrack: {{pollInterval: 500ms}}\n\
             export:\n  activeTimeout: 60s\n  shutdownTimeout: 3s\n  collectors:\n\
             \x20   - {{name: sim, address: \"127.0.0.1:{port}\", transport: udp}}\n\
             \x20   - {{name: down, address: \"127.0.0.1:9\", transport: tcp}}\n\
             kubernetes: {{enabled: false}}\n\
             attribution: {{enabled: false}}\n\
             state: {{directory: \"\"}}\n"
        ),
    )
    .unwrap();
    let agent = Command::new("ip")
        .args(["netns", "exec", &pair.server.name])
        .arg(env!("CARGO_BIN_EXE_flowex"))
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("FLOWEX_TEST_FAULT", "conntrack-source")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = agent;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let response = pair.server.enter(|| {
            let mut stream = TcpStream::connect("127.0.0.1:9400").ok()?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            Some(response)
        });
        if let Some(response) = response.filter(|r| !r.starts_with("HTTP/1.1 200")) {
            break response;
        }
        if std::time::Instant::now() > deadline || agent.try_wait().unwrap().is_some() {
            let _ = agent.kill();
            let output = agent.wait_with_output().unwrap();
            panic!(
                "/healthz never reported the failure; the agent said:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(
        health.ends_with("failed: conntrack source panicked: injected by FLOWEX_TEST_FAULT\n"),
        "{health}"
    );
    let output = agent.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "flowex: stopped after a failure: conntrack source panicked: injected by FLOWEX_TEST_FAULT"
        ),
        "{stderr}"
    );
    collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(10));
    let records = collector.records();
    let flushed = records_for(&records, 6, client_port, 7310);
    assert_eq!(reasons(&flushed), [4], "{records:?}");
    drop(client);
    let _ = std::fs::remove_file(config_path);
}

fn http_get(path: &str) -> String {
    let mut stream = TcpStream::connect("127.0.0.1:9400").unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn wait(mut child: std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("flowex run did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
