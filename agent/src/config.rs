//! The agent's YAML configuration: typed, with defaults for every key, unknown keys
//! refused (the error names the key's path), and every value validated with one clear line.

use std::fmt;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Which records go to a collector (`export.collectors[].filter`); every list empty or
/// absent lets every record through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Protocols by name (tcp, udp, sctp, icmp, icmpv6) or number.
    pub protocols: Vec<String>,
    /// Antrea's flow types: intraNode, interNode, toExternal, fromExternal, unspecified.
    pub flow_types: Vec<String>,
    #[serde(rename = "sourceCIDRs")]
    pub source_cidrs: Vec<String>,
    #[serde(rename = "excludeSourceCIDRs")]
    pub exclude_source_cidrs: Vec<String>,
    #[serde(rename = "destinationCIDRs")]
    pub destination_cidrs: Vec<String>,
    #[serde(rename = "excludeDestinationCIDRs")]
    pub exclude_destination_cidrs: Vec<String>,
    /// Ports or FIRST-LAST ranges.
    pub source_ports: Vec<String>,
    pub destination_ports: Vec<String>,
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

/// A configuration that cannot be used, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn invalid(key: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {message}"))
}

/// serde_yaml names only the section of a value its field type refused ("export: \"5d\"
/// has unknown unit"). The refused value is quoted at the start of the message: the one
/// key of that section holding it completes the path ("export.activeTimeout: ...").
fn name_the_key(text: &str, error: &serde_yaml::Error) -> ConfigError {
    let message = error.to_string();
    let named = || -> Option<String> {
        let (path, detail) = message.split_once(": ")?;
        if path.contains(' ') {
            return None;
        }
        let value = detail.strip_prefix('"')?.split_once('"')?.0;
        let root: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
        let mut section = &root;
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
                None => (part, None),
            };
            section = section.get(name)?;
            if let Some(index) = index {
                section = section.get(index)?;
            }
        }
        let scalar = |v: &serde_yaml::Value| match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let mut keys = section
            .as_mapping()?
            .iter()
            .filter(|(_, v)| scalar(v).as_deref() == Some(value))
            .filter_map(|(k, _)| k.as_str());
        let key = keys.next()?;
        // Two keys with the same refused value: do not guess.
        keys.next()
            .is_none()
            .then(|| format!("{path}.{key}: {detail}"))
    };
    ConfigError(named().unwrap_or(message))
}

/// Checks `HOST:PORT` (IPv6 hosts in brackets) without resolving the host. A host of
/// digits and dots must be an IPv4 address (no DNS name is all digits): `1.2.3.4.5` and
/// `999.999.999.999` are refused here rather than failing every connection attempt.
fn check_host_port(key: &str, text: &str) -> Result<(), ConfigError> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, format!("{text:?} is not HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(key, format!("{text:?} has an invalid port")))?;
    if port == 0 {
        return Err(invalid(key, format!("{text:?}: port 0 is not allowed")));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && !host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    let numeric = !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !host_ok || (numeric && host.parse::<std::net::Ipv4Addr>().is_err()) {
        return Err(invalid(key, format!("{text:?} has an invalid host")));
    }
    Ok(())
}

/// Checks a collector's TLS settings against its transport. The files themselves are
/// read at each connection (they may appear or rotate while the agent runs).
fn check_tls(key: &str, collector: &CollectorConfig) -> Result<(), ConfigError> {
    let secure = matches!(collector.transport, Transport::Tls | Transport::Grpc);
    let Some(tls) = &collector.tls else {
        return if secure {
            Err(invalid(
                key,
                format!(
                    "transport {} needs tls.caFile, or tls.antrea: true (or tls.insecureSkipVerify: true)",
                    collector.transport.name()
                ),
            ))
        } else {
            Ok(())
        };
    };
    if !secure {
        return Err(invalid(
            key,
            format!(
                "TLS settings given for transport {}: set transport: tls or grpc",
                collector.transport.name()
            ),
        ));
    }
    if tls.antrea {
        if tls.ca_file.is_some() || tls.cert_file.is_some() || tls.key_file.is_some() {
            return Err(invalid(
                &format!("{key}.antrea"),
                "reads the certificates from caConfigMap and clientSecret: remove caFile, certFile and keyFile",
            ));
        }
        for (field, object) in [
            ("caConfigMap", &tls.ca_config_map),
            ("clientSecret", &tls.client_secret),
        ] {
            let valid = object.split_once('/').is_some_and(|(namespace, name)| {
                [namespace, name].iter().all(|part| {
                    !part.is_empty()
                        && part.len() <= 253
                        && part.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')
                        })
                })
            });
            if !valid {
                return Err(invalid(
                    &format!("{key}.{field}"),
                    format!("{object:?} is not NAMESPACE/NAME"),
                ));
            }
        }
    } else if tls.ca_file.is_none() && !tls.insecure_skip_verify {
        return Err(invalid(
            &format!("{key}.caFile"),
            "is needed to verify the collector (or antrea: true to read it from the API, or insecureSkipVerify: true, for tests)",
        ));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => {
            return Err(invalid(
                &format!("{key}.keyFile"),
                "is needed with certFile",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                &format!("{key}.certFile"),
                "is needed with keyFile",
            ));
        }
        _ => {}
    }
    if !matches!(tls.min_version.as_str(), "1.2" | "1.3") {
        return Err(invalid(
            &format!("{key}.minVersion"),
            format!("{:?} is not \"1.2\" or \"1.3\"", tls.min_version),
        ));
    }
    if let Some(name) = &tls.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(invalid(
            &format!("{key}.serverName"),
            format!("{name:?} is not a DNS name or IP address"),
        ));
    }
    Ok(())
}

/// Checks an address to listen on: `IP:PORT` (IPv6 in brackets); a name is not resolved.
fn check_listen(key: &str, text: &str) -> Result<(), ConfigError> {
    check_host_port(key, text)?;
    text.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| {
            invalid(
                key,
                format!("{text:?}: listen on an IP address (0.0.0.0, 127.0.0.1, [::])"),
            )
        })
}

impl Config {
    /// Parses and validates YAML.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML (an empty text is the default configuration) without checking values.
    fn parse_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| name_the_key(text, &e))
    }

    /// Replaces the collectors with `udp://HOST:PORT` or `tcp://HOST:PORT` URLs (named
    /// `collector-0`, ...), keeping the first configured collector's other settings.
    pub fn set_collector_urls(&mut self, urls: &[String]) -> Result<(), ConfigError> {
        if urls.is_empty() {
            return Ok(());
        }
        let template = match self.export.collectors.first() {
            Some(first) => first.clone(),
            None => ExportConfig::default().collectors[0].clone(),
        };
        self.export.collectors = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let (transport, address) = match url.split_once("://") {
                    Some(("udp", rest)) => (Transport::Udp, rest),
                    Some(("tcp", rest)) => (Transport::Tcp, rest),
                    Some(("tls", rest)) => (Transport::Tls, rest),
                    Some(("grpc", rest)) => (Transport::Grpc, rest),
                    _ => {
                        return Err(ConfigError(format!(
                            "--collector {url:?}: expected udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or grpc://HOST:PORT"
                        )));
                    }
                };
                if matches!(transport, Transport::Tls | Transport::Grpc) && template.tls.is_none() {
                    return Err(ConfigError(format!(
                        "--collector {url:?}: TLS needs certificates: give them as tls: {{caFile, certFile, keyFile}} on the first collector of the config file, whose settings --collector keeps"
                    )));
                }
                Ok(CollectorConfig {
                    name: format!("collector-{i}"),
                    address: address.to_owned(),
                    transport,
                    max_message_size: match transport {
                        Transport::Udp => template.max_message_size.min(MAX_UDP_MESSAGE_SIZE),
                        Transport::Tcp | Transport::Tls | Transport::Grpc => {
                            flowex_ipfix::MAX_MESSAGE_SIZE
                        }
                    },
                    // A TLS URL keeps the first collector's TLS files (a URL has no room
                    // for them); other transports have none.
                    tls: match transport {
                        Transport::Tls | Transport::Grpc => template.tls.clone(),
                        _ => None,
                    },
                    ..template.clone()
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::from_yaml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// The configuration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Checks every value; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(drop)
    }

    /// [`Config::validate`], keeping what it parsed: the pod CIDRs.
    fn checked(&self) -> Result<Vec<Cidr>, ConfigError> {
        let positive = |key: &str, d: HumanDuration| {
            if d.0.is_zero() {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("conntrack.pollInterval", self.conntrack.poll_interval)?;
        if self.conntrack.event_buffer_bytes < 64 * 1024 {
            return Err(invalid(
                "conntrack.eventBufferBytes",
                format!("{} is below 65536", self.conntrack.event_buffer_bytes),
            ));
        }
        positive("export.activeTimeout", self.export.active_timeout)?;
        positive("export.idleTimeout", self.export.idle_timeout)?;
        positive("deny.idleTimeout", self.deny.idle_timeout)?;
        positive("export.shutdownTimeout", self.export.shutdown_timeout)?;
        positive("logging.summaryInterval", self.logging.summary_interval)?;
        let statistics = self.export.statistics.interval.0;
        if !statistics.is_zero() && statistics < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "export.statistics.interval",
                "must be 0s (no statistics) or at least 1s",
            ));
        }
        if self.attribution.max_sockets == 0 {
            return Err(invalid("attribution.maxSockets", "must be greater than 0"));
        }
        if self.attribution.proc_root.is_empty() {
            return Err(invalid("attribution.procRoot", "must not be empty"));
        }
        flowex_ipfix::Registry::new(self.export.enterprise_number)
            .map_err(|e| invalid("export.enterpriseNumber", e))?;
        let mut pod_cidrs = Vec::with_capacity(self.export.pod_cidrs.len());
        for (i, cidr) in self.export.pod_cidrs.iter().enumerate() {
            pod_cidrs
                .push(Cidr::parse(cidr).map_err(|e| invalid(&format!("export.podCIDRs[{i}]"), e))?);
        }
        if self.export.collectors.is_empty() {
            return Err(invalid(
                "export.collectors",
                "at least one collector is needed",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, collector) in self.export.collectors.iter().enumerate() {
            let key = |field: &str| format!("export.collectors[{i}].{field}");
            if collector.name.is_empty() {
                return Err(invalid(&key("name"), "must not be empty"));
            }
            if !names.insert(collector.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used by another collector", collector.name),
                ));
            }
            check_host_port(&key("address"), &collector.address)?;
            let max = collector.transport.max_message_size();
            check_tls(&key("tls"), collector)?;
            if let Some(filter) = &collector.filter
                && let Err(error) = crate::export::filter::RecordFilter::parse(filter)
            {
                // The parser's errors start with the key under `filter`.
                let (field, message) = error.split_once(": ").unwrap_or(("", error.as_str()));
                return Err(invalid(&format!("{}.{field}", key("filter")), message));
            }
            if !(flowex_ipfix::encoder::MIN_MESSAGE_SIZE..=max)
                .contains(&collector.max_message_size)
            {
                return Err(invalid(
                    &key("maxMessageSize"),
                    format!(
                        "{} is outside {}..={max}",
                        collector.max_message_size,
                        flowex_ipfix::encoder::MIN_MESSAGE_SIZE
                    ),
                ));
            }
            positive(&key("templateRefresh"), collector.template_refresh)?;
            if collector.queue_capacity == 0 {
                return Err(invalid(&key("queueCapacity"), "must be greater than 0"));
            }
            positive(&key("maxReconnectDelay"), collector.max_reconnect_delay)?;
        }
        check_listen("metrics.listen", &self.metrics.listen)?;
        Ok(pod_cidrs)
    }

    /// The node name: the configured one, else $NODE_NAME, else the host name.
    pub fn resolved_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        if let Ok(name) = std::env::var("NODE_NAME")
            && !name.is_empty()
        {
            return name;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    }
}

/// FNV-1 32-bit hash (Go's hash/fnv New32, which Antrea uses for the domain id).
pub fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        hash.wrapping_mul(0x0100_0193) ^ u32::from(*b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_yaml() {
        let config = Config::default();
        let yaml = config.to_yaml();
        assert_eq!(Config::from_yaml(&yaml).unwrap(), config);
        assert!(yaml.contains("activeTimeout: 5s"));
        assert!(yaml.contains("podCIDRs: []"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-5s").is_err());
        assert_eq!(HumanDuration(Duration::from_secs(3600)).to_string(), "1h");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }

    #[test]
    fn fnv32_matches_go() {
        // hash/fnv New32 of "" is the offset basis; of "a" is 0x050c5d7e.
        assert_eq!(fnv32(b""), 0x811c_9dc5);
        assert_eq!(fnv32(b"a"), 0x050c_5d7e);
    }
}
