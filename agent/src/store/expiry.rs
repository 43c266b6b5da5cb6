//! Expiry: what is due leaves the store as copies ([`Due`]), each shard's lock held only
//! while its due connections are copied, so records are built without the store's locks.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;

use super::{
    Annotation, CHUNK, Connection, ConnectionStore, Due, EndReason, Expired, Phase, SHARDS, Shard,
    hash_key, lock,
};

impl ConnectionStore {
    /// Exports what is due at `now_ms`: ended connections (exported once, forgotten when
    /// conntrack forgets them), active ones every active timeout, idle ones once, deny
    /// connections after their idle timeout (then deleted), and connections two polls no
    /// longer saw. `polled` says whether poll generations reflect complete dumps.
    pub fn expire(&self, now_ms: u64, polled: bool, out: impl FnMut(Expired<'_>)) -> usize {
        self.expire_limited(now_ms, polled, usize::MAX, out)
    }

    /// [`ConnectionStore::expire`], stopping after `limit` records: what is due and not
    /// exported stays due (its deadline has passed, so it comes first next time), and its
    /// counters keep growing in the store. This is how the collectors' queues hold expiry
    /// back instead of dropping what does not fit. Each call starts at the next shard, so a
    /// limit smaller than what is due does not favour the first shards.
    pub fn expire_limited(
        &self,
        now_ms: u64,
        polled: bool,
        limit: usize,
        mut out: impl FnMut(Expired<'_>),
    ) -> usize {
        let mut due = Vec::new();
        let exported = self.expire_into(now_ms, polled, limit, &mut due);
        due.iter().for_each(|d| out(d.expired()));
        exported
    }

    /// [`ConnectionStore::expire_limited`] into `due` (appended, so a buffer reused across
    /// rounds allocates nothing once grown). Each shard's lock is held only while its due
    /// connections are copied out: the caller builds records (owner and pod lookups)
    /// while the sources go on updating the store.
    pub fn expire_into(
        &self,
        now_ms: u64,
        polled: bool,
        limit: usize,
        due: &mut Vec<Due>,
    ) -> usize {
        let generation = self.generation.load(Ordering::Acquire);
        let t = self.timeouts;
        let mut exported = 0;
        let first = self.next_shard.fetch_add(1, Ordering::Relaxed);
        for i in 0..SHARDS {
            if exported >= limit {
                break;
            }
            let mut shard = lock(&self.shards[(first + i) % SHARDS]);
            while exported < limit {
                let Some((key, mut c, annotation)) = shard.retired.pop() else {
                    break;
                };
                if c.phase == Phase::Ended || c.flushed {
                    continue;
                }
                let reason = if c.origin.is_denied() {
                    EndReason::IdleTimeout
                } else {
                    EndReason::EndOfFlow
                };
                let delta = c.counters.since(&c.exported);
                c.last_export_ms = now_ms;
                due.push(Due {
                    slot: None,
                    key,
                    connection: c,
                    annotation,
                    reason,
                    delta,
                    end_ms: now_ms,
                });
                exported += 1;
            }
            while exported < limit {
                let Some(&Reverse((deadline, slot, slot_generation))) = shard.heap.peek() else {
                    break;
                };
                if deadline > now_ms {
                    break;
                }
                shard.heap.pop();
                let entry = shard.slot_mut(slot);
                if entry.generation != slot_generation {
                    continue; // the slot was freed or reused since
                }
                let key = entry.key;
                let annotation = &entry.annotation;
                let c = &mut entry.connection;
                // A connection two polls have not seen is gone from conntrack.
                let gone = polled
                    && !c.origin.is_denied()
                    && generation.wrapping_sub(c.seen_generation) >= 2;
                if gone && !c.phase.has_ended() {
                    c.phase = Phase::Ending;
                }
                let mut emit = |c: &mut Connection, reason: EndReason| {
                    let delta = c.counters.since(&c.exported);
                    due.push(Due {
                        slot: Some((slot, slot_generation)),
                        key,
                        connection: *c,
                        annotation: annotation.clone(),
                        reason,
                        delta,
                        end_ms: now_ms,
                    });
                    c.exported = c.counters;
                    c.last_export_ms = now_ms;
                    exported += 1;
                };
                let next = match (c.phase, c.origin.is_denied()) {
                    // Reported already: forget it once conntrack has, else look again later.
                    (Phase::Ended, _) => (!gone).then_some(now_ms + t.idle_ms),
                    (Phase::Ending, _) => {
                        // The final record, with whatever was counted since the last export.
                        emit(c, EndReason::EndOfFlow);
                        c.phase = Phase::Ended;
                        (!gone).then_some(now_ms + t.idle_ms)
                    }
                    (_, true) if now_ms >= c.last_change_ms + t.deny_idle_ms => {
                        emit(c, EndReason::IdleTimeout);
                        None
                    }
                    (_, true) => Some(c.last_change_ms + t.deny_idle_ms),
                    // Idle and already reported: look again later (it may resume or vanish).
                    (Phase::Idle, false) => Some(now_ms + t.idle_ms),
                    (Phase::Active, false) if now_ms >= c.last_change_ms + t.idle_ms => {
                        emit(c, EndReason::IdleTimeout);
                        c.phase = Phase::Idle;
                        Some(now_ms + t.idle_ms)
                    }
                    (Phase::Active, false) if now_ms >= c.last_export_ms + t.active_ms => {
                        emit(c, EndReason::ActiveTimeout);
                        Some((now_ms + t.active_ms).min(c.last_change_ms + t.idle_ms))
                    }
                    (Phase::Active, false) => {
                        Some((c.last_export_ms + t.active_ms).min(c.last_change_ms + t.idle_ms))
                    }
                };
                match next {
                    Some(deadline) => shard.schedule(deadline.max(now_ms + 1), slot),
                    None => {
                        let removed = shard.remove(hash_key(&key), slot);
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        if removed.origin.is_denied() {
                            self.deny_count.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        exported
    }

    /// Keeps what the record builder learned about a connection with it, unless its slot
    /// has since been freed or taken by a newer connection of the tuple (or `due` is a
    /// retired connection). Returns whether it was kept.
    pub fn annotate(&self, due: &Due, annotation: Annotation) -> bool {
        let Some((slot, generation)) = due.slot else {
            return false;
        };
        let hash = hash_key(&due.key);
        let mut shard = self.shard(hash);
        // The slot generation changes when the slot is freed or a newer connection of the
        // tuple takes it over.
        if shard.find(hash, &due.key) != Some(slot) || shard.slot(slot).generation != generation {
            return false;
        }
        shard.slot_mut(slot).annotation = annotation;
        true
    }

    /// The shutdown flush, at most `limit` records per call: every connection whose final
    /// record was not exported yet is exported with flowEndReason 4 (forced end) and marked
    /// flushed, so the next call goes on where this one stopped; 0 means nothing is left.
    /// Connections stay in the store (see [`ConnectionStore::saved_connections`]).
    pub fn force_end(&self, now_ms: u64, limit: usize, mut out: impl FnMut(Expired<'_>)) -> usize {
        let mut due = Vec::new();
        let exported = self.force_end_into(now_ms, limit, &mut due);
        due.iter().for_each(|d| out(d.expired()));
        exported
    }

    /// [`ConnectionStore::force_end`] into `due` (appended), each shard's lock held only
    /// while its connections are copied out.
    pub fn force_end_into(&self, now_ms: u64, limit: usize, due: &mut Vec<Due>) -> usize {
        let mut exported = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while exported < limit {
                let Some((key, c, annotation)) = shard.retired.pop() else {
                    break;
                };
                if c.phase == Phase::Ended || c.flushed {
                    continue;
                }
                let delta = c.counters.since(&c.exported);
                due.push(Due {
                    slot: None,
                    key,
                    connection: c,
                    annotation,
                    reason: EndReason::EndOfFlow,
                    delta,
                    end_ms: now_ms,
                });
                exported += 1;
            }
            let Shard { index, chunks, .. } = &mut *shard;
            for &slot in index.iter() {
                if exported >= limit {
                    return exported;
                }
                let entry = &mut chunks[slot as usize / CHUNK][slot as usize % CHUNK];
                let c = &mut entry.connection;
                if c.phase == Phase::Ended || c.flushed {
                    continue;
                }
                let delta = c.counters.since(&c.exported);
                due.push(Due {
                    slot: Some((slot, entry.generation)),
                    key: entry.key,
                    connection: *c,
                    annotation: entry.annotation.clone(),
                    reason: EndReason::ForcedEnd,
                    delta,
                    end_ms: now_ms,
                });
                c.exported = c.counters;
                c.last_export_ms = now_ms;
                c.flushed = true;
                exported += 1;
            }
        }
        exported
    }

    /// Exports every connection not yet reported as ended with flowEndReason 4 (forced end)
    /// and empties the store.
    pub fn drain(&self, now_ms: u64, out: impl FnMut(Expired<'_>)) -> usize {
        let exported = self.force_end(now_ms, usize::MAX, out);
        for shard in self.shards.iter() {
            *lock(shard) = Shard::default();
        }
        self.len.store(0, Ordering::Relaxed);
        self.deny_count.store(0, Ordering::Relaxed);
        exported
    }
}
