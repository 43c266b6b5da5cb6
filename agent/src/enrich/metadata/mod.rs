//! Kubernetes metadata: pods, services and nodes from the API server, kept current by
//! kube-rs watchers (list, then watch from the list's resource version, relisting after 410
//! Gone), and indexed for the record builder: pod by IP at a point in time, pod by container
//! id, service port by cluster IP, port and protocol, and the nodes' pod CIDRs. Records never
//! call the API.
//!
//! The indexes are the watchers' reflector: each event updates them directly, and no copy
//! of a Pod or Service object is kept (kube-rs's `reflector::Store` would keep the latest
//! object per key, but not what the index needs, ended pods' holds on their IPs).
//!
//! An IP belongs to at most one pod at a time. A pod's claim on an IP runs from the pod's
//! creation (or from the moment an earlier pod's claim on that IP ended, whichever is later)
//! until the pod is deleted, reaches a terminal phase or drops the IP. Ended claims are kept
//! for [`ENDED_RETENTION_MS`], so that a connection is attributed to the pod that held its
//! address when the connection started, and never to a later pod that reused the address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::config::{KubernetesConfig, PodScope};
use crate::enrich::attribution::FlowOwners;
use crate::store::{ConnKey, Connection, FxHasher};

/// How long the index remembers a pod after it ended (and its claims on IPs).
pub const ENDED_RETENTION_MS: u64 = 60 * 60 * 1_000;
/// Ended claims remembered per IP (the oldest are forgotten first).
const ENDED_CLAIMS_PER_IP: usize = 4;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the index keeps of a pod: name, namespace, uid, node (`spec.nodeName`, empty while
/// unscheduled) and labels, in one allocation (a record reads one place, and a pod costs
/// little memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    /// The name, namespace, uid and node, then the labels as `key=value` lines.
    text: Box<str>,
    /// Where the name, namespace, uid and node end in `text`.
    ends: [u32; 4],
}

impl PodMeta {
    /// From its parts.
    pub fn new<'a>(
        name: &str,
        namespace: &str,
        uid: &str,
        node: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut text = String::with_capacity(name.len() + namespace.len() + uid.len() + node.len());
        let mut ends = [0u32; 4];
        for (end, part) in ends.iter_mut().zip([name, namespace, uid, node]) {
            text.push_str(part);
            *end = text.len() as u32;
        }
        for (key, value) in labels {
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        Self {
            text: text.into_boxed_str(),
            ends,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    pub fn name(&self) -> &str {
        self.part(0)
    }

    pub fn namespace(&self) -> &str {
        self.part(1)
    }

    pub fn uid(&self) -> &str {
        self.part(2)
    }

    /// `spec.nodeName`; empty while unscheduled.
    pub fn node(&self) -> &str {
        self.part(3)
    }

    /// The labels, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text[self.ends[3] as usize..]
            .lines()
            .filter_map(|line| line.split_once('='))
    }

    /// One label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// The parts of a Pod object the index uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub meta: PodMeta,
    /// `metadata.creationTimestamp` in Unix milliseconds (0 when absent).
    pub created_ms: u64,
    /// `status.podIPs` (with `status.podIP`); empty for host-network pods, whose address is
    /// the node's, and for pods in a terminal phase, whose address is released.
    pub ips: Vec<IpAddr>,
    /// Container ids from the container statuses, without the runtime prefix.
    pub container_ids: Vec<String>,
}

/// Strips `containerd://`, `cri-o://`, `docker://` and the like.
fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

impl PodView {
    /// Extracts what the index needs; `None` for a pod without a uid or name.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let metadata = &pod.metadata;
        let uid = metadata.uid.as_deref().filter(|u| !u.is_empty())?;
        let name = metadata.name.as_deref().filter(|n| !n.is_empty())?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let terminal = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let mut ips = Vec::new();
        if !host_network && !terminal {
            let listed = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|p| p.ip.as_str());
            let single = status.and_then(|s| s.pod_ip.as_deref());
            for text in listed.chain(single) {
                if let Ok(ip) = text.parse::<IpAddr>()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
        }
        let container_ids = status
            .into_iter()
            .flat_map(|s| {
                [
                    s.container_statuses.as_ref(),
                    s.init_container_statuses.as_ref(),
                    s.ephemeral_container_statuses.as_ref(),
                ]
            })
            .flatten()
            .flatten()
            .filter_map(|c| c.container_id.as_deref())
            .map(|id| bare_container_id(id).to_owned())
            .filter(|id| !id.is_empty())
            .collect();
        Some(Self {
            meta: PodMeta::new(
                name,
                metadata.namespace.as_deref().unwrap_or_default(),
                uid,
                spec.and_then(|s| s.node_name.as_deref())
                    .unwrap_or_default(),
                metadata
                    .labels
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            created_ms: metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_millisecond().max(0) as u64),
            ips,
            container_ids,
        })
    }
}

/// One pod's hold on one IP, over `[from_ms, until_ms)`.
#[derive(Debug, Clone)]
struct Claim {
    uid: Arc<str>,
    pod: Arc<PodMeta>,
    from_ms: u64,
    until_ms: u64,
}

impl Claim {
    fn live(&self) -> bool {
        self.until_ms == u64::MAX
    }
}

#[derive(Debug)]
struct PodEntry {
    meta: Arc<PodMeta>,
    uid: Arc<str>,
    ips: Vec<IpAddr>,
    containers: Vec<String>,
    /// When the pod was deleted; `None` while it exists.
    ended_ms: Option<u64>,
    /// The relist that last saw it.
    generation: u64,
}

/// The store's FxHasher with a final mix: pod addresses differ only in their last octets,
/// which the plain Fx step leaves out of the low bits that pick a bucket.
#[derive(Debug, Default, Clone, Copy)]
struct MixBuild;

#[derive(Debug, Default)]
struct MixHasher(FxHasher);

impl std::hash::Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    fn finish(&self) -> u64 {
        // The finaliser of MurmurHash3 (fmix64).
        let mut h = self.0.finish();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl std::hash::BuildHasher for MixBuild {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher::default()
    }
}

/// The claims on one IP. Almost every IP has exactly one, so the first is stored inline:
/// a lookup reads no second allocation.
#[derive(Debug, Default)]
struct Holds {
    first: Option<Claim>,
    /// Empty while `first` is `None`.
    more: Vec<Claim>,
}

impl Holds {
    fn iter(&self) -> impl Iterator<Item = &Claim> {
        self.first.iter().chain(self.more.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Claim> {
        self.first.iter_mut().chain(self.more.iter_mut())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push(&mut self, claim: Claim) {
        if self.first.is_none() {
            self.first = Some(claim);
        } else {
            self.more.push(claim);
        }
    }

    /// Rewrites the claims as a list (off the lookup path: changes only).
    fn edit(&mut self, f: impl FnOnce(&mut Vec<Claim>)) {
        let mut all: Vec<Claim> = self.first.take().into_iter().collect();
        all.append(&mut self.more);
        f(&mut all);
        let mut rest = all.into_iter();
        self.first = rest.next();
        self.more = rest.collect();
    }
}

/// Keeps the newest [`ENDED_CLAIMS_PER_IP`] ended claims.
fn trim_ended(claims: &mut Holds) {
    let ended = claims.iter().filter(|c| !c.live()).count();
    if ended > ENDED_CLAIMS_PER_IP {
        claims.edit(|all| {
            all.sort_by_key(|c| c.from_ms);
            let mut surplus = ended - ENDED_CLAIMS_PER_IP;
            all.retain(|c| {
                if surplus > 0 && !c.live() {
                    surplus -= 1;
                    false
                } else {
                    true
                }
            });
        });
    }
}

/// Pods by IP (valid in time), by container id, and by uid.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<Arc<str>, PodEntry>,
    ips: HashMap<IpAddr, Holds, MixBuild>,
    containers: HashMap<String, Arc<str>, MixBuild>,
    generation: u64,
    /// Pods that currently exist.
    live: usize,
}

impl PodIndex {
    /// Pods that currently exist.
    pub fn live_pods(&self) -> usize {
        self.live
    }

    /// A pod was listed or changed.
    pub fn apply(&mut self, view: PodView, now_ms: u64) {
        let PodView {
            meta: new_meta,
            created_ms,
            ips,
            container_ids,
        } = view;
        let generation = self.generation;
        let (uid, meta, old_ips, old_containers) = match self.pods.get_mut(new_meta.uid()) {
            Some(entry) => {
                if *entry.meta != new_meta {
                    entry.meta = Arc::new(new_meta);
                }
                if entry.ended_ms.take().is_some() {
                    self.live += 1;
                }
                entry.generation = generation;
                (
                    Arc::clone(&entry.uid),
                    Arc::clone(&entry.meta),
                    std::mem::take(&mut entry.ips),
                    std::mem::take(&mut entry.containers),
                )
            }
            None => {
                let uid: Arc<str> = Arc::from(new_meta.uid());
                let meta = Arc::new(new_meta);
                self.live += 1;
                self.pods.insert(
                    Arc::clone(&uid),
                    PodEntry {
                        meta: Arc::clone(&meta),
                        uid: Arc::clone(&uid),
                        ips: Vec::new(),
                        containers: Vec::new(),
                        ended_ms: None,
                        generation,
                    },
                );
                (uid, meta, Vec::new(), Vec::new())
            }
        };
        for ip in &old_ips {
            if !ips.contains(ip) {
                self.end_claim(*ip, &uid, now_ms);
            }
        }
        for ip in &ips {
            self.claim(*ip, &uid, &meta, created_ms, now_ms);
        }
        for id in &old_containers {
            if !container_ids.contains(id) {
                self.containers.remove(id);
            }
        }
        for id in &container_ids {
            if !old_containers.contains(id) {
                self.containers.insert(id.clone(), Arc::clone(&uid));
            }
        }
        if let Some(entry) = self.pods.get_mut(&uid) {
            entry.ips = ips;
            entry.containers = container_ids;
        }
    }

    /// A pod was deleted.
    pub fn delete(&mut self, uid: &str, now_ms: u64) {
        let Some(entry) = self.pods.get_mut(uid) else {
            return;
        };
        if entry.ended_ms.is_some() {
            return;
        }
        entry.ended_ms = Some(now_ms);
        self.live -= 1;
        let uid = Arc::clone(&entry.uid);
        let ips = entry.ips.clone();
        for ip in ips {
            self.end_claim(ip, &uid, now_ms);
        }
    }

    /// A relist starts: pods it does not list again are deleted when it ends.
    pub fn begin_relist(&mut self) {
        self.generation += 1;
    }

    /// The relist ended: pods it did not list are gone; old ended pods are forgotten.
    pub fn end_relist(&mut self, now_ms: u64) {
        let generation = self.generation;
        let missing: Vec<Arc<str>> = self
            .pods
            .values()
            .filter(|p| p.ended_ms.is_none() && p.generation != generation)
            .map(|p| Arc::clone(&p.uid))
            .collect();
        for uid in missing {
            self.delete(&uid, now_ms);
        }
        self.prune(now_ms);
    }

    /// Forgets pods that ended more than [`ENDED_RETENTION_MS`] ago.
    pub fn prune(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(ENDED_RETENTION_MS);
        let old: Vec<Arc<str>> = self
            .pods
            .values()
            .filter(|p| p.ended_ms.is_some_and(|t| t < horizon))
            .map(|p| Arc::clone(&p.uid))
            .collect();
        for uid in old {
            if let Some(entry) = self.pods.remove(&uid) {
                for id in &entry.containers {
                    if self.containers.get(id).is_some_and(|owner| *owner == uid) {
                        self.containers.remove(id);
                    }
                }
            }
        }
        self.ips.retain(|_, claims| {
            if claims.iter().any(|c| c.until_ms < horizon) {
                claims.edit(|all| all.retain(|c| c.until_ms >= horizon));
            }
            !claims.is_empty()
        });
    }

    fn claim(
        &mut self,
        ip: IpAddr,
        uid: &Arc<str>,
        meta: &Arc<PodMeta>,
        created_ms: u64,
        now: u64,
    ) {
        let claims = self.ips.entry(ip).or_default();
        if let Some(own) = claims.iter_mut().find(|c| c.live() && c.uid == *uid) {
            own.pod = Arc::clone(meta);
            return;
        }
        // Another pod still holds the address: its hold ends now, ours starts now.
        let mut from = created_ms;
        for other in claims.iter_mut().filter(|c| c.live()) {
            other.until_ms = now;
            from = from.max(now);
        }
        // Claims never overlap: ours starts after every earlier one ended.
        if let Some(latest_end) = claims.iter().map(|c| c.until_ms).max() {
            from = from.max(latest_end);
        }
        claims.push(Claim {
            uid: Arc::clone(uid),
            pod: Arc::clone(meta),
            from_ms: from,
            until_ms: u64::MAX,
        });
        trim_ended(claims);
    }

    fn end_claim(&mut self, ip: IpAddr, uid: &Arc<str>, now: u64) {
        if let Some(claims) = self.ips.get_mut(&ip) {
            for claim in claims.iter_mut().filter(|c| c.live() && c.uid == *uid) {
                claim.until_ms = now.max(claim.from_ms);
            }
            trim_ended(claims);
        }
    }

    /// The pod that held `ip` at `at_ms`.
    pub fn pod_at(&self, ip: IpAddr, at_ms: u64) -> Option<&Arc<PodMeta>> {
        self.ips
            .get(&ip)?
            .iter()
            .find(|c| c.from_ms <= at_ms && at_ms < c.until_ms)
            .map(|c| &c.pod)
    }

    /// The pod running the container (id as in the pod status, without runtime prefix).
    pub fn pod_of_container(&self, id: &str) -> Option<&Arc<PodMeta>> {
        let uid = self.containers.get(id)?;
        self.pods.get(uid).map(|p| &p.meta)
    }
}

/// The parts of a Service object the index uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// Port, IP protocol number, port name.
    pub ports: Vec<(u16, u8, String)>,
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
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    u16::try_from(p.port).ok()?,
                    protocol_number(p.protocol.as_deref())?,
                    p.name.clone().unwrap_or_default(),
                ))
            })
            .collect();
        Some(Self {
            name: format!("{namespace}/{name}"),
            cluster_ips,
            ports,
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

type ServiceKey = (IpAddr, u16, u8);

/// The names a relist in progress has listed; what it did not list is gone when it ends.
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

/// Service ports by cluster IP, port and protocol.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    ports: HashMap<ServiceKey, Arc<str>>,
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
        for ip in &view.cluster_ips {
            for (port, protocol, name) in &view.ports {
                let key = (*ip, *port, *protocol);
                self.ports.insert(key, view.port_name(name));
                keys.push(key);
            }
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
        self.ports.get(&(ip, port, protocol))
    }
}

/// The pod CIDRs of the cluster's nodes (`spec.podCIDRs`): an address inside one is a pod's,
/// even when the pod itself is not watched (node scope). Looked up by prefix length: one
/// hash probe per length in use (usually one or two), not one test per node.
#[derive(Debug, Default)]
pub struct NodeNetworks {
    by_node: HashMap<String, Vec<(IpAddr, u8)>>,
    /// Per prefix length (IPv4 lengths + 96, on IPv4-mapped addresses): the masked networks
    /// and how many nodes have each.
    by_length: std::collections::BTreeMap<u8, HashMap<u128, u32, MixBuild>>,
    relist: Relist,
}

fn mapped(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn masked(ip: IpAddr, length: u8) -> u128 {
    mapped(ip) & u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0)
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
    pub fn apply(&mut self, node: &str, cidrs: Vec<(IpAddr, u8)>) {
        self.delete(node);
        for (ip, length) in &cidrs {
            let length = if ip.is_ipv4() { length + 96 } else { *length };
            *self
                .by_length
                .entry(length)
                .or_default()
                .entry(masked(*ip, length))
                .or_default() += 1;
        }
        self.relist.saw(node);
        if !cidrs.is_empty() {
            self.by_node.insert(node.to_owned(), cidrs);
        }
    }

    /// A node was deleted.
    pub fn delete(&mut self, node: &str) {
        let Some(cidrs) = self.by_node.remove(node) else {
            return;
        };
        for (ip, length) in cidrs {
            let length = if ip.is_ipv4() { length + 96 } else { length };
            if let Some(networks) = self.by_length.get_mut(&length) {
                let key = masked(ip, length);
                if let Some(count) = networks.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        networks.remove(&key);
                    }
                }
                if networks.is_empty() {
                    self.by_length.remove(&length);
                }
            }
        }
    }

    /// A relist starts.
    pub fn begin_relist(&mut self) {
        self.relist.begin();
    }

    /// The relist ended: nodes it did not list are deleted.
    pub fn end_relist(&mut self) {
        for node in self.relist.end(&self.by_node) {
            self.delete(&node);
        }
    }

    /// True when `ip` is in a node's pod CIDR.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.by_length
            .iter()
            .any(|(length, networks)| networks.contains_key(&masked(ip, *length)))
    }
}

/// `spec.podCIDRs` (with `spec.podCIDR`) of a Node object; unparsable entries are skipped.
fn node_pod_cidrs(node: &Node) -> Vec<(IpAddr, u8)> {
    let spec = node.spec.as_ref();
    let listed = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str);
    let mut cidrs = Vec::new();
    for text in listed.chain(spec.and_then(|s| s.pod_cidr.as_deref())) {
        if let Ok(cidr) = crate::config::parse_cidr(text)
            && !cidrs.contains(&cidr)
        {
            cidrs.push(cidr);
        }
    }
    cidrs
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
}

/// Kubernetes metrics.
struct KubeMetrics {
    available: IntGauge,
    synced: IntGaugeVec,
    pods: IntGauge,
    services: IntGauge,
    nodes: IntGauge,
    relists: IntCounterVec,
    errors: IntCounterVec,
    /// Per end (source, destination), per result (ip, container, none).
    lookups: [[IntCounter; 3]; 2],
}

impl KubeMetrics {
    fn new(registry: &Registry) -> Self {
        fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            let _ = r.register(Box::new(m.clone()));
            m
        }
        let per_resource = |name: &str, help: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &["resource"]).expect("valid metric"),
            )
        };
        let lookups = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "flowex_records_pod_lookups_total",
                    "Record ends by how their pod was found: ip, container, none.",
                ),
                &["end", "result"],
            )
            .expect("valid metric"),
        );
        let per_end = |end: &str| {
            ["ip", "container", "none"].map(|result| lookups.with_label_values(&[end, result]))
        };
        Self {
            lookups: [per_end("source"), per_end("destination")],
            available: register(
                registry,
                IntGauge::new(
                    "flowex_kubernetes_api_configured",
                    "1 when an API server is configured (in-cluster or kubeconfig); 0: records carry no pod metadata.",
                )
                .expect("valid metric"),
            ),
            synced: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowex_kubernetes_synced",
                        "1 once the resource's list has been loaded and its watch runs.",
                    ),
                    &["resource"],
                )
                .expect("valid metric"),
            ),
            pods: register(
                registry,
                IntGauge::new("flowex_kubernetes_pods", "Pods in the metadata index.")
                    .expect("valid metric"),
            ),
            services: register(
                registry,
                IntGauge::new(
                    "flowex_kubernetes_services",
                    "Services in the metadata index.",
                )
                .expect("valid metric"),
            ),
            nodes: register(
                registry,
                IntGauge::new(
                    "flowex_kubernetes_nodes_with_pod_cidrs",
                    "Nodes whose spec.podCIDRs tell pod addresses from external ones.",
                )
                .expect("valid metric"),
            ),
            relists: per_resource(
                "flowex_kubernetes_lists_total",
                "Full lists of the resource (the first, and relists after a watch expired).",
            ),
            errors: per_resource(
                "flowex_kubernetes_watch_errors_total",
                "Failed lists and watches (retried with backoff).",
            ),
        }
    }
}

/// The metadata cache shared by the watchers and the record builder.
pub struct Metadata {
    pods: RwLock<PodIndex>,
    services: RwLock<ServiceIndex>,
    nodes: RwLock<NodeNetworks>,
    active: AtomicBool,
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
            metrics: registry.map(KubeMetrics::new),
        })
    }

    /// True when watchers feed the cache.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Marks the cache as fed: records get looked up from now on. [`start_watchers`] does
    /// it; benchmarks that feed events by hand call it themselves.
    pub fn mark_active(&self) {
        self.active.store(true, Ordering::Release);
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
        let find =
            |end: usize, ip: IpAddr, owner: Option<&crate::enrich::attribution::EndOwner>| {
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
        let (source_is_pod, destination_is_pod) = if source.is_some() && destination_pod.is_some() {
            (true, true)
        } else {
            let nodes = self.nodes();
            (
                source.is_some() || nodes.contains(key.source_addr()),
                destination_pod.is_some() || nodes.contains(destination),
            )
        };
        let service_port_name = if translated {
            self.services()
                .port_name(key.destination_addr(), key.destination_port, key.protocol)
                .cloned()
        } else {
            None
        };
        FlowMeta {
            known: true,
            source,
            destination: destination_pod,
            source_is_pod,
            destination_is_pod,
            service_port_name,
        }
    }

    fn refresh_gauges(&self) {
        if let Some(m) = &self.metrics {
            m.pods.set(self.pods().live_pods() as i64);
            m.services.set(self.services().len() as i64);
            m.nodes.set(self.nodes().len() as i64);
        }
    }

    /// Applies one pod watch event.
    pub fn on_pod_event(&self, event: kube::runtime::watcher::Event<Pod>, now_ms: u64) {
        use kube::runtime::watcher::Event;
        {
            let mut pods = self.pods_mut();
            match event {
                Event::Init => {
                    pods.begin_relist();
                    self.count_list("pods");
                }
                Event::InitApply(pod) | Event::Apply(pod) => {
                    if let Some(view) = PodView::from_pod(&pod) {
                        pods.apply(view, now_ms);
                    }
                }
                Event::Delete(pod) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        pods.delete(uid, now_ms);
                    }
                }
                Event::InitDone => {
                    pods.end_relist(now_ms);
                    self.set_synced("pods", true);
                }
            }
        }
        self.refresh_gauges();
    }

    /// Applies one service watch event.
    pub fn on_service_event(&self, event: kube::runtime::watcher::Event<Service>) {
        use kube::runtime::watcher::Event;
        {
            let mut services = self.services_mut();
            match event {
                Event::Init => {
                    services.begin_relist();
                    self.count_list("services");
                }
                Event::InitApply(service) | Event::Apply(service) => {
                    if let Some(view) = ServiceView::from_service(&service) {
                        services.apply(&view);
                    }
                }
                Event::Delete(service) => {
                    if let Some(view) = ServiceView::from_service(&service) {
                        services.delete(&view.name);
                    }
                }
                Event::InitDone => {
                    services.end_relist();
                    self.set_synced("services", true);
                }
            }
        }
        self.refresh_gauges();
    }

    /// Applies one node watch event (pod CIDRs only).
    pub fn on_node_event(&self, event: kube::runtime::watcher::Event<Node>) {
        use kube::runtime::watcher::Event;
        {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Init => {
                    nodes.begin_relist();
                    self.count_list("nodes");
                }
                Event::InitApply(node) | Event::Apply(node) => {
                    if let Some(name) = node.metadata.name.as_deref() {
                        nodes.apply(name, node_pod_cidrs(&node));
                    }
                }
                Event::Delete(node) => {
                    if let Some(name) = node.metadata.name.as_deref() {
                        nodes.delete(name);
                    }
                }
                Event::InitDone => {
                    nodes.end_relist();
                    self.set_synced("nodes", true);
                }
            }
        }
        self.refresh_gauges();
    }

    fn count_list(&self, resource: &str) {
        if let Some(m) = &self.metrics {
            m.relists.with_label_values(&[resource]).inc();
        }
    }

    fn set_synced(&self, resource: &str, synced: bool) {
        if let Some(m) = &self.metrics {
            m.synced
                .with_label_values(&[resource])
                .set(i64::from(synced));
        }
    }

    fn count_error(&self, resource: &str) {
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&[resource]).inc();
        }
    }
}

/// The client for `config`: the kubeconfig file it names, else the usual inference
/// ($KUBECONFIG, ~/.kube/config, then the in-cluster service account). `Ok(None)` when
/// none is found; an error when a named kubeconfig cannot be used. The client comes with
/// the API server's URL.
pub async fn client(config: &KubernetesConfig) -> anyhow::Result<Option<(kube::Client, String)>> {
    use anyhow::Context;
    let client_config = if config.kubeconfig.is_empty() {
        match kube::Config::infer().await {
            Ok(c) => c,
            Err(_) => return Ok(None),
        }
    } else {
        let path = &config.kubeconfig;
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("kubernetes.kubeconfig {path}"))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .with_context(|| format!("kubernetes.kubeconfig {path}"))?
    };
    let url = client_config.cluster_url.to_string();
    let client = kube::Client::try_from(client_config).context("building the Kubernetes client")?;
    Ok(Some((client, url)))
}

/// Starts the pod, service and node watchers on the current runtime, feeding `metadata`.
/// `node` selects this node's pods unless the scope is the cluster.
pub fn start_watchers(
    metadata: &Arc<Metadata>,
    client: kube::Client,
    scope: PodScope,
    node: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    use kube::api::Api;
    use kube::runtime::{WatchStreamExt, watcher};

    metadata.mark_active();
    if let Some(m) = &metadata.metrics {
        m.available.set(1);
        m.synced.with_label_values(&["pods"]).set(0);
        m.synced.with_label_values(&["services"]).set(0);
        m.synced.with_label_values(&["nodes"]).set(0);
    }
    let pod_config = match scope {
        PodScope::Node => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        PodScope::Cluster => watcher::Config::default(),
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);

    let pod_events = watcher(pods, pod_config).default_backoff();
    let service_events = watcher(services, watcher::Config::default()).default_backoff();
    let node_events = watcher(nodes, watcher::Config::default()).default_backoff();
    vec![
        tokio::spawn(follow(
            pod_events,
            "pods",
            Arc::clone(metadata),
            |m, event| m.on_pod_event(event, now_ms()),
        )),
        tokio::spawn(follow(
            service_events,
            "services",
            Arc::clone(metadata),
            |m, event| m.on_service_event(event),
        )),
        tokio::spawn(follow(
            node_events,
            "nodes",
            Arc::clone(metadata),
            |m, event| m.on_node_event(event),
        )),
    ]
}

/// Applies a watcher's events until it ends; failures are counted, and logged once until
/// the watch recovers (the watcher retries with backoff by itself).
async fn follow<K>(
    events: impl futures_util::Stream<
        Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
    >,
    resource: &'static str,
    metadata: Arc<Metadata>,
    apply: impl Fn(&Metadata, kube::runtime::watcher::Event<K>),
) {
    use futures_util::StreamExt;
    let mut events = std::pin::pin!(events);
    let mut failing = false;
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => {
                if failing {
                    tracing::info!("{resource} watch recovered");
                    failing = false;
                }
                apply(&metadata, event);
            }
            Err(error) => {
                metadata.count_error(resource);
                if !failing {
                    tracing::warn!("{resource} watch failed (retrying with backoff): {error}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(uid: &str, name: &str, ip: &str, created_ms: u64) -> PodView {
        PodView {
            meta: PodMeta::new(name, "default", uid, "node-a", [("app", name)]),
            created_ms,
            ips: vec![ip.parse().unwrap()],
            container_ids: vec![format!("{uid}-c")],
        }
    }

    fn name_at(index: &PodIndex, ip: &str, at: u64) -> Option<String> {
        index
            .pod_at(ip.parse().unwrap(), at)
            .map(|p| p.name().to_owned())
    }

    #[test]
    fn a_reused_ip_is_attributed_by_connection_start() {
        let mut index = PodIndex::default();
        index.apply(view("u1", "old", "10.244.0.5", 1_000), 1_500);
        index.delete("u1", 5_000);
        index.apply(view("u2", "new", "10.244.0.5", 6_000), 6_500);
        assert_eq!(name_at(&index, "10.244.0.5", 999), None);
        assert_eq!(name_at(&index, "10.244.0.5", 1_000).as_deref(), Some("old"));
        assert_eq!(name_at(&index, "10.244.0.5", 4_999).as_deref(), Some("old"));
        // Between the old pod's end and the new pod's creation nobody held it.
        assert_eq!(name_at(&index, "10.244.0.5", 5_500), None);
        assert_eq!(name_at(&index, "10.244.0.5", 6_000).as_deref(), Some("new"));
        assert_eq!(index.live_pods(), 1);
    }

    #[test]
    fn a_new_pod_seen_before_the_old_ones_deletion_takes_over_from_then() {
        let mut index = PodIndex::default();
        index.apply(view("u1", "old", "10.244.0.5", 1_000), 1_000);
        // The new pod was created at 3000 but shows the address only at 7000, while the
        // old pod's deletion is not yet seen.
        index.apply(view("u2", "new", "10.244.0.5", 3_000), 7_000);
        assert_eq!(name_at(&index, "10.244.0.5", 5_000).as_deref(), Some("old"));
        assert_eq!(name_at(&index, "10.244.0.5", 7_000).as_deref(), Some("new"));
        // The late deletion does not shorten the new pod's hold.
        index.delete("u1", 8_000);
        assert_eq!(name_at(&index, "10.244.0.5", 9_000).as_deref(), Some("new"));
    }

    #[test]
    fn a_terminal_phase_or_dropped_ip_ends_the_claim() {
        let mut index = PodIndex::default();
        index.apply(view("u1", "job", "10.244.0.9", 1_000), 1_000);
        let mut done = view("u1", "job", "10.244.0.9", 1_000);
        done.ips.clear();
        index.apply(done, 4_000);
        assert_eq!(name_at(&index, "10.244.0.9", 3_999).as_deref(), Some("job"));
        assert_eq!(name_at(&index, "10.244.0.9", 4_000), None);
        assert_eq!(index.live_pods(), 1);
    }

    #[test]
    fn a_relist_deletes_what_it_no_longer_lists_and_pruning_forgets_old_pods() {
        let mut index = PodIndex::default();
        index.begin_relist();
        index.apply(view("u1", "a", "10.244.0.1", 1_000), 1_000);
        index.apply(view("u2", "b", "10.244.0.2", 1_000), 1_000);
        index.end_relist(1_000);
        index.begin_relist();
        index.apply(view("u1", "a", "10.244.0.1", 1_000), 2_000);
        index.end_relist(2_000);
        assert_eq!(index.live_pods(), 1);
        assert_eq!(name_at(&index, "10.244.0.2", 1_500).as_deref(), Some("b"));
        assert_eq!(name_at(&index, "10.244.0.2", 2_000), None);
        assert_eq!(index.pod_of_container("u2-c").map(|p| p.name()), Some("b"));
        index.prune(2_001 + ENDED_RETENTION_MS);
        assert_eq!(name_at(&index, "10.244.0.2", 1_500), None);
        assert!(index.pod_of_container("u2-c").is_none());
        assert_eq!(index.pod_of_container("u1-c").map(|p| p.name()), Some("a"));
    }

    #[test]
    fn ended_claims_per_ip_are_bounded() {
        let mut index = PodIndex::default();
        for i in 0..10u64 {
            let uid = format!("u{i}");
            index.apply(view(&uid, &uid, "10.244.0.7", i * 100), i * 100);
            index.delete(&uid, i * 100 + 50);
        }
        let claims = &index.ips[&"10.244.0.7".parse::<IpAddr>().unwrap()];
        assert_eq!(claims.len(), ENDED_CLAIMS_PER_IP);
        assert_eq!(name_at(&index, "10.244.0.7", 910).as_deref(), Some("u9"));
        assert_eq!(name_at(&index, "10.244.0.7", 10), None);
    }

    fn pod_event(json: serde_json::Value) -> kube::runtime::watcher::Event<Pod> {
        kube::runtime::watcher::Event::Apply(serde_json::from_value(json).unwrap())
    }

    fn pod_json(name: &str, node: &str, ip: &str, extra: serde_json::Value) -> serde_json::Value {
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

    fn key(source: &str, destination: &str, destination_port: u16) -> (ConnKey, Connection) {
        let octets = |text: &str| match text.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
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
            tcp_state: 3,
            flags: 0,
            mark: 0,
            status: 0,
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

    #[test]
    fn records_get_pods_services_and_flow_types() {
        use crate::enrich::attribution::EndOwner;
        use crate::records::{PodNetworks, flow_type};
        let registry = Registry::new();
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
        let record = crate::records::build(&expired, "", &networks, no_owners, &meta);
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
    fn node_pod_cidrs_tell_pods_from_external_addresses() {
        let mut nodes = NodeNetworks::default();
        let cidr = |t: &str| crate::config::parse_cidr(t).unwrap();
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
    fn in_node_scope_node_cidrs_make_a_remote_pod_inter_node() {
        use crate::records::{PodNetworks, flow_type};
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

    #[test]
    fn service_ports_by_cluster_ip() {
        let mut index = ServiceIndex::default();
        let web = ServiceView {
            name: "shop/web".into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap(), "fd00:96::a".parse().unwrap()],
            ports: vec![(80, 6, "http".into()), (53, 17, String::new())],
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
