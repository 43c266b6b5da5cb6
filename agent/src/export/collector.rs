//! One collector: a bounded queue of shared batches, an encoder that packs them into
//! messages (its own sequence numbers), and a UDP or TCP transport with reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowex_ipfix::{EncodeError, Encoder, Template};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::batch::EncodedBatch;
use crate::config::{CollectorConfig, Transport};

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorTarget {
    pub name: String,
    /// HOST:PORT, resolved at each (re)connect.
    pub address: String,
    pub transport: Transport,
    pub max_message_size: usize,
    pub template_refresh: Duration,
    /// Records that may wait in the queue; more are dropped and counted.
    pub queue_capacity: usize,
}

impl From<&CollectorConfig> for CollectorTarget {
    fn from(c: &CollectorConfig) -> Self {
        Self {
            name: c.name.clone(),
            address: c.address.clone(),
            transport: c.transport,
            max_message_size: c.max_message_size,
            template_refresh: c.template_refresh.0,
            queue_capacity: c.queue_capacity,
        }
    }
}

/// Counters of one collector, readable at any time.
#[derive(Debug, Default)]
pub struct CollectorStats {
    pub records_exported: AtomicU64,
    pub records_dropped: AtomicU64,
    pub send_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Records waiting in the queue.
    pub queued: AtomicU64,
    pub connected: AtomicBool,
}

/// A running collector task.
pub struct CollectorHandle {
    pub name: String,
    pub stats: Arc<CollectorStats>,
    queue: mpsc::UnboundedSender<Arc<EncodedBatch>>,
    capacity: u64,
    task: JoinHandle<()>,
}

/// All collectors; records go to each of them.
pub struct ExportingProcess {
    collectors: Vec<CollectorHandle>,
}

impl ExportingProcess {
    /// Starts one task per target (inside a tokio runtime).
    pub fn start(targets: &[CollectorTarget], templates: Arc<Vec<Template>>, domain: u32) -> Self {
        let collectors = targets
            .iter()
            .map(|target| {
                let (queue, receiver) = mpsc::unbounded_channel();
                let stats = Arc::new(CollectorStats::default());
                let task = tokio::spawn(run(
                    target.clone(),
                    Arc::clone(&templates),
                    domain,
                    receiver,
                    Arc::clone(&stats),
                ));
                CollectorHandle {
                    name: target.name.clone(),
                    stats,
                    queue,
                    capacity: target.queue_capacity as u64,
                    task,
                }
            })
            .collect();
        Self { collectors }
    }

    /// The collectors and their counters.
    pub fn collectors(&self) -> &[CollectorHandle] {
        &self.collectors
    }

    /// Queues `batch` for every collector; a collector whose queue cannot take the whole
    /// batch drops it and counts the records. Never waits.
    pub fn export(&self, batch: EncodedBatch) {
        if batch.is_empty() {
            return;
        }
        let records = batch.len() as u64;
        let batch = Arc::new(batch);
        for collector in &self.collectors {
            let stats = &collector.stats;
            let queued = stats.queued.fetch_add(records, Ordering::AcqRel);
            if queued + records > collector.capacity
                || collector.queue.send(Arc::clone(&batch)).is_err()
            {
                stats.queued.fetch_sub(records, Ordering::AcqRel);
                stats.records_dropped.fetch_add(records, Ordering::Relaxed);
            }
        }
    }

    /// Closes the queues, lets each collector send what it holds for at most `deadline`,
    /// then stops the rest (what was not sent is counted as dropped).
    pub async fn shutdown(self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        for collector in self.collectors {
            drop(collector.queue);
            let mut task = collector.task;
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                task.abort();
                let left = collector.stats.queued.swap(0, Ordering::AcqRel);
                collector
                    .stats
                    .records_dropped
                    .fetch_add(left, Ordering::Relaxed);
            }
        }
    }
}

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Link {
    async fn send(&mut self, message: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send(message).await.map(|_| ()),
            Link::Tcp(stream) => stream.write_all(message).await,
        }
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
            let stream =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
            stream.set_nodelay(true)?;
            Ok(Link::Tcp(stream))
        }
    }
}

fn now_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// Backoff for reconnects: 100 ms doubling to 30 s, with ±20% jitter.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self {
            next: Duration::from_millis(100),
            seed,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    fn delay(&mut self) -> Duration {
        // xorshift64: enough randomness to spread reconnecting agents apart
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.8 + (self.seed % 1000) as f64 / 2500.0;
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Duration::from_secs(30));
        delay
    }
}

struct Sender {
    target: CollectorTarget,
    templates: Arc<Vec<Template>>,
    encoder: Encoder,
    stats: Arc<CollectorStats>,
    link: Option<Link>,
    templates_sent: Option<Instant>,
    backoff: Backoff,
}

impl Sender {
    /// Connects unless connected, retrying with backoff until it succeeds.
    async fn ensure_link(&mut self) {
        while self.link.is_none() {
            match connect(&self.target).await {
                Ok(link) => {
                    self.link = Some(link);
                    // A new transport session: a new stream, templates first.
                    self.encoder.set_sequence_number(0);
                    self.templates_sent = None;
                    self.backoff.reset();
                    self.stats.connected.store(true, Ordering::Release);
                }
                Err(_) => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.backoff.delay()).await;
                }
            }
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

    /// Sends the message being built. On a TCP failure the link is dropped (to reconnect)
    /// and false is returned; a UDP failure drops the message's records.
    async fn flush(&mut self) -> bool {
        if self.encoder.is_empty() {
            return true;
        }
        let records = u64::from(self.encoder.records_in_message());
        let message = self.encoder.finish(now_seconds());
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        match link.send(message).await {
            Ok(()) => {
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(message.len() as u64, Ordering::Relaxed);
                self.stats
                    .records_exported
                    .fetch_add(records, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                if self.target.transport == Transport::Tcp {
                    self.link = None;
                    self.stats.connected.store(false, Ordering::Release);
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    false
                } else {
                    self.stats
                        .records_dropped
                        .fetch_add(records, Ordering::Relaxed);
                    true
                }
            }
        }
    }

    async fn add_templates(&mut self) -> bool {
        for index in 0..self.templates.len() {
            let template = &self.templates[index];
            if self.encoder.add_template(template) == Err(EncodeError::MessageFull) {
                if !self.flush().await {
                    return false;
                }
                let template = &self.templates[index];
                let _ = self.encoder.add_template(template);
            }
        }
        self.templates_sent = Some(Instant::now());
        true
    }

    /// Sends every record of `batch`, packing them into messages. Records of a message
    /// lost to a TCP failure are sent again after the reconnect.
    async fn send_batch(&mut self, batch: &EncodedBatch) {
        let mut message_start = 0;
        'restart: loop {
            self.ensure_link().await;
            if self.templates_due() && !self.add_templates().await {
                continue 'restart;
            }
            let mut index = message_start;
            while let Some((template_id, bytes)) = batch.record(index) {
                match self.encoder.add_encoded_record(template_id, bytes) {
                    Ok(()) => index += 1,
                    Err(EncodeError::MessageFull) => {
                        if !self.flush().await {
                            continue 'restart;
                        }
                        message_start = index;
                        if self.templates_due() && !self.add_templates().await {
                            continue 'restart;
                        }
                    }
                    Err(_) => {
                        // Larger than any message can be: cannot ever be sent.
                        self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
                        index += 1;
                    }
                }
            }
            if !self.flush().await {
                continue 'restart;
            }
            return;
        }
    }
}

async fn run(
    target: CollectorTarget,
    templates: Arc<Vec<Template>>,
    domain: u32,
    mut queue: mpsc::UnboundedReceiver<Arc<EncodedBatch>>,
    stats: Arc<CollectorStats>,
) {
    let Ok(encoder) = Encoder::new(domain, target.max_message_size) else {
        return;
    };
    let refresh = target.template_refresh;
    let udp = target.transport == Transport::Udp;
    let mut sender = Sender {
        target,
        templates,
        encoder,
        stats: Arc::clone(&stats),
        link: None,
        templates_sent: None,
        backoff: Backoff::new(),
    };
    sender.ensure_link().await;
    if sender.add_templates().await {
        sender.flush().await;
    }
    loop {
        let next = if udp {
            match tokio::time::timeout(refresh, queue.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    // Quiet for a whole refresh interval: re-send the templates alone.
                    if sender.add_templates().await {
                        sender.flush().await;
                    }
                    continue;
                }
            }
        } else {
            queue.recv().await
        };
        let Some(batch) = next else { break };
        sender.send_batch(&batch).await;
        stats.queued.fetch_sub(batch.len() as u64, Ordering::AcqRel);
    }
    if let Some(Link::Tcp(mut stream)) = sender.link.take() {
        let _ = stream.shutdown().await;
    }
}
