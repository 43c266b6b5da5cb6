//! The headers of a logged packet: enough of IPv4/IPv6 and TCP/UDP/SCTP/ICMP to name
//! the connection a policy denied.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::store::{ConnKey, flow_ports};

/// The 5-tuple (ICMP: type, code and id) and IP length of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketTuple {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub icmp_id: u16,
    /// Length of the whole IP packet (header included) as the header states it.
    pub ip_length: u16,
}

impl PacketTuple {
    /// The store's key of this packet's flow (zone 0: NFLOG does not say).
    pub fn key(&self) -> ConnKey {
        ConnKey::new(
            0,
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

/// Why the copied bytes are not a packet we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Not IPv4 or IPv6.
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownVersion(u8),
    /// Shorter than the headers it announces.
    #[error("packet shorter than its headers")]
    Truncated,
}

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const UDPLITE: u8 = 136;

/// Reads the tuple of an IP packet copied by NFLOG (the copy may stop after the headers).
pub fn parse_packet(bytes: &[u8]) -> Result<PacketTuple, PacketError> {
    let first = *bytes.first().ok_or(PacketError::Truncated)?;
    let (source, destination, mut protocol, ip_length, mut l4) = match first >> 4 {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            if bytes.len() < 20 || header_len < 20 || bytes.len() < header_len {
                return Err(PacketError::Truncated);
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    bytes[at],
                    bytes[at + 1],
                    bytes[at + 2],
                    bytes[at + 3],
                ))
            };
            (
                ip(12),
                ip(16),
                bytes[9],
                u16::from_be_bytes([bytes[2], bytes[3]]),
                &bytes[header_len..],
            )
        }
        6 => {
            if bytes.len() < 40 {
                return Err(PacketError::Truncated);
            }
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let payload_len = u16::from_be_bytes([bytes[4], bytes[5]]);
            (
                ip(8),
                ip(24),
                bytes[6],
                payload_len.saturating_add(40),
                &bytes[40..],
            )
        }
        other => return Err(PacketError::UnknownVersion(other)),
    };
    // Skip IPv6 extension headers (hop-by-hop, routing, destination options, fragment).
    if source.is_ipv6() {
        for _ in 0..8 {
            match protocol {
                0 | 43 | 60 => {
                    if l4.len() < 8 {
                        return Err(PacketError::Truncated);
                    }
                    let len = (usize::from(l4[1]) + 1) * 8;
                    protocol = l4[0];
                    l4 = l4.get(len..).ok_or(PacketError::Truncated)?;
                }
                44 => {
                    if l4.len() < 8 {
                        return Err(PacketError::Truncated);
                    }
                    protocol = l4[0];
                    l4 = &l4[8..];
                }
                _ => break,
            }
        }
    }
    let mut tuple = PacketTuple {
        source,
        destination,
        protocol,
        source_port: 0,
        destination_port: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        ip_length,
    };
    match protocol {
        TCP | UDP | SCTP | UDPLITE => {
            if l4.len() < 4 {
                return Err(PacketError::Truncated);
            }
            tuple.source_port = u16::from_be_bytes([l4[0], l4[1]]);
            tuple.destination_port = u16::from_be_bytes([l4[2], l4[3]]);
        }
        ICMP | ICMPV6 => {
            if l4.len() < 2 {
                return Err(PacketError::Truncated);
            }
            tuple.icmp_type = l4[0];
            tuple.icmp_code = l4[1];
            if l4.len() >= 6 {
                tuple.icmp_id = u16::from_be_bytes([l4[4], l4[5]]);
            }
        }
        _ => {}
    }
    Ok(tuple)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_syn() {
        let mut packet = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, // header up to checksum
            10, 200, 0, 1, 10, 200, 0, 2, // addresses
        ];
        packet.extend_from_slice(&[0x9c, 0x40, 0x1b, 0x58, 0, 0, 0, 0]);
        let tuple = parse_packet(&packet).unwrap();
        assert_eq!(tuple.source, IpAddr::from([10, 200, 0, 1]));
        assert_eq!((tuple.source_port, tuple.destination_port), (40000, 7000));
        assert_eq!((tuple.protocol, tuple.ip_length), (6, 60));
    }

    #[test]
    fn ipv6_udp_after_a_hop_by_hop_header() {
        let mut packet = vec![0x60, 0, 0, 0, 0, 24, 0, 64];
        packet.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        packet.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        packet.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // hop-by-hop, next UDP
        packet.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 16, 0, 0]);
        let tuple = parse_packet(&packet).unwrap();
        assert_eq!(tuple.protocol, 17);
        assert_eq!((tuple.source_port, tuple.destination_port), (5000, 53));
        assert_eq!(tuple.ip_length, 64);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(parse_packet(&[]), Err(PacketError::Truncated));
        assert_eq!(
            parse_packet(&[0x55, 0]),
            Err(PacketError::UnknownVersion(5))
        );
        assert_eq!(parse_packet(&[0x45; 10]), Err(PacketError::Truncated));
        for len in 0..60 {
            let _ = parse_packet(&[0x46; 60][..len]);
            let _ = parse_packet(&[0x60; 60][..len]);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn parsing_arbitrary_packets_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_packet(&bytes);
        }
    }
}
