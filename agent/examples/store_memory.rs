//! Resident memory per tracked connection: fills a store with N synthetic connections
//! (each with its expiry entry) and reports the growth of the process's resident set.
//!
//! `cargo run --release -p flowex-agent --example store_memory -- 1000000`

mod common;

use std::net::IpAddr;

use flowex_agent::sources::conntrack::{ConntrackEntry, Counters, Tuple};
use flowex_agent::store::{ConnectionStore, Timeouts};

use common::{count_arg, resident_bytes};

fn main() {
    let count = count_arg(100_000);
    let store = ConnectionStore::new(Timeouts {
        active_ms: 5_000,
        idle_ms: 15_000,
        deny_idle_ms: 15_000,
    });
    let before = resident_bytes();
    let generation = store.begin_poll();
    let mut entry = ConntrackEntry {
        family: 2,
        original_counters: Some(Counters {
            packets: 10,
            bytes: 1_000,
        }),
        reply_counters: Some(Counters {
            packets: 8,
            bytes: 9_000,
        }),
        tcp_state: Some(3),
        ..ConntrackEntry::default()
    };
    for i in 0..count {
        let src = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let dst = IpAddr::from([10, 96, 0, (i % 250) as u8]);
        entry.original = Tuple {
            source: src,
            destination: dst,
            protocol: 6,
            source_port: 1024 + (i % 60_000) as u16,
            destination_port: 443,
            ..Tuple::default()
        };
        entry.reply = Tuple {
            source: dst,
            destination: src,
            protocol: 6,
            source_port: 443,
            destination_port: entry.original.source_port,
            ..Tuple::default()
        };
        store.update(entry, generation, 0);
    }
    let after = resident_bytes();
    println!(
        "{{\"connections\":{},\"resident_bytes\":{},\"bytes_per_connection\":{:.1}}}",
        store.len(),
        after - before,
        (after - before) as f64 / f64::from(count)
    );
}
