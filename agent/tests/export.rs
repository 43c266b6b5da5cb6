//! The exporting process against collector-sim over real UDP and TCP sockets on loopback.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_sim::{Collector, CollectorConfig, Endpoint, synthetic};
use flowex_agent::config::Transport;
use flowex_agent::export::{BatchBuilder, CollectorTarget, EncodedBatch, ExportingProcess};
use flowex_ipfix::{Registry, Template, antrea};

const WAIT: Duration = Duration::from_secs(10);

fn templates() -> Arc<Vec<Template>> {
    let registry = Registry::default();
    Arc::new(vec![
        antrea::ipv4_template(&registry).unwrap(),
        antrea::ipv6_template(&registry).unwrap(),
    ])
}

fn target(name: &str, endpoint: Endpoint, capacity: usize) -> CollectorTarget {
    let (transport, max) = match endpoint {
        Endpoint::Udp(_) => (Transport::Udp, 1472),
        Endpoint::Tcp(_) => (Transport::Tcp, 65_535),
    };
    CollectorTarget {
        name: name.into(),
        address: endpoint.addr().to_string(),
        transport,
        max_message_size: max,
        template_refresh: Duration::from_secs(600),
        queue_capacity: capacity,
    }
}

fn batch(from: u64, count: u64) -> EncodedBatch {
    let mut builder = BatchBuilder::default();
    for index in from..from + count {
        let record = synthetic::flow_record(index, index % 4 == 3);
        builder.push(record.template_id(), &record);
    }
    builder.finish()
}

fn collector(listen: &str) -> Collector {
    Collector::start(CollectorConfig::new(vec![listen.parse().unwrap()])).unwrap()
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_a_udp_and_a_tcp_collector_once() {
    let udp = collector("udp://127.0.0.1:0");
    let tcp = collector("tcp://[::1]:0");
    let process = ExportingProcess::start(
        &[
            target("udp", udp.udp_endpoint().unwrap(), 100_000),
            target("tcp", tcp.tcp_endpoint().unwrap(), 100_000),
        ],
        templates(),
        77,
    );
    for chunk in 0..20 {
        process.export(batch(chunk * 500, 500));
    }
    process.shutdown(WAIT).await;
    for c in [&udp, &tcp] {
        assert!(c.wait_for_records(10_000, WAIT));
        let summary = c.wait_until_quiet(Duration::from_millis(200), WAIT);
        assert_eq!(summary.records, 10_000);
        assert_eq!(summary.sequence_gaps, 0);
        assert_eq!(summary.decode_error_total(), 0);
        assert_eq!(summary.by_observation_domain.get(&77), Some(&10_000));
        assert_eq!(summary.templates, 2);
    }
    // many records per message, never one per message
    let udp_summary = udp.summary();
    assert!(udp_summary.records >= 4 * (udp_summary.messages - 1));
    assert!(tcp.summary().messages < 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_blocking() {
    // Nothing listens here: the TCP collector task keeps trying to connect.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::Tcp(unused.local_addr().unwrap());
    drop(unused);
    let process = ExportingProcess::start(&[target("down", endpoint, 100)], templates(), 1);
    for chunk in 0..5 {
        process.export(batch(chunk * 50, 50));
    }
    let stats = Arc::clone(&process.collectors()[0].stats);
    assert_eq!(stats.queued.load(Ordering::Acquire), 100);
    assert_eq!(stats.records_dropped.load(Ordering::Acquire), 150);
    eventually("connect attempts to fail", || {
        stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    process.shutdown(Duration::from_millis(200)).await;
    assert_eq!(stats.records_dropped.load(Ordering::Acquire), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_udp_collector_counts_errors_and_the_process_carries_on() {
    let unused = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::Udp(unused.local_addr().unwrap());
    drop(unused);
    let process = ExportingProcess::start(&[target("void", endpoint, 10_000)], templates(), 1);
    let stats = Arc::clone(&process.collectors()[0].stats);
    for chunk in 0..20 {
        process.export(batch(chunk * 10, 10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("send errors", || {
        stats.send_errors.load(Ordering::Acquire) >= 1
    })
    .await;
    eventually("the queue to drain", || {
        stats.queued.load(Ordering::Acquire) == 0
    })
    .await;
    let exported = stats.records_exported.load(Ordering::Acquire);
    let dropped = stats.records_dropped.load(Ordering::Acquire);
    assert_eq!(exported + dropped, 200);
    assert!(dropped >= 1);
    process.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tcp_collector_gets_templates_again_and_the_queued_records() {
    let first = collector("tcp://127.0.0.1:0");
    let endpoint = first.tcp_endpoint().unwrap();
    let process = ExportingProcess::start(&[target("tcp", endpoint, 100_000)], templates(), 5);
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 1_000));
    assert!(first.wait_for_records(1_000, WAIT));
    let before = first.stop();
    assert_eq!(before.records, 1_000);

    // Probe until the exporter notices the collector is gone.
    let mut probes = 0;
    while stats.connected.load(Ordering::Acquire) {
        process.export(batch(1_000 + probes, 1));
        probes += 1;
        assert!(
            probes < 500,
            "the exporter never noticed the collector going away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // These wait in the queue while the collector is down.
    process.export(batch(10_000, 2_000));
    let second = Collector::start(CollectorConfig::new(vec![endpoint])).unwrap();
    assert!(second.wait_for_records(2_000, WAIT));
    let after = second.wait_until_quiet(Duration::from_millis(300), WAIT);
    // Everything queued arrived, after the templates, in a fresh stream.
    assert!(after.records >= 2_000 && after.records <= 2_000 + probes);
    assert_eq!(after.templates, 2);
    assert_eq!(after.sets_without_template, 0);
    assert_eq!(after.sequence_gaps, 0);
    assert!(stats.reconnects.load(Ordering::Acquire) >= 1);
    process.shutdown(WAIT).await;
}
