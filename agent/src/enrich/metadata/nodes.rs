//! The nodes' pod CIDRs (`spec.podCIDRs`). In node scope only this node's pods are
//! watched, so a pod on another node is missing from the pod index; its address is still
//! inside its node's pod CIDR, and that is how a record tells a pod of another node
//! (inter-node) from an address outside the cluster.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Node;

use super::Relist;
use crate::net::{Cidr, CidrSet};

/// The pod CIDRs of the cluster's nodes: an address inside one is a pod's, even when the
/// pod itself is not watched (node scope). All nodes' CIDRs sit in one [`CidrSet`], so a
/// lookup costs one search per prefix length in use (usually one or two), not one test
/// per node.
#[derive(Debug, Default)]
pub struct NodeNetworks {
    by_node: HashMap<String, Vec<Cidr>>,
    /// Every node's uid (`sourceNodeUUID`), by name.
    uids: HashMap<String, [u8; 16]>,
    /// Every node's CIDRs together (a network two nodes name is counted twice).
    cidrs: CidrSet,
    relist: Relist,
}

impl NodeNetworks {
    /// Nodes with pod CIDRs.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// True when no node has pod CIDRs.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// A node's pod CIDRs were listed or changed.
    pub fn apply(&mut self, node: &str, cidrs: Vec<Cidr>) {
        self.apply_node(node, [0; 16], cidrs);
    }

    /// A node was listed or changed: its uid and pod CIDRs.
    pub fn apply_node(&mut self, node: &str, uid: [u8; 16], cidrs: Vec<Cidr>) {
        self.delete(node);
        self.uids.insert(node.to_owned(), uid);
        for cidr in &cidrs {
            self.cidrs.insert(*cidr);
        }
        self.relist.saw(node);
        if !cidrs.is_empty() {
            self.by_node.insert(node.to_owned(), cidrs);
        }
    }

    /// A node was deleted.
    pub fn delete(&mut self, node: &str) {
        self.uids.remove(node);
        for cidr in self.by_node.remove(node).unwrap_or_default() {
            self.cidrs.remove(cidr);
        }
    }

    /// A relist starts.
    pub fn begin_relist(&mut self) {
        self.relist.begin();
    }

    /// The relist ended: nodes it did not list are deleted.
    pub fn end_relist(&mut self) {
        for node in self.relist.end(&self.uids) {
            self.delete(&node);
        }
    }

    /// A node's uid as 16 bytes (zero when unknown or not a UUID).
    pub fn uid(&self, node: &str) -> Option<[u8; 16]> {
        self.uids.get(node).copied()
    }

    /// True when `ip` is in a node's pod CIDR.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.cidrs.contains(ip)
    }
}

/// `spec.podCIDRs` (with `spec.podCIDR`) of a Node object; unparsable entries are skipped.
pub(super) fn node_pod_cidrs(node: &Node) -> Vec<Cidr> {
    let spec = node.spec.as_ref();
    let listed = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str);
    let mut cidrs = Vec::new();
    for text in listed.chain(spec.and_then(|s| s.pod_cidr.as_deref())) {
        if let Ok(cidr) = Cidr::parse(text)
            && !cidrs.contains(&cidr)
        {
            cidrs.push(cidr);
        }
    }
    cidrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_pod_cidrs_tell_pods_from_external_addresses() {
        let mut nodes = NodeNetworks::default();
        let cidr = |t: &str| Cidr::parse(t).unwrap();
        nodes.apply("a", vec![cidr("10.244.1.0/24"), cidr("fd00:10:244:1::/64")]);
        nodes.apply("b", vec![cidr("10.244.2.0/24")]);
        nodes.apply("c", vec![cidr("10.250.0.0/16")]);
        let has = |n: &NodeNetworks, t: &str| n.contains(t.parse().unwrap());
        assert!(has(&nodes, "10.244.1.7"));
        assert!(has(&nodes, "10.244.2.255"));
        assert!(has(&nodes, "10.250.3.4"));
        assert!(has(&nodes, "fd00:10:244:1::9"));
        assert!(!has(&nodes, "10.244.3.1"));
        assert!(!has(&nodes, "fd00:10:244:2::9"));
        nodes.delete("b");
        assert!(!has(&nodes, "10.244.2.1"));
        nodes.begin_relist();
        nodes.apply("a", vec![cidr("10.244.1.0/24")]);
        nodes.end_relist();
        assert_eq!(nodes.len(), 1);
        assert!(!has(&nodes, "10.250.3.4"));
        assert!(!has(&nodes, "fd00:10:244:1::9"));
        assert!(has(&nodes, "10.244.1.7"));
    }

    #[test]
    fn a_network_two_nodes_name_stays_until_both_are_gone() {
        let mut nodes = NodeNetworks::default();
        let cidr = |t: &str| Cidr::parse(t).unwrap();
        nodes.apply("old", vec![cidr("10.244.1.0/24")]);
        nodes.apply("new", vec![cidr("10.244.1.0/24")]);
        nodes.delete("old");
        assert!(nodes.contains("10.244.1.7".parse().unwrap()));
        nodes.delete("new");
        assert!(!nodes.contains("10.244.1.7".parse().unwrap()));
        assert!(nodes.is_empty());
    }

    #[test]
    fn a_nodes_spec_gives_each_cidr_once_and_skips_the_unparsable() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "spec": {"podCIDR": "10.244.1.0/24",
                     "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64", "10.244.1.0/33", "x"]}
        }))
        .unwrap();
        let texts: Vec<String> = node_pod_cidrs(&node).iter().map(Cidr::to_string).collect();
        assert_eq!(texts, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert!(node_pod_cidrs(&Node::default()).is_empty());
    }
}
