//! `flowex conntrack`: the table of this network namespace as text lines or JSON objects,
//! one per entry, with each end's socket owner from a running agent's pinned map.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{
    ConntrackEntry, ConntrackSocket, Counters, DumpFilter, Tuple, check_settings, default_root,
    tcp_state_name,
};

/// How to list.
#[derive(Debug, Clone, Default)]
pub struct Listing<'a> {
    /// What the kernel filters (family, zone, mark).
    pub filter: DumpFilter,
    /// One JSON object per entry instead of a text line.
    pub json: bool,
    /// Only `{"entries":N,"elapsed_ms":T}` for the whole dump.
    pub count: bool,
    /// The socket-owner map pinned by a running agent, read with `json`.
    pub owners: Option<&'a Path>,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("opening a ctnetlink socket (needs CAP_NET_ADMIN): {0}")]
    Open(super::ConntrackError),
    #[error("dumping the conntrack table: {0}")]
    Dump(super::ConntrackError),
    #[error("writing the entries: {0}")]
    Write(std::io::Error),
}

/// Dumps the table into `out` as `listing` says. Warnings (settings that hide entries) and
/// notes (no owner map) go to `warn`, each with its kind first (`warning: ...`). A reader
/// that goes away (a closed pipe) ends the listing without an error.
pub fn list(
    listing: &Listing<'_>,
    out: &mut impl Write,
    warn: &mut impl FnMut(String),
) -> Result<(), ListingError> {
    for check in check_settings(&default_root(), false) {
        if !check.ok() {
            warn(format!("warning: {}", check.describe()));
        }
    }
    let mut socket = ConntrackSocket::open().map_err(ListingError::Open)?;
    let owners = match listing.owners {
        Some(path) if listing.json && !listing.count => {
            match flowex_ebpf::OwnerMap::open_pinned(path) {
                Ok(map) => Some(map),
                Err(error) => {
                    warn(format!(
                        "note: no socket owners ({}: {error}); is an agent running with attribution enabled?",
                        path.display()
                    ));
                    None
                }
            }
        }
        _ => None,
    };
    let started = Instant::now();
    let mut write_error = None;
    let stats = socket
        .dump(&listing.filter, |entry| {
            if listing.count || write_error.is_some() {
                return;
            }
            let written = if listing.json {
                let mut value = entry_json(entry);
                if let Some(owners) = &owners {
                    let [source, destination] = owners_json(owners, entry);
                    value["source_owner"] = source;
                    value["destination_owner"] = destination;
                }
                writeln!(out, "{value}")
            } else {
                writeln!(out, "{}", entry_line(entry))
            };
            if let Err(e) = written {
                write_error = Some(e);
            }
        })
        .map_err(ListingError::Dump)?;
    if listing.count {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let summary = json!({"entries": stats.entries, "elapsed_ms": elapsed_ms});
        writeln!(out, "{summary}").map_err(ListingError::Write)?;
    }
    match write_error {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(ListingError::Write(e)),
        _ => {
            let _ = out.flush();
            Ok(())
        }
    }
}

/// The owners of both ends of an entry, from the pinned map.
fn owners_json(owners: &flowex_ebpf::OwnerMap, entry: &ConntrackEntry) -> [Value; 2] {
    let end = |t: &Tuple| {
        let key = flowex_ebpf::SocketKey::new(
            t.protocol,
            t.source,
            t.source_port,
            t.destination,
            t.destination_port,
        );
        owners.find(&key).map_or(
            Value::Null,
            |o| json!({"pid": o.pid, "name": o.name(), "cgroup_id": o.cgroup_id, "netns": o.netns}),
        )
    };
    [end(&entry.original), end(&entry.reply)]
}

/// An entry as one JSON object.
pub fn entry_json(entry: &ConntrackEntry) -> Value {
    let tuple = |t: &Tuple| {
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

/// An entry as one text line, in the order `conntrack -L` prints its fields.
pub fn entry_line(entry: &ConntrackEntry) -> String {
    let t = &entry.original;
    let r = &entry.reply;
    let counters = |c: Option<Counters>| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ConntrackEntry {
        let tuple = |source: [u8; 4], destination: [u8; 4], ports: (u16, u16)| Tuple {
            source: source.into(),
            destination: destination.into(),
            protocol: 6,
            source_port: ports.0,
            destination_port: ports.1,
            icmp_id: 0,
            icmp_type: 0,
            icmp_code: 0,
        };
        ConntrackEntry {
            family: libc::AF_INET as u8,
            original: tuple([10, 0, 0, 1], [10, 96, 0, 10], (40000, 80)),
            reply: tuple([10, 244, 1, 5], [10, 0, 0, 1], (8080, 40000)),
            original_counters: Some(Counters {
                packets: 3,
                bytes: 180,
            }),
            reply_counters: Some(Counters {
                packets: 2,
                bytes: 120,
            }),
            zone: 7,
            mark: 0x10,
            status: 0x19e,
            tcp_state: Some(3),
            timeout: Some(431_999),
            id: 4242,
            use_count: 1,
            start_ns: Some(1_700_000_000_000_000_000),
            labels: Some([0xab; 16]),
            ..ConntrackEntry::default()
        }
    }

    #[test]
    fn an_entry_as_a_line_names_both_directions_as_conntrack_does() {
        assert_eq!(
            entry_line(&entry()),
            "proto=6 ESTABLISHED src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=80 packets=3 bytes=180 \
             src=10.244.1.5 dst=10.0.0.1 sport=8080 dport=40000 packets=2 bytes=120 zone=7 mark=16 id=4242"
        );
        let without_counters = ConntrackEntry {
            original_counters: None,
            reply_counters: None,
            tcp_state: None,
            ..entry()
        };
        assert_eq!(
            entry_line(&without_counters),
            "proto=6  src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=80 \
             src=10.244.1.5 dst=10.0.0.1 sport=8080 dport=40000 zone=7 mark=16 id=4242"
        );
    }

    #[test]
    fn an_entry_as_json_keeps_every_field() {
        let value = entry_json(&entry());
        assert_eq!(value["id"], 4242);
        assert_eq!(value["family"], "ipv4");
        assert_eq!(value["original"]["dst"], "10.96.0.10");
        assert_eq!(value["reply"]["src"], "10.244.1.5");
        assert_eq!(value["reply"]["sport"], 8080);
        assert_eq!(value["packets_original"], 3);
        assert_eq!(value["bytes_reply"], 120);
        assert_eq!(value["tcp_state"], "ESTABLISHED");
        assert_eq!(value["start_ns"], 1_700_000_000_000_000_000u64);
        assert_eq!(value["stop_ns"], Value::Null);
        assert_eq!(value["labels"], "ab".repeat(16));
        assert_eq!(value["zone"], 7);
    }
}
