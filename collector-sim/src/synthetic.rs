//! Synthetic Antrea flow records with realistic names, for tools, tests and benchmarks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowex_ipfix::antrea::{Counters, FlowRecord, FlowType, PolicyRule, PolicyType, RuleAction};

const PODS: [&str; 8] = [
    "frontend-5c7b8d9f4-x2k8p",
    "checkout-7f9c6d5b8-q4m2n",
    "cart-6d8f7c9b5-l9z7w",
    "payments-api-84b6f9d7c-r5t2k",
    "catalog-0",
    "redis-master-0",
    "prometheus-k8s-1",
    "coredns-5d78c9869d-kq8vw",
];
const NAMESPACES: [&str; 4] = ["shop", "payments", "monitoring", "kube-system"];
const NODES: [&str; 4] = [
    "worker-a1.prod.example",
    "worker-b2.prod.example",
    "worker-c3.prod.example",
    "worker-d4.prod.example",
];
const PORTS: [u16; 4] = [80, 443, 8080, 5432];
const STATES: [&str; 4] = ["ESTABLISHED", "TIME_WAIT", "CLOSE", "SYN_SENT"];

/// The `index`-th synthetic flow: distinct 5-tuples, names from a small pool, counters
/// derived from the index, flowEndReason cycling through 1..=4.
pub fn flow_record(index: u64, ipv6: bool) -> FlowRecord<'static> {
    let i = index as usize;
    let (source, destination, service) = if ipv6 {
        (
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                0,
                0,
                0,
                (index >> 16) as u16,
                index as u16,
            )),
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x96,
                0,
                0,
                0,
                0,
                (i % 64) as u16,
            )),
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x96,
                0,
                0,
                0,
                1,
                (i % 32) as u16,
            )),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(
                10,
                (128 + ((index >> 16) & 0x7f)) as u8,
                (index >> 8) as u8,
                index as u8,
            )),
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, (i % 64) as u8)),
            IpAddr::V4(Ipv4Addr::new(10, 96, 1, (i % 32) as u8)),
        )
    };
    let packets = 10 + index % 1000;
    FlowRecord {
        flow_start_seconds: 1_764_000_000 + (index % 3600) as u32,
        flow_end_seconds: 1_764_003_600 + (index % 3600) as u32,
        flow_end_reason: (index % 4) as u8 + 1,
        source_port: 32_768 + (index % 28_000) as u16,
        destination_port: PORTS[i % 4],
        protocol: if i.is_multiple_of(5) { 17 } else { 6 },
        forward: Counters {
            packet_total: packets,
            octet_total: packets * 120,
            packet_delta: packets / 2,
            octet_delta: packets * 60,
        },
        reverse: Counters {
            packet_total: packets - 3,
            octet_total: packets * 900,
            packet_delta: packets / 3,
            octet_delta: packets * 300,
        },
        source_address: source,
        destination_address: destination,
        source_pod_name: PODS[i % 8],
        source_pod_namespace: NAMESPACES[i % 4],
        source_node_name: NODES[i % 4],
        destination_pod_name: PODS[(i + 3) % 8],
        destination_pod_namespace: NAMESPACES[(i + 1) % 4],
        destination_node_name: NODES[(i + 1) % 4],
        destination_service_port: PORTS[i % 4],
        destination_service_port_name: "shop/frontend:http",
        ingress: PolicyRule {
            name: "allow-frontend",
            namespace: NAMESPACES[(i + 1) % 4],
            policy_type: PolicyType::K8sNetworkPolicy,
            rule_name: "ingress-0",
            rule_action: RuleAction::Allow,
        },
        egress: PolicyRule::default(),
        tcp_state: STATES[i % 4],
        flow_type: [
            FlowType::IntraNode,
            FlowType::InterNode,
            FlowType::ToExternal,
            FlowType::FromExternal,
        ][i % 4],
        egress_name: "",
        egress_ip: "",
        egress_node_name: "",
        proxy_snat_port: 0,
        destination_cluster_ip: service,
        proxy_snat_ip: if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        },
        destination_service_ip: service,
    }
}
