//! The TCP and TLS receiver: an accept loop, and one thread per connection that frames
//! messages by the IPFIX length field and handles partial reads.

use std::io::{self, Read};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use flowex_ipfix::wire::message::{HEADER_LEN, VERSION};

use crate::Shared;
use crate::receiver::Receiver;

/// Accepts connections until the collector stops; with `tls`, each completes a TLS
/// handshake first (a refused one is counted in `tls_refused`).
pub(crate) fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    if let Err(error) = listener.set_nonblocking(true) {
        eprintln!("collector-sim: cannot make the TCP listener non-blocking: {error}");
        return;
    }
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                shared.stats.count_tcp_connection();
                let shared = Arc::clone(&shared);
                let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
                let tls = tls.clone();
                connections.push(std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
                    match tls {
                        None => connection(stream, session, &shared),
                        Some(config) => {
                            match crate::tls::accept(&config, stream, || {
                                shared.stop.load(Ordering::Acquire)
                            }) {
                                Ok(stream) => connection(stream, session, &shared),
                                Err(error) => {
                                    shared.stats.count_tls_refused();
                                    shared.stats.log_limited("tls_handshake", &error);
                                }
                            }
                        }
                    }
                }));
                connections.retain(|handle| !handle.is_finished());
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => {
                shared.stats.log_limited("tcp_accept", &error);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    for handle in connections {
        let _ = handle.join();
    }
}

/// Reads one connection's stream of messages. A malformed message closes the connection
/// (the stream can no longer be trusted); other connections are unaffected.
fn connection(mut stream: impl Read, session: u64, shared: &Shared) {
    let mut receiver = Receiver::new();
    let mut buf = vec![0u8; 4 * 65_536];
    let mut filled = 0usize;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                if filled > 0 {
                    shared.stats.count_error(
                        "truncated_stream",
                        &format_args!(
                            "session {session}: stream ended inside a message ({filled} bytes left)"
                        ),
                    );
                }
                break;
            }
            Ok(read) => filled += read,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                shared.stats.log_limited("tcp_receive", &error);
                break;
            }
        }
        // Hand over every whole message in the buffer.
        let mut start = 0usize;
        let mut broken = false;
        while filled - start >= 4 {
            let head = &buf[start..filled];
            let version = u16::from_be_bytes([head[0], head[1]]);
            let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
            if version != VERSION || length < HEADER_LEN {
                shared.stats.count_error(
                    "bad_framing",
                    &format_args!(
                        "session {session}: version {version}, length {length}: not an IPFIX stream"
                    ),
                );
                broken = true;
                break;
            }
            if filled - start < length {
                break;
            }
            if receiver
                .handle(
                    &shared.stats,
                    &shared.output,
                    session,
                    &buf[start..start + length],
                )
                .is_err()
            {
                broken = true;
                break;
            }
            start += length;
        }
        if broken {
            shared.stats.count_tcp_disconnect();
            break;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
    receiver.forget_session(session);
}
