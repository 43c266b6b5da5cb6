//! Connections denied by policy, from an NFLOG group: each logged packet becomes a
//! [`DenyEvent`] with its tuple, IP length, hook, interfaces, and the log prefix, which
//! names the policy by the convention `flowex:<namespace>/<policy>/<rule>`.
//!
//! Binding uses netlink-packet-netfilter's config messages; packets are read with flowex's
//! own attribute iterator, which borrows instead of allocating per packet (and exposes the
//! hook and timestamp, which that crate keeps private).

mod packet;
mod source;

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_netfilter::NetfilterProtoFamily;
use netlink_packet_netfilter::nflog::{ConfigCmd, ConfigMode, Timeout, config_request};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

pub use packet::{PacketError, PacketTuple, parse_packet};
pub use source::DenySource;

use crate::netlink::{
    Attributes, Messages, NFGEN_LEN, NLMSG_ERROR, ParseError, error_code, wait_readable,
};
use crate::store::{Denial, Origin};

const NFULNL_MSG_PACKET: u16 = 4 << 8;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_MARK: u16 = 2;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// Bytes of each packet copied to us: IPv6 with extension headers plus an L4 header.
pub const DEFAULT_COPY_RANGE: u32 = 128;

/// The prefix convention's marker.
pub const PREFIX_MARKER: &str = "flowex:";

/// The policy a log prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub rule: &'a str,
}

/// Parses `flowex:<namespace>/<policy>/<rule>`; other prefixes name no policy.
pub fn parse_prefix(prefix: &str) -> Option<PolicyRef<'_>> {
    let rest = prefix.strip_prefix(PREFIX_MARKER)?;
    let mut parts = rest.splitn(3, '/');
    let namespace = parts.next()?;
    let name = parts.next()?;
    let rule = parts.next().unwrap_or("");
    if name.is_empty() {
        return None;
    }
    Some(PolicyRef {
        namespace,
        name,
        rule,
    })
}

/// One denied packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyEvent<'a> {
    pub tuple: PacketTuple,
    /// Netfilter hook: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting.
    pub hook: u8,
    pub in_ifindex: Option<u32>,
    pub out_ifindex: Option<u32>,
    pub mark: u32,
    /// Kernel timestamp (seconds, microseconds) when the packet was logged.
    pub timestamp: Option<(u64, u64)>,
    /// The log prefix, as configured in the rule.
    pub prefix: &'a str,
    /// The policy the prefix names, by the `flowex:` convention.
    pub policy: Option<PolicyRef<'a>>,
}

impl<'a> From<&DenyEvent<'a>> for Denial<'a> {
    /// What the store needs of a denied packet; the hook says the direction: output (3)
    /// and postrouting (4) are the egress path.
    fn from(event: &DenyEvent<'a>) -> Self {
        Denial {
            key: event.tuple.key(),
            origin: if event.hook >= 3 {
                Origin::DeniedEgress
            } else {
                Origin::DeniedIngress
            },
            bytes: u64::from(event.tuple.ip_length),
            prefix: event.prefix,
            logged_ms: event.timestamp.map(|(s, us)| s * 1_000 + us / 1_000),
        }
    }
}

/// What can go wrong with the NFLOG source.
#[derive(Debug, thiserror::Error)]
pub enum DenyError {
    /// Another socket in this network namespace already listens on the group.
    #[error(
        "NFLOG group {0} already has a listener in this network namespace (another flowex, ulogd or tcpdump --nflog?); choose another deny.nflogGroup"
    )]
    GroupTaken(u16),
    /// The kernel refused the configuration.
    #[error("binding NFLOG group {group} was refused: {error}")]
    Refused { group: u16, error: io::Error },
    /// The socket failed.
    #[error("NFLOG socket: {0}")]
    Io(#[from] io::Error),
    /// Malformed netlink bytes.
    #[error("malformed NFLOG message: {0}")]
    Parse(#[from] ParseError),
}

/// Counters of packets that could not be turned into events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DenyStats {
    pub events: u64,
    /// Packets whose copied bytes were not a readable IP packet.
    pub unreadable: u64,
    /// Times the socket buffer overflowed (ENOBUFS): packets were lost.
    pub lost: u64,
}

/// A listener bound to one NFLOG group in the calling thread's network namespace.
pub struct DenyListener {
    socket: Socket,
    group: u16,
    buffer: Vec<u8>,
    stats: DenyStats,
    interrupt: Option<std::os::fd::RawFd>,
}

impl DenyListener {
    /// Binds `group`, copying `copy_range` bytes of each packet.
    pub fn bind(group: u16, copy_range: u32) -> Result<Self, DenyError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        let mut listener = Self {
            socket,
            group,
            buffer: Vec::with_capacity(64 * 1024),
            stats: DenyStats::default(),
            interrupt: None,
        };
        // The kernel batches logged packets for up to 1 s by default; 100 ms keeps deny
        // records prompt without a message per packet under a flood.
        let flush: Timeout = Duration::from_millis(100).into();
        listener.configure(vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new_packet(copy_range).into(),
            flush.into(),
        ])?;
        Ok(listener)
    }

    /// The group this listener is bound to.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Ends every later wait of [`DenyListener::receive`] early once `interrupt` (an
    /// [`crate::netlink::Interrupt`]'s descriptor, which must outlive this) is raised.
    pub fn set_interrupt(&mut self, interrupt: std::os::fd::RawFd) {
        self.interrupt = Some(interrupt);
    }

    /// Counters so far.
    pub fn stats(&self) -> DenyStats {
        self.stats
    }

    fn configure(
        &mut self,
        nlas: Vec<netlink_packet_netfilter::nflog::ConfigNla>,
    ) -> Result<(), DenyError> {
        let mut request = config_request(NetfilterProtoFamily::Unspec, self.group, nlas);
        request.finalize();
        let mut bytes = vec![0u8; request.header.length as usize];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        self.buffer.clear();
        self.socket.recv(&mut self.buffer, 0)?;
        for message in Messages::new(&self.buffer) {
            let (header, payload) = message?;
            if header.kind == NLMSG_ERROR {
                return match -error_code(payload)? {
                    0 => Ok(()),
                    libc::EPERM | libc::EBUSY => Err(DenyError::GroupTaken(self.group)),
                    errno => Err(DenyError::Refused {
                        group: self.group,
                        error: io::Error::from_raw_os_error(errno),
                    }),
                };
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for logged packets and hands each to `on_event`; returns how
    /// many events were delivered. Nothing is allocated per packet.
    pub fn receive(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(&DenyEvent<'_>),
    ) -> Result<usize, DenyError> {
        if !wait_readable(self.socket.as_raw_fd(), self.interrupt, timeout)? {
            return Ok(0);
        }
        self.buffer.clear();
        match self.socket.recv(&mut self.buffer, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.stats.lost += 1;
                return Ok(0);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        }
        let mut delivered = 0;
        for message in Messages::new(&self.buffer) {
            let (header, payload) = message?;
            if header.kind != NFULNL_MSG_PACKET || payload.len() < NFGEN_LEN {
                continue;
            }
            let mut hook = 0;
            let mut in_ifindex = None;
            let mut out_ifindex = None;
            let mut mark = 0;
            let mut timestamp = None;
            let mut prefix = "";
            let mut packet: &[u8] = &[];
            for attr in Attributes::new(&payload[NFGEN_LEN..]) {
                let attr = attr?;
                match attr.kind {
                    NFULA_PACKET_HDR if attr.payload.len() >= 3 => hook = attr.payload[2],
                    NFULA_MARK => mark = attr.be32()?,
                    NFULA_TIMESTAMP if attr.payload.len() >= 16 => {
                        let word = |at: usize| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&attr.payload[at..at + 8]);
                            u64::from_be_bytes(b)
                        };
                        timestamp = Some((word(0), word(8)));
                    }
                    NFULA_IFINDEX_INDEV => in_ifindex = Some(attr.be32()?),
                    NFULA_IFINDEX_OUTDEV => out_ifindex = Some(attr.be32()?),
                    NFULA_PAYLOAD => packet = attr.payload,
                    NFULA_PREFIX => {
                        let text = attr.payload.split(|b| *b == 0).next().unwrap_or(&[]);
                        prefix = std::str::from_utf8(text).unwrap_or("");
                    }
                    _ => {}
                }
            }
            match parse_packet(packet) {
                Ok(tuple) => {
                    on_event(&DenyEvent {
                        tuple,
                        hook,
                        in_ifindex,
                        out_ifindex,
                        mark,
                        timestamp,
                        prefix,
                        policy: parse_prefix(prefix),
                    });
                    delivered += 1;
                    self.stats.events += 1;
                }
                Err(_) => self.stats.unreadable += 1,
            }
        }
        Ok(delivered)
    }
}

impl Drop for DenyListener {
    fn drop(&mut self) {
        // Leave the group free for the next listener at once.
        let _ = self.configure(vec![ConfigCmd::Unbind.into()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_convention() {
        assert_eq!(
            parse_prefix("flowex:shop/deny-web/ingress-0"),
            Some(PolicyRef {
                namespace: "shop",
                name: "deny-web",
                rule: "ingress-0"
            })
        );
        assert_eq!(
            parse_prefix("flowex:/cluster-deny/r/1"),
            Some(PolicyRef {
                namespace: "",
                name: "cluster-deny",
                rule: "r/1"
            })
        );
        assert_eq!(parse_prefix("DROP "), None);
        assert_eq!(parse_prefix("flowex:shop"), None);
    }
}
