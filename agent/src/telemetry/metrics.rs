//! Every metric the agent exposes, registered once; [`super::http`] serves them.

use std::sync::atomic::Ordering;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::export::statistics::{InterfaceDrops, LossWindow, Losses, StatisticsSource};
use crate::export::{DropReason, ExportingProcess};
use crate::store::ConnectionStore;

/// Every metric the agent exposes.
pub struct Metrics {
    registry: Registry,
    tracked_connections: IntGauge,
    deny_connections: IntGauge,
    conntrack_entries: IntGauge,
    conntrack_max: IntGauge,
    poll_duration: Histogram,
    events_received: IntCounter,
    events_lost: IntCounter,
    resyncs: IntCounter,
    deny_packets: IntCounter,
    /// NFLOG messages whose copied bytes were not a readable IP packet.
    deny_unreadable: IntCounter,
    /// Times denied packets were lost before they were read (an NFLOG socket overflow, a
    /// datagram too large or unreadable).
    deny_overflows: IntCounter,
    /// Records refused by the batch builder (a record type that misreports its length).
    records_unencodable: IntCounter,
    records_produced: IntCounter,
    records_exported: IntCounterVec,
    records_dropped: IntCounterVec,
    records_filtered: IntCounterVec,
    records_resent: IntCounterVec,
    /// Failed accepts of the metrics server (out of file descriptors, mostly).
    accept_errors: IntCounter,
    send_errors: IntCounterVec,
    reconnects: IntCounterVec,
    messages: IntCounterVec,
    options_records: IntCounterVec,
    bytes: IntCounterVec,
    queue_depth: IntGaugeVec,
    connected: IntGaugeVec,
    probe_loaded: IntGauge,
    probe_calls: IntCounter,
    probe_recorded: IntCounter,
    probe_map_errors: IntCounter,
    probe_evicted: IntCounter,
    /// Per end (source, destination): records whose owner was found / not found.
    owner_found: [IntCounter; 2],
    owner_missing: [IntCounter; 2],
    /// The node's own network health, read at each scrape.
    node: crate::network::NodeNetwork,
    /// When conntrack events and NFLOG packets were first and last lost.
    events_lost_window: LossWindow,
    deny_lost_window: LossWindow,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are constants and unique: registration cannot fail.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let per_collector = |name: &str, help: &str| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), &["collector"]).expect("valid metric"),
            )
        };
        let per_collector_gauge = |name: &str, help: &str| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), &["collector"]).expect("valid metric"),
            )
        };
        let attributed = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "flowex_records_attributed_total",
                    "Records by flow end and whether the end's owning process was found.",
                ),
                &["end", "result"],
            )
            .expect("valid metric"),
        );
        Self {
            tracked_connections: gauge(
                "flowex_tracked_connections",
                "Connections in the store (conntrack and deny).",
            ),
            deny_connections: gauge(
                "flowex_deny_connections",
                "Denied connections in the store.",
            ),
            conntrack_entries: gauge(
                "flowex_conntrack_entries",
                "Entries in the kernel's conntrack table (global count).",
            ),
            conntrack_max: gauge(
                "flowex_conntrack_max_entries",
                "The kernel's nf_conntrack_max.",
            ),
            poll_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flowex_poll_duration_seconds",
                        "Time of one full conntrack dump into the store.",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            events_received: counter(
                "flowex_conntrack_events_received_total",
                "Conntrack events received.",
            ),
            events_lost: counter(
                "flowex_conntrack_events_lost_total",
                "Times conntrack events were lost (the kernel dropped them, ENOBUFS, or one did not fit or parse); each is followed by a resync dump.",
            ),
            resyncs: counter(
                "flowex_conntrack_resyncs_total",
                "Full dumps made to recover from lost events.",
            ),
            deny_packets: counter(
                "flowex_deny_packets_total",
                "Denied packets received from NFLOG.",
            ),
            deny_unreadable: counter(
                "flowex_deny_packets_unreadable_total",
                "NFLOG messages whose copied bytes were not a readable IP packet (not exported).",
            ),
            deny_overflows: counter(
                "flowex_deny_overflows_total",
                "Times denied packets were lost before they were read: the NFLOG socket buffer overflowed (ENOBUFS), or a datagram did not fit its slot or did not parse.",
            ),
            records_unencodable: counter(
                "flowex_records_unencodable_total",
                "Records refused before export because they wrote another length than announced (a bug: please report it).",
            ),
            records_exported: per_collector(
                "flowex_records_exported_total",
                "Data records the collector confirmed (TCP: acknowledged; UDP: sent and not refused).",
            ),
            records_produced: counter(
                "flowex_records_produced_total",
                "Data records built for export; for every collector, exported + dropped + filtered + queued equals it.",
            ),
            records_filtered: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "flowex_records_filtered_total",
                        "Data records the collector's filter left out, by reason: protocol, flow_type, source, destination, port.",
                    ),
                    &["collector", "reason"],
                )
                .expect("valid metric"),
            ),
            records_dropped: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "flowex_records_dropped_total",
                        "Data records that did not reach the collector, by reason: queue_full, collector_refused (UDP port unreachable), send_failed, too_large, shutdown (deadline).",
                    ),
                    &["collector", "reason"],
                )
                .expect("valid metric"),
            ),
            records_resent: per_collector(
                "flowex_records_resent_total",
                "Records sent again on a new TCP connection because the old one failed before the collector acknowledged them.",
            ),
            accept_errors: counter(
                "flowex_metrics_accept_errors_total",
                "Connections the metrics server failed to accept (for example out of file descriptors).",
            ),
            send_errors: per_collector(
                "flowex_send_errors_total",
                "Failed sends and connection attempts.",
            ),
            reconnects: per_collector(
                "flowex_reconnects_total",
                "TCP connections to the collector that failed after they were established.",
            ),
            messages: per_collector("flowex_messages_sent_total", "IPFIX messages sent."),
            options_records: per_collector(
                "flowex_options_records_sent_total",
                "Options records sent (statistics and type records); not counted as data records.",
            ),
            bytes: per_collector("flowex_bytes_sent_total", "Bytes of IPFIX messages sent."),
            queue_depth: per_collector_gauge(
                "flowex_queue_depth_records",
                "Records accepted for the collector and not yet confirmed or dropped (waiting, or sent and unacknowledged).",
            ),
            connected: per_collector_gauge(
                "flowex_collector_connected",
                "1 while the collector's transport is up.",
            ),
            probe_loaded: gauge(
                "flowex_probe_loaded",
                "1 when the eBPF socket probe is attached (process attribution on).",
            ),
            probe_calls: counter(
                "flowex_probe_socket_calls_total",
                "send/recv calls on TCP/UDP/SCTP sockets seen by the probe.",
            ),
            probe_recorded: counter(
                "flowex_probe_owners_recorded_total",
                "Socket owners written by the probe (new socket or new process on it).",
            ),
            probe_map_errors: counter(
                "flowex_probe_map_errors_total",
                "Owner map updates that failed in the probe.",
            ),
            probe_evicted: counter(
                "flowex_probe_owners_evicted_total",
                "Owners of live sockets the full owner map had evicted (recorded again).",
            ),
            owner_found: [
                attributed.with_label_values(&["source", "found"]),
                attributed.with_label_values(&["destination", "found"]),
            ],
            owner_missing: [
                attributed.with_label_values(&["source", "missing"]),
                attributed.with_label_values(&["destination", "missing"]),
            ],
            node: crate::network::NodeNetwork::new(&r, crate::network::Sources::default()),
            events_lost_window: LossWindow::default(),
            deny_lost_window: LossWindow::default(),
            registry: r,
        }
    }

    /// Whether the eBPF socket probe is loaded.
    pub fn probe_attached(&self, attached: bool) {
        self.probe_loaded.set(i64::from(attached));
    }

    /// One poll of the conntrack table: how long it took, and the table's size and limit.
    pub fn polled(&self, took: std::time::Duration, table: Option<(u32, u32)>) {
        self.poll_duration.observe(took.as_secs_f64());
        if let Some((entries, max)) = table {
            self.conntrack_entries.set(i64::from(entries));
            self.conntrack_max.set(i64::from(max));
            self.node.observe_table(entries, max);
        }
    }

    /// Sets how a pod veth's peer address is turned into its pod, for the interface
    /// metrics' namespace and pod labels.
    pub fn set_pod_lookup(
        &self,
        lookup: impl Fn(std::net::IpAddr) -> Option<crate::network::PodName> + Send + Sync + 'static,
    ) {
        self.node.set_pod_lookup(lookup);
    }

    /// Conntrack's per-CPU counters, read with a poll.
    pub fn conntrack_cpu_stats(&self, cpus: &[crate::net::CpuStats]) {
        self.node.observe_conntrack(cpus);
    }

    /// Conntrack events read.
    pub fn events_read(&self, count: u64) {
        self.events_received.inc_by(count);
    }

    /// Conntrack events were lost: a resync dump follows.
    pub fn events_lost_and_resynced(&self) {
        self.events_lost.inc();
        self.resyncs.inc();
        self.events_lost_window.note(crate::store::now_ms());
    }

    /// One denied packet read from NFLOG.
    pub fn denied_packet(&self) {
        self.deny_packets.inc();
    }

    /// NFLOG losses since the last call: socket overflows and unreadable packets.
    pub fn deny_losses(&self, overflows: u64, unreadable: u64) {
        self.deny_overflows.inc_by(overflows);
        self.deny_unreadable.inc_by(unreadable);
        if overflows + unreadable > 0 {
            self.deny_lost_window.note(crate::store::now_ms());
        }
    }

    /// The batch builder's count of refused records so far (a running total).
    pub fn records_unencodable_total(&self, total: u64) {
        self.records_unencodable
            .inc_by(total.saturating_sub(self.records_unencodable.get()));
    }

    /// A failed accept of the metrics server.
    pub fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    /// Counts, per end, whether a record found its owner.
    pub fn observe_owners(&self, owners: &crate::enrich::attribution::FlowOwners) {
        for (end, owner) in [owners.source, owners.destination].iter().enumerate() {
            if owner.is_some() {
                self.owner_found[end].inc();
            } else {
                self.owner_missing[end].inc();
            }
        }
    }

    /// Copies the probe's counters into the metrics.
    pub fn observe_probe(&self, stats: Option<flowex_ebpf::ProbeStats>) {
        let Some(stats) = stats else { return };
        for (counter, value) in [
            (&self.probe_calls, stats.calls),
            (&self.probe_recorded, stats.recorded),
            (&self.probe_map_errors, stats.map_errors),
            (&self.probe_evicted, stats.evicted),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }

    /// Copies the live counters of the store and collectors into the metrics.
    pub fn refresh(&self, store: &ConnectionStore, process: &ExportingProcess) {
        // A sample, not only a refresh: scrapes give `/diagnose` its baseline.
        self.node.sample();
        self.tracked_connections.set(store.len() as i64);
        self.records_produced.inc_by(
            process
                .records_produced()
                .saturating_sub(self.records_produced.get()),
        );
        self.deny_connections.set(store.deny_len() as i64);
        for collector in process.collectors() {
            let stats = &collector.stats;
            let name = [collector.name.as_str()];
            let set = |vec: &IntCounterVec, value: u64| {
                let counter = vec.with_label_values(&name);
                counter.inc_by(value.saturating_sub(counter.get()));
            };
            set(
                &self.records_exported,
                stats.records_exported.load(Ordering::Relaxed),
            );
            for reason in DropReason::ALL {
                let counter = self
                    .records_dropped
                    .with_label_values(&[collector.name.as_str(), reason.label()]);
                counter.inc_by(stats.dropped(reason).saturating_sub(counter.get()));
            }
            for reason in crate::filter::FilterReason::ALL {
                let counter = self
                    .records_filtered
                    .with_label_values(&[collector.name.as_str(), reason.label()]);
                counter.inc_by(stats.filtered(reason).saturating_sub(counter.get()));
            }
            set(
                &self.records_resent,
                stats.records_resent.load(Ordering::Relaxed),
            );
            set(&self.send_errors, stats.send_errors.load(Ordering::Relaxed));
            set(&self.reconnects, stats.reconnects.load(Ordering::Relaxed));
            set(&self.messages, stats.messages.load(Ordering::Relaxed));
            set(
                &self.options_records,
                stats.options_records.load(Ordering::Relaxed),
            );
            set(&self.bytes, stats.bytes.load(Ordering::Relaxed));
            self.queue_depth
                .with_label_values(&name)
                .set(stats.queued.load(Ordering::Relaxed) as i64);
            self.connected
                .with_label_values(&name)
                .set(i64::from(stats.connected.load(Ordering::Relaxed)));
        }
    }

    /// Findings about the node's network (`/diagnose`).
    pub fn diagnose(&self) -> crate::network::diagnose::Report {
        self.node.diagnose()
    }

    /// The registry, for metrics registered by other parts of the agent.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The statistics records read their losses and interface drops here.
impl StatisticsSource for Metrics {
    fn losses(&self) -> [Losses; 2] {
        let losses = |count: u64, window: &LossWindow| {
            let (first_ms, last_ms) = window.get();
            Losses {
                count,
                first_ms,
                last_ms,
            }
        };
        [
            losses(self.events_lost.get(), &self.events_lost_window),
            losses(
                self.deny_overflows.get() + self.deny_unreadable.get(),
                &self.deny_lost_window,
            ),
        ]
    }

    fn interface_drops(&self) -> Vec<InterfaceDrops> {
        self.node.interface_drops()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
