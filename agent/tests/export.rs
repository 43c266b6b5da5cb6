//! The exporting process against collector-sim over real UDP and TCP sockets on loopback.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_sim::{Collector, CollectorConfig, Endpoint, synthetic};
use flowex_agent::config::Transport;
use flowex_agent::export::{
    BatchBuilder, CollectorTarget, DropReason, EncodedBatch, ExportingProcess,
};
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
        Endpoint::Tls(_) => (Transport::Tls, 65_535),
        Endpoint::Grpc(_) => (Transport::Grpc, 65_535),
    };
    CollectorTarget {
        name: name.into(),
        address: endpoint.addr().to_string(),
        transport,
        tls: None,
        api_certificates: None,
        filter: None,
        options: false,
        max_message_size: max,
        template_refresh: Duration::from_secs(600),
        queue_capacity: capacity,
        max_reconnect_delay: Duration::from_millis(500),
        log_interval: flowex_agent::export::DEFAULT_LOG_INTERVAL,
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
    )
    .expect("exporting process");
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
    let process = ExportingProcess::start(&[target("down", endpoint, 100)], templates(), 1)
        .expect("exporting process");
    for chunk in 0..5 {
        process.export(batch(chunk * 50, 50));
    }
    let stats = Arc::clone(&process.collectors()[0].stats);
    assert_eq!(stats.queued.load(Ordering::Acquire), 100);
    assert_eq!(stats.dropped(DropReason::QueueFull), 150);
    assert_eq!(process.records_produced(), 250);
    eventually("connect attempts to fail", || {
        stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    assert_eq!(process.shutdown(Duration::from_millis(200)).await, 100);
    assert_eq!(stats.dropped(DropReason::QueueFull), 150);
    assert_eq!(stats.dropped(DropReason::Shutdown), 100);
    assert_eq!(stats.records_dropped(), 250);
    assert_eq!(stats.records_exported.load(Ordering::Acquire), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_for_an_absent_udp_collector_wait_for_it_and_are_not_counted_as_sent() {
    let unused = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::Udp(unused.local_addr().unwrap());
    drop(unused);
    let process = ExportingProcess::start(&[target("void", endpoint, 10_000)], templates(), 1)
        .expect("exporting process");
    let stats = Arc::clone(&process.collectors()[0].stats);
    for chunk in 0..20 {
        process.export(batch(chunk * 10, 10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing listens: the port refuses the templates, so no record is sent into it.
    eventually("refused attempts", || {
        stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    assert!(!stats.connected.load(Ordering::Acquire));
    assert_eq!(stats.records_exported.load(Ordering::Acquire), 0);
    assert_eq!(stats.records_dropped(), 0);
    assert_eq!(stats.queued.load(Ordering::Acquire), 200);
    // The collector comes up: everything arrives, once, after the templates.
    let late = Collector::start(CollectorConfig::new(vec![endpoint])).unwrap();
    assert!(late.wait_for_records(200, WAIT));
    let summary = late.wait_until_quiet(Duration::from_millis(300), WAIT);
    assert_eq!(summary.records, 200);
    assert_eq!(summary.sets_without_template, 0);
    process.shutdown(WAIT).await;
    assert_eq!(stats.records_exported.load(Ordering::Acquire), 200);
    assert_eq!(stats.records_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tcp_collector_gets_templates_again_and_the_queued_records() {
    let first = collector("tcp://127.0.0.1:0");
    let endpoint = first.tcp_endpoint().unwrap();
    let process = ExportingProcess::start(&[target("tcp", endpoint, 100_000)], templates(), 5)
        .expect("exporting process");
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
    // Every record is accounted for, and what reached neither collector was resent.
    assert_eq!(
        stats.records_exported.load(Ordering::Acquire) + stats.records_dropped(),
        3_000 + probes
    );
    assert_eq!(stats.records_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_udp_collector_gets_templates_at_once_and_refused_records_are_counted() {
    let first = collector("udp://127.0.0.1:0");
    let endpoint = first.udp_endpoint().unwrap();
    // Ten minutes between refreshes: only the refusal can bring the templates back.
    let process = ExportingProcess::start(&[target("udp", endpoint, 100_000)], templates(), 9)
        .expect("exporting process");
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 1_000));
    assert!(first.wait_for_records(1_000, WAIT));
    eventually("the first records to be confirmed", || {
        stats.records_exported.load(Ordering::Acquire) == 1_000
    })
    .await;
    let before = first.stop();
    assert_eq!(before.records, 1_000);

    // Sent into the closed port until the refusal comes back.
    let mut sent = 1_000;
    while stats.connected.load(Ordering::Acquire) {
        process.export(batch(sent, 10));
        sent += 10;
        assert!(sent < 20_000, "the exporter never noticed the refusal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // These wait in the queue while nothing listens.
    process.export(batch(sent, 500));
    sent += 500;
    let second = Collector::start(CollectorConfig::new(vec![endpoint])).unwrap();
    let after = {
        eventually("the queued records", || second.record_count() >= 500).await;
        second.wait_until_quiet(Duration::from_millis(300), WAIT)
    };
    // Templates first: every data set could be decoded.
    assert_eq!(after.sets_without_template, 0);
    assert!(after.templates >= 2);
    assert_eq!(after.decode_error_total(), 0);
    eventually("the queue to drain", || {
        stats.queued.load(Ordering::Acquire) == 0
    })
    .await;
    process.shutdown(WAIT).await;
    // What was refused is counted as dropped, never as exported: the counts reconcile
    // with what each collector received.
    let exported = stats.records_exported.load(Ordering::Acquire);
    let refused = stats.dropped(DropReason::CollectorRefused);
    assert!(refused >= 1, "{refused}");
    assert_eq!(exported + stats.records_dropped(), sent);
    assert_eq!(stats.records_dropped(), refused);
    assert_eq!(exported, before.records + after.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_within_the_reconnect_cap_after_a_long_outage() {
    let first = collector("tcp://127.0.0.1:0");
    let endpoint = first.tcp_endpoint().unwrap();
    let mut down = target("tcp", endpoint, 100_000);
    down.max_reconnect_delay = Duration::from_secs(1);
    let process = ExportingProcess::start(&[down], templates(), 3).expect("exporting process");
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 10));
    assert!(first.wait_for_records(10, WAIT));
    drop(first.stop());
    // Long enough for the backoff to reach its cap (100 ms doubling: 1 s after ~1.5 s).
    let mut probes = 0;
    while stats.connected.load(Ordering::Acquire) {
        process.export(batch(100 + probes, 1));
        probes += 1;
        assert!(probes < 500);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failed_attempts = stats.send_errors.load(Ordering::Acquire);
    // 100 ms doubling to the 1 s cap: at most about 7 attempts in 4 s, at least 4.
    assert!((4..=9).contains(&failed_attempts), "{failed_attempts}");
    let back = tokio::time::Instant::now();
    let second = Collector::start(CollectorConfig::new(vec![endpoint])).unwrap();
    eventually("the reconnect", || stats.connected.load(Ordering::Acquire)).await;
    // At most the cap plus its jitter (1.2 s), not the old 30 s.
    assert!(
        back.elapsed() <= Duration::from_millis(1_500),
        "{:?}",
        back.elapsed()
    );
    assert!(second.wait_for_records(probes, WAIT));
    process.shutdown(WAIT).await;
}

/// Two collectors share the records, encoded once; one has a filter from the config file.
/// It gets exactly the records its filter selects, and counts the others by reason:
/// exported + dropped + filtered = produced for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collectors_filter_selects_records_and_counts_the_rest_by_reason() {
    use flowex_agent::config::Config;
    use flowex_agent::filter::{FilterReason, RecordSummary};

    let all = collector("tcp://127.0.0.1:0");
    let some = {
        let mut config = CollectorConfig::new(vec!["tcp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    };
    let yaml = format!(
        "export:\n  collectors:\n    - {{name: all, address: \"{}\", transport: tcp, maxMessageSize: 65535}}\n    - name: some\n      address: \"{}\"\n      transport: tcp\n      maxMessageSize: 65535\n      filter: {{protocols: [tcp], excludeDestinationCIDRs: [\"10.96.0.0/27\"], destinationPorts: [\"1-65535\"]}}\n",
        all.tcp_endpoint().unwrap().addr(),
        some.tcp_endpoint().unwrap().addr(),
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let targets: Vec<CollectorTarget> = config
        .export
        .collectors
        .iter()
        .map(CollectorTarget::from)
        .collect();
    let process = ExportingProcess::start(&targets, templates(), 8).unwrap();
    // 2,000 IPv4 records with their summaries, as the agent pushes them.
    let mut builder = BatchBuilder::default();
    let mut expected = Vec::new();
    let mut by_reason = [0u64; 2];
    for index in 0..2_000u64 {
        let mut record = synthetic::flow_record(index, false);
        record.protocol = if index % 3 == 0 { 17 } else { 6 };
        let summary = RecordSummary::of(&record);
        let excluded = matches!(summary.destination, std::net::IpAddr::V4(a) if a.octets()[..3] == [10, 96, 0] && a.octets()[3] < 32);
        if record.protocol != 6 {
            by_reason[0] += 1;
        } else if excluded {
            by_reason[1] += 1;
        } else {
            expected.push(u64::from(record.source_port));
        }
        builder.push_summarized(record.template_id(), &record, summary);
    }
    process.export(builder.finish());
    let wanted = expected.len() as u64;
    assert!(wanted > 0 && by_reason[1] > 0);
    assert!(all.wait_for_records(2_000, WAIT));
    assert!(some.wait_for_records(wanted, WAIT));
    process.shutdown(WAIT).await;
    let some_summary = some.wait_until_quiet(Duration::from_millis(200), WAIT);
    assert_eq!(some_summary.records, wanted);
    assert_eq!(some_summary.sequence_gaps, 0);
    let mut ports: Vec<u64> = some
        .records()
        .iter()
        .map(|r| r["sourceTransportPort"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ports, expected);
    let stats = &process.collectors()[1].stats;
    assert_eq!(stats.filtered(FilterReason::Protocol), by_reason[0]);
    assert_eq!(stats.filtered(FilterReason::Destination), by_reason[1]);
    assert_eq!(stats.filtered(FilterReason::Port), 0);
    for collector in process.collectors() {
        let s = &collector.stats;
        assert_eq!(
            s.records_exported.load(Ordering::Acquire) + s.records_dropped() + s.records_filtered(),
            process.records_produced(),
            "{}",
            collector.name
        );
    }
    assert_eq!(process.collectors()[0].stats.records_filtered(), 0);
}

/// Antrea's Flow Aggregator reads a UDP datagram into 1024 bytes: with `aggregator:
/// antrea` no message is longer, so collector-sim reading 1024 bytes (as the aggregator
/// does) decodes every record; without it, 1472-byte messages are cut and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_messages_for_antreas_aggregator_fit_its_1024_byte_reads() {
    use flowex_agent::config::{Config, Settings};

    for (aggregator, expect_cut) in [(true, false), (false, true)] {
        let collector = {
            let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
            config.udp_read_size = 1024;
            Collector::start(config).unwrap()
        };
        let yaml = format!(
            "export:\n  collectors:\n    - {{name: fa, address: \"{}\"{}}}\n",
            collector.udp_endpoint().unwrap().addr(),
            if aggregator {
                ", aggregator: antrea"
            } else {
                ""
            }
        );
        let settings = Settings::new(Config::from_yaml(&yaml).unwrap()).unwrap();
        let targets: Vec<CollectorTarget> = settings
            .config
            .export
            .collectors
            .iter()
            .map(CollectorTarget::from)
            .collect();
        assert_eq!(
            targets[0].max_message_size,
            if aggregator { 1024 } else { 1472 }
        );
        let process = ExportingProcess::start(&targets, templates(), 4).unwrap();
        for chunk in 0..4 {
            process.export(batch(chunk * 250, 250));
        }
        process.shutdown(WAIT).await;
        let summary = collector.wait_until_quiet(Duration::from_millis(300), WAIT);
        let cut = summary
            .decode_errors
            .get("truncated_datagram")
            .copied()
            .unwrap_or(0);
        if expect_cut {
            assert!(cut > 0, "{summary:?}");
            assert!(summary.records < 1_000);
        } else {
            assert_eq!(cut, 0, "{summary:?}");
            assert_eq!(summary.records, 1_000);
            assert_eq!(summary.sequence_gaps, 0);
        }
    }
}
