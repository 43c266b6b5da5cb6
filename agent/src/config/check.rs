//! Every value checked, with one clear line naming its key; the pod CIDRs parsed on the
//! way, and serde_yaml's errors completed with the key's path.

use crate::net::Cidr;
use std::fmt;
use std::path::Path;

use super::*;

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
    pub(super) fn parse_yaml(text: &str) -> Result<Self, ConfigError> {
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
    pub(super) fn checked(&self) -> Result<Vec<Cidr>, ConfigError> {
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
                && let Err(error) = crate::filter::RecordFilter::parse(filter)
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
