//! The metadata watchers (kube-rs) against a local API server that serves real list and
//! watch JSON: node-scoped lists, ADDED/MODIFIED/DELETED events, bookmarks resumed from,
//! 410 Gone forcing a relist that drops what was missed, and services by cluster IP.

#[path = "support/fake_api.rs"]
mod fake_api;
mod support;

use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_api::{FakeApi, node, pod, service};
use flowex_agent::config::{KubernetesConfig, PodScope};
use flowex_agent::enrich::metadata::{self, Metadata};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The pod holding `address` for a connection starting now.
fn pod_now(metadata: &Metadata, address: &str) -> Option<String> {
    metadata
        .pods()
        .pod_at(ip(address), now_ms())
        .map(|p| format!("{}/{}@{}", p.namespace(), p.name(), p.node()))
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> i64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .find(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            })
        })
        .map(|m| {
            if m.get_counter().get_value() != 0.0 {
                m.get_counter().get_value() as i64
            } else {
                m.get_gauge().get_value() as i64
            }
        })
        .unwrap_or_else(|| panic!("{name} {label:?} not found"))
}

async fn start(api: &FakeApi, scope: PodScope) -> (Arc<Metadata>, prometheus::Registry) {
    let path = std::env::temp_dir().join(format!(
        "flowex-kubeconfig-{}-{}",
        std::process::id(),
        api.addr.port()
    ));
    std::fs::write(&path, api.kubeconfig()).unwrap();
    let config = KubernetesConfig {
        kubeconfig: path.display().to_string(),
        pod_scope: scope,
        ..KubernetesConfig::default()
    };
    let (client, url) = metadata::client(&config).await.unwrap().unwrap();
    assert_eq!(url, format!("http://{}/", api.addr));
    let _ = std::fs::remove_file(path);
    let registry = prometheus::Registry::new();
    let metadata = Metadata::disabled(Some(&registry));
    metadata::start_watchers(&metadata, client, scope, "node-a");
    (metadata, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_follow_pods_and_services_through_events_bookmarks_and_410_relists() {
    let api = FakeApi::start(TcpListener::bind("127.0.0.1:0").unwrap());
    api.add(
        "pods",
        pod("shop", "web-1", "node-a", &["10.244.1.5"], &["c0ffee01"]),
    );
    api.add(
        "pods",
        pod("shop", "db-0", "node-b", &["10.244.2.7"], &["c0ffee02"]),
    );
    api.add(
        "services",
        service(
            "shop",
            "web",
            &["10.96.0.10", "fd00:96::10"],
            &[("http", 80, "TCP"), ("", 53, "UDP")],
        ),
    );
    api.add(
        "nodes",
        node("node-a", &["10.244.1.0/24", "fd00:244:1::/64"]),
    );
    api.add("nodes", node("node-b", &["10.244.2.0/24"]));
    let (metadata, registry) = start(&api, PodScope::Node).await;
    until("the first lists", || {
        ["pods", "services", "nodes"]
            .iter()
            .all(|r| metric(&registry, "flowex_kubernetes_synced", Some(("resource", r))) == 1)
    })
    .await;
    // Every node's pod CIDRs, though only this node's pods are watched.
    assert!(metadata.nodes().contains(ip("10.244.2.7")));
    assert!(metadata.nodes().contains(ip("fd00:244:1::5")));
    assert!(!metadata.nodes().contains(ip("10.96.0.10")));
    // Each node's uid, as the records' sourceNodeUUID carries it.
    let uid = fake_api::uid_of("node/node-b").replace('-', "");
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&uid[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        metadata.nodes().uid("node-b").map(|b| b.to_vec()),
        Some(bytes)
    );
    assert_eq!(metadata.nodes().uid("node-z"), None);
    assert_eq!(
        metric(&registry, "flowex_kubernetes_nodes_with_pod_cidrs", None),
        2
    );
    assert_eq!(
        metric(&registry, "flowex_kubernetes_api_configured", None),
        1
    );
    // Node scope: the list asked for this node's pods only.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName=node-a")),
        "{requests:?}"
    );
    assert_eq!(
        pod_now(&metadata, "10.244.1.5").as_deref(),
        Some("shop/web-1@node-a")
    );
    assert_eq!(pod_now(&metadata, "10.244.2.7"), None);
    assert_eq!(metric(&registry, "flowex_kubernetes_pods", None), 1);
    assert_eq!(
        metadata
            .pods()
            .pod_of_container("c0ffee01")
            .map(|p| (p.label("app"), p.uid().to_owned())),
        Some((Some("web-1".into()), fake_api::uid_of("pod/shop/web-1")))
    );
    {
        let services = metadata.services();
        assert_eq!(
            services
                .port_name(ip("10.96.0.10"), 80, 6)
                .map(|s| s.to_string()),
            Some("shop/web:http".into())
        );
        assert_eq!(
            services
                .port_name(ip("fd00:96::10"), 53, 17)
                .map(|s| s.to_string()),
            Some("shop/web".into())
        );
    }

    // MODIFIED (a second, IPv6 address) and ADDED (a pod of this node, one of another).
    api.modify(
        "pods",
        pod(
            "shop",
            "web-1",
            "node-a",
            &["10.244.1.5", "fd00:244:1::5"],
            &["c0ffee01"],
        ),
    );
    api.add(
        "pods",
        pod("shop", "cache-0", "node-a", &["10.244.1.9"], &["c0ffee03"]),
    );
    api.add(
        "pods",
        pod("shop", "db-1", "node-b", &["10.244.2.8"], &["c0ffee04"]),
    );
    until("the watched changes", || {
        pod_now(&metadata, "10.244.1.9").is_some() && pod_now(&metadata, "fd00:244:1::5").is_some()
    })
    .await;
    assert_eq!(
        pod_now(&metadata, "fd00:244:1::5").as_deref(),
        Some("shop/web-1@node-a")
    );
    assert_eq!(pod_now(&metadata, "10.244.2.8"), None);

    // DELETED: the address no longer names the pod for new connections, but still does for
    // connections that started while the pod held it.
    let before_delete = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    api.delete("pods", "shop", "cache-0");
    until("the deletion", || {
        pod_now(&metadata, "10.244.1.9").is_none()
    })
    .await;
    assert_eq!(
        metadata
            .pods()
            .pod_at(ip("10.244.1.9"), before_delete)
            .map(|p| p.name().to_owned()),
        Some("cache-0".into())
    );

    // A bookmark moves the resume point: after the watch ends, it resumes from there.
    let mark = api.bookmark("pods");
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.close_watches();
    let resumed = format!("resourceVersion={mark}");
    until("the watch to resume from the bookmark", || {
        api.requests().iter().any(|r| {
            r.starts_with("/api/v1/pods?") && r.contains("watch=true") && r.contains(&resumed)
        })
    })
    .await;

    // Changes the watch never delivers, then 410 Gone: the relist finds them.
    let lists_before = metric(
        &registry,
        "flowex_kubernetes_lists_total",
        Some(("resource", "pods")),
    );
    assert_eq!(lists_before, 1);
    api.change_unseen_and_expire(
        "pods",
        &["shop/web-1"],
        vec![pod(
            "shop",
            "web-2",
            "node-a",
            &["10.244.1.6"],
            &["c0ffee05"],
        )],
    );
    until("the relist", || pod_now(&metadata, "10.244.1.6").is_some()).await;
    assert_eq!(
        metric(
            &registry,
            "flowex_kubernetes_lists_total",
            Some(("resource", "pods"))
        ),
        2
    );
    assert!(
        metric(
            &registry,
            "flowex_kubernetes_watch_errors_total",
            Some(("resource", "pods"))
        ) >= 1
    );
    assert_eq!(pod_now(&metadata, "10.244.1.5"), None);
    assert_eq!(
        pod_now(&metadata, "10.244.1.6").as_deref(),
        Some("shop/web-2@node-a")
    );
    assert_eq!(metric(&registry, "flowex_kubernetes_pods", None), 1);

    // Services: a deletion and a new one.
    api.delete("services", "shop", "web");
    api.add(
        "services",
        service("shop", "api", &["10.96.0.20"], &[("grpc", 9000, "TCP")]),
    );
    until("the service changes", || {
        metadata
            .services()
            .port_name(ip("10.96.0.20"), 9000, 6)
            .is_some()
    })
    .await;
    assert!(
        metadata
            .services()
            .port_name(ip("10.96.0.10"), 80, 6)
            .is_none()
    );
    assert_eq!(metric(&registry, "flowex_kubernetes_services", None), 1);

    // A node leaves: its pod CIDR no longer marks pods.
    api.delete("nodes", "", "node-b");
    until("the node deletion", || {
        !metadata.nodes().contains(ip("10.244.2.7"))
    })
    .await;
    assert!(metadata.nodes().contains(ip("10.244.1.200")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_watches_every_node() {
    let api = FakeApi::start(TcpListener::bind("127.0.0.1:0").unwrap());
    api.add("pods", pod("shop", "web-1", "node-a", &["10.244.1.5"], &[]));
    api.add("pods", pod("shop", "db-0", "node-b", &["10.244.2.7"], &[]));
    let (metadata, registry) = start(&api, PodScope::Cluster).await;
    until("the first list", || {
        metric(
            &registry,
            "flowex_kubernetes_synced",
            Some(("resource", "pods")),
        ) == 1
    })
    .await;
    assert_eq!(
        pod_now(&metadata, "10.244.2.7").as_deref(),
        Some("shop/db-0@node-b")
    );
    assert_eq!(
        pod_now(&metadata, "10.244.1.5").as_deref(),
        Some("shop/web-1@node-a")
    );
    assert!(api.requests().iter().all(|r| !r.contains("fieldSelector")));
}

#[tokio::test]
async fn a_kubeconfig_that_cannot_be_read_is_a_clear_error() {
    let config = KubernetesConfig {
        kubeconfig: "/nonexistent/flowex-kubeconfig".into(),
        ..KubernetesConfig::default()
    };
    let Err(error) = metadata::client(&config).await else {
        panic!("a missing kubeconfig was accepted");
    };
    assert!(
        format!("{error:#}").starts_with("kubernetes.kubeconfig /nonexistent/flowex-kubeconfig"),
        "{error:#}"
    );
}

/// Not in a cluster and no kubeconfig: the agent runs and exports, says so once in the log,
/// and the metric says it.
#[test]
fn without_an_api_server_the_agent_runs_and_says_so_once() {
    use std::io::{Read, Write};
    let ns = support::Netns::new("nokube");
    let home = std::env::temp_dir().join(format!("{}-home", ns.name));
    std::fs::create_dir_all(&home).unwrap();
    let agent = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_flowex"),
            "run",
        ])
        .args(["--collector", "udp://127.0.0.1:4739", "--duration", "3"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", &home)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let metrics = ns.enter(|| {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:9400").unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    let output = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert_eq!(
        log.matches("no Kubernetes API server (not in a cluster, no kubeconfig): exporting without pod metadata")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("running: node"), "{log}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "flowex_kubernetes_api_configured 0"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(home);
}
