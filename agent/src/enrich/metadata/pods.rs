//! The pod index: which pod held an IP address when a connection started, and which pod
//! runs a container. It is built straight from watch events and keeps a few fields of each
//! pod (name, namespace, uid, node, labels), not the Pod object.
//!
//! An IP belongs to at most one pod at a time. A pod's claim on an IP starts when the pod
//! is created, or when the previous claim on that IP ended if that is later, and ends when
//! the pod is deleted, reaches a terminal phase or drops the IP. Ended claims are kept for
//! [`ENDED_RETENTION_MS`]: a connection is attributed to the pod that had its address when
//! the connection started, never to a later pod that was given the same address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::store::FxHasher;

/// How long the index remembers a pod after it ended (and its claims on IPs).
pub const ENDED_RETENTION_MS: u64 = 60 * 60 * 1_000;
/// Ended claims remembered per IP (the oldest are forgotten first).
const ENDED_CLAIMS_PER_IP: usize = 4;

/// What the index keeps of a pod: name, namespace, uid (text and 16 bytes), node
/// (`spec.nodeName`, empty while unscheduled) and labels. The four names share one
/// allocation; the labels are kept as the JSON object Antrea exports them as
/// (`sourcePodLabels`), shared by every pod with the same labels (replicas of one
/// workload carry the same set): see [`PodIndex`]'s interning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    /// The name, namespace, uid and node.
    text: Box<str>,
    /// Where the name, namespace, uid and node end in `text`.
    ends: [u32; 4],
    uid_bytes: [u8; 16],
    labels: Arc<str>,
}

/// A Kubernetes uid (a UUID in its 36-character text form) as its 16 bytes; all zero for
/// text that is not one (as Antrea writes an unparsable uid).
pub fn uid_bytes(uid: &str) -> [u8; 16] {
    let text = uid.as_bytes();
    if text.len() != 36 || [8, 13, 18, 23].iter().any(|&i| text[i] != b'-') {
        return [0; 16];
    }
    let mut digits = text.iter().filter(|b| **b != b'-');
    let mut bytes = [0u8; 16];
    for byte in &mut bytes {
        let mut digit = || digits.next().and_then(|c| (*c as char).to_digit(16));
        match (digit(), digit()) {
            (Some(high), Some(low)) => *byte = (high * 16 + low) as u8,
            _ => return [0; 16],
        }
    }
    bytes
}

/// Labels as Antrea's exporters write them: a JSON object, keys sorted.
fn labels_json<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let sorted: std::collections::BTreeMap<&str, &str> = labels.into_iter().collect();
    serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".to_owned())
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
        Self {
            text: text.into_boxed_str(),
            ends,
            uid_bytes: uid_bytes(uid),
            labels: Arc::from(labels_json(labels)),
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

    /// The uid's 16 bytes (`sourcePodUUID`); zero when it is not a UUID.
    pub fn uid_bytes(&self) -> [u8; 16] {
        self.uid_bytes
    }

    /// `spec.nodeName`; empty while unscheduled.
    pub fn node(&self) -> &str {
        self.part(3)
    }

    /// The labels as a JSON object, keys sorted (`{}` for none), as Antrea exports them.
    pub fn labels_json(&self) -> &str {
        &self.labels
    }

    /// One label's value.
    pub fn label(&self, key: &str) -> Option<String> {
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&self.labels).ok()?;
        labels.get(key).cloned()
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
    /// Every distinct label set, shared by the pods that carry it.
    labels: std::collections::HashSet<Arc<str>>,
    /// Label sets held at which the unused ones are swept.
    labels_sweep_at: usize,
}

impl PodIndex {
    /// The shared copy of a label set. Sets no pod holds any more are swept once the
    /// number of sets doubles since the last sweep: O(1) per pod update.
    fn intern_labels(&mut self, labels: Arc<str>) -> Arc<str> {
        if let Some(found) = self.labels.get(&*labels) {
            return Arc::clone(found);
        }
        if self.labels.len() >= self.labels_sweep_at {
            self.labels.retain(|set| Arc::strong_count(set) > 1);
            self.labels_sweep_at = (2 * self.labels.len()).max(1_024);
        }
        self.labels.insert(Arc::clone(&labels));
        labels
    }

    /// Distinct label sets held (for tests and the memory figures).
    pub fn label_sets(&self) -> usize {
        self.labels.len()
    }

    /// Pods that currently exist.
    pub fn live_pods(&self) -> usize {
        self.live
    }

    /// A pod was listed or changed.
    pub fn apply(&mut self, view: PodView, now_ms: u64) {
        let PodView {
            meta: mut new_meta,
            created_ms,
            ips,
            container_ids,
        } = view;
        new_meta.labels = self.intern_labels(new_meta.labels);
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
    fn labels_are_antreas_json_and_one_copy_per_distinct_set() {
        let pod = |uid: &str, ip: &str, app: &str| PodView {
            meta: PodMeta::new(uid, "shop", uid, "node-a", [("tier", "web"), ("app", app)]),
            created_ms: 0,
            ips: vec![ip.parse().unwrap()],
            container_ids: Vec::new(),
        };
        let mut index = PodIndex::default();
        index.apply(pod("a", "10.244.0.1", "cart"), 0);
        index.apply(pod("b", "10.244.0.2", "cart"), 0);
        index.apply(pod("c", "10.244.0.3", "db"), 0);
        let at = |ip: &str| Arc::clone(index.pod_at(ip.parse().unwrap(), 1).unwrap());
        let (a, b, c) = (at("10.244.0.1"), at("10.244.0.2"), at("10.244.0.3"));
        // Keys sorted, as Go's encoding/json writes a map.
        assert_eq!(a.labels_json(), r#"{"app":"cart","tier":"web"}"#);
        assert_eq!(c.labels_json(), r#"{"app":"db","tier":"web"}"#);
        assert_eq!(a.label("app").as_deref(), Some("cart"));
        // Replicas share one copy.
        assert_eq!(index.label_sets(), 2);
        assert!(std::ptr::eq(a.labels_json(), b.labels_json()));
        assert_eq!(
            PodMeta::new("x", "ns", "u", "", std::iter::empty()).labels_json(),
            "{}"
        );
        // A set no pod holds any more goes at a later sweep.
        index.delete("c", 10);
        index.prune(u64::MAX);
        drop(c);
        for n in 0..2_000 {
            let meta = PodMeta::new("p", "ns", &format!("u{n}"), "", [("n", &*n.to_string())]);
            index.apply(
                PodView {
                    meta,
                    created_ms: 0,
                    ips: Vec::new(),
                    container_ids: Vec::new(),
                },
                20,
            );
        }
        // The sweep at 1,024 sets dropped "db"; cart's set and the 2,000 new ones stay.
        assert_eq!(index.label_sets(), 2_001);
    }

    #[test]
    fn uids_are_their_16_bytes_and_anything_else_is_zero() {
        assert_eq!(
            uid_bytes("6f1e0c2a-1b3c-4d5e-8f90-a1b2c3d4e5f6"),
            [
                0x6f, 0x1e, 0x0c, 0x2a, 0x1b, 0x3c, 0x4d, 0x5e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4,
                0xe5, 0xf6
            ]
        );
        assert_eq!(uid_bytes("uid-1"), [0; 16]);
        assert_eq!(uid_bytes("zz1e0c2a-1b3c-4d5e-8f90-a1b2c3d4e5f6"), [0; 16]);
        assert_eq!(uid_bytes("6f1e0c2a1b3c4d5e8f90a1b2c3d4e5f6----"), [0; 16]);
        let meta = PodMeta::new("a", "b", "6f1e0c2a-1b3c-4d5e-8f90-a1b2c3d4e5f6", "n", []);
        assert_eq!(meta.uid_bytes()[0], 0x6f);
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
}
