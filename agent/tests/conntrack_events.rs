//! Conntrack events against the real kernel: ended connections are seen with their final
//! counters, flushes lose nothing with the default buffer, and lost events are recovered by
//! a resync dump.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use flowex_agent::sources::conntrack::{
    ConntrackEntry, ConntrackEvents, ConntrackSocket, DEFAULT_EVENT_BUFFER, DumpFilter,
    EventGroups, EventKind, GET_BATCH, Received,
};
use support::{Netns, Pair, conntrack_cli};

/// (packets, bytes) of the original and the reply direction.
type FinalCounters = ((u64, u64), (u64, u64));

/// The tests here that measure delivery run one at a time, so that a busy neighbour
/// does not starve the receiving thread (what the kernel guarantees is that nothing is lost
/// silently: a loss is reported as ENOBUFS, and the agent answers it with a resync).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const TIME_WAIT: u8 = 7;
const CLOSE: u8 = 8;

#[test]
fn short_connections_are_seen_with_final_counters() {
    let _serial = serial();
    let pair = Pair::new();
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let connections = 20u16;
    let done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let watcher = {
        let done = Arc::clone(&done);
        pair.server.enter_async(move || {
            let mut events = ConntrackEvents::subscribe(EventGroups::ALL, DEFAULT_EVENT_BUFFER)
                .expect("subscribe");
            let mut socket = ConntrackSocket::open().expect("socket");
            ready_tx.send(()).unwrap();
            // final (packets, bytes) both ways, by client port, read by a targeted get
            let mut finals: HashMap<u16, FinalCounters> = HashMap::new();
            let mut ended = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while finals.len() < usize::from(connections) && Instant::now() < deadline {
                ended.clear();
                events
                    .receive(Some(Duration::from_millis(100)), |kind, entry| {
                        if kind == EventKind::Update
                            && matches!(entry.tcp_state, Some(TIME_WAIT) | Some(CLOSE))
                        {
                            ended.push(*entry);
                        }
                    })
                    .expect("receive");
                for entry in &ended {
                    let mut fresh = ConntrackEntry::default();
                    if socket
                        .get(&entry.original, entry.zone, &mut fresh)
                        .expect("get")
                    {
                        let o = fresh.original_counters.expect("acct is on");
                        let r = fresh.reply_counters.expect("acct is on");
                        finals.insert(
                            fresh.original.source_port,
                            ((o.packets, o.bytes), (r.packets, r.bytes)),
                        );
                    }
                }
                if done.load(Ordering::Acquire) && finals.len() >= usize::from(connections) {
                    break;
                }
            }
            finals
        })
    };
    ready_rx.recv().unwrap();

    let listener = pair
        .server
        .enter(|| TcpListener::bind("10.200.0.2:7000").unwrap());
    let server = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 100];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&[9u8; 200]).unwrap();
        }
    });
    pair.client.enter(move || {
        for _ in 0..connections {
            let mut stream = TcpStream::connect("10.200.0.2:7000").unwrap();
            stream.write_all(&[1u8; 100]).unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).unwrap();
            assert_eq!(reply.len(), 200);
        }
    });
    server.join().unwrap();
    done.store(true, Ordering::Release);
    let finals = watcher.join().unwrap();
    assert_eq!(finals.len(), usize::from(connections));
    // The counters read at TIME_WAIT are final: conntrack -L (entries linger in
    // TIME_WAIT) reports the same numbers.
    let cli = conntrack_cli(&pair.server);
    for (port, (original, reply)) in &finals {
        let entry = cli
            .iter()
            .find(|e| e.original.2 == *port && e.original.3 == 7000)
            .unwrap_or_else(|| panic!("no CLI entry for port {port}"));
        assert_eq!(entry.original_counters, *original, "port {port}");
        assert_eq!(entry.reply_counters, *reply, "port {port}");
    }
}

#[test]
fn destroy_events_carry_final_counters() {
    let _serial = serial();
    let pair = Pair::new();
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let listener = pair
        .server
        .enter(|| TcpListener::bind("10.200.0.2:7001").unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1000];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(&[3u8; 3000]).unwrap();
        stream
    });
    let client = pair.client.enter(|| {
        let mut stream = TcpStream::connect("10.200.0.2:7001").unwrap();
        stream.write_all(&[1u8; 1000]).unwrap();
        let mut reply = [0u8; 3000];
        stream.read_exact(&mut reply).unwrap();
        stream
    });
    std::thread::sleep(Duration::from_millis(200));
    let before = conntrack_cli(&pair.server);
    assert_eq!(before.len(), 1);
    let (tx, rx) = mpsc::channel();
    let watcher = pair.server.enter_async(move || {
        let mut events = ConntrackEvents::subscribe(
            EventGroups {
                new: false,
                update: false,
                destroy: true,
            },
            DEFAULT_EVENT_BUFFER,
        )
        .unwrap();
        tx.send(()).unwrap();
        let mut destroyed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while destroyed.is_empty() && Instant::now() < deadline {
            events
                .receive(Some(Duration::from_millis(100)), |kind, entry| {
                    assert_eq!(kind, EventKind::Destroy);
                    destroyed.push(*entry);
                })
                .unwrap();
        }
        destroyed
    });
    rx.recv().unwrap();
    pair.server.exec(&["conntrack", "-F"]);
    let destroyed = watcher.join().unwrap();
    drop((client, server.join().unwrap()));
    assert_eq!(destroyed.len(), 1);
    let entry = &destroyed[0];
    let o = entry.original_counters.unwrap();
    let r = entry.reply_counters.unwrap();
    assert_eq!((o.packets, o.bytes), before[0].original_counters);
    assert_eq!((r.packets, r.bytes), before[0].reply_counters);
}

fn load(ns: &Netns, count: u32) {
    let path = std::env::temp_dir().join(format!("{}-events.txt", ns.name));
    let lines: String = (0..count)
        .map(|i| {
            format!(
                "-I -s 10.{}.{}.{} -d 192.0.2.9 -p udp --sport {} --dport 53 -t 3600\n",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff,
                1024 + i % 60_000
            )
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    ns.exec(&["conntrack", "-R", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_flush_of_100k_entries_loses_no_destroy_event_with_the_default_buffer() {
    let _serial = serial();
    let ns = Netns::new("f");
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let count = 100_000u32;
    load(&ns, count);
    let (tx, rx) = mpsc::channel();
    let watcher = ns.enter_async(move || {
        let mut events = ConntrackEvents::subscribe(
            EventGroups {
                new: false,
                update: false,
                destroy: true,
            },
            DEFAULT_EVENT_BUFFER,
        )
        .unwrap();
        assert!(events.buffer_forced());
        tx.send(()).unwrap();
        let mut destroyed = 0u32;
        let mut lost = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while destroyed < count && Instant::now() < deadline {
            match events
                .receive(Some(Duration::from_millis(500)), |_, _| destroyed += 1)
                .unwrap()
            {
                Received::Lost => lost += 1,
                // quiet after the flush began: nothing more is coming
                Received::Idle if destroyed > 0 => break,
                Received::Messages(_) | Received::Idle => {}
            }
        }
        (destroyed, lost)
    });
    rx.recv().unwrap();
    ns.exec(&["conntrack", "-F"]);
    let (destroyed, lost) = watcher.join().unwrap();
    assert_eq!(lost, 0);
    assert_eq!(destroyed, count);
}

#[test]
fn lost_events_are_recovered_by_a_resync_dump() {
    let _serial = serial();
    let ns = Netns::new("r");
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let watcher = ns.enter_async(move || {
        // A tiny buffer, so a burst overflows it.
        let mut events = ConntrackEvents::subscribe(
            EventGroups {
                new: true,
                update: false,
                destroy: false,
            },
            4096,
        )
        .unwrap();
        let mut socket = ConntrackSocket::open().unwrap();
        tx.send(()).unwrap();
        go_rx.recv().unwrap(); // the burst has been loaded
        // The mirror of the table, as an agent keeps it: events add, a loss resyncs.
        // Keyed by source address and port: unique per loaded entry (conntrack ids are
        // 32-bit hashes and may collide among 10k entries).
        let mut mirror: HashSet<(std::net::IpAddr, u16)> = HashSet::new();
        let mut resyncs = 0;
        loop {
            let mut seen = Vec::new();
            match events
                .receive(Some(Duration::from_millis(300)), |_, e| {
                    seen.push((e.original.source, e.original.source_port))
                })
                .unwrap()
            {
                Received::Messages(_) => mirror.extend(seen),
                Received::Lost => {
                    resyncs += 1;
                    mirror.clear();
                    socket
                        .dump(&DumpFilter::default(), |e| {
                            mirror.insert((e.original.source, e.original.source_port));
                        })
                        .unwrap();
                }
                Received::Idle => break,
            }
        }
        let mut live = HashSet::new();
        socket
            .dump(&DumpFilter::default(), |e| {
                live.insert((e.original.source, e.original.source_port));
            })
            .unwrap();
        (mirror, live, resyncs, events.lost())
    });
    rx.recv().unwrap();
    load(&ns, 10_000);
    go_tx.send(()).unwrap();
    let (mirror, live, resyncs, lost) = watcher.join().unwrap();
    assert!(lost >= 1, "the tiny buffer should have overflowed");
    assert!(resyncs >= 1);
    assert_eq!(live.len(), 10_000);
    assert_eq!(mirror, live);
}

/// The kernel-side filter lets through, of a short TCP connection's events, only NEW, the
/// UPDATE into TIME_WAIT and DESTROY, and of a UDP exchange only NEW and DESTROY.
#[test]
fn the_update_filter_keeps_only_what_the_agent_acts_on() {
    let _serial = serial();
    let pair = Pair::new();
    for setting in [
        "net.netfilter.nf_conntrack_events=1",
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        "net.netfilter.nf_conntrack_udp_timeout=1",
    ] {
        pair.server.exec(&["sysctl", "-qw", setting]);
    }
    let connections = 5u16;
    let (ready_tx, ready_rx) = mpsc::channel();
    let watcher = pair.server.enter_async(move || {
        let mut events =
            ConntrackEvents::subscribe(EventGroups::ALL, DEFAULT_EVENT_BUFFER).expect("subscribe");
        events.keep_only_ended_tcp_updates().expect("filter");
        ready_tx.send(()).unwrap();
        // (protocol, kind, TCP state) of every event seen
        let mut seen: Vec<(u8, EventKind, Option<u8>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut destroyed = 0;
        while destroyed < 2 * usize::from(connections) && Instant::now() < deadline {
            events
                .receive(Some(Duration::from_millis(100)), |kind, entry| {
                    seen.push((entry.original.protocol, kind, entry.tcp_state));
                    destroyed += usize::from(kind == EventKind::Destroy);
                })
                .expect("receive");
        }
        seen
    });
    ready_rx.recv().unwrap();
    let server = serve_short_exchanges(&pair.server, connections, 7002, 7003);
    pair.client
        .enter(move || short_exchanges(connections, 7002, 7003));
    server.join().unwrap();
    // The kernel reaps expired entries lazily (its collector may take a minute); a dump
    // evicts the expired ones it walks, with their DESTROY events.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !watcher.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        pair.server.exec(&["conntrack", "-L"]);
    }
    let seen = watcher.join().unwrap();
    let count = |protocol: u8, kind: EventKind| {
        seen.iter()
            .filter(|(p, k, _)| *p == protocol && *k == kind)
            .count()
    };
    let n = usize::from(connections);
    assert_eq!(count(6, EventKind::New), n, "{seen:?}");
    assert_eq!(count(6, EventKind::Update), n, "{seen:?}");
    assert_eq!(count(6, EventKind::Destroy), n, "{seen:?}");
    assert_eq!(count(17, EventKind::New), n, "{seen:?}");
    assert_eq!(count(17, EventKind::Update), 0, "{seen:?}");
    assert_eq!(count(17, EventKind::Destroy), n, "{seen:?}");
    assert!(
        seen.iter()
            .filter(|(_, k, _)| *k == EventKind::Update)
            .all(|(_, _, state)| matches!(state, Some(TIME_WAIT) | Some(CLOSE))),
        "{seen:?}"
    );
}

/// The server side of [`short_exchanges`], bound in `ns` before this returns (so the
/// client cannot connect too early), served on a thread.
fn serve_short_exchanges(
    ns: &Netns,
    connections: u16,
    tcp_port: u16,
    udp_port: u16,
) -> std::thread::JoinHandle<()> {
    let (listener, udp) = ns.enter(move || {
        (
            TcpListener::bind(("10.200.0.2", tcp_port)).unwrap(),
            std::net::UdpSocket::bind(("10.200.0.2", udp_port)).unwrap(),
        )
    });
    std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 100];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&[5u8; 1000]).unwrap();
            drop(stream);
            let mut buffer = [0u8; 64];
            let (n, peer) = udp.recv_from(&mut buffer).unwrap();
            udp.send_to(&buffer[..n], peer).unwrap();
        }
    })
}

/// `connections` TCP exchanges (100 bytes out, 1,000 back, the server closes) and UDP
/// exchanges (64 bytes each way, a new socket each) from the client to 10.200.0.2.
///
/// Every socket stays open until all exchanges are done: a port freed and picked again
/// by a later exchange would make its tuple (and conntrack entry) the same as an earlier
/// one's, one entry fewer than the tests count (a birthday collision among ~28,000
/// ephemeral ports, a few percent of runs with 40 exchanges).
fn short_exchanges(connections: u16, tcp_port: u16, udp_port: u16) {
    let mut open = Vec::with_capacity(usize::from(connections));
    for _ in 0..connections {
        let mut stream = TcpStream::connect(("10.200.0.2", tcp_port)).unwrap();
        stream.write_all(&[1u8; 100]).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 1000);
        let udp = std::net::UdpSocket::bind("10.200.0.1:0").unwrap();
        udp.send_to(&[2u8; 64], ("10.200.0.2", udp_port)).unwrap();
        let mut buffer = [0u8; 64];
        udp.recv_from(&mut buffer).unwrap();
        open.push((stream, udp));
    }
}

/// One batch of gets returns every entry with the counters `conntrack -L` shows, and
/// says which tuples the kernel does not have.
#[test]
fn a_batch_of_gets_reads_each_entry_once() {
    let pair = Pair::new();
    let connections = 40u16;
    let server = serve_short_exchanges(&pair.server, connections, 7004, 7005);
    pair.client
        .enter(move || short_exchanges(connections, 7004, 7005));
    server.join().unwrap();
    let table = conntrack_cli(&pair.server);
    assert_eq!(table.len(), 2 * usize::from(connections));
    let (listed, fetched, missing) = pair.server.enter(|| {
        let mut socket = ConntrackSocket::open().unwrap();
        let mut listed = Vec::new();
        socket
            .dump(&DumpFilter::default(), |e| listed.push(*e))
            .unwrap();
        let mut wanted: Vec<_> = listed.iter().map(|e| (e.original, e.zone)).collect();
        // A tuple conntrack does not have, in the middle of a batch.
        let mut absent = wanted[0];
        absent.0.source_port = 1;
        wanted.insert(5, absent);
        let mut fetched = vec![None; wanted.len()];
        let mut missing = Vec::new();
        let mut fresh = ConntrackEntry::default();
        for (chunk, batch) in wanted.chunks(GET_BATCH).enumerate() {
            socket
                .get_many(batch, &mut fresh, |index, found| match found {
                    Some(entry) => fetched[chunk * GET_BATCH + index] = Some(*entry),
                    None => missing.push(chunk * GET_BATCH + index),
                })
                .unwrap();
        }
        (listed, fetched, missing)
    });
    assert_eq!(missing, vec![5]);
    let fetched: Vec<ConntrackEntry> = fetched.into_iter().flatten().collect();
    assert_eq!(fetched.len(), listed.len());
    for (got, dumped) in fetched.iter().zip(&listed) {
        assert_eq!(got.original, dumped.original);
        assert_eq!(got.id, dumped.id);
        let cli = table
            .iter()
            .find(|c| {
                c.protocol == got.original.protocol && c.original.2 == got.original.source_port
            })
            .expect("listed by conntrack -L");
        let o = got.original_counters.unwrap();
        let r = got.reply_counters.unwrap();
        assert_eq!(
            ((o.packets, o.bytes), (r.packets, r.bytes)),
            (cli.original_counters, cli.reply_counters)
        );
    }
}
