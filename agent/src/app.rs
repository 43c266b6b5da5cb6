//! `flowex run`: the sources feed the store, the expiry task turns due connections into
//! records, the exporting process sends them; on shutdown every tracked connection is
//! exported once more (flowEndReason 4) and the queues are drained.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use flowex_ipfix::Registry;

use crate::config::Settings;
use crate::enrich::attribution::Attribution;
use crate::enrich::metadata::{self, Metadata};
use crate::export::statistics::Statistics;
use crate::export::{BatchBuilder, CollectorTarget, ExportingProcess, check_target};
use crate::netlink::Interrupt;
use crate::records::RecordBuilder;
use crate::records::{self, PodNetworks};
use crate::sources::conntrack::ConntrackSource;
use crate::sources::conntrack::{
    ConntrackEvents, ConntrackSocket, EventGroups, check_settings, default_root,
};
use crate::sources::deny::{DEFAULT_COPY_RANGE, DenyListener};
use crate::state;
use crate::store::{ConnectionStore, Timeouts, now_ms};
use crate::telemetry::{Health, Metrics};

/// How often due connections are looked for.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// The pause before the next expiry round when the last one was cut short by the
/// collectors' room (a backlog is waiting in the store).
const BACKLOG_TICK: Duration = Duration::from_millis(5);
/// How often the probe's counters are read into the metrics.
const PROBE_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends logs to stderr at `level`, as text or one JSON object per line.
pub fn init_logging(config: &crate::config::LoggingConfig) {
    use crate::config::{Level, LogFormat};
    let level = match config.level {
        Level::Error => tracing::Level::ERROR,
        Level::Warn => tracing::Level::WARN,
        Level::Info => tracing::Level::INFO,
        Level::Debug => tracing::Level::DEBUG,
        Level::Trace => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs the agent on its own runtime until SIGTERM, SIGHUP, SIGINT or `duration` (when
/// given), then flushes and returns: what `flowex run` does after reading its config.
pub fn run_blocking(settings: Settings, duration: Option<Duration>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // SIGHUP stops the agent like SIGTERM, with the shutdown flush and the state file:
        // a reload would have to restart every source and collector anyway, and a process
        // manager (or the DaemonSet) starts a new agent that resumes from the state file.
        let stop = async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            let sleep = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = hangup.recv() => tracing::info!("SIGHUP: stopping (flowex does not reload its configuration; restart it instead)"),
                _ = sleep => {}
            }
        };
        run(settings, stop).await
    })
}

/// What `run` refuses beyond the configuration's own checks, for `check-config`: a
/// collector whose messages cannot carry flowex's templates and one record.
pub fn check(settings: &Settings) -> Result<()> {
    let config = &settings.config;
    let registry = Registry::new(config.export.enterprise_number)?;
    let templates = records::templates_with(&registry, kubernetes_elements(config))?;
    for collector in &config.export.collectors {
        check_target(&CollectorTarget::from(collector), &templates)?;
    }
    for warning in warnings(settings) {
        eprintln!("flowex: warning: {warning}");
    }
    Ok(())
}

/// The settings' warnings, and TLS files that cannot be used now (not an error: the agent
/// reads them at each connection and retries until they can be).
fn warnings(settings: &Settings) -> Vec<String> {
    let mut all = settings.warnings.clone();
    for collector in &settings.config.export.collectors {
        if settings.config.export.pod_labels && collector.transport == crate::config::Transport::Udp
        {
            all.push(format!(
                "collector {:?}: export.podLabels over UDP: a record whose pods' labels do not fit in maxMessageSize ({} bytes) is dropped whole (too_large); TCP or TLS carry up to 65535",
                collector.name, collector.max_message_size
            ));
        }
        if let Some(tls) = &collector.tls
            && !tls.antrea
            && let Err(error) = crate::export::tls::client_config(tls)
        {
            all.push(format!(
                "collector {:?}: {error}: the agent would retry until it can be read",
                collector.name
            ));
        }
    }
    all
}

/// Runs the agent until `stop` resolves.
pub async fn run(settings: Settings, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let config = &settings.config;
    for check in check_settings(&default_root(), config.conntrack.set_sysctls) {
        if check.ok() {
            if check.changed {
                tracing::info!("{}", check.describe());
            }
        } else {
            tracing::warn!("{}", check.describe());
        }
    }
    for warning in warnings(&settings) {
        tracing::warn!("{warning}");
    }
    let registry = Registry::new(config.export.enterprise_number)?;
    let templates = Arc::new(records::templates_with(
        &registry,
        kubernetes_elements(config),
    )?);
    let domain = settings.observation_domain_id;
    let targets: Vec<CollectorTarget> = config
        .export
        .collectors
        .iter()
        .map(|c| CollectorTarget {
            log_interval: config.logging.summary_interval.0,
            ..CollectorTarget::from(c)
        })
        .collect();
    let statistics = &config.export.statistics;
    let statistics = Arc::new(Statistics::new(
        &registry,
        (!statistics.interval.0.is_zero()).then_some(statistics.interval.0),
        statistics.interfaces,
        config.export.type_records,
    )?);
    let process = Arc::new(ExportingProcess::start_with_statistics(
        &targets,
        templates,
        domain,
        Some(Arc::clone(&statistics)),
    )?);
    let metrics = Arc::new(Metrics::new());
    statistics
        .set_source(Arc::clone(&metrics) as Arc<dyn crate::export::statistics::StatisticsSource>);
    let store = Arc::new(ConnectionStore::new(Timeouts {
        active_ms: config.export.active_timeout.0.as_millis() as u64,
        idle_ms: config.export.idle_timeout.0.as_millis() as u64,
        deny_idle_ms: config.deny.idle_timeout.0.as_millis() as u64,
    }));
    let state_directory =
        (!config.state.directory.is_empty()).then(|| PathBuf::from(&config.state.directory));
    let origin = state::Origin::current();
    if let Some(directory) = &state_directory {
        resume(&store, directory, origin);
    }
    let networks = PodNetworks::from_cidrs(&settings.pod_cidrs);
    let attribution = if config.attribution.enabled {
        match Attribution::start(&config.attribution) {
            Ok(attribution) => {
                let how = match attribution.attachment() {
                    Some(flowex_ebpf::Attachment::BtfTracePoint) => "tp_btf",
                    _ => "classic tracepoints (tp_btf refused)",
                };
                tracing::info!(
                    "eBPF socket probe attached ({how}): flows carry process and container owners"
                );
                attribution
            }
            Err(error) => {
                tracing::warn!(
                    "eBPF socket probe unavailable, exporting flows without process attribution: {error}"
                );
                Attribution::disabled()
            }
        }
    } else {
        Attribution::disabled()
    };
    metrics.probe_attached(attribution.is_active());
    let node_name = &settings.node_name;
    let (metadata, mut watchers) = start_metadata(config, &metrics, node_name).await?;
    watchers.extend(start_certificate_watchers(config, &targets).await?);
    {
        // A pod veth's peer address names its pod in the interface metrics.
        let metadata = Arc::clone(&metadata);
        metrics.set_pod_lookup(move |ip| {
            let pods = metadata.pods();
            let pod = pods.pod_at(ip, now_ms())?;
            Some(crate::network::PodName {
                namespace: pod.namespace().to_owned(),
                name: pod.name().to_owned(),
            })
        });
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::new());
    // Raised at shutdown: the source threads block until their next poll or packet and
    // still stop at once.
    let interrupt = Arc::new(Interrupt::new().context("creating the sources' stop eventfd")?);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();

    // Bind and open everything before saying we run, so errors show at once.
    let metrics_listener = tokio::net::TcpListener::bind(&config.metrics.listen)
        .await
        .with_context(|| format!("metrics.listen {}", config.metrics.listen))?;
    let socket = ConntrackSocket::open().context("opening ctnetlink")?;
    let events = if config.conntrack.events {
        // UPDATE events carry no counters: they are read only to fetch an ended TCP
        // connection's final counters at once (conntrack.promptTcpEnd), and then only the
        // ones into TIME_WAIT or CLOSE. Otherwise the next poll sees the final counters.
        let prompt = config.conntrack.prompt_tcp_end;
        let groups = EventGroups {
            update: prompt,
            ..EventGroups::ALL
        };
        let mut events = ConntrackEvents::subscribe(groups, config.conntrack.event_buffer_bytes)
            .context("subscribing to conntrack events")?;
        if prompt && let Err(error) = events.keep_only_ended_tcp_updates() {
            tracing::warn!(
                "cannot filter conntrack UPDATE events in the kernel ({error}): every update is read"
            );
        }
        if !events.buffer_forced() {
            tracing::warn!(
                "SO_RCVBUFFORCE refused: the event buffer is {} bytes (net.core.rmem_max); bursts may be lost and resynced",
                events.receive_buffer()
            );
        }
        Some(events)
    } else {
        None
    };
    if config.conntrack.prompt_tcp_end && !config.conntrack.events {
        tracing::warn!(
            "conntrack.promptTcpEnd needs conntrack.events: ended TCP connections are exported from the polls"
        );
    }
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
        let metrics = Arc::clone(&metrics);
        let interrupt = Arc::clone(&interrupt);
        threads.push(supervise(
            "conntrack source",
            &health,
            &Arc::clone(&stopping),
            move || {
                let source = ConntrackSource {
                    store: &store,
                    metrics: &metrics,
                    zones: &zones,
                    include_loopback: loopback,
                    interval,
                    cpus: Default::default(),
                };
                source.run(socket, events, &stopping, &interrupt)
            },
        )?);
    }
    if let Some(mut listener) = deny {
        let store = Arc::clone(&store);
        let stopping = Arc::clone(&stopping);
        let metrics = Arc::clone(&metrics);
        listener.set_interrupt(interrupt.raw());
        let interrupt = Arc::clone(&interrupt);
        threads.push(supervise(
            "deny source",
            &health,
            &Arc::clone(&stopping),
            move || {
                // Keeps the interrupt's descriptor open while the listener waits on it.
                let _interrupt = interrupt;
                crate::sources::deny::DenySource {
                    store: &store,
                    metrics: &metrics,
                }
                .run(listener, &stopping)
            },
        )?);
    }
    tracing::info!(
        "running: node {:?}, observation domain {domain}, {} collector(s)",
        node_name,
        targets.len()
    );

    let server = tokio::spawn(crate::telemetry::http::serve(
        metrics_listener,
        Arc::new(crate::telemetry::http::Endpoint {
            metrics: Arc::clone(&metrics),
            store: Arc::clone(&store),
            process: Arc::clone(&process),
            health: Arc::clone(&health),
        }),
    ));
    let mut records = RecordBuilder::new(networks, attribution, Arc::clone(&metadata))
        .with_metrics(Arc::clone(&metrics))
        .with_kubernetes_elements(kubernetes_elements(config));
    let mut builder = BatchBuilder::default();
    // Due connections copied out of the store, reused round after round.
    let mut due = Vec::new();
    tokio::pin!(stop);
    let mut next_expiry = tokio::time::Instant::now() + EXPIRY_TICK;
    let mut next_probe_read = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = health.failed() => break,
            _ = tokio::time::sleep_until(next_expiry) => {
                // The collectors' room bounds the batch: what does not fit waits in the
                // store, and the next round comes as soon as the queues have drained a bit.
                let room = process.room();
                let (exported, _) =
                    records.export_due(&store, &process, &mut builder, &mut due, now_ms(), room, false);
                metrics.records_unencodable_total(builder.rejected());
                let now = tokio::time::Instant::now();
                next_expiry = now + if exported >= room { BACKLOG_TICK } else { EXPIRY_TICK };
                process.report_drops();
                if let Some(failure) = process.failure() {
                    health.fail(failure);
                }
                if now >= next_probe_read {
                    metrics.observe_probe(records.attribution().probe_stats());
                    next_probe_read = now + PROBE_STATS_INTERVAL;
                }
            }
        }
    }

    // Shutdown: stop the sources, then export everything once more: what is due as due,
    // everything else as a forced end (4), paced by the collectors' room like expiry, all
    // within the shutdown timeout.
    stopping.store(true, Ordering::Release);
    interrupt.raise();
    for thread in threads {
        let _ = thread.join();
    }
    tracing::debug!("sources stopped");
    let deadline = tokio::time::Instant::now() + config.export.shutdown_timeout.0;
    let now = now_ms();
    let mut flushed = 0;
    loop {
        let room = process.room();
        let (expired, forced) =
            records.export_due(&store, &process, &mut builder, &mut due, now, room, true);
        flushed += forced;
        if expired + forced < room || store.unflushed() == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let left = store.unflushed();
            tracing::warn!(
                "{left} connection(s) not exported by the shutdown deadline ({}): {}",
                config.export.shutdown_timeout,
                if state_directory.is_some() {
                    "the state file keeps what was exported, so the next agent exports the rest"
                } else {
                    "their counts since the last export are lost (no state.directory)"
                }
            );
            break;
        }
        tokio::time::sleep(BACKLOG_TICK).await;
    }
    // Detach the probe (and remove its pin) before the queues drain.
    drop(records);
    for watcher in watchers {
        watcher.abort();
    }
    // The endpoint keeps answering (a failure's 503 included) while the queues drain.
    tracing::debug!("flushing the collector queues");
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    process.shutdown(left.max(Duration::from_millis(500))).await;
    server.abort();
    let _ = server.await;
    if let Some(directory) = &state_directory {
        save_state(&store, directory, origin);
    }
    tracing::info!("stopped: {flushed} connection(s) exported with flowEndReason 4");
    match health.failure() {
        None => Ok(()),
        Some(failure) => Err(anyhow::anyhow!("stopped after a failure: {failure}")),
    }
}

/// The Kubernetes elements the records carry (`export.podLabels`, `export.kubernetesUIDs`).
fn kubernetes_elements(config: &crate::config::Config) -> records::KubernetesElements {
    records::KubernetesElements {
        pod_labels: config.export.pod_labels,
        uids: config.export.kubernetes_uids,
    }
}

/// Runs `body` on a thread of its own named `name`. If it panics, or returns while the
/// agent is not stopping, `health` fails with the reason: the agent flushes and exits.
fn supervise(
    name: &'static str,
    health: &Arc<Health>,
    stopping: &Arc<AtomicBool>,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    let health = Arc::clone(health);
    let stopping = Arc::clone(stopping);
    std::thread::Builder::new()
        .name(name.replace(' ', "-"))
        .spawn(
            move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Err(payload) => health.fail(format!(
                    "{name} panicked: {}",
                    crate::telemetry::health::panic_message(&*payload)
                )),
                Ok(()) if !stopping.load(Ordering::Acquire) => {
                    health.fail(format!("{name} stopped unexpectedly"))
                }
                Ok(()) => {}
            },
        )
        .with_context(|| format!("starting the {name} thread"))
}

/// Loads the previous agent's state file, if any, into the store.
fn resume(store: &ConnectionStore, directory: &Path, origin: state::Origin) {
    match state::take(directory, origin) {
        Ok(None) => tracing::info!(
            "no state file in {}: every connection is new to this agent",
            directory.display()
        ),
        Ok(Some(saved)) => {
            let count = saved.connections.len();
            store.resume(saved.connections);
            tracing::info!(
                "resuming {count} connection(s) from the state file written {:.1} s ago",
                now_ms().saturating_sub(saved.written_ms) as f64 / 1000.0
            );
        }
        Err(error) => {
            tracing::warn!("ignoring the state file, starting clean: {error}")
        }
    }
}

/// Writes what was exported of every connection for the next agent.
fn save_state(store: &ConnectionStore, directory: &Path, origin: state::Origin) {
    let saved = state::State {
        origin,
        written_ms: now_ms(),
        connections: store.saved_connections(),
    };
    match state::save(directory, &saved) {
        Ok(path) => tracing::info!(
            "saved {} connection(s) to {}",
            saved.connections.len(),
            path.display()
        ),
        Err(error) => tracing::warn!(
            "cannot save the state file ({error}): the next agent exports ended connections again and restarts deltas"
        ),
    }
}

/// Watches the ConfigMaps and Secrets of the collectors with `tls.antrea` (through the
/// same API client as the metadata, also when `kubernetes.enabled` is false).
async fn start_certificate_watchers(
    config: &crate::config::Config,
    targets: &[CollectorTarget],
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let wanted: Vec<_> = targets
        .iter()
        .filter_map(|t| t.api_certificates.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let Some((client, url)) = metadata::client(&config.kubernetes).await? else {
        tracing::error!(
            "tls.antrea needs the Kubernetes API, and none is found (not in a cluster, no kubeconfig): those collectors cannot connect"
        );
        return Ok(Vec::new());
    };
    let mut tasks = Vec::new();
    for certificates in wanted {
        tracing::info!(
            "reading the CA of ConfigMap {} and the client pair of Secret {} from {url}",
            certificates.config_map,
            certificates.secret
        );
        tasks.extend(certificates.watch(client.clone()));
    }
    Ok(tasks)
}

/// Connects to the Kubernetes API and starts the pod and service watchers; without an
/// API server the agent runs on, without pod metadata, and says so once.
async fn start_metadata(
    config: &crate::config::Config,
    metrics: &Metrics,
    node_name: &str,
) -> Result<(Arc<Metadata>, Vec<tokio::task::JoinHandle<()>>)> {
    let metadata = Metadata::disabled(Some(metrics.registry()));
    if !config.kubernetes.enabled {
        tracing::info!("kubernetes.enabled is false: records carry no pod metadata");
        return Ok((metadata, Vec::new()));
    }
    let Some((client, url)) = metadata::client(&config.kubernetes).await? else {
        tracing::warn!(
            "no Kubernetes API server (not in a cluster, no kubeconfig): exporting without pod metadata"
        );
        return Ok((metadata, Vec::new()));
    };
    let scope = config.kubernetes.pod_scope;
    tracing::info!(
        "watching {} and all services at {}",
        match scope {
            crate::config::PodScope::Node => format!("the pods of node {node_name:?}"),
            crate::config::PodScope::Cluster => "all pods".to_owned(),
        },
        url
    );
    let watchers = metadata::start_watchers(&metadata, client, scope, node_name);
    Ok((metadata, watchers))
}
