//! Flow records: Antrea's information elements (so the Flow Aggregator ingests them), plus
//! flowStartMilliseconds and flowEndMilliseconds, and flowex's owner elements (process id,
//! name, cgroup id and container id of each end), built from the store without allocating.

mod record;

pub use record::*;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::enrich::attribution::{Attribution, EndOwner, FlowOwners};
use crate::enrich::metadata::{FlowMeta, Metadata};
use crate::telemetry::Metrics;

use crate::export::{BatchBuilder, ExportingProcess};
use crate::filter::RecordSummary;
use crate::store::{Annotation, ConnectionStore, Due};

/// Due connections copied out of the store and built into records at a time.
pub const EXPIRY_CHUNK: usize = 4096;

/// Lookups of an end's owner (or pod) before a connection settles for not having one: an
/// end can be exported before the probe has seen its socket or the watch its pod, and a
/// remote end never has one.
const LOOKUPS: u8 = 3;

/// What a connection's records carry beyond conntrack: the owners of its ends and its
/// pods and service. Resolved when the connection is first exported and kept with it in
/// the store ([`Annotation`]), so later exports look nothing up. Interned: connections
/// with the same owners and pods share one value.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    pub owners: FlowOwners,
    pub meta: FlowMeta,
    /// Ends (source, destination) whose address the probe knows no namespace for.
    remote: [bool; 2],
    /// The destination is a Service's (DNAT): its port name is looked up too.
    translated: bool,
    /// The pods were looked up once the metadata indexes were complete.
    synced: bool,
    owner_lookups: u8,
    pod_lookups: u8,
}

impl Enrichment {
    /// True when the owners need no (further) lookup: each end found, or remote and not
    /// a pod address (a pod's socket the probe has not seen yet may still show up), or
    /// looked up [`LOOKUPS`] times.
    fn owners_settled(&self) -> bool {
        let done =
            |owner: &Option<EndOwner>, remote: bool, pod: bool| owner.is_some() || (remote && !pod);
        self.owner_lookups >= LOOKUPS
            || (done(&self.owners.source, self.remote[0], self.meta.source_is_pod)
                && done(
                    &self.owners.destination,
                    self.remote[1],
                    self.meta.destination_is_pod,
                ))
    }

    /// True when the pods need no (further) lookup: the indexes are complete and each end's
    /// pod is found or the end is not a pod address (and, behind a Service, its port name
    /// is found), or looked up [`LOOKUPS`] times.
    fn pods_settled(&self) -> bool {
        let meta = &self.meta;
        self.pod_lookups >= LOOKUPS
            || (meta.known
                && self.synced
                && (meta.source.is_some() || !meta.source_is_pod)
                && (meta.destination.is_some() || !meta.destination_is_pod)
                && (meta.service_port_name.is_some() || !self.translated))
    }

    /// True when nothing is left to look up; `probe` and `pods` say whether the probe and
    /// the watchers run.
    fn settled(&self, probe: bool, pods: bool) -> bool {
        (!probe || self.owners_settled()) && (!pods || self.pods_settled())
    }
}

fn hash_owner<H: Hasher>(owner: &Option<EndOwner>, state: &mut H) {
    if let Some(o) = owner {
        (o.pid, o.cgroup_id, o.name(), o.container_id()).hash(state);
    }
    owner.is_some().hash(state);
}

fn same_arc<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn arc_address<T: ?Sized>(a: &Option<Arc<T>>) -> usize {
    a.as_ref()
        .map_or(0, |a| Arc::as_ptr(a).cast::<u8>() as usize)
}

// Pods and service names are compared by identity: the index hands out one Arc per pod.
impl PartialEq for Enrichment {
    fn eq(&self, other: &Self) -> bool {
        self.owners == other.owners
            && self.remote == other.remote
            && self.translated == other.translated
            && self.synced == other.synced
            && self.owner_lookups == other.owner_lookups
            && self.pod_lookups == other.pod_lookups
            && self.meta.known == other.meta.known
            && self.meta.source_is_pod == other.meta.source_is_pod
            && self.meta.destination_is_pod == other.meta.destination_is_pod
            && same_arc(&self.meta.source, &other.meta.source)
            && same_arc(&self.meta.destination, &other.meta.destination)
            && same_arc(&self.meta.service_port_name, &other.meta.service_port_name)
            && self.meta.service_uid == other.meta.service_uid
            && self.meta.source_node_uid == other.meta.source_node_uid
            && self.meta.destination_node_uid == other.meta.destination_node_uid
    }
}

impl Eq for Enrichment {}

impl Hash for Enrichment {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_owner(&self.owners.source, state);
        hash_owner(&self.owners.destination, state);
        (self.remote, self.translated, self.synced).hash(state);
        (self.owner_lookups, self.pod_lookups).hash(state);
        self.meta.known.hash(state);
        (self.meta.source_is_pod, self.meta.destination_is_pod).hash(state);
        arc_address(&self.meta.source).hash(state);
        arc_address(&self.meta.destination).hash(state);
        arc_address(&self.meta.service_port_name).hash(state);
        self.meta.service_uid.hash(state);
    }
}

/// An interned [`Enrichment`], found in the set by value.
struct Interned(Arc<Enrichment>);

impl PartialEq for Interned {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl Eq for Interned {}

impl Hash for Interned {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl hashbrown::Equivalent<Interned> for Enrichment {
    fn equivalent(&self, key: &Interned) -> bool {
        *self == *key.0
    }
}

/// How the record builder spent its work, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuilderStats {
    /// Records built from the enrichment kept with their connection.
    pub cached: u64,
    /// Records that looked owners or pods up (a first export, or a retry).
    pub resolved: u64,
    /// Distinct enrichments held.
    pub interned: usize,
}

/// Turns due connections into records: the one path from the store to the exporting
/// process, used by the agent and the benchmarks alike. Runs outside the store's locks
/// ([`ConnectionStore::expire_into`]); owners and pods are looked up at a connection's
/// first export (and retried a bounded number of times while an end has none), then kept
/// with the connection.
pub struct RecordBuilder {
    networks: PodNetworks,
    attribution: Attribution,
    metadata: Arc<Metadata>,
    metrics: Option<Arc<Metrics>>,
    interned: hashbrown::HashSet<Interned, crate::store::FxBuild>,
    /// The enrichment of every record while neither the probe nor the watchers run.
    bare: Enrichment,
    /// Interned values beyond which unused ones are swept out.
    sweep_at: usize,
    stats: BuilderStats,
    /// The Kubernetes elements the templates carry.
    kubernetes: KubernetesElements,
}

impl RecordBuilder {
    /// A builder that enriches with `attribution` and `metadata` (either may be disabled).
    pub fn new(networks: PodNetworks, attribution: Attribution, metadata: Arc<Metadata>) -> Self {
        Self {
            networks,
            attribution,
            metadata,
            metrics: None,
            interned: Default::default(),
            bare: Enrichment::default(),
            sweep_at: 1024,
            stats: BuilderStats::default(),
            kubernetes: KubernetesElements::default(),
        }
    }

    /// Records carry the Kubernetes elements `kubernetes` asks for (the templates must be
    /// [`templates_with`] the same).
    pub fn with_kubernetes_elements(mut self, kubernetes: KubernetesElements) -> Self {
        self.kubernetes = kubernetes;
        self
    }

    /// Counts owners found and missing per record into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The attribution it enriches with.
    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    /// Work counts so far.
    pub fn stats(&self) -> BuilderStats {
        BuilderStats {
            interned: self.interned.len(),
            ..self.stats
        }
    }

    /// Looks up what `kept` (the enrichment kept with `due`, if any) still lacks and keeps
    /// the result with the connection in `store`.
    fn resolve(
        &mut self,
        store: &ConnectionStore,
        due: &Due,
        kept: Option<&Enrichment>,
    ) -> Arc<Enrichment> {
        self.stats.resolved += 1;
        let mut next = kept.cloned().unwrap_or_default();
        next.translated = due.connection.reported_destination(&due.key).1;
        let mut owner_found = false;
        if self.attribution.is_active() && !next.owners_settled() {
            let found = self.attribution.flow_lookup(&due.key, &due.connection);
            owner_found = (next.owners.source.is_none() && found.owners.source.is_some())
                || (next.owners.destination.is_none() && found.owners.destination.is_some());
            next.owners.source = next.owners.source.or(found.owners.source);
            next.owners.destination = next.owners.destination.or(found.owners.destination);
            next.remote = found.remote;
            next.owner_lookups += 1;
        }
        // A newly found owner can name a pod the address could not (a host-network pod,
        // by its container id): look again even if the pods looked settled.
        let pods_missing = next.meta.source.is_none() || next.meta.destination.is_none();
        if self.metadata.is_active() && (!next.pods_settled() || (owner_found && pods_missing)) {
            let found = self
                .metadata
                .lookup(&due.key, &due.connection, &next.owners);
            let meta = &mut next.meta;
            meta.source = meta.source.take().or(found.source);
            meta.destination = meta.destination.take().or(found.destination);
            meta.source_is_pod |= found.source_is_pod;
            meta.destination_is_pod |= found.destination_is_pod;
            meta.service_port_name = meta.service_port_name.take().or(found.service_port_name);
            // The uids follow the pods and service kept (a zero means not found yet).
            let or_found =
                |kept: [u8; 16], found: [u8; 16]| if kept == [0; 16] { found } else { kept };
            meta.service_uid = or_found(meta.service_uid, found.service_uid);
            meta.source_node_uid = or_found(meta.source_node_uid, found.source_node_uid);
            meta.destination_node_uid =
                or_found(meta.destination_node_uid, found.destination_node_uid);
            meta.known = found.known;
            // Until every index has its first list, nothing found proves nothing: neither
            // the lookup counts nor the result is final.
            if self.metadata.is_synced() {
                next.synced = true;
                next.pod_lookups += 1;
            }
        }
        let shared = self.intern(next);
        if !due.is_final() && kept.is_none_or(|kept| !std::ptr::eq(kept, &*shared)) {
            store.annotate(due, Annotation::new(Arc::clone(&shared) as _));
        }
        shared
    }

    fn intern(&mut self, value: Enrichment) -> Arc<Enrichment> {
        if let Some(found) = self.interned.get(&value) {
            return Arc::clone(&found.0);
        }
        if self.interned.len() >= self.sweep_at {
            // Values no connection holds any more (only the set does) go; the threshold
            // doubles over what stays, so sweeping costs O(1) per insertion.
            self.interned.retain(|v| Arc::strong_count(&v.0) > 1);
            self.sweep_at = (2 * self.interned.len()).max(1024);
        }
        let shared = Arc::new(value);
        self.interned.insert(Interned(Arc::clone(&shared)));
        shared
    }

    /// The expiry step, as the agent runs it: exports up to `limit` records to `process`,
    /// in chunks of [`EXPIRY_CHUNK`] (so the copies out of the store stay small however
    /// much is due): what is due, then, when `flush`, every connection not flushed yet as
    /// a forced end. `due` is a buffer reused from call to call. Returns (due records,
    /// forced ends).
    #[allow(clippy::too_many_arguments)]
    pub fn export_due(
        &mut self,
        store: &ConnectionStore,
        process: &ExportingProcess,
        batch: &mut BatchBuilder,
        due: &mut Vec<Due>,
        now_ms: u64,
        limit: usize,
        flush: bool,
    ) -> (usize, usize) {
        let (mut expired, mut forced) = (0, 0);
        while expired + forced < limit {
            let chunk = (limit - expired - forced).min(EXPIRY_CHUNK);
            due.clear();
            let mut taken = store.expire_into(now_ms, true, chunk, due);
            expired += taken;
            if flush && taken < chunk {
                let ended = store.force_end_into(now_ms, chunk - taken, due);
                forced += ended;
                taken += ended;
            }
            for due in due.iter() {
                self.push(store, due, batch);
            }
            process.export(batch.finish());
            if taken < chunk {
                break;
            }
        }
        (expired, forced)
    }

    /// Builds the record of `due` into `batch`. Allocates nothing once the connection's
    /// enrichment is settled (the common case: every export after the first).
    pub fn push(&mut self, store: &ConnectionStore, due: &Due, batch: &mut BatchBuilder) {
        self.with_record(store, due, |record| {
            batch.push_summarized(
                record.flow.template_id(),
                record,
                RecordSummary::of(&record.flow).denied(due.connection.origin.is_denied()),
            );
        });
    }

    /// Builds the record of `due` and hands it to `f` (what [`RecordBuilder::push`] does,
    /// for callers that look at the record rather than encode it).
    pub fn with_record<R>(
        &mut self,
        store: &ConnectionStore,
        due: &Due,
        f: impl FnOnce(&AgentRecord<'_>) -> R,
    ) -> R {
        let probe = self.attribution.is_active();
        let resolved;
        let enrichment = match due.annotation.get::<Enrichment>() {
            Some(kept) if kept.settled(probe, self.metadata.is_active()) => {
                self.stats.cached += 1;
                kept
            }
            // Nothing to look up, nothing to keep.
            None if !probe && !self.metadata.is_active() => {
                self.stats.cached += 1;
                &self.bare
            }
            kept => {
                resolved = self.resolve(store, due, kept);
                &*resolved
            }
        };
        if probe && let Some(metrics) = &self.metrics {
            metrics.observe_owners(&enrichment.owners);
        }
        let prefix = match due.connection.deny_prefix {
            0 => None,
            id => Some(store.prefix(id)),
        };
        let mut record = build(
            &due.expired(),
            prefix.as_deref().unwrap_or(""),
            &self.networks,
            enrichment.owners,
            &enrichment.meta,
        );
        record.kubernetes = kubernetes_values(self.kubernetes, &enrichment.meta);
        // Where the source was translated (kube-proxy masquerading an external client of a
        // NodePort or LoadBalancer service): the address and port it was given, so an
        // aggregator can join the two nodes' halves of the flow.
        if let Some(address) = store.snat_address(due.connection.snat_address) {
            record.flow.proxy_snat_ip = crate::net::from_mapped(address, due.key.ipv6);
            record.flow.proxy_snat_port = due.connection.snat_port;
        }
        f(&record)
    }
}

#[cfg(test)]
mod tests {
    use super::record::UID_ELEMENTS;
    use super::*;
    use flowex_ipfix::Registry;
    use flowex_ipfix::antrea::FlowType;

    #[test]
    fn templates_extend_antreas() {
        let templates = templates(&Registry::default()).unwrap();
        assert_eq!(templates[0].fields().len(), 53);
        assert_eq!(templates[1].id(), 257);
        assert_eq!(templates[0].position("flowEndMilliseconds"), Some(44));
        assert_eq!(templates[1].position("destinationContainerId"), Some(52));
    }

    #[test]
    fn kubernetes_elements_follow_flowexs_own_at_their_lengths() {
        let all = templates_with(
            &Registry::default(),
            KubernetesElements {
                pod_labels: true,
                uids: true,
            },
        )
        .unwrap();
        let fields = all[0].fields();
        assert_eq!(fields.len(), 53 + 2 + 5);
        let at = |name: &str| &fields[all[0].position(name).unwrap()];
        assert_eq!(all[0].position("sourcePodLabels"), Some(53));
        assert!(at("destinationPodLabels").is_variable());
        assert_eq!(all[1].position("destinationServiceUUID"), Some(59));
        for name in UID_ELEMENTS {
            assert_eq!(at(name).spec.length, 16, "{name}");
        }
        let labels_only = templates_with(
            &Registry::default(),
            KubernetesElements {
                pod_labels: true,
                uids: false,
            },
        )
        .unwrap();
        assert_eq!(labels_only[0].fields().len(), 55);
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
            FlowType::ToExternal
        );
        assert_eq!(
            networks.flow_type("1.1.1.1".parse().unwrap(), "10.244.1.1".parse().unwrap()),
            FlowType::FromExternal
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
                "metadata": {"name": "db", "namespace": "shop",
                             "uid": "0a0b0c0d-0e0f-4a1b-8c2d-3e4f50617283"},
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
        assert_eq!(
            flow_type(&networks, k.source_addr(), dst, &meta),
            FlowType::InterNode
        );
        // The service's uid as 16 bytes; the records carry it (and the labels) only when
        // asked.
        assert_eq!(
            meta.service_uid,
            [
                0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x4a, 0x1b, 0x8c, 0x2d, 0x3e, 0x4f, 0x50, 0x61,
                0x72, 0x83
            ]
        );
        let none = kubernetes_values(KubernetesElements::default(), &meta);
        assert!(none.labels.is_none() && none.uids.is_none());
        let all = kubernetes_values(
            KubernetesElements {
                pod_labels: true,
                uids: true,
            },
            &meta,
        );
        assert_eq!(all.uids.unwrap()[4], meta.service_uid);
        assert_eq!(
            all.labels.unwrap()[0],
            meta.source.as_ref().unwrap().labels_json()
        );

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
            FlowType::IntraNode
        );

        // To the outside; and from the host-network pod, found by its container.
        let (k, c) = key("10.244.1.5", "1.1.1.1", 443);
        let meta = metadata.lookup(&k, &c, &no_owners);
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            FlowType::ToExternal
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
            FlowType::ToExternal
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
        assert_eq!(record.flow.flow_type, FlowType::InterNode);

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
            FlowType::InterNode
        );
        let (k, c) = key("10.244.1.5", "192.0.2.1", 443);
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            FlowType::ToExternal
        );
        let (k, c) = key("192.0.2.1", "10.244.2.7", 443);
        let meta = metadata.lookup(&k, &c, &FlowOwners::default());
        assert_eq!(
            flow_type(&networks, k.source_addr(), k.destination_addr(), &meta),
            FlowType::FromExternal
        );
    }
}
