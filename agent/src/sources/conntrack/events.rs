//! Conntrack events: NEW, UPDATE and DESTROY from the ctnetlink multicast groups.
//! DESTROY carries the final counters (with accounting on); NEW and UPDATE carry none.

use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::entry::{ConntrackEntry, parse_entry};
use super::socket::ConntrackError;
pub use crate::netlink::subscription::Received;
use crate::netlink::subscription::{OnLoss, Subscription, Verdict};
use crate::netlink::{
    HEADER_LEN, NFGEN_LEN, NLM_F_CREATE, NLM_F_EXCL, attach_filter, set_receive_buffer,
};

const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const CT_NEW: u16 = 1 << 8;
const CT_DELETE: u16 = (1 << 8) | 2;

/// Datagrams read per [`ConntrackEvents::receive`] call before returning to the caller.
pub const DRAIN_LIMIT: usize = 1024;
/// Events read per system call (recvmmsg), and the room for each: an event message is a
/// few hundred bytes (more with labels or a helper), far below a page.
const EVENTS_PER_READ: usize = 64;
const EVENT_SLOT: usize = 4096;

/// Default receive buffer: a flush of 100k entries (`conntrack -F`) lost none with 8 MiB on
/// this kernel. 100k UDP entries timing out within a second, while the same thread ran a
/// dump, overflowed it and a 32 MiB one too: the loss is counted and resynced by a dump.
pub const DEFAULT_EVENT_BUFFER: usize = 8 << 20;

const CTA_PROTOINFO: u32 = 4;
const CTA_PROTOINFO_TCP: u32 = 1;
const CTA_PROTOINFO_TCP_STATE: u32 = 1;
const TCP_TIME_WAIT: u32 = 7;
const TCP_CLOSE: u32 = 8;

/// The classic BPF program of [`ConntrackEvents::keep_only_ended_tcp_updates`]. It runs on
/// each event's netlink message: the header's type and flags tell an UPDATE, then the
/// kernel's attribute-finding extensions walk CTA_PROTOINFO → CTA_PROTOINFO_TCP →
/// CTA_PROTOINFO_TCP_STATE, and the state byte decides.
fn ended_tcp_update_filter() -> [libc::sock_filter; 20] {
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_B_IND: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_IND) as u16;
    const LD_IMM: u16 = (libc::BPF_LD | libc::BPF_IMM) as u16;
    const LDX_IMM: u16 = (libc::BPF_LDX | libc::BPF_IMM) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // A = offset of attribute X, searched from offset A (0: none); _NEST searches inside
    // the attribute whose header is at A.
    const NLATTR: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_NLATTR) as u32;
    const NLATTR_NEST: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_NLATTR_NEST) as u32;
    // Netlink headers are in host byte order; BPF loads read big-endian.
    let host16 = |value: u16| u32::from(u16::from_be_bytes(value.to_ne_bytes()));
    let op = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    [
        /* 0 */ op(LD_H_ABS, 4), // nlmsg_type
        /* 1 */ jump(JEQ, host16(CT_NEW), 0, 17), // not NEW/UPDATE: accept
        /* 2 */ op(LD_H_ABS, 6), // nlmsg_flags
        /* 3 */ jump(JSET, host16(NLM_F_CREATE | NLM_F_EXCL), 15, 0), // NEW: accept
        /* 4 */ op(LD_IMM, (HEADER_LEN + NFGEN_LEN) as u32),
        /* 5 */ op(LDX_IMM, CTA_PROTOINFO),
        /* 6 */ op(LD_W_ABS, NLATTR),
        /* 7 */ jump(JEQ, 0, 10, 0), // no protocol info (not TCP): drop
        /* 8 */ op(LDX_IMM, CTA_PROTOINFO_TCP),
        /* 9 */ op(LD_W_ABS, NLATTR_NEST),
        /* 10 */ jump(JEQ, 0, 7, 0),
        /* 11 */ op(LDX_IMM, CTA_PROTOINFO_TCP_STATE),
        /* 12 */ op(LD_W_ABS, NLATTR_NEST),
        /* 13 */ jump(JEQ, 0, 4, 0),
        /* 14 */ op(TAX, 0),
        /* 15 */ op(LD_B_IND, 4), // the state, after the attribute's 4-byte header
        /* 16 */ jump(JEQ, TCP_TIME_WAIT, 2, 0),
        /* 17 */ jump(JEQ, TCP_CLOSE, 1, 0),
        /* 18 */ op(RET, 0),
        /* 19 */ op(RET, u32::MAX),
    ]
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    New,
    Update,
    Destroy,
}

/// Which events to subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventGroups {
    pub new: bool,
    pub update: bool,
    pub destroy: bool,
}

impl EventGroups {
    /// All three groups.
    pub const ALL: Self = Self {
        new: true,
        update: true,
        destroy: true,
    };
}

/// A subscription to conntrack events in the calling thread's network namespace.
pub struct ConntrackEvents {
    subscription: Subscription,
    receive_buffer: usize,
    forced: bool,
}

impl ConntrackEvents {
    /// Subscribes to `groups`, asking for a `receive_buffer`-byte socket buffer.
    pub fn subscribe(groups: EventGroups, receive_buffer: usize) -> Result<Self, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        let (granted, forced) = set_receive_buffer(socket.as_raw_fd(), receive_buffer);
        socket.bind_auto()?;
        for (wanted, group) in [
            (groups.new, NFNLGRP_CONNTRACK_NEW),
            (groups.update, NFNLGRP_CONNTRACK_UPDATE),
            (groups.destroy, NFNLGRP_CONNTRACK_DESTROY),
        ] {
            if wanted {
                socket.add_membership(group)?;
            }
        }
        Ok(Self {
            subscription: Subscription::new(socket, EVENTS_PER_READ, EVENT_SLOT, OnLoss::Stop),
            receive_buffer: granted,
            forced,
        })
    }

    /// Lets through only the UPDATE events of TCP connections entering TIME_WAIT or CLOSE
    /// (NEW, DESTROY and every other message pass). The other UPDATEs (a short TCP
    /// connection makes five: SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK) carry
    /// no counters and nothing the poll does not bring; dropped by the kernel, they cost
    /// the agent neither a wake-up nor a system call nor room in the receive buffer.
    pub fn keep_only_ended_tcp_updates(&mut self) -> Result<(), ConntrackError> {
        attach_filter(
            self.subscription.socket().as_raw_fd(),
            &ended_tcp_update_filter(),
        )?;
        Ok(())
    }

    /// Ends every later wait of [`ConntrackEvents::receive`] early once `interrupt` (an
    /// [`crate::netlink::Interrupt`]'s descriptor, which must outlive this) is raised.
    pub fn set_interrupt(&mut self, interrupt: std::os::fd::RawFd) {
        self.subscription.set_interrupt(interrupt);
    }

    /// The receive buffer the kernel granted (it reports twice the size asked for).
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// False when SO_RCVBUFFORCE was refused and the buffer is capped by rmem_max.
    pub fn buffer_forced(&self) -> bool {
        self.forced
    }

    /// Times events were lost: the kernel dropped them (ENOBUFS), or one did not fit its
    /// slot or did not parse.
    pub fn lost(&self) -> u64 {
        self.subscription.lost()
    }

    /// True when the last [`ConntrackEvents::receive`] stopped at [`DRAIN_LIMIT`] with more
    /// datagrams still queued.
    pub fn more_queued(&self) -> bool {
        self.subscription.more_queued()
    }

    /// Reads and discards everything queued, without waiting (see
    /// [`Subscription::discard_queued`]: the resync dump after a loss comes after this).
    pub fn discard_queued(&mut self) -> Result<usize, ConntrackError> {
        Ok(self.subscription.discard_queued()?)
    }

    /// Waits up to `timeout` (None: forever) for events, then drains every datagram already
    /// queued (up to [`DRAIN_LIMIT`]) without waiting again, handing each event to
    /// `on_event`. [`Received::Lost`]: the caller must resync with a full dump. Parsing
    /// reuses one entry: nothing is allocated per event.
    pub fn receive(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(EventKind, &ConntrackEntry),
    ) -> Result<Received, ConntrackError> {
        let mut entry = ConntrackEntry::default();
        let received = self
            .subscription
            .receive(timeout, DRAIN_LIMIT, |header, payload| {
                let kind = match header.kind {
                    CT_NEW if header.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 => EventKind::New,
                    CT_NEW => EventKind::Update,
                    CT_DELETE => EventKind::Destroy,
                    _ => return Verdict::Skipped,
                };
                // The kernel's bytes did not parse: the caller resyncs as for a loss.
                if parse_entry(payload, &mut entry).is_err() {
                    return Verdict::Unreadable;
                }
                on_event(kind, &entry);
                Verdict::Delivered
            })?;
        Ok(received)
    }
}
