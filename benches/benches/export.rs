//! Mirrors Antrea's ExportConntrackConns and ExportDenyConns: 20,000 connections (2,000 of
//! them dying) or 20,000 deny connections, exported through the real exporting process over
//! UDP on loopback to collector-sim, every iteration exporting all of them (Antrea's
//! benchmark drained its queue in the first iteration only). The timed region is expiry,
//! record building, encoding and sending until the exporter has handed every message to the
//! socket; setting up the store is not timed. Loss is read from collector-sim's counters,
//! which come from parsing messages. Allocations are counted inside the timed exports only
//! (not criterion's own statistics), on the exporter's threads only (collector-sim runs in
//! the same process).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use collector_sim::Collector;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowex_agent::config::AttributionConfig;
use flowex_agent::enrich::attribution::Attribution;
use flowex_agent::enrich::metadata::Metadata;
use flowex_agent::export::{BatchBuilder, CollectorStats, ExportingProcess};
use flowex_agent::records::{PodNetworks, RecordBuilder};
use flowex_agent::sources::conntrack::ConntrackEntry;
use flowex_agent::sources::deny::{DenyEvent, PacketTuple};
use flowex_agent::store::{ConnectionStore, Due, Timeouts};
use flowex_benches::{
    CountingAllocator, alloc_snapshot, count_only_marked_threads, mark_this_thread, tcp_entry,
    udp_export_pair,
};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const CONNECTIONS: usize = 20_000;
const DYING: usize = 2_000;

fn entry(i: u32) -> ConntrackEntry {
    let src = IpAddr::from([10, 244, (i >> 8) as u8, i as u8]);
    let dst = IpAddr::from([10, 96, (i >> 16) as u8, (i % 200) as u8]);
    tcp_entry(
        src,
        dst,
        1024 + (i % 60_000) as u16,
        8080,
        (10, 1_500),
        (9, 12_000),
    )
}

struct Bench {
    runtime: tokio::runtime::Runtime,
    process: ExportingProcess,
    collector: Collector,
    store: ConnectionStore,
    /// The agent's own record builder (enrichment as configured by the variant).
    records: RecordBuilder,
    builder: BatchBuilder,
    due: Vec<Due>,
    sent: u64,
    now_ms: u64,
    /// Allocations and bytes during the timed exports only.
    allocations: (u64, u64),
    /// The pod metadata of [`Bench::with_pods`].
    metadata: Option<std::sync::Arc<Metadata>>,
}

fn networks() -> PodNetworks {
    PodNetworks::new(vec![("10.244.0.0".parse().expect("ip"), 16)])
}

fn timeouts() -> Timeouts {
    Timeouts {
        active_ms: 1_000,
        idle_ms: 600_000,
        deny_idle_ms: 1_000,
    }
}

impl Bench {
    fn new() -> Self {
        // Count the exporter's allocations (this thread and the runtime's), not those of
        // collector-sim's receive threads in the same process.
        count_only_marked_threads();
        mark_this_thread();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(mark_this_thread)
            .enable_all()
            .build()
            .expect("runtime");
        let (collector, process) = udp_export_pair(&runtime, 1 << 22);
        Self {
            runtime,
            process,
            collector,
            store: ConnectionStore::new(timeouts()),
            records: RecordBuilder::new(
                networks(),
                Attribution::disabled(),
                Metadata::disabled(None),
            ),
            builder: BatchBuilder::default(),
            due: Vec::new(),
            sent: 0,
            now_ms: 1_764_000_000_000,
            allocations: (0, 0),
            metadata: None,
        }
    }

    /// Attaches the eBPF socket probe, as the agent does: every record's ends are looked
    /// up in its map at the connection's first export. None without root or BPF.
    fn with_probe(mut self) -> Option<Self> {
        let config = AttributionConfig {
            pin_path: String::new(),
            ..AttributionConfig::default()
        };
        match Attribution::start(&config) {
            Ok(attribution) => {
                let metadata = self.metadata();
                self.records = RecordBuilder::new(networks(), attribution, metadata);
                Some(self)
            }
            Err(error) => {
                println!("export with the probe: skipped, the probe does not load here: {error}");
                None
            }
        }
    }

    fn metadata(&self) -> std::sync::Arc<Metadata> {
        self.metadata
            .clone()
            .unwrap_or_else(|| Metadata::disabled(None))
    }

    /// Makes every record look up its pods: one pod per source address of [`entry`]
    /// (`CONNECTIONS` pods, on two nodes), and a service on every destination.
    fn with_pods(mut self) -> Self {
        use k8s_openapi::api::core::v1::{
            Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use kube::runtime::watcher::Event;
        let metadata = Metadata::disabled(Some(&prometheus::Registry::new()));
        for i in 0..CONNECTIONS as u32 {
            let ip = IpAddr::from([10, 244, (i >> 8) as u8, i as u8]).to_string();
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("client-{i}")),
                    namespace: Some("bench".into()),
                    uid: Some(format!("uid-{i}")),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(format!("node-{}", i % 2)),
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
        let service = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("bench".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.1".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 8080,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        metadata.on_service_event(Event::Apply(service));
        metadata.mark_active();
        self.metadata = Some(std::sync::Arc::clone(&metadata));
        self.records = RecordBuilder::new(networks(), Attribution::disabled(), metadata);
        self
    }

    fn stats(&self) -> &CollectorStats {
        &self.process.collectors()[0].stats
    }

    /// Expires everything due, builds and encodes the records, queues them, and waits
    /// until the exporter has sent all of them. Returns the records exported.
    fn export(&mut self) -> u64 {
        let before = alloc_snapshot();
        let (exported, _) = self.records.export_due(
            &self.store,
            &self.process,
            &mut self.builder,
            &mut self.due,
            self.now_ms,
            usize::MAX,
            false,
        );
        let exported = exported as u64;
        self.sent += exported;
        // Until every record is written to the socket: UDP confirmation (no refusal came
        // back) runs on its own 200 ms timer, which is not the work measured here.
        while self.stats().records_sent.load(Ordering::Acquire) + self.stats().records_dropped()
            < self.sent
        {
            std::hint::spin_loop();
        }
        let after = alloc_snapshot();
        self.allocations.0 += after.allocations - before.allocations;
        self.allocations.1 += after.bytes - before.bytes;
        exported
    }

    fn report(self, name: &str) {
        let allocations = self.allocations;
        let summary = self
            .collector
            .wait_until_quiet(Duration::from_millis(300), Duration::from_secs(30));
        let stats = self.stats();
        let work = self.records.stats();
        println!(
            "{name}: records built from the enrichment kept with the connection {}, with lookups {} \
             ({} distinct enrichments)",
            work.cached, work.resolved, work.interned
        );
        println!(
            "{name}: sent {} records in {} messages ({:.1} records/message), collector-sim received {}, \
             missing by sequence {}, dropped {}; {} allocations in {} exports of {CONNECTIONS} \
             ({:.5} per record), {:.1} bytes allocated per record",
            self.sent,
            stats.messages.load(Ordering::Acquire),
            self.sent as f64 / stats.messages.load(Ordering::Acquire).max(1) as f64,
            summary.records,
            summary.missing_records,
            stats.records_dropped(),
            allocations.0,
            self.sent / CONNECTIONS as u64,
            allocations.0 as f64 / self.sent.max(1) as f64,
            allocations.1 as f64 / self.sent.max(1) as f64,
        );
        drop(self.runtime);
    }
}

fn export_conntrack(c: &mut Criterion) {
    export_conntrack_with(c, Bench::new(), "20k_conns_2k_dying", "export_conntrack");
    export_conntrack_with(
        c,
        Bench::new().with_pods(),
        "20k_conns_2k_dying_with_pods",
        "export_conntrack with pod metadata",
    );
}

/// As in production: the probe attached and the pods indexed, so every connection's ends
/// are looked up in the probe's map and the pod index at its first export and the result
/// kept with it. `steady`: 20,000 connections exported again and again (the enrichment
/// kept); `first`: 20,000 connections new to the store each time (every record looks
/// up). The same shapes without enrichment are the baselines.
fn export_enriched(c: &mut Criterion) {
    let mut group = c.benchmark_group("export_enriched");
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    export_steady(&mut group, Bench::new(), "20k_steady_bare");
    if let Some(bench) = Bench::new().with_pods().with_probe() {
        export_steady(&mut group, bench, "20k_steady_probe_and_pods");
    }
    export_first(&mut group, Bench::new(), "20k_first_bare");
    if let Some(bench) = Bench::new().with_pods().with_probe() {
        export_first(&mut group, bench, "20k_first_probe_and_pods");
    }
    group.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn export_steady(group: &mut Group<'_>, mut bench: Bench, id: &str) {
    let mut active: Vec<ConntrackEntry> = (0..CONNECTIONS as u32).map(entry).collect();
    // Untimed: the first exports, which look the ends up.
    let generation = bench.store.begin_poll();
    for e in &active {
        bench.store.update(e, generation, bench.now_ms);
    }
    bench.export();
    bench.allocations = (0, 0);
    group.bench_function(id, |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                bench.now_ms += 1_000;
                let generation = bench.store.begin_poll();
                for e in &mut active {
                    if let Some(c) = e.original_counters.as_mut() {
                        c.packets += 1;
                        c.bytes += 100;
                    }
                    bench.store.update(e, generation, bench.now_ms);
                }
                let started = Instant::now();
                let exported = bench.export();
                timed += started.elapsed();
                assert_eq!(exported, CONNECTIONS as u64);
            }
            timed
        })
    });
    bench.report(&format!("export_enriched/{id}"));
}

fn export_first(group: &mut Group<'_>, mut bench: Bench, id: &str) {
    let active: Vec<ConntrackEntry> = (0..CONNECTIONS as u32).map(entry).collect();
    group.bench_function(id, |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                // Untimed: a store of connections the builder has not seen.
                bench.store = ConnectionStore::new(timeouts());
                let generation = bench.store.begin_poll();
                for e in &active {
                    bench.store.update(e, generation, bench.now_ms);
                }
                bench.now_ms += 1_000;
                let started = Instant::now();
                let exported = bench.export();
                timed += started.elapsed();
                assert_eq!(exported, CONNECTIONS as u64);
            }
            timed
        })
    });
    bench.report(&format!("export_enriched/{id}"));
}

fn export_conntrack_with(c: &mut Criterion, mut bench: Bench, id: &str, report: &str) {
    let mut active: Vec<ConntrackEntry> = (0..(CONNECTIONS - DYING) as u32).map(entry).collect();
    let mut next_dying = 1_000_000u32;
    // Untimed first round: the connections enter the store and become due a second later.
    let generation = bench.store.begin_poll();
    for e in &active {
        bench.store.update(e, generation, bench.now_ms);
    }
    bench.export();
    // Count only the timed exports that follow (the first one grows the buffers).
    bench.allocations = (0, 0);
    let mut group = c.benchmark_group("export_conntrack");
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.bench_function(id, |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                // Untimed: the poll that made them due (with traffic since the last one, so
                // they stay active rather than going idle), and 2,000 connections ending.
                bench.now_ms += 1_000;
                let generation = bench.store.begin_poll();
                for e in &mut active {
                    if let Some(c) = e.original_counters.as_mut() {
                        c.packets += 1;
                        c.bytes += 100;
                    }
                    bench.store.update(e, generation, bench.now_ms);
                }
                for _ in 0..DYING {
                    let mut ended = entry(next_dying);
                    ended.tcp_state = Some(7);
                    bench.store.end(ended, bench.now_ms);
                    next_dying = next_dying.wrapping_add(1);
                }
                let started = Instant::now();
                let exported = bench.export();
                timed += started.elapsed();
                assert_eq!(exported, CONNECTIONS as u64);
            }
            timed
        })
    });
    group.finish();
    bench.report(report);
}

fn export_deny(c: &mut Criterion) {
    let mut bench = Bench::new();
    let tuples: Vec<PacketTuple> = (0..CONNECTIONS as u32)
        .map(|i| PacketTuple {
            source: IpAddr::from([10, 244, (i >> 8) as u8, i as u8]),
            destination: IpAddr::from([10, 244, 200, (i % 250) as u8]),
            protocol: 6,
            source_port: 1024 + (i % 60_000) as u16,
            destination_port: 22,
            icmp_type: 0,
            icmp_code: 0,
            icmp_id: 0,
            ip_length: 60,
        })
        .collect();
    let mut group = c.benchmark_group("export_deny");
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.bench_function("20k_deny_conns", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                // Untimed: the denials arrive.
                for tuple in &tuples {
                    let event = DenyEvent {
                        tuple: *tuple,
                        hook: 1,
                        in_ifindex: Some(2),
                        out_ifindex: None,
                        mark: 0,
                        timestamp: None,
                        prefix: "flowex:shop/deny-ssh/ingress-0",
                        policy: None,
                    };
                    bench.store.deny(&event, bench.now_ms);
                }
                bench.now_ms += 1_000;
                let started = Instant::now();
                let exported = bench.export();
                timed += started.elapsed();
                assert_eq!(exported, CONNECTIONS as u64);
            }
            timed
        })
    });
    group.finish();
    bench.report("export_deny");
}

/// Certificates made by openssl(1) for the TLS and gRPC rows: a CA, a server certificate
/// for 127.0.0.1 and a client certificate.
fn certificates() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowex-bench-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("certificate directory");
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &key,
            &[
                "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=ca",
            ],
        ]
        .concat(),
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        (
            "client",
            "subjectAltName=DNS:agent\nextendedKeyUsage=clientAuth",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
        )
        .expect("ext");
        openssl(
            &[
                &["req"][..],
                &key,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    dir
}

/// One batch of 20,000 Antrea records (encoded once) through the exporting process to
/// collector-sim over UDP, TCP, TLS (mutual) and gRPC (mutual TLS), each timed from the
/// export until collector-sim has decoded every record: the per-record cost of each
/// transport in one run (sender, receiver and decoding on this machine's two cores).
fn export_transport(c: &mut Criterion) {
    use flowex_agent::config::{TlsConfig, Transport};
    use flowex_agent::export::{CollectorTarget, EncodedBatch};

    let dir = certificates();
    let path = |f: &str| dir.join(f).to_str().expect("utf-8").to_owned();
    let templates = std::sync::Arc::new(vec![
        flowex_ipfix::antrea::ipv4_template(&flowex_ipfix::Registry::default()).expect("template"),
        flowex_ipfix::antrea::ipv6_template(&flowex_ipfix::Registry::default()).expect("template"),
    ]);
    let batch: EncodedBatch = {
        let mut builder = BatchBuilder::default();
        for index in 0..CONNECTIONS as u64 {
            let record = collector_sim::synthetic::flow_record(index, index % 4 == 3);
            builder.push(record.template_id(), &record);
        }
        builder.finish()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("export_transport");
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    for (name, listen, transport, max) in [
        ("udp", "udp://127.0.0.1:0", Transport::Udp, 1472),
        ("tcp", "tcp://127.0.0.1:0", Transport::Tcp, 65_535),
        ("tls", "tls://127.0.0.1:0", Transport::Tls, 65_535),
        ("grpc", "grpc://127.0.0.1:0", Transport::Grpc, 65_535),
    ] {
        let mut config =
            collector_sim::CollectorConfig::new(vec![listen.parse().expect("endpoint")]);
        config.tls = Some(collector_sim::tls::TlsFiles {
            ca: Some(dir.join("ca.crt")),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        });
        let collector = Collector::start(config).expect("collector");
        let secure = matches!(transport, Transport::Tls | Transport::Grpc);
        let target = CollectorTarget {
            name: name.into(),
            address: collector.local_endpoints()[0].addr().to_string(),
            transport,
            tls: secure.then(|| TlsConfig {
                ca_file: Some(path("ca.crt")),
                cert_file: Some(path("client.crt")),
                key_file: Some(path("client.key")),
                ..TlsConfig::default()
            }),
            api_certificates: None,
            filter: None,
            options: false,
            max_message_size: max,
            template_refresh: Duration::from_secs(600),
            queue_capacity: 4 * CONNECTIONS,
            max_reconnect_delay: Duration::from_millis(200),
            log_interval: flowex_agent::export::DEFAULT_LOG_INTERVAL,
        };
        let process = {
            let _guard = runtime.enter();
            ExportingProcess::start(&[target], std::sync::Arc::clone(&templates), 1)
                .expect("exporting process")
        };
        let stats = std::sync::Arc::clone(&process.collectors()[0].stats);
        let mut sent = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                sent += CONNECTIONS as u64;
                process.export(batch.clone());
                // Until collector-sim has decoded every record: the sender's own
                // confirmation of TCP and TLS runs on a 200 ms idle check, which would be
                // timed instead of the transport.
                while collector.record_count() < sent {
                    std::thread::sleep(Duration::from_micros(50));
                }
            })
        });
        let summary = collector.summary();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stats.records_exported.load(Ordering::Acquire) < sent
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "export_transport/{name}: {} records sent, {} confirmed, {} received, {} dropped, {} resent, {} decode errors",
            sent,
            stats.records_exported.load(Ordering::Acquire),
            summary.records,
            stats.records_dropped(),
            stats.records_resent.load(Ordering::Acquire),
            summary.decode_error_total()
        );
        runtime.block_on(process.shutdown(Duration::from_secs(5)));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = export_conntrack, export_enriched, export_deny, export_transport
}
criterion_main!(benches);
