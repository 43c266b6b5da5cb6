//! The connection store: every tracked connection, shared by all collectors, in
//! [`SHARDS`] shards, each behind its own lock; and per shard an expiry heap keyed by each
//! connection's next deadline, so expiry never scans the store.
//!
//! Memory is what the design is about. A shard keeps connections in a slab of fixed-size
//! chunks (no doubling slack) and finds them through a hash table of 4-byte slot numbers,
//! so when the table doubles only the slot numbers double, not the 192-byte entries (key,
//! connection, and the record builder's [`Annotation`]: one shared pointer to the owners
//! and pods looked up at the first export). Heap entries are (deadline, slot, slot
//! generation): 16 bytes, and a freed slot's stale entries are recognised by the
//! generation.
//!
//! The store knows nothing of its sources: they hand it what they observed, read through
//! [`Observed`] in place, and [`Denial`]s, with their kernel numbers already read (a TCP
//! state that ends a connection, a hook on the egress path). A connection's [`Origin`] and [`Phase`] say what it is and how far
//! its exports have gone. Expiry copies what is due out of a shard and releases the lock
//! before records are built ([`ConnectionStore::expire_into`]).
//!
//! Each live connection has exactly one heap entry. Updates do not touch the heap: when an
//! entry comes due, the connection's real deadline is recomputed and, if it moved, the
//! entry is pushed again. Updating a known connection allocates nothing.

mod connection;
mod expiry;
mod key;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;

use connection::Ending;
pub use connection::{
    Annotation, Connection, Counters, Denial, Due, EndReason, Expired, Observation, Observed,
    Origin, Phase, Reply, Timeouts,
};
pub use key::{ConnKey, FxBuild, FxHasher, flow_ports};

/// The clock of the store's times: milliseconds since the Unix epoch (0 if the clock is
/// before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// The memory figures in the module doc and BENCHMARKS.md depend on these sizes.
const _: () = assert!(std::mem::size_of::<Connection>() == 128);
const _: () = assert!(std::mem::size_of::<Slot>() == 192);

/// Number of shards (independent locks).
pub const SHARDS: usize = 16;
/// Slots per slab chunk.
const CHUNK: usize = 1024;

#[derive(Debug, Clone)]
struct Slot {
    key: ConnKey,
    generation: u32,
    connection: Connection,
    annotation: Annotation,
}

impl Slot {
    fn empty() -> Self {
        Slot {
            key: ConnKey {
                zone: 0,
                protocol: 0,
                ipv6: false,
                source_port: 0,
                destination_port: 0,
                source: [0; 16],
                destination: [0; 16],
            },
            generation: 0,
            connection: Connection {
                reply_source: [0; 16],
                reply_source_port: 0,
                snat_address: 0,
                snat_port: 0,
                tcp_state: 0,
                origin: Origin::Conntrack,
                phase: Phase::Active,
                flushed: false,
                kernel_start: false,
                conntrack_id: 0,
                seen_generation: 0,
                deny_prefix: 0,
                counters: Counters::default(),
                exported: Counters::default(),
                start_ms: 0,
                last_change_ms: 0,
                last_export_ms: 0,
            },
            annotation: Annotation::default(),
        }
    }
}

#[inline]
fn hash_key(key: &ConnKey) -> u64 {
    FxBuild.hash_one(key)
}

#[inline]
fn slot_in(chunks: &[Box<[Slot]>], slot: u32) -> &Slot {
    &chunks[slot as usize / CHUNK][slot as usize % CHUNK]
}

#[derive(Default)]
struct Shard {
    index: HashTable<u32>,
    chunks: Vec<Box<[Slot]>>,
    allocated: u32,
    free: Vec<u32>,
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Connections whose tuple a newer connection took over before their final record
    /// was exported: exported (flowEndReason 3) at the next expiry, then forgotten.
    retired: Vec<(ConnKey, Connection, Annotation)>,
    /// What a previous agent exported, by key, until the first complete poll
    /// ([`ConnectionStore::resume`]).
    resume: hashbrown::HashMap<ConnKey, SavedConnection, FxBuild>,
}

impl Shard {
    #[inline]
    fn find(&self, hash: u64, key: &ConnKey) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(hash, |&slot| slot_in(chunks, slot).key == *key)
            .copied()
    }

    #[inline]
    fn slot(&self, slot: u32) -> &Slot {
        slot_in(&self.chunks, slot)
    }

    #[inline]
    fn slot_mut(&mut self, slot: u32) -> &mut Slot {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    fn insert(&mut self, hash: u64, key: ConnKey, connection: Connection) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                if self.allocated as usize == self.chunks.len() * CHUNK {
                    let chunk: Vec<Slot> = (0..CHUNK).map(|_| Slot::empty()).collect();
                    self.chunks.push(chunk.into_boxed_slice());
                }
                self.allocated += 1;
                self.allocated - 1
            }
        };
        let entry = self.slot_mut(slot);
        entry.key = key;
        entry.connection = connection;
        entry.annotation = Annotation::default();
        let chunks = &self.chunks;
        self.index
            .insert_unique(hash, slot, |&s| hash_key(&slot_in(chunks, s).key));
        slot
    }

    fn remove(&mut self, hash: u64, slot: u32) -> Connection {
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        let entry = self.slot_mut(slot);
        entry.generation = entry.generation.wrapping_add(1);
        entry.annotation = Annotation::default();
        let connection = entry.connection;
        self.free.push(slot);
        connection
    }

    fn schedule(&mut self, deadline_ms: u64, slot: u32) {
        let generation = self.slot(slot).generation;
        self.heap.push(Reverse((deadline_ms, slot, generation)));
    }
}

/// The store. All methods take `&self`: sources and the expiry task share it.
pub struct ConnectionStore {
    shards: Box<[Mutex<Shard>]>,
    timeouts: Timeouts,
    generation: AtomicU32,
    len: AtomicUsize,
    deny_count: AtomicUsize,
    prefixes: Mutex<Vec<Arc<str>>>,
    /// SNAT addresses seen (index 0: none), few on a node: its own addresses.
    snat_addresses: Mutex<Vec<[u8; 16]>>,
    /// The shard the next expiry starts at.
    next_shard: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How an observed entry relates to the connection stored for its tuple.
enum Identity {
    /// The same connection.
    Same,
    /// A later connection of the same tuple.
    Newer,
    /// An earlier connection of the same tuple, already replaced.
    Older,
}

/// `created`: the observation comes from a NEW event, so conntrack has just made it.
fn identity(
    shard: &Shard,
    key: &ConnKey,
    stored: &Connection,
    seen: &impl Observed,
    created: bool,
) -> Identity {
    if stored.origin.is_denied() {
        // Denied packets never made a conntrack entry: conntrack's is another connection.
        return Identity::Newer;
    }
    let start_ms = seen.start_ms();
    let kernel_starts = stored.kernel_start && start_ms.is_some();
    let id = seen.conntrack_id();
    let id_differs = id != 0 && stored.conntrack_id != 0 && id != stored.conntrack_id;
    let start_differs = kernel_starts && start_ms != Some(stored.start_ms);
    if !id_differs && !start_differs {
        // The id is a hash of the entry's address and tuple: a new entry of the same tuple
        // that reuses the old one's memory gets the old id, and NEW and UPDATE events carry
        // no start time. Once the stored connection has ended, its tuple showing up again
        // (a NEW event, a TCP state of a new connection, counters that went back) is
        // another connection.
        let reopened = created
            || seen.opening()
            || seen
                .counters()
                .is_some_and(|c| c.packets < stored.counters.packets);
        return if stored.phase.has_ended() && reopened {
            Identity::Newer
        } else {
            Identity::Same
        };
    }
    let retired = shard
        .retired
        .iter()
        .any(|(k, c, _)| k == key && c.conntrack_id == id);
    if retired || (kernel_starts && start_ms < Some(stored.start_ms)) {
        Identity::Older
    } else {
        Identity::Newer
    }
}

/// Applies what a previous agent exported for this connection, if it saved any (matched by
/// conntrack id and, where both are known, the kernel's start time).
fn resumed(shard: &mut Shard, key: &ConnKey, connection: &mut Connection) {
    if shard.resume.is_empty() {
        return;
    }
    let Some(saved) = shard.resume.remove(key) else {
        return;
    };
    let same_start =
        !(saved.kernel_start && connection.kernel_start) || saved.start_ms == connection.start_ms;
    if saved.conntrack_id != connection.conntrack_id || !same_start {
        return;
    }
    connection.exported = saved.exported;
    if saved.ended {
        connection.phase = Phase::Ended;
    }
}

impl ConnectionStore {
    /// An empty store.
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            timeouts,
            generation: AtomicU32::new(1),
            len: AtomicUsize::new(0),
            deny_count: AtomicUsize::new(0),
            prefixes: Mutex::new(vec![Arc::from("")]),
            snat_addresses: Mutex::new(vec![[0; 16]]),
            next_shard: AtomicUsize::new(0),
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Middle bits: the table itself uses the low bits (bucket) and the top 7 (tag).
        lock(&self.shards[(hash >> 32) as usize % SHARDS])
    }

    /// Connections tracked (conntrack and deny).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Denied connections tracked.
    pub fn deny_len(&self) -> usize {
        self.deny_count.load(Ordering::Relaxed)
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of one connection.
    pub fn get(&self, key: &ConnKey) -> Option<Connection> {
        let hash = hash_key(key);
        let shard = self.shard(hash);
        shard
            .find(hash, key)
            .map(|slot| shard.slot(slot).connection)
    }

    /// The SNAT address interned as `id` (IPv4-mapped for IPv4; None for 0 or unknown).
    pub fn snat_address(&self, id: u16) -> Option<[u8; 16]> {
        if id == 0 {
            return None;
        }
        lock(&self.snat_addresses).get(usize::from(id)).copied()
    }

    /// The id of a SNAT address; 0 (no SNAT reported) once 65,535 distinct ones are held.
    fn intern_snat(&self, address: [u8; 16]) -> u16 {
        let mut addresses = lock(&self.snat_addresses);
        match addresses.iter().position(|a| *a == address) {
            Some(id) => id as u16,
            None if addresses.len() <= usize::from(u16::MAX) => {
                addresses.push(address);
                (addresses.len() - 1) as u16
            }
            None => 0,
        }
    }

    /// The deny prefix interned as `id` (a shared string: no copy).
    pub fn prefix(&self, id: u32) -> Arc<str> {
        lock(&self.prefixes)
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// The last poll's generation: 1 before the first poll.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Conntrack and deny connections whose final record is still to be exported (the
    /// shutdown flush's remainder).
    pub fn unflushed(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = lock(shard);
                let live = shard
                    .index
                    .iter()
                    .filter(|&&slot| {
                        let c = &shard.slot(slot).connection;
                        c.phase != Phase::Ended && !c.flushed
                    })
                    .count();
                let retired = shard
                    .retired
                    .iter()
                    .filter(|(_, c, _)| c.phase != Phase::Ended && !c.flushed)
                    .count();
                live + retired
            })
            .sum()
    }

    /// Starts a poll: entries seen by the dump that follows carry the returned generation.
    /// A connection missing from a whole completed poll is treated as ended.
    pub fn begin_poll(&self) -> u32 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Adds or updates a connection from a dump entry or an event. `generation` is the
    /// running poll's (0 for events). Allocation-free for a known connection.
    ///
    /// A tuple can carry several connections one after another: a client that reuses its
    /// port while the server's entry is still in TIME_WAIT makes conntrack destroy the old
    /// entry and create a new one with the same tuple. Each has its own conntrack id and
    /// start timestamp, so an entry whose id or kernel start differs from the stored one is
    /// another connection: a newer one takes the slot (the old one, unless its final record
    /// was exported already, is retired and exported with flowEndReason 3 at the next
    /// expiry), and a late event of an older one (its DESTROY after the new one's NEW)
    /// updates the retired connection, never the new one.
    pub fn update(&self, seen: impl Observed, generation: u32, now_ms: u64) {
        self.apply(&seen, generation, now_ms, false);
    }

    /// Adds a connection from a NEW event: conntrack has just created it, so a connection
    /// stored for its tuple that has ended is an earlier one even when the ids agree.
    pub fn create(&self, seen: impl Observed, now_ms: u64) {
        self.apply(&seen, 0, now_ms, true);
    }

    /// Like [`ConnectionStore::create`], unless the NEW event may be older than what the
    /// store knows: the stored connection of its tuple has ended and has the same conntrack
    /// id and a kernel start. A poll's dump can see a connection whole (to TIME_WAIT) while
    /// its NEW event still waits in the event socket; applied then, that event would make
    /// a second connection of the same entry and export it twice. Returns false, without
    /// changing anything, for the caller to fetch the entry and apply it with its start
    /// time (a new connection of the tuple has another start).
    pub fn create_unless_stale(&self, seen: impl Observed, now_ms: u64) -> bool {
        let key = seen.key();
        let hash = hash_key(&key);
        {
            let shard = self.shard(hash);
            if let Some(slot) = shard.find(hash, &key) {
                let c = &shard.slot(slot).connection;
                let id = seen.conntrack_id();
                if c.phase.has_ended() && c.kernel_start && id != 0 && id == c.conntrack_id {
                    return false;
                }
            }
        }
        self.apply(&seen, 0, now_ms, true);
        true
    }

    fn apply(&self, seen: &impl Observed, generation: u32, now_ms: u64, created: bool) {
        let key = seen.key();
        let hash = hash_key(&key);
        let mut shard = self.shard(hash);
        let dying = seen.ended();
        if let Some(slot) = shard.find(hash, &key) {
            match identity(&shard, &key, &shard.slot(slot).connection, seen, created) {
                Identity::Same => {
                    let c = &mut shard.slot_mut(slot).connection;
                    if generation != 0 {
                        c.seen_generation = generation;
                    }
                    if c.phase == Phase::Ended {
                        return;
                    }
                    if let Some(counters) = seen.counters()
                        && counters != c.counters
                    {
                        c.counters = counters;
                        c.last_change_ms = now_ms;
                        if c.phase == Phase::Idle {
                            c.phase = Phase::Active;
                        }
                    }
                    if let Some(state) = seen.tcp_state() {
                        c.tcp_state = state;
                    }
                    if dying && !c.phase.has_ended() {
                        c.phase = Phase::Ending;
                        shard.schedule(now_ms, slot);
                    }
                }
                Identity::Older => {
                    // A late event of a connection this tuple has since been reused by.
                    if let Some((_, old, _)) = shard
                        .retired
                        .iter_mut()
                        .find(|(k, c, _)| *k == key && c.conntrack_id == seen.conntrack_id())
                        && let Some(counters) = seen.counters()
                    {
                        old.counters = counters;
                    }
                }
                Identity::Newer => {
                    let mut old = shard.slot(slot).connection;
                    if old.origin.is_denied() {
                        self.deny_count.fetch_sub(1, Ordering::Relaxed);
                    }
                    // Kept until the next expiry even when its final record went out
                    // already, so that its late events are still recognised as its own.
                    if !old.phase.has_ended() {
                        old.phase = Phase::Ending;
                    }
                    let annotation = std::mem::take(&mut shard.slot_mut(slot).annotation);
                    shard.retired.push((key, old, annotation));
                    let mut connection = self.fresh(&key, seen, generation, now_ms);
                    resumed(&mut shard, &key, &mut connection);
                    let entry = shard.slot_mut(slot);
                    entry.connection = connection;
                    // The old connection's heap entry no longer applies.
                    entry.generation = entry.generation.wrapping_add(1);
                    shard.schedule(self.first_deadline(dying, now_ms), slot);
                }
            }
            return;
        }
        let mut connection = self.fresh(&key, seen, generation, now_ms);
        resumed(&mut shard, &key, &mut connection);
        let slot = shard.insert(hash, key, connection);
        shard.schedule(self.first_deadline(dying, now_ms), slot);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection first seen in `seen`.
    fn fresh(
        &self,
        key: &ConnKey,
        seen: &impl Observed,
        generation: u32,
        now_ms: u64,
    ) -> Connection {
        let reply = seen.reply();
        let start_ms = seen.start_ms();
        // The reply goes to another address or port than the client's: a SNAT.
        let snat = reply.destination != key.source || reply.destination_port != key.source_port;
        Connection {
            reply_source: reply.source,
            reply_source_port: reply.source_port,
            snat_address: if snat {
                self.intern_snat(reply.destination)
            } else {
                0
            },
            snat_port: if snat { reply.destination_port } else { 0 },
            tcp_state: seen.tcp_state().unwrap_or(0),
            origin: Origin::Conntrack,
            phase: if seen.ended() {
                Phase::Ending
            } else {
                Phase::Active
            },
            flushed: false,
            kernel_start: start_ms.is_some(),
            conntrack_id: seen.conntrack_id(),
            seen_generation: if generation != 0 {
                generation
            } else {
                self.generation.load(Ordering::Acquire)
            },
            deny_prefix: 0,
            counters: seen.counters().unwrap_or_default(),
            exported: Counters::default(),
            start_ms: start_ms.unwrap_or(now_ms),
            last_change_ms: now_ms,
            last_export_ms: now_ms,
        }
    }

    fn first_deadline(&self, dying: bool, now_ms: u64) -> u64 {
        if dying {
            now_ms
        } else {
            now_ms + self.timeouts.active_ms.min(self.timeouts.idle_ms)
        }
    }

    /// Records a connection's end with its final counters (DESTROY event, or the targeted
    /// get after TIME_WAIT/CLOSE); it is exported at the next expiry run.
    pub fn end(&self, seen: impl Observed, now_ms: u64) {
        self.apply(&Ending(seen), 0, now_ms, false);
    }

    /// Adds one denied packet: packets and bytes of the same 5-tuple aggregate.
    pub fn deny<'a>(&self, denial: impl Into<Denial<'a>>, now_ms: u64) {
        let denial = denial.into();
        let key = denial.key;
        let hash = hash_key(&key);
        {
            let mut shard = self.shard(hash);
            if let Some(slot) = shard.find(hash, &key) {
                let c = &mut shard.slot_mut(slot).connection;
                c.counters.packets += 1;
                c.counters.bytes += denial.bytes;
                c.last_change_ms = now_ms;
                return;
            }
        }
        let prefix = {
            let mut prefixes = lock(&self.prefixes);
            match prefixes.iter().position(|p| &**p == denial.prefix) {
                Some(id) => id as u32,
                None => {
                    prefixes.push(Arc::from(denial.prefix));
                    (prefixes.len() - 1) as u32
                }
            }
        };
        let connection = Connection {
            reply_source: key.destination,
            reply_source_port: key.destination_port,
            snat_address: 0,
            snat_port: 0,
            tcp_state: 0,
            origin: denial.origin,
            phase: Phase::Active,
            flushed: false,
            kernel_start: false,
            conntrack_id: 0,
            seen_generation: 0,
            deny_prefix: prefix,
            counters: Counters {
                packets: 1,
                bytes: denial.bytes,
                reply_packets: 0,
                reply_bytes: 0,
            },
            exported: Counters::default(),
            start_ms: denial.logged_ms.unwrap_or(now_ms),
            last_change_ms: now_ms,
            last_export_ms: now_ms,
        };
        let mut shard = self.shard(hash);
        if shard.find(hash, &key).is_some() {
            // Another denial of the same tuple won the race while the prefix was interned.
            drop(shard);
            return self.deny(denial, now_ms);
        }
        let slot = shard.insert(hash, key, connection);
        shard.schedule(now_ms + self.timeouts.deny_idle_ms, slot);
        self.len.fetch_add(1, Ordering::Relaxed);
        self.deny_count.fetch_add(1, Ordering::Relaxed);
    }

    /// What was exported of every conntrack connection (not denials), for the state file
    /// a restarted agent resumes from. A connection whose final record was exported, or
    /// that was ending when it was flushed, is saved as ended; one that was not flushed
    /// (the shutdown deadline passed) keeps the counters last exported, so the next agent
    /// exports the rest.
    pub fn saved_connections(&self) -> Vec<SavedConnection> {
        let mut saved = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for &slot in shard.index.iter() {
                let Slot {
                    key, connection: c, ..
                } = shard.slot(slot);
                if c.origin.is_denied() {
                    continue;
                }
                saved.push(SavedConnection {
                    key: *key,
                    conntrack_id: c.conntrack_id,
                    start_ms: c.start_ms,
                    kernel_start: c.kernel_start,
                    // Ended and reported, or flushed while ending: final either way.
                    ended: c.phase == Phase::Ended || (c.flushed && c.phase == Phase::Ending),
                    exported: c.exported,
                });
            }
        }
        saved
    }

    /// Loads what a previous agent on this node exported: a connection seen again (same
    /// tuple, conntrack id and start) continues from those counters, and one whose final
    /// record was exported is not exported again. Call before the first poll; call
    /// [`ConnectionStore::finish_resume`] after it.
    pub fn resume(&self, saved: impl IntoIterator<Item = SavedConnection>) {
        for connection in saved {
            let hash = hash_key(&connection.key);
            self.shard(hash).resume.insert(connection.key, connection);
        }
    }

    /// Forgets saved connections no poll found (they ended while no agent ran); returns
    /// how many there were.
    pub fn finish_resume(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = lock(shard);
                let left = shard.resume.len();
                shard.resume = Default::default();
                left
            })
            .sum()
    }
}

/// What was exported of one connection, kept across an agent restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedConnection {
    pub key: ConnKey,
    pub conntrack_id: u32,
    pub start_ms: u64,
    /// `start_ms` is the kernel's start timestamp.
    pub kernel_start: bool,
    /// The final record was exported.
    pub ended: bool,
    pub exported: Counters,
}
