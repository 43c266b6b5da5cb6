//! The one receive loop of the netlink sockets the kernel writes to unasked: conntrack's
//! event groups and the NFLOG group. Both wait for readiness (or the agent's interrupt),
//! then drain what is queued with `recvmmsg`, a bounded number of datagrams per call, and
//! count what the kernel or the bytes lost: a socket overflow (ENOBUFS), a datagram larger
//! than its slot, netlink framing that does not parse, an overrun message, or a message
//! its reader could not read. The reader of each source only reads its own messages.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use netlink_sys::Socket;

use super::{
    DatagramBatch, MessageHeader, Messages, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    wait_readable,
};

/// What one [`Subscription::receive`] brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// This many messages were delivered.
    Messages(usize),
    /// Nothing to read: the wait timed out, the interrupt was raised, or a signal came.
    Idle,
    /// Messages were lost (counted in [`Subscription::lost`]). Whatever the same read
    /// brought after the loss is dropped with it: what is still queued is newer.
    Lost,
}

/// A reader's verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Read and handed on.
    Delivered,
    /// Not one of the reader's messages, or one it counts itself (not a loss).
    Skipped,
    /// The message did not parse: counted as a loss, and the read stops there.
    Unreadable,
}

/// A subscribed netlink socket and the buffers it is drained into, allocated once.
pub struct Subscription {
    socket: Socket,
    batch: DatagramBatch,
    interrupt: Option<RawFd>,
    lost: u64,
    more_queued: bool,
}

impl Subscription {
    /// Reads `socket` up to `per_read` datagrams per system call, each of up to `slot`
    /// bytes (a larger one is a loss).
    pub fn new(socket: Socket, per_read: usize, slot: usize) -> Self {
        Self {
            socket,
            batch: DatagramBatch::new(per_read, slot),
            interrupt: None,
            lost: 0,
            more_queued: false,
        }
    }

    /// The socket, for the requests and options of its protocol.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Ends every later wait of [`Subscription::receive`] early once `interrupt` (an
    /// [`super::Interrupt`]'s descriptor, which must outlive this) is raised.
    pub fn set_interrupt(&mut self, interrupt: RawFd) {
        self.interrupt = Some(interrupt);
    }

    /// Losses so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// True when the last [`Subscription::receive`] stopped at its limit with more
    /// datagrams still queued.
    pub fn more_queued(&self) -> bool {
        self.more_queued
    }

    /// Reads and discards everything queued, without waiting; returns the datagrams
    /// discarded. After a loss the kernel drops every new message, without another error,
    /// until the queue has been read empty: a reader that resynchronises from a dump must
    /// call this before the dump, so that messages of the dump's time reach it.
    pub fn discard_queued(&mut self) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let mut discarded = 0;
        // Bounded: under a flood the queue may never be empty for long; what is left is
        // read normally, and a later loss is handled again.
        for _ in 0..4096 {
            match self.batch.receive(fd) {
                Ok(0) => return Ok(discarded),
                Ok(count) => discarded += count,
                // The loss is what the caller is handling already.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(discarded),
                Err(e) => return Err(e),
            }
        }
        Ok(discarded)
    }

    /// Waits up to `timeout` (None: no limit) for the socket, then reads what is queued
    /// without waiting again, up to `limit` datagrams, handing each message to `read`.
    /// Control messages (NOOP, ERROR, DONE) are skipped.
    pub fn receive(
        &mut self,
        timeout: Option<Duration>,
        limit: usize,
        mut read: impl FnMut(&MessageHeader, &[u8]) -> Verdict,
    ) -> io::Result<Received> {
        if !wait_readable(self.socket.as_raw_fd(), self.interrupt, timeout)? {
            return Ok(Received::Idle);
        }
        let fd = self.socket.as_raw_fd();
        let per_read = self.batch.slots();
        let mut delivered = 0;
        // Cleared when a read finds the queue empty before the limit.
        self.more_queued = true;
        for _ in 0..limit.div_ceil(per_read).max(1) {
            let count = match self.batch.receive(fd) {
                Ok(count) => count,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(self.loss()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.more_queued = false;
                    break;
                }
                Err(e) => return Err(e),
            };
            for index in 0..count {
                // A datagram larger than its slot lost its end.
                let Some(datagram) = self.batch.datagram(index) else {
                    return Ok(self.loss());
                };
                for message in Messages::new(datagram) {
                    let Ok((header, payload)) = message else {
                        return Ok(self.loss());
                    };
                    match header.kind {
                        NLMSG_OVERRUN => return Ok(self.loss()),
                        NLMSG_NOOP | NLMSG_ERROR | NLMSG_DONE => continue,
                        _ => {}
                    }
                    match read(&header, payload) {
                        Verdict::Delivered => delivered += 1,
                        Verdict::Skipped => {}
                        Verdict::Unreadable => return Ok(self.loss()),
                    }
                }
            }
            if count < per_read {
                self.more_queued = false;
                break;
            }
        }
        Ok(if delivered == 0 {
            Received::Idle
        } else {
            Received::Messages(delivered)
        })
    }

    fn loss(&mut self) -> Received {
        self.lost += 1;
        Received::Lost
    }
}
