//! The connection store: every tracked connection, shared by all collectors, in a sharded
//! map; and the expiry queue, a heap keyed by each connection's next deadline, so expiry
//! never scans the store.
//!
//! Each live connection has exactly one heap entry. Updates do not touch the heap: when an
//! entry comes due, the connection's real deadline is recomputed and, if it moved, the
//! entry is pushed again. Updating a known connection allocates nothing.

mod key;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;

pub use key::{ConnKey, FxBuild, FxHasher};

use crate::conntrack::ConntrackEntry;
use crate::deny::DenyEvent;

/// flowEndReason values (RFC 5102).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    IdleTimeout = 1,
    ActiveTimeout = 2,
    EndOfFlow = 3,
    ForcedEnd = 4,
}

/// Connection flags.
pub mod flags {
    /// The connection ended (DESTROY, TIME_WAIT/CLOSE, DYING bit, absent from a dump).
    pub const DYING: u8 = 1;
    /// Built from NFLOG denials rather than conntrack.
    pub const DENY: u8 = 2;
    /// A denial logged on the output path (egress policy) rather than input.
    pub const EGRESS: u8 = 8;
    /// The final record was exported; the entry stays (no more exports) until conntrack
    /// drops the connection, so a TIME_WAIT entry seen by later dumps is not counted again.
    pub const ENDED: u8 = 16;
    /// Exported once for idle timeout; not exported again until it changes.
    pub const IDLE: u8 = 4;
}

/// Packet and byte counters in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl Counters {
    /// Counters added since `earlier` (0 where a counter went backwards).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            reply_packets: self.reply_packets.saturating_sub(earlier.reply_packets),
            reply_bytes: self.reply_bytes.saturating_sub(earlier.reply_bytes),
        }
    }
}

/// One tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// Source of the reply direction: the real server behind a DNAT (service) address.
    pub reply_source: [u8; 16],
    pub reply_source_port: u16,
    pub tcp_state: u8,
    pub flags: u8,
    pub mark: u32,
    pub status: u32,
    pub conntrack_id: u32,
    /// Last poll generation whose dump contained the connection.
    pub seen_generation: u32,
    pub counters: Counters,
    /// Counters at the last export, for deltas.
    pub exported: Counters,
    /// Milliseconds since the Unix epoch.
    pub start_ms: u64,
    pub last_change_ms: u64,
    pub last_export_ms: u64,
    /// Interned deny log prefix (0: none); see [`ConnectionStore::prefix`].
    pub deny_prefix: u32,
}

/// Why and what to export, handed to the caller of [`ConnectionStore::expire`].
#[derive(Debug, Clone, Copy)]
pub struct Expired<'a> {
    pub key: &'a ConnKey,
    pub connection: &'a Connection,
    pub reason: EndReason,
    /// Counters since the previous export.
    pub delta: Counters,
    /// End of the reported interval, milliseconds since the Unix epoch.
    pub end_ms: u64,
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub active_ms: u64,
    pub idle_ms: u64,
    pub deny_idle_ms: u64,
}

/// The store. All methods take `&self`: sources and the expiry task share it.
pub struct ConnectionStore {
    map: DashMap<ConnKey, Connection, FxBuild>,
    expiry: Mutex<BinaryHeap<Reverse<(u64, ConnKey)>>>,
    timeouts: Timeouts,
    generation: AtomicU32,
    deny_count: std::sync::atomic::AtomicUsize,
    prefixes: Mutex<Vec<std::sync::Arc<str>>>,
}

fn mapped(addr: std::net::IpAddr) -> [u8; 16] {
    match addr {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    }
}

impl ConnectionStore {
    /// An empty store.
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            map: DashMap::with_hasher(FxBuild),
            expiry: Mutex::new(BinaryHeap::new()),
            timeouts,
            generation: AtomicU32::new(1),
            deny_count: std::sync::atomic::AtomicUsize::new(0),
            prefixes: Mutex::new(vec![std::sync::Arc::from("")]),
        }
    }

    /// Connections tracked (conntrack and deny).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Denied connections tracked.
    pub fn deny_len(&self) -> usize {
        self.deny_count.load(Ordering::Relaxed)
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A copy of one connection.
    pub fn get(&self, key: &ConnKey) -> Option<Connection> {
        self.map.get(key).map(|c| *c)
    }

    /// The deny prefix interned as `id` (a shared string: no copy).
    pub fn prefix(&self, id: u32) -> std::sync::Arc<str> {
        self.lock_prefixes()
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::from(""))
    }

    fn lock_prefixes(&self) -> std::sync::MutexGuard<'_, Vec<std::sync::Arc<str>>> {
        self.prefixes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn schedule(&self, deadline_ms: u64, key: ConnKey) {
        self.expiry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Reverse((deadline_ms, key)));
    }

    /// Starts a poll: entries seen by the dump that follows carry the returned generation.
    /// A connection missing from a whole completed poll is treated as ended.
    pub fn begin_poll(&self) -> u32 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Adds or updates a connection from a dump entry or an event. `generation` is the
    /// running poll's (0 for events). Allocation-free for a known connection.
    pub fn update(&self, entry: &ConntrackEntry, generation: u32, now_ms: u64) {
        let key = ConnKey::from_tuple(entry.zone, &entry.original);
        let counters = Counters {
            packets: entry.original_counters.map_or(0, |c| c.packets),
            bytes: entry.original_counters.map_or(0, |c| c.bytes),
            reply_packets: entry.reply_counters.map_or(0, |c| c.packets),
            reply_bytes: entry.reply_counters.map_or(0, |c| c.bytes),
        };
        let has_counters = entry.original_counters.is_some();
        let dying = entry.is_dying() || matches!(entry.tcp_state, Some(7) | Some(8));
        if let Some(mut connection) = self.map.get_mut(&key) {
            let c = &mut *connection;
            if generation != 0 {
                c.seen_generation = generation;
            }
            if c.flags & flags::ENDED != 0 {
                return;
            }
            if has_counters && counters != c.counters {
                c.counters = counters;
                c.last_change_ms = now_ms;
                c.flags &= !flags::IDLE;
            }
            if let Some(state) = entry.tcp_state {
                c.tcp_state = state;
            }
            c.mark = entry.mark;
            c.status = entry.status;
            if dying && c.flags & flags::DYING == 0 {
                c.flags |= flags::DYING;
                drop(connection);
                self.schedule(now_ms, key);
            }
            return;
        }
        let connection = Connection {
            reply_source: mapped(entry.reply.source),
            reply_source_port: entry.reply.source_port,
            tcp_state: entry.tcp_state.unwrap_or(0),
            flags: if dying { flags::DYING } else { 0 },
            mark: entry.mark,
            status: entry.status,
            conntrack_id: entry.id,
            seen_generation: if generation != 0 {
                generation
            } else {
                self.generation.load(Ordering::Acquire)
            },
            counters,
            exported: Counters::default(),
            start_ms: entry.start_ns.map_or(now_ms, |ns| ns / 1_000_000),
            last_change_ms: now_ms,
            last_export_ms: now_ms,
            deny_prefix: 0,
        };
        self.map.insert(key, connection);
        let deadline = if dying {
            now_ms
        } else {
            now_ms + self.timeouts.active_ms.min(self.timeouts.idle_ms)
        };
        self.schedule(deadline, key);
    }

    /// Records a connection's end with its final counters (DESTROY event, or the targeted
    /// get after TIME_WAIT/CLOSE); it is exported at the next expiry run.
    pub fn end(&self, entry: &ConntrackEntry, now_ms: u64) {
        let mut final_entry = *entry;
        final_entry.status |= crate::conntrack::IPS_DYING;
        self.update(&final_entry, 0, now_ms);
    }

    /// Adds one denied packet: packets and bytes of the same 5-tuple aggregate.
    pub fn deny(&self, event: &DenyEvent<'_>, now_ms: u64) {
        let key = ConnKey::from_packet(&event.tuple);
        if let Some(mut connection) = self.map.get_mut(&key) {
            connection.counters.packets += 1;
            connection.counters.bytes += u64::from(event.tuple.ip_length);
            connection.last_change_ms = now_ms;
            return;
        }
        let prefix = {
            let mut prefixes = self.lock_prefixes();
            match prefixes.iter().position(|p| &**p == event.prefix) {
                Some(id) => id as u32,
                None => {
                    prefixes.push(std::sync::Arc::from(event.prefix));
                    (prefixes.len() - 1) as u32
                }
            }
        };
        let start_ms = event
            .timestamp
            .map_or(now_ms, |(s, us)| s * 1_000 + us / 1_000);
        self.map.insert(
            key,
            Connection {
                reply_source: key.destination,
                reply_source_port: key.destination_port,
                tcp_state: 0,
                // hooks 3 (output) and 4 (postrouting) are the egress path
                flags: if event.hook >= 3 {
                    flags::DENY | flags::EGRESS
                } else {
                    flags::DENY
                },
                mark: event.mark,
                status: 0,
                conntrack_id: 0,
                seen_generation: 0,
                counters: Counters {
                    packets: 1,
                    bytes: u64::from(event.tuple.ip_length),
                    reply_packets: 0,
                    reply_bytes: 0,
                },
                exported: Counters::default(),
                start_ms,
                last_change_ms: now_ms,
                last_export_ms: now_ms,
                deny_prefix: prefix,
            },
        );
        self.deny_count.fetch_add(1, Ordering::Relaxed);
        self.schedule(now_ms + self.timeouts.deny_idle_ms, key);
    }

    /// Exports what is due at `now_ms`: ended connections (then deleted), active ones
    /// every active timeout, idle ones once, deny connections after their idle timeout
    /// (then deleted), and connections a completed poll no longer saw (then deleted).
    /// `polled` says whether `generation` reflects complete dumps.
    pub fn expire(&self, now_ms: u64, polled: bool, mut out: impl FnMut(Expired<'_>)) -> usize {
        let generation = self.generation.load(Ordering::Acquire);
        let mut exported = 0;
        loop {
            let key = {
                let mut heap = self
                    .expiry
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match heap.peek() {
                    Some(Reverse((deadline, _))) if *deadline <= now_ms => {}
                    _ => break,
                }
                match heap.pop() {
                    Some(Reverse((_, key))) => key,
                    None => break,
                }
            };
            let Some(mut entry) = self.map.get_mut(&key) else {
                continue;
            };
            let c = &mut *entry;
            let t = self.timeouts;
            // A connection two polls have not seen is gone from conntrack.
            let gone = polled
                && c.flags & flags::DENY == 0
                && generation.wrapping_sub(c.seen_generation) >= 2;
            if gone {
                c.flags |= flags::DYING;
            }
            let mut emit = |c: &mut Connection, reason: EndReason| {
                let delta = c.counters.since(&c.exported);
                out(Expired {
                    key: &key,
                    connection: c,
                    reason,
                    delta,
                    end_ms: now_ms,
                });
                c.exported = c.counters;
                c.last_export_ms = now_ms;
                exported += 1;
            };
            let next = if c.flags & flags::ENDED != 0 {
                // Reported already: forget it once conntrack has, else look again later.
                if gone { None } else { Some(now_ms + t.idle_ms) }
            } else if c.flags & flags::DYING != 0 {
                // The final record, with whatever was counted since the last export.
                emit(c, EndReason::EndOfFlow);
                c.flags |= flags::ENDED;
                if gone { None } else { Some(now_ms + t.idle_ms) }
            } else if c.flags & flags::DENY != 0 {
                if now_ms >= c.last_change_ms + t.deny_idle_ms {
                    emit(c, EndReason::IdleTimeout);
                    None
                } else {
                    Some(c.last_change_ms + t.deny_idle_ms)
                }
            } else if c.flags & flags::IDLE == 0 && now_ms >= c.last_change_ms + t.idle_ms {
                emit(c, EndReason::IdleTimeout);
                c.flags |= flags::IDLE;
                Some(now_ms + t.idle_ms)
            } else if c.flags & flags::IDLE == 0 && now_ms >= c.last_export_ms + t.active_ms {
                emit(c, EndReason::ActiveTimeout);
                Some((now_ms + t.active_ms).min(c.last_change_ms + t.idle_ms))
            } else if c.flags & flags::IDLE != 0 {
                // Idle and already reported: look again later (it may resume or vanish).
                Some(now_ms + t.idle_ms)
            } else {
                Some((c.last_export_ms + t.active_ms).min(c.last_change_ms + t.idle_ms))
            };
            drop(entry);
            match next {
                Some(deadline) => self.schedule(deadline.max(now_ms + 1), key),
                None => {
                    if let Some((_, removed)) = self.map.remove(&key)
                        && removed.flags & flags::DENY != 0
                    {
                        self.deny_count.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        exported
    }

    /// Exports every connection with flowEndReason 4 (forced end) and empties the store:
    /// the shutdown flush, so a restart loses no counted bytes.
    pub fn drain(&self, now_ms: u64, mut out: impl FnMut(Expired<'_>)) -> usize {
        let mut exported = 0;
        for mut entry in self.map.iter_mut() {
            let key = *entry.key();
            let c = entry.value_mut();
            if c.flags & flags::ENDED != 0 {
                continue;
            }
            let delta = c.counters.since(&c.exported);
            out(Expired {
                key: &key,
                connection: c,
                reason: EndReason::ForcedEnd,
                delta,
                end_ms: now_ms,
            });
            c.exported = c.counters;
            exported += 1;
        }
        self.map.clear();
        self.deny_count.store(0, Ordering::Relaxed);
        self.expiry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        exported
    }
}
