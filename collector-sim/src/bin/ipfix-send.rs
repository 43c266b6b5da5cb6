//! ipfix-send: sends N synthetic Antrea flow records to an IPFIX collector.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use collector_sim::sender::Sender;
use collector_sim::{Endpoint, synthetic};

/// Send synthetic flow records with Antrea's IPv4/IPv6 templates to an IPFIX collector,
/// many records per message. Handy for testing a collector; flowex's own tests use it too.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Collector to send to: udp://HOST:PORT or tcp://HOST:PORT.
    #[arg(long, default_value = "udp://127.0.0.1:4739")]
    to: Endpoint,
    /// Number of data records to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Use the IPv6 template (id 257) instead of IPv4 (id 256).
    #[arg(long)]
    ipv6: bool,
    /// Maximum message size in bytes (default 1472 for UDP, 65535 for TCP).
    #[arg(long)]
    max_message_size: Option<usize>,
    /// Observation domain id.
    #[arg(long, default_value_t = 1)]
    domain: u32,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut sender = match Sender::connect(args.to, args.domain, args.max_message_size) {
        Ok(sender) => sender,
        Err(error) => {
            eprintln!("ipfix-send: cannot reach {}: {error}", args.to);
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    for index in 0..args.count {
        if args.rate > 0 {
            let due = Duration::from_secs_f64(index as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if let Err(error) = sender.send(&synthetic::flow_record(index, args.ipv6)) {
            eprintln!("ipfix-send: send to {} failed: {error}", args.to);
            return ExitCode::FAILURE;
        }
    }
    if let Err(error) = sender.flush() {
        eprintln!("ipfix-send: send to {} failed: {error}", args.to);
        return ExitCode::FAILURE;
    }
    let stats = sender.stats();
    println!(
        "{{\"records\":{},\"messages\":{},\"bytes\":{},\"elapsed_ms\":{}}}",
        stats.records,
        stats.messages,
        stats.bytes,
        started.elapsed().as_millis()
    );
    ExitCode::SUCCESS
}
