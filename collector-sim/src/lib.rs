//! collector-sim: a real IPFIX collector over UDP and TCP that decodes every message with
//! flowex's strict decoder and counts what it receives: messages, records, templates,
//! records by flowEndReason, template and observation domain, decode errors by kind, and
//! sequence-number gaps (records an exporter numbered that never arrived).
//!
//! The library is what tests and benchmarks use; the `collector-sim` binary wraps it for
//! people.
//!
//! ```no_run
//! use collector_sim::{Collector, CollectorConfig, Endpoint};
//! use std::time::Duration;
//!
//! let collector = Collector::start(CollectorConfig::new(vec![
//!     "udp://127.0.0.1:0".parse::<Endpoint>().unwrap(),
//! ]))
//! .unwrap();
//! let target = collector.local_endpoints()[0];
//! // ... export to `target` ...
//! collector.wait_for_records(1_000, Duration::from_secs(5));
//! println!("{}", collector.stop().to_json());
//! ```

mod endpoint;
pub mod grpc;
pub mod json;
mod receiver;
pub mod sender;
mod stats;
pub mod synthetic;
mod tcp;
pub mod tls;
pub mod tshark;
mod udp;

use std::io::{self, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use endpoint::{Endpoint, EndpointError};
pub use stats::Summary;

use receiver::RecordOutput;
use stats::{Stats, lock};

/// Default UDP template lifetime: templates not refreshed within it are forgotten.
pub const DEFAULT_TEMPLATE_LIFETIME: Duration = Duration::from_secs(1800);
/// Default UDP receive buffer asked for.
pub const DEFAULT_RECEIVE_BUFFER: usize = 32 << 20;

/// How to run a collector.
pub struct CollectorConfig {
    /// Endpoints to listen on; port 0 picks a free port (see [`Collector::local_endpoints`]).
    pub listen: Vec<Endpoint>,
    /// UDP template lifetime.
    pub template_lifetime: Duration,
    /// UDP receive buffer size to ask the kernel for.
    pub receive_buffer: usize,
    /// Write one JSON object per data record here.
    pub json_output: Option<Box<dyn Write + Send>>,
    /// Keep every data record as JSON in memory (see [`Collector::records`]).
    pub keep_records: bool,
    /// Certificates for `tls://` endpoints.
    pub tls: Option<tls::TlsFiles>,
    /// Bytes read per UDP datagram; a longer datagram is cut and counted as a
    /// `truncated_datagram` error (Antrea's Flow Aggregator reads 1024).
    pub udp_read_size: usize,
}

impl CollectorConfig {
    /// Listens on `listen` with default settings, keeping no records.
    pub fn new(listen: Vec<Endpoint>) -> Self {
        Self {
            listen,
            template_lifetime: DEFAULT_TEMPLATE_LIFETIME,
            receive_buffer: DEFAULT_RECEIVE_BUFFER,
            json_output: None,
            keep_records: false,
            tls: None,
            udp_read_size: 65_536,
        }
    }
}

/// State shared with the receiving threads.
pub(crate) struct Shared {
    pub stats: Stats,
    pub output: RecordOutput,
    pub stop: AtomicBool,
    pub next_session: AtomicU64,
    pub template_lifetime: Duration,
    pub udp_read_size: usize,
}

/// A running collector. Dropping it stops it.
pub struct Collector {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    endpoints: Vec<Endpoint>,
    receive_buffers: Vec<usize>,
}

impl Collector {
    /// Binds every endpoint (failing if any cannot be bound) and starts receiving.
    pub fn start(config: CollectorConfig) -> io::Result<Self> {
        if config.listen.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no endpoint to listen on",
            ));
        }
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            output: RecordOutput {
                json: config.json_output.map(Mutex::new),
                kept: config.keep_records.then(|| Mutex::new(Vec::new())),
                kept_options: config.keep_records.then(|| Mutex::new(Vec::new())),
            },
            stop: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
            template_lifetime: config.template_lifetime,
            udp_read_size: config.udp_read_size,
        });
        enum Bound {
            Udp(UdpSocket),
            Tcp(TcpListener, Option<Arc<rustls::ServerConfig>>),
            Grpc(TcpListener, Arc<rustls::ServerConfig>),
        }
        let mut bound = Vec::new();
        let mut endpoints = Vec::new();
        let mut receive_buffers = Vec::new();
        for endpoint in &config.listen {
            let with_context =
                |error: io::Error| io::Error::new(error.kind(), format!("{endpoint}: {error}"));
            match endpoint {
                Endpoint::Udp(addr) => {
                    let socket = UdpSocket::bind(addr).map_err(with_context)?;
                    receive_buffers.push(udp::set_receive_buffer(&socket, config.receive_buffer));
                    endpoints.push(Endpoint::Udp(socket.local_addr()?));
                    bound.push(Bound::Udp(socket));
                }
                Endpoint::Tcp(addr) => {
                    let listener = TcpListener::bind(addr).map_err(with_context)?;
                    endpoints.push(Endpoint::Tcp(listener.local_addr()?));
                    bound.push(Bound::Tcp(listener, None));
                }
                Endpoint::Tls(addr) => {
                    let files = config.tls.as_ref().ok_or_else(|| {
                        with_context(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "a TLS endpoint needs a certificate and key (--tls-cert, --tls-key)",
                        ))
                    })?;
                    let server = tls::server_config(files).map_err(with_context)?;
                    let listener = TcpListener::bind(addr).map_err(with_context)?;
                    endpoints.push(Endpoint::Tls(listener.local_addr()?));
                    bound.push(Bound::Tcp(listener, Some(server)));
                }
                Endpoint::Grpc(addr) => {
                    let files = config.tls.as_ref().ok_or_else(|| {
                        with_context(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "a gRPC endpoint is always mutual TLS: it needs --tls-cert, --tls-key (and --tls-ca)",
                        ))
                    })?;
                    let mut server = tls::server_config(files).map_err(with_context)?;
                    Arc::make_mut(&mut server).alpn_protocols = vec![b"h2".to_vec()];
                    let listener = TcpListener::bind(addr).map_err(with_context)?;
                    endpoints.push(Endpoint::Grpc(listener.local_addr()?));
                    bound.push(Bound::Grpc(listener, server));
                }
            }
        }
        let threads = bound
            .into_iter()
            .map(|socket| {
                let shared = Arc::clone(&shared);
                match socket {
                    Bound::Udp(socket) => std::thread::Builder::new()
                        .name("udp-receiver".into())
                        .spawn(move || udp::run(socket, shared)),
                    Bound::Tcp(listener, tls) => std::thread::Builder::new()
                        .name("tcp-acceptor".into())
                        .spawn(move || tcp::accept_loop(listener, shared, tls)),
                    Bound::Grpc(listener, tls) => std::thread::Builder::new()
                        .name("grpc-server".into())
                        .spawn(move || grpc::serve(listener, shared, tls)),
                }
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            shared,
            threads,
            endpoints,
            receive_buffers,
        })
    }

    /// The endpoints actually bound, with the ports chosen for port 0.
    pub fn local_endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The first bound UDP endpoint.
    pub fn udp_endpoint(&self) -> Option<Endpoint> {
        self.endpoints.iter().copied().find(Endpoint::is_udp)
    }

    /// The first bound TCP endpoint.
    pub fn tcp_endpoint(&self) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .copied()
            .find(|e| matches!(e, Endpoint::Tcp(_)))
    }

    /// The first gRPC endpoint, with its bound port.
    pub fn grpc_endpoint(&self) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .copied()
            .find(|e| matches!(e, Endpoint::Grpc(_)))
    }

    /// The first TLS endpoint, with its bound port.
    pub fn tls_endpoint(&self) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .copied()
            .find(|e| matches!(e, Endpoint::Tls(_)))
    }

    /// Receive buffer sizes the kernel granted, one per UDP endpoint.
    pub fn receive_buffers(&self) -> &[usize] {
        &self.receive_buffers
    }

    /// Data records counted so far (cheap: one atomic load).
    pub fn record_count(&self) -> u64 {
        self.shared.stats.records()
    }

    /// A consistent snapshot of every counter.
    pub fn summary(&self) -> Summary {
        self.shared.stats.snapshot()
    }

    /// Records kept so far as JSON objects (empty unless `keep_records` was set).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.shared
            .output
            .kept
            .as_ref()
            .map(|kept| lock(kept).clone())
            .unwrap_or_default()
    }

    /// Options records kept so far (statistics and the like, not type records), each
    /// with its `optionsTemplateId` (empty unless `keep_records` was set).
    pub fn options_records(&self) -> Vec<serde_json::Value> {
        self.shared
            .output
            .kept_options
            .as_ref()
            .map(|kept| lock(kept).clone())
            .unwrap_or_default()
    }

    /// Waits until at least `count` data records arrived or `timeout` passed; returns
    /// whether the count was reached.
    pub fn wait_for_records(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.record_count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until no new message has been counted for `quiet`, or `timeout` passed.
    pub fn wait_until_quiet(&self, quiet: Duration, timeout: Duration) -> Summary {
        let deadline = Instant::now() + timeout;
        let mut last = self.summary();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let now = self.summary();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet || Instant::now() >= deadline {
                return last;
            }
        }
    }

    /// Stops receiving, joins every thread and returns the final counters.
    pub fn stop(mut self) -> Summary {
        self.shutdown();
        self.summary()
    }

    fn shutdown(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown();
    }
}
