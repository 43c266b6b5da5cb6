//! A tracked connection and what goes in and out of the store: observations and denials
//! from the sources, due exports to the record builder.

use std::any::Any;
use std::sync::Arc;

use super::ConnKey;

/// flowEndReason values (RFC 5102).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    IdleTimeout = 1,
    ActiveTimeout = 2,
    EndOfFlow = 3,
    ForcedEnd = 4,
}

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    /// A conntrack entry.
    Conntrack,
    /// Packets a policy denied on their way in (logged on input, prerouting or forward).
    DeniedIngress,
    /// Packets a policy denied on their way out (logged on output or postrouting).
    DeniedEgress,
}

impl Origin {
    /// Built from denied packets rather than conntrack.
    pub fn is_denied(self) -> bool {
        self != Origin::Conntrack
    }
}

/// How far a connection's exports have gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Exported every active timeout while it changes.
    Active,
    /// Exported once for its idle timeout; not again until it changes.
    Idle,
    /// Ended (DESTROY, TIME_WAIT or CLOSE, the dying bit, gone from two dumps): its final
    /// record is due.
    Ending,
    /// Its final record was exported. Kept, exporting nothing, until conntrack drops the
    /// connection, so that a TIME_WAIT entry seen by later dumps is not counted again.
    Ended,
}

impl Phase {
    /// Ending or ended.
    pub fn has_ended(self) -> bool {
        self >= Phase::Ending
    }
}

/// What a source saw of a conntrack connection (a dump entry, an event, a get), in the
/// store's terms: the sources say what their numbers mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub key: ConnKey,
    pub conntrack_id: u32,
    /// The kernel's start time (nf_conntrack_timestamp), milliseconds since the epoch.
    pub start_ms: Option<u64>,
    /// Counters, when the entry carries them (accounting on; not an UPDATE event).
    pub counters: Option<Counters>,
    /// Source of the reply direction: the real server behind a DNAT.
    pub reply_source: [u8; 16],
    pub reply_source_port: u16,
    /// Destination of the reply direction: the address and port a SNAT (kube-proxy's
    /// masquerade) gave the client, else the original source.
    pub reply_destination: [u8; 16],
    pub reply_destination_port: u16,
    /// TCP state, as conntrack numbers it (records name it).
    pub tcp_state: Option<u8>,
    /// The connection has ended: these are its final counters.
    pub ended: bool,
    /// In a state only a new connection is in (a TCP handshake or its first exchange).
    pub opening: bool,
}

/// What the store reads of an observation, field by field, once it has found the
/// connection: a source hands its own parsed entry and the store takes what it needs, with
/// no copy made on the update path (building an [`Observation`] before the shard's lock
/// made an update of a known connection half again as slow: the lock waited for the
/// copy's stores). The sources say what their numbers mean.
pub trait Observed {
    fn key(&self) -> ConnKey;
    fn conntrack_id(&self) -> u32;
    /// The kernel's start time (nf_conntrack_timestamp), milliseconds since the epoch.
    fn start_ms(&self) -> Option<u64>;
    /// Counters, when the entry carries them (accounting on; not an UPDATE event).
    fn counters(&self) -> Option<Counters>;
    /// TCP state, as conntrack numbers it (records name it).
    fn tcp_state(&self) -> Option<u8>;
    /// The connection has ended: these are its final counters.
    fn ended(&self) -> bool;
    /// In a state only a new connection is in (a TCP handshake or its first exchange).
    fn opening(&self) -> bool;
    /// The reply direction, read for a connection seen for the first time: its source
    /// (the real server behind a DNAT) and destination (the address a SNAT gave the
    /// client, else the original source), with their ports.
    fn reply(&self) -> Reply;
}

/// The reply direction of an observed connection (IPv4 mapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub source: [u8; 16],
    pub source_port: u16,
    pub destination: [u8; 16],
    pub destination_port: u16,
}

impl Observed for Observation {
    #[inline]
    fn key(&self) -> ConnKey {
        self.key
    }
    #[inline]
    fn conntrack_id(&self) -> u32 {
        self.conntrack_id
    }
    #[inline]
    fn start_ms(&self) -> Option<u64> {
        self.start_ms
    }
    #[inline]
    fn counters(&self) -> Option<Counters> {
        self.counters
    }
    #[inline]
    fn tcp_state(&self) -> Option<u8> {
        self.tcp_state
    }
    #[inline]
    fn ended(&self) -> bool {
        self.ended
    }
    #[inline]
    fn opening(&self) -> bool {
        self.opening
    }
    #[inline]
    fn reply(&self) -> Reply {
        Reply {
            source: self.reply_source,
            source_port: self.reply_source_port,
            destination: self.reply_destination,
            destination_port: self.reply_destination_port,
        }
    }
}

/// An observation through a reference, shared or not.
macro_rules! observed_through {
    ($($reference:ty),*) => {$(
        impl<T: Observed + ?Sized> Observed for $reference {
            #[inline]
            fn key(&self) -> ConnKey {
                (**self).key()
            }
            #[inline]
            fn conntrack_id(&self) -> u32 {
                (**self).conntrack_id()
            }
            #[inline]
            fn start_ms(&self) -> Option<u64> {
                (**self).start_ms()
            }
            #[inline]
            fn counters(&self) -> Option<Counters> {
                (**self).counters()
            }
            #[inline]
            fn tcp_state(&self) -> Option<u8> {
                (**self).tcp_state()
            }
            #[inline]
            fn ended(&self) -> bool {
                (**self).ended()
            }
            #[inline]
            fn opening(&self) -> bool {
                (**self).opening()
            }
            #[inline]
            fn reply(&self) -> Reply {
                (**self).reply()
            }
        }
    )*};
}
observed_through!(&T, &mut T);

/// An observation of a connection's end: what `O` saw, with its counters final.
pub(super) struct Ending<O>(pub O);

impl<O: Observed> Observed for Ending<O> {
    #[inline]
    fn key(&self) -> ConnKey {
        self.0.key()
    }
    #[inline]
    fn conntrack_id(&self) -> u32 {
        self.0.conntrack_id()
    }
    #[inline]
    fn start_ms(&self) -> Option<u64> {
        self.0.start_ms()
    }
    #[inline]
    fn counters(&self) -> Option<Counters> {
        self.0.counters()
    }
    #[inline]
    fn tcp_state(&self) -> Option<u8> {
        self.0.tcp_state()
    }
    #[inline]
    fn ended(&self) -> bool {
        true
    }
    #[inline]
    fn opening(&self) -> bool {
        self.0.opening()
    }
    #[inline]
    fn reply(&self) -> Reply {
        self.0.reply()
    }
}

/// One denied packet, in the store's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial<'a> {
    pub key: ConnKey,
    pub origin: Origin,
    /// Length of the IP packet.
    pub bytes: u64,
    /// The NFLOG prefix (which policy and rule).
    pub prefix: &'a str,
    /// When the kernel logged it, milliseconds since the epoch.
    pub logged_ms: Option<u64>,
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

/// One tracked connection (128 bytes, 5 of them padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// Source of the reply direction: the real server behind a DNAT (service) address.
    pub reply_source: [u8; 16],
    pub reply_source_port: u16,
    /// The SNAT address (interned: [`crate::store::ConnectionStore::snat_address`]; 0:
    /// no SNAT) and port, where the source was translated (kube-proxy's masquerade).
    pub snat_address: u16,
    pub snat_port: u16,
    pub tcp_state: u8,
    pub origin: Origin,
    pub phase: Phase,
    /// Exported with flowEndReason 4 by the shutdown flush ([`ConnectionStore::force_end`]).
    pub flushed: bool,
    /// `start_ms` is the kernel's own start timestamp (nf_conntrack_timestamp), not the
    /// time the agent first saw the entry: it tells two connections of one tuple apart.
    pub kernel_start: bool,
    pub conntrack_id: u32,
    /// Last poll generation whose dump contained the connection.
    pub seen_generation: u32,
    /// Interned deny log prefix (0: none); see [`ConnectionStore::prefix`].
    pub deny_prefix: u32,
    pub counters: Counters,
    /// Counters at the last export, for deltas.
    pub exported: Counters,
    /// Milliseconds since the Unix epoch.
    pub start_ms: u64,
    pub last_change_ms: u64,
    pub last_export_ms: u64,
}

impl Connection {
    /// The destination a record reports, and whether it was translated: behind a DNAT (a
    /// Service) the real destination is the reply's source. Denied connections never are.
    pub fn reported_destination(&self, key: &ConnKey) -> (std::net::IpAddr, bool) {
        let original = key.destination_addr();
        let reply_source = crate::net::from_mapped(self.reply_source, key.ipv6);
        if reply_source != original && !self.origin.is_denied() {
            (reply_source, true)
        } else {
            (original, false)
        }
    }
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

/// What the record builder learned about a connection (its owners, its pods), kept with
/// the connection so that later exports reuse it. The store only carries it: a new
/// connection of the same tuple starts without one.
#[derive(Clone, Default)]
pub struct Annotation(Option<Arc<dyn Any + Send + Sync>>);

impl Annotation {
    /// An annotation holding `value` (shared, not copied).
    pub fn new(value: Arc<dyn Any + Send + Sync>) -> Self {
        Self(Some(value))
    }

    /// The value, when there is one of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|value| value.downcast_ref())
    }

    /// True when nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl std::fmt::Debug for Annotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Annotation(..)"
        } else {
            "Annotation(none)"
        })
    }
}

/// One due export, copied out of the store so that records are built without its locks
/// ([`ConnectionStore::expire_into`]).
#[derive(Debug, Clone)]
pub struct Due {
    /// The slot and slot generation it was copied from (None: a retired connection, whose
    /// tuple a newer one holds), so that what is learned of it is kept with it and never
    /// with a later connection in the same slot.
    pub(super) slot: Option<(u32, u32)>,
    pub key: ConnKey,
    pub connection: Connection,
    pub annotation: Annotation,
    pub reason: EndReason,
    /// Counters since the previous export.
    pub delta: Counters,
    /// End of the reported interval, milliseconds since the Unix epoch.
    pub end_ms: u64,
}

impl Due {
    /// True when this is the connection's last export (its end, the shutdown flush, a
    /// denial's idle timeout): nothing learned of it now would be used again.
    pub fn is_final(&self) -> bool {
        matches!(self.reason, EndReason::EndOfFlow | EndReason::ForcedEnd)
            || self.connection.origin.is_denied()
    }

    /// The borrowed view the record functions take.
    pub fn expired(&self) -> Expired<'_> {
        Expired {
            key: &self.key,
            connection: &self.connection,
            reason: self.reason,
            delta: self.delta,
            end_ms: self.end_ms,
        }
    }
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub active_ms: u64,
    pub idle_ms: u64,
    pub deny_idle_ms: u64,
}
