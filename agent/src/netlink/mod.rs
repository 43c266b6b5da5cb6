//! Just enough netlink to speak ctnetlink, rtnetlink and generic netlink without
//! allocating: message and attribute (NLA) iterators that hand out borrowed views, a
//! request builder that writes into a caller's buffer, and a request socket
//! ([`socket::RequestSocket`]) that matches replies to requests.

pub mod socket;
pub mod subscription;

/// Length of `struct nlmsghdr`.
pub const HEADER_LEN: usize = 16;
/// Length of `struct nfgenmsg`, which follows the header of every netfilter message.
pub const NFGEN_LEN: usize = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP_FILTERED: u16 = 0x20;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

/// Attribute type flags carried in the top bits of `nla_type`.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Malformed netlink bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A message header claims fewer than 16 bytes or more than the datagram holds.
    #[error("netlink message length {length} is invalid ({available} bytes available)")]
    BadMessageLength { length: u32, available: usize },
    /// An attribute claims fewer than 4 bytes or more than its parent holds.
    #[error("netlink attribute length {length} is invalid ({available} bytes available)")]
    BadAttributeLength { length: u16, available: usize },
    /// An attribute's payload has the wrong size for its type.
    #[error("attribute {attribute} has an invalid {length}-byte payload")]
    BadPayload { attribute: u16, length: usize },
    /// A message too short for its fixed part.
    #[error("message truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
}

#[inline]
fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// A netlink message header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub length: u32,
    pub kind: u16,
    pub flags: u16,
    pub sequence: u32,
    pub port: u32,
}

/// Iterates the messages of one received datagram.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Messages<'a> {
    /// Messages in `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        Self {
            rest: datagram,
            failed: false,
        }
    }
}

impl<'a> Iterator for Messages<'a> {
    /// A header and the payload after it.
    type Item = Result<(MessageHeader, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.len() < HEADER_LEN {
            return None;
        }
        let b = self.rest;
        let header = MessageHeader {
            length: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            kind: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            sequence: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            port: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        };
        let length = header.length as usize;
        if length < HEADER_LEN || length > b.len() {
            self.failed = true;
            return Some(Err(ParseError::BadMessageLength {
                length: header.length,
                available: b.len(),
            }));
        }
        let payload = &b[HEADER_LEN..length];
        self.rest = &b[align4(length).min(b.len())..];
        Some(Ok((header, payload)))
    }
}

/// One attribute: its type (flags masked off), whether it is nested, and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub kind: u16,
    pub nested: bool,
    pub payload: &'a [u8],
}

impl<'a> Attribute<'a> {
    /// The nested attributes inside this one.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes::new(self.payload)
    }

    fn fixed<const N: usize>(&self) -> Result<[u8; N], ParseError> {
        self.payload.try_into().map_err(|_| ParseError::BadPayload {
            attribute: self.kind,
            length: self.payload.len(),
        })
    }

    /// An 8-bit payload.
    pub fn u8(&self) -> Result<u8, ParseError> {
        Ok(self.fixed::<1>()?[0])
    }

    /// A big-endian 16-bit payload (ctnetlink sends integers in network order).
    pub fn be16(&self) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.fixed()?))
    }

    /// A big-endian 32-bit payload.
    pub fn be32(&self) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }

    /// A big-endian 64-bit payload.
    pub fn be64(&self) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }

    /// A host-order 16-bit payload (rtnetlink and generic netlink use host order).
    pub fn u16(&self) -> Result<u16, ParseError> {
        Ok(u16::from_ne_bytes(self.fixed()?))
    }

    /// A host-order 32-bit payload.
    pub fn u32(&self) -> Result<u32, ParseError> {
        Ok(u32::from_ne_bytes(self.fixed()?))
    }

    /// A host-order signed 32-bit payload.
    pub fn i32(&self) -> Result<i32, ParseError> {
        Ok(i32::from_ne_bytes(self.fixed()?))
    }

    /// A NUL-terminated string payload (the NUL and anything after it is dropped); bytes
    /// that are not UTF-8 are an error.
    pub fn string(&self) -> Result<&'a str, ParseError> {
        let end = self
            .payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end]).map_err(|_| ParseError::BadPayload {
            attribute: self.kind,
            length: self.payload.len(),
        })
    }

    /// A 4-byte payload (IPv4 address).
    pub fn bytes4(&self) -> Result<[u8; 4], ParseError> {
        self.fixed()
    }

    /// A 16-byte payload (IPv6 address).
    pub fn bytes16(&self) -> Result<[u8; 16], ParseError> {
        self.fixed()
    }
}

/// Iterates attributes without allocating.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Attributes<'a> {
    /// Attributes in `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            failed: false,
        }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.len() < 4 {
            return None;
        }
        let b = self.rest;
        let length = u16::from_ne_bytes([b[0], b[1]]);
        let kind = u16::from_ne_bytes([b[2], b[3]]);
        let len = usize::from(length);
        if len < 4 || len > b.len() {
            self.failed = true;
            return Some(Err(ParseError::BadAttributeLength {
                length,
                available: b.len(),
            }));
        }
        self.rest = &b[align4(len).min(b.len())..];
        Some(Ok(Attribute {
            kind: kind & NLA_TYPE_MASK,
            nested: kind & NLA_F_NESTED != 0,
            payload: &b[4..len],
        }))
    }
}

/// Writes a netlink request into a buffer: header, nfgenmsg, then attributes; nested
/// attributes are opened and closed explicitly. Lengths are patched at the end.
pub struct RequestBuilder<'b> {
    buf: &'b mut Vec<u8>,
    /// Where this message starts in `buf`.
    start: usize,
    open: [usize; 4],
    depth: usize,
}

impl<'b> RequestBuilder<'b> {
    /// Starts a netfilter request of `kind` (subsystem << 8 | message) for `family`.
    pub fn new(buf: &'b mut Vec<u8>, kind: u16, flags: u16, sequence: u32, family: u8) -> Self {
        // nfgenmsg: family, version 0, resource id 0
        Self::with_header(buf, kind, flags, sequence, &[family, 0, 0, 0])
    }

    /// Starts a message of `kind` whose family header (`ifinfomsg`, `genlmsghdr`, ...)
    /// is `fixed`, written as given after the netlink header.
    pub fn with_header(
        buf: &'b mut Vec<u8>,
        kind: u16,
        flags: u16,
        sequence: u32,
        fixed: &[u8],
    ) -> Self {
        buf.clear();
        Self::append(buf, kind, flags, sequence, fixed)
    }

    /// Like [`RequestBuilder::with_header`], but after the messages already in `buf`:
    /// several requests (or a test's several replies) in one datagram.
    pub fn append(
        buf: &'b mut Vec<u8>,
        kind: u16,
        flags: u16,
        sequence: u32,
        fixed: &[u8],
    ) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&sequence.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Self {
            buf,
            start,
            open: [0; 4],
            depth: 0,
        }
    }

    /// Appends an attribute with `payload`.
    pub fn attribute(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let length = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&length.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Opens a nested attribute; close it with [`RequestBuilder::end_nested`].
    pub fn begin_nested(&mut self, kind: u16) -> &mut Self {
        self.open[self.depth] = self.buf.len();
        self.depth += 1;
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost nested attribute.
    pub fn end_nested(&mut self) -> &mut Self {
        self.depth -= 1;
        let start = self.open[self.depth];
        let length = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        self
    }

    /// Patches the message length and returns the buffer's bytes (every message in it).
    pub fn finish(self) -> &'b [u8] {
        let length = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&length.to_ne_bytes());
        self.buf
    }
}

/// The error code of an NLMSG_ERROR payload (0 is an acknowledgement).
pub fn error_code(payload: &[u8]) -> Result<i32, ParseError> {
    let code: [u8; 4] =
        payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(ParseError::Truncated {
                needed: 4,
                available: payload.len(),
            })?;
    Ok(i32::from_ne_bytes(code))
}

/// Asks for a receive buffer of `bytes` on a socket: `SO_RCVBUFFORCE` first (needs
/// CAP_NET_ADMIN, ignores net.core.rmem_max), then `SO_RCVBUF`. Returns the size the kernel
/// reports and whether the forced form was accepted.
pub fn set_receive_buffer(fd: std::os::fd::RawFd, bytes: usize) -> (usize, bool) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: fd is a live socket; value outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    let forced = set(libc::SO_RCVBUFFORCE) == 0;
    if !forced {
        set(libc::SO_RCVBUF);
    }
    let mut actual: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: actual and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut actual as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (if rc == 0 { actual as usize } else { 0 }, forced)
}

/// An eventfd that wakes the threads waiting in [`wait_readable`] for good: once raised
/// it stays readable, so a source thread can block until its next poll is due and still
/// stop at once.
pub struct Interrupt(std::os::fd::OwnedFd);

impl Interrupt {
    /// A new, unraised interrupt.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions; a valid result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by eventfd and is owned by nothing else.
        Ok(Self(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Wakes every waiter, now and later.
    pub fn raise(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd this value owns. A full
        // counter (EAGAIN) is already raised.
        unsafe { libc::write(self.raw(), one.as_ptr().cast(), one.len()) };
    }

    /// The descriptor to pass to [`wait_readable`].
    pub fn raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

/// Waits until `fd` is readable, `interrupt` (if any) was raised, or `timeout` (None:
/// no limit) passed; true only when `fd` is readable. A signal ends the wait early.
pub fn wait_readable(
    fd: std::os::fd::RawFd,
    interrupt: Option<std::os::fd::RawFd>,
    timeout: Option<std::time::Duration>,
) -> std::io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // A negative descriptor is ignored by poll.
            fd: interrupt.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let millis = timeout.map_or(-1, |t| {
        // Round up: a 0.4 ms wait must not become a busy 0 ms one.
        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    });
    // SAFETY: fds is a valid two-element array for the duration of the call.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error);
    }
    // Any event on the socket (an error or hang-up too) is for the read that follows to
    // report: treating it as "not ready" would send the caller straight back to poll.
    Ok(fds[0].revents != 0)
}

/// Reads many datagrams per system call (`recvmmsg`) into one buffer allocated once, a
/// fixed-size slot each. For sockets whose datagrams are small and many: conntrack events
/// (a few hundred bytes each) arrive one per datagram.
pub struct DatagramBatch {
    buffer: Vec<u8>,
    slot: usize,
    slots: usize,
    /// Length and truncation of each datagram of the last read.
    received: Vec<(usize, bool)>,
}

impl DatagramBatch {
    /// Most datagrams one read returns.
    pub const MAX_SLOTS: usize = 128;

    /// Room for `slots` (at most [`DatagramBatch::MAX_SLOTS`]) datagrams of up to `slot`
    /// bytes each.
    pub fn new(slots: usize, slot: usize) -> Self {
        let slots = slots.clamp(1, Self::MAX_SLOTS);
        Self {
            buffer: vec![0; slots * slot],
            slot,
            slots,
            received: Vec::with_capacity(slots),
        }
    }

    /// Datagrams one read can return.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Reads what is queued on `fd` without waiting, up to one datagram per slot; returns
    /// how many were read (WouldBlock when none is queued).
    pub fn receive(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        // SAFETY: all-zero iovec and mmsghdr values are valid (null pointers, zero lengths).
        let mut iovecs: [libc::iovec; Self::MAX_SLOTS] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; Self::MAX_SLOTS] = unsafe { std::mem::zeroed() };
        let base = self.buffer.as_mut_ptr();
        for (i, (iovec, header)) in iovecs
            .iter_mut()
            .zip(headers.iter_mut())
            .take(self.slots)
            .enumerate()
        {
            // SAFETY: i < slots, and the buffer holds slots * slot bytes: the offset is
            // inside it.
            iovec.iov_base = unsafe { base.add(i * self.slot) }.cast();
            iovec.iov_len = self.slot;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        self.received.clear();
        // SAFETY: each header points at one iovec of `iovecs`, each iovec at its own slot
        // of `buffer` (disjoint ranges derived from one pointer); all outlive the call. No
        // address or control buffer is asked for.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                self.slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for header in &headers[..count as usize] {
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.received
                .push(((header.msg_len as usize).min(self.slot), truncated));
        }
        Ok(count as usize)
    }

    /// Datagram `index` of the last read, or None when it did not fit its slot.
    pub fn datagram(&self, index: usize) -> Option<&[u8]> {
        let (length, truncated) = self.received[index];
        (!truncated).then(|| &self.buffer[index * self.slot..index * self.slot + length])
    }
}

/// Attaches a classic BPF program to a socket: the kernel runs it on every message before
/// queueing it, and a message the program drops costs the receiver nothing (no buffer
/// space, no wake-up, no system call).
pub fn attach_filter(fd: std::os::fd::RawFd, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "BPF program too long")
        })?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: fd is a live socket; fprog points into `program`, which outlives the call
    // (the kernel copies the program).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_walks_nested_attributes() {
        let mut buf = Vec::new();
        let mut request = RequestBuilder::new(&mut buf, 0x0101, NLM_F_REQUEST, 7, 2);
        request.begin_nested(1).attribute(2, &[9]).end_nested();
        request.attribute(18, &5u16.to_be_bytes());
        let bytes = request.finish().to_vec();
        assert_eq!(bytes.len(), 16 + 4 + 12 + 8);
        let (header, payload) = Messages::new(&bytes).next().unwrap().unwrap();
        assert_eq!(
            (header.kind, header.sequence, header.length),
            (0x0101, 7, 40)
        );
        let attrs: Vec<_> = Attributes::new(&payload[NFGEN_LEN..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(attrs.len(), 2);
        assert!(attrs[0].nested);
        assert_eq!(attrs[0].kind, 1);
        let inner: Vec<_> = attrs[0].attributes().map(Result::unwrap).collect();
        assert_eq!(inner[0].u8().unwrap(), 9);
        assert_eq!(attrs[1].be16().unwrap(), 5);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let bytes = [3u8, 0, 1, 0];
        assert!(matches!(
            Attributes::new(&bytes).next(),
            Some(Err(ParseError::BadAttributeLength { length: 3, .. }))
        ));
        let mut message = vec![0u8; 16];
        message[0] = 200;
        assert!(Messages::new(&message).next().unwrap().is_err());
    }
}
