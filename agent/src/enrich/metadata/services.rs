//! The service index: a service port's `namespace/name:port` by cluster IP, port and
//! protocol, by load-balancer ingress IP or external IP, port and protocol, and by node
//! port and protocol (any node address). A record asks for it only when conntrack
//! translated the destination (DNAT), so a connection made straight to a pod or to an
//! outside address names no service.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::Relist;

/// The parts of a Service object the index uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// Port, IP protocol number, port name.
    pub ports: Vec<(u16, u8, String)>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`: addresses that reach the
    /// ports as the cluster IPs do.
    pub external_ips: Vec<IpAddr>,
    /// Node port, IP protocol number, port name (NodePort and LoadBalancer services).
    pub node_ports: Vec<(u16, u8, String)>,
    /// `metadata.uid` as 16 bytes (`destinationServiceUUID`; zero when not a UUID).
    pub uid: [u8; 16],
}

fn protocol_number(name: Option<&str>) -> Option<u8> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

impl ServiceView {
    /// Extracts what the index needs; `None` without a name.
    pub fn from_service(service: &Service) -> Option<Self> {
        let name = service.metadata.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        let spec = service.spec.as_ref();
        let mut cluster_ips = Vec::new();
        let listed = spec
            .and_then(|s| s.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str);
        for text in listed.chain(spec.and_then(|s| s.cluster_ip.as_deref())) {
            // "None" marks a headless service.
            if let Ok(ip) = text.parse::<IpAddr>()
                && !cluster_ips.contains(&ip)
            {
                cluster_ips.push(ip);
            }
        }
        let all_ports = || spec.and_then(|s| s.ports.as_ref()).into_iter().flatten();
        let ports = all_ports()
            .filter_map(|p| {
                Some((
                    u16::try_from(p.port).ok()?,
                    protocol_number(p.protocol.as_deref())?,
                    p.name.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let node_ports = all_ports()
            .filter_map(|p| {
                Some((
                    u16::try_from(p.node_port?).ok().filter(|n| *n != 0)?,
                    protocol_number(p.protocol.as_deref())?,
                    p.name.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref());
        let mut external_ips = Vec::new();
        for text in spec
            .and_then(|s| s.external_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(ingress)
        {
            if let Ok(ip) = text.parse::<IpAddr>()
                && !external_ips.contains(&ip)
                && !cluster_ips.contains(&ip)
            {
                external_ips.push(ip);
            }
        }
        Some(Self {
            name: format!("{namespace}/{name}"),
            cluster_ips,
            ports,
            external_ips,
            node_ports,
            uid: super::pods::uid_bytes(service.metadata.uid.as_deref().unwrap_or_default()),
        })
    }

    /// Antrea's service port name: `namespace/name:port` (`namespace/name` for an unnamed port).
    fn port_name(&self, port: &str) -> Arc<str> {
        if port.is_empty() {
            Arc::from(self.name.as_str())
        } else {
            Arc::from(format!("{}:{port}", self.name))
        }
    }
}

/// (address, port, protocol); a node port's key has no address (any node's).
type ServiceKey = (Option<IpAddr>, u16, u8);

/// Service ports by cluster IP, port and protocol.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    /// The port's name and its service's uid.
    ports: HashMap<ServiceKey, (Arc<str>, [u8; 16])>,
    by_service: HashMap<String, Vec<ServiceKey>>,
    relist: Relist,
}

impl ServiceIndex {
    /// Services known.
    pub fn len(&self) -> usize {
        self.by_service.len()
    }

    /// True when no service is known.
    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// A service was listed or changed.
    pub fn apply(&mut self, view: &ServiceView) {
        self.delete(&view.name);
        let mut keys = Vec::new();
        for ip in view.cluster_ips.iter().chain(&view.external_ips) {
            for (port, protocol, name) in &view.ports {
                let key = (Some(*ip), *port, *protocol);
                self.ports.insert(key, (view.port_name(name), view.uid));
                keys.push(key);
            }
        }
        for (port, protocol, name) in &view.node_ports {
            let key = (None, *port, *protocol);
            self.ports.insert(key, (view.port_name(name), view.uid));
            keys.push(key);
        }
        self.by_service.insert(view.name.clone(), keys);
        self.relist.saw(&view.name);
    }

    /// A service was deleted (`namespace/name`).
    pub fn delete(&mut self, name: &str) {
        if let Some(keys) = self.by_service.remove(name) {
            for key in keys {
                self.ports.remove(&key);
            }
        }
    }

    /// A relist starts.
    pub fn begin_relist(&mut self) {
        self.relist.begin();
    }

    /// The relist ended: services it did not list are deleted.
    pub fn end_relist(&mut self) {
        for name in self.relist.end(&self.by_service) {
            self.delete(&name);
        }
    }

    /// `namespace/name:port` of the service port at `ip:port` over `protocol`.
    pub fn port_name(&self, ip: IpAddr, port: u16, protocol: u8) -> Option<&Arc<str>> {
        self.port(ip, port, protocol).map(|(name, _)| name)
    }

    /// The port's name and its service's uid: by cluster, external or load-balancer IP,
    /// else by node port (a translated connection to a node's address).
    pub fn port(&self, ip: IpAddr, port: u16, protocol: u8) -> Option<&(Arc<str>, [u8; 16])> {
        self.ports
            .get(&(Some(ip), port, protocol))
            .or_else(|| self.ports.get(&(None, port, protocol)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ports_and_load_balancer_addresses_name_their_service() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "namespace": "web",
                         "uid": "0a0b0c0d-0e0f-4a1b-8c2d-3e4f50617283"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.20",
                "externalIPs": ["192.0.2.7"],
                "ports": [{"name": "https", "port": 443, "nodePort": 30443, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "nodePort": 30053, "protocol": "UDP"}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}, {"hostname": "lb.example"}]}}
        }))
        .unwrap();
        let view = ServiceView::from_service(&service).unwrap();
        assert_eq!(
            view.external_ips,
            [
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "198.51.100.9".parse().unwrap()
            ]
        );
        let mut index = ServiceIndex::default();
        index.apply(&view);
        let name = |ip: &str, port, protocol| {
            index
                .port_name(ip.parse().unwrap(), port, protocol)
                .map(|s| s.to_string())
        };
        assert_eq!(
            name("10.96.0.20", 443, 6).as_deref(),
            Some("web/shop:https")
        );
        assert_eq!(
            name("198.51.100.9", 443, 6).as_deref(),
            Some("web/shop:https")
        );
        assert_eq!(name("192.0.2.7", 53, 17).as_deref(), Some("web/shop:dns"));
        // A node port through any node address.
        assert_eq!(
            name("172.18.0.3", 30443, 6).as_deref(),
            Some("web/shop:https")
        );
        assert_eq!(name("172.18.0.3", 30443, 17), None);
        assert_eq!(name("198.51.100.9", 8443, 6), None);
        assert_eq!(
            index
                .port("172.18.0.3".parse().unwrap(), 30053, 17)
                .unwrap()
                .1[0],
            0x0a
        );
        index.delete("web/shop");
        assert_eq!(
            index.port_name("172.18.0.3".parse().unwrap(), 30443, 6),
            None
        );
        assert!(index.is_empty());
    }

    #[test]
    fn service_ports_by_cluster_ip() {
        let mut index = ServiceIndex::default();
        let web = ServiceView {
            name: "shop/web".into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap(), "fd00:96::a".parse().unwrap()],
            ports: vec![(80, 6, "http".into()), (53, 17, String::new())],
            external_ips: Vec::new(),
            node_ports: Vec::new(),
            uid: [7; 16],
        };
        index.apply(&web);
        let ip = "10.96.0.10".parse().unwrap();
        assert_eq!(
            index.port_name(ip, 80, 6).map(|s| &**s),
            Some("shop/web:http")
        );
        assert_eq!(index.port_name(ip, 53, 17).map(|s| &**s), Some("shop/web"));
        assert_eq!(index.port_name(ip, 80, 17), None);
        assert_eq!(
            index
                .port_name("fd00:96::a".parse().unwrap(), 80, 6)
                .map(|s| &**s),
            Some("shop/web:http")
        );
        index.begin_relist();
        index.end_relist();
        assert!(index.is_empty());
        assert_eq!(index.port_name(ip, 80, 6), None);
    }
}
