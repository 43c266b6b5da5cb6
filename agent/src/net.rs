//! Address helpers shared by the store, the records and the enrichment: the 16-byte form
//! that keys store both families in (IPv4 as IPv4-mapped IPv6), and CIDRs, parsed once and
//! matched many times.
//!
//! A CIDR only ever contains addresses of its own family: `0.0.0.0/0` is every IPv4
//! address and no IPv6 one, `::/0` every IPv6 address and no IPv4 one, and an IPv4-mapped
//! IPv6 prefix does not match plain IPv4 addresses. Pod CIDRs of dual-stack clusters come
//! as one prefix per family, so this is what a lookup means.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The 16-byte form of an address: IPv6 as is, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
pub fn to_mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address [`to_mapped`] wrote: IPv6 when `ipv6`, else the IPv4 address inside the
/// mapped form (0.0.0.0 when the octets are not IPv4-mapped).
pub fn from_mapped(octets: [u8; 16], ipv6: bool) -> IpAddr {
    let v6 = Ipv6Addr::from(octets);
    if ipv6 {
        IpAddr::V6(v6)
    } else {
        IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }
}

/// Why a CIDR was refused; the message quotes what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not ADDRESS/PREFIX")]
    NotCidr(String),
    #[error("{0:?} has an invalid address")]
    Address(String),
    #[error("{0:?} has an invalid prefix length")]
    PrefixLength(String),
    #[error("{text:?}: prefix length above {max}")]
    PrefixTooLong { text: String, max: u8 },
}

/// An address prefix such as `10.244.0.0/16` or `fd00:10:244::/56`. Host bits may be set
/// (`10.244.1.5/16` is the same network); they are ignored when matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Bits in an address of the family.
fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The first `len` bits of `addr`, the rest cleared (`len` at most the family's width).
fn network(addr: IpAddr, len: u8) -> u128 {
    let len = u32::from(len);
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a) & u32::MAX.checked_shl(32 - len).unwrap_or(0)),
        IpAddr::V6(a) => u128::from(a) & u128::MAX.checked_shl(128 - len).unwrap_or(0),
    }
}

impl Cidr {
    /// `addr/len`; refused when `len` is longer than the family's addresses.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        let max = width(addr);
        if len > max {
            return Err(CidrError::PrefixTooLong {
                text: format!("{addr}/{len}"),
                max,
            });
        }
        Ok(Self { addr, len })
    }

    /// Parses `ADDRESS/PREFIX` (IPv4 or IPv6).
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| CidrError::NotCidr(text.to_owned()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let len: u8 = len
            .parse()
            .map_err(|_| CidrError::PrefixLength(text.to_owned()))?;
        let max = width(addr);
        if len > max {
            return Err(CidrError::PrefixTooLong {
                text: text.to_owned(),
                max,
            });
        }
        Ok(Self { addr, len })
    }

    /// The address as given (host bits included).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True when `addr` is of the same family and shares the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4()
            && network(addr, self.len) == network(self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        Self::parse(text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The networks of one family and prefix length.
#[derive(Debug, Clone)]
struct Networks {
    ipv6: bool,
    len: u8,
    /// Sorted by network; with how many inserted CIDRs name each.
    networks: Vec<(u128, u32)>,
}

/// A set of CIDRs that answers "is this address in any of them". It is grouped by family
/// and prefix length, so a lookup is one binary search per length in use (a cluster's pod
/// CIDRs share one or two lengths), not one test per CIDR: with thousands of nodes'
/// `spec.podCIDRs` it stays a few dozen comparisons. Lookups do not allocate.
///
/// Inserting the same network twice counts it twice: it stays until removed twice (two
/// nodes may name one network while one of them is being replaced).
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    groups: Vec<Networks>,
}

impl CidrSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no CIDR is in the set.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Distinct networks in the set.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.networks.len()).sum()
    }

    /// Adds a CIDR.
    pub fn insert(&mut self, cidr: Cidr) {
        let ipv6 = cidr.addr.is_ipv6();
        let group = match self
            .groups
            .iter()
            .position(|g| g.ipv6 == ipv6 && g.len == cidr.len)
        {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(Networks {
                    ipv6,
                    len: cidr.len,
                    networks: Vec::new(),
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        let net = network(cidr.addr, cidr.len);
        match group.networks.binary_search_by_key(&net, |(n, _)| *n) {
            Ok(i) => group.networks[i].1 += 1,
            Err(i) => group.networks.insert(i, (net, 1)),
        }
    }

    /// Removes one insertion of a CIDR; false when it was not in the set.
    pub fn remove(&mut self, cidr: Cidr) -> bool {
        let ipv6 = cidr.addr.is_ipv6();
        let Some(g) = self
            .groups
            .iter()
            .position(|g| g.ipv6 == ipv6 && g.len == cidr.len)
        else {
            return false;
        };
        let group = &mut self.groups[g];
        let net = network(cidr.addr, cidr.len);
        let Ok(i) = group.networks.binary_search_by_key(&net, |(n, _)| *n) else {
            return false;
        };
        group.networks[i].1 -= 1;
        if group.networks[i].1 == 0 {
            group.networks.remove(i);
            if group.networks.is_empty() {
                self.groups.swap_remove(g);
            }
        }
        true
    }

    /// True when `addr` is in one of the CIDRs (of its own family).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let ipv6 = addr.is_ipv6();
        self.groups.iter().filter(|g| g.ipv6 == ipv6).any(|g| {
            let net = network(addr, g.len);
            g.networks.binary_search_by_key(&net, |(n, _)| *n).is_ok()
        })
    }
}

impl FromIterator<Cidr> for CidrSet {
    fn from_iter<I: IntoIterator<Item = Cidr>>(cidrs: I) -> Self {
        let mut set = Self::new();
        for cidr in cidrs {
            set.insert(cidr);
        }
        set
    }
}

/// One CPU's conntrack counters (`IPCTNL_MSG_CT_GET_STATS_CPU`), as `conntrack -S`
/// prints them: read by the conntrack source, shown by the node's health metrics and
/// `flowex diagnose`. The kernel keeps them in 32 bits: they wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub cpu: u16,
    pub found: u32,
    pub invalid: u32,
    pub insert: u32,
    pub insert_failed: u32,
    pub drop: u32,
    pub early_drop: u32,
    pub error: u32,
    pub search_restart: u32,
    pub clash_resolve: u32,
    pub chain_too_long: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidr(text: &str) -> Cidr {
        Cidr::parse(text).unwrap()
    }

    fn set(cidrs: &[&str]) -> CidrSet {
        cidrs.iter().map(|t| cidr(t)).collect()
    }

    #[test]
    fn mapped_round_trips_both_families() {
        assert_eq!(
            to_mapped(ip("10.244.1.5")),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 1, 5]
        );
        assert_eq!(to_mapped(ip("fd00::1"))[0], 0xfd);
        for text in ["10.244.1.5", "0.0.0.0", "255.255.255.255"] {
            assert_eq!(from_mapped(to_mapped(ip(text)), false), ip(text));
        }
        for text in ["fd00:10:244::9", "::", "::ffff:10.0.0.1"] {
            assert_eq!(from_mapped(to_mapped(ip(text)), true), ip(text));
        }
        // Octets that are not IPv4-mapped have no IPv4 address.
        assert_eq!(from_mapped(to_mapped(ip("fd00::1")), false), ip("0.0.0.0"));
    }

    #[test]
    fn ipv4_prefixes() {
        let set = set(&["10.244.0.0/16", "192.168.7.0/24"]);
        assert!(set.contains(ip("10.244.0.0")));
        assert!(set.contains(ip("10.244.255.255")));
        assert!(!set.contains(ip("10.245.0.1")));
        assert!(set.contains(ip("192.168.7.200")));
        assert!(!set.contains(ip("192.168.8.1")));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn ipv6_prefixes() {
        let set = set(&["fd00:10:244::/56", "fd00:10:245:1::/64"]);
        assert!(set.contains(ip("fd00:10:244::9")));
        assert!(set.contains(ip("fd00:10:244:ff:ffff::1")));
        assert!(!set.contains(ip("fd00:10:244:100::1")));
        assert!(set.contains(ip("fd00:10:245:1::1")));
        assert!(!set.contains(ip("fd00:10:245:2::1")));
    }

    #[test]
    fn a_zero_length_prefix_holds_its_whole_family() {
        let v4 = set(&["0.0.0.0/0"]);
        assert!(v4.contains(ip("0.0.0.0")));
        assert!(v4.contains(ip("203.0.113.9")));
        assert!(v4.contains(ip("255.255.255.255")));
        assert!(!v4.contains(ip("fd00::1")));
        let v6 = set(&["::/0"]);
        assert!(v6.contains(ip("fd00::1")));
        assert!(v6.contains(ip("::ffff:10.0.0.1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        // Host bits do not narrow a /0.
        assert!(cidr("10.1.2.3/0").contains(ip("192.0.2.1")));
    }

    #[test]
    fn full_length_prefixes_hold_one_address() {
        let set = set(&["192.0.2.7/32", "2001:db8::7/128"]);
        assert!(set.contains(ip("192.0.2.7")));
        assert!(!set.contains(ip("192.0.2.6")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(set.contains(ip("2001:db8::7")));
        assert!(!set.contains(ip("2001:db8::6")));
        assert!(!set.contains(ip("2001:db8::7:0")));
    }

    #[test]
    fn families_never_mix() {
        let both = set(&["10.0.0.0/8", "fd00::/8"]);
        assert!(both.contains(ip("10.1.2.3")));
        assert!(both.contains(ip("fd12::3")));
        // The same leading bits in the other family.
        assert!(!both.contains(ip("a00::1")));
        assert!(!both.contains(ip("253.0.0.1")));
        // An IPv4-mapped IPv6 address is IPv6, and an IPv4-mapped prefix is IPv6 too.
        assert!(!both.contains(ip("::ffff:10.1.2.3")));
        let mapped = set(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(!mapped.contains(ip("10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn host_bits_are_ignored() {
        let c = cidr("10.244.1.5/16");
        assert_eq!(c.addr(), ip("10.244.1.5"));
        assert_eq!(c.prefix_len(), 16);
        assert!(c.contains(ip("10.244.200.1")));
        let set = set(&["10.244.1.5/16"]);
        assert!(set.contains(ip("10.244.200.1")));
        assert_eq!(c.to_string(), "10.244.1.5/16");
        assert_eq!("fd00::/8".parse::<Cidr>(), Ok(cidr("fd00::/8")));
    }

    #[test]
    fn an_inserted_twice_network_stays_until_removed_twice() {
        let mut set = CidrSet::new();
        assert!(set.is_empty());
        set.insert(cidr("10.244.1.0/24"));
        set.insert(cidr("10.244.1.0/24"));
        set.insert(cidr("10.244.2.0/24"));
        assert_eq!(set.len(), 2);
        assert!(set.remove(cidr("10.244.1.0/24")));
        assert!(set.contains(ip("10.244.1.1")));
        assert!(set.remove(cidr("10.244.1.0/24")));
        assert!(!set.contains(ip("10.244.1.1")));
        assert!(!set.remove(cidr("10.244.1.0/24")));
        assert!(!set.remove(cidr("10.244.2.0/25")));
        assert!(!set.remove(cidr("fd00::/8")));
        assert!(set.remove(cidr("10.244.2.0/24")));
        assert!(set.is_empty());
        assert!(!set.contains(ip("10.244.2.1")));
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let error = |text: &str| Cidr::parse(text).unwrap_err().to_string();
        assert_eq!(error("10.244.0.0"), r#""10.244.0.0" is not ADDRESS/PREFIX"#);
        assert_eq!(error(""), r#""" is not ADDRESS/PREFIX"#);
        assert_eq!(
            error("10.244.0/16"),
            r#""10.244.0/16" has an invalid address"#
        );
        assert_eq!(error("pods/16"), r#""pods/16" has an invalid address"#);
        assert_eq!(
            error("10.244.0.0/x"),
            r#""10.244.0.0/x" has an invalid prefix length"#
        );
        assert_eq!(
            error("10.244.0.0/-1"),
            r#""10.244.0.0/-1" has an invalid prefix length"#
        );
        assert_eq!(
            error("10.244.0.0/"),
            r#""10.244.0.0/" has an invalid prefix length"#
        );
        assert_eq!(
            error("10.244.0.0/33"),
            r#""10.244.0.0/33": prefix length above 32"#
        );
        assert_eq!(
            error("fd00::/129"),
            r#""fd00::/129": prefix length above 128"#
        );
        assert_eq!(
            Cidr::new(ip("10.0.0.0"), 40).unwrap_err().to_string(),
            r#""10.0.0.0/40": prefix length above 32"#
        );
        assert_eq!(
            Cidr::new(ip("fd00::"), 128).map(|c| c.prefix_len()),
            Ok(128)
        );
    }
}
