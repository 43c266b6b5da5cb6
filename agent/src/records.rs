//! Flow records: Antrea's information elements (so the Flow Aggregator ingests them), plus
//! flowStartMilliseconds and flowEndMilliseconds, and flowex's owner elements (process id,
//! name, cgroup id and container id of each end), built from the store without allocating.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use flowex_ipfix::antrea::{
    self, Counters as AntreaCounters, FlowRecord, FlowType, PolicyRule, PolicyType, RuleAction,
};
use flowex_ipfix::encoder::variable_len;
use flowex_ipfix::{FieldWriter, Record, Registry, Template, TemplateError};

use crate::enrich::attribution::{Attribution, EndOwner, FlowOwners};
use crate::enrich::metadata::{FlowMeta, Metadata, PodMeta};
use crate::telemetry::Metrics;

use crate::export::filter::RecordSummary;
use crate::export::{BatchBuilder, ExportingProcess};
use crate::net::{Cidr, CidrSet};
use crate::sources::conntrack::tcp_state_name;
use crate::sources::deny::parse_prefix;
use crate::store::{Annotation, ConnectionStore, Due, Expired, Origin};

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
const UID_ELEMENTS: [&str; 5] = [
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
