//! The conntrack source: a poll of the table every `conntrack.pollInterval` (the safety
//! net that sees everything, with final counters of ended TCP connections), and between
//! polls the NEW and DESTROY events (short connections, exact ends), each applied to the
//! store as it arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{
    ConntrackEntry, ConntrackEvents, ConntrackSocket, DumpFilter, EventKind, GET_BATCH, Received,
};
use crate::netlink::{Interrupt, wait_readable};
use crate::store::{ConnectionStore, now_ms};
use crate::telemetry::Metrics;

/// After a wake-up that found conntrack events (and did not leave more queued), the
/// source waits this long before reading again, so that a burst is read up to 64 events per
/// system call instead of one event per wake-up (each wake-up costs two context switches).
/// Records leave on the 100 ms expiry tick anyway, and the default 8 MiB event buffer holds
/// tens of thousands of events: far more than 10 ms of any burst measured here. Without
/// SO_RCVBUFFORCE (a buffer of net.core.rmem_max) the source does not pause.
const EVENT_COALESCE: Duration = Duration::from_millis(10);

/// After a failed read of the event socket, the pause before the next.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Repeated read failures are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The conntrack source: polls the table every `interval` and applies events in between.
pub struct ConntrackSource<'a> {
    pub store: &'a ConnectionStore,
    pub metrics: &'a Metrics,
    /// Zones to track; empty: all.
    pub zones: &'a [u16],
    pub include_loopback: bool,
    /// Time between polls.
    pub interval: Duration,
    /// Per-CPU counters, a buffer reused poll after poll.
    pub cpus: std::cell::RefCell<Vec<super::CpuStats>>,
}

impl ConntrackSource<'_> {
    fn wanted(&self, entry: &ConntrackEntry) -> bool {
        (self.zones.is_empty() || self.zones.contains(&entry.zone))
            && (self.include_loopback
                || !(entry.original.source.is_loopback()
                    || entry.original.destination.is_loopback()))
    }

    fn poll(&self, socket: &mut ConntrackSocket) {
        let first = self.store.generation() == 1;
        let started = Instant::now();
        let generation = self.store.begin_poll();
        let now = now_ms();
        let filters: Vec<DumpFilter> = if self.zones.is_empty() {
            vec![DumpFilter::default()]
        } else {
            self.zones
                .iter()
                .map(|zone| DumpFilter {
                    zone: Some(*zone),
                    ..DumpFilter::default()
                })
                .collect()
        };
        for filter in &filters {
            let result = socket.dump(filter, |entry| {
                if self.wanted(entry) {
                    self.store.update(entry, generation, now)
                }
            });
            if let Err(error) = result {
                tracing::error!("conntrack dump: {error}");
            }
        }
        let took = started.elapsed();
        if first {
            let gone = self.store.finish_resume();
            if gone > 0 {
                tracing::info!("{gone} connection(s) of the state file ended while no agent ran");
            }
        }
        let table = socket.table_stats().ok();
        self.metrics
            .polled(took, table.map(|t| (t.entries, t.max_entries)));
        let mut cpus = self.cpus.borrow_mut();
        if socket.cpu_stats(&mut cpus).is_ok() {
            self.metrics.conntrack_cpu_stats(&cpus);
        }
    }

    /// Polls and reads events until `stopping` is set (and `interrupt` raised).
    pub fn run(
        &self,
        mut socket: ConntrackSocket,
        mut events: Option<ConntrackEvents>,
        stopping: &AtomicBool,
        interrupt: &Interrupt,
    ) {
        if let Some(events) = events.as_mut() {
            events.set_interrupt(interrupt.raw());
        }
        self.poll(&mut socket);
        // Debug builds only: the tests make this thread fail as a bug would, to see the
        // agent report it, flush and exit.
        #[cfg(debug_assertions)]
        if std::env::var_os("FLOWEX_TEST_FAULT").is_some_and(|f| f == "conntrack-source") {
            panic!("injected by FLOWEX_TEST_FAULT");
        }
        let mut next_poll = Instant::now() + self.interval;
        let mut ended = Vec::new();
        let mut unsure = Vec::new();
        let mut wanted = Vec::with_capacity(GET_BATCH);
        let mut fresh = ConntrackEntry::default();
        let mut read_failures = 0u64;
        let mut last_failure_log = None;
        while !stopping.load(Ordering::Acquire) {
            if Instant::now() >= next_poll {
                self.poll(&mut socket);
                next_poll = Instant::now() + self.interval;
            }
            // Nothing to do before the next poll but events: block until then (an idle
            // agent wakes once per poll), or until the interrupt says stop.
            let wait = next_poll.saturating_duration_since(Instant::now());
            let Some(events) = events.as_mut() else {
                if let Err(error) = wait_readable(interrupt.raw(), None, Some(wait)) {
                    tracing::error!("waiting for the next poll: {error}");
                    std::thread::sleep(wait.min(Duration::from_millis(100)));
                }
                continue;
            };
            ended.clear();
            unsure.clear();
            let mut received = 0;
            let mut coalesce = false;
            let result = events.receive(Some(wait), |kind, entry| {
                received += 1;
                if !self.wanted(entry) {
                    return;
                }
                // Read per event (vDSO clock): the wait before it may have been long.
                let now = now_ms();
                match kind {
                    EventKind::Destroy => self.store.end(entry, now),
                    EventKind::New => {
                        if !self.store.create_unless_stale(entry, now) {
                            unsure.push(*entry);
                        }
                    }
                    EventKind::Update => {
                        // UPDATE carries no counters: read the final ones of an ended TCP
                        // connection at once instead of waiting for the kernel's reaping.
                        if matches!(entry.tcp_state, Some(7) | Some(8)) {
                            ended.push(*entry);
                        } else {
                            self.store.update(entry, 0, now);
                        }
                    }
                }
            });
            self.metrics.events_read(received);
            let now = now_ms();
            match result {
                Ok(Received::Lost) => {
                    self.metrics.events_lost_and_resynced();
                    // Empty the queue first: until it is, the kernel drops new events
                    // without saying so, and the dump below would miss the ones of its
                    // own time. What is discarded is older than the dump, which has it.
                    if let Err(error) = events.discard_queued() {
                        tracing::error!("conntrack events: {error}");
                    }
                    tracing::warn!(
                        "conntrack events were lost (ENOBUFS, or an event that did not fit or parse): resyncing with a dump",
                    );
                    self.poll(&mut socket);
                    next_poll = Instant::now() + self.interval;
                }
                // More queued: read on at once. Without a forced (large) buffer, a pause
                // could overflow it.
                Ok(Received::Messages(_)) => {
                    coalesce = !events.more_queued() && events.buffer_forced()
                }
                Ok(Received::Idle) => {}
                Err(error) => {
                    // A failure that repeats would spin and flood the log: pause, and log
                    // at most once a minute with the count.
                    read_failures += 1;
                    if last_failure_log.is_none_or(|at: Instant| at.elapsed() >= ERROR_LOG_INTERVAL)
                    {
                        tracing::error!(
                            "conntrack events: {error} ({read_failures} failed read(s) since the last report)"
                        );
                        read_failures = 0;
                        last_failure_log = Some(Instant::now());
                    }
                    std::thread::sleep(ERROR_PAUSE);
                }
            }
            // One datagram of requests per batch of ended connections.
            for batch in ended.chunks(GET_BATCH) {
                wanted.clear();
                wanted.extend(batch.iter().map(|entry| (entry.original, entry.zone)));
                let result = socket.get_many(&wanted, &mut fresh, |index, found| {
                    let Some(fresh) = found else {
                        // Already gone: its DESTROY event brings the final counters.
                        return;
                    };
                    // A new connection may have taken the tuple already (its id may even
                    // be the old one's): then the old one's DESTROY brings its final
                    // counters, the new one's NEW event the new one.
                    if fresh.id == batch[index].id && matches!(fresh.tcp_state, Some(7 | 8)) {
                        self.store.end(fresh, now)
                    }
                });
                if let Err(error) = result {
                    tracing::error!("conntrack get: {error}");
                }
            }
            // NEW events that may be older than the last dump: the kernel's entry, with its
            // start time, tells a new connection of the tuple from the one already seen.
            for batch in unsure.chunks(GET_BATCH) {
                wanted.clear();
                wanted.extend(batch.iter().map(|entry| (entry.original, entry.zone)));
                let result = socket.get_many(&wanted, &mut fresh, |_, found| {
                    // Gone: a newer connection's DESTROY brings it whole, with its start.
                    if let Some(fresh) = found {
                        self.store.update(fresh, 0, now)
                    }
                });
                if let Err(error) = result {
                    tracing::error!("conntrack get: {error}");
                }
            }
            if coalesce {
                std::thread::sleep(EVENT_COALESCE);
            }
        }
    }
}
