//! A collector's transport task: packs queued batches into messages, sends them over UDP,
//! TCP or TLS, confirms what the transport can confirm, and reconnects with backoff. See
//! [`super::collector`] for how each record is accounted for.
//!
//! TCP and TLS confirm a message once the collector's kernel has acknowledged its last
//! byte. For TLS the bytes are counted on the socket (ciphertext), where the kernel
//! reports them: the end of a message is the bytes acknowledged plus those still queued
//! once the message is flushed, and it is confirmed when `tcpi_bytes_acked` reaches it.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowex_ipfix::{EncodeError, Encoder, Template};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

use super::backoff::{Backoff, Outage};
use super::collector::{Chunk, CollectorStats, CollectorTarget, DropReason};
use super::statistics::Statistics;
use crate::config::Transport;

enum Link {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        /// Bytes written on this connection.
        written: u64,
    },
    Tls(Box<TlsStream<TcpStream>>),
}

/// True for the error a connected UDP socket reports after ICMP port unreachable.
fn refused(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::ConnectionRefused
}

/// Bytes written to a TCP socket and not yet acknowledged by the peer (also after the
/// connection failed: the kernel keeps the sequence numbers).
fn unacknowledged(stream: &TcpStream) -> Option<u64> {
    let mut pending: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, on a socket fd we own.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
    (rc == 0).then_some(pending.max(0) as u64)
}

/// Bytes the peer's kernel has acknowledged on this connection (handshakes included).
fn bytes_acknowledged(stream: &TcpStream) -> Option<u64> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO on a TCP socket fd we own, with a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_bytes_acked)
}

/// Bytes written to the socket so far: acknowledged, plus still queued.
fn bytes_written(stream: &TcpStream) -> Option<u64> {
    Some(bytes_acknowledged(stream)? + unacknowledged(stream)?)
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer within {CONNECT_TIMEOUT:?}"),
    )
}

/// TLS over a new TCP connection: the files are read first (a missing file is reported
/// without touching the network), then the handshake, then a short wait for the alert a
/// TLS 1.3 collector sends after the handshake when it refuses our certificate.
async fn connect_tls(
    target: &CollectorTarget,
    addr: std::net::SocketAddr,
) -> std::io::Result<Link> {
    let settings = target.tls.clone().unwrap_or_default();
    let material = target.api_certificates.as_ref().map(|api| api.material());
    let config = super::tls::client_config_for(&settings, material.as_ref(), &[])
        .map_err(std::io::Error::other)?;
    let name =
        super::tls::server_name(&settings, &target.address).map_err(std::io::Error::other)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("TCP connect"))??;
    stream.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| timed_out("TLS handshake"))?
        .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(TLS_ALERT_WAIT, stream.read(&mut byte)).await {
        // Nothing came: the collector accepted the session.
        Err(_) => Ok(Link::Tls(Box::new(stream))),
        Ok(Ok(0)) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the collector closed the TLS session after the handshake (does it require a client certificate?)",
        )),
        Ok(Ok(_)) => Ok(Link::Tls(Box::new(stream))),
        Ok(Err(error)) => Err(std::io::Error::new(
            error.kind(),
            format!("TLS session refused: {error}"),
        )),
    }
}

async fn connect(target: &CollectorTarget) -> std::io::Result<Link> {
    let addr = tokio::net::lookup_host(&target.address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{} resolves to nothing", target.address)))?;
    match target.transport {
        Transport::Udp => {
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(addr).await?;
            Ok(Link::Udp(socket))
        }
        Transport::Tcp => {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {CONNECT_TIMEOUT:?}"),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(Link::Tcp { stream, written: 0 })
        }
        // gRPC collectors have their own task (super::grpc); TLS is what they share.
        Transport::Tls | Transport::Grpc => connect_tls(target, addr).await,
    }
}

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new TLS session waits for a refusal before it carries data: a collector
/// that refuses the client certificate under TLS 1.3 says so right after the handshake.
const TLS_ALERT_WAIT: Duration = Duration::from_millis(100);
/// How long a UDP probe waits for a refusal before the collector counts as up. ICMP from
/// a closed port on this host or a neighbour arrives within microseconds to milliseconds.
const UDP_PROBE_WAIT: Duration = Duration::from_millis(50);
/// How often an idle collector checks what it sent (acknowledgements, refusals).
const CONFIRM_INTERVAL: Duration = Duration::from_millis(200);

fn now_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// A message written and not yet confirmed.
struct InFlight {
    /// TCP: the connection's byte count once the message was written.
    end: u64,
    records: u64,
    /// Its data records (none for a message of templates alone).
    chunk: Option<Chunk>,
}

struct Sender {
    target: CollectorTarget,
    templates: Arc<Vec<Template>>,
    encoder: Encoder,
    stats: Arc<CollectorStats>,
    link: Option<Link>,
    templates_sent: Option<Instant>,
    backoff: Backoff,
    outage: Outage,
    in_flight: VecDeque<InFlight>,
    /// Records to send again before the queue (unacknowledged when a TCP link failed).
    retry: VecDeque<Chunk>,
    /// Options records for this collector, and its exportingProcessId.
    options: Option<(Arc<Statistics>, u32)>,
    /// Options records in the message being built (not flow records: not accounted).
    options_in_message: u32,
    /// When the statistics are next due.
    statistics_due: Option<Instant>,
}

impl Sender {
    /// Connects unless connected, retrying with backoff until it succeeds. A new UDP
    /// socket first sends the templates alone and waits for a refusal, so data is not
    /// sent into a closed port.
    async fn ensure_link(&mut self) {
        while self.link.is_none() {
            let error = match connect(&self.target).await {
                Ok(link) => {
                    self.link = Some(link);
                    // A new transport session: a new stream, templates first.
                    self.encoder.set_sequence_number(0);
                    self.templates_sent = None;
                    if self.target.transport == Transport::Udp {
                        match self.probe_udp().await {
                            Ok(()) => None,
                            Err(error) => Some(("no answer to the templates", error)),
                        }
                    } else {
                        None
                    }
                }
                Err(error) => Some(("cannot connect", error)),
            };
            match error {
                None => {
                    self.backoff.reset();
                    self.outage.recovered(&self.target);
                    self.stats.connected.store(true, Ordering::Release);
                }
                Some((what, error)) => {
                    self.link = None;
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    self.outage.failed(&self.target, what, &error);
                    tokio::time::sleep(self.backoff.delay()).await;
                }
            }
        }
    }

    /// Sends the templates alone on the new UDP socket and waits briefly for a refusal.
    async fn probe_udp(&mut self) -> std::io::Result<()> {
        if !self.add_templates().await || !self.flush(None).await {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        }
        tokio::time::sleep(UDP_PROBE_WAIT).await;
        match &self.link {
            Some(Link::Udp(socket)) => match socket.take_error()? {
                Some(error) => Err(error),
                None => Ok(()),
            },
            _ => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }

    fn templates_due(&self) -> bool {
        match self.templates_sent {
            None => true,
            Some(at) => {
                self.target.transport == Transport::Udp
                    && at.elapsed() >= self.target.template_refresh
            }
        }
    }

    /// The link failed: TCP and TLS messages the collector did not acknowledge are sent
    /// again on the next connection; UDP messages since the last clean check are dropped.
    fn link_failed(&mut self, error: &std::io::Error) {
        let Some(link) = self.link.take() else { return };
        self.stats.connected.store(false, Ordering::Release);
        let acknowledged = match &link {
            Link::Tcp { stream, written } => {
                Some(written - unacknowledged(stream).unwrap_or(*written).min(*written))
            }
            Link::Tls(stream) => Some(bytes_acknowledged(stream.get_ref().0).unwrap_or(0)),
            Link::Udp(_) => None,
        };
        match acknowledged {
            Some(acknowledged) => {
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                self.confirm_acknowledged(acknowledged);
                for message in self.in_flight.drain(..) {
                    if let Some(chunk) = message.chunk {
                        self.stats
                            .records_resent
                            .fetch_add(chunk.len(), Ordering::Relaxed);
                        self.retry.push_back(chunk);
                    }
                }
            }
            None => {
                let lost: u64 = self.in_flight.drain(..).map(|m| m.records).sum();
                self.stats
                    .settle_dropped(DropReason::CollectorRefused, lost);
            }
        }
        self.outage
            .failed(&self.target, "the connection failed", error);
    }

    fn confirm_acknowledged(&mut self, acknowledged: u64) {
        while let Some(message) = self.in_flight.front() {
            if message.end > acknowledged {
                break;
            }
            self.stats.settle_exported(message.records);
            self.in_flight.pop_front();
        }
    }

    /// Confirms what the transport has delivered; false when the link turned out to have
    /// failed.
    fn confirm(&mut self) -> bool {
        match &mut self.link {
            None => false,
            Some(Link::Tcp { stream, written }) => {
                if let Some(pending) = unacknowledged(stream) {
                    let acknowledged = written.saturating_sub(pending);
                    self.confirm_acknowledged(acknowledged);
                }
                true
            }
            Some(Link::Tls(stream)) => {
                // Collectors send nothing on an IPFIX session: whatever is readable is
                // an alert or the end of the session, read without waiting.
                let mut byte = [0u8; 1];
                let failure = match stream.read(&mut byte).now_or_never() {
                    None | Some(Ok(1..)) => None,
                    Some(Ok(0)) => Some(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the collector closed the TLS session",
                    )),
                    Some(Err(error)) => Some(error),
                };
                if let Some(error) = failure {
                    self.link_failed(&error);
                    return false;
                }
                if let Some(Link::Tls(stream)) = &self.link
                    && let Some(acknowledged) = bytes_acknowledged(stream.get_ref().0)
                {
                    self.confirm_acknowledged(acknowledged);
                }
                true
            }
            Some(Link::Udp(socket)) => match socket.take_error() {
                Ok(Some(error)) => {
                    self.link_failed(&error);
                    false
                }
                _ => {
                    let records: u64 = self.in_flight.drain(..).map(|m| m.records).sum();
                    self.stats.settle_exported(records);
                    true
                }
            },
        }
    }

    /// Sends the message being built, whose data records are `chunk`. False when the link
    /// is down or failed: the message was not sent, and its records must be added again.
    async fn flush(&mut self, chunk: Option<Chunk>) -> bool {
        let options = std::mem::take(&mut self.options_in_message);
        if self.encoder.is_empty() {
            return true;
        }
        // A refusal of what was sent before means this message would be lost too.
        if self.link.is_none() || !self.confirm() {
            self.encoder.discard();
            return false;
        }
        let records = u64::from(self.encoder.records_in_message() - options);
        let sequence = self.encoder.sequence_number();
        let message = self.encoder.finish(now_seconds());
        let len = message.len() as u64;
        let result = match self.link.as_mut() {
            Some(Link::Udp(socket)) => socket.send(message).await.map(|_| 0),
            Some(Link::Tcp { stream, written }) => {
                let result = stream.write_all(message).await;
                if result.is_ok() {
                    *written += len;
                }
                result.map(|()| *written)
            }
            Some(Link::Tls(stream)) => {
                let result = match stream.write_all(message).await {
                    Ok(()) => stream.flush().await,
                    Err(error) => Err(error),
                };
                result.and_then(|()| {
                    bytes_written(stream.get_ref().0).ok_or_else(|| {
                        std::io::Error::other("cannot read the socket's byte counts (TCP_INFO)")
                    })
                })
            }
            None => unreachable!("checked above"),
        };
        match result {
            Ok(end) => {
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .records_sent
                    .fetch_add(records, Ordering::Relaxed);
                self.stats.bytes.fetch_add(len, Ordering::Relaxed);
                self.stats
                    .options_records
                    .fetch_add(u64::from(options), Ordering::Relaxed);
                self.in_flight.push_back(InFlight {
                    end,
                    records,
                    chunk,
                });
                true
            }
            Err(error) => {
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                if self.target.transport == Transport::Udp && !refused(&error) {
                    // Not a closed port: this message is lost, the link stays.
                    self.stats.settle_dropped(DropReason::SendFailed, records);
                    return true;
                }
                // Not sent (or not completely): the records go again on the next link.
                self.encoder.set_sequence_number(sequence);
                self.link_failed(&error);
                false
            }
        }
    }

    /// Adds the templates, then the options templates and the type records (RFC 5610
    /// wants them before the data they describe).
    async fn add_templates(&mut self) -> bool {
        let statistics = self.options.as_ref().map(|(s, _)| Arc::clone(s));
        let options = statistics.as_ref().map_or(&[][..], |s| s.templates());
        for template in self.templates.clone().iter().chain(options) {
            if self.encoder.add_template(template) == Err(EncodeError::MessageFull) {
                if !self.flush(None).await {
                    return false;
                }
                let _ = self.encoder.add_template(template);
            }
        }
        if let Some(statistics) = &statistics {
            for (id, bytes) in statistics.type_records() {
                if !self.add_options_record(*id, bytes).await {
                    return false;
                }
            }
        }
        self.templates_sent = Some(Instant::now());
        true
    }

    /// Adds one options record, sending the message first when it is full. False when
    /// the link failed.
    async fn add_options_record(&mut self, id: u16, bytes: &[u8]) -> bool {
        match self.encoder.add_encoded_record(id, bytes) {
            Ok(()) => {}
            Err(EncodeError::MessageFull) => {
                if !self.flush(None).await {
                    return false;
                }
                if self.encoder.add_encoded_record(id, bytes).is_err() {
                    // Larger than a message: never sendable, and never happens with
                    // the lengths allowed for maxMessageSize.
                    return true;
                }
            }
            Err(_) => return true,
        }
        self.options_in_message += 1;
        true
    }

    /// Sends the statistics records now when the link is up (they are snapshots: one
    /// that cannot go is replaced by the next), and sets when they are next due.
    async fn send_statistics(&mut self) {
        let Some((statistics, process_id)) = self.options.clone() else {
            return;
        };
        let Some(interval) = statistics.interval() else {
            return;
        };
        self.statistics_due = Some(Instant::now() + interval);
        if self.link.is_none() {
            return;
        }
        if self.templates_due() && !self.add_templates().await {
            return;
        }
        let mut records = Vec::with_capacity(1);
        records.extend(
            statistics
                .exporting_record(process_id, &self.stats)
                .map(|bytes| (super::statistics::EXPORTING_TEMPLATE_ID, bytes)),
        );
        let shared = statistics.shared_records();
        for (id, bytes) in records.iter().chain(shared.iter()) {
            if !self.add_options_record(*id, bytes).await {
                return;
            }
        }
        self.flush(None).await;
    }

    fn statistics_wait(&self) -> Option<Duration> {
        self.statistics_due
            .map(|due| due.saturating_duration_since(Instant::now()))
    }

    /// At the end of a TCP or TLS session: withdraws every template (RFC 7011 section
    /// 8.1; never over UDP, section 8.4).
    async fn withdraw_templates(&mut self) {
        // Nothing was announced on this session (it reconnected and sent nothing since):
        // nothing to withdraw.
        if !matches!(self.link, Some(Link::Tcp { .. } | Link::Tls(_)))
            || self.templates_sent.is_none()
        {
            return;
        }
        let options = self.options.as_ref().map(|(s, _)| Arc::clone(s));
        let withdrawals: Vec<(u16, bool)> = self
            .templates
            .iter()
            .chain(options.as_ref().map_or(&[][..], |s| s.templates()))
            .map(|t| (t.id(), t.is_options()))
            .collect();
        for (id, is_options) in withdrawals {
            if self.encoder.add_withdrawal(id, is_options) == Err(EncodeError::MessageFull) {
                if !self.flush(None).await {
                    return;
                }
                let _ = self.encoder.add_withdrawal(id, is_options);
            }
        }
        self.flush(None).await;
    }

    /// Sends every record of `chunk`, packing them into messages. Records of a message
    /// that could not be sent are added again after the reconnect.
    async fn send_chunk(&mut self, chunk: &Chunk) {
        let mut message_start = chunk.start;
        'restart: loop {
            self.ensure_link().await;
            if self.templates_due() && !self.add_templates().await {
                continue 'restart;
            }
            let mut index = message_start;
            while index < chunk.end {
                let Some((template_id, bytes)) = chunk.record(index) else {
                    break;
                };
                match self.encoder.add_encoded_record(template_id, bytes) {
                    Ok(()) => index += 1,
                    Err(EncodeError::MessageFull) => {
                        if !self.flush(Some(chunk.part(message_start, index))).await {
                            continue 'restart;
                        }
                        message_start = index;
                        if self.templates_due() && !self.add_templates().await {
                            continue 'restart;
                        }
                    }
                    Err(_) => {
                        // Larger than any message can be: it can never be sent. The
                        // message so far goes first, so a resend never meets it again.
                        if index > message_start
                            && !self.flush(Some(chunk.part(message_start, index))).await
                        {
                            continue 'restart;
                        }
                        self.stats.settle_dropped(DropReason::TooLarge, 1);
                        index += 1;
                        message_start = index;
                    }
                }
            }
            if !self.flush(Some(chunk.part(message_start, index))).await {
                continue 'restart;
            }
            return;
        }
    }

    /// Waits for the last messages to be confirmed (at most `limit`); the rest stay queued.
    async fn settle(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.in_flight.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if !self.confirm() {
                break;
            }
        }
    }
}

pub(super) async fn run(
    target: CollectorTarget,
    templates: Arc<Vec<Template>>,
    encoder: Encoder,
    mut queue: mpsc::UnboundedReceiver<Chunk>,
    stats: Arc<CollectorStats>,
    options: Option<(Arc<Statistics>, u32)>,
) {
    let refresh = target.template_refresh;
    let udp = target.transport == Transport::Udp;
    let mut sender = Sender {
        backoff: Backoff::new(target.max_reconnect_delay),
        target,
        templates,
        encoder,
        stats: Arc::clone(&stats),
        link: None,
        templates_sent: None,
        outage: Outage::new(),
        in_flight: VecDeque::new(),
        retry: VecDeque::new(),
        statistics_due: options
            .as_ref()
            .and_then(|(s, _)| s.interval())
            .map(|interval| Instant::now() + interval),
        options,
        options_in_message: 0,
    };
    sender.ensure_link().await;
    if sender.templates_due() && sender.add_templates().await {
        sender.flush(None).await;
    }
    loop {
        if sender.statistics_wait().is_some_and(|wait| wait.is_zero()) {
            sender.send_statistics().await;
        }
        if let Some(chunk) = sender.retry.pop_front() {
            sender.send_chunk(&chunk).await;
            continue;
        }
        // Wake up without new records only when there is something to do: confirm what
        // is in flight, reconnect, or refresh UDP templates. An idle collector with
        // nothing unconfirmed sleeps until records come: a UDP refusal is then noticed at
        // the next send, which confirms first, and a closed TCP connection by the write.
        let wait = if sender.link.is_none() || !sender.in_flight.is_empty() {
            Some(CONFIRM_INTERVAL)
        } else if udp {
            let since = sender.templates_sent.map_or(refresh, |at| at.elapsed());
            Some(refresh.saturating_sub(since).max(CONFIRM_INTERVAL))
        } else {
            None
        };
        let wait = match (wait, sender.statistics_wait()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let received = match wait {
            Some(wait) => tokio::time::timeout(wait, queue.recv()).await,
            None => Ok(queue.recv().await),
        };
        let next = match received {
            Ok(next) => next,
            Err(_) => {
                // Idle: confirm what was sent, notice a refusal, refresh UDP templates.
                if !sender.confirm() {
                    sender.ensure_link().await;
                }
                if udp
                    && sender
                        .templates_sent
                        .is_none_or(|at| at.elapsed() >= refresh)
                    && sender.add_templates().await
                {
                    sender.flush(None).await;
                }
                continue;
            }
        };
        let Some(chunk) = next else { break };
        sender.send_chunk(&chunk).await;
    }
    // The queue is closed: confirm what was sent; the caller's deadline bounds this.
    if let Some(Link::Tcp { stream, .. }) = sender.link.as_mut() {
        let _ = stream.flush().await;
    }
    sender.settle(Duration::from_secs(2)).await;
    // The last statistics, then the end of the session.
    sender.send_statistics().await;
    sender.withdraw_templates().await;
    match sender.link.take() {
        Some(Link::Tcp { mut stream, .. }) => {
            let _ = stream.shutdown().await;
        }
        Some(Link::Tls(mut stream)) => {
            // close_notify, then the TCP end.
            let _ = stream.shutdown().await;
        }
        _ => {}
    }
}
