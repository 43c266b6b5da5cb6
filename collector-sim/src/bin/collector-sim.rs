//! collector-sim: receive IPFIX over UDP and TCP, decode strictly, count, and report.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use collector_sim::{Collector, CollectorConfig, Endpoint};

/// A real IPFIX (RFC 7011) collector that decodes every message strictly and counts what
/// arrives, so that exporters can be checked and measured.
///
/// It listens on every --listen endpoint (UDP and TCP, IPv4 and IPv6, any number of
/// exporters at once). Templates are kept per transport session (a UDP peer address or a
/// TCP connection) and observation domain; over UDP a template not refreshed within
/// --template-lifetime is forgotten. Data sets that arrive before their template are
/// counted as sets_without_template. Sequence numbers are checked per stream and domain:
/// a message numbered beyond the records seen so far counts one sequence gap and adds the
/// difference to missing_records (the first message of a stream sets the baseline, so
/// loss at the very start or end of a stream is not visible this way).
///
/// Malformed input (bad lengths, reserved set ids, bad templates, invalid strings,
/// a TCP stream that is not IPFIX or ends inside a message) is counted by kind in
/// decode_errors_by_kind and logged on stderr once per kind every 10 s; a TCP peer
/// that sends it is disconnected, everyone else carries on.
///
/// Output: with --json, one JSON object per data record on stdout, keyed by
/// information element name (unknown elements as "PEN:ID"). Without --json, a one-line
/// summary on stderr every --summary-interval seconds. On exit (SIGINT, SIGTERM,
/// --duration elapsed or --expect-records reached) one final summary object on stdout:
/// messages, records, templates, options_records, sequence_gaps, missing_records,
/// decode_errors, by_flow_end_reason, and the detailed counters.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Endpoint to listen on, udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or
    /// grpc://HOST:PORT (Antrea's FlowExportService; tls and grpc need --tls-cert and
    /// --tls-key); repeat for several.
    /// Default: udp://127.0.0.1:4739 and tcp://127.0.0.1:4739.
    #[arg(long = "listen", value_name = "ENDPOINT")]
    listen: Vec<Endpoint>,
    /// Print one JSON object per data record on stdout.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Stop as soon as this many data records have arrived.
    #[arg(long, value_name = "N")]
    expect_records: Option<u64>,
    /// Forget UDP templates not refreshed within this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    template_lifetime: u64,
    /// UDP receive buffer to ask for, in bytes (SO_RCVBUFFORCE when permitted).
    #[arg(long, value_name = "BYTES", default_value_t = collector_sim::DEFAULT_RECEIVE_BUFFER)]
    receive_buffer: usize,
    /// Bytes read per UDP datagram, as a receiver with that buffer reads (Antrea's Flow
    /// Aggregator: 1024): a longer datagram is cut and counted as a truncated_datagram
    /// decode error.
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    udp_buffer: u32,
    /// PEM certificate chain of tls:// endpoints.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM CA of client certificates: every TLS client must present one that chains to it
    /// (refused handshakes are counted in tls_refused).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Seconds between summary lines on stderr (without --json); 0 turns them off.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    summary_interval: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Release);
}

fn main() -> ExitCode {
    let args = Args::parse();
    let listen = if args.listen.is_empty() {
        vec![
            "udp://127.0.0.1:4739".parse().expect("constant endpoint"),
            "tcp://127.0.0.1:4739".parse().expect("constant endpoint"),
        ]
    } else {
        args.listen.clone()
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut config = CollectorConfig::new(listen);
    config.template_lifetime = Duration::from_secs(args.template_lifetime);
    config.receive_buffer = args.receive_buffer;
    config.udp_read_size = args.udp_buffer as usize;
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            config.tls = Some(collector_sim::tls::TlsFiles {
                ca: args.tls_ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        (None, None) if args.tls_ca.is_none() => {}
        _ => {
            eprintln!(
                "collector-sim: --tls-cert and --tls-key go together (and --tls-ca needs them)"
            );
            return ExitCode::FAILURE;
        }
    }
    if args.json {
        config.json_output = Some(Box::new(std::io::stdout()));
    }
    let collector = match Collector::start(config) {
        Ok(collector) => collector,
        Err(error) => {
            eprintln!("collector-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    let bound: Vec<String> = collector
        .local_endpoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    eprintln!("collector-sim: listening on {}", bound.join(" "));
    let started = Instant::now();
    let mut last_line = Instant::now();
    loop {
        if STOP.load(Ordering::Acquire) {
            break;
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        if args
            .expect_records
            .is_some_and(|n| collector.record_count() >= n)
        {
            break;
        }
        if !args.json
            && args.summary_interval > 0
            && last_line.elapsed() >= Duration::from_secs(args.summary_interval)
        {
            eprintln!("collector-sim: {}", collector.summary().one_line());
            last_line = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let summary = collector.stop();
    println!("{}", summary.to_json());
    ExitCode::SUCCESS
}
