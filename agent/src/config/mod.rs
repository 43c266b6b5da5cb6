//! The agent's YAML configuration: typed, with defaults for every key, unknown keys
//! refused (the error names the key's path), and every value validated with one clear line.

use std::fmt;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::filter::FilterConfig;
use crate::net::Cidr;

/// A duration written as `500ms`, `5s`, `10m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

/// Parses `500ms`, `5s`, `10m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h, e.g. \"5s\")"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "{text:?} has unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis.is_multiple_of(3_600_000) && millis > 0 {
            write!(f, "{}h", millis / 3_600_000)
        } else if millis.is_multiple_of(60_000) && millis > 0 {
            write!(f, "{}m", millis / 60_000)
        } else if millis.is_multiple_of(1_000) {
            write!(f, "{}s", millis / 1_000)
        } else {
            write!(f, "{millis}ms")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// The largest UDP payload over IPv4 (65535 - 20 - 8): the largest UDP message.
pub const MAX_UDP_MESSAGE_SIZE: usize = 65_507;

/// Values given on the command line, which replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `udp://HOST:PORT` or `tcp://HOST:PORT`: these collectors instead of the file's.
    pub collectors: Vec<String>,
}

/// The configuration as the agent runs it: checked once, with what it refers to resolved
/// and parsed (the node name, the observation domain, the pod CIDRs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub config: Config,
    /// The configured name, else $NODE_NAME, else the host name.
    pub node_name: String,
    /// Configured, else FNV-32 of the node name (as Antrea does).
    pub observation_domain_id: u32,
    pub pod_cidrs: Vec<Cidr>,
    /// What the configuration asks for that flowex changed or doubts: `check-config`
    /// prints them, `run` logs them.
    pub warnings: Vec<String>,
}

impl Settings {
    /// Reads `path` (none: the defaults), applies `overrides`, checks and resolves.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
                Config::parse_yaml(&text)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        config.set_collector_urls(&overrides.collectors)?;
        Self::new(config).map_err(|e| match path {
            Some(path) => ConfigError(format!("{}: {e}", path.display())),
            None => e,
        })
    }

    /// Checks `config` and resolves it.
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        let pod_cidrs = config.checked()?;
        let mut warnings = Vec::new();
        for (i, collector) in config.export.collectors.iter_mut().enumerate() {
            let limit = collector.aggregator.map(Aggregator::udp_read_size);
            if collector.transport == Transport::Udp
                && let Some(limit) = limit
                && collector.max_message_size > limit
            {
                if collector.max_message_size != default_max_message_size() {
                    warnings.push(format!(
                        "export.collectors[{i}].maxMessageSize: {} is more than the {limit} bytes Antrea's Flow Aggregator reads from a UDP datagram: {limit} is used",
                        collector.max_message_size
                    ));
                }
                collector.max_message_size = limit;
            }
            if collector
                .tls
                .as_ref()
                .is_some_and(|tls| tls.insecure_skip_verify)
            {
                warnings.push(format!(
                    "export.collectors[{i}].tls.insecureSkipVerify: the certificate of collector {:?} is not verified: anyone on the path can read and change the records",
                    collector.name
                ));
            }
        }
        let node_name = config.resolved_node_name();
        let observation_domain_id = config
            .export
            .observation_domain_id
            .unwrap_or_else(|| fnv32(node_name.as_bytes()));
        Ok(Self {
            config,
            node_name,
            observation_domain_id,
            pod_cidrs,
            warnings,
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// This node's name; empty: $NODE_NAME, else the host name.
    pub node_name: String,
    pub conntrack: ConntrackConfig,
    pub export: ExportConfig,
    pub deny: DenyConfig,
    pub attribution: AttributionConfig,
    pub kubernetes: KubernetesConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub state: StateConfig,
}

/// What the agent keeps across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of the state file (`flowex.state`) written at shutdown and read at start,
    /// so a restarted agent neither exports ended connections again nor restarts deltas
    /// from zero; empty: no state is kept.
    pub directory: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            directory: "/var/lib/flowex".into(),
        }
    }
}

/// Where connections come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Interval between full dumps.
    pub poll_interval: HumanDuration,
    /// Zones to watch; empty: all.
    pub zones: Vec<u16>,
    /// Subscribe to conntrack events: NEW and DESTROY, and the UPDATEs into TIME_WAIT or
    /// CLOSE with `prompt_tcp_end`.
    pub events: bool,
    /// Receive buffer for events, in bytes.
    pub event_buffer_bytes: usize,
    /// Set nf_conntrack_acct/timestamp/events to 1 at startup when they are not.
    pub set_sysctls: bool,
    /// Also track loopback connections (127.0.0.0/8, ::1): off by default, as they are not
    /// pod traffic and include the agent's own export to a local collector.
    pub include_loopback: bool,
    /// Export a TCP connection's final record as soon as it reaches TIME_WAIT or CLOSE
    /// (an UPDATE event and a targeted get per connection) instead of from the next poll,
    /// which sees the same final counters within `pollInterval` at no cost per connection.
    pub prompt_tcp_end: bool,
}

/// How records are built and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Export active connections this often (flowEndReason 2).
    pub active_timeout: HumanDuration,
    /// Export and forget connections idle this long (flowEndReason 1).
    pub idle_timeout: HumanDuration,
    /// null: FNV-32 of the node name.
    pub observation_domain_id: Option<u32>,
    /// Pod CIDRs for flowType, in addition to the nodes' `spec.podCIDRs`.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// Private enterprise number of flowex's own information elements.
    pub enterprise_number: u32,
    /// At shutdown, how long the collectors may take to send what is queued; what is left
    /// then is dropped, counted and logged.
    pub shutdown_timeout: HumanDuration,
    /// RFC 7011 section 4 statistics records sent to the collectors.
    pub statistics: StatisticsConfig,
    /// RFC 5610 type records for flowex's own elements, sent with the templates, so a
    /// collector learns their names and types without configuration.
    pub type_records: bool,
    /// Antrea's sourcePodLabels/destinationPodLabels in every record (JSON objects).
    pub pod_labels: bool,
    /// Antrea's uid elements (pods, their nodes, the destination service; 16 bytes each).
    #[serde(rename = "kubernetesUIDs")]
    pub kubernetes_uids: bool,
    pub collectors: Vec<CollectorConfig>,
}

/// Options records about the exporter itself (`export.statistics`), sent on IPFIX
/// transports (UDP, TCP, TLS) to collectors without `aggregator` (Antrea's Flow
/// Aggregator keeps flow records only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StatisticsConfig {
    /// How often the statistics go out (also once at shutdown); `0s` sends none.
    pub interval: HumanDuration,
    /// Also the node's interfaces' receive and transmit drops (`interfaceName`,
    /// `droppedPacketTotalCount`), one record per followed interface and direction.
    pub interfaces: bool,
}

impl Default for StatisticsConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration::secs(60),
            interfaces: false,
        }
    }
}

/// Transport to a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// IPFIX over TLS (RFC 7011 section 11) on TCP.
    Tls,
    /// Antrea's FlowExportService (gRPC over mutual TLS), as Antrea's agents use it.
    Grpc,
}

impl Transport {
    /// The name used in config and URLs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Grpc => "grpc",
        }
    }

    /// The largest message the transport carries.
    pub fn max_message_size(self) -> usize {
        match self {
            Self::Udp => MAX_UDP_MESSAGE_SIZE,
            Self::Tcp | Self::Tls | Self::Grpc => flowex_ipfix::MAX_MESSAGE_SIZE,
        }
    }
}

/// A receiver with limits of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregator {
    /// Antrea's Flow Aggregator (`pkg/flowaggregator/collector`).
    Antrea,
}

impl Aggregator {
    /// The largest UDP datagram the receiver reads whole.
    pub fn udp_read_size(self) -> usize {
        match self {
            Self::Antrea => 1024,
        }
    }
}

/// TLS to a collector (`transport: tls`). Files are read at each connection, so a
/// rotated certificate (a Secret updated in place) is used without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the collector's certificate must chain to.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM file of this agent's certificate chain, for collectors that require one.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM file of the private key of `certFile` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<String>,
    /// Name the collector's certificate must carry; default: the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Lowest TLS version: "1.2" (RFC 7011's minimum, the default) or "1.3".
    #[serde(default = "default_tls_min_version")]
    pub min_version: String,
    /// Accept any server certificate. For tests only: it is logged as a warning at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Read the CA and the client pair through the Kubernetes API, as Antrea's agents do,
    /// from `caConfigMap` (`ca.crt`) and `clientSecret` (`tls.crt`, `tls.key`), watched.
    #[serde(default)]
    pub antrea: bool,
    /// `namespace/name` of the ConfigMap holding the CA (`tls.antrea`).
    #[serde(default = "default_ca_config_map")]
    pub ca_config_map: String,
    /// `namespace/name` of the Secret holding the client pair (`tls.antrea`).
    #[serde(default = "default_client_secret")]
    pub client_secret: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            min_version: default_tls_min_version(),
            insecure_skip_verify: false,
            antrea: false,
            ca_config_map: default_ca_config_map(),
            client_secret: default_client_secret(),
        }
    }
}

fn default_tls_min_version() -> String {
    "1.2".into()
}
fn default_ca_config_map() -> String {
    "flow-aggregator/flow-aggregator-ca".into()
}
fn default_client_secret() -> String {
    "flow-aggregator/flow-aggregator-client-tls".into()
}

/// One collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectorConfig {
    pub name: String,
    /// HOST:PORT; HOST may be a DNS name, resolved when connecting.
    pub address: String,
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// `transport: tls` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The receiver, where its limits differ from the standard's: `antrea` (Antrea's Flow
    /// Aggregator reads UDP datagrams into 1024 bytes, so UDP messages are kept to that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<Aggregator>,
    /// Which records go to this collector; none: every record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterConfig>,
    /// Largest message in bytes (UDP: at most 65507; TCP and TLS: at most 65535).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Re-send templates this often (UDP).
    #[serde(default = "default_template_refresh")]
    pub template_refresh: HumanDuration,
    /// Records queued for this collector before new ones are dropped (and counted).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Longest wait between two connection attempts (backoff from 100 ms, ±20% jitter).
    #[serde(default = "default_max_reconnect_delay")]
    pub max_reconnect_delay: HumanDuration,
}

fn default_transport() -> Transport {
    Transport::Udp
}
fn default_max_message_size() -> usize {
    flowex_ipfix::DEFAULT_UDP_MESSAGE_SIZE
}
/// UDP templates are re-sent every minute: a collector that restarted without the agent
/// noticing (no ICMP came back: a filtered path, or ICMP rate limits between nodes) can
/// decode again within a minute, for one message of templates (~0.5 KB) a minute. A
/// refusal the agent does see re-sends them at once.
fn default_template_refresh() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_max_reconnect_delay() -> HumanDuration {
    HumanDuration::secs(2)
}
fn default_queue_capacity() -> usize {
    65_536
}

/// Connections denied by policy, from NFLOG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DenyConfig {
    pub enabled: bool,
    pub nflog_group: u16,
    /// Export and forget a denied connection after this long without a new denial.
    pub idle_timeout: HumanDuration,
}

/// Process and container attribution from the eBPF socket probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Load the probe; when it cannot be loaded the agent runs without attribution.
    pub enabled: bool,
    /// Sockets the probe remembers before evicting the least recently used.
    pub max_sockets: u32,
    /// Where the socket-owner map is pinned for `flowex conntrack`; empty: not pinned.
    pub pin_path: String,
    /// Root of the host's /proc, to read a process's cgroup path (container ids).
    pub proc_root: String,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sockets: 65_536,
            pin_path: "/sys/fs/bpf/flowex/socket_owners".into(),
            proc_root: "/proc".into(),
        }
    }
}

/// Which pods the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodScope {
    /// This node's pods only (as Antrea): records carry the local end's pod; the Flow
    /// Aggregator joins the records of both nodes.
    Node,
    /// All pods: both ends are filled, for collectors without an aggregator.
    Cluster,
}

/// Pod and service metadata from the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch pods, services and nodes; without a reachable API server the agent exports without
    /// pod metadata.
    pub enabled: bool,
    /// A kubeconfig file; empty: $KUBECONFIG, ~/.kube/config, then the in-cluster
    /// service account.
    pub kubeconfig: String,
    /// `node` (this node's pods) or `cluster` (all pods).
    pub pod_scope: PodScope,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kubeconfig: String::new(),
            pod_scope: PodScope::Node,
        }
    }
}

/// Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// HOST:PORT serving /metrics and /healthz.
    pub listen: String,
}

/// Log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: Level,
    pub format: LogFormat,
    /// A failure or loss that goes on (a collector down, records dropped) is logged when
    /// it starts, then summarised at most this often, and logged again when it ends.
    pub summary_interval: HumanDuration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            poll_interval: HumanDuration::secs(5),
            zones: Vec::new(),
            events: true,
            event_buffer_bytes: 8 << 20,
            set_sysctls: false,
            include_loopback: false,
            prompt_tcp_end: false,
        }
    }
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            active_timeout: HumanDuration::secs(5),
            idle_timeout: HumanDuration::secs(15),
            observation_domain_id: None,
            pod_cidrs: Vec::new(),
            enterprise_number: flowex_ipfix::registry::FLOWEX_DEFAULT_PEN,
            shutdown_timeout: HumanDuration::secs(5),
            statistics: StatisticsConfig::default(),
            type_records: true,
            pod_labels: false,
            kubernetes_uids: false,
            collectors: vec![CollectorConfig {
                name: "default".into(),
                address: "127.0.0.1:4739".into(),
                transport: default_transport(),
                tls: None,
                aggregator: None,
                filter: None,
                max_message_size: default_max_message_size(),
                template_refresh: default_template_refresh(),
                queue_capacity: default_queue_capacity(),
                max_reconnect_delay: default_max_reconnect_delay(),
            }],
        }
    }
}

impl Default for DenyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nflog_group: 5,
            idle_timeout: HumanDuration::secs(15),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9400".into(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: Level::Info,
            format: LogFormat::Text,
            summary_interval: HumanDuration::secs(60),
        }
    }
}

mod check;

pub use check::{ConfigError, fnv32};
