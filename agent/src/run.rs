//! `flowex run`: the sources feed the store, the expiry task turns due connections into
//! records, the exporting process sends them; on shutdown every tracked connection is
//! exported once more (flowEndReason 4) and the queues are drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use flowex_ipfix::Registry;

use crate::config::{Config, parse_cidr};
use crate::conntrack::{
    ConntrackEvents, ConntrackSocket, DumpFilter, EventGroups, EventKind, Received, check_settings,
    default_root,
};
use crate::deny::{DEFAULT_COPY_RANGE, DenyListener};
use crate::export::{BatchBuilder, CollectorTarget, ExportingProcess};
use crate::records::{self, PodNetworks};
use crate::store::{ConnectionStore, Timeouts};

/// How often due connections are looked for.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// How long the shutdown flush may take.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn log(level: &str, message: impl std::fmt::Display) {
    eprintln!("flowex: {level}: {message}");
}

/// Runs the agent until `stop` resolves.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    for check in check_settings(&default_root(), config.conntrack.set_sysctls) {
        if check.ok() {
            if check.changed {
                log("info", check.describe());
            }
        } else {
            log("warn", check.describe());
        }
    }
    let registry = Registry::new(config.export.enterprise_number)?;
    let templates = Arc::new(records::templates(&registry)?);
    let domain = config.observation_domain_id();
    let targets: Vec<CollectorTarget> = config
        .export
        .collectors
        .iter()
        .map(CollectorTarget::from)
        .collect();
    let process = ExportingProcess::start(&targets, templates, domain);
    let store = Arc::new(ConnectionStore::new(Timeouts {
        active_ms: config.export.active_timeout.0.as_millis() as u64,
        idle_ms: config.export.idle_timeout.0.as_millis() as u64,
        deny_idle_ms: config.deny.idle_timeout.0.as_millis() as u64,
    }));
    let networks = PodNetworks::new(
        config
            .export
            .pod_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect(),
    );
    let stopping = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<JoinHandle<()>> = Vec::new();

    // Open every kernel source before saying we run, so errors show at once.
    let socket = ConntrackSocket::open().context("opening ctnetlink")?;
    let events = if config.conntrack.events {
        let events =
            ConntrackEvents::subscribe(EventGroups::ALL, config.conntrack.event_buffer_bytes)
                .context("subscribing to conntrack events")?;
        if !events.buffer_forced() {
            log(
                "warn",
                format_args!(
                    "SO_RCVBUFFORCE refused: the event buffer is {} bytes (net.core.rmem_max); bursts may be lost and resynced",
                    events.receive_buffer()
                ),
            );
        }
        Some(events)
    } else {
        None
    };
    let deny = if config.deny.enabled {
        Some(
            DenyListener::bind(config.deny.nflog_group, DEFAULT_COPY_RANGE)
                .context("binding the NFLOG group for deny records")?,
        )
    } else {
        None
    };
    {
        let store = Arc::clone(&store);
        let stopping = Arc::clone(&stopping);
        let zones = config.conntrack.zones.clone();
        let loopback = config.conntrack.include_loopback;
        let interval = config.conntrack.poll_interval.0;
        threads.push(std::thread::spawn(move || {
            conntrack_source(
                socket, events, &store, &zones, loopback, interval, &stopping,
            )
        }));
    }
    if let Some(mut listener) = deny {
        let store = Arc::clone(&store);
        let stopping = Arc::clone(&stopping);
        threads.push(std::thread::spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                if let Err(error) = listener.receive(Some(Duration::from_millis(100)), |event| {
                    store.deny(event, now_ms())
                }) {
                    log("error", format_args!("deny source: {error}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }));
    }
    log(
        "info",
        format_args!(
            "running: node {:?}, observation domain {domain}, {} collector(s)",
            config.resolved_node_name(),
            targets.len()
        ),
    );

    let mut builder = BatchBuilder::default();
    let mut ticker = tokio::time::interval(EXPIRY_TICK);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                store.expire(now_ms(), true, |expired| {
                    let prefix = store.prefix(expired.connection.deny_prefix);
                    let record = records::build(&expired, &prefix, &networks);
                    builder.push(record.flow.template_id(), &record);
                });
                process.export(builder.finish());
            }
        }
    }

    // Shutdown: stop the sources, then export everything once more.
    stopping.store(true, Ordering::Release);
    for thread in threads {
        let _ = thread.join();
    }
    let now = now_ms();
    store.expire(now, true, |expired| {
        let prefix = store.prefix(expired.connection.deny_prefix);
        let record = records::build(&expired, &prefix, &networks);
        builder.push(record.flow.template_id(), &record);
    });
    let flushed = store.drain(now, |expired| {
        let prefix = store.prefix(expired.connection.deny_prefix);
        let record = records::build(&expired, &prefix, &networks);
        builder.push(record.flow.template_id(), &record);
    });
    process.export(builder.finish());
    process.shutdown(SHUTDOWN_DEADLINE).await;
    log(
        "info",
        format_args!("stopped: {flushed} connection(s) exported with flowEndReason 4"),
    );
    Ok(())
}

/// Polls the table every `interval` and applies events in between.
fn conntrack_source(
    mut socket: ConntrackSocket,
    mut events: Option<ConntrackEvents>,
    store: &ConnectionStore,
    zones: &[u16],
    include_loopback: bool,
    interval: Duration,
    stopping: &AtomicBool,
) {
    let wanted = |entry: &crate::conntrack::ConntrackEntry| {
        (zones.is_empty() || zones.contains(&entry.zone))
            && (include_loopback
                || !(entry.original.source.is_loopback()
                    || entry.original.destination.is_loopback()))
    };
    let poll = |socket: &mut ConntrackSocket| {
        let generation = store.begin_poll();
        let now = now_ms();
        let filters: Vec<DumpFilter> = if zones.is_empty() {
            vec![DumpFilter::default()]
        } else {
            zones
                .iter()
                .map(|zone| DumpFilter {
                    zone: Some(*zone),
                    ..DumpFilter::default()
                })
                .collect()
        };
        for filter in &filters {
            if let Err(error) = socket.dump(filter, |entry| {
                if wanted(entry) {
                    store.update(entry, generation, now)
                }
            }) {
                log("error", format_args!("conntrack dump: {error}"));
            }
        }
    };
    poll(&mut socket);
    let mut next_poll = Instant::now() + interval;
    let mut ended = Vec::new();
    while !stopping.load(Ordering::Acquire) {
        if Instant::now() >= next_poll {
            poll(&mut socket);
            next_poll = Instant::now() + interval;
        }
        let Some(events) = events.as_mut() else {
            std::thread::sleep(
                next_poll
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
            continue;
        };
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        ended.clear();
        let now = now_ms();
        match events.receive(Some(wait), |kind, entry| {
            if !wanted(entry) {
                return;
            }
            match kind {
                EventKind::Destroy => store.end(entry, now),
                EventKind::New => store.update(entry, 0, now),
                EventKind::Update => {
                    // UPDATE carries no counters: read the final ones of an ended TCP
                    // connection at once instead of waiting for the kernel's reaping.
                    if matches!(entry.tcp_state, Some(7) | Some(8)) {
                        ended.push(*entry);
                    } else {
                        store.update(entry, 0, now);
                    }
                }
            }
        }) {
            Ok(Received::Lost) => {
                log(
                    "warn",
                    "conntrack events were lost (ENOBUFS): resyncing with a dump",
                );
                poll(&mut socket);
                next_poll = Instant::now() + interval;
            }
            Ok(_) => {}
            Err(error) => log("error", format_args!("conntrack events: {error}")),
        }
        for entry in &ended {
            let mut fresh = *entry;
            match socket.get(&entry.original, entry.zone, &mut fresh) {
                Ok(true) => store.end(&fresh, now),
                // Already gone: its DESTROY event brings the final counters.
                Ok(false) => {}
                Err(error) => log("error", format_args!("conntrack get: {error}")),
            }
        }
    }
}
