//! A small blocking IPFIX exporter for tools and tests: packs Antrea flow records into
//! messages of at most the configured size and sends them over UDP or TCP.

use std::io::{self, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowex_ipfix::antrea::{self, FlowRecord};
use flowex_ipfix::{DEFAULT_UDP_MESSAGE_SIZE, EncodeError, Encoder, Registry, Template};

use crate::Endpoint;

enum Transport {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// Counters of what a [`Sender`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub messages: u64,
    pub records: u64,
    pub bytes: u64,
}

/// A blocking exporter of Antrea flow records to one collector.
pub struct Sender {
    transport: Transport,
    encoder: Encoder,
    templates: [Template; 2],
    template_refresh: Duration,
    templates_sent_at: Option<Instant>,
    stats: SendStats,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error.to_string())
}

fn now_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl Sender {
    /// Connects to `target`. `max_message_size` defaults to 1472 for UDP and 65535 for TCP.
    pub fn connect(
        target: Endpoint,
        observation_domain_id: u32,
        max_message_size: Option<usize>,
    ) -> io::Result<Self> {
        let (transport, default_size) = match target {
            Endpoint::Udp(addr) => {
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(addr)?;
                (Transport::Udp(socket), DEFAULT_UDP_MESSAGE_SIZE)
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                stream.set_nodelay(true)?;
                (Transport::Tcp(stream), flowex_ipfix::MAX_MESSAGE_SIZE)
            }
            Endpoint::Tls(_) | Endpoint::Grpc(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the sender speaks UDP and TCP; use flowex for TLS and gRPC",
                ));
            }
        };
        let registry = Registry::default();
        let encoder = Encoder::new(
            observation_domain_id,
            max_message_size.unwrap_or(default_size),
        )
        .map_err(invalid)?;
        Ok(Self {
            transport,
            encoder,
            templates: [
                antrea::ipv4_template(&registry).map_err(invalid)?,
                antrea::ipv6_template(&registry).map_err(invalid)?,
            ],
            template_refresh: Duration::from_secs(600),
            templates_sent_at: None,
            stats: SendStats::default(),
        })
    }

    /// Re-sends templates over UDP at this interval (default 600 s).
    pub fn set_template_refresh(&mut self, refresh: Duration) {
        self.template_refresh = refresh;
    }

    /// What was sent so far (records in the unsent message not included).
    pub fn stats(&self) -> SendStats {
        self.stats
    }

    /// The encoder (e.g. to change the sequence number for a test).
    pub fn encoder_mut(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    fn templates_due(&self) -> bool {
        match (self.templates_sent_at, &self.transport) {
            (None, _) => true,
            (Some(at), Transport::Udp(_)) => at.elapsed() >= self.template_refresh,
            (Some(_), Transport::Tcp(_)) => false,
        }
    }

    fn add_templates(&mut self) -> Result<(), EncodeError> {
        for template in &self.templates {
            self.encoder.add_template(template)?;
        }
        self.templates_sent_at = Some(Instant::now());
        Ok(())
    }

    /// Queues one record, sending the current message first when it is full.
    pub fn send(&mut self, record: &FlowRecord<'_>) -> io::Result<()> {
        if self.templates_due() && self.add_templates() == Err(EncodeError::MessageFull) {
            self.flush()?;
            self.add_templates().map_err(invalid)?;
        }
        match self
            .encoder
            .add_record_with_id(record.template_id(), record)
        {
            Ok(()) => Ok(()),
            Err(EncodeError::MessageFull) => {
                self.flush()?;
                self.encoder
                    .add_record_with_id(record.template_id(), record)
                    .map_err(invalid)
            }
            Err(other) => Err(invalid(other)),
        }
    }

    /// Sends the message being built, if it has anything in it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.encoder.is_empty() {
            return Ok(());
        }
        let records = u64::from(self.encoder.records_in_message());
        let message = self.encoder.finish(now_seconds());
        match &mut self.transport {
            Transport::Udp(socket) => {
                socket.send(message)?;
            }
            Transport::Tcp(stream) => stream.write_all(message)?,
        }
        self.stats.messages += 1;
        self.stats.records += records;
        self.stats.bytes += message.len() as u64;
        Ok(())
    }
}
