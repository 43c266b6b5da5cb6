//! Resident memory per tracked connection: fills a store with N synthetic connections
//! (each with its expiry entry) and reports the growth of the process's resident set.
//!
//! `cargo run --release -p flowex-agent --example store_memory -- 1000000`
//!
//! With `enriched` after the count, every connection is then exported once through the
//! agent's RecordBuilder with 1,000 pods indexed (a thousand of the sources are pods), so
//! each keeps its enrichment as the agent's connections do after their first export; the
//! figure then includes it (and the export's reused buffers).

mod common;

use std::net::IpAddr;

use flowex_agent::sources::conntrack::{ConntrackEntry, Counters, Tuple};
use flowex_agent::store::{ConnectionStore, Timeouts};

use common::{count_arg, resident_bytes};

fn main() {
    let count = count_arg(100_000);
    let store = ConnectionStore::new(Timeouts {
        active_ms: 5_000,
        idle_ms: 15_000,
        deny_idle_ms: 15_000,
    });
    let before = resident_bytes();
    let generation = store.begin_poll();
    let mut entry = ConntrackEntry {
        family: 2,
        original_counters: Some(Counters {
            packets: 10,
            bytes: 1_000,
        }),
        reply_counters: Some(Counters {
            packets: 8,
            bytes: 9_000,
        }),
        tcp_state: Some(3),
        ..ConntrackEntry::default()
    };
    for i in 0..count {
        let src = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let dst = IpAddr::from([10, 96, 0, (i % 250) as u8]);
        entry.original = Tuple {
            source: src,
            destination: dst,
            protocol: 6,
            source_port: 1024 + (i % 60_000) as u16,
            destination_port: 443,
            ..Tuple::default()
        };
        entry.reply = Tuple {
            source: dst,
            destination: src,
            protocol: 6,
            source_port: 443,
            destination_port: entry.original.source_port,
            ..Tuple::default()
        };
        store.update(entry, generation, 0);
    }
    let enriched = std::env::args().nth(2).as_deref() == Some("enriched");
    let (kept, distinct) = if enriched {
        export_once(&store)
    } else {
        (0, 0)
    };
    let after = resident_bytes();
    println!(
        "{{\"connections\":{},\"enriched\":{kept},\"distinct_enrichments\":{distinct},\"resident_bytes\":{},\"bytes_per_connection\":{:.1}}}",
        store.len(),
        after - before,
        (after - before) as f64 / f64::from(count)
    );
}

/// Exports every connection once, 10,000 at a time, through a RecordBuilder whose pod index
/// holds the sources 10.0.0.0 to 10.0.3.231; returns the records built and the distinct
/// enrichments they share.
fn export_once(store: &ConnectionStore) -> (usize, usize) {
    use flowex_agent::enrich::attribution::Attribution;
    use flowex_agent::enrich::metadata::Metadata;
    use flowex_agent::export::BatchBuilder;
    use flowex_agent::records::{PodNetworks, RecordBuilder};
    use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher::Event;

    let metadata = Metadata::disabled(None);
    for i in 0..1_000u32 {
        let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]).to_string();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("client-{i}")),
                namespace: Some("memory".into()),
                uid: Some(format!("uid-{i}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![PodIP { ip }]),
                ..PodStatus::default()
            }),
        };
        metadata.on_pod_event(Event::Apply(pod), 0);
    }
    metadata.mark_active();
    let mut builder = RecordBuilder::new(PodNetworks::default(), Attribution::disabled(), metadata);
    let mut batch = BatchBuilder::default();
    let mut due = Vec::new();
    let mut built = 0;
    loop {
        due.clear();
        // Everything is due at its first active timeout (5 s after it was added at 0).
        if store.expire_into(5_000, false, 10_000, &mut due) == 0 {
            break;
        }
        for d in &due {
            builder.push(store, d, &mut batch);
        }
        drop(batch.finish());
        built += due.len();
    }
    (built, builder.stats().interned)
}
