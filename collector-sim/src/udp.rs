//! The UDP receiver: one thread per socket, a large receive buffer, and batched receives
//! with `recvmmsg` so that one system call brings in up to [`BATCH`] datagrams.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::Shared;
use crate::receiver::Receiver;

/// Datagrams fetched per `recvmmsg` call.
const BATCH: usize = 32;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

/// Asks for a receive buffer of `bytes`: `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN) first, then
/// `SO_RCVBUF` (capped by net.core.rmem_max). Returns the size the kernel reports.
pub(crate) fn set_receive_buffer(socket: &UdpSocket, bytes: usize) -> usize {
    let fd = socket.as_raw_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: fd is a live socket; value outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 {
        set(libc::SO_RCVBUF);
    }
    let mut actual: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
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
    if rc == 0 { actual as usize } else { 0 }
}

/// Buffers and headers for one `recvmmsg` call, allocated once.
struct Batch {
    /// Bytes read per datagram (at most [`MAX_DATAGRAM`]): a longer one is cut, as a
    /// receiver with a smaller buffer would cut it.
    read_size: usize,
    buffers: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_storage>,
}

impl Batch {
    fn new(read_size: usize) -> Self {
        Self {
            read_size: read_size.clamp(1, MAX_DATAGRAM),
            buffers: vec![0; BATCH * MAX_DATAGRAM],
            // SAFETY: iovec, mmsghdr and sockaddr_storage are plain C structs for which
            // all-zero bytes are valid values.
            iovecs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            headers: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Receives up to BATCH datagrams, waiting for the first one up to the socket's timeout.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: self.read_size,
            };
            let header = &mut self.headers[i];
            header.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: every header points at a live iovec, buffer and address slot sized as
        // declared; the vectors are not touched until the call returns.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(received as usize)
        }
    }

    fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = self.headers[i].msg_len as usize;
        let bytes = &self.buffers[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len.min(self.read_size)];
        (bytes, sockaddr_to_std(&self.addrs[i]))
    }

    /// True when datagram `i` was longer than the read size (MSG_TRUNC).
    fn truncated(&self, i: usize) -> bool {
        self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let sin: &libc::sockaddr_in = unsafe { &*(storage as *const _ as *const _) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(storage as *const _ as *const _) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// UDP peers one receiver tells apart before it forgets the least recently heard.
const PEER_LIMIT: usize = 65_536;

/// Forgets the least recently heard eighth of `sessions` (their templates and streams).
fn forget_old_peers(
    sessions: &mut HashMap<SocketAddr, (u64, u64)>,
    receiver: &mut Receiver,
    shared: &Shared,
) {
    let count = PEER_LIMIT / 8;
    let mut heard: Vec<u64> = sessions.values().map(|(_, at)| *at).collect();
    let (_, cut, _) = heard.select_nth_unstable(count - 1);
    let cut = *cut;
    let mut forgotten = std::collections::HashSet::new();
    sessions.retain(|_, (session, at)| {
        if *at <= cut {
            forgotten.insert(*session);
            false
        } else {
            true
        }
    });
    receiver.forget_sessions(&forgotten);
    shared.stats.count_evicted_peers(forgotten.len() as u64);
}

/// Receives until the collector stops. Each peer address is its own transport session.
pub(crate) fn run(socket: UdpSocket, shared: Arc<Shared>) {
    if let Err(error) = socket.set_read_timeout(Some(Duration::from_millis(50))) {
        eprintln!("collector-sim: cannot set a UDP read timeout: {error}");
    }
    let mut receiver = Receiver::new();
    // Peer: (session, when last heard, in datagrams).
    let mut sessions: HashMap<SocketAddr, (u64, u64)> = HashMap::new();
    let mut heard = 0u64;
    let mut batch = Batch::new(shared.udp_read_size);
    let mut last_expiry = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        match batch.receive(&socket) {
            Ok(count) => {
                for i in 0..count {
                    let (bytes, peer) = batch.datagram(i);
                    let peer = peer.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    if batch.truncated(i) {
                        shared.stats.count_error(
                            "truncated_datagram",
                            &format_args!(
                                "{peer}: a datagram longer than the {}-byte read size was cut",
                                shared.udp_read_size
                            ),
                        );
                        continue;
                    }
                    heard += 1;
                    if !sessions.contains_key(&peer) && sessions.len() >= PEER_LIMIT {
                        forget_old_peers(&mut sessions, &mut receiver, &shared);
                    }
                    let entry = sessions.entry(peer).or_insert_with(|| {
                        (shared.next_session.fetch_add(1, Ordering::Relaxed), 0)
                    });
                    entry.1 = heard;
                    let session = entry.0;
                    let _ = receiver.handle(&shared.stats, &shared.output, session, bytes);
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => {
                shared.stats.log_limited("udp_receive", &error);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if last_expiry.elapsed() >= Duration::from_secs(1) {
            receiver.decoder.expire_templates(shared.template_lifetime);
            last_expiry = Instant::now();
        }
    }
}
