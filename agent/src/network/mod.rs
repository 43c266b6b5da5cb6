//! The node's own network health, read where the kernel keeps it: per-CPU packet
//! processing and its limits ([`softnet`], read at scrape time: one file and three
//! sysctls per scrape, nothing in between), conntrack's per-CPU counters (read by the
//! conntrack source with each poll, on the socket it polls with), and the interfaces
//! ([`links`]: counters of every interface, pods' veths labelled with their pod, the
//! NICs' rings, channels and driver statistics; through rtnetlink, ethtool netlink and
//! the ethtool ioctl, at scrape time).

pub mod diagnose;
pub mod driver_stats;
pub mod ethtool;
pub mod interface_metrics;
pub mod links;
mod node_devices;
pub mod pod_veths;
pub mod rtnetlink;
pub mod softnet;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use diagnose::{ConntrackSample, Report, Sample};
use softnet::{RxLimits, SoftnetCpu, grew, parse_softnet};

pub use links::Links;
pub use node_devices::MAX_DRIVER_STATS;
pub use pod_veths::{PodLookup, PodName};

use crate::net::CpuStats;

/// Unreadable softnet_stat text is logged at most this often.
const ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Where the files are (a test points them elsewhere), and whether to read interfaces.
#[derive(Debug, Clone)]
pub struct Sources {
    pub softnet_stat: PathBuf,
    pub proc_sys_net_core: PathBuf,
    /// Follow the interfaces of the network namespace of the thread that calls
    /// [`NodeNetwork::new`].
    pub interfaces: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            softnet_stat: PathBuf::from("/proc/net/softnet_stat"),
            proc_sys_net_core: PathBuf::from("/proc/sys/net/core"),
            interfaces: true,
        }
    }
}

/// The conntrack counters last seen per CPU, and the table's size and limit.
#[derive(Default)]
struct ConntrackCpus {
    previous: Vec<CpuStats>,
    table: Option<(u32, u32)>,
    /// Why the last read failed, for a sample taken outside the agent.
    error: Option<String>,
}

/// A window for rates shorter than this is widened to the sample before.
const MIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// The two latest samples: `/diagnose` compares a new one with the newest that is at
/// least [`MIN_WINDOW`] old, so a scrape just before does not shrink the window to nothing.
#[derive(Default)]
struct History {
    older: Option<Sample>,
    newer: Option<Sample>,
}

struct Softnet {
    /// The last read, per CPU, to turn 32-bit wrapping counters into growing totals.
    previous: Vec<SoftnetCpu>,
    current: Vec<SoftnetCpu>,
    last_error_log: Option<Instant>,
}

/// The node network metrics, registered once and refreshed at each scrape.
pub struct NodeNetwork {
    sources: Sources,
    softnet: Mutex<Softnet>,
    history: Mutex<History>,
    processed: IntCounterVec,
    dropped: IntCounterVec,
    squeezed: IntCounterVec,
    received_rps: IntCounterVec,
    flow_limit: IntCounterVec,
    backlog: IntGaugeVec,
    /// Label-less vectors: a setting that cannot be read has no series, not a 0.
    budget: IntGaugeVec,
    budget_usecs: IntGaugeVec,
    max_backlog: IntGaugeVec,
    conntrack: Mutex<ConntrackCpus>,
    /// found, invalid, insert, insert_failed, drop, early_drop, error, search_restart,
    /// clash_resolve, chaintoolong.
    conntrack_stats: [IntCounterVec; 10],
    /// The interfaces, when their sockets could be opened.
    links: Option<Mutex<Links>>,
}

/// The names of conntrack's per-CPU counters, as `conntrack -S` prints them.
const CONNTRACK_STATS: [&str; 10] = [
    "found",
    "invalid",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "error",
    "search_restart",
    "clash_resolve",
    "chaintoolong",
];

fn stat_values(s: &CpuStats) -> [u32; 10] {
    [
        s.found,
        s.invalid,
        s.insert,
        s.insert_failed,
        s.drop,
        s.early_drop,
        s.error,
        s.search_restart,
        s.clash_resolve,
        s.chain_too_long,
    ]
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are constants and unique: registration cannot fail.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl NodeNetwork {
    /// Registers the metrics on `registry`; with `sources.interfaces`, opens the interface
    /// sockets in the calling thread's network namespace.
    pub fn new(registry: &Registry, sources: Sources) -> Self {
        let links = if sources.interfaces {
            match Links::open(registry) {
                Ok(links) => Some(Mutex::new(links)),
                Err(error) => {
                    tracing::warn!(
                        "cannot follow the network interfaces ({error}): no interface metrics"
                    );
                    None
                }
            }
        } else {
            None
        };
        let per_cpu = |name: &str, help: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &["cpu"]).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &[]).expect("valid metric"),
            )
        };
        Self {
            sources,
            softnet: Mutex::new(Softnet {
                previous: Vec::new(),
                current: Vec::new(),
                last_error_log: None,
            }),
            history: Mutex::default(),
            processed: per_cpu(
                "flowex_softnet_processed_total",
                "Packets the CPU's receive path processed (/proc/net/softnet_stat).",
            ),
            dropped: per_cpu(
                "flowex_softnet_dropped_total",
                "Packets dropped because the CPU's backlog was full (net.core.netdev_max_backlog).",
            ),
            squeezed: per_cpu(
                "flowex_softnet_times_squeezed_total",
                "Receive rounds that ran out of budget (net.core.netdev_budget, netdev_budget_usecs) with packets left.",
            ),
            received_rps: per_cpu(
                "flowex_softnet_received_rps_total",
                "Times the CPU was woken for packets steered to it (RPS).",
            ),
            flow_limit: per_cpu(
                "flowex_softnet_flow_limit_count_total",
                "Packets dropped by the flow limit.",
            ),
            backlog: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowex_softnet_backlog_len",
                        "Packets waiting in the CPU's backlog at the scrape (kernel 5.10 and later).",
                    ),
                    &["cpu"],
                )
                .expect("valid metric"),
            ),
            budget: gauge(
                "flowex_netdev_budget",
                "net.core.netdev_budget: packets one receive round may process.",
            ),
            budget_usecs: gauge(
                "flowex_netdev_budget_usecs",
                "net.core.netdev_budget_usecs: microseconds one receive round may take.",
            ),
            max_backlog: gauge(
                "flowex_netdev_max_backlog",
                "net.core.netdev_max_backlog: packets a CPU's backlog holds before it drops.",
            ),
            conntrack: Mutex::default(),
            conntrack_stats: CONNTRACK_STATS.map(|stat| {
                per_cpu(
                    &format!("flowex_conntrack_stat_{stat}_total"),
                    &format!("conntrack's per-CPU {stat} counter (as conntrack -S prints it)."),
                )
            }),
            links,
        }
    }

    /// Sets how a pod veth's peer address is turned into its pod (namespace and name);
    /// until then, and for addresses it does not know, the pod labels stay empty.
    pub fn set_pod_lookup(
        &self,
        lookup: impl Fn(IpAddr) -> Option<PodName> + Send + Sync + 'static,
    ) {
        if let Some(links) = &self.links {
            links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_pod_lookup(Box::new(lookup));
        }
    }

    /// Updates the conntrack counters from one read of every CPU's (32-bit, wrapping).
    pub fn observe_conntrack(&self, cpus: &[CpuStats]) {
        let mut seen = self
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for now in cpus {
            let before = seen
                .previous
                .iter()
                .find(|p| p.cpu == now.cpu)
                .copied()
                .unwrap_or_default();
            let cpu = now.cpu.to_string();
            for ((counter, before), now) in self
                .conntrack_stats
                .iter()
                .zip(stat_values(&before))
                .zip(stat_values(now))
            {
                counter
                    .with_label_values(&[cpu.as_str()])
                    .inc_by(grew(before, now));
            }
        }
        seen.previous.clear();
        seen.previous.extend_from_slice(cpus);
    }

    /// The conntrack table's size and limit, read with a poll.
    pub fn observe_table(&self, entries: u32, max_entries: u32) {
        let mut conntrack = self
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conntrack.table = Some((entries, max_entries));
        conntrack.error = None;
    }

    /// Records why conntrack could not be read.
    pub fn conntrack_unreadable(&self, reason: String) {
        let mut conntrack = self
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conntrack.table = None;
        conntrack.error = Some(reason);
    }

    /// Reads the sources, updates the metrics, and keeps the sample for [`Self::diagnose`].
    pub fn sample(&self) -> Sample {
        let mut sample = Sample::new();
        let unavailable = sample.unavailable.len();
        sample.limits = self.refresh_into(&mut sample.unavailable);
        if sample.unavailable.len() == unavailable {
            sample.softnet = self
                .softnet
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .previous
                .clone();
        }
        if let Some(links) = &self.links {
            sample.interfaces = links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .samples();
        }
        {
            let conntrack = self
                .conntrack
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((entries, max_entries)) = conntrack.table {
                sample.conntrack = Some(ConntrackSample {
                    entries,
                    max_entries,
                    cpus: conntrack.previous.clone(),
                });
            } else {
                sample.unavailable.push(
                    conntrack
                        .error
                        .clone()
                        .unwrap_or_else(|| "conntrack: not read yet (no poll so far)".into()),
                );
            }
        }
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if history
            .newer
            .as_ref()
            .is_none_or(|newer| sample.at.duration_since(newer.at) >= MIN_WINDOW)
        {
            history.older = history.newer.take();
            history.newer = Some(sample.clone());
        }
        sample
    }

    /// Findings over the window since an earlier sample (a scrape's or an earlier
    /// diagnosis's), or from this sample alone when there is none.
    pub fn diagnose(&self) -> Report {
        let baseline = {
            let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            let now = std::time::Instant::now();
            match (&history.newer, &history.older) {
                (Some(newer), _) if now.duration_since(newer.at) >= MIN_WINDOW => {
                    Some(newer.clone())
                }
                (_, Some(older)) => Some(older.clone()),
                _ => None,
            }
        };
        let now = self.sample();
        diagnose::diagnose(baseline.as_ref(), &now)
    }

    /// Reads the followed interfaces (updating their metrics too) and returns their
    /// receive and transmit drops, for the statistics records.
    pub fn interface_drops(&self) -> Vec<crate::export::statistics::InterfaceDrops> {
        let Some(links) = &self.links else {
            return Vec::new();
        };
        let mut links = links.lock().unwrap_or_else(PoisonError::into_inner);
        links.refresh();
        links
            .samples()
            .into_iter()
            .map(|sample| crate::export::statistics::InterfaceDrops {
                index: sample.index,
                name: sample.name,
                receive_dropped: sample.counters.rx_dropped,
                transmit_dropped: sample.counters.tx_dropped,
            })
            .collect()
    }

    /// Reads the files and the interfaces and updates the metrics. An unreadable file
    /// leaves the metrics as they were and is logged (at most every five minutes).
    pub fn refresh(&self) {
        self.refresh_into(&mut Vec::new());
    }

    fn refresh_into(&self, unavailable: &mut Vec<String>) -> RxLimits {
        if let Some(links) = &self.links {
            links
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .refresh();
        }
        let limits = RxLimits::read(&self.sources.proc_sys_net_core);
        for (gauge, value) in [
            (&self.budget, limits.netdev_budget),
            (&self.budget_usecs, limits.netdev_budget_usecs),
            (&self.max_backlog, limits.netdev_max_backlog),
        ] {
            if let Some(value) = value {
                gauge.with_label_values(&[] as &[&str]).set(value as i64);
            }
        }
        let mut softnet = self.softnet.lock().unwrap_or_else(PoisonError::into_inner);
        let softnet = &mut *softnet;
        let result = std::fs::read_to_string(&self.sources.softnet_stat)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_softnet(&text, &mut softnet.current).map_err(|e| e.to_string()));
        if let Err(error) = result {
            unavailable.push(format!("{}: {error}", self.sources.softnet_stat.display()));
            if softnet
                .last_error_log
                .is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL)
            {
                tracing::warn!(
                    "{}: {error}: softnet metrics not updated",
                    self.sources.softnet_stat.display()
                );
                softnet.last_error_log = Some(Instant::now());
            }
            return limits;
        }
        for now in &softnet.current {
            // A CPU seen for the first time counts from zero (its totals since boot,
            // modulo 2^32).
            let before = softnet
                .previous
                .iter()
                .find(|p| p.cpu == now.cpu)
                .copied()
                .unwrap_or_default();
            let cpu = now.cpu.to_string();
            let labels = [cpu.as_str()];
            for (counter, before, now) in [
                (&self.processed, before.processed, now.processed),
                (&self.dropped, before.dropped, now.dropped),
                (&self.squeezed, before.time_squeeze, now.time_squeeze),
                (&self.received_rps, before.received_rps, now.received_rps),
                (
                    &self.flow_limit,
                    before.flow_limit_count,
                    now.flow_limit_count,
                ),
            ] {
                counter.with_label_values(&labels).inc_by(grew(before, now));
            }
            if let Some(length) = now.backlog_len {
                self.backlog
                    .with_label_values(&labels)
                    .set(i64::from(length));
            }
        }
        std::mem::swap(&mut softnet.previous, &mut softnet.current);
        limits
    }
}
