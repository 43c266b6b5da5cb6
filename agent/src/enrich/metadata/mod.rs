//! Kubernetes metadata for records: the pods, services and nodes behind a connection's
//! addresses. Watchers ([`start_watchers`]) keep three indexes current from the API
//! server; records only read them ([`Metadata::lookup`]), so building a record never waits
//! for the API.
//!
//! - `pods`: the pod that held an IP at a point in time, and the pod of a container;
//! - `services`: a service port's name by cluster IP, port and protocol;
//! - `nodes`: the nodes' pod CIDRs, which tell a pod's address from an outside one;
//! - `watch`: the API client, the watchers, and how their events change the indexes;
//! - `metrics`: what the cache reports to Prometheus.

mod metrics;
mod nodes;
mod pods;
mod services;
mod watch;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use prometheus::Registry;

pub use self::nodes::NodeNetworks;
pub use self::pods::{ENDED_RETENTION_MS, PodIndex, PodMeta, PodView};
pub use self::services::{ServiceIndex, ServiceView};
pub use self::watch::{client, start_watchers};

use self::metrics::KubeMetrics;
use crate::enrich::attribution::{EndOwner, FlowOwners};
use crate::store::{ConnKey, Connection};

/// The names a relist in progress has listed; what it did not list is gone when it ends.
/// The service and node indexes use it; the pod index marks its entries with a relist
/// generation instead, as it keeps ended pods.
#[derive(Debug, Default)]
struct Relist(Option<std::collections::HashSet<String>>);

impl Relist {
    fn begin(&mut self) {
        self.0 = Some(Default::default());
    }

    fn saw(&mut self, name: &str) {
        if let Some(seen) = self.0.as_mut() {
            seen.insert(name.to_owned());
        }
    }

    /// Ends the relist: the names in `known` it did not list.
    fn end<V>(&mut self, known: &HashMap<String, V>) -> Vec<String> {
        match self.0.take() {
            Some(seen) => known
                .keys()
                .filter(|name| !seen.contains(*name))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }
}

/// What metadata adds to one record.
#[derive(Debug, Clone, Default)]
pub struct FlowMeta {
    /// True when metadata was available (watchers running), even if no pod was found.
    pub known: bool,
    pub source: Option<Arc<PodMeta>>,
    pub destination: Option<Arc<PodMeta>>,
    /// The end is a pod: its pod is known, or its address is in a node's pod CIDR.
    pub source_is_pod: bool,
    pub destination_is_pod: bool,
    pub service_port_name: Option<Arc<str>>,
    /// The uids of the service behind a translated destination and of each end's pod's
    /// node, as 16 bytes (zero when unknown).
    pub service_uid: [u8; 16],
    pub source_node_uid: [u8; 16],
    pub destination_node_uid: [u8; 16],
}

/// The metadata cache shared by the watchers and the record builder.
pub struct Metadata {
    pods: RwLock<PodIndex>,
    services: RwLock<ServiceIndex>,
    nodes: RwLock<NodeNetworks>,
    active: AtomicBool,
    /// Pods, services and nodes: the first list has been loaded.
    synced: [AtomicBool; 3],
    metrics: Option<KubeMetrics>,
}

impl Metadata {
    /// A cache that stays empty (no API server).
    pub fn disabled(registry: Option<&Registry>) -> Arc<Self> {
        Arc::new(Self {
            pods: RwLock::default(),
            services: RwLock::default(),
            nodes: RwLock::default(),
            active: AtomicBool::new(false),
            synced: Default::default(),
            metrics: registry.map(KubeMetrics::new),
        })
    }

    /// True when watchers feed the cache.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Marks the cache as fed, with no index listed yet: records get looked up from now
    /// on, and nothing they do not find is final until each index's first list is in
    /// (an `InitDone` event). [`start_watchers`] starts here.
    pub fn activate(&self) {
        self.synced
            .iter()
            .for_each(|s| s.store(false, Ordering::Release));
        self.active.store(true, Ordering::Release);
    }

    /// Marks the cache as fed and complete. For benchmarks and tests that feed events by
    /// hand.
    pub fn mark_active(&self) {
        self.synced
            .iter()
            .for_each(|s| s.store(true, Ordering::Release));
        self.active.store(true, Ordering::Release);
    }

    /// True once pods, services and nodes have all been listed: until then a lookup that
    /// finds nothing may only mean the list is not in yet.
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// Read access to the pod index.
    pub fn pods(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Read access to the service index.
    pub fn services(&self) -> std::sync::RwLockReadGuard<'_, ServiceIndex> {
        self.services.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Read access to the nodes' pod CIDRs.
    pub fn nodes(&self) -> std::sync::RwLockReadGuard<'_, NodeNetworks> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn pods_mut(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }

    fn services_mut(&self) -> std::sync::RwLockWriteGuard<'_, ServiceIndex> {
        self.services.write().unwrap_or_else(|e| e.into_inner())
    }

    fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, NodeNetworks> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The pods of both ends and the service of one connection. A pod is found by the
    /// end's address when the connection started, else by the container id of the end's
    /// owning process (host-network pods). The destination is the address after DNAT.
    pub fn lookup(&self, key: &ConnKey, connection: &Connection, owners: &FlowOwners) -> FlowMeta {
        if !self.is_active() {
            return FlowMeta::default();
        }
        let (destination, translated) = connection.reported_destination(key);
        let start = connection.start_ms;
        let pods = self.pods();
        let find = |end: usize, ip: IpAddr, owner: Option<&EndOwner>| {
            let (pod, how) = if let Some(pod) = pods.pod_at(ip, start) {
                (Some(Arc::clone(pod)), 0)
            } else if let Some(pod) = owner
                .map(|o| o.container_id())
                .filter(|id| !id.is_empty())
                .and_then(|id| pods.pod_of_container(id))
            {
                (Some(Arc::clone(pod)), 1)
            } else {
                (None, 2)
            };
            if let Some(m) = &self.metrics {
                m.lookups[end][how].inc();
            }
            pod
        };
        let source = find(0, key.source_addr(), owners.source.as_ref());
        let destination_pod = find(1, destination, owners.destination.as_ref());
        drop(pods);
        // The nodes' pod CIDRs matter only for an end whose pod was not found.
        let nodes = self.nodes();
        let (source_is_pod, destination_is_pod) = (
            source.is_some() || nodes.contains(key.source_addr()),
            destination_pod.is_some() || nodes.contains(destination),
        );
        let node_uid = |pod: &Option<Arc<PodMeta>>| {
            pod.as_ref()
                .and_then(|p| nodes.uid(p.node()))
                .unwrap_or_default()
        };
        let (source_node_uid, destination_node_uid) =
            (node_uid(&source), node_uid(&destination_pod));
        drop(nodes);
        let (service_port_name, service_uid) = if translated {
            self.services()
                .port(key.destination_addr(), key.destination_port, key.protocol)
                .map_or((None, [0; 16]), |(name, uid)| {
                    (Some(Arc::clone(name)), *uid)
                })
        } else {
            (None, [0; 16])
        };
        FlowMeta {
            known: true,
            source,
            destination: destination_pod,
            source_is_pod,
            destination_is_pod,
            service_port_name,
            service_uid,
            source_node_uid,
            destination_node_uid,
        }
    }
}

/// Kubernetes objects and connections for tests of the cache and of the records it feeds.
#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::api::core::v1::Pod;

    pub(crate) use super::watch::now_ms;
    use crate::store::{ConnKey, Connection};

    /// A pod listed or changed.
    pub(crate) fn pod_event(json: serde_json::Value) -> kube::runtime::watcher::Event<Pod> {
        kube::runtime::watcher::Event::Apply(serde_json::from_value(json).unwrap())
    }

    /// A running pod of namespace `shop` with one container (its id is the name repeated to
    /// 64 characters); `extra` sets `outer.inner` fields, as `{"spec.hostNetwork": true}`.
    pub(crate) fn pod_json(
        name: &str,
        node: &str,
        ip: &str,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let mut pod = serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                           "ready": true, "restartCount": 0,
                           "containerID": format!("containerd://{}", name.repeat(64).get(..64).unwrap())}]}
        });
        for (path, value) in extra.as_object().unwrap() {
            let (outer, inner) = path.split_once('.').unwrap();
            pod[outer][inner] = value.clone();
        }
        pod
    }

    /// A TCP connection `source:40000 -> destination:port` started now, not translated.
    pub(crate) fn key(
        source: &str,
        destination: &str,
        destination_port: u16,
    ) -> (ConnKey, Connection) {
        let octets = |text: &str| crate::net::to_mapped(text.parse().unwrap());
        let key = ConnKey {
            zone: 0,
            protocol: 6,
            ipv6: false,
            source_port: 40_000,
            destination_port,
            source: octets(source),
            destination: octets(destination),
        };
        let connection = Connection {
            reply_source: octets(destination),
            reply_source_port: destination_port,
            snat_address: 0,
            snat_port: 0,
            tcp_state: 3,
            origin: crate::store::Origin::Conntrack,
            phase: crate::store::Phase::Active,
            flushed: false,
            kernel_start: false,
            conntrack_id: 1,
            seen_generation: 0,
            deny_prefix: 0,
            counters: Default::default(),
            exported: Default::default(),
            start_ms: now_ms(),
            last_change_ms: 0,
            last_export_ms: 0,
        };
        (key, connection)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{key, now_ms, pod_event, pod_json};
    use super::*;

    fn count(registry: &Registry, end: &str, result: &str) -> f64 {
        registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "flowex_records_pod_lookups_total")
            .and_then(|f| {
                f.get_metric()
                    .iter()
                    .find(|m| {
                        let labels: Vec<_> = m.get_label().iter().map(|l| l.value()).collect();
                        labels == [end, result]
                    })
                    .map(|m| m.get_counter().get_value())
            })
            .unwrap_or(0.0)
    }

    #[test]
    fn lookup_finds_pods_by_address_at_the_start_then_by_container() {
        let registry = Registry::new();
        let metadata = Metadata::disabled(Some(&registry));
        let now = now_ms();
        for (name, node, ip, extra) in [
            ("web", "node-a", "10.244.1.5", serde_json::json!({})),
            ("db", "node-b", "10.244.2.7", serde_json::json!({})),
            (
                "agent",
                "node-a",
                "192.168.0.10",
                serde_json::json!({"spec.hostNetwork": true}),
            ),
        ] {
            metadata.on_pod_event(pod_event(pod_json(name, node, ip, extra)), now);
        }
        let (k, c) = key("10.244.1.5", "10.244.2.7", 5432);
        // Until watchers feed it, the cache adds nothing, and says so.
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert!(!meta.known && meta.source.is_none() && !meta.source_is_pod);
        assert_eq!(count(&registry, "source", "ip"), 0.0);

        metadata.mark_active();
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert!(meta.known);
        assert_eq!(meta.source.as_ref().map(|p| p.name()), Some("web"));
        assert_eq!(meta.destination.as_ref().map(|p| p.name()), Some("db"));
        assert!(meta.source_is_pod && meta.destination_is_pod);
        assert_eq!(meta.service_port_name, None);

        // A connection that started before the pods existed (created 2026-01-01) was not
        // theirs.
        let (k, mut c) = key("10.244.1.5", "10.244.2.7", 5432);
        c.start_ms = 1_700_000_000_000;
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert!(meta.source.is_none() && meta.destination.is_none());
        assert!(!meta.source_is_pod && !meta.destination_is_pod);

        // The host-network pod shares the node's address: only its container names it, and
        // an owner without a container id names nobody.
        let (k, c) = key("192.168.0.10", "192.0.2.1", 443);
        let agent = |container: &str| FlowOwners {
            source: Some(EndOwner::new(42, 7, "agent", container)),
            destination: None,
        };
        let meta = metadata.lookup(&k, &c, &agent(&"agent".repeat(64)[..64]));
        assert_eq!(meta.source.as_ref().map(|p| p.name()), Some("agent"));
        assert!(meta.source_is_pod && !meta.destination_is_pod);
        let meta = metadata.lookup(&k, &c, &agent(""));
        assert!(meta.source.is_none());

        assert_eq!(count(&registry, "source", "ip"), 1.0);
        assert_eq!(count(&registry, "source", "container"), 1.0);
        assert_eq!(count(&registry, "source", "none"), 2.0);
        assert_eq!(count(&registry, "destination", "ip"), 1.0);
        assert_eq!(count(&registry, "destination", "container"), 0.0);
        assert_eq!(count(&registry, "destination", "none"), 3.0);
    }

    #[test]
    fn a_service_port_is_named_only_behind_a_dnat() {
        let metadata = Metadata::disabled(None);
        metadata.mark_active();
        metadata.on_service_event(kube::runtime::watcher::Event::Apply(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "sql", "port": 5432}]}
            }))
            .unwrap(),
        ));
        let (k, mut c) = key("10.244.1.5", "10.96.0.7", 5432);
        // No endpoint yet: conntrack left the destination alone.
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert_eq!(meta.service_port_name, None);
        c.reply_source = crate::net::to_mapped("10.244.2.7".parse().unwrap());
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert_eq!(meta.service_port_name.as_deref(), Some("shop/db:sql"));
        // Another port or protocol of the same address is no port of the service.
        let (k, mut c) = key("10.244.1.5", "10.96.0.7", 5433);
        c.reply_source = crate::net::to_mapped("10.244.2.7".parse().unwrap());
        assert_eq!(
            metadata
                .lookup(&k, &c, &FlowOwners::default())
                .service_port_name,
            None
        );
    }

    #[test]
    fn an_end_without_a_known_pod_is_a_pod_inside_a_nodes_pod_cidr() {
        let metadata = Metadata::disabled(None);
        metadata.mark_active();
        metadata.on_node_event(kube::runtime::watcher::Event::Apply(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "node-b"},
                "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}
            }))
            .unwrap(),
        ));
        let (k, c) = key("192.0.2.1", "10.244.2.7", 443);
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert!(meta.destination.is_none() && meta.destination_is_pod);
        assert!(!meta.source_is_pod);
    }
}
