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

    /// The state mixed once more (MurmurHash3's 64-bit finaliser): a multiply carries low
    /// bits upward only, so without this the low bits (a hash table's bucket) would ignore
    /// the high half of the last word (an IPv4 destination) and the upper bits of the
    /// first (the ports).
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    /// The buckets (low 8 bits of the hash) 256 keys fall in.
    fn buckets(keys: impl Iterator<Item = ConnKey>) -> usize {
        keys.map(|key| FxBuild.hash_one(key) & 0xff)
            .collect::<HashSet<_>>()
            .len()
    }

    fn key(destination: [u8; 4], source_port: u16, destination_port: u16) -> ConnKey {
        ConnKey::new(
            0,
            17,
            (IpAddr::from([10, 0, 0, 1]), IpAddr::from(destination)),
            (source_port, destination_port),
        )
    }

    #[test]
    fn keys_that_differ_in_one_field_spread_over_the_buckets() {
        // Random placement of 256 keys in 256 buckets fills about 162.
        let by_destination = buckets((0..=255).map(|d| key([10, 96, 0, d], 5353, 53)));
        let by_source_port = buckets((0..256).map(|p| key([10, 96, 0, 10], 40_000 + p, 53)));
        let by_destination_port = buckets((0..256).map(|p| key([10, 96, 0, 10], 5353, 1000 + p)));
        for (what, count) in [
            ("destination", by_destination),
            ("source port", by_source_port),
            ("destination port", by_destination_port),
        ] {
            assert!(count > 120, "{what}: 256 keys in {count} buckets");
        }
    }

    #[test]
    fn equal_keys_hash_equal() {
        let a = key([10, 96, 0, 10], 5353, 53);
        assert_eq!(
            FxBuild.hash_one(a),
            FxBuild.hash_one(key([10, 96, 0, 10], 5353, 53))
        );
        assert_ne!(
            FxBuild.hash_one(a),
            FxBuild.hash_one(key([10, 96, 0, 11], 5353, 53))
        );
    }
}
