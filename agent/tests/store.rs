//! Connection store and expiry: exact reasons, deltas and deletion.

use std::net::IpAddr;

use flowex_agent::sources::conntrack::{ConntrackEntry, Counters as CtCounters, Tuple};
use flowex_agent::sources::deny::{DenyEvent, PacketTuple};
use flowex_agent::store::{ConnectionStore, Counters, EndReason, Timeouts};

const ACTIVE: u64 = 5_000;
const IDLE: u64 = 15_000;
const DENY_IDLE: u64 = 10_000;

fn store() -> ConnectionStore {
    ConnectionStore::new(Timeouts {
        active_ms: ACTIVE,
        idle_ms: IDLE,
        deny_idle_ms: DENY_IDLE,
    })
}

fn entry(port: u16, packets: u64, bytes: u64) -> ConntrackEntry {
    let tuple = |src: [u8; 4], dst: [u8; 4], sport, dport| Tuple {
        source: IpAddr::from(src),
        destination: IpAddr::from(dst),
        protocol: 6,
        source_port: sport,
        destination_port: dport,
        ..Tuple::default()
    };
    ConntrackEntry {
        family: 2,
        original: tuple([10, 0, 0, 1], [10, 0, 0, 2], port, 80),
        reply: tuple([10, 0, 0, 2], [10, 0, 0, 1], 80, port),
        original_counters: Some(CtCounters { packets, bytes }),
        reply_counters: Some(CtCounters {
            packets: packets / 2,
            bytes: bytes * 3,
        }),
        tcp_state: Some(3),
        ..ConntrackEntry::default()
    }
}

fn expire(store: &ConnectionStore, now: u64) -> Vec<(u16, EndReason, Counters)> {
    let mut out = Vec::new();
    store.expire(now, true, |e| {
        out.push((e.key.source_port, e.reason, e.delta))
    });
    out
}

fn counters(packets: u64, bytes: u64) -> Counters {
    Counters {
        packets,
        bytes,
        reply_packets: packets / 2,
        reply_bytes: bytes * 3,
    }
}

#[test]
fn active_connections_are_exported_every_active_timeout_with_deltas() {
    let store = store();
    let g = store.begin_poll();
    store.update(entry(1000, 10, 1000), g, 0);
    assert!(expire(&store, ACTIVE - 1).is_empty());
    assert_eq!(
        expire(&store, ACTIVE),
        [(1000, EndReason::ActiveTimeout, counters(10, 1000))]
    );
    let g = store.begin_poll();
    store.update(entry(1000, 30, 4000), g, ACTIVE + 100);
    assert!(expire(&store, 2 * ACTIVE - 1).is_empty());
    let delta = Counters {
        packets: 20,
        bytes: 3000,
        reply_packets: 10,
        reply_bytes: 9000,
    };
    assert_eq!(
        expire(&store, 2 * ACTIVE),
        [(1000, EndReason::ActiveTimeout, delta)]
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn an_idle_connection_is_reported_once_then_again_when_it_resumes() {
    let store = store();
    let mut now = 0;
    store.update(entry(2000, 5, 500), store.begin_poll(), now);
    // Exported at the active timeouts (5 s, 10 s); at 15 s the idle timeout wins.
    let mut reasons = Vec::new();
    while now <= IDLE + ACTIVE {
        now += 1_000;
        let g = store.begin_poll();
        store.update(entry(2000, 5, 500), g, now); // unchanged counters, still present
        reasons.extend(expire(&store, now).into_iter().map(|(_, r, _)| r));
    }
    assert_eq!(
        reasons,
        [
            EndReason::ActiveTimeout,
            EndReason::ActiveTimeout,
            EndReason::IdleTimeout
        ]
    );
    // It resumes: active reports again, with the new bytes only.
    store.update(entry(2000, 6, 800), store.begin_poll(), now);
    let resumed = expire(&store, now + IDLE);
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].2.bytes, 300);
}

#[test]
fn an_ended_connection_is_exported_once_with_final_counters_then_deleted() {
    let store = store();
    store.update(entry(3000, 4, 400), store.begin_poll(), 0);
    let mut ended = entry(3000, 9, 900);
    ended.tcp_state = Some(7); // TIME_WAIT, read by the targeted get
    store.end(ended, 100);
    assert_eq!(
        expire(&store, 100),
        [(3000, EndReason::EndOfFlow, counters(9, 900))]
    );
    // Later dumps still list it in TIME_WAIT: it is not exported again.
    let g = store.begin_poll();
    store.update(ended, g, 1_000);
    assert!(expire(&store, IDLE + 200).is_empty());
    assert_eq!(store.len(), 1);
    // Once two polls no longer list it, it is forgotten without another record.
    store.begin_poll();
    store.begin_poll();
    assert!(expire(&store, 3 * IDLE).is_empty());
    assert!(store.is_empty());
    // A drain at shutdown does not report it again either.
    let store2 = self::store();
    store2.end(ended, 0);
    assert_eq!(expire(&store2, 0).len(), 1);
    assert_eq!(store2.drain(1, |_| {}), 0);
}

#[test]
fn a_connection_missing_from_two_polls_is_ended() {
    let store = store();
    store.update(entry(4000, 1, 100), store.begin_poll(), 0);
    store.update(entry(4001, 1, 100), store.begin_poll(), 0);
    // Two polls in which 4000 does not appear.
    let g = store.begin_poll();
    store.update(entry(4001, 2, 200), g, 1_000);
    let g = store.begin_poll();
    store.update(entry(4001, 3, 300), g, 2_000);
    let out = expire(&store, ACTIVE);
    let ended: Vec<_> = out
        .iter()
        .filter(|(_, r, _)| *r == EndReason::EndOfFlow)
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, 4000);
    assert!(store.get(&entry(4000, 0, 0).original.key(0)).is_none());
    assert_eq!(store.len(), 1);
}

#[test]
fn denials_of_one_tuple_aggregate_and_export_after_their_idle_timeout() {
    let store = store();
    let tuple = PacketTuple {
        source: IpAddr::from([10, 0, 0, 9]),
        destination: IpAddr::from([10, 0, 0, 2]),
        protocol: 6,
        source_port: 5555,
        destination_port: 22,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        ip_length: 60,
    };
    let event = DenyEvent {
        tuple,
        hook: 1,
        in_ifindex: Some(2),
        out_ifindex: None,
        mark: 0,
        timestamp: None,
        prefix: "flowex:shop/deny-ssh/ingress-0",
        policy: None,
    };
    for t in [0, 1_000, 2_000] {
        store.deny(&event, t);
    }
    assert!(expire(&store, DENY_IDLE).is_empty()); // the last denial was at 2 s
    let out = expire(&store, 2_000 + DENY_IDLE);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1, EndReason::IdleTimeout);
    assert_eq!((out[0].2.packets, out[0].2.bytes), (3, 180));
    assert!(store.is_empty());
    assert_eq!(&*store.prefix(1), "flowex:shop/deny-ssh/ingress-0");
}

#[test]
fn drain_exports_everything_as_forced_end() {
    let store = store();
    let g = store.begin_poll();
    for port in 0..100 {
        store.update(entry(port, 2, 200), g, 0);
    }
    let mut forced = 0;
    store.drain(10, |e| {
        assert_eq!(e.reason, EndReason::ForcedEnd);
        assert_eq!(e.delta, counters(2, 200));
        forced += 1;
    });
    assert_eq!(forced, 100);
    assert!(store.is_empty());
}

/// `entry` with a conntrack id, a kernel start time (ms) and a TCP state.
fn connection(
    port: u16,
    id: u32,
    start_ms: Option<u64>,
    state: u8,
    packets: u64,
) -> ConntrackEntry {
    ConntrackEntry {
        id,
        start_ns: start_ms.map(|ms| ms * 1_000_000),
        tcp_state: Some(state),
        ..entry(port, packets, packets * 100)
    }
}

fn expire_with_starts(store: &ConnectionStore, now: u64) -> Vec<(u64, EndReason, Counters)> {
    let mut out = Vec::new();
    store.expire(now, true, |e| {
        out.push((e.connection.start_ms, e.reason, e.delta))
    });
    out.sort_by_key(|(start, ..)| *start);
    out
}

#[test]
fn an_end_event_ends_a_connection_whatever_its_state() {
    // A DESTROY of an ESTABLISHED entry (a flush, a timeout) or a UDP exchange: the
    // entry's own state says nothing of an end, the event does.
    let store = store();
    store.update(connection(1000, 7, Some(100), 3, 10), 0, 100);
    store.end(connection(1000, 7, Some(100), 3, 12), 200);
    assert_eq!(
        expire_with_starts(&store, 200),
        [(100, EndReason::EndOfFlow, counters(12, 1200))]
    );
    // No TCP state at all (UDP).
    let udp = |packets| ConntrackEntry {
        tcp_state: None,
        ..connection(2000, 9, Some(150), 0, packets)
    };
    store.update(udp(4), 0, 150);
    store.end(udp(6), 250);
    assert_eq!(
        expire_with_starts(&store, 250),
        [(150, EndReason::EndOfFlow, counters(6, 600))]
    );
}

#[test]
fn a_reused_tuple_with_a_new_id_ends_the_old_connection_and_starts_from_zero() {
    let store = store();
    store.update(connection(1000, 7, Some(100), 3, 10), 0, 100);
    // TIME_WAIT (7): the old one's final record is due at once.
    store.end(connection(1000, 7, Some(100), 7, 12), 200);
    assert_eq!(
        expire_with_starts(&store, 200),
        [(100, EndReason::EndOfFlow, counters(12, 1200))]
    );
    // The client reuses the port: another id, another start, counters from zero.
    store.create(connection(1000, 8, None, 1, 1), 300);
    store.update(connection(1000, 8, Some(300), 3, 5), 0, 400);
    store.end(connection(1000, 8, Some(300), 7, 9), 500);
    let out = expire_with_starts(&store, 500);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].1, EndReason::EndOfFlow);
    assert_eq!(out[0].2, counters(9, 900));
    assert_eq!(store.len(), 1);
}

#[test]
fn a_reused_tuple_with_the_same_id_is_told_apart_by_its_new_event_or_state() {
    // The kernel's id hashes the entry's address: a new entry in the old one's memory
    // gets the old id.
    for second in [
        "new event",
        "syn state in an update",
        "counters back in a dump",
    ] {
        let store = store();
        store.create(connection(1000, 7, None, 1, 1), 100);
        store.end(connection(1000, 7, Some(100), 7, 12), 200);
        assert_eq!(expire(&store, 200).len(), 1);
        match second {
            "new event" => store.create(connection(1000, 7, None, 1, 1), 300),
            "syn state in an update" => store.update(
                ConntrackEntry {
                    original_counters: None,
                    reply_counters: None,
                    ..connection(1000, 7, None, 2, 0)
                },
                0,
                300,
            ),
            _ => store.update(connection(1000, 7, Some(300), 7, 3), 0, 300),
        }
        store.end(connection(1000, 7, Some(300), 7, 4), 400);
        assert_eq!(
            expire(&store, 400),
            [(1000, EndReason::EndOfFlow, counters(4, 400))],
            "{second}"
        );
    }
}

/// A poll's dump saw a connection through to TIME_WAIT before its NEW event was read: the
/// late NEW (same id, no start) must not make a second connection of the same entry. The
/// caller's get then brings the kernel's entry: the same start changes nothing, another
/// start is a new connection of the tuple.
#[test]
fn a_new_event_older_than_the_dump_is_checked_before_it_is_applied() {
    let store = store();
    store.update(connection(1000, 7, Some(100), 7, 12), 1, 200);
    assert_eq!(
        expire_with_starts(&store, 200),
        [(100, EndReason::EndOfFlow, counters(12, 1200))]
    );
    // The late NEW is held back for a get.
    assert!(!store.create_unless_stale(connection(1000, 7, None, 1, 1), 250));
    // The get finds the same entry (same start): nothing to export again.
    store.update(connection(1000, 7, Some(100), 7, 12), 0, 260);
    assert_eq!(expire_with_starts(&store, 300), []);
    // A NEW for a tuple the store does not hold, or whose connection is live, applies.
    assert!(store.create_unless_stale(connection(2000, 9, None, 1, 1), 300));
    assert_eq!(store.len(), 2);
    // A NEW (same id) whose get shows another start is a new connection of the tuple.
    assert!(!store.create_unless_stale(connection(1000, 7, None, 1, 1), 400));
    store.update(connection(1000, 7, Some(400), 7, 3), 0, 410);
    assert_eq!(
        expire_with_starts(&store, 410),
        [(400, EndReason::EndOfFlow, counters(3, 300))]
    );
}

#[test]
fn an_unexported_old_connection_is_retired_and_its_late_destroy_is_its_own() {
    let store = store();
    store.update(connection(1000, 7, Some(100), 3, 10), 0, 100);
    // The new connection is seen before the old one's end was exported.
    store.update(connection(1000, 8, Some(300), 3, 2), 0, 300);
    // The old one's DESTROY comes late, with its final counters.
    store.end(connection(1000, 7, Some(100), 7, 11), 310);
    let out = expire_with_starts(&store, 310);
    assert_eq!(out, [(100, EndReason::EndOfFlow, counters(11, 1100))]);
    // The new one goes on from its own counters.
    assert_eq!(
        expire_with_starts(&store, 300 + ACTIVE),
        [(300, EndReason::ActiveTimeout, counters(2, 200))]
    );
}

#[test]
fn a_limited_expiry_leaves_the_rest_due_and_loses_nothing() {
    let store = store();
    for port in 0..1_000 {
        store.update(entry(port, 1, 100), 0, 0);
    }
    let mut seen = std::collections::HashSet::new();
    let mut rounds = 0;
    loop {
        let mut out = Vec::new();
        let n = store.expire_limited(ACTIVE, true, 64, |e| out.push(e.key.source_port));
        assert_eq!(n, out.len());
        assert!(n <= 64);
        for port in out {
            assert!(seen.insert(port), "port {port} twice");
        }
        rounds += 1;
        if n < 64 {
            break;
        }
    }
    assert_eq!(seen.len(), 1_000);
    assert_eq!(rounds, 1_000 / 64 + 1);
    // Counted once: nothing more is due until the next active timeout.
    assert!(expire(&store, ACTIVE).is_empty());
}

#[test]
fn force_end_goes_on_where_it_stopped_and_keeps_the_connections() {
    let store = store();
    for port in 0..10 {
        store.update(entry(port, 3, 300), 0, 0);
    }
    let mut ports = Vec::new();
    assert_eq!(store.force_end(10, 4, |e| ports.push(e.key.source_port)), 4);
    assert_eq!(store.unflushed(), 6);
    assert_eq!(
        store.force_end(10, 100, |e| ports.push(e.key.source_port)),
        6
    );
    assert_eq!(store.force_end(10, 100, |_| panic!("flushed twice")), 0);
    ports.sort_unstable();
    assert_eq!(ports, (0..10).collect::<Vec<_>>());
    assert_eq!(store.unflushed(), 0);
    assert_eq!(store.len(), 10);
    // Saved as flushed: counters exported up to now, not ended.
    let saved = store.saved_connections();
    assert_eq!(saved.len(), 10);
    assert!(
        saved
            .iter()
            .all(|s| !s.ended && s.exported == counters(3, 300))
    );
}

#[test]
fn a_resumed_store_continues_deltas_and_does_not_repeat_ended_connections() {
    let before = store();
    before.update(connection(1000, 7, Some(100), 3, 10), 0, 100);
    before.end(connection(1001, 9, Some(100), 7, 4), 100);
    assert_eq!(expire(&before, 100).len(), 1);
    before.force_end(200, usize::MAX, |_| {});
    let saved = before.saved_connections();

    let after = store();
    after.resume(saved);
    let g = after.begin_poll();
    // The established one grew; the ended one is still in TIME_WAIT.
    after.update(connection(1000, 7, Some(100), 3, 15), g, 300);
    after.update(connection(1001, 9, Some(100), 7, 4), g, 300);
    assert_eq!(after.finish_resume(), 0);
    let out = expire(&after, 300 + ACTIVE);
    assert_eq!(out, [(1000, EndReason::ActiveTimeout, counters(5, 500))]);

    // A saved tuple taken by another connection (another id) starts from zero; what the
    // first poll did not find is forgotten.
    let again = store();
    again.resume(after.saved_connections());
    let g = again.begin_poll();
    again.update(connection(1000, 99, Some(900), 3, 2), g, 1000);
    assert_eq!(again.finish_resume(), 1);
    assert_eq!(
        expire(&again, 1000 + ACTIVE),
        [(1000, EndReason::ActiveTimeout, counters(2, 200))]
    );
}

/// What the record builder keeps with a connection stays with that connection: a due copy
/// annotates its own slot, and not the newer connection that took its tuple meanwhile.
#[test]
fn an_annotation_stays_with_its_connection_and_never_reaches_a_newer_one() {
    use flowex_agent::store::{Annotation, Due};
    use std::sync::Arc;
    let store = store();
    let mut first = entry(4100, 1, 100);
    first.id = 1;
    store.update(first, 0, 0);
    let mut due: Vec<Due> = Vec::new();
    store.expire_into(ACTIVE, false, usize::MAX, &mut due);
    assert_eq!(due.len(), 1);
    assert!(due[0].annotation.is_empty());
    assert!(store.annotate(&due[0], Annotation::new(Arc::new(7u32))));
    // The next export carries it.
    store.update(entry(4100, 2, 200), 0, ACTIVE + 1);
    let mut again: Vec<Due> = Vec::new();
    store.expire_into(2 * ACTIVE, false, usize::MAX, &mut again);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].annotation.get::<u32>(), Some(&7));
    // A new connection of the tuple (another conntrack id) takes the slot: the old copy
    // can no longer annotate, and the new connection starts bare.
    let mut second = entry(4100, 1, 100);
    second.id = 2;
    store.update(second, 0, 2 * ACTIVE + 1);
    assert!(!store.annotate(&again[0], Annotation::new(Arc::new(8u32))));
    let mut after: Vec<Due> = Vec::new();
    store.expire_into(4 * ACTIVE, false, usize::MAX, &mut after);
    let mut seen: Vec<(u32, EndReason, Option<u32>)> = after
        .iter()
        .map(|d| {
            (
                d.connection.conntrack_id,
                d.reason,
                d.annotation.get::<u32>().copied(),
            )
        })
        .collect();
    seen.sort_by_key(|s| s.0);
    // The old one's final record keeps its own annotation; the new one has none.
    assert_eq!(
        seen,
        [
            (1, EndReason::EndOfFlow, Some(7)),
            (2, EndReason::ActiveTimeout, None)
        ]
    );
    // The retired one's copy annotates nothing; the new one's annotates its own slot.
    let old = after
        .iter()
        .find(|d| d.connection.conntrack_id == 1)
        .unwrap();
    let new = after
        .iter()
        .find(|d| d.connection.conntrack_id == 2)
        .unwrap();
    assert!(!store.annotate(old, Annotation::new(Arc::new(9u32))));
    assert!(store.annotate(new, Annotation::new(Arc::new(10u32))));
}
