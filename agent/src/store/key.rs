//! The key of a tracked connection: zone and original 5-tuple, 40 bytes, hashed cheaply.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::conntrack::Tuple;
use crate::deny::PacketTuple;

/// Zone and original-direction 5-tuple. Addresses are stored as 16 bytes (IPv4 mapped)
/// so the key has one fixed size for both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub zone: u16,
    pub protocol: u8,
    pub ipv6: bool,
    pub source_port: u16,
    pub destination_port: u16,
    pub source: [u8; 16],
    pub destination: [u8; 16],
}

fn octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn address(octets: [u8; 16], ipv6: bool) -> IpAddr {
    let v6 = Ipv6Addr::from(octets);
    if ipv6 {
        IpAddr::V6(v6)
    } else {
        IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }
}

impl ConnKey {
    /// The key of a conntrack entry's original tuple in `zone`. ICMP uses the echo id as
    /// source port and type/code as destination port, as conntrack distinguishes them.
    pub fn from_tuple(zone: u16, tuple: &Tuple) -> Self {
        let icmp = matches!(tuple.protocol, 1 | 58);
        Self {
            zone,
            protocol: tuple.protocol,
            ipv6: tuple.source.is_ipv6(),
            source_port: if icmp {
                tuple.icmp_id
            } else {
                tuple.source_port
            },
            destination_port: if icmp {
                u16::from_be_bytes([tuple.icmp_type, tuple.icmp_code])
            } else {
                tuple.destination_port
            },
            source: octets(tuple.source),
            destination: octets(tuple.destination),
        }
    }

    /// The key of a denied packet.
    pub fn from_packet(tuple: &PacketTuple) -> Self {
        let icmp = matches!(tuple.protocol, 1 | 58);
        Self {
            zone: 0,
            protocol: tuple.protocol,
            ipv6: tuple.source.is_ipv6(),
            source_port: if icmp {
                tuple.icmp_id
            } else {
                tuple.source_port
            },
            destination_port: if icmp {
                u16::from_be_bytes([tuple.icmp_type, tuple.icmp_code])
            } else {
                tuple.destination_port
            },
            source: octets(tuple.source),
            destination: octets(tuple.destination),
        }
    }

    /// Source address.
    pub fn source_addr(&self) -> IpAddr {
        address(self.source, self.ipv6)
    }

    /// Destination address.
    pub fn destination_addr(&self) -> IpAddr {
        address(self.destination, self.ipv6)
    }
}

/// FxHash-style hasher: the key is not attacker-chosen in a way that matters here
/// (conntrack tuples of the node's own traffic), and SipHash would dominate an update.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(SEED);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Builds [`FxHasher`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxBuild;

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher::default()
    }
}
