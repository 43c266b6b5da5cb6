//! Flow records: Antrea's information elements (so the Flow Aggregator ingests them), plus
//! flowStartMilliseconds and flowEndMilliseconds, and flowex's owner elements (process id,
//! name, cgroup id and container id of each end), built from the store without allocating.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowex_ipfix::antrea::{self, Counters as AntreaCounters, FlowRecord, PolicyRule};
use flowex_ipfix::encoder::variable_len;
use flowex_ipfix::{FieldWriter, Record, Registry, Template, TemplateError};

use crate::enrich::attribution::{EndOwner, FlowOwners};
use crate::enrich::metadata::FlowMeta;

use crate::conntrack::tcp_state_name;
use crate::deny::parse_prefix;
use crate::store::{Expired, flags};

/// Names of the extra elements appended to Antrea's, in template order.
const EXTRA: [&str; 10] = [
    "flowStartMilliseconds",
    "flowEndMilliseconds",
    "sourceProcessId",
    "sourceProcessName",
    "sourceCgroupId",
    "sourceContainerId",
    "destinationProcessId",
    "destinationProcessName",
    "destinationCgroupId",
    "destinationContainerId",
];

/// Bytes of the fixed-length extra elements: two timestamps, and per end a pid and a cgroup id.
const EXTRA_FIXED: usize = 16 + 2 * (4 + 8);

/// flowex's IPv4 (id 256) and IPv6 (id 257) templates.
pub fn templates(registry: &Registry) -> Result<Vec<Template>, TemplateError> {
    let mut v4 = antrea::ipv4_element_names();
    v4.extend(EXTRA);
    let mut v6 = antrea::ipv6_element_names();
    v6.extend(EXTRA);
    Ok(vec![
        Template::from_names(registry, antrea::IPV4_TEMPLATE_ID, &v4)?,
        Template::from_names(registry, antrea::IPV6_TEMPLATE_ID, &v6)?,
    ])
}

/// An Antrea flow record followed by the millisecond timestamps and the owners of both
/// ends (zero and empty where unknown).
#[derive(Debug, Clone, Copy)]
pub struct AgentRecord<'a> {
    pub flow: FlowRecord<'a>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub owners: FlowOwners,
}

fn owner_strings_len(owner: Option<&EndOwner>) -> usize {
    owner.map_or(2 * variable_len(0), |o| {
        variable_len(o.name().len()) + variable_len(o.container_id().len())
    })
}

fn emit_owner(w: &mut FieldWriter<'_>, owner: Option<&EndOwner>) {
    w.u32(owner.map_or(0, |o| o.pid));
    w.string(owner.map_or("", EndOwner::name));
    w.u64(owner.map_or(0, |o| o.cgroup_id));
    w.string(owner.map_or("", EndOwner::container_id));
}

impl Record for AgentRecord<'_> {
    fn encoded_len(&self) -> usize {
        self.flow.encoded_len()
            + EXTRA_FIXED
            + owner_strings_len(self.owners.source.as_ref())
            + owner_strings_len(self.owners.destination.as_ref())
    }

    fn emit(&self, w: &mut FieldWriter<'_>) {
        self.flow.emit(w);
        w.u64(self.start_ms);
        w.u64(self.end_ms);
        emit_owner(w, self.owners.source.as_ref());
        emit_owner(w, self.owners.destination.as_ref());
    }
}

/// Pod CIDRs, to tell pod traffic from external traffic.
#[derive(Debug, Clone, Default)]
pub struct PodNetworks {
    cidrs: Vec<(IpAddr, u8)>,
}

impl PodNetworks {
    /// From parsed CIDRs.
    pub fn new(cidrs: Vec<(IpAddr, u8)>) -> Self {
        Self { cidrs }
    }

    /// True when `addr` is inside one of the CIDRs.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.cidrs.iter().any(|(net, len)| match (net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }

    /// Antrea's flowType from addresses alone: 3 pod to external, 4 external to pod,
    /// 0 (unspecified) when both or neither are pods — telling intra- from inter-node
    /// needs pod metadata ([`flow_type`]).
    pub fn flow_type(&self, source: IpAddr, destination: IpAddr) -> u8 {
        match (self.contains(source), self.contains(destination)) {
            (true, false) => 3,
            (false, true) => 4,
            _ => 0,
        }
    }
}

/// Antrea's flowType: an end is a pod when metadata found its pod or its address is in a
/// pod CIDR (a node's `spec.podCIDRs`, or `export.podCIDRs`). Pod to pod is intra-node (1) when both pods are known and on the same node,
/// else inter-node (2); in node scope only local pods are known, so a flow to a pod of
/// another node is inter-node. Pod to non-pod is to-external (3), the reverse
/// from-external (4), neither 0. Without metadata pod to pod stays 0.
pub fn flow_type(
    networks: &PodNetworks,
    source: IpAddr,
    destination: IpAddr,
    meta: &FlowMeta,
) -> u8 {
    if !meta.known {
        return networks.flow_type(source, destination);
    }
    let source_pod = meta.source_is_pod || networks.contains(source);
    let destination_pod = meta.destination_is_pod || networks.contains(destination);
    match (source_pod, destination_pod) {
        (true, true) => match (&meta.source, &meta.destination) {
            (Some(s), Some(d)) if !s.node().is_empty() && s.node() == d.node() => 1,
            _ => 2,
        },
        (true, false) => 3,
        (false, true) => 4,
        (false, false) => 0,
    }
}

fn unspecified(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// Builds the record for one expired connection. `prefix` is the connection's deny prefix
/// (empty for conntrack connections); `owners` come from [`crate::enrich::attribution`],
/// `meta` from [`crate::enrich::metadata`].
pub fn build<'a>(
    expired: &Expired<'_>,
    prefix: &'a str,
    networks: &PodNetworks,
    owners: FlowOwners,
    meta: &'a FlowMeta,
) -> AgentRecord<'a> {
    let key = expired.key;
    let c = expired.connection;
    let source = key.source_addr();
    let original_destination = key.destination_addr();
    let (destination, translated) = c.reported_destination(key);
    let mut flow = FlowRecord {
        flow_start_seconds: (c.start_ms / 1_000) as u32,
        flow_end_seconds: (expired.end_ms / 1_000) as u32,
        flow_end_reason: expired.reason as u8,
        source_port: key.source_port,
        destination_port: if translated {
            c.reply_source_port
        } else {
            key.destination_port
        },
        protocol: key.protocol,
        forward: AntreaCounters {
            packet_total: c.counters.packets,
            octet_total: c.counters.bytes,
            packet_delta: expired.delta.packets,
            octet_delta: expired.delta.bytes,
        },
        reverse: AntreaCounters {
            packet_total: c.counters.reply_packets,
            octet_total: c.counters.reply_bytes,
            packet_delta: expired.delta.reply_packets,
            octet_delta: expired.delta.reply_bytes,
        },
        source_address: source,
        destination_address: destination,
        tcp_state: if key.protocol == 6 && c.flags & flags::DENY == 0 {
            tcp_state_name(c.tcp_state)
        } else {
            ""
        },
        flow_type: flow_type(networks, source, destination, meta),
        destination_cluster_ip: unspecified(key.ipv6),
        proxy_snat_ip: unspecified(key.ipv6),
        destination_service_ip: unspecified(key.ipv6),
        ..FlowRecord::default()
    };
    if translated {
        flow.destination_cluster_ip = original_destination;
        flow.destination_service_ip = original_destination;
        flow.destination_service_port = key.destination_port;
        flow.destination_service_port_name = meta.service_port_name.as_deref().unwrap_or("");
    }
    if let Some(pod) = &meta.source {
        flow.source_pod_name = pod.name();
        flow.source_pod_namespace = pod.namespace();
        flow.source_node_name = pod.node();
    }
    if let Some(pod) = &meta.destination {
        flow.destination_pod_name = pod.name();
        flow.destination_pod_namespace = pod.namespace();
        flow.destination_node_name = pod.node();
    }
    if c.flags & flags::DENY != 0 {
        let policy = parse_prefix(prefix);
        let rule = PolicyRule {
            name: policy.map_or(prefix, |p| p.name),
            namespace: policy.map_or("", |p| p.namespace),
            // Antrea's policy types: without metadata, a namespaced policy is reported as a
            // K8s NetworkPolicy (1) and a cluster-scoped one as an Antrea
            // ClusterNetworkPolicy (3).
            policy_type: match policy {
                Some(p) if p.namespace.is_empty() => 3,
                Some(_) => 1,
                None => 0,
            },
            rule_name: policy.map_or("", |p| p.rule),
            rule_action: 2,
        };
        if c.flags & flags::EGRESS != 0 {
            flow.egress = rule;
        } else {
            flow.ingress = rule;
        }
    }
    AgentRecord {
        flow,
        start_ms: c.start_ms,
        end_ms: expired.end_ms,
        owners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_extend_antreas() {
        let templates = templates(&Registry::default()).unwrap();
        assert_eq!(templates[0].fields().len(), 53);
        assert_eq!(templates[1].id(), 257);
        assert_eq!(templates[0].position("flowEndMilliseconds"), Some(44));
        assert_eq!(templates[1].position("destinationContainerId"), Some(52));
    }

    #[test]
    fn pod_networks() {
        let networks = PodNetworks::new(vec![
            ("10.244.0.0".parse().unwrap(), 16),
            ("fd00:10:244::".parse().unwrap(), 56),
        ]);
        assert!(networks.contains("10.244.3.7".parse().unwrap()));
        assert!(!networks.contains("10.245.0.1".parse().unwrap()));
        assert!(networks.contains("fd00:10:244::9".parse().unwrap()));
        assert_eq!(
            networks.flow_type("10.244.1.1".parse().unwrap(), "8.8.8.8".parse().unwrap()),
            3
        );
        assert_eq!(
            networks.flow_type("1.1.1.1".parse().unwrap(), "10.244.1.1".parse().unwrap()),
            4
        );
    }

    #[test]
    fn records_get_pods_services_and_flow_types() {
        use crate::enrich::metadata::Metadata;
        use crate::enrich::metadata::fixtures::{key, now_ms, pod_event, pod_json};
        let registry = prometheus::Registry::new();
        let metadata = Metadata::disabled(Some(&registry));
        metadata.mark_active();
        let now = now_ms();
        metadata.on_pod_event(
            pod_event(pod_json(
                "web",
                "node-a",
                "10.244.1.5",
                serde_json::json!({}),
            )),
            now,
        );
        metadata.on_pod_event(
            pod_event(pod_json(
                "db",
                "node-b",
                "10.244.2.7",
                serde_json::json!({}),
            )),
            now,
        );
        // A host-network pod: its address is the node's, so only its container finds it.
        metadata.on_pod_event(
            pod_event(pod_json(
                "agent",
                "node-a",
                "192.168.0.10",
                serde_json::json!({"spec.hostNetwork": true}),
            )),
            now,
        );
        // A finished job keeps its IP in the status, but no longer holds it.
        metadata.on_pod_event(
            pod_event(pod_json(
                "job",
                "node-a",
                "10.244.1.8",
                serde_json::json!({"status.phase": "Succeeded"}),
            )),
            now,
        );
        metadata.on_service_event(kube::runtime::watcher::Event::Apply(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "sql", "port": 5432}]}
            }))
            .unwrap(),
        ));
        let networks = PodNetworks::new(vec![("10.244.0.0".parse().unwrap(), 16)]);
        let no_owners = FlowOwners::default();

        // web -> db through the service: both pods, two nodes, the service's port name.
        let (k, mut c) = key("10.244.1.5", "10.96.0.7", 5432);
        c.reply_source = key("10.244.2.7", "10.244.2.7", 0).0.source;
        let (dst, translated) = c.reported_destination(&k);
        assert_eq!((dst, translated), ("10.244.2.7".parse().unwrap(), true));
        let meta = metadata.lookup(&k, &c, &no_owners);
        assert_eq!(meta.source.as_ref().unwrap().name(), "web");
        assert_eq!(meta.destination.as_ref().unwrap().node(), "node-b");
        assert_eq!(meta.service_port_name.as_deref(), Some("shop/db:sql"));
        assert_eq!(flow_type(&networks, k.source_addr(), dst, &meta), 2);

        // A pod of the same node: intra-node.
        metadata.on_pod_event(
            pod_event(pod_json(
                "cache",
                "node-a",
                "10.244.1.9",
                serde_json::json!({}),
            )),
            now,
        );
        let (k, c) = key("10.244.1.5", "10.244.1.9", 6379);
        let meta = metadata.lookup(&k, &c, &no_owners);
        assert_eq!(meta.service_port_name, None);
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            1
        );

        // To the outside; and from the host-network pod, found by its container.
        let (k, c) = key("10.244.1.5", "1.1.1.1", 443);
        let meta = metadata.lookup(&k, &c, &no_owners);
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            3
        );
        let (k, c) = key("192.168.0.10", "10.244.1.5", 8080);
        let owners = FlowOwners {
            source: Some(EndOwner::new(42, 7, "agent", &"agent".repeat(64)[..64])),
            destination: None,
        };
        let meta = metadata.lookup(&k, &c, &owners);
        assert_eq!(meta.source.as_ref().map(|p| p.name()), Some("agent"));
        assert_eq!(meta.destination.as_ref().map(|p| p.name()), Some("web"));
        // The finished job's address names nobody.
        let (k, c) = key("10.244.1.8", "1.1.1.1", 443);
        let meta = metadata.lookup(&k, &c, &no_owners);
        assert!(meta.source.is_none());
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            3
        );

        // The record carries it all.
        let (k, mut c) = key("10.244.1.5", "10.96.0.7", 5432);
        c.reply_source = key("10.244.2.7", "10.244.2.7", 0).0.source;
        let meta = metadata.lookup(&k, &c, &no_owners);
        let expired = crate::store::Expired {
            key: &k,
            connection: &c,
            reason: crate::store::EndReason::ActiveTimeout,
            delta: Default::default(),
            end_ms: now,
        };
        let record = build(&expired, "", &networks, no_owners, &meta);
        assert_eq!(record.flow.source_pod_name, "web");
        assert_eq!(record.flow.source_pod_namespace, "shop");
        assert_eq!(record.flow.source_node_name, "node-a");
        assert_eq!(record.flow.destination_pod_name, "db");
        assert_eq!(record.flow.destination_node_name, "node-b");
        assert_eq!(record.flow.destination_service_port, 5432);
        assert_eq!(record.flow.destination_service_port_name, "shop/db:sql");
        assert_eq!(record.flow.flow_type, 2);

        let lookups = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "flowex_records_pod_lookups_total")
            .unwrap();
        let count = |end: &str, result: &str| {
            lookups
                .get_metric()
                .iter()
                .find(|m| {
                    let labels: Vec<_> = m.get_label().iter().map(|l| l.value()).collect();
                    labels == [end, result]
                })
                .map_or(0.0, |m| m.get_counter().get_value())
        };
        assert_eq!(count("source", "container"), 1.0);
        assert_eq!(count("source", "none"), 1.0);
        assert_eq!(count("source", "ip"), 4.0);
    }

    #[test]
    fn in_node_scope_node_cidrs_make_a_remote_pod_inter_node() {
        use crate::enrich::metadata::Metadata;
        use crate::enrich::metadata::fixtures::{key, now_ms, pod_event, pod_json};
        let metadata = Metadata::disabled(None);
        metadata.mark_active();
        metadata.on_pod_event(
            pod_event(pod_json(
                "web",
                "node-a",
                "10.244.1.5",
                serde_json::json!({}),
            )),
            now_ms(),
        );
        metadata.on_node_event(kube::runtime::watcher::Event::Apply(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "node-b"},
                "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}
            }))
            .unwrap(),
        ));
        // No export.podCIDRs configured: only the node's spec says 10.244.2.7 is a pod.
        let networks = PodNetworks::default();
        let (k, c) = key("10.244.1.5", "10.244.2.7", 5432);
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert!(meta.destination.is_none() && meta.destination_is_pod);
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            2
        );
        let (k, c) = key("10.244.1.5", "192.0.2.1", 443);
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            3
        );
        let (k, c) = key("192.0.2.1", "10.244.2.7", 443);
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            4
        );
    }
}
