//! The key of a tracked connection: zone and original 5-tuple, 40 bytes, hashed cheaply.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use crate::net::{from_mapped, to_mapped};

/// Zone and original-direction 5-tuple. Addresses are stored as 16 bytes (IPv4 mapped)
/// so the key has one fixed size for both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    pub zone: u16,
    pub protocol: u8,
    pub ipv6: bool,
    pub source_port: u16,
    pub destination_port: u16,
    pub source: [u8; 16],
    pub destination: [u8; 16],
}

/// The ports of a flow as conntrack tells flows apart: ICMP's echo id stands for the
/// source port and its type and code for the destination port.
pub fn flow_ports(
    protocol: u8,
    (source_port, destination_port): (u16, u16),
    (icmp_type, icmp_code, icmp_id): (u8, u8, u16),
) -> (u16, u16) {
    if matches!(protocol, 1 | 58) {
        (icmp_id, u16::from_be_bytes([icmp_type, icmp_code]))
    } else {
        (source_port, destination_port)
    }
}

impl std::hash::Hash for ConnKey {
    /// Five words: the small fields packed into one, then the two addresses (a derived
    /// hash takes eleven rounds, with the arrays' length prefixes; the hash is on the
    /// path of every update).
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let small = u64::from(self.zone)
            | u64::from(self.protocol) << 16
            | u64::from(self.ipv6) << 24
            | u64::from(self.source_port) << 32
            | u64::from(self.destination_port) << 48;
        state.write_u64(small);
        for address in [&self.source, &self.destination] {
            let (high, low) = address.split_at(8);
            state.write_u64(u64::from_ne_bytes(high.try_into().expect("8 bytes")));
            state.write_u64(u64::from_ne_bytes(low.try_into().expect("8 bytes")));
        }
    }
}

impl ConnKey {
    /// The key of a flow in `zone` (ports as [`flow_ports`] gives them).
    pub fn new(
        zone: u16,
        protocol: u8,
        (source, destination): (IpAddr, IpAddr),
        (source_port, destination_port): (u16, u16),
    ) -> Self {
        Self {
            zone,
            protocol,
            ipv6: source.is_ipv6(),
            source_port,
            destination_port,
            source: to_mapped(source),
            destination: to_mapped(destination),
        }
    }

    /// Source address.
    pub fn source_addr(&self) -> IpAddr {
        from_mapped(self.source, self.ipv6)
    }

    /// Destination address.
    pub fn destination_addr(&self) -> IpAddr {
        from_mapped(self.destination, self.ipv6)
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
