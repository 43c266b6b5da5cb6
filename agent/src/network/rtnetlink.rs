//! The rtnetlink messages the interface metrics use, parsed into borrowed views and
//! emitted from the same types (so tests build kernel-shaped messages without the code
//! under test): links (`RTM_NEWLINK`/`RTM_DELLINK`, with `struct ifinfomsg`), link
//! statistics (`RTM_NEWSTATS`, `struct if_stats_msg` + `IFLA_STATS_LINK_64`), and
//! addresses (`RTM_NEWADDR`, `struct ifaddrmsg`). Parsing does not allocate; every
//! integer is in host order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netlink::{
    Attribute, Attributes, NLM_F_DUMP, NLM_F_REQUEST, ParseError, RequestBuilder,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWSTATS: u16 = 92;
pub const RTM_GETSTATS: u16 = 94;

/// The multicast group of link notifications (NEWLINK/DELLINK).
pub const RTNLGRP_LINK: u32 = 1;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_STATS64: u16 = 23;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_STATS_LINK_64`, the attribute of `RTM_NEWSTATS`; its filter bit is 1 << (1 - 1).
const IFLA_STATS_LINK_64: u16 = 1;
const IFLA_STATS_FILTER_LINK_64: u32 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;

/// `IFF_LOOPBACK` in `ifi_flags`.
pub const IFF_LOOPBACK: u32 = 0x8;
/// `IF_OPER_UP`, RFC 2863's "up".
pub const IF_OPER_UP: u8 = 6;

/// Length of `struct ifinfomsg`.
pub const IFINFOMSG_LEN: usize = 16;
/// Length of `struct ifaddrmsg`.
pub const IFADDRMSG_LEN: usize = 8;
/// Length of `struct if_stats_msg`.
pub const IF_STATS_MSG_LEN: usize = 12;

fn need(bytes: &[u8], needed: usize) -> Result<(), ParseError> {
    if bytes.len() < needed {
        return Err(ParseError::Truncated {
            needed,
            available: bytes.len(),
        });
    }
    Ok(())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The counters of `struct rtnl_link_stats64`, in the kernel's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub multicast: u64,
    pub collisions: u64,
    pub rx_length_errors: u64,
    pub rx_over_errors: u64,
    pub rx_crc_errors: u64,
    pub rx_frame_errors: u64,
    pub rx_fifo_errors: u64,
    pub rx_missed_errors: u64,
    pub tx_aborted_errors: u64,
    pub tx_carrier_errors: u64,
    pub tx_fifo_errors: u64,
    pub tx_heartbeat_errors: u64,
    pub tx_window_errors: u64,
    pub rx_compressed: u64,
    pub tx_compressed: u64,
    /// Kernel 4.6 and later (0 before).
    pub rx_nohandler: u64,
    /// Kernel 5.19 and later (0 before).
    pub rx_otherhost_dropped: u64,
}

impl LinkStats {
    /// Counters every kernel sends (up to `tx_compressed`).
    const MIN_FIELDS: usize = 23;
    /// Counters this type knows.
    pub const FIELDS: usize = 25;
    /// Bytes of the struct this type emits.
    pub const LEN: usize = Self::FIELDS * 8;

    fn fields_mut(&mut self) -> [&mut u64; Self::FIELDS] {
        [
            &mut self.rx_packets,
            &mut self.tx_packets,
            &mut self.rx_bytes,
            &mut self.tx_bytes,
            &mut self.rx_errors,
            &mut self.tx_errors,
            &mut self.rx_dropped,
            &mut self.tx_dropped,
            &mut self.multicast,
            &mut self.collisions,
            &mut self.rx_length_errors,
            &mut self.rx_over_errors,
            &mut self.rx_crc_errors,
            &mut self.rx_frame_errors,
            &mut self.rx_fifo_errors,
            &mut self.rx_missed_errors,
            &mut self.tx_aborted_errors,
            &mut self.tx_carrier_errors,
            &mut self.tx_fifo_errors,
            &mut self.tx_heartbeat_errors,
            &mut self.tx_window_errors,
            &mut self.rx_compressed,
            &mut self.tx_compressed,
            &mut self.rx_nohandler,
            &mut self.rx_otherhost_dropped,
        ]
    }

    /// Parses the struct; older kernels send fewer counters (the rest stay 0), newer ones
    /// more (ignored), anything shorter than the oldest struct is an error.
    pub fn parse(attribute: &Attribute<'_>) -> Result<Self, ParseError> {
        let bytes = attribute.payload;
        if bytes.len() < Self::MIN_FIELDS * 8 || !bytes.len().is_multiple_of(8) {
            return Err(ParseError::BadPayload {
                attribute: attribute.kind,
                length: bytes.len(),
            });
        }
        let mut stats = Self::default();
        for (field, chunk) in stats.fields_mut().into_iter().zip(bytes.chunks_exact(8)) {
            *field = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
        }
        Ok(stats)
    }

    /// Writes the struct (all [`LinkStats::FIELDS`] counters) into `out`.
    pub fn emit(&self, out: &mut [u8; Self::LEN]) {
        let mut copy = *self;
        for (field, chunk) in copy.fields_mut().into_iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&field.to_ne_bytes());
        }
    }
}

/// A peer in another network namespace: a veth whose other end lives elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemotePeer {
    /// The peer's interface index in its own namespace (`IFLA_LINK`).
    pub index: u32,
    /// The peer namespace's id as this namespace knows it (`IFLA_LINK_NETNSID`).
    pub netns_id: i32,
}

/// A link message (`RTM_NEWLINK`, `RTM_DELLINK`), the parts the metrics use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkMessage<'a> {
    pub index: u32,
    /// `ifi_flags` (`IFF_UP`, `IFF_LOOPBACK`, ...).
    pub flags: u32,
    pub name: &'a str,
    /// `IFLA_INFO_KIND` ("veth", "bridge", ...); empty for a physical device.
    pub kind: &'a str,
    /// `IFLA_OPERSTATE` (RFC 2863 state; [`IF_OPER_UP`] is up).
    pub operstate: Option<u8>,
    /// `IFLA_LINK`: the lower device, or a veth's peer.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: present when `link` is in another namespace.
    pub link_netns_id: Option<i32>,
    pub stats: Option<LinkStats>,
}

impl<'a> LinkMessage<'a> {
    /// Parses the payload after the netlink header.
    pub fn parse(payload: &'a [u8]) -> Result<Self, ParseError> {
        need(payload, IFINFOMSG_LEN)?;
        let mut link = Self {
            index: u32_at(payload, 4),
            flags: u32_at(payload, 8),
            ..Self::default()
        };
        for attribute in Attributes::new(&payload[IFINFOMSG_LEN..]) {
            let attribute = attribute?;
            match attribute.kind {
                IFLA_IFNAME => link.name = attribute.string()?,
                IFLA_OPERSTATE => link.operstate = Some(attribute.u8()?),
                IFLA_LINK => link.link = Some(attribute.u32()?),
                IFLA_LINK_NETNSID => link.link_netns_id = Some(attribute.i32()?),
                IFLA_STATS64 => link.stats = Some(LinkStats::parse(&attribute)?),
                IFLA_LINKINFO => {
                    for info in attribute.attributes() {
                        let info = info?;
                        if info.kind == IFLA_INFO_KIND {
                            link.kind = info.string()?;
                        }
                    }
                }
                _ => {}
            }
        }
        if link.name.is_empty() {
            return Err(ParseError::Truncated {
                needed: IFINFOMSG_LEN + 8,
                available: payload.len(),
            });
        }
        Ok(link)
    }

    /// The peer, when this is a veth whose other end is in another namespace.
    pub fn remote_peer(&self) -> Option<RemotePeer> {
        match (self.kind, self.link, self.link_netns_id) {
            ("veth", Some(index), Some(netns_id)) => Some(RemotePeer { index, netns_id }),
            _ => None,
        }
    }

    /// Appends this link as a message of `kind` (what the kernel would send).
    pub fn emit(&self, buf: &mut Vec<u8>, kind: u16, flags: u16, sequence: u32) {
        let mut header = [0u8; IFINFOMSG_LEN];
        header[4..8].copy_from_slice(&self.index.to_ne_bytes());
        header[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        let mut message = RequestBuilder::append(buf, kind, flags, sequence, &header);
        let mut name = self.name.as_bytes().to_vec();
        name.push(0);
        message.attribute(IFLA_IFNAME, &name);
        if let Some(state) = self.operstate {
            message.attribute(IFLA_OPERSTATE, &[state]);
        }
        if let Some(link) = self.link {
            message.attribute(IFLA_LINK, &link.to_ne_bytes());
        }
        if let Some(id) = self.link_netns_id {
            message.attribute(IFLA_LINK_NETNSID, &id.to_ne_bytes());
        }
        if let Some(stats) = &self.stats {
            let mut bytes = [0u8; LinkStats::LEN];
            stats.emit(&mut bytes);
            message.attribute(IFLA_STATS64, &bytes);
        }
        if !self.kind.is_empty() {
            let mut kind = self.kind.as_bytes().to_vec();
            kind.push(0);
            message
                .begin_nested(IFLA_LINKINFO)
                .attribute(IFLA_INFO_KIND, &kind)
                .end_nested();
        }
        message.finish();
    }
}

/// Writes a request for every link of the namespace (`RTM_GETLINK` dump) into `buf`.
pub fn link_dump_request(buf: &mut Vec<u8>, sequence: u32) {
    RequestBuilder::with_header(
        buf,
        RTM_GETLINK,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        &[0; IFINFOMSG_LEN],
    )
    .finish();
}

/// Appends a request for one link's message (`RTM_GETLINK` of `index`) to `buf`.
pub fn link_get_request(buf: &mut Vec<u8>, sequence: u32, index: u32) {
    let mut header = [0u8; IFINFOMSG_LEN];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    RequestBuilder::append(buf, RTM_GETLINK, NLM_F_REQUEST, sequence, &header).finish();
}

/// Appends a request for one link's 64-bit counters alone (`RTM_GETSTATS` of `index`
/// with only `IFLA_STATS_LINK_64`) to `buf`.
pub fn stats_get_request(buf: &mut Vec<u8>, sequence: u32, index: u32) {
    let header = stats_header(index);
    RequestBuilder::append(buf, RTM_GETSTATS, NLM_F_REQUEST, sequence, &header).finish();
}

/// Writes a request for the 64-bit counters alone of every link (`RTM_GETSTATS` dump
/// with only `IFLA_STATS_LINK_64`) into `buf`.
pub fn stats_dump_request(buf: &mut Vec<u8>, sequence: u32) {
    RequestBuilder::with_header(
        buf,
        RTM_GETSTATS,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        &stats_header(0),
    )
    .finish();
}

fn stats_header(index: u32) -> [u8; IF_STATS_MSG_LEN] {
    let mut header = [0u8; IF_STATS_MSG_LEN];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header[8..12].copy_from_slice(&IFLA_STATS_FILTER_LINK_64.to_ne_bytes());
    header
}

/// A statistics message (`RTM_NEWSTATS`) carrying `IFLA_STATS_LINK_64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsMessage {
    pub index: u32,
    pub stats: LinkStats,
}

impl StatsMessage {
    /// Parses the payload after the netlink header; a message without the 64-bit link
    /// counters is an error (they were asked for).
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        need(payload, IF_STATS_MSG_LEN)?;
        let index = u32_at(payload, 4);
        for attribute in Attributes::new(&payload[IF_STATS_MSG_LEN..]) {
            let attribute = attribute?;
            if attribute.kind == IFLA_STATS_LINK_64 {
                return Ok(Self {
                    index,
                    stats: LinkStats::parse(&attribute)?,
                });
            }
        }
        Err(ParseError::Truncated {
            needed: IF_STATS_MSG_LEN + 4 + LinkStats::MIN_FIELDS * 8,
            available: payload.len(),
        })
    }

    /// Appends this message as the kernel would send it.
    pub fn emit(&self, buf: &mut Vec<u8>, sequence: u32) {
        let mut bytes = [0u8; LinkStats::LEN];
        self.stats.emit(&mut bytes);
        let mut message =
            RequestBuilder::append(buf, RTM_NEWSTATS, 0, sequence, &stats_header(self.index));
        message.attribute(IFLA_STATS_LINK_64, &bytes);
        message.finish();
    }
}

/// Writes a request for the addresses of interface `index` in the namespace the calling
/// one knows as `netns_id` (`RTM_GETADDR` dump with `IFA_TARGET_NETNSID`; the kernel
/// applies the index and the target only to a socket with `NETLINK_GET_STRICT_CHK`).
pub fn address_dump_request(buf: &mut Vec<u8>, sequence: u32, netns_id: i32, index: u32) {
    let mut header = [0u8; IFADDRMSG_LEN];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut message = RequestBuilder::with_header(
        buf,
        RTM_GETADDR,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        &header,
    );
    message.attribute(IFA_TARGET_NETNSID, &netns_id.to_ne_bytes());
    message.finish();
}

/// An address message (`RTM_NEWADDR`), the parts the pod lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressMessage {
    pub index: u32,
    pub address: IpAddr,
}

impl AddressMessage {
    /// Parses the payload after the netlink header. The interface's own address is
    /// `IFA_LOCAL` when present (on a point-to-point link `IFA_ADDRESS` is the other
    /// end's), else `IFA_ADDRESS`.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        need(payload, IFADDRMSG_LEN)?;
        let family = i32::from(payload[0]);
        let index = u32_at(payload, 4);
        let (mut local, mut address) = (None, None);
        for attribute in Attributes::new(&payload[IFADDRMSG_LEN..]) {
            let attribute = attribute?;
            let slot = match attribute.kind {
                IFA_LOCAL => &mut local,
                IFA_ADDRESS => &mut address,
                _ => continue,
            };
            *slot = Some(match family {
                libc::AF_INET => IpAddr::V4(Ipv4Addr::from(attribute.bytes4()?)),
                libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(attribute.bytes16()?)),
                _ => {
                    return Err(ParseError::BadPayload {
                        attribute: attribute.kind,
                        length: attribute.payload.len(),
                    });
                }
            });
        }
        let address = local.or(address).ok_or(ParseError::Truncated {
            needed: IFADDRMSG_LEN + 8,
            available: payload.len(),
        })?;
        Ok(Self { index, address })
    }

    /// Appends this message as the kernel would send it in a dump.
    pub fn emit(&self, buf: &mut Vec<u8>, flags: u16, sequence: u32) {
        let mut header = [0u8; IFADDRMSG_LEN];
        header[4..8].copy_from_slice(&self.index.to_ne_bytes());
        let message = match self.address {
            IpAddr::V4(v4) => {
                header[0] = libc::AF_INET as u8;
                header[1] = 24;
                let mut message =
                    RequestBuilder::append(buf, RTM_NEWADDR, flags, sequence, &header);
                message.attribute(IFA_ADDRESS, &v4.octets());
                message.attribute(IFA_LOCAL, &v4.octets());
                message
            }
            IpAddr::V6(v6) => {
                header[0] = libc::AF_INET6 as u8;
                header[1] = 64;
                let mut message =
                    RequestBuilder::append(buf, RTM_NEWADDR, flags, sequence, &header);
                message.attribute(IFA_ADDRESS, &v6.octets());
                message
            }
        };
        message.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{Messages, NLM_F_MULTI};

    /// `RTM_NEWLINK` for veth "veth1" (index 7, flags UP|BROADCAST|RUNNING|MULTICAST,
    /// operstate up) whose peer is index 2 of namespace id 0, as a little-endian kernel
    /// sends it (stats left out).
    #[rustfmt::skip]
    const VETH_NEWLINK: [u8; 84] = [
        // nlmsghdr: length 84, type 16 (RTM_NEWLINK), flags 0, sequence 0, port 0
        84, 0, 0, 0,  16, 0,  0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        // ifinfomsg: family 0, pad, type 1 (ether), index 7, flags 0x11043, change 0
        0, 0, 1, 0,  7, 0, 0, 0,  0x43, 0x10, 0x01, 0,  0, 0, 0, 0,
        // IFLA_IFNAME (3) "veth1\0", padded to 12
        10, 0, 3, 0,  b'v', b'e', b't', b'h', b'1', 0, 0, 0,
        // IFLA_OPERSTATE (16) 6, padded to 8
        5, 0, 16, 0,  6, 0, 0, 0,
        // IFLA_LINK (5) 2
        8, 0, 5, 0,  2, 0, 0, 0,
        // IFLA_LINK_NETNSID (37) 0
        8, 0, 37, 0,  0, 0, 0, 0,
        // IFLA_LINKINFO (18, nested) { IFLA_INFO_KIND (1) "veth\0" padded to 12 }
        16, 0, 18, 0x80,  9, 0, 1, 0,  b'v', b'e', b't', b'h', 0, 0, 0, 0,
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn a_veth_newlink_written_out_parses_and_emits_the_same_bytes() {
        let (header, payload) = Messages::new(&VETH_NEWLINK).next().unwrap().unwrap();
        assert_eq!(header.kind, RTM_NEWLINK);
        let link = LinkMessage::parse(payload).unwrap();
        assert_eq!(
            link,
            LinkMessage {
                index: 7,
                flags: 0x11043,
                name: "veth1",
                kind: "veth",
                operstate: Some(IF_OPER_UP),
                link: Some(2),
                link_netns_id: Some(0),
                stats: None,
            }
        );
        assert_eq!(
            link.remote_peer(),
            Some(RemotePeer {
                index: 2,
                netns_id: 0
            })
        );
        let mut emitted = Vec::new();
        link.emit(&mut emitted, RTM_NEWLINK, 0, 0);
        // The emitter leaves ifi_type at 0; everything else is the kernel's layout.
        let mut expected = VETH_NEWLINK.to_vec();
        expected[18] = 0;
        assert_eq!(emitted, expected);
    }

    #[test]
    fn a_device_without_a_remote_peer_is_not_a_pod_veth() {
        let mut link = LinkMessage {
            index: 3,
            name: "eth0",
            ..Default::default()
        };
        assert_eq!(link.remote_peer(), None);
        // A veth whose peer is in the same namespace: no IFLA_LINK_NETNSID.
        link.kind = "veth";
        link.link = Some(4);
        assert_eq!(link.remote_peer(), None);
        // A VLAN's lower device in another namespace is not a peer either.
        link.kind = "vlan";
        link.link_netns_id = Some(1);
        assert_eq!(link.remote_peer(), None);
    }

    fn counting_stats() -> LinkStats {
        let mut stats = LinkStats::default();
        for (i, field) in stats.fields_mut().into_iter().enumerate() {
            *field = 1000 + i as u64;
        }
        stats
    }

    #[test]
    fn link_stats_round_trip_and_short_structs() {
        let stats = counting_stats();
        let mut bytes = [0u8; LinkStats::LEN];
        stats.emit(&mut bytes);
        let attribute = |payload| Attribute {
            kind: IFLA_STATS64,
            nested: false,
            payload,
        };
        assert_eq!(LinkStats::parse(&attribute(&bytes)), Ok(stats));
        assert_eq!(stats.tx_dropped, 1007);
        assert_eq!(stats.rx_missed_errors, 1015);
        // A 4.5 kernel's struct (23 counters): the newer ones read as 0.
        let old = LinkStats::parse(&attribute(&bytes[..23 * 8])).unwrap();
        assert_eq!(old.tx_compressed, 1022);
        assert_eq!((old.rx_nohandler, old.rx_otherhost_dropped), (0, 0));
        // A future kernel's longer struct: the known counters still read.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0xff; 16]);
        assert_eq!(LinkStats::parse(&attribute(&longer)), Ok(stats));
        for bad in [&bytes[..22 * 8], &bytes[..23 * 8 + 3], &[][..]] {
            assert!(matches!(
                LinkStats::parse(&attribute(bad)),
                Err(ParseError::BadPayload { attribute: 23, .. })
            ));
        }
    }

    #[test]
    fn link_messages_with_stats_round_trip() {
        let link = LinkMessage {
            index: 12,
            flags: IFF_LOOPBACK,
            name: "lo",
            operstate: Some(0),
            stats: Some(counting_stats()),
            ..Default::default()
        };
        let mut buf = Vec::new();
        link.emit(&mut buf, RTM_NEWLINK, NLM_F_MULTI, 9);
        let (header, payload) = Messages::new(&buf).next().unwrap().unwrap();
        assert_eq!((header.kind, header.sequence), (RTM_NEWLINK, 9));
        assert_eq!(LinkMessage::parse(payload), Ok(link));
    }

    #[test]
    fn malformed_link_messages_are_errors() {
        let payload = &VETH_NEWLINK[16..];
        // Shorter than ifinfomsg.
        assert!(matches!(
            LinkMessage::parse(&payload[..15]),
            Err(ParseError::Truncated { needed: 16, .. })
        ));
        // No name: not a link the table can use.
        assert!(LinkMessage::parse(&payload[..16]).is_err());
        // An attribute that claims more than the message holds.
        let mut long = payload.to_vec();
        long[16] = 200;
        assert!(matches!(
            LinkMessage::parse(&long),
            Err(ParseError::BadAttributeLength { length: 200, .. })
        ));
        // IFLA_LINK with two bytes instead of four.
        let mut short = payload.to_vec();
        short[36] = 6;
        assert!(matches!(
            LinkMessage::parse(&short),
            Err(ParseError::BadPayload { attribute: 5, .. })
        ));
        // A name that is not UTF-8.
        let mut name = payload.to_vec();
        name[20] = 0xff;
        assert!(LinkMessage::parse(&name).is_err());
        // Every truncation of a good message is an error or a message, never a panic.
        for end in 0..payload.len() {
            let _ = LinkMessage::parse(&payload[..end]);
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let mut buf = Vec::new();
        stats_get_request(&mut buf, 5, 7);
        #[rustfmt::skip]
        assert_eq!(buf, [
            // nlmsghdr: length 28, RTM_GETSTATS (94), NLM_F_REQUEST, sequence 5, port 0
            28, 0, 0, 0,  94, 0,  1, 0,  5, 0, 0, 0,  0, 0, 0, 0,
            // if_stats_msg: family 0, pads, ifindex 7, filter_mask IFLA_STATS_LINK_64 bit
            0, 0, 0, 0,  7, 0, 0, 0,  1, 0, 0, 0,
        ]);
        stats_dump_request(&mut buf, 5);
        assert_eq!(&buf[6..8], &(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes()[..]);
        assert_eq!(&buf[16..28], [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        buf.clear();
        stats_get_request(&mut buf, 5, 7);
        link_get_request(&mut buf, 6, 7);
        assert_eq!(buf.len(), 28 + 32);
        assert_eq!(&buf[28 + 4..28 + 6], &RTM_GETLINK.to_ne_bytes());
        assert_eq!(&buf[28 + 20..28 + 24], &7u32.to_ne_bytes());
        address_dump_request(&mut buf, 8, 3, 2);
        #[rustfmt::skip]
        assert_eq!(buf, [
            // nlmsghdr: length 32, RTM_GETADDR (22), NLM_F_REQUEST | NLM_F_DUMP, sequence 8
            32, 0, 0, 0,  22, 0,  1, 3,  8, 0, 0, 0,  0, 0, 0, 0,
            // ifaddrmsg: family 0 (all), prefix 0, flags 0, scope 0, index 2
            0, 0, 0, 0,  2, 0, 0, 0,
            // IFA_TARGET_NETNSID (10) 3
            8, 0, 10, 0,  3, 0, 0, 0,
        ]);
    }

    #[test]
    fn stats_and_address_messages_round_trip() {
        let mut buf = Vec::new();
        let stats = StatsMessage {
            index: 4,
            stats: counting_stats(),
        };
        stats.emit(&mut buf, 1);
        let v4 = AddressMessage {
            index: 2,
            address: "10.1.2.3".parse().unwrap(),
        };
        let v6 = AddressMessage {
            index: 2,
            address: "fd00::3".parse().unwrap(),
        };
        v4.emit(&mut buf, NLM_F_MULTI, 2);
        v6.emit(&mut buf, NLM_F_MULTI, 2);
        let messages: Vec<_> = Messages::new(&buf).map(Result::unwrap).collect();
        assert_eq!(messages[0].0.kind, RTM_NEWSTATS);
        assert_eq!(StatsMessage::parse(messages[0].1), Ok(stats));
        assert_eq!(AddressMessage::parse(messages[1].1), Ok(v4));
        assert_eq!(AddressMessage::parse(messages[2].1), Ok(v6));
    }

    #[test]
    fn malformed_stats_and_address_messages_are_errors() {
        let mut buf = Vec::new();
        StatsMessage {
            index: 4,
            stats: counting_stats(),
        }
        .emit(&mut buf, 1);
        let payload = &buf[16..];
        // The header alone: the counters that were asked for are missing.
        assert!(StatsMessage::parse(&payload[..12]).is_err());
        assert!(StatsMessage::parse(&payload[..11]).is_err());
        for end in 0..payload.len() {
            assert!(StatsMessage::parse(&payload[..end]).is_err());
        }
        // An IPv4 address message whose address has 16 bytes.
        let mut buf = Vec::new();
        AddressMessage {
            index: 2,
            address: "fd00::3".parse().unwrap(),
        }
        .emit(&mut buf, 0, 1);
        buf[16] = libc::AF_INET as u8;
        assert!(matches!(
            AddressMessage::parse(&buf[16..]),
            Err(ParseError::BadPayload { attribute: 1, .. })
        ));
        // An unknown family.
        buf[16] = 99;
        assert!(AddressMessage::parse(&buf[16..]).is_err());
        // No address at all.
        assert!(AddressMessage::parse(&buf[16..24]).is_err());
    }
}
