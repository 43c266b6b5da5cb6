//! One conntrack entry parsed from a ctnetlink message into a caller-owned struct.
//! Parsing never allocates: strings are not involved and every field is fixed-size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::attributes::*;
use crate::netlink::{Attribute, Attributes, NFGEN_LEN, ParseError};
use crate::store::{ConnKey, Counters as StoreCounters, Observation, Observed, Reply, flow_ports};

/// Conntrack status bit: the entry is being destroyed.
pub const IPS_DYING: u32 = 1 << 9;
/// Conntrack status bit: the entry was confirmed (left the unconfirmed list).
pub const IPS_CONFIRMED: u32 = 1 << 3;

/// One direction's addresses and protocol identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub icmp_id: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl Tuple {
    /// The store's key of this tuple in `zone`.
    #[inline]
    pub fn key(&self, zone: u16) -> ConnKey {
        ConnKey::new(
            zone,
            self.protocol,
            (self.source, self.destination),
            flow_ports(
                self.protocol,
                (self.source_port, self.destination_port),
                (self.icmp_type, self.icmp_code, self.icmp_id),
            ),
        )
    }
}

impl Default for Tuple {
    fn default() -> Self {
        Self {
            source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            destination: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            protocol: 0,
            source_port: 0,
            destination_port: 0,
            icmp_id: 0,
            icmp_type: 0,
            icmp_code: 0,
        }
    }
}

/// Packet and byte counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// One conntrack entry. Optional parts are `None` when the kernel did not send them
/// (e.g. counters without `nf_conntrack_acct`, timestamps without `nf_conntrack_timestamp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackEntry {
    /// Address family (AF_INET 2 or AF_INET6 10).
    pub family: u8,
    pub original: Tuple,
    pub reply: Tuple,
    pub original_counters: Option<Counters>,
    pub reply_counters: Option<Counters>,
    pub zone: u16,
    pub mark: u32,
    pub status: u32,
    /// TCP state (see [`tcp_state_name`]).
    pub tcp_state: Option<u8>,
    /// SCTP state number.
    pub sctp_state: Option<u8>,
    /// Seconds until the entry times out.
    pub timeout: Option<u32>,
    pub id: u32,
    pub use_count: u32,
    /// Start and stop times, nanoseconds since the Unix epoch.
    pub start_ns: Option<u64>,
    pub stop_ns: Option<u64>,
    /// Connection labels bitmap (first 16 bytes).
    pub labels: Option<[u8; 16]>,
}

impl ConntrackEntry {
    /// True when the DYING status bit is set.
    pub fn is_dying(&self) -> bool {
        self.status & IPS_DYING != 0
    }
}

/// The name conntrack-tools uses for a TCP state number.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "UNKNOWN",
    }
}

fn parse_tuple(attr: &Attribute<'_>, tuple: &mut Tuple, zone: &mut u16) -> Result<(), ParseError> {
    for part in attr.attributes() {
        let part = part?;
        match part.kind {
            CTA_TUPLE_IP => {
                for ip in part.attributes() {
                    let ip = ip?;
                    match ip.kind {
                        CTA_IP_V4_SRC => tuple.source = IpAddr::V4(Ipv4Addr::from(ip.bytes4()?)),
                        CTA_IP_V4_DST => {
                            tuple.destination = IpAddr::V4(Ipv4Addr::from(ip.bytes4()?))
                        }
                        CTA_IP_V6_SRC => tuple.source = IpAddr::V6(Ipv6Addr::from(ip.bytes16()?)),
                        CTA_IP_V6_DST => {
                            tuple.destination = IpAddr::V6(Ipv6Addr::from(ip.bytes16()?))
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for proto in part.attributes() {
                    let proto = proto?;
                    match proto.kind {
                        CTA_PROTO_NUM => tuple.protocol = proto.u8()?,
                        CTA_PROTO_SRC_PORT => tuple.source_port = proto.be16()?,
                        CTA_PROTO_DST_PORT => tuple.destination_port = proto.be16()?,
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => tuple.icmp_id = proto.be16()?,
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            tuple.icmp_type = proto.u8()?
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            tuple.icmp_code = proto.u8()?
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => *zone = part.be16()?,
            _ => {}
        }
    }
    Ok(())
}

fn parse_counters(attr: &Attribute<'_>) -> Result<Counters, ParseError> {
    let mut counters = Counters::default();
    for part in attr.attributes() {
        let part = part?;
        match part.kind {
            CTA_COUNTERS_PACKETS => counters.packets = part.be64()?,
            CTA_COUNTERS_BYTES => counters.bytes = part.be64()?,
            CTA_COUNTERS32_PACKETS => counters.packets = u64::from(part.be32()?),
            CTA_COUNTERS32_BYTES => counters.bytes = u64::from(part.be32()?),
            _ => {}
        }
    }
    Ok(counters)
}

/// Parses the payload of an `IPCTNL_MSG_CT_NEW` message (nfgenmsg and attributes) into
/// `entry`, overwriting every field. Unknown attributes are skipped.
pub fn parse_entry(payload: &[u8], entry: &mut ConntrackEntry) -> Result<(), ParseError> {
    if payload.len() < NFGEN_LEN {
        return Err(ParseError::Truncated {
            needed: NFGEN_LEN,
            available: payload.len(),
        });
    }
    *entry = ConntrackEntry {
        family: payload[0],
        ..ConntrackEntry::default()
    };
    let mut tuple_zone = 0u16;
    for attr in Attributes::new(&payload[NFGEN_LEN..]) {
        let attr = attr?;
        match attr.kind {
            CTA_TUPLE_ORIG => parse_tuple(&attr, &mut entry.original, &mut tuple_zone)?,
            CTA_TUPLE_REPLY => parse_tuple(&attr, &mut entry.reply, &mut tuple_zone)?,
            CTA_STATUS => entry.status = attr.be32()?,
            CTA_PROTOINFO => {
                for info in attr.attributes() {
                    let info = info?;
                    let wanted = match info.kind {
                        CTA_PROTOINFO_TCP => CTA_PROTOINFO_TCP_STATE,
                        CTA_PROTOINFO_SCTP => CTA_PROTOINFO_SCTP_STATE,
                        _ => continue,
                    };
                    for field in info.attributes() {
                        let field = field?;
                        if field.kind == wanted {
                            let state = Some(field.u8()?);
                            if info.kind == CTA_PROTOINFO_TCP {
                                entry.tcp_state = state;
                            } else {
                                entry.sctp_state = state;
                            }
                        }
                    }
                }
            }
            CTA_TIMEOUT => entry.timeout = Some(attr.be32()?),
            CTA_MARK => entry.mark = attr.be32()?,
            CTA_COUNTERS_ORIG => entry.original_counters = Some(parse_counters(&attr)?),
            CTA_COUNTERS_REPLY => entry.reply_counters = Some(parse_counters(&attr)?),
            CTA_USE => entry.use_count = attr.be32()?,
            CTA_ID => entry.id = attr.be32()?,
            CTA_ZONE => entry.zone = attr.be16()?,
            CTA_TIMESTAMP => {
                for part in attr.attributes() {
                    let part = part?;
                    match part.kind {
                        CTA_TIMESTAMP_START => entry.start_ns = Some(part.be64()?),
                        CTA_TIMESTAMP_STOP => entry.stop_ns = Some(part.be64()?),
                        _ => {}
                    }
                }
            }
            CTA_LABELS => {
                let mut labels = [0u8; 16];
                let n = attr.payload.len().min(16);
                labels[..n].copy_from_slice(&attr.payload[..n]);
                entry.labels = Some(labels);
            }
            _ => {}
        }
    }
    if entry.zone == 0 {
        entry.zone = tuple_zone;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::RequestBuilder;

    /// Builds the message the kernel would send for a TCP entry, with our request builder.
    fn tcp_entry_message() -> Vec<u8> {
        let mut buf = Vec::new();
        let mut m = RequestBuilder::new(&mut buf, 0x0100, 0, 1, libc::AF_INET as u8);
        for (kind, (src, dst, sport, dport)) in [
            (
                CTA_TUPLE_ORIG,
                ([10, 0, 0, 1], [10, 0, 0, 2], 40000u16, 80u16),
            ),
            (CTA_TUPLE_REPLY, ([10, 0, 0, 2], [10, 0, 0, 1], 80, 40000)),
        ] {
            m.begin_nested(kind);
            m.begin_nested(CTA_TUPLE_IP)
                .attribute(CTA_IP_V4_SRC, &src)
                .attribute(CTA_IP_V4_DST, &dst)
                .end_nested();
            m.begin_nested(CTA_TUPLE_PROTO)
                .attribute(CTA_PROTO_NUM, &[6])
                .attribute(CTA_PROTO_SRC_PORT, &sport.to_be_bytes())
                .attribute(CTA_PROTO_DST_PORT, &dport.to_be_bytes())
                .end_nested();
            m.end_nested();
        }
        m.begin_nested(CTA_COUNTERS_ORIG)
            .attribute(CTA_COUNTERS_PACKETS, &7u64.to_be_bytes())
            .attribute(CTA_COUNTERS_BYTES, &700u64.to_be_bytes())
            .end_nested();
        m.begin_nested(CTA_PROTOINFO);
        m.begin_nested(CTA_PROTOINFO_TCP)
            .attribute(CTA_PROTOINFO_TCP_STATE, &[3])
            .end_nested();
        m.end_nested();
        m.attribute(CTA_ZONE, &9u16.to_be_bytes());
        m.attribute(CTA_MARK, &0x42u32.to_be_bytes());
        m.attribute(CTA_STATUS, &(IPS_CONFIRMED | IPS_DYING).to_be_bytes());
        m.attribute(999, &[1, 2, 3]); // unknown: skipped
        m.attribute(CTA_ID, &12345u32.to_be_bytes());
        m.finish().to_vec()
    }

    #[test]
    fn parses_tuples_counters_and_scalars() {
        let message = tcp_entry_message();
        let mut entry = ConntrackEntry::default();
        parse_entry(&message[16..], &mut entry).unwrap();
        assert_eq!(entry.family, 2);
        assert_eq!(entry.original.source, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(entry.original.destination_port, 80);
        assert_eq!(entry.reply.source_port, 80);
        assert_eq!(entry.original.protocol, 6);
        assert_eq!(
            entry.original_counters,
            Some(Counters {
                packets: 7,
                bytes: 700
            })
        );
        assert_eq!(entry.reply_counters, None);
        assert_eq!(entry.tcp_state, Some(3));
        assert_eq!((entry.zone, entry.mark, entry.id), (9, 0x42, 12345));
        assert!(entry.is_dying());
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let message = tcp_entry_message();
        let mut entry = ConntrackEntry::default();
        for cut in 0..message.len() - 16 {
            let _ = parse_entry(&message[16..16 + cut], &mut entry);
        }
        assert!(parse_entry(&[2, 0], &mut entry).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut entry = ConntrackEntry::default();
            let _ = parse_entry(&bytes, &mut entry);
            for (_, payload) in crate::netlink::Messages::new(&bytes).flatten() {
                let _ = parse_entry(payload, &mut entry);
            }
        }
    }
}

/// What the store reads of an entry; conntrack's TCP state numbers are read here:
/// TIME_WAIT (7) and CLOSE (8) end a connection, SYN_SENT to ESTABLISHED (1 to 3) only
/// begin one.
impl Observed for ConntrackEntry {
    #[inline]
    fn key(&self) -> ConnKey {
        self.original.key(self.zone)
    }
    #[inline]
    fn conntrack_id(&self) -> u32 {
        self.id
    }
    #[inline]
    fn start_ms(&self) -> Option<u64> {
        self.start_ns.map(|ns| ns / 1_000_000)
    }
    #[inline]
    fn counters(&self) -> Option<StoreCounters> {
        self.original_counters.map(|original| {
            let reply = self.reply_counters.unwrap_or_default();
            StoreCounters {
                packets: original.packets,
                bytes: original.bytes,
                reply_packets: reply.packets,
                reply_bytes: reply.bytes,
            }
        })
    }
    #[inline]
    fn tcp_state(&self) -> Option<u8> {
        self.tcp_state
    }
    #[inline]
    fn ended(&self) -> bool {
        self.is_dying() || matches!(self.tcp_state, Some(7 | 8))
    }
    #[inline]
    fn opening(&self) -> bool {
        matches!(self.tcp_state, Some(1..=3))
    }
    #[inline]
    fn reply(&self) -> Reply {
        Reply {
            source: crate::net::to_mapped(self.reply.source),
            source_port: self.reply.source_port,
            destination: crate::net::to_mapped(self.reply.destination),
            destination_port: self.reply.destination_port,
        }
    }
}

impl From<&ConntrackEntry> for Observation {
    /// The entry as a value of its own, for what keeps observations apart from their
    /// entries (tests, tools).
    fn from(entry: &ConntrackEntry) -> Self {
        let reply = entry.reply();
        Observation {
            key: entry.key(),
            conntrack_id: entry.id,
            start_ms: entry.start_ms(),
            counters: Observed::counters(entry),
            reply_source: reply.source,
            reply_source_port: reply.source_port,
            reply_destination: reply.destination,
            reply_destination_port: reply.destination_port,
            tcp_state: entry.tcp_state,
            ended: entry.ended(),
            opening: entry.opening(),
        }
    }
}
