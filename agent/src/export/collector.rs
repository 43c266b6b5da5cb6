//! One collector: a bounded queue of shared batches, an encoder that packs them into
//! messages (its own sequence numbers), and a UDP or TCP transport with reconnects.
//!
//! Every record handed to a collector is accounted for exactly once: it is *exported*
//! when the transport confirms it, or *dropped* under a [`DropReason`]; until then it is
//! *queued* (waiting, being packed, or sent and not yet confirmed). So at any moment
//! `exported + dropped + queued = records offered`.
//!
//! What "confirmed" means follows what each transport can know:
//! - TCP: the collector's kernel acknowledged the message's bytes (`SIOCOUTQ`: bytes
//!   written and not yet acknowledged). When the connection fails, the messages it had
//!   not acknowledged are sent again on the next connection: the collector never read
//!   them, so this neither loses nor duplicates.
//! - UDP: no refusal came back. A connected UDP socket learns from ICMP port unreachable
//!   that the collector's port is closed (`ECONNREFUSED`, read with `SO_ERROR` or from
//!   the next send). Messages sent since the last clean check are then counted as dropped
//!   (`collector_refused`): some may have arrived before the collector went away, but
//!   none is counted twice. The collector is then probed with templates alone until it
//!   answers without a refusal, so a restarted collector gets templates before data.
//!   A loss that produces no ICMP (a filtered or rate-limited path) cannot be seen by any
//!   UDP exporter; the short default template refresh bounds what such a collector misses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flowex_ipfix::{Encoder, Template};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::batch::EncodedBatch;
use super::statistics::Statistics;
use crate::config::{CollectorConfig, Transport};
use crate::filter::FilterReason;

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct CollectorTarget {
    pub name: String,
    /// HOST:PORT, resolved at each (re)connect.
    pub address: String,
    pub transport: Transport,
    /// `transport: tls` and `grpc`: the files and names, read at each connection.
    pub tls: Option<crate::config::TlsConfig>,
    /// `tls.antrea`: the CA and client pair as the API watchers last saw them.
    pub api_certificates: Option<Arc<super::certificates::ApiCertificates>>,
    /// Which records go to this collector (None: all).
    pub filter: Option<Arc<crate::filter::RecordFilter>>,
    /// Whether the collector gets options records (statistics and type records): IPFIX
    /// collectors do, gRPC and Antrea's Flow Aggregator do not.
    pub options: bool,
    pub max_message_size: usize,
    pub template_refresh: Duration,
    /// Records that may wait in the queue; more are dropped and counted.
    pub queue_capacity: usize,
    /// Longest wait between two connection attempts (the backoff's cap).
    pub max_reconnect_delay: Duration,
    /// How often a continuing failure or drop is summarised in the log.
    pub log_interval: Duration,
}

impl From<&CollectorConfig> for CollectorTarget {
    fn from(c: &CollectorConfig) -> Self {
        Self {
            name: c.name.clone(),
            address: c.address.clone(),
            transport: c.transport,
            tls: c.tls.clone(),
            api_certificates: c.tls.as_ref().filter(|tls| tls.antrea).map(|tls| {
                Arc::new(super::certificates::ApiCertificates::new(
                    &tls.ca_config_map,
                    &tls.client_secret,
                ))
            }),
            // Checked when the configuration was loaded.
            filter: c
                .filter
                .as_ref()
                .and_then(|f| crate::filter::RecordFilter::parse(f).ok())
                .map(Arc::new),
            options: c.aggregator.is_none() && c.transport != Transport::Grpc,
            max_message_size: c.max_message_size,
            template_refresh: c.template_refresh.0,
            queue_capacity: c.queue_capacity,
            max_reconnect_delay: c.max_reconnect_delay.0,
            log_interval: DEFAULT_LOG_INTERVAL,
        }
    }
}

/// Default interval of the failure and drop summaries in the log.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Why a record did not reach a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The collector's queue was full (the collector is down or slower than the flows).
    QueueFull,
    /// The UDP collector's port refused what was sent (ICMP port unreachable).
    CollectorRefused,
    /// A UDP send failed for another reason.
    SendFailed,
    /// The record is larger than the collector's largest message.
    TooLarge,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
}

impl DropReason {
    /// Every reason, in the order of [`CollectorStats::dropped`].
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::CollectorRefused,
        DropReason::SendFailed,
        DropReason::TooLarge,
        DropReason::Shutdown,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::CollectorRefused => "collector_refused",
            DropReason::SendFailed => "send_failed",
            DropReason::TooLarge => "too_large",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Counters of one collector, readable at any time.
#[derive(Debug, Default)]
pub struct CollectorStats {
    pub records_exported: AtomicU64,
    dropped: [AtomicU64; 5],
    /// Records this collector's filter left out, by [`FilterReason`].
    filtered: [AtomicU64; 5],
    /// Records sent again on a new connection after the old one failed unacknowledged.
    pub records_resent: AtomicU64,
    pub send_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub messages: AtomicU64,
    /// Records written to the transport (not yet confirmed; a resend counts again).
    pub records_sent: AtomicU64,
    pub bytes: AtomicU64,
    /// Records accepted and not yet exported or dropped.
    pub queued: AtomicU64,
    pub connected: AtomicBool,
    /// When the first and the last record were dropped.
    pub drop_window: super::statistics::LossWindow,
    /// Options records (statistics and type records) sent.
    pub options_records: AtomicU64,
}

impl CollectorStats {
    /// Records dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Records dropped for any reason.
    pub fn records_dropped(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    /// Records the filter left out for `reason`.
    pub fn filtered(&self, reason: FilterReason) -> u64 {
        self.filtered[reason as usize].load(Ordering::Relaxed)
    }

    /// Records the filter left out, for any reason.
    pub fn records_filtered(&self) -> u64 {
        FilterReason::ALL.iter().map(|r| self.filtered(*r)).sum()
    }

    /// Queued records the transport confirmed.
    pub(super) fn settle_exported(&self, records: u64) {
        self.records_exported.fetch_add(records, Ordering::Relaxed);
        self.queued.fetch_sub(records, Ordering::AcqRel);
    }

    /// Queued records that will never be sent.
    pub(super) fn settle_dropped(&self, reason: DropReason, records: u64) {
        self.count_dropped(reason, records);
        self.queued.fetch_sub(records, Ordering::AcqRel);
    }

    /// Records refused before they were queued.
    pub(super) fn reject(&self, reason: DropReason, records: u64) {
        self.count_dropped(reason, records);
    }

    fn count_dropped(&self, reason: DropReason, records: u64) {
        if records > 0 {
            self.dropped[reason as usize].fetch_add(records, Ordering::Relaxed);
            self.drop_window.note(crate::store::now_ms());
        }
    }
}

/// Part of a shared batch: records `start..end`.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    pub(super) batch: Arc<EncodedBatch>,
    /// The batch's records this collector's filter selected (None: all of them); `start`
    /// and `end` are positions in this list then.
    pub(super) selected: Option<Arc<[u32]>>,
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Chunk {
    /// The record at `position` (from `start` to `end`).
    pub(super) fn record(&self, position: usize) -> Option<(u16, &[u8])> {
        let index = match &self.selected {
            Some(selected) => *selected.get(position)? as usize,
            None => position,
        };
        self.batch.record(index)
    }

    pub(super) fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    pub(super) fn part(&self, start: usize, end: usize) -> Chunk {
        Chunk {
            batch: Arc::clone(&self.batch),
            selected: self.selected.clone(),
            start,
            end,
        }
    }
}

/// What was logged of a collector's drops.
#[derive(Debug, Default)]
struct DropLog {
    reported: [u64; 5],
    at: Option<Instant>,
}

/// A running collector task.
pub struct CollectorHandle {
    pub name: String,
    pub stats: Arc<CollectorStats>,
    /// None once the process shuts down.
    queue: Mutex<Option<mpsc::UnboundedSender<Chunk>>>,
    capacity: u64,
    log_interval: Duration,
    drop_log: Mutex<DropLog>,
    /// Taken by the shutdown.
    task: Mutex<Option<JoinHandle<()>>>,
    /// Progress as expiry last saw it: the exported count, and when it last moved (or
    /// the queue was empty).
    progress: Mutex<(u64, Instant)>,
    /// Which records go to this collector (None: all).
    filter: Option<Arc<crate::filter::RecordFilter>>,
}

/// A connected collector whose queue has not moved for this long no longer paces expiry:
/// it is stuck (a collector that accepts and never reads), and waiting for it would stop
/// the export to every other collector. Its queue fills and drops, counted and logged.
const STALL_AFTER: Duration = Duration::from_secs(5);

impl CollectorHandle {
    /// Records the queue can still take.
    fn room(&self) -> u64 {
        self.capacity
            .saturating_sub(self.stats.queued.load(Ordering::Acquire))
    }

    /// Connected, and exporting (or with nothing to export) within [`STALL_AFTER`].
    fn paces(&self, now: Instant) -> bool {
        if !self.stats.connected.load(Ordering::Acquire) {
            return false;
        }
        let exported = self.stats.records_exported.load(Ordering::Acquire);
        let idle = self.stats.queued.load(Ordering::Acquire) == 0;
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        if idle || exported != progress.0 {
            *progress = (exported, now);
        }
        now.duration_since(progress.1) < STALL_AFTER
    }

    /// Logs drops since the last report: the first at once, then at most one summary per
    /// log interval.
    fn report_drops(&self, now: Instant) {
        let mut log = self.drop_log.lock().unwrap_or_else(PoisonError::into_inner);
        let current = DropReason::ALL.map(|r| self.stats.dropped(r));
        if current == log.reported || log.at.is_some_and(|at| now - at < self.log_interval) {
            return;
        }
        let mut parts = Vec::new();
        let mut total = 0;
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let n = current[i] - log.reported[i];
            if n > 0 {
                parts.push(format!("{}: {n}", reason.label()));
                total += n;
            }
        }
        let since = match log.at {
            Some(at) => format!("in the last {:.0} s", (now - at).as_secs_f64()),
            None => "so far".to_owned(),
        };
        tracing::warn!(
            "collector {}: {total} record(s) dropped {since} ({}); {} dropped in all",
            self.name,
            parts.join(", "),
            current.iter().sum::<u64>()
        );
        log.reported = current;
        log.at = Some(now);
    }
}

/// Why the exporting process cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("collector {collector}: {source}")]
    Encoder {
        collector: String,
        source: flowex_ipfix::EncodeError,
    },
    #[error(
        "collector {collector}: maxMessageSize {size} cannot carry template {template} and one record: it needs at least {needed} bytes"
    )]
    MessageTooSmall {
        collector: String,
        size: usize,
        template: u16,
        needed: usize,
    },
}

/// The smallest `maxMessageSize` that carries each of `templates` with one record.
pub fn smallest_message(templates: &[Template]) -> Option<(u16, usize)> {
    templates
        .iter()
        .map(|t| (t.id(), t.smallest_message()))
        .max_by_key(|&(_, size)| size)
}

/// Refuses a target whose messages cannot carry a template and one record, or whose
/// encoder cannot be built.
pub fn check_target(target: &CollectorTarget, templates: &[Template]) -> Result<(), StartError> {
    if let Some((template, needed)) = smallest_message(templates)
        && target.max_message_size < needed
    {
        return Err(StartError::MessageTooSmall {
            collector: target.name.clone(),
            size: target.max_message_size,
            template,
            needed,
        });
    }
    Encoder::new(0, target.max_message_size)
        .map(drop)
        .map_err(|source| StartError::Encoder {
            collector: target.name.clone(),
            source,
        })
}

/// All collectors; records go to each of them.
pub struct ExportingProcess {
    collectors: Vec<CollectorHandle>,
    produced: AtomicU64,
    statistics: Option<Arc<Statistics>>,
}

impl ExportingProcess {
    /// Starts one task per target (inside a tokio runtime), after checking every target
    /// ([`check_target`]).
    pub fn start(
        targets: &[CollectorTarget],
        templates: Arc<Vec<Template>>,
        domain: u32,
    ) -> Result<Self, StartError> {
        Self::start_with_statistics(targets, templates, domain, None)
    }

    /// [`ExportingProcess::start`], with options records (statistics, type records) for
    /// the targets that take them ([`CollectorTarget::options`]).
    pub fn start_with_statistics(
        targets: &[CollectorTarget],
        templates: Arc<Vec<Template>>,
        domain: u32,
        statistics: Option<Arc<Statistics>>,
    ) -> Result<Self, StartError> {
        let mut encoders = Vec::with_capacity(targets.len());
        for target in targets {
            check_target(target, &templates)?;
            encoders.push(
                Encoder::new(domain, target.max_message_size).map_err(|source| {
                    StartError::Encoder {
                        collector: target.name.clone(),
                        source,
                    }
                })?,
            );
        }
        let collectors = targets
            .iter()
            .zip(encoders)
            .enumerate()
            .map(|(index, (target, encoder))| {
                let (queue, receiver) = mpsc::unbounded_channel();
                let stats = Arc::new(CollectorStats::default());
                let task = if target.transport == Transport::Grpc {
                    tokio::spawn(super::grpc::run(
                        target.clone(),
                        Arc::clone(&templates),
                        domain,
                        receiver,
                        Arc::clone(&stats),
                    ))
                } else {
                    let options = statistics
                        .as_ref()
                        .filter(|_| target.options)
                        .map(|s| (Arc::clone(s), index as u32 + 1));
                    tokio::spawn(super::transport::run(
                        target.clone(),
                        Arc::clone(&templates),
                        encoder,
                        receiver,
                        Arc::clone(&stats),
                        options,
                    ))
                };
                CollectorHandle {
                    name: target.name.clone(),
                    stats,
                    queue: Mutex::new(Some(queue)),
                    capacity: target.queue_capacity as u64,
                    log_interval: target.log_interval,
                    drop_log: Mutex::default(),
                    task: Mutex::new(Some(task)),
                    progress: Mutex::new((0, Instant::now())),
                    filter: target.filter.clone(),
                }
            })
            .collect();
        Ok(Self {
            collectors,
            produced: AtomicU64::new(0),
            statistics,
        })
    }

    /// A collector task that ended before shutdown (it panicked: the task runs until its
    /// queue closes), named for the health report.
    pub fn failure(&self) -> Option<String> {
        self.collectors
            .iter()
            .find(|c| {
                c.task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .is_some_and(JoinHandle::is_finished)
            })
            .map(|c| format!("collector {}: its task ended unexpectedly", c.name))
    }

    /// The collectors and their counters.
    pub fn collectors(&self) -> &[CollectorHandle] {
        &self.collectors
    }

    /// Records handed to [`ExportingProcess::export`] so far: for every collector,
    /// exported + dropped + filtered + queued equals this.
    pub fn records_produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// How many records the next batch may hold without a connected collector dropping
    /// any: the least room among the queues of the connected collectors that are making
    /// progress, so the slowest of them paces expiry. Expiry asks this first, so a large
    /// table or burst waits in the store (its counters keep adding up) instead of
    /// overflowing a queue that is draining. A collector that is down, or connected but
    /// stuck (no progress for [`STALL_AFTER`]), does not hold the others back: its queue
    /// fills, and what does not fit is dropped and counted. When no collector paces,
    /// waiting would only grow the store: the batch may be of any size.
    pub fn room(&self) -> usize {
        let now = Instant::now();
        let pacing = self.collectors.iter().filter(|c| c.paces(now));
        match pacing.map(CollectorHandle::room).min() {
            Some(room) => room.min(usize::MAX as u64) as usize,
            None => usize::MAX,
        }
    }

    /// Queues `batch` for every collector; a collector whose queue cannot take all of it
    /// takes what fits and counts the rest as dropped (`queue_full`). Never waits.
    pub fn export(&self, batch: EncodedBatch) {
        if batch.is_empty() {
            return;
        }
        let records = batch.len();
        self.produced.fetch_add(records as u64, Ordering::Relaxed);
        if let Some(statistics) = &self.statistics {
            for index in 0..records {
                if let Some(summary) = batch.summary(index)
                    && summary.ended
                {
                    statistics.flow_ended(summary.denied);
                }
            }
        }
        let batch = Arc::new(batch);
        for collector in &self.collectors {
            let stats = &collector.stats;
            let selected = collector.filter.as_ref().map(|filter| {
                let mut selected = Vec::with_capacity(records);
                for index in 0..records {
                    match batch.summary(index).map(|s| filter.check(s)) {
                        Some(Err(reason)) => {
                            stats.filtered[reason as usize].fetch_add(1, Ordering::Relaxed);
                        }
                        _ => selected.push(index as u32),
                    }
                }
                Arc::<[u32]>::from(selected)
            });
            let wanted = selected.as_ref().map_or(records, |s| s.len());
            let take = collector.room().min(wanted as u64) as usize;
            if take > 0 {
                stats.queued.fetch_add(take as u64, Ordering::AcqRel);
                let chunk = Chunk {
                    batch: Arc::clone(&batch),
                    selected,
                    start: 0,
                    end: take,
                };
                let queue = collector
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if queue
                    .as_ref()
                    .is_none_or(|queue| queue.send(chunk).is_err())
                {
                    // The task has ended: nothing will send these.
                    stats.settle_dropped(DropReason::Shutdown, take as u64);
                }
            }
            if take < wanted {
                stats.reject(DropReason::QueueFull, (wanted - take) as u64);
            }
        }
    }

    /// Logs each collector's drops, rate-limited (see [`CollectorTarget::log_interval`]).
    pub fn report_drops(&self) {
        let now = Instant::now();
        for collector in &self.collectors {
            collector.report_drops(now);
        }
    }

    /// Closes the queues, lets each collector send what it holds for at most `deadline`,
    /// then stops the rest; what was not confirmed by then is counted as dropped
    /// (`shutdown`) and logged. Returns the records dropped that way.
    /// Later calls find nothing to do; batches exported after it are dropped (`shutdown`).
    pub async fn shutdown(&self, deadline: Duration) -> u64 {
        let until = tokio::time::Instant::now() + deadline;
        let mut dropped = 0;
        for collector in &self.collectors {
            // Closing the queue ends the task once it has sent what it holds.
            drop(
                collector
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
            let task = collector
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(mut task) = task else {
                continue;
            };
            // Nothing to send and no link: waiting would only wait for the backoff.
            let idle = collector.stats.queued.load(Ordering::Acquire) == 0
                && !collector.stats.connected.load(Ordering::Acquire);
            if idle || tokio::time::timeout_at(until, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
            let left = collector.stats.queued.swap(0, Ordering::AcqRel);
            if left > 0 {
                collector.stats.reject(DropReason::Shutdown, left);
                tracing::warn!(
                    "collector {}: {left} record(s) not delivered by the shutdown deadline ({deadline:?}): dropped",
                    collector.name
                );
                dropped += left;
            }
            collector.report_drops(Instant::now() + collector.log_interval);
            let stats = &collector.stats;
            let by_reason: Vec<String> = DropReason::ALL
                .iter()
                .filter(|&&r| stats.dropped(r) > 0)
                .map(|&r| format!("{}: {}", r.label(), stats.dropped(r)))
                .collect();
            let filtered = stats.records_filtered();
            tracing::info!(
                "collector {}: {} of {} record(s) exported, {} dropped{}, {} resent{}",
                collector.name,
                stats.records_exported.load(Ordering::Acquire),
                self.produced.load(Ordering::Acquire),
                stats.records_dropped(),
                if by_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_reason.join(", "))
                },
                stats.records_resent.load(Ordering::Acquire),
                if filtered > 0 {
                    format!(", {filtered} left out by its filter")
                } else {
                    String::new()
                }
            );
        }
        dropped
    }
}
