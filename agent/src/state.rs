//! The state file: what was exported of each tracked connection, written at shutdown and
//! read by the next agent on the node, so a restart (a rolling update of the DaemonSet)
//! neither exports connections that already had their final record again nor restarts
//! the deltas of live connections from conntrack's full counters.
//!
//! The file is small and binary: a header, one fixed-size entry per connection (85 bytes:
//! 100,000 connections make 8.5 MB) and an FNV-1a checksum of everything before it. It is
//! written to a temporary file, synced and renamed, so a crash while writing leaves the
//! previous file or none, never half of one. It is deleted once read: an agent that
//! crashes later must not resume from counters it has since moved past.
//!
//! It only applies to the same network namespace during the same boot (the header has
//! the kernel's boot id and the namespace's inode); conntrack ids and start times then
//! tell whether a saved connection is still the one in the table (see
//! [`crate::store::ConnectionStore::resume`]). A file from elsewhere, a corrupt one, or
//! one of another version is reported and ignored: the agent starts clean.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::store::{ConnKey, Counters, SavedConnection};

/// The file's name inside the state directory.
pub const FILE_NAME: &str = "flowex.state";

const MAGIC: &[u8; 8] = b"FLOWEXST";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 16 + 8 + 8 + 8;
const ENTRY_LEN: usize = 40 + 4 + 8 + 1 + 32;
const CHECKSUM_LEN: usize = 8;
const KERNEL_START: u8 = 1;
const ENDED: u8 = 2;

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a flowex state file of version {VERSION} ({reason})")]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error("{path}: written during another boot or in another network namespace")]
    Elsewhere { path: PathBuf },
}

/// Where this agent runs: the kernel's boot id and the network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub boot_id: [u8; 16],
    pub netns_inode: u64,
}

impl Origin {
    /// This process's boot and network namespace (zeros where the kernel does not say).
    pub fn current() -> Self {
        use std::os::unix::fs::MetadataExt;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|text| parse_uuid(text.trim()))
            .unwrap_or_default();
        let netns_inode = std::fs::metadata("/proc/thread-self/ns/net")
            .or_else(|_| std::fs::metadata("/proc/self/ns/net"))
            .map_or(0, |m| m.ino());
        Self {
            boot_id,
            netns_inode,
        }
    }
}

fn parse_uuid(text: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let digits: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|b| (b as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    for (i, pair) in digits.chunks(2).take(16).enumerate() {
        out[i] = pair[0] << 4 | pair.get(1).copied().unwrap_or(0);
    }
    out
}

/// What a state file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub origin: Origin,
    /// When it was written, milliseconds since the Unix epoch.
    pub written_ms: u64,
    pub connections: Vec<SavedConnection>,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.connections.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.origin.boot_id);
        out.extend_from_slice(&self.origin.netns_inode.to_be_bytes());
        out.extend_from_slice(&self.written_ms.to_be_bytes());
        out.extend_from_slice(&(self.connections.len() as u64).to_be_bytes());
        for c in &self.connections {
            let k = &c.key;
            out.extend_from_slice(&k.zone.to_be_bytes());
            out.push(k.protocol);
            out.push(u8::from(k.ipv6));
            out.extend_from_slice(&k.source_port.to_be_bytes());
            out.extend_from_slice(&k.destination_port.to_be_bytes());
            out.extend_from_slice(&k.source);
            out.extend_from_slice(&k.destination);
            out.extend_from_slice(&c.conntrack_id.to_be_bytes());
            out.extend_from_slice(&c.start_ms.to_be_bytes());
            let mut flags = 0;
            if c.kernel_start {
                flags |= KERNEL_START;
            }
            if c.ended {
                flags |= ENDED;
            }
            out.push(flags);
            for value in [
                c.exported.packets,
                c.exported.bytes,
                c.exported.reply_packets,
                c.exported.reply_bytes,
            ] {
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
        let checksum = fnv1a64(&out);
        out.extend_from_slice(&checksum.to_be_bytes());
        out
    }

    /// Parses a file's bytes; `Err` names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<State, &'static str> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err("too short");
        }
        if &bytes[..8] != MAGIC {
            return Err("bad magic");
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if fnv1a64(body).to_be_bytes() != checksum {
            return Err("checksum mismatch");
        }
        let mut r = Reader(&body[8..]);
        if r.u32() != VERSION {
            return Err("unknown version");
        }
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(r.take(16));
        let netns_inode = r.u64();
        let written_ms = r.u64();
        let count = r.u64();
        if count.checked_mul(ENTRY_LEN as u64) != Some(r.0.len() as u64) {
            return Err("length does not match the entry count");
        }
        let mut connections = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let zone = r.u16();
            let protocol = r.take(1)[0];
            let ipv6 = r.take(1)[0] != 0;
            let source_port = r.u16();
            let destination_port = r.u16();
            let mut source = [0u8; 16];
            source.copy_from_slice(r.take(16));
            let mut destination = [0u8; 16];
            destination.copy_from_slice(r.take(16));
            let conntrack_id = r.u32();
            let start_ms = r.u64();
            let flags = r.take(1)[0];
            let exported = Counters {
                packets: r.u64(),
                bytes: r.u64(),
                reply_packets: r.u64(),
                reply_bytes: r.u64(),
            };
            connections.push(SavedConnection {
                key: ConnKey {
                    zone,
                    protocol,
                    ipv6,
                    source_port,
                    destination_port,
                    source,
                    destination,
                },
                conntrack_id,
                start_ms,
                kernel_start: flags & KERNEL_START != 0,
                ended: flags & ENDED != 0,
                exported,
            });
        }
        Ok(State {
            origin: Origin {
                boot_id,
                netns_inode,
            },
            written_ms,
            connections,
        })
    }
}

/// Reads big-endian fields; lengths are checked before it is used.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap_or_default())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap_or_default())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap_or_default())
    }
}

/// The state file in `directory`.
pub fn path(directory: &Path) -> PathBuf {
    directory.join(FILE_NAME)
}

/// Writes `state` atomically into `directory` (created if missing).
pub fn save(directory: &Path, state: &State) -> Result<PathBuf, StateError> {
    let path = path(directory);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(directory).map_err(io)?;
    let temporary = directory.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(&state.encode())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(source));
    }
    Ok(path)
}

/// Reads and deletes the state file in `directory`: `Ok(None)` when there is none, an
/// error when it cannot be used (it is deleted all the same).
pub fn take(directory: &Path, origin: Origin) -> Result<Option<State>, StateError> {
    let path = path(directory);
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    }
    let _ = std::fs::remove_file(&path);
    let state = State::decode(&bytes).map_err(|reason| StateError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    if state.origin != origin {
        return Err(StateError::Elsewhere { path });
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let key = |port| ConnKey {
            zone: 3,
            protocol: 6,
            ipv6: false,
            source_port: port,
            destination_port: 80,
            source: std::net::Ipv4Addr::new(10, 0, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            destination: std::net::Ipv4Addr::new(10, 0, 0, 2)
                .to_ipv6_mapped()
                .octets(),
        };
        State {
            origin: Origin {
                boot_id: parse_uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
                netns_inode: 4026531840,
            },
            written_ms: 1_700_000_000_123,
            connections: vec![
                SavedConnection {
                    key: key(40000),
                    conntrack_id: 0xdead_beef,
                    start_ms: 1_699_999_999_000,
                    kernel_start: true,
                    ended: false,
                    exported: Counters {
                        packets: 10,
                        bytes: 1_000,
                        reply_packets: 9,
                        reply_bytes: 90_000,
                    },
                },
                SavedConnection {
                    key: key(40001),
                    conntrack_id: 7,
                    start_ms: 5,
                    kernel_start: false,
                    ended: true,
                    exported: Counters::default(),
                },
            ],
        }
    }

    #[test]
    fn a_state_round_trips_byte_for_byte() {
        let state = sample();
        let bytes = state.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 2 * ENTRY_LEN + CHECKSUM_LEN);
        assert_eq!(&bytes[..8], b"FLOWEXST");
        assert_eq!(&bytes[8..12], &[0, 0, 0, 1]);
        assert_eq!(bytes[12], 0x0f);
        assert_eq!(bytes[27], 0xf0);
        assert_eq!(State::decode(&bytes), Ok(state));
    }

    #[test]
    fn damaged_files_are_refused_with_a_reason() {
        let bytes = sample().encode();
        assert_eq!(State::decode(&bytes[..10]), Err("too short"));
        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        assert_eq!(State::decode(&flipped), Err("checksum mismatch"));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(State::decode(&magic), Err("bad magic"));
        // A truncated entry with a recomputed checksum: the count no longer matches.
        let mut cut = bytes[..bytes.len() - CHECKSUM_LEN - 1].to_vec();
        let checksum = fnv1a64(&cut);
        cut.extend_from_slice(&checksum.to_be_bytes());
        assert_eq!(
            State::decode(&cut),
            Err("length does not match the entry count")
        );
        // Every prefix of a valid file is refused, never a panic.
        for len in 0..bytes.len() {
            assert!(State::decode(&bytes[..len]).is_err(), "prefix of {len}");
        }
    }

    #[test]
    fn take_reads_once_and_refuses_another_origin() {
        let directory = std::env::temp_dir().join(format!("flowex-state-{}", std::process::id()));
        let state = sample();
        save(&directory, &state).unwrap();
        assert_eq!(take(&directory, state.origin).unwrap(), Some(state.clone()));
        // Deleted once read.
        assert!(take(&directory, state.origin).unwrap().is_none());
        save(&directory, &state).unwrap();
        let other = Origin {
            netns_inode: 1,
            ..state.origin
        };
        assert!(matches!(
            take(&directory, other),
            Err(StateError::Elsewhere { .. })
        ));
        std::fs::write(path(&directory), b"garbage").unwrap();
        let error = take(&directory, state.origin).unwrap_err();
        assert!(error.to_string().contains("too short"), "{error}");
        assert!(!path(&directory).exists());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
