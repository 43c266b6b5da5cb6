//! flowex's eBPF socket probe and its loader.
//!
//! The probe (`bpf/socket_probe.bpf.c`) hooks `sock:sock_send_length` and
//! `sock:sock_recv_length`, which run in the context of the process that sends or receives.
//! The first time a process uses a TCP, UDP or SCTP socket, the probe writes the socket's
//! 5-tuple and the process (thread group id, cgroup id, name) into an LRU hash map.
//! `sock:inet_sock_set_state` catches TCP connects that never carry data: the owner is
//! taken at SYN_SENT and recorded when the tuple is complete. The agent
//! looks owners up by tuple when it exports a flow: nothing is sent per packet, and the bytes
//! are still counted by conntrack.
//!
//! [`SocketProbe::load`] loads and attaches the probe; dropping it detaches. A map pinned by a
//! running agent can be opened read-only with [`OwnerMap::open_pinned`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, Pod};

/// The probe object, built by build.rs (or copied from the committed fallback).
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket_probe.bpf.o"));

const OWNERS_MAP: &str = "SOCKET_OWNERS";
const NETNS_MAP: &str = "ADDRESS_NETNS";
/// Suffix of the address-to-netns map's pin, beside the owner map's.
const NETNS_PIN_SUFFIX: &str = "_address_netns";
const STATS_MAP: &str = "PROBE_STATS";
const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";

/// Where a running agent pins its socket-owner map, for `flowex conntrack` to read.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/flowex/socket_owners";

/// Default number of sockets the owner map holds before the least recently used are evicted.
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;

/// Why the probe could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("max_sockets must be at least 1")]
    ZeroSize,
    #[error("loading the probe object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("probe program for sock:{0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("reading the kernel's BTF: {0}")]
    Btf(String),
    #[error("probe map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("the probe object has no {0}")]
    Missing(&'static str),
    #[error("mounting {fs} at {path}: {error}")]
    Mount {
        fs: &'static str,
        path: &'static str,
        error: std::io::Error,
    },
    #[error("pinning the owner map at {path}: {error}")]
    Pin { path: PathBuf, error: String },
}

/// A socket's identity as the probe records it: 44 bytes, laid out as `struct socket_key`.
///
/// Addresses are 16 bytes, IPv4 as `::ffff:a.b.c.d`; an unspecified address (`0.0.0.0`,
/// `::`) is sixteen zero bytes. Ports are in host byte order. A socket that is not connected
/// (a UDP server) has a zero remote address and port, and the inode of its network
/// namespace in `netns` (0 for connected sockets, whose tuples are unique on the node).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SocketKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub pad: [u8; 3],
    pub netns: u32,
}

// SAFETY: repr(C), only integers and byte arrays, no padding (16+16+2+2+1+3+4 = 44).
unsafe impl Pod for SocketKey {}

/// The address form the probe uses: IPv4 mapped into IPv6, unspecified as all zero.
pub fn probe_address(addr: IpAddr) -> [u8; 16] {
    if addr.is_unspecified() {
        return [0; 16];
    }
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl SocketKey {
    /// The key of a socket with both ends known.
    pub fn new(
        protocol: u8,
        local: IpAddr,
        local_port: u16,
        remote: IpAddr,
        remote_port: u16,
    ) -> Self {
        Self::from_octets(
            protocol,
            probe_address(local),
            local_port,
            probe_address(remote),
            remote_port,
        )
    }

    /// The key from addresses already in the probe's 16-byte form.
    pub fn from_octets(
        protocol: u8,
        local: [u8; 16],
        local_port: u16,
        remote: [u8; 16],
        remote_port: u16,
    ) -> Self {
        Self {
            local,
            remote,
            local_port,
            remote_port,
            protocol,
            pad: [0; 3],
            netns: 0,
        }
    }

    /// The same local end with no remote end: an unconnected socket (a UDP server) in the
    /// network namespace `netns`.
    pub fn unconnected(&self, netns: u32) -> Self {
        Self {
            remote: [0; 16],
            remote_port: 0,
            netns,
            ..*self
        }
    }

    /// The same local port bound to any address, unconnected, in `netns`.
    pub fn wildcard(&self, netns: u32) -> Self {
        Self {
            local: [0; 16],
            ..self.unconnected(netns)
        }
    }

    /// True for 127.0.0.0/8 and ::1, which exist in every network namespace.
    pub fn local_is_loopback(&self) -> bool {
        let a = self.local;
        a == std::net::Ipv6Addr::LOCALHOST.octets()
            || (a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff && a[12] == 127)
    }
}

/// The process that used a socket: 40 bytes, laid out as `struct socket_owner`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketOwner {
    /// Process id (thread group id) in the initial PID namespace.
    pub pid: u32,
    /// Inode of the socket's network namespace (as in `/proc/<pid>/ns/net`).
    pub netns: u32,
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC nanoseconds when this owner was recorded.
    pub recorded_ns: u64,
    /// The process's name (its main thread's comm), NUL-padded.
    pub comm: [u8; 16],
}

// SAFETY: repr(C), integers and a byte array, no padding (4+4+8+8+16 = 40).
unsafe impl Pod for SocketOwner {}

impl SocketOwner {
    /// The process name, up to the first NUL ("" if it is not UTF-8).
    pub fn name(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.comm[..end]).unwrap_or("")
    }
}

/// How the probe's programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// BTF-enabled raw tracepoints (`tp_btf`): called directly, fields read with plain loads.
    BtfTracePoint,
    /// Classic tracepoints through perf events, fields read with `bpf_probe_read_kernel`:
    /// used where the kernel refuses `tp_btf`.
    TracePoint,
}

/// The probe's own counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// send/recv calls on inet TCP/UDP/SCTP sockets the probe ran for.
    pub calls: u64,
    /// Owners written: a new socket, or a socket used by another process.
    pub recorded: u64,
    /// Map updates that failed.
    pub map_errors: u64,
    /// Owners of live sockets that the LRU map had evicted, found by the periodic re-check
    /// and recorded again (tp_btf only; evictions of closed sockets are not counted).
    pub evicted: u64,
}

/// Read access to the socket-owner map, owned by a loaded probe or opened from a pin.
pub struct OwnerMap {
    map: HashMap<MapData, SocketKey, SocketOwner>,
    address_netns: HashMap<MapData, [u8; 16], u32>,
    /// The network namespace of this process: where loopback flows live.
    own_netns: u32,
}

/// Inode of the calling thread's network namespace (0 if unreadable).
pub fn current_netns() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino() as u32)
}

impl OwnerMap {
    fn new(owners: Map, address_netns: Map) -> Result<Self, ProbeError> {
        Ok(Self {
            map: HashMap::try_from(owners).map_err(|e| ProbeError::Map(OWNERS_MAP, e))?,
            address_netns: HashMap::try_from(address_netns)
                .map_err(|e| ProbeError::Map(NETNS_MAP, e))?,
            own_netns: current_netns(),
        })
    }

    /// Opens the maps a running agent pinned at `path` (and `path` + `_address_netns`; bpffs refuses dots in names).
    pub fn open_pinned(path: impl AsRef<Path>) -> Result<Self, ProbeError> {
        let path = path.as_ref();
        let owners = MapData::from_pin(path).map_err(|e| ProbeError::Map(OWNERS_MAP, e))?;
        let netns =
            MapData::from_pin(netns_pin(path)).map_err(|e| ProbeError::Map(NETNS_MAP, e))?;
        Self::new(Map::LruHashMap(owners), Map::LruHashMap(netns))
    }

    /// The network namespace that a key's local address belongs to, as learned from
    /// connected sockets; loopback addresses belong to this process's namespace.
    pub fn address_netns(&self, key: &SocketKey) -> Option<u32> {
        if key.local_is_loopback() {
            return Some(self.own_netns);
        }
        self.address_netns.get(&key.local, 0).ok()
    }

    /// The owner recorded for exactly this key. One `bpf(2)` lookup.
    pub fn get(&self, key: &SocketKey) -> Option<SocketOwner> {
        self.map.get(key, 0).ok()
    }

    /// The owner of the socket that sent or received on this flow end: the connected
    /// socket; else, in the network namespace the local address belongs to, an unconnected
    /// socket on that address, else one bound to any address. An address whose namespace
    /// is unknown finds no unconnected socket rather than a wrong one.
    pub fn find(&self, key: &SocketKey) -> Option<SocketOwner> {
        self.get(key).or_else(|| {
            let netns = self.address_netns(key)?;
            self.get(&key.unconnected(netns))
                .or_else(|| self.get(&key.wildcard(netns)))
        })
    }

    /// [`OwnerMap::find`], also saying whether the key's local address is known to be on
    /// this node (a connected socket matched, or its namespace is known). `(None, false)`
    /// is a remote end: looking it up again later is unlikely to find an owner.
    pub fn find_end(&self, key: &SocketKey) -> (Option<SocketOwner>, bool) {
        if let Some(owner) = self.get(key) {
            return (Some(owner), true);
        }
        let Some(netns) = self.address_netns(key) else {
            return (None, false);
        };
        let owner = self
            .get(&key.unconnected(netns))
            .or_else(|| self.get(&key.wildcard(netns)));
        (owner, true)
    }

    /// Every recorded socket and its owner (walks the whole map: for tools, not hot paths).
    pub fn entries(&self) -> impl Iterator<Item = (SocketKey, SocketOwner)> + '_ {
        self.map.iter().filter_map(Result::ok)
    }
}

/// The loaded and attached probe. Dropping it detaches the programs, frees the maps and
/// removes the pin, if any.
pub struct SocketProbe {
    owners: OwnerMap,
    attachment: Attachment,
    stats: PerCpuArray<MapData, u64>,
    pinned: Option<PathBuf>,
    // Holds the programs and their links: dropping it detaches.
    _ebpf: Ebpf,
}

impl SocketProbe {
    /// Loads the probe with room for `max_sockets` sockets and attaches it to the
    /// `sock_send_length`, `sock_recv_length` and `inet_sock_set_state` tracepoints, as
    /// `tp_btf` programs where the kernel allows, else as classic tracepoints (mounting
    /// tracefs when needed). With `pin`, the owner map is also pinned there (mounting bpffs at
    /// /sys/fs/bpf when needed, replacing a stale pin) so that `flowex conntrack` can read
    /// it; the pin is removed on drop. Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN).
    pub fn load(max_sockets: u32, pin: Option<&Path>) -> Result<Self, ProbeError> {
        Self::load_as(max_sockets, pin, true)
    }

    /// Like [`SocketProbe::load`], but always with classic tracepoints (the fallback path),
    /// for tests and comparisons.
    pub fn load_tracepoints(max_sockets: u32, pin: Option<&Path>) -> Result<Self, ProbeError> {
        Self::load_as(max_sockets, pin, false)
    }

    fn load_as(max_sockets: u32, pin: Option<&Path>, btf: bool) -> Result<Self, ProbeError> {
        if max_sockets == 0 {
            return Err(ProbeError::ZeroSize);
        }
        // The memlock rlimit cannot be raised without CAP_SYS_RESOURCE, and this kernel
        // accounts BPF memory to the cgroup instead: no rlimit call at all.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(OWNERS_MAP, max_sockets)
            .load(PROBE_OBJECT)?;
        let attachment = match if btf {
            attach_btf(&mut ebpf)
        } else {
            Err(ProbeError::Missing("tp_btf (not asked for)"))
        } {
            Ok(()) => Attachment::BtfTracePoint,
            Err(btf_error) => {
                attach_classic(&mut ebpf).map_err(|error| match error {
                    // Report the first failure when the two agree (e.g. EPERM).
                    ProbeError::Program(..) => btf_error,
                    other => other,
                })?;
                Attachment::TracePoint
            }
        };
        let owners = ebpf
            .take_map(OWNERS_MAP)
            .ok_or(ProbeError::Missing(OWNERS_MAP))?;
        let address_netns = ebpf
            .take_map(NETNS_MAP)
            .ok_or(ProbeError::Missing(NETNS_MAP))?;
        if let Some(path) = pin {
            pin_map(&owners, path)?;
            pin_map(&address_netns, &netns_pin(path))?;
        }
        let owners = OwnerMap::new(owners, address_netns)?;
        let stats = ebpf
            .take_map(STATS_MAP)
            .ok_or(ProbeError::Missing(STATS_MAP))?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| ProbeError::Map(STATS_MAP, e))?;
        Ok(Self {
            owners,
            stats,
            attachment,
            pinned: pin.map(Path::to_owned),
            _ebpf: ebpf,
        })
    }

    /// How the programs are attached.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// The socket-owner map.
    pub fn owners(&self) -> &OwnerMap {
        &self.owners
    }

    /// The probe's counters.
    pub fn stats(&self) -> ProbeStats {
        let sum = |index: u32| {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().sum::<u64>())
                .unwrap_or(0)
        };
        ProbeStats {
            calls: sum(0),
            recorded: sum(1),
            map_errors: sum(2),
            evicted: sum(3),
        }
    }
}

impl Drop for SocketProbe {
    fn drop(&mut self) {
        if let Some(path) = self.pinned.take() {
            let _ = std::fs::remove_file(netns_pin(&path));
            let _ = std::fs::remove_file(path);
        }
    }
}

fn netns_pin(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(NETNS_PIN_SUFFIX);
    PathBuf::from(name)
}

fn pin_map(map: &Map, path: &Path) -> Result<(), ProbeError> {
    let pin_error = |error: String| ProbeError::Pin {
        path: path.to_owned(),
        error,
    };
    if path.starts_with(BPFFS) {
        ensure_mounted("bpf", BPFFS)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| pin_error(e.to_string()))?;
    }
    let _ = std::fs::remove_file(path);
    map.pin(path).map_err(|e| pin_error(e.to_string()))
}

/// The hooks: (tp_btf program, classic program, tracepoint in the `sock` category).
const HOOKS: [(&str, &str, &str); 3] = [
    ("send_btf", "sock_send_length", "sock_send_length"),
    ("recv_btf", "sock_recv_length", "sock_recv_length"),
    ("state_btf", "inet_sock_set_state", "inet_sock_set_state"),
];

fn attach_btf(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
    for (program, _, tracepoint) in HOOKS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing("program"))?
            .try_into()
            .map_err(|e| ProbeError::Program(tracepoint, e))?;
        program
            .load(tracepoint, &btf)
            .map_err(|e| ProbeError::Program(tracepoint, e))?;
        program
            .attach()
            .map_err(|e| ProbeError::Program(tracepoint, e))?;
    }
    Ok(())
}

fn attach_classic(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    // aya remembers where tracefs is at the first attach, so mount it before.
    ensure_mounted("tracefs", TRACEFS)?;
    for (_, program, tracepoint) in HOOKS {
        let program: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing("program"))?
            .try_into()
            .map_err(|e| ProbeError::Program(tracepoint, e))?;
        program
            .load()
            .map_err(|e| ProbeError::Program(tracepoint, e))?;
        program
            .attach("sock", tracepoint)
            .map_err(|e| ProbeError::Program(tracepoint, e))?;
    }
    Ok(())
}

/// True when a filesystem of type `fs` is mounted at `path` (from /proc/self/mounts).
fn is_mounted(fs: &str, path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let (_, Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next()) else {
                return false;
            };
            point == path && kind == fs
        })
    })
}

fn ensure_mounted(fs: &'static str, path: &'static str) -> Result<(), ProbeError> {
    if is_mounted(fs, path) {
        return Ok(());
    }
    let c_fs = std::ffi::CString::new(fs).expect("no NUL in a literal");
    let c_path = std::ffi::CString::new(path).expect("no NUL in a literal");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c_fs.as_ptr(),
            c_path.as_ptr(),
            c_fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ProbeError::Mount {
            fs,
            path,
            error: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<SocketKey>(), 44);
        assert_eq!(std::mem::size_of::<SocketOwner>(), 40);
    }

    #[test]
    fn addresses_take_the_probes_form() {
        assert_eq!(
            probe_address("10.1.2.3".parse().unwrap()),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        );
        assert_eq!(probe_address("0.0.0.0".parse().unwrap()), [0; 16]);
        assert_eq!(probe_address("::".parse().unwrap()), [0; 16]);
        let key = SocketKey::new(
            6,
            "10.0.0.1".parse().unwrap(),
            80,
            "10.0.0.2".parse().unwrap(),
            4000,
        );
        assert_eq!(key.netns, 0);
        assert_eq!(key.unconnected(7).remote, [0; 16]);
        assert_eq!(key.unconnected(7).remote_port, 0);
        assert_eq!(key.unconnected(7).netns, 7);
        assert_eq!(key.wildcard(7).local, [0; 16]);
        assert_eq!(key.wildcard(7).local_port, 80);
        assert!(!key.local_is_loopback());
        let lo =
            |addr: &str| SocketKey::new(17, addr.parse().unwrap(), 1, addr.parse().unwrap(), 2);
        assert!(lo("127.0.0.1").local_is_loopback());
        assert!(lo("127.9.9.9").local_is_loopback());
        assert!(lo("::1").local_is_loopback());
        assert!(!lo("::2").local_is_loopback());
    }

    #[test]
    fn owner_names_stop_at_nul() {
        let mut owner = SocketOwner::default();
        owner.comm[..4].copy_from_slice(b"curl");
        assert_eq!(owner.name(), "curl");
        owner.comm = *b"sixteen-bytes-ab";
        assert_eq!(owner.name(), "sixteen-bytes-ab");
    }
}
