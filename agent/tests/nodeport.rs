//! Traffic from outside the cluster to a NodePort and to a LoadBalancer address, through
//! nftables rules that do what kube-proxy does (DNAT to the pod, masquerade so the reply
//! comes back through the node): the records name the Service port, are from-external
//! (flowType 4), and carry the address and port the masquerade gave the client
//! (proxySnatIPv4/Port), as `conntrack -L` shows them in the reply tuple.

#[path = "support/fake_api.rs"]
mod fake_api;
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use collector_sim::{Collector, CollectorConfig};
use fake_api::{FakeApi, node, pod};
use serde_json::{Value, json};
use support::{Netns, conntrack_cli, run};

/// A LoadBalancer service `web/shop`: port 80 (`http`), node port 30080, ingress IP
/// 203.0.113.10.
fn load_balancer() -> Value {
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "shop", "namespace": "web", "uid": fake_api::uid_of("service/web/shop")},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.30",
            "clusterIPs": ["10.96.0.30"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
    })
}

#[test]
fn node_port_and_load_balancer_flows_name_their_service_and_the_masquerade() {
    // client (outside) -- node (the agent, kube-proxy's rules) -- pod (the server).
    let client = Netns::new("xc");
    let node_ns = Netns::new("xn");
    let pod_ns = Netns::new("xp");
    for (a, a_dev, b, b_dev) in [
        (&client, "xc0", &node_ns, "xn0"),
        (&node_ns, "xn1", &pod_ns, "xp0"),
    ] {
        run(
            "ip",
            &[
                "-n", &a.name, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev,
                "netns", &b.name,
            ],
        );
    }
    for (ns, dev, address) in [
        (&client, "xc0", "10.210.0.1/24"),
        (&node_ns, "xn0", "10.210.0.2/24"),
        (&node_ns, "xn1", "10.211.0.1/24"),
        (&pod_ns, "xp0", "10.211.0.2/24"),
    ] {
        ns.exec(&["ip", "addr", "add", address, "dev", dev]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    client.exec(&["ip", "route", "add", "203.0.113.0/24", "via", "10.210.0.2"]);
    pod_ns.exec(&["ip", "route", "add", "default", "via", "10.211.0.1"]);
    node_ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    node_ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    // kube-proxy's work: the node port and the load-balancer address DNAT to the pod, and
    // what goes to the pod from outside is masqueraded to the node's address.
    let rules = node_ns.exec(&[
        "nft",
        "add table ip kubeproxy; \
         add chain ip kubeproxy pre { type nat hook prerouting priority -100; }; \
         add chain ip kubeproxy post { type nat hook postrouting priority 100; }; \
         add rule ip kubeproxy pre tcp dport 30080 dnat to 10.211.0.2:8080; \
         add rule ip kubeproxy pre ip daddr 203.0.113.10 tcp dport 80 dnat to 10.211.0.2:8080; \
         add rule ip kubeproxy post ip daddr 10.211.0.2 tcp dport 8080 masquerade",
    ]);
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );

    let api = FakeApi::start(node_ns.enter(|| TcpListener::bind("127.0.0.1:0").unwrap()));
    api.add("pods", pod("web", "shop-1", "node-a", &["10.211.0.2"], &[]));
    api.add("nodes", node("node-a", &["10.211.0.0/24"]));
    api.add("services", load_balancer());
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", node_ns.name));
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let collector = node_ns.enter(|| {
        let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    });
    let port = collector.udp_endpoint().unwrap().addr().port();
    let config = std::env::temp_dir().join(format!("{}.yaml", node_ns.name));
    std::fs::write(
        &config,
        format!(
            "nodeName: node-a\n\
             conntrack: {{pollInterval: 500ms}}\n\
             export: {{activeTimeout: 1s, idleTimeout: 2s, kubernetesUIDs: true}}\n\
             deny: {{enabled: false}}\n\
             attribution: {{pinPath: \"\"}}\n\
             kubernetes: {{kubeconfig: {}, podScope: cluster}}\n\
             state: {{directory: \"\"}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let agent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node_ns.name,
            env!("CARGO_BIN_EXE_flowex"),
            "run",
        ])
        .arg("--config")
        .arg(&config)
        .args([
            "--collector",
            &format!("udp://127.0.0.1:{port}"),
            "--duration",
            "6",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));

    let server = pod_ns.enter(|| TcpListener::bind("10.211.0.2:8080").unwrap());
    let serving = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = server.accept().unwrap();
            let mut request = [0u8; 100];
            s.read_exact(&mut request).unwrap();
            s.write_all(&[7u8; 1000]).unwrap();
        }
    });
    let ports = client.enter(|| {
        ["10.210.0.2:30080", "203.0.113.10:80"].map(|to| {
            let mut s = TcpStream::connect(to).unwrap();
            s.write_all(&[1u8; 100]).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).unwrap();
            assert_eq!(reply.len(), 1000);
            s.local_addr().unwrap().port()
        })
    });
    serving.join().unwrap();
    let cli = conntrack_cli(&node_ns);
    let status = agent.wait_with_output_timeout();
    assert!(status, "flowex run failed");
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&kubeconfig);
    collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(10));
    let records = collector.records();

    for (client_port, service_address) in ports.iter().zip(["10.210.0.2", "203.0.113.10"]) {
        let entry = cli
            .iter()
            .find(|e| e.protocol == 6 && e.original.2 == *client_port)
            .unwrap_or_else(|| panic!("no conntrack entry for port {client_port}: {cli:?}"));
        // conntrack's own reading: DNAT to the pod, and the reply to the masquerade's
        // address and port.
        assert_eq!(entry.original.1, service_address);
        assert_eq!(entry.reply.0, "10.211.0.2");
        assert_eq!(entry.reply.1, "10.211.0.1");
        let found: Vec<&Value> = records
            .iter()
            .filter(|r| r["sourceTransportPort"] == *client_port)
            .collect();
        assert!(!found.is_empty(), "no record for port {client_port}");
        for r in found {
            assert_eq!(r["sourceIPv4Address"], "10.210.0.1", "{r}");
            assert_eq!(r["destinationIPv4Address"], "10.211.0.2", "{r}");
            assert_eq!(r["destinationTransportPort"], 8080, "{r}");
            assert_eq!(r["destinationServicePortName"], "web/shop:http", "{r}");
            assert_eq!(r["destinationServiceIPv4"], service_address, "{r}");
            assert_eq!(r["destinationPodName"], "shop-1", "{r}");
            assert_eq!(r["flowType"], 4, "{r}");
            assert_eq!(r["proxySnatIPv4"], entry.reply.1, "{r}");
            assert_eq!(r["proxySnatPort"], entry.reply.3, "{r}");
            assert_eq!(
                r["destinationServiceUUID"],
                fake_api::uid_of("service/web/shop").replace('-', ""),
                "{r}"
            );
        }
    }
    // A connection inside the node namespace without NAT carries no SNAT.
    assert!(
        records
            .iter()
            .filter(|r| r["sourceIPv4Address"] == "127.0.0.1")
            .all(|r| r["proxySnatPort"] == 0)
    );
}

trait WaitTimeout {
    fn wait_with_output_timeout(self) -> bool;
}

impl WaitTimeout for std::process::Child {
    /// Waits at most 30 s for the agent; true when it exited with success.
    fn wait_with_output_timeout(mut self) -> bool {
        for _ in 0..300 {
            if let Some(status) = self.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.kill();
        false
    }
}
