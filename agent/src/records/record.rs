//! One flow record: Antrea's elements, flowex's own, and the opt-in Kubernetes ones;
//! the templates that announce them, and how an expired connection becomes one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use flowex_ipfix::antrea::{
    self, Counters as AntreaCounters, FlowRecord, FlowType, PolicyRule, PolicyType, RuleAction,
};
use flowex_ipfix::encoder::variable_len;
use flowex_ipfix::{FieldWriter, Record, Registry, Template, TemplateError};

use crate::enrich::attribution::{EndOwner, FlowOwners};
use crate::enrich::metadata::{FlowMeta, PodMeta};

use crate::net::{Cidr, CidrSet};
use crate::sources::conntrack::tcp_state_name;
use crate::sources::deny::parse_prefix;
use crate::store::{Expired, Origin};

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

/// Antrea's Kubernetes elements a record carries only when asked (`export.podLabels`,
/// `export.kubernetesUIDs`), after flowex's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubernetesElements {
    /// sourcePodLabels and destinationPodLabels (JSON objects, as Antrea writes them).
    pub pod_labels: bool,
    /// The pods', their nodes' and the destination service's uids, 16 bytes each.
    pub uids: bool,
}

const LABEL_ELEMENTS: [&str; 2] = ["sourcePodLabels", "destinationPodLabels"];
pub(super) const UID_ELEMENTS: [&str; 5] = [
    "sourcePodUUID",
    "destinationPodUUID",
    "sourceNodeUUID",
    "destinationNodeUUID",
    "destinationServiceUUID",
];

/// flowex's IPv4 (id 256) and IPv6 (id 257) templates.
pub fn templates(registry: &Registry) -> Result<Vec<Template>, TemplateError> {
    templates_with(registry, KubernetesElements::default())
}

/// flowex's templates, with the Kubernetes elements `kubernetes` asks for.
pub fn templates_with(
    registry: &Registry,
    kubernetes: KubernetesElements,
) -> Result<Vec<Template>, TemplateError> {
    let extend = |mut names: Vec<&'static str>| {
        names.extend(EXTRA);
        if kubernetes.pod_labels {
            names.extend(LABEL_ELEMENTS);
        }
        if kubernetes.uids {
            names.extend(UID_ELEMENTS);
        }
        names
    };
    let uuid_lengths = UID_ELEMENTS.map(|name| (name, 16));
    Ok(vec![
        Template::from_names_with_lengths(
            registry,
            antrea::IPV4_TEMPLATE_ID,
            &extend(antrea::ipv4_element_names()),
            &uuid_lengths,
        )?,
        Template::from_names_with_lengths(
            registry,
            antrea::IPV6_TEMPLATE_ID,
            &extend(antrea::ipv6_element_names()),
            &uuid_lengths,
        )?,
    ])
}

/// The values of the Kubernetes elements of one record (None: not in the template).
#[derive(Debug, Clone, Copy, Default)]
pub struct KubernetesValues<'a> {
    /// Source and destination pod labels ("" when the end is no known pod).
    pub labels: Option<[&'a str; 2]>,
    /// Source pod, destination pod, source node, destination node, destination service.
    pub uids: Option<[[u8; 16]; 5]>,
}

impl KubernetesValues<'_> {
    fn encoded_len(&self) -> usize {
        self.labels
            .map_or(0, |l| variable_len(l[0].len()) + variable_len(l[1].len()))
            + self.uids.map_or(0, |u| 16 * u.len())
    }

    fn emit(&self, w: &mut FieldWriter<'_>) {
        if let Some(labels) = self.labels {
            w.string(labels[0]);
            w.string(labels[1]);
        }
        if let Some(uids) = self.uids {
            for uid in &uids {
                w.bytes(uid);
            }
        }
    }
}

/// An Antrea flow record followed by the millisecond timestamps and the owners of both
/// ends (zero and empty where unknown).
#[derive(Debug, Clone, Copy)]
pub struct AgentRecord<'a> {
    pub flow: FlowRecord<'a>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub owners: FlowOwners,
    pub kubernetes: KubernetesValues<'a>,
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
            + self.kubernetes.encoded_len()
    }

    fn emit(&self, w: &mut FieldWriter<'_>) {
        self.flow.emit(w);
        w.u64(self.start_ms);
        w.u64(self.end_ms);
        emit_owner(w, self.owners.source.as_ref());
        emit_owner(w, self.owners.destination.as_ref());
        self.kubernetes.emit(w);
    }
}

/// Pod CIDRs, to tell pod traffic from external traffic.
#[derive(Debug, Clone, Default)]
pub struct PodNetworks {
    cidrs: CidrSet,
}

impl PodNetworks {
    /// From (address, prefix length) pairs; a pair that is not a CIDR is left out.
    pub fn new(cidrs: Vec<(IpAddr, u8)>) -> Self {
        Self {
            cidrs: cidrs
                .into_iter()
                .filter_map(|(addr, len)| Cidr::new(addr, len).ok())
                .collect(),
        }
    }

    /// From parsed CIDRs.
    pub fn from_cidrs(cidrs: &[Cidr]) -> Self {
        Self {
            cidrs: cidrs.iter().copied().collect(),
        }
    }

    /// True when `addr` is inside one of the CIDRs.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.cidrs.contains(addr)
    }

    /// Antrea's flowType from addresses alone: pod to external, external to pod, and
    /// unspecified when both or neither are pods (telling intra- from inter-node needs
    /// pod metadata: [`flow_type`]).
    pub fn flow_type(&self, source: IpAddr, destination: IpAddr) -> FlowType {
        match (self.contains(source), self.contains(destination)) {
            (true, false) => FlowType::ToExternal,
            (false, true) => FlowType::FromExternal,
            _ => FlowType::Unspecified,
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
) -> FlowType {
    if !meta.known {
        return networks.flow_type(source, destination);
    }
    let source_pod = meta.source_is_pod || networks.contains(source);
    let destination_pod = meta.destination_is_pod || networks.contains(destination);
    match (source_pod, destination_pod) {
        (true, true) => match (&meta.source, &meta.destination) {
            (Some(s), Some(d)) if !s.node().is_empty() && s.node() == d.node() => {
                FlowType::IntraNode
            }
            _ => FlowType::InterNode,
        },
        (true, false) => FlowType::ToExternal,
        (false, true) => FlowType::FromExternal,
        (false, false) => FlowType::Unspecified,
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
        tcp_state: if key.protocol == 6 && !c.origin.is_denied() {
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
    if c.origin.is_denied() {
        let policy = parse_prefix(prefix);
        let rule = PolicyRule {
            name: policy.map_or(prefix, |p| p.name),
            namespace: policy.map_or("", |p| p.namespace),
            // Without metadata, a namespaced policy is reported as a K8s NetworkPolicy and
            // a cluster-scoped one as an Antrea ClusterNetworkPolicy.
            policy_type: match policy {
                Some(p) if p.namespace.is_empty() => PolicyType::AntreaClusterNetworkPolicy,
                Some(_) => PolicyType::K8sNetworkPolicy,
                None => PolicyType::None,
            },
            rule_name: policy.map_or("", |p| p.rule),
            rule_action: RuleAction::Drop,
        };
        if c.origin == Origin::DeniedEgress {
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
        kubernetes: KubernetesValues::default(),
    }
}

/// The Kubernetes values `kubernetes` asks for, from a record's metadata.
pub fn kubernetes_values(kubernetes: KubernetesElements, meta: &FlowMeta) -> KubernetesValues<'_> {
    fn labels(pod: &Option<Arc<PodMeta>>) -> &str {
        pod.as_ref().map_or("", |p| p.labels_json())
    }
    let uid = |pod: &Option<Arc<PodMeta>>| pod.as_ref().map_or([0; 16], |p| p.uid_bytes());
    KubernetesValues {
        labels: kubernetes
            .pod_labels
            .then(|| [labels(&meta.source), labels(&meta.destination)]),
        uids: kubernetes.uids.then(|| {
            [
                uid(&meta.source),
                uid(&meta.destination),
                meta.source_node_uid,
                meta.destination_node_uid,
                meta.service_uid,
            ]
        }),
    }
}
