//! A netlink socket for requests and their replies: several requests go out in one send,
//! and each reply is handed back with the index of the request it answers. A request is
//! answered by one message without `NLM_F_MULTI` (a get), by `NLMSG_DONE` (a dump), or by
//! `NLMSG_ERROR`. Replies of other sequence numbers (left over from an exchange that gave
//! up) are skipped.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

use super::{
    MessageHeader, Messages, NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    ParseError, error_code,
};

/// A dump datagram is at most 32 KiB; a little more leaves headroom.
const RECEIVE_BUFFER: usize = 64 * 1024;
/// A request the kernel has not answered by then is given up: a scrape must not hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong in an exchange, apart from the kernel refusing one request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The socket failed (open, send, receive, timeout).
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel's bytes did not parse.
    #[error("malformed netlink reply: {0}")]
    Parse(#[from] ParseError),
    /// A reply did not fit the receive buffer.
    #[error("netlink reply of {0} bytes truncated")]
    Truncated(usize),
    /// The kernel ran out of room during a dump (NLMSG_OVERRUN).
    #[error("netlink dump overrun")]
    Overrun,
}

impl RequestError {
    /// The errno of a failed system call, if that is what this is.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Self::Io(error) => error.raw_os_error(),
            _ => None,
        }
    }
}

/// One reply to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A get's answer or one message of a dump: its header and the payload after it.
    Message(MessageHeader, &'a [u8]),
    /// The kernel refused the request with this errno (positive, e.g. `libc::ENODEV`).
    Refused(i32),
}

/// A request socket in the calling thread's network namespace.
pub struct RequestSocket {
    socket: Socket,
    receive: Vec<u8>,
    sequence: u32,
}

impl RequestSocket {
    /// Opens a socket of netlink `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`, ...).
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_receive_timeout(&socket, REPLY_TIMEOUT)?;
        Ok(Self {
            socket,
            receive: Vec::with_capacity(RECEIVE_BUFFER),
            sequence: 0,
        })
    }

    /// The socket, for options its protocol needs.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The sequence number of the next request; reserve `count` of them.
    pub fn reserve(&mut self, count: usize) -> u32 {
        let first = self.sequence.wrapping_add(1);
        self.sequence = self.sequence.wrapping_add(count as u32);
        first
    }

    /// Sends `requests`, `count` messages numbered from `first` on, and hands every reply
    /// to `on_reply` with its request's index, until each request is answered. When
    /// `on_reply` fails, the replies still due are read (and not handed on) before its
    /// error is returned: a dump left half-read would make the socket's next dump fail
    /// (EBUSY).
    pub fn exchange<E: From<RequestError>>(
        &mut self,
        requests: &[u8],
        first: u32,
        count: usize,
        mut on_reply: impl FnMut(usize, Reply<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if count == 0 {
            return Ok(());
        }
        self.socket
            .send(requests, 0)
            .map_err(|e| E::from(RequestError::Io(e)))?;
        let mut answered = 0;
        let mut failure = None;
        while answered < count {
            self.receive_one()?;
            for message in Messages::new(&self.receive) {
                let (header, payload) = message.map_err(RequestError::from)?;
                let index = header.sequence.wrapping_sub(first) as usize;
                if index >= count {
                    continue;
                }
                let reply = match header.kind {
                    NLMSG_NOOP => continue,
                    NLMSG_OVERRUN => return Err(RequestError::Overrun.into()),
                    NLMSG_ERROR | NLMSG_DONE => {
                        answered += 1;
                        // DONE carries the dump's own error, if it failed midway.
                        let code = if payload.len() >= 4 {
                            error_code(payload).map_err(RequestError::from)?
                        } else {
                            0
                        };
                        if code == 0 {
                            continue;
                        }
                        Reply::Refused(code.saturating_neg())
                    }
                    _ => {
                        if header.flags & NLM_F_MULTI == 0 {
                            answered += 1;
                        }
                        Reply::Message(header, payload)
                    }
                };
                if failure.is_none()
                    && let Err(error) = on_reply(index, reply)
                {
                    failure = Some(error);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn receive_one(&mut self) -> Result<(), RequestError> {
        self.receive.clear();
        loop {
            match self.socket.recv(&mut self.receive, libc::MSG_TRUNC) {
                Ok(length) if length > self.receive.capacity() => {
                    return Err(RequestError::Truncated(length));
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Sets `SO_RCVTIMEO` on a socket.
fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the socket is live; value outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::rtnetlink::{
        LinkMessage, RTM_NEWLINK, link_dump_request, link_get_request,
    };

    /// Reads only: the links of the namespace the test runs in.
    #[test]
    fn replies_find_their_requests_and_a_failed_dump_is_read_to_its_end() {
        let mut socket = RequestSocket::open(netlink_sys::protocols::NETLINK_ROUTE).unwrap();
        // Two gets in one send: loopback (index 1) and an index nobody has.
        let first = socket.reserve(2);
        let mut buf = Vec::new();
        link_get_request(&mut buf, first, 1);
        link_get_request(&mut buf, first + 1, 0x7fff_fff0);
        let mut answers = Vec::new();
        socket
            .exchange(&buf, first, 2, |index, reply| {
                answers.push(match reply {
                    Reply::Message(header, payload) => {
                        assert_eq!(header.kind, RTM_NEWLINK);
                        (index, LinkMessage::parse(payload)?.name.to_owned())
                    }
                    Reply::Refused(errno) => (index, format!("errno {errno}")),
                });
                Ok::<_, RequestError>(())
            })
            .unwrap();
        assert_eq!(
            answers,
            [(0, "lo".to_owned()), (1, format!("errno {}", libc::ENODEV))]
        );
        // A dump whose reader fails at the first link: the error comes back, and the
        // socket's next dump still works (the first was read to its end).
        for fail in [true, false] {
            let sequence = socket.reserve(1);
            link_dump_request(&mut buf, sequence);
            let mut links = 0;
            let result = socket.exchange(&buf, sequence, 1, |_, _| {
                links += 1;
                if fail {
                    return Err(RequestError::Overrun);
                }
                Ok(())
            });
            if fail {
                assert!(matches!(result, Err(RequestError::Overrun)));
                assert_eq!(links, 1);
            } else {
                result.unwrap();
                assert!(links >= 1);
            }
        }
    }
}
