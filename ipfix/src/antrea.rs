//! Antrea's flow record: the IPv4 and IPv6 templates in the order Antrea's Flow Exporter
//! uses (43 elements each), and a typed record that encodes into them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::encoder::{FieldWriter, Record, variable_len};
use crate::registry::Registry;
use crate::template::{Template, TemplateError};

/// Template id of the IPv4 flow template.
pub const IPV4_TEMPLATE_ID: u16 = 256;
/// Template id of the IPv6 flow template.
pub const IPV6_TEMPLATE_ID: u16 = 257;

const IANA_HEAD: [&str; 10] = [
    "flowStartSeconds",
    "flowEndSeconds",
    "flowEndReason",
    "sourceTransportPort",
    "destinationTransportPort",
    "protocolIdentifier",
    "packetTotalCount",
    "octetTotalCount",
    "packetDeltaCount",
    "octetDeltaCount",
];

const REVERSE: [&str; 4] = [
    "reversePacketTotalCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
];

const ANTREA_COMMON: [&str; 24] = [
    "sourcePodName",
    "sourcePodNamespace",
    "sourceNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationNodeName",
    "destinationServicePort",
    "destinationServicePortName",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyType",
    "ingressNetworkPolicyRuleName",
    "ingressNetworkPolicyRuleAction",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyType",
    "egressNetworkPolicyRuleName",
    "egressNetworkPolicyRuleAction",
    "tcpState",
    "flowType",
    "egressName",
    "egressIP",
    "egressNodeName",
    "proxySnatPort",
];

/// Element names of the IPv4 template, in order.
pub fn ipv4_element_names() -> Vec<&'static str> {
    element_names(
        ["sourceIPv4Address", "destinationIPv4Address"],
        [
            "destinationClusterIPv4",
            "proxySnatIPv4",
            "destinationServiceIPv4",
        ],
    )
}

/// Element names of the IPv6 template, in order.
pub fn ipv6_element_names() -> Vec<&'static str> {
    element_names(
        ["sourceIPv6Address", "destinationIPv6Address"],
        [
            "destinationClusterIPv6",
            "proxySnatIPv6",
            "destinationServiceIPv6",
        ],
    )
}

fn element_names(addresses: [&'static str; 2], tail: [&'static str; 3]) -> Vec<&'static str> {
    let mut names = Vec::with_capacity(43);
    names.extend(IANA_HEAD);
    names.extend(addresses);
    names.extend(REVERSE);
    names.extend(ANTREA_COMMON);
    names.extend(tail);
    names
}

/// The IPv4 flow template (id 256).
pub fn ipv4_template(registry: &Registry) -> Result<Template, TemplateError> {
    Template::from_names(registry, IPV4_TEMPLATE_ID, &ipv4_element_names())
}

/// The IPv6 flow template (id 257).
pub fn ipv6_template(registry: &Registry) -> Result<Template, TemplateError> {
    Template::from_names(registry, IPV6_TEMPLATE_ID, &ipv6_element_names())
}

/// Antrea's flowType (IE 137): where a flow runs relative to the pods of the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowType {
    #[default]
    Unspecified = 0,
    /// Pod to pod on the same node.
    IntraNode = 1,
    /// Pod to pod on different nodes.
    InterNode = 2,
    /// Pod to an address outside the pod network.
    ToExternal = 3,
    /// An address outside the pod network to a pod.
    FromExternal = 4,
}

/// Antrea's ingress/egressNetworkPolicyType (IEs 115/118): which kind of policy a rule
/// belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PolicyType {
    #[default]
    None = 0,
    K8sNetworkPolicy = 1,
    AntreaNetworkPolicy = 2,
    AntreaClusterNetworkPolicy = 3,
    /// Kubernetes' (Admin) cluster network policy.
    K8sClusterNetworkPolicy = 4,
}

/// Antrea's ingress/egressNetworkPolicyRuleAction (IEs 139/140).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RuleAction {
    #[default]
    None = 0,
    Allow = 1,
    Drop = 2,
    Reject = 3,
}

/// Network policy fields for one direction (ingress or egress).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRule<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub policy_type: PolicyType,
    pub rule_name: &'a str,
    pub rule_action: RuleAction,
}

/// Packet and octet counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packet_total: u64,
    pub octet_total: u64,
    pub packet_delta: u64,
    pub octet_delta: u64,
}

/// One flow record in Antrea's layout. The family of `source_address` picks the template;
/// the other addresses are written as unspecified when of the other family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord<'a> {
    pub flow_start_seconds: u32,
    pub flow_end_seconds: u32,
    /// 1 idle timeout, 2 active timeout, 3 end of flow, 4 forced end.
    pub flow_end_reason: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: u8,
    pub forward: Counters,
    pub reverse: Counters,
    pub source_address: IpAddr,
    pub destination_address: IpAddr,
    pub source_pod_name: &'a str,
    pub source_pod_namespace: &'a str,
    pub source_node_name: &'a str,
    pub destination_pod_name: &'a str,
    pub destination_pod_namespace: &'a str,
    pub destination_node_name: &'a str,
    pub destination_service_port: u16,
    pub destination_service_port_name: &'a str,
    pub ingress: PolicyRule<'a>,
    pub egress: PolicyRule<'a>,
    pub tcp_state: &'a str,
    pub flow_type: FlowType,
    pub egress_name: &'a str,
    pub egress_ip: &'a str,
    pub egress_node_name: &'a str,
    pub proxy_snat_port: u16,
    pub destination_cluster_ip: IpAddr,
    pub proxy_snat_ip: IpAddr,
    pub destination_service_ip: IpAddr,
}

impl Default for FlowRecord<'_> {
    fn default() -> Self {
        let zero = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            flow_start_seconds: 0,
            flow_end_seconds: 0,
            flow_end_reason: 0,
            source_port: 0,
            destination_port: 0,
            protocol: 0,
            forward: Counters::default(),
            reverse: Counters::default(),
            source_address: zero,
            destination_address: zero,
            source_pod_name: "",
            source_pod_namespace: "",
            source_node_name: "",
            destination_pod_name: "",
            destination_pod_namespace: "",
            destination_node_name: "",
            destination_service_port: 0,
            destination_service_port_name: "",
            ingress: PolicyRule::default(),
            egress: PolicyRule::default(),
            tcp_state: "",
            flow_type: FlowType::Unspecified,
            egress_name: "",
            egress_ip: "",
            egress_node_name: "",
            proxy_snat_port: 0,
            destination_cluster_ip: zero,
            proxy_snat_ip: zero,
            destination_service_ip: zero,
        }
    }
}

/// Fixed bytes of the IPv4 record; the IPv6 record has 4 * 12 more.
const FIXED_V4: usize = 46 + 8 + 32 + 9 + 12;
const FIXED_V6: usize = FIXED_V4 + 5 * 12;

impl FlowRecord<'_> {
    /// True when the record goes with the IPv6 template.
    pub fn is_ipv6(&self) -> bool {
        self.source_address.is_ipv6()
    }

    /// The id of the template this record is encoded for.
    pub fn template_id(&self) -> u16 {
        if self.is_ipv6() {
            IPV6_TEMPLATE_ID
        } else {
            IPV4_TEMPLATE_ID
        }
    }

    fn strings(&self) -> [&str; 16] {
        [
            self.source_pod_name,
            self.source_pod_namespace,
            self.source_node_name,
            self.destination_pod_name,
            self.destination_pod_namespace,
            self.destination_node_name,
            self.destination_service_port_name,
            self.ingress.name,
            self.ingress.namespace,
            self.ingress.rule_name,
            self.egress.name,
            self.egress.namespace,
            self.egress.rule_name,
            self.tcp_state,
            self.egress_name,
            self.egress_ip,
        ]
    }

    fn address(&self, w: &mut FieldWriter<'_>, addr: IpAddr) {
        match (self.is_ipv6(), addr) {
            (false, IpAddr::V4(a)) => w.ipv4(a),
            (false, IpAddr::V6(_)) => w.ipv4(Ipv4Addr::UNSPECIFIED),
            (true, IpAddr::V6(a)) => w.ipv6(a),
            (true, IpAddr::V4(_)) => w.ipv6(Ipv6Addr::UNSPECIFIED),
        }
    }

    fn policy(w: &mut FieldWriter<'_>, rule: &PolicyRule<'_>) {
        w.string(rule.name);
        w.string(rule.namespace);
        w.u8(rule.policy_type as u8);
        w.string(rule.rule_name);
        w.u8(rule.rule_action as u8);
    }
}

impl Record for FlowRecord<'_> {
    #[inline]
    fn encoded_len(&self) -> usize {
        let fixed = if self.is_ipv6() { FIXED_V6 } else { FIXED_V4 };
        let strings: usize = self.strings().iter().map(|s| variable_len(s.len())).sum();
        fixed + strings + variable_len(self.egress_node_name.len())
    }

    #[inline]
    fn emit(&self, w: &mut FieldWriter<'_>) {
        w.u32(self.flow_start_seconds);
        w.u32(self.flow_end_seconds);
        w.u8(self.flow_end_reason);
        w.u16(self.source_port);
        w.u16(self.destination_port);
        w.u8(self.protocol);
        w.u64(self.forward.packet_total);
        w.u64(self.forward.octet_total);
        w.u64(self.forward.packet_delta);
        w.u64(self.forward.octet_delta);
        self.address(w, self.source_address);
        self.address(w, self.destination_address);
        w.u64(self.reverse.packet_total);
        w.u64(self.reverse.octet_total);
        w.u64(self.reverse.packet_delta);
        w.u64(self.reverse.octet_delta);
        w.string(self.source_pod_name);
        w.string(self.source_pod_namespace);
        w.string(self.source_node_name);
        w.string(self.destination_pod_name);
        w.string(self.destination_pod_namespace);
        w.string(self.destination_node_name);
        w.u16(self.destination_service_port);
        w.string(self.destination_service_port_name);
        Self::policy(w, &self.ingress);
        Self::policy(w, &self.egress);
        w.string(self.tcp_state);
        w.u8(self.flow_type as u8);
        w.string(self.egress_name);
        w.string(self.egress_ip);
        w.string(self.egress_node_name);
        w.u16(self.proxy_snat_port);
        self.address(w, self.destination_cluster_ip);
        self.address(w, self.proxy_snat_ip);
        self.address(w, self.destination_service_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_43_elements_in_antrea_order() {
        let registry = Registry::default();
        let v4 = ipv4_template(&registry).unwrap();
        let v6 = ipv6_template(&registry).unwrap();
        assert_eq!(v4.fields().len(), 43);
        assert_eq!(v6.fields().len(), 43);
        let ids: Vec<_> = v4
            .fields()
            .iter()
            .map(|f| (f.spec.enterprise_number, f.spec.element_id))
            .collect();
        assert_eq!(&ids[..3], &[(0, 150), (0, 151), (0, 136)]);
        assert_eq!(ids[16], (56506, 101));
        assert_eq!(&ids[40..], &[(56506, 106), (56506, 170), (56506, 168)]);
        assert_eq!(v4.fixed_len(), FIXED_V4);
        assert_eq!(v6.fixed_len(), FIXED_V6);
        assert_eq!(v4.variable_fields(), 17);
    }
}
