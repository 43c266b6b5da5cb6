//! Per-collector filters (`export.collectors[].filter`), as Antrea's
//! FlowExporterDestination offers them and more: protocols, flow types, source and
//! destination CIDRs to include or exclude, and ports. Records are still built and encoded
//! once; a collector's filter picks which of a batch's records go into its queue, from a
//! small summary kept beside each encoded record. Records left out are counted per
//! collector and reason, never dropped silently.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::{Cidr, CidrSet};

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

/// What a filter looks at, taken from a record when it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    pub protocol: u8,
    /// Antrea's flowType code (0 unspecified, 1 intra-node, 2 inter-node, 3 to external,
    /// 4 from external).
    pub flow_type: u8,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    /// The connection's last record (any flowEndReason but active timeout).
    pub ended: bool,
    /// Built from denied packets (NFLOG) rather than conntrack.
    pub denied: bool,
}

/// flowEndReason of a record exported while its connection goes on.
const ACTIVE_TIMEOUT: u8 = 2;

impl RecordSummary {
    /// The summary of an Antrea flow record.
    pub fn of(record: &flowex_ipfix::antrea::FlowRecord<'_>) -> Self {
        Self {
            protocol: record.protocol,
            flow_type: record.flow_type as u8,
            source: record.source_address,
            destination: record.destination_address,
            source_port: record.source_port,
            destination_port: record.destination_port,
            ended: record.flow_end_reason != ACTIVE_TIMEOUT,
            denied: false,
        }
    }

    /// The same, for a record built from denied packets when `denied`.
    #[must_use]
    pub fn denied(self, denied: bool) -> Self {
        Self { denied, ..self }
    }
}

/// Why a filter left a record out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterReason {
    Protocol,
    FlowType,
    Source,
    Destination,
    Port,
}

impl FilterReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [FilterReason; 5] = [
        FilterReason::Protocol,
        FilterReason::FlowType,
        FilterReason::Source,
        FilterReason::Destination,
        FilterReason::Port,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FilterReason::Protocol => "protocol",
            FilterReason::FlowType => "flow_type",
            FilterReason::Source => "source",
            FilterReason::Destination => "destination",
            FilterReason::Port => "port",
        }
    }
}

/// Port ranges (inclusive); empty: every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ports(Vec<(u16, u16)>);

impl Ports {
    fn parse(key: &str, items: &[String]) -> Result<Self, String> {
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let bad = || format!("{key}: {item:?} is not a port or FIRST-LAST");
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                ),
                None => {
                    let port: u16 = item.trim().parse().map_err(|_| bad())?;
                    (port, port)
                }
            };
            if first > last {
                return Err(bad());
            }
            ranges.push((first, last));
        }
        Ok(Self(ranges))
    }

    fn allows(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|&(a, b)| (a..=b).contains(&port))
    }
}

/// CIDRs to include (empty: every address) and to exclude.
#[derive(Debug, Clone, Default)]
struct Addresses {
    include: Option<CidrSet>,
    exclude: Option<CidrSet>,
}

impl Addresses {
    fn parse(key: &str, include: &[String], exclude: &[String]) -> Result<Self, String> {
        let set = |field: &str, items: &[String]| -> Result<Option<CidrSet>, String> {
            if items.is_empty() {
                return Ok(None);
            }
            let mut cidrs = CidrSet::new();
            for (i, item) in items.iter().enumerate() {
                cidrs.insert(Cidr::parse(item).map_err(|e| format!("{field}[{i}]: {e}"))?);
            }
            Ok(Some(cidrs))
        };
        let (include_key, exclude_key) = match key {
            "source" => ("sourceCIDRs", "excludeSourceCIDRs"),
            _ => ("destinationCIDRs", "excludeDestinationCIDRs"),
        };
        Ok(Self {
            include: set(include_key, include)?,
            exclude: set(exclude_key, exclude)?,
        })
    }

    fn allows(&self, address: IpAddr) -> bool {
        self.include
            .as_ref()
            .is_none_or(|set| set.contains(address))
            && !self
                .exclude
                .as_ref()
                .is_some_and(|set| set.contains(address))
    }
}

/// A parsed filter.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Allowed protocol numbers; empty: every protocol.
    protocols: Vec<u8>,
    /// Allowed flowType codes; empty: every type.
    flow_types: Vec<u8>,
    source: Addresses,
    destination: Addresses,
    source_ports: Ports,
    destination_ports: Ports,
}

/// A protocol by name or number.
fn protocol(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmpv6" | "ipv6-icmp" => Some(58),
        "sctp" => Some(132),
        other => other.parse().ok(),
    }
}

/// A flow type by Antrea's name.
fn flow_type(name: &str) -> Option<u8> {
    match name {
        "unspecified" => Some(0),
        "intraNode" => Some(1),
        "interNode" => Some(2),
        "toExternal" => Some(3),
        "fromExternal" => Some(4),
        _ => None,
    }
}

impl RecordFilter {
    /// Parses `config`; an error names the key under `filter`.
    pub fn parse(config: &FilterConfig) -> Result<Self, String> {
        let mut protocols = Vec::new();
        for (i, name) in config.protocols.iter().enumerate() {
            protocols.push(protocol(name).ok_or_else(|| {
                format!(
                    "protocols[{i}]: {name:?} is not tcp, udp, sctp, icmp, icmpv6 or a number 0-255"
                )
            })?);
        }
        let mut flow_types = Vec::new();
        for (i, name) in config.flow_types.iter().enumerate() {
            flow_types.push(flow_type(name).ok_or_else(|| {
                format!(
                    "flowTypes[{i}]: {name:?} is not intraNode, interNode, toExternal, fromExternal or unspecified"
                )
            })?);
        }
        Ok(Self {
            protocols,
            flow_types,
            source: Addresses::parse("source", &config.source_cidrs, &config.exclude_source_cidrs)?,
            destination: Addresses::parse(
                "destination",
                &config.destination_cidrs,
                &config.exclude_destination_cidrs,
            )?,
            source_ports: Ports::parse("sourcePorts", &config.source_ports)?,
            destination_ports: Ports::parse("destinationPorts", &config.destination_ports)?,
        })
    }

    /// Whether `record` goes to the collector, or the first reason it does not.
    pub fn check(&self, record: &RecordSummary) -> Result<(), FilterReason> {
        if !self.protocols.is_empty() && !self.protocols.contains(&record.protocol) {
            return Err(FilterReason::Protocol);
        }
        if !self.flow_types.is_empty() && !self.flow_types.contains(&record.flow_type) {
            return Err(FilterReason::FlowType);
        }
        if !self.source.allows(record.source) {
            return Err(FilterReason::Source);
        }
        if !self.destination.allows(record.destination) {
            return Err(FilterReason::Destination);
        }
        if !self.source_ports.allows(record.source_port)
            || !self.destination_ports.allows(record.destination_port)
        {
            return Err(FilterReason::Port);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        protocol: u8,
        flow_type: u8,
        source: &str,
        destination: &str,
        ports: (u16, u16),
    ) -> RecordSummary {
        RecordSummary {
            protocol,
            flow_type,
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            source_port: ports.0,
            destination_port: ports.1,
            ended: true,
            denied: false,
        }
    }

    fn filter(yaml: &str) -> Result<RecordFilter, String> {
        RecordFilter::parse(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn an_empty_filter_lets_everything_through() {
        let f = filter("{}").unwrap();
        assert_eq!(
            f.check(&record(6, 1, "10.0.0.1", "10.0.0.2", (1, 2))),
            Ok(())
        );
    }

    #[test]
    fn each_part_of_a_filter_has_its_reason() {
        let f = filter(
            "{protocols: [tcp, 17], flowTypes: [interNode, toExternal], sourceCIDRs: [10.0.0.0/8], excludeSourceCIDRs: [10.9.0.0/16], excludeDestinationCIDRs: [\"fd00::/8\"], destinationPorts: [53, 8000-8080]}",
        )
        .unwrap();
        let ok = record(6, 2, "10.1.0.1", "192.0.2.1", (40000, 8080));
        assert_eq!(f.check(&ok), Ok(()));
        assert_eq!(
            f.check(&RecordSummary { protocol: 1, ..ok }),
            Err(FilterReason::Protocol)
        );
        assert_eq!(f.check(&RecordSummary { protocol: 17, ..ok }), Ok(()));
        assert_eq!(
            f.check(&RecordSummary { flow_type: 1, ..ok }),
            Err(FilterReason::FlowType)
        );
        assert_eq!(
            f.check(&RecordSummary {
                source: "11.0.0.1".parse().unwrap(),
                ..ok
            }),
            Err(FilterReason::Source)
        );
        assert_eq!(
            f.check(&RecordSummary {
                source: "10.9.1.1".parse().unwrap(),
                ..ok
            }),
            Err(FilterReason::Source)
        );
        assert_eq!(
            f.check(&record(6, 2, "10.1.0.1", "fd00::1", (1, 53))),
            Err(FilterReason::Destination)
        );
        assert_eq!(
            f.check(&RecordSummary {
                destination_port: 8081,
                ..ok
            }),
            Err(FilterReason::Port)
        );
        assert_eq!(
            f.check(&RecordSummary {
                destination_port: 53,
                ..ok
            }),
            Ok(())
        );
    }

    #[test]
    fn bad_filters_name_the_key() {
        assert_eq!(
            filter("{protocols: [tcpp]}").unwrap_err(),
            "protocols[0]: \"tcpp\" is not tcp, udp, sctp, icmp, icmpv6 or a number 0-255"
        );
        assert_eq!(
            filter("{flowTypes: [external]}").unwrap_err(),
            "flowTypes[0]: \"external\" is not intraNode, interNode, toExternal, fromExternal or unspecified"
        );
        assert_eq!(
            filter("{destinationPorts: [\"90-80\"]}").unwrap_err(),
            "destinationPorts: \"90-80\" is not a port or FIRST-LAST"
        );
        assert!(
            filter("{excludeSourceCIDRs: [10.0.0.0/33]}")
                .unwrap_err()
                .starts_with("excludeSourceCIDRs[0]: ")
        );
    }
}
