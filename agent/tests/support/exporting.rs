//! What the exporting-process tests share: Antrea's templates, batches of synthetic
//! records, a collector target, and waiting for a condition.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use collector_sim::synthetic;
use flowex_agent::config::{TlsConfig, Transport};
use flowex_agent::export::{BatchBuilder, CollectorTarget, EncodedBatch};
use flowex_ipfix::{Registry, Template, antrea};

pub const WAIT: Duration = Duration::from_secs(15);

pub fn templates() -> Arc<Vec<Template>> {
    let registry = Registry::default();
    Arc::new(vec![
        antrea::ipv4_template(&registry).unwrap(),
        antrea::ipv6_template(&registry).unwrap(),
    ])
}

pub fn target(transport: Transport, address: String, tls: Option<TlsConfig>) -> CollectorTarget {
    CollectorTarget {
        name: transport.name().into(),
        address,
        transport,
        tls,
        api_certificates: None,
        filter: None,
        options: false,
        max_message_size: 65_535,
        template_refresh: Duration::from_secs(600),
        queue_capacity: 100_000,
        max_reconnect_delay: Duration::from_millis(300),
        log_interval: flowex_agent::export::DEFAULT_LOG_INTERVAL,
    }
}

pub fn batch(from: u64, count: u64) -> EncodedBatch {
    let mut builder = BatchBuilder::default();
    for index in from..from + count {
        let record = synthetic::flow_record(index, index % 4 == 3);
        builder.push(record.template_id(), &record);
    }
    builder.finish()
}

pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
