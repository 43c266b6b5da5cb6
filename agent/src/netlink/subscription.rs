//! The one receive loop of the netlink sockets the kernel writes to unasked: conntrack's
//! event groups and the NFLOG group. Both wait for readiness (or the agent's interrupt),
//! then drain what is queued with `recvmmsg`, a bounded number of datagrams per call, and
//! count what the kernel or the bytes lost: a socket overflow (ENOBUFS), a datagram larger
//! than its slot, netlink framing that does not parse, an overrun message, or a message
//! its reader could not read. The reader of each source only reads its own messages.
//!
//! What a loss means differs: conntrack's reader resynchronises from a dump, so the read
//! stops at the first loss ([`OnLoss::Stop`]); NFLOG has nothing to resynchronise from, so
//! its read counts the loss and goes on with the next datagram ([`OnLoss::Skip`]).

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

/// What a read does after a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLoss {
    /// Stop and report [`Received::Lost`]: the reader resynchronises (what the same read
    /// brought after the loss is dropped with it).
    Stop,
    /// Count it and read on: from the next datagram after a bad one, from the queue after
    /// an overflow. [`Received::Lost`] is never returned.
    Skip,
}

/// A reader's verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Read and handed on.
    Delivered,
    /// Not one of the reader's messages, or one it counts itself (not a loss).
    Skipped,
    /// The message did not parse: counted as a loss (the rest of its datagram is not read).
    Unreadable,
}

/// A subscribed netlink socket and the buffers it is drained into, allocated once.
pub struct Subscription {
    socket: Socket,
    batch: DatagramBatch,
    on_loss: OnLoss,
    interrupt: Option<RawFd>,
    lost: u64,
    more_queued: bool,
}

impl Subscription {
    /// Reads `socket` up to `per_read` datagrams per system call, each of up to `slot`
    /// bytes (a larger one is a loss).
    pub fn new(socket: Socket, per_read: usize, slot: usize, on_loss: OnLoss) -> Self {
        Self {
            socket,
            batch: DatagramBatch::new(per_read, slot),
            on_loss,
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
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost += 1;
                    match self.on_loss {
                        OnLoss::Stop => return Ok(Received::Lost),
                        // What is still queued is newer: read it.
                        OnLoss::Skip => continue,
                    }
                }
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
                if !self.read_datagram(index, &mut read, &mut delivered)
                    && self.on_loss == OnLoss::Stop
                {
                    return Ok(Received::Lost);
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

    /// Hands datagram `index` of the last read to `read`, message by message; false (and
    /// one loss counted) when it did not fit its slot, or a message did not parse or was an
    /// overrun: the rest of the datagram is not read.
    fn read_datagram(
        &mut self,
        index: usize,
        read: &mut impl FnMut(&MessageHeader, &[u8]) -> Verdict,
        delivered: &mut usize,
    ) -> bool {
        // A datagram larger than its slot lost its end.
        let Some(datagram) = self.batch.datagram(index) else {
            self.lost += 1;
            return false;
        };
        for message in Messages::new(datagram) {
            let Ok((header, payload)) = message else {
                self.lost += 1;
                return false;
            };
            match header.kind {
                NLMSG_OVERRUN => {
                    self.lost += 1;
                    return false;
                }
                NLMSG_NOOP | NLMSG_ERROR | NLMSG_DONE => continue,
                _ => {}
            }
            match read(&header, payload) {
                Verdict::Delivered => *delivered += 1,
                Verdict::Skipped => {}
                Verdict::Unreadable => {
                    self.lost += 1;
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    /// A datagram socket pair standing in for the kernel's end: what is written to the
    /// second end is read by a subscription on the first.
    fn pair(on_loss: OnLoss) -> (Subscription, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into the array on success.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just made and are owned by nothing else.
        let (ours, theirs) = unsafe { (Socket::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (Subscription::new(ours, 4, 256, on_loss), theirs)
    }

    fn send(fd: &OwnedFd, datagram: &[u8]) {
        // SAFETY: sends from a live buffer on a descriptor this test owns.
        let sent = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
            )
        };
        assert_eq!(sent, datagram.len() as isize);
    }

    /// A netlink message of `kind` with a 4-byte payload `value`.
    fn message(kind: u16, value: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&20u32.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&value.to_ne_bytes());
        bytes
    }

    /// Good datagrams around a bad one of each kind: too large for its slot, framing that
    /// does not parse, an overrun, and a message its reader cannot read (value 666).
    fn feed(fd: &OwnedFd) {
        send(fd, &[message(0x100, 1), message(0x100, 2)].concat());
        send(fd, &vec![0u8; 300]);
        send(fd, &message(0x100, 3));
        // A header that claims 64 bytes where 20 follow.
        let mut cut = message(0x100, 0);
        cut[..4].copy_from_slice(&64u32.to_ne_bytes());
        send(fd, &[message(0x100, 4), cut].concat());
        send(fd, &message(NLMSG_OVERRUN, 0));
        send(fd, &[message(0x100, 666), message(0x100, 5)].concat());
        send(fd, &[message(NLMSG_NOOP, 0), message(0x100, 6)].concat());
    }

    fn read_all(subscription: &mut Subscription) -> (Vec<Received>, Vec<u32>) {
        let mut results = Vec::new();
        let mut values = Vec::new();
        loop {
            let received = subscription
                .receive(Some(Duration::from_millis(10)), 64, |header, payload| {
                    assert_eq!(header.kind, 0x100);
                    let value = u32::from_ne_bytes(payload.try_into().unwrap());
                    if value == 666 {
                        return Verdict::Unreadable;
                    }
                    values.push(value);
                    Verdict::Delivered
                })
                .unwrap();
            if received == Received::Idle {
                return (results, values);
            }
            results.push(received);
        }
    }

    #[test]
    fn skipping_losses_reads_every_good_datagram_and_counts_each_bad_one() {
        let (mut subscription, theirs) = pair(OnLoss::Skip);
        feed(&theirs);
        let (results, values) = read_all(&mut subscription);
        // One receive drains every read (four datagrams each) of the queue.
        assert_eq!(results, [Received::Messages(5)]);
        // The good message before the bad framing is read; the one after the unreadable
        // message, in its datagram, is not.
        assert_eq!(values, [1, 2, 3, 4, 6]);
        assert_eq!(subscription.lost(), 4);
        assert!(!subscription.more_queued());
    }

    #[test]
    fn stopping_at_a_loss_drops_the_rest_of_that_read() {
        let (mut subscription, theirs) = pair(OnLoss::Stop);
        feed(&theirs);
        let (results, values) = read_all(&mut subscription);
        // The first receive stops at the oversized datagram, and the two after it in the
        // same read (four datagrams) go with it; the next receive reads on from the queue
        // and stops at the overrun, which takes the last two with it.
        assert_eq!(results, [Received::Lost, Received::Lost]);
        assert_eq!(values, [1, 2]);
        assert_eq!(subscription.lost(), 2);
    }

    #[test]
    fn an_interrupt_ends_the_wait() {
        let (mut subscription, _theirs) = pair(OnLoss::Stop);
        let interrupt = super::super::Interrupt::new().unwrap();
        subscription.set_interrupt(interrupt.raw());
        interrupt.raise();
        let started = std::time::Instant::now();
        let received = subscription
            .receive(None, 64, |_, _| Verdict::Delivered)
            .unwrap();
        assert_eq!(received, Received::Idle);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
