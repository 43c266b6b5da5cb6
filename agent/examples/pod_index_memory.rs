//! Resident memory per pod in the metadata index: N pods, each with one IPv4 address, one
//! container, four labels and a name, namespace and node like a real cluster's, and reports
//! the growth of the process's resident set. The pods are replicas of 300 workloads: the
//! replicas of one carry the same labels (pod-template-hash included), as a ReplicaSet's
//! pods do, and share one copy of them.
//!
//! `cargo run --release -p flowex-agent --example pod_index_memory -- 10000`, and with
//! `distinct` after the count every pod's labels differ (a pod-template-hash of its own).

mod common;

use std::net::IpAddr;

use flowex_agent::enrich::metadata::{PodIndex, PodMeta, PodView};

use common::{count_arg, resident_bytes};

fn main() {
    let count = count_arg(10_000);
    let distinct = std::env::args().nth(2).as_deref() == Some("distinct");
    let mut index = PodIndex::default();
    let before = resident_bytes();
    for i in 0..count {
        let workload = i % 300;
        let app = format!("service-{workload}");
        let hash = format!(
            "{:010x}",
            u64::from(if distinct { i } else { workload }) * 7919
        );
        let team = format!("team-{}", workload % 40);
        index.apply(
            PodView {
                meta: PodMeta::new(
                    &format!("{app}-{hash}-{i:05x}"),
                    &format!("team-{}", i % 40),
                    &format!("{:08x}-0000-4000-8000-{:012x}", i, u64::from(i) * 31),
                    &format!("worker-{:03}", i % 100),
                    [
                        ("app.kubernetes.io/name", app.as_str()),
                        ("app.kubernetes.io/part-of", team.as_str()),
                        ("app.kubernetes.io/version", "1.27.3"),
                        ("pod-template-hash", hash.as_str()),
                    ],
                ),
                created_ms: 1_000,
                ips: vec![IpAddr::from([10, 244, (i >> 8) as u8, i as u8])],
                container_ids: vec![format!("{:064x}", u128::from(i) * 0x9e37_79b9)],
            },
            2_000,
        );
    }
    let after = resident_bytes();
    println!(
        "{{\"pods\":{},\"label_sets\":{},\"resident_bytes\":{},\"bytes_per_pod\":{:.1}}}",
        index.live_pods(),
        index.label_sets(),
        after - before,
        (after - before) as f64 / f64::from(count)
    );
}
