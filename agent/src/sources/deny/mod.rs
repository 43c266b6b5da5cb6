//! Connections denied by policy, from an NFLOG group: each logged packet becomes a
//! [`DenyEvent`] with its tuple, IP length, hook, interfaces, and the log prefix, which
//! names the policy by the convention `flowex:<namespace>/<policy>/<rule>`.
//!
//! Binding uses netlink-packet-netfilter's config messages; packets are read through the
//! receive loop the conntrack events use too ([`crate::netlink::subscription`]), with
//! flowex's own attribute iterator, which borrows instead of allocating per packet (and
//! exposes the hook and timestamp, which that crate keeps private).

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

use crate::netlink::subscription::{OnLoss, Subscription, Verdict};
use crate::netlink::{Attributes, Messages, NFGEN_LEN, NLMSG_ERROR, ParseError, error_code};
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
    /// Times packets were lost: the socket buffer overflowed (ENOBUFS), or a datagram did
    /// not fit its slot or its messages did not parse.
    pub lost: u64,
}

/// Datagrams read per system call, and per [`DenyListener::receive`] before it returns.
const DATAGRAMS_PER_READ: usize = 16;
const DRAIN_LIMIT: usize = 256;

/// Room for one datagram. The kernel fills one with logged packets up to its buffer size
/// (a page by default) and starts another; a packet whose message is larger than that
/// gets a datagram sized for it, which later packets may share. A message carries at most
/// `copy_range` bytes of the packet (0 asks for all of it, up to 0xffff) plus its
/// attributes, a few hundred bytes.
fn datagram_slot(copy_range: u32) -> usize {
    let copied = if copy_range == 0 {
        0xffff
    } else {
        copy_range.min(0xffff)
    };
    (copied as usize + 1024).max(8192)
}

/// A listener bound to one NFLOG group in the calling thread's network namespace.
pub struct DenyListener {
    subscription: Subscription,
    group: u16,
    stats: DenyStats,
}

impl DenyListener {
    /// Binds `group`, copying `copy_range` bytes of each packet.
    pub fn bind(group: u16, copy_range: u32) -> Result<Self, DenyError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        let mut listener = Self {
            subscription: Subscription::new(
                socket,
                DATAGRAMS_PER_READ,
                datagram_slot(copy_range),
                OnLoss::Skip,
            ),
            group,
            stats: DenyStats::default(),
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

    /// Asks for a `bytes`-byte socket receive buffer (the kernel's default is
    /// `net.core.rmem_default`); returns what the kernel granted.
    pub fn set_receive_buffer(&mut self, bytes: usize) -> usize {
        crate::netlink::set_receive_buffer(self.subscription.socket().as_raw_fd(), bytes).0
    }

    /// The group this listener is bound to.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Ends every later wait of [`DenyListener::receive`] early once `interrupt` (an
    /// [`crate::netlink::Interrupt`]'s descriptor, which must outlive this) is raised.
    pub fn set_interrupt(&mut self, interrupt: std::os::fd::RawFd) {
        self.subscription.set_interrupt(interrupt);
    }

    /// Counters so far.
    pub fn stats(&self) -> DenyStats {
        DenyStats {
            lost: self.subscription.lost(),
            ..self.stats
        }
    }

    fn configure(
        &mut self,
        nlas: Vec<netlink_packet_netfilter::nflog::ConfigNla>,
    ) -> Result<(), DenyError> {
        let mut request = config_request(NetfilterProtoFamily::Unspec, self.group, nlas);
        request.finalize();
        let mut bytes = vec![0u8; request.header.length as usize];
        request.serialize(&mut bytes);
        let socket = self.subscription.socket();
        socket.send(&bytes, 0)?;
        let mut reply = Vec::with_capacity(8192);
        socket.recv(&mut reply, 0)?;
        for message in Messages::new(&reply) {
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

    /// Waits up to `timeout` for logged packets, then reads what is queued (a bounded
    /// number of datagrams) and hands each packet to `on_event`; returns how many events
    /// were delivered. Losses and unreadable packets are counted in
    /// [`DenyListener::stats`], and the read goes on past them: after an overflow with
    /// what is still queued, after a bad datagram with the next one. Nothing is allocated
    /// per packet.
    pub fn receive(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(&DenyEvent<'_>),
    ) -> Result<usize, DenyError> {
        let stats = &mut self.stats;
        let mut delivered = 0;
        self.subscription
            .receive(timeout, DRAIN_LIMIT, |header, payload| {
                if header.kind != NFULNL_MSG_PACKET || payload.len() < NFGEN_LEN {
                    return Verdict::Skipped;
                }
                let Ok(logged) = Logged::parse(&payload[NFGEN_LEN..]) else {
                    return Verdict::Unreadable;
                };
                match parse_packet(logged.packet) {
                    Ok(tuple) => {
                        on_event(&DenyEvent {
                            tuple,
                            hook: logged.hook,
                            in_ifindex: logged.in_ifindex,
                            out_ifindex: logged.out_ifindex,
                            mark: logged.mark,
                            timestamp: logged.timestamp,
                            prefix: logged.prefix,
                            policy: parse_prefix(logged.prefix),
                        });
                        stats.events += 1;
                        delivered += 1;
                        Verdict::Delivered
                    }
                    Err(_) => {
                        stats.unreadable += 1;
                        Verdict::Skipped
                    }
                }
            })?;
        Ok(delivered)
    }
}

/// The attributes of one logged packet (`NFULNL_MSG_PACKET` after its nfgenmsg).
#[derive(Default)]
struct Logged<'a> {
    hook: u8,
    in_ifindex: Option<u32>,
    out_ifindex: Option<u32>,
    mark: u32,
    timestamp: Option<(u64, u64)>,
    prefix: &'a str,
    packet: &'a [u8],
}

impl<'a> Logged<'a> {
    fn parse(attributes: &'a [u8]) -> Result<Self, ParseError> {
        let mut logged = Logged::default();
        for attr in Attributes::new(attributes) {
            let attr = attr?;
            match attr.kind {
                NFULA_PACKET_HDR if attr.payload.len() >= 3 => logged.hook = attr.payload[2],
                NFULA_MARK => logged.mark = attr.be32()?,
                NFULA_TIMESTAMP if attr.payload.len() >= 16 => {
                    let word = |at: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&attr.payload[at..at + 8]);
                        u64::from_be_bytes(b)
                    };
                    logged.timestamp = Some((word(0), word(8)));
                }
                NFULA_IFINDEX_INDEV => logged.in_ifindex = Some(attr.be32()?),
                NFULA_IFINDEX_OUTDEV => logged.out_ifindex = Some(attr.be32()?),
                NFULA_PAYLOAD => logged.packet = attr.payload,
                NFULA_PREFIX => {
                    let text = attr.payload.split(|b| *b == 0).next().unwrap_or(&[]);
                    logged.prefix = std::str::from_utf8(text).unwrap_or("");
                }
                _ => {}
            }
        }
        Ok(logged)
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
