//! `flowex`: the node agent's command line.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use flowex_agent::config::{Config, Overrides, Settings};
use flowex_agent::sources::conntrack::{
    ConntrackEntry, ConntrackSocket, DumpFilter, check_settings, default_root, tcp_state_name,
};
use serde_json::json;

/// flowex: an IPFIX flow exporter for Kubernetes nodes.
///
/// `flowex run` exports conntrack connections and NFLOG denials as IPFIX records.
#[derive(Parser, Debug)]
#[command(name = "flowex", version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: watch conntrack and NFLOG, export IPFIX records to the collectors.
    Run(RunArgs),
    /// List the conntrack table of this network namespace (needs CAP_NET_ADMIN).
    Conntrack(ConntrackArgs),
    /// Look for reasons connections on this node fail: NIC, softnet and conntrack drops,
    /// with evidence and advice. Exits 0 when healthy, 1 when a finding is active.
    Diagnose(DiagnoseArgs),
    /// Check a configuration file: prints "ok" and exits 0, or prints the error and exits 1.
    CheckConfig {
        /// The YAML file.
        file: std::path::PathBuf,
    },
    /// Print the default configuration as YAML.
    PrintDefaultConfig,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// YAML configuration file (defaults for every key left out).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Collector as udp://HOST:PORT or tcp://HOST:PORT; repeat for several. Replaces the
    /// configured collectors.
    #[arg(long = "collector", value_name = "URL")]
    collectors: Vec<String>,
    /// Stop gracefully (with the shutdown flush) after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
}

#[derive(clap::Args, Debug)]
struct DiagnoseArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Sample twice, SECONDS apart, and report rates over that window. Without it, one
    /// sample: levels (a table near its limit) are findings, counters only history.
    #[arg(long, value_name = "SECONDS", value_parser = parse_watch)]
    watch: Option<f64>,
}

fn parse_watch(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 3600.0 => Ok(seconds),
        _ => Err(format!(
            "{text:?}: a number of seconds above 0, at most 3600"
        )),
    }
}

#[derive(clap::Args, Debug)]
struct ConntrackArgs {
    /// Only entries in this conntrack zone (filtered by the kernel).
    #[arg(long)]
    zone: Option<u16>,
    /// Only entries whose mark matches, as VALUE or VALUE/MASK (decimal or 0x hex).
    #[arg(long, value_parser = parse_mark)]
    mark: Option<(u32, u32)>,
    /// Only this address family.
    #[arg(long, value_parser = ["ipv4", "ipv6"])]
    family: Option<String>,
    /// One JSON object per entry.
    #[arg(long)]
    json: bool,
    /// Print only {"entries":N,"elapsed_ms":T} for a full dump with the filters.
    #[arg(long)]
    count: bool,
    /// The socket-owner map pinned by a running agent (attribution.pinPath): with --json,
    /// each entry gets the process owning each end ("source_owner", "destination_owner").
    #[arg(long, value_name = "PATH", default_value = flowex_ebpf::DEFAULT_PIN_PATH)]
    owners: std::path::PathBuf,
}

/// The owners of both ends of an entry, from the pinned map.
fn owners_json(owners: &flowex_ebpf::OwnerMap, entry: &ConntrackEntry) -> [serde_json::Value; 2] {
    use flowex_ebpf::SocketKey;
    let end = |t: &flowex_agent::sources::conntrack::Tuple| {
        let key = SocketKey::new(
            t.protocol,
            t.source,
            t.source_port,
            t.destination,
            t.destination_port,
        );
        owners.find(&key).map_or(
            serde_json::Value::Null,
            |o| json!({"pid": o.pid, "name": o.name(), "cgroup_id": o.cgroup_id, "netns": o.netns}),
        )
    };
    [end(&entry.original), end(&entry.reply)]
}

fn parse_number(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a 32-bit number: {e}"))
}

fn parse_mark(text: &str) -> Result<(u32, u32), String> {
    match text.split_once('/') {
        Some((value, mask)) => Ok((parse_number(value)?, parse_number(mask)?)),
        None => Ok((parse_number(text)?, u32::MAX)),
    }
}

fn entry_json(entry: &ConntrackEntry) -> serde_json::Value {
    let tuple = |t: &flowex_agent::sources::conntrack::Tuple| {
        json!({
            "src": t.source.to_string(),
            "dst": t.destination.to_string(),
            "sport": t.source_port,
            "dport": t.destination_port,
            "icmp_id": t.icmp_id,
            "icmp_type": t.icmp_type,
            "icmp_code": t.icmp_code,
        })
    };
    json!({
        "id": entry.id,
        "family": if entry.family == libc::AF_INET6 as u8 { "ipv6" } else { "ipv4" },
        "protocol": entry.original.protocol,
        "original": tuple(&entry.original),
        "reply": tuple(&entry.reply),
        "packets_original": entry.original_counters.map(|c| c.packets),
        "bytes_original": entry.original_counters.map(|c| c.bytes),
        "packets_reply": entry.reply_counters.map(|c| c.packets),
        "bytes_reply": entry.reply_counters.map(|c| c.bytes),
        "zone": entry.zone,
        "mark": entry.mark,
        "status": entry.status,
        "tcp_state": entry.tcp_state.map(tcp_state_name),
        "timeout": entry.timeout,
        "start_ns": entry.start_ns,
        "stop_ns": entry.stop_ns,
        "labels": entry.labels.map(|l| l.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        "use": entry.use_count,
    })
}

fn entry_line(entry: &ConntrackEntry) -> String {
    let t = &entry.original;
    let r = &entry.reply;
    let counters = |c: Option<flowex_agent::sources::conntrack::Counters>| {
        c.map_or(String::new(), |c| {
            format!(" packets={} bytes={}", c.packets, c.bytes)
        })
    };
    format!(
        "proto={} {} src={} dst={} sport={} dport={}{} src={} dst={} sport={} dport={}{} zone={} mark={} id={}",
        t.protocol,
        entry.tcp_state.map_or("", tcp_state_name),
        t.source,
        t.destination,
        t.source_port,
        t.destination_port,
        counters(entry.original_counters),
        r.source,
        r.destination,
        r.source_port,
        r.destination_port,
        counters(entry.reply_counters),
        entry.zone,
        entry.mark,
        entry.id,
    )
}

fn conntrack(args: &ConntrackArgs) -> anyhow::Result<()> {
    let filter = DumpFilter {
        family: match args.family.as_deref() {
            Some("ipv4") => libc::AF_INET as u8,
            Some("ipv6") => libc::AF_INET6 as u8,
            _ => 0,
        },
        zone: args.zone,
        mark: args.mark,
    };
    // Say on stderr what this namespace's settings hide from the listing.
    for check in check_settings(&default_root(), false) {
        if !check.ok() {
            eprintln!("flowex: warning: {}", check.describe());
        }
    }
    let mut socket =
        ConntrackSocket::open().context("opening a ctnetlink socket (needs CAP_NET_ADMIN)")?;
    let owners = if args.json && !args.count {
        match flowex_ebpf::OwnerMap::open_pinned(&args.owners) {
            Ok(map) => Some(map),
            Err(error) => {
                eprintln!(
                    "flowex: note: no socket owners ({}: {error}); is an agent running with attribution enabled?",
                    args.owners.display()
                );
                None
            }
        }
    } else {
        None
    };
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error = None;
    let stats = socket
        .dump(&filter, |entry| {
            if args.count || write_error.is_some() {
                return;
            }
            let line = if args.json {
                let mut value = entry_json(entry);
                if let Some(owners) = &owners {
                    let [source, destination] = owners_json(owners, entry);
                    value["source_owner"] = source;
                    value["destination_owner"] = destination;
                }
                value.to_string()
            } else {
                entry_line(entry)
            };
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
            }
        })
        .context("dumping the conntrack table")?;
    if args.count {
        writeln!(
            out,
            "{}",
            json!({"entries": stats.entries, "elapsed_ms": started.elapsed().as_millis() as u64})
        )?;
    }
    if let Some(e) = write_error
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        bail!("writing the entries: {e}");
    }
    out.flush().ok();
    Ok(())
}

/// Samples this namespace's sources (once, or twice with --watch) and prints the
/// findings; the exit code says whether one is active.
fn diagnose(args: &DiagnoseArgs) -> ExitCode {
    use flowex_agent::network::{NodeNetwork, Sources, diagnose};
    let network = NodeNetwork::new(&prometheus::Registry::new(), Sources::default());
    let mut socket = ConntrackSocket::open()
        .map_err(|e| network.conntrack_unreadable(format!("conntrack: {e} (needs CAP_NET_ADMIN)")))
        .ok();
    let mut sample = || {
        if let Some(socket) = socket.as_mut() {
            network.read_conntrack(socket);
        }
        network.sample()
    };
    let first = sample();
    let report = match args.watch {
        Some(seconds) => {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            diagnose::diagnose(Some(&first), &sample())
        }
        None => diagnose::diagnose(None, &first),
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        collectors: args.collectors.clone(),
    };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    flowex_agent::app::init_logging(&settings.config.logging);
    flowex_agent::app::run_blocking(settings, args.duration.map(Duration::from_secs_f64))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Command::Run(run_args) => run(run_args),
        Command::Conntrack(conntrack_args) => conntrack(conntrack_args),
        Command::Diagnose(diagnose_args) => return diagnose(diagnose_args),
        Command::CheckConfig { file } => Settings::load(Some(file), &Overrides::default())
            .map_err(anyhow::Error::from)
            .and_then(|settings| flowex_agent::app::check(&settings))
            .map(|()| println!("ok")),
        Command::PrintDefaultConfig => {
            print!("{}", Config::default().to_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowex: {error:#}");
            ExitCode::FAILURE
        }
    }
}
