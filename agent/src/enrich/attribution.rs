//! Which process and container own each end of a flow, from the eBPF socket probe.
//!
//! The probe records, per socket 5-tuple, the process that last sent or received on it.
//! A flow's source end is the socket whose local end is the original tuple's source; its
//! destination end is the socket whose local end is the reply tuple's source (the real
//! server behind a Service address). Each end is looked up exactly; failing that, the
//! namespace owning its local address is looked up, then an unconnected socket (a UDP
//! server) and a socket bound to any address in it. These are `bpf(2)` calls: 1 for a
//! local socket found exactly (~0.4 µs here), 2 for a remote end (~0.7 µs), at most 4
//! (`cargo bench -p flowex-benches --bench probe -- owner_lookup`). The record builder
//! makes them at a connection's first export and keeps the owners with the connection
//! (looking again, a bounded number of times, for an end not found yet).
//!
//! Container ids come from the owner's cgroup path (`/proc/<pid>/cgroup`), read once per
//! cgroup id and cached: never a scan of /proc.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use flowex_ebpf::{ProbeError, ProbeStats, SocketKey, SocketOwner, SocketProbe};

use crate::config::AttributionConfig;
use crate::store::{ConnKey, Connection};

/// Container ids are 64 hex digits for containerd, CRI-O and Docker.
const CONTAINER_ID_LEN: usize = 64;
/// cgroup ids whose container id is remembered; the cache is cleared when it is full.
const CONTAINER_CACHE: usize = 16_384;

/// One end's owner, copied out of the map so that a record can borrow its strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOwner {
    pub pid: u32,
    pub cgroup_id: u64,
    name: [u8; 16],
    container: ContainerId,
}

impl EndOwner {
    /// An owner from its parts (the name is cut at 15 bytes, the container id at 64).
    pub fn new(pid: u32, cgroup_id: u64, name: &str, container_id: &str) -> Self {
        let mut bytes = [0u8; 16];
        let len = name.len().min(15);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            pid,
            cgroup_id,
            name: bytes,
            container: ContainerId::new(container_id),
        }
    }

    /// The process name.
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.name[..end]).unwrap_or("")
    }

    /// The container id, "" when the process is not in a container.
    pub fn container_id(&self) -> &str {
        self.container.as_str()
    }
}

/// Both ends of a flow; `None` where no owner is known (a remote host, an unknown socket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowOwners {
    pub source: Option<EndOwner>,
    pub destination: Option<EndOwner>,
}

/// The owners of a flow's ends, and which ends are remote (source, destination).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowLookup {
    pub owners: FlowOwners,
    pub remote: [bool; 2],
}

/// A container id without allocation: 64 ASCII hex digits, or empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContainerId {
    bytes: [u8; CONTAINER_ID_LEN],
    len: u8,
}

impl ContainerId {
    const NONE: Self = Self {
        bytes: [0; CONTAINER_ID_LEN],
        len: 0,
    };

    fn new(id: &str) -> Self {
        let mut bytes = [0; CONTAINER_ID_LEN];
        let len = id.len().min(CONTAINER_ID_LEN);
        bytes[..len].copy_from_slice(&id.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// The container id in a cgroup v2 path, for the layouts of containerd, CRI-O and Docker
/// with the systemd driver (`.../cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`) and the cgroupfs driver (`/kubepods/.../pod<uid>/<id>`,
/// `/docker/<id>`). The innermost component that names a container wins, so a nested
/// cgroup inside a container (`.../cri-containerd-<id>.scope/init.scope`) still resolves.
pub fn container_id_from_cgroup_path(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .unwrap_or(name);
        (id.len() == CONTAINER_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

/// The cgroup v2 path in the text of `/proc/<pid>/cgroup`.
fn unified_cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Joins flows with socket owners.
pub struct Attribution {
    probe: Option<SocketProbe>,
    proc_root: PathBuf,
    containers: Mutex<HashMap<u64, ContainerId>>,
}

impl Attribution {
    /// No probe: every flow is exported without owners.
    pub fn disabled() -> Self {
        Self {
            probe: None,
            proc_root: PathBuf::from("/proc"),
            containers: Mutex::new(HashMap::new()),
        }
    }

    /// Loads and attaches the probe as configured. A map that cannot be pinned costs only
    /// the owner columns of `flowex conntrack`: the probe then loads unpinned, with a warning.
    pub fn start(config: &AttributionConfig) -> Result<Self, ProbeError> {
        let pin = (!config.pin_path.is_empty()).then(|| PathBuf::from(&config.pin_path));
        let probe = match SocketProbe::load(config.max_sockets, pin.as_deref()) {
            Err(error @ ProbeError::Pin { .. }) => {
                tracing::warn!("{error}: `flowex conntrack` will not show socket owners");
                SocketProbe::load(config.max_sockets, None)?
            }
            other => other?,
        };
        Ok(Self {
            probe: Some(probe),
            proc_root: PathBuf::from(&config.proc_root),
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// True when the probe is loaded.
    pub fn is_active(&self) -> bool {
        self.probe.is_some()
    }

    /// How the probe is attached, when it is loaded.
    pub fn attachment(&self) -> Option<flowex_ebpf::Attachment> {
        self.probe.as_ref().map(SocketProbe::attachment)
    }

    /// The probe's counters, when it is loaded.
    pub fn probe_stats(&self) -> Option<ProbeStats> {
        self.probe.as_ref().map(SocketProbe::stats)
    }

    /// The owners of both ends of a connection (TCP, UDP and SCTP only). Allocates only
    /// the first time a cgroup is seen.
    pub fn flow_owners(&self, key: &ConnKey, connection: &Connection) -> FlowOwners {
        self.flow_lookup(key, connection).owners
    }

    /// [`Attribution::flow_owners`], also telling which ends are remote (their address
    /// belongs to no namespace the probe knows), so that a caller keeping the result does
    /// not look them up again.
    pub fn flow_lookup(&self, key: &ConnKey, connection: &Connection) -> FlowLookup {
        let Some(probe) = &self.probe else {
            return FlowLookup::default();
        };
        if !matches!(key.protocol, 6 | 17 | 132) {
            // No sockets to find: both ends are as good as remote.
            return FlowLookup {
                owners: FlowOwners::default(),
                remote: [true; 2],
            };
        }
        let owners = probe.owners();
        let source = SocketKey::from_octets(
            key.protocol,
            probe_form(key.source),
            key.source_port,
            probe_form(key.destination),
            key.destination_port,
        );
        // The server's socket sees the reply direction: its local end is the reply's source
        // (after DNAT), its remote end the client (assumed not SNATed; a SNATed client still
        // matches an unconnected or wildcard socket).
        let destination = SocketKey::from_octets(
            key.protocol,
            probe_form(connection.reply_source),
            connection.reply_source_port,
            probe_form(key.source),
            key.source_port,
        );
        let (source, source_local) = owners.find_end(&source);
        let (destination, destination_local) = owners.find_end(&destination);
        FlowLookup {
            owners: FlowOwners {
                source: source.map(|o| self.end_owner(&o)),
                destination: destination.map(|o| self.end_owner(&o)),
            },
            remote: [!source_local, !destination_local],
        }
    }

    fn end_owner(&self, owner: &SocketOwner) -> EndOwner {
        EndOwner {
            pid: owner.pid,
            cgroup_id: owner.cgroup_id,
            name: owner.comm,
            container: self.container(owner.cgroup_id, owner.pid),
        }
    }

    fn container(&self, cgroup_id: u64, pid: u32) -> ContainerId {
        let mut cache = self
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(id) = cache.get(&cgroup_id) {
            return *id;
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        // The process may be gone: then nothing is cached, and a later owner in the same
        // cgroup can still resolve it.
        let Ok(text) = std::fs::read_to_string(path) else {
            return ContainerId::NONE;
        };
        let id = unified_cgroup_path(&text)
            .and_then(container_id_from_cgroup_path)
            .map_or(ContainerId::NONE, ContainerId::new);
        if cache.len() >= CONTAINER_CACHE {
            cache.clear();
        }
        cache.insert(cgroup_id, id);
        id
    }
}

/// The store keeps IPv4 as `::ffff:a.b.c.d` like the probe; only the unspecified address
/// differs (the probe writes all zeros).
fn probe_form(octets: [u8; 16]) -> [u8; 16] {
    const MAPPED_ANY: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
    if octets == MAPPED_ANY {
        [0; 16]
    } else {
        octets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2c0d8e1b7a9c3e5d6f8a0b2c4e6d8f0a1b3c5d7e9f1a2b4c6d8e0f2a4b6c8d";

    #[test]
    fn container_ids_from_runtime_cgroup_layouts() {
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{ID}.scope"
                ),
                Some(ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice/crio-{ID}.scope"
                ),
                Some(ID),
            ),
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (format!("/kubepods/besteffort/pod0a1b/{ID}"), Some(ID)),
            (format!("/docker/{ID}"), Some(ID)),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope/init.scope"),
                Some(ID),
            ),
            (format!("/kubepods.slice/crio-conmon-{ID}.scope"), None),
            ("/user.slice/user-0.slice/session-3.scope".to_string(), None),
            ("/".to_string(), None),
            (format!("/docker/{}", &ID[1..]), None),
        ];
        for (path, expected) in &cases {
            assert_eq!(container_id_from_cgroup_path(path), *expected, "{path}");
        }
    }

    #[test]
    fn the_unified_line_is_found_among_v1_lines() {
        let text = "12:pids:/user.slice\n0::/kubepods/pod1/abc\n";
        assert_eq!(unified_cgroup_path(text), Some("/kubepods/pod1/abc"));
        assert_eq!(unified_cgroup_path("1:name=systemd:/\n"), None);
    }

    #[test]
    fn container_id_copies_round_trip() {
        assert_eq!(ContainerId::new(ID).as_str(), ID);
        assert_eq!(ContainerId::NONE.as_str(), "");
    }

    #[test]
    fn without_a_probe_flows_have_no_owners() {
        let attribution = Attribution::disabled();
        assert!(!attribution.is_active());
        let key = ConnKey {
            zone: 0,
            protocol: 6,
            ipv6: false,
            source_port: 1,
            destination_port: 2,
            source: [0; 16],
            destination: [0; 16],
        };
        let connection = Connection {
            reply_source: [0; 16],
            reply_source_port: 2,
            snat_address: 0,
            snat_port: 0,
            tcp_state: 3,
            origin: crate::store::Origin::Conntrack,
            phase: crate::store::Phase::Active,
            flushed: false,
            kernel_start: false,
            conntrack_id: 0,
            seen_generation: 0,
            deny_prefix: 0,
            counters: Default::default(),
            exported: Default::default(),
            start_ms: 0,
            last_change_ms: 0,
            last_export_ms: 0,
        };
        assert_eq!(
            attribution.flow_owners(&key, &connection),
            FlowOwners::default()
        );
    }
}
