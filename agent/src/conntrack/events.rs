//! Conntrack events: NEW, UPDATE and DESTROY from the ctnetlink multicast groups.
//! DESTROY carries the final counters (with accounting on); NEW and UPDATE carry none.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::entry::{ConntrackEntry, parse_entry};
use super::socket::ConntrackError;
use crate::netlink::{
    Messages, NLM_F_CREATE, NLM_F_EXCL, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, set_receive_buffer,
};

const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const CT_NEW: u16 = 1 << 8;
const CT_DELETE: u16 = (1 << 8) | 2;

/// Datagrams read per [`ConntrackEvents::receive`] call before returning to the caller.
pub const DRAIN_LIMIT: usize = 1024;

/// Default receive buffer: a flush of 100k entries lost none with 8 MiB on this kernel.
pub const DEFAULT_EVENT_BUFFER: usize = 8 << 20;

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

/// How one receive went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// This many events were delivered to the callback.
    Events(usize),
    /// The wait timed out with nothing to read.
    Idle,
    /// The kernel dropped events (ENOBUFS): the caller must resync with a full dump.
    Lost,
}

/// A subscription to conntrack events in the calling thread's network namespace.
pub struct ConntrackEvents {
    socket: Socket,
    buffer: Vec<u8>,
    receive_buffer: usize,
    forced: bool,
    lost: u64,
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
            socket,
            buffer: Vec::with_capacity(64 * 1024),
            receive_buffer: granted,
            forced,
            lost: 0,
        })
    }

    /// The receive buffer the kernel granted (it reports twice the size asked for).
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// False when SO_RCVBUFFORCE was refused and the buffer is capped by rmem_max.
    pub fn buffer_forced(&self) -> bool {
        self.forced
    }

    /// Times the kernel reported lost events.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Waits up to `timeout` (None: forever) for events, then drains every datagram already
    /// queued (up to [`DRAIN_LIMIT`]) without waiting again, handing each event to
    /// `on_event`. Parsing reuses one entry: nothing is allocated per event.
    pub fn receive(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(EventKind, &ConntrackEntry),
    ) -> Result<Received, ConntrackError> {
        if !self.wait(timeout)? {
            return Ok(Received::Idle);
        }
        let mut entry = ConntrackEntry::default();
        let mut delivered = 0;
        for _ in 0..DRAIN_LIMIT {
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost += 1;
                    return Ok(Received::Lost);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            for message in Messages::new(&self.buffer) {
                let (header, payload) = message?;
                let kind = match header.kind {
                    CT_NEW if header.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 => EventKind::New,
                    CT_NEW => EventKind::Update,
                    CT_DELETE => EventKind::Destroy,
                    NLMSG_OVERRUN => {
                        self.lost += 1;
                        return Ok(Received::Lost);
                    }
                    NLMSG_NOOP | NLMSG_ERROR => continue,
                    _ => continue,
                };
                parse_entry(payload, &mut entry)?;
                on_event(kind, &entry);
                delivered += 1;
            }
        }
        Ok(if delivered == 0 {
            Received::Idle
        } else {
            Received::Events(delivered)
        })
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, ConntrackError> {
        let mut pollfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: pollfd is a valid single-element array for the duration of the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(error.into());
        }
        Ok(ready > 0)
    }
}
