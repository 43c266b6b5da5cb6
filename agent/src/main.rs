//! `flowex`: the node agent's command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flowex_agent::config::{Config, Overrides, Settings};
use flowex_agent::sources::conntrack::{ConntrackSocket, DumpFilter, Listing, list};

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

fn conntrack(args: &ConntrackArgs) -> anyhow::Result<()> {
    let listing = Listing {
        filter: DumpFilter {
            family: match args.family.as_deref() {
                Some("ipv4") => libc::AF_INET as u8,
                Some("ipv6") => libc::AF_INET6 as u8,
                _ => 0,
            },
            zone: args.zone,
            mark: args.mark,
        },
        json: args.json,
        count: args.count,
        owners: Some(&args.owners),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    list(&listing, &mut out, &mut |message| {
        eprintln!("flowex: {message}")
    })?;
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
    let mut cpus = Vec::new();
    let mut sample = || {
        if let Some(socket) = socket.as_mut() {
            match socket
                .table_stats()
                .and_then(|table| socket.cpu_stats(&mut cpus).map(|()| table))
            {
                Ok(table) => {
                    network.observe_conntrack(&cpus);
                    network.observe_table(table.entries, table.max_entries);
                }
                Err(error) => network.conntrack_unreadable(format!("conntrack: {error}")),
            }
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
