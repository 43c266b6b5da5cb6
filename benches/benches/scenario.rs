//! The long-running scenario of Antrea's exporter PR, mirrored: 30,000 initial connections,
//! then per poll 10,000 new and 5,000 ending (absent from the dump: exported with
//! flowEndReason 3 and removed), through the real store, expiry, record building and the
//! exporting process over UDP loopback to collector-sim (in this process, so its memory is
//! counted too). Not a criterion benchmark: it runs for a duration and prints one JSON
//! summary with total connections, peak resident memory and records received.
//!
//! It runs in real time like the agent: a poll every second, expiry every 100 ms, active
//! timeout 5 s. `FLOWEX_SCENARIO_SECS` (default 120, Antrea's duration) sets the length.
//! Antrea reported 2,299 MB for ~1M connections over 120 s.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flowex_agent::enrich::attribution::Attribution;
use flowex_agent::enrich::metadata::Metadata;
use flowex_agent::export::BatchBuilder;
use flowex_agent::records::{PodNetworks, RecordBuilder};
use flowex_agent::sources::conntrack::ConntrackEntry;
use flowex_agent::store::{ConnectionStore, Timeouts};
use flowex_benches::tcp_entry;

const INITIAL: u64 = 30_000;
const NEW_PER_POLL: u64 = 10_000;
const ENDING_PER_POLL: u64 = 5_000;

/// Connection `i` as a dump shows it at `poll` (counters grow with every poll).
fn entry(i: u64, poll: u64) -> ConntrackEntry {
    let i32 = i as u32;
    let src = IpAddr::from([10, 244, (i32 >> 16) as u8, (i32 >> 8) as u8]);
    let dst = IpAddr::from([10, 245, i32 as u8, (i32 >> 24) as u8]);
    let sport = 1024 + (i % 60_000) as u16;
    tcp_entry(
        src,
        dst,
        sport,
        8080,
        (2 * poll + 1, 200 * poll + 60),
        (2 * poll + 1, 900 * poll + 60),
    )
}

fn resident_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; other arguments are ignored.
    let seconds: u64 = std::env::var("FLOWEX_SCENARIO_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (collector, process) = flowex_benches::udp_export_pair(&runtime, 65_536);
    let store = ConnectionStore::new(Timeouts {
        active_ms: 5_000,
        idle_ms: 15_000,
        deny_idle_ms: 15_000,
    });
    let networks = PodNetworks::new(vec![("10.244.0.0".parse().expect("ip"), 16)]);
    let mut records =
        RecordBuilder::new(networks, Attribution::disabled(), Metadata::disabled(None));
    let mut builder = BatchBuilder::default();
    let mut due = Vec::new();
    let baseline_kib = resident_kib("VmRSS:");

    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let started = Instant::now();
    let (mut oldest, mut next) = (0u64, INITIAL);
    let (mut polls, mut peak_live, mut sent) = (0u64, 0usize, 0u64);
    let (mut poll_ms, mut expiry_ms) = (0u128, 0u128);
    let stats = &process.collectors()[0].stats;
    let mut next_poll = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let polled = Instant::now() >= next_poll;
        if polled {
            let t = Instant::now();
            let generation = store.begin_poll();
            let now = clock();
            for i in oldest..next {
                store.update(entry(i, polls), generation, now);
            }
            peak_live = peak_live.max(store.len());
            polls += 1;
            oldest += ENDING_PER_POLL;
            next += NEW_PER_POLL;
            next_poll += Duration::from_secs(1);
            poll_ms += t.elapsed().as_millis();
        }
        let t = Instant::now();
        due.clear();
        sent += store.expire_into(clock(), polled, usize::MAX, &mut due) as u64;
        for due in &due {
            records.push(&store, due, &mut builder);
        }
        process.export(builder.finish());
        expiry_ms += t.elapsed().as_millis();
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(30));
    println!(
        "{{\"seconds\":{elapsed:.1},\"polls\":{polls},\"connections_total\":{next},\"peak_tracked\":{peak_live},\
\"records_sent\":{sent},\"records_received\":{},\"missing_records\":{},\"records_dropped\":{},\
\"messages\":{},\"peak_rss_mb\":{:.1},\"rss_before_store_mb\":{:.1},\"poll_ms_total\":{poll_ms},\"expiry_and_encode_ms_total\":{expiry_ms}}}",
        summary.records,
        summary.missing_records,
        stats.records_dropped(),
        stats.messages.load(Ordering::Acquire),
        resident_kib("VmHWM:") as f64 / 1024.0,
        baseline_kib as f64 / 1024.0,
    );
}
