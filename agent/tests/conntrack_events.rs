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

use flowex_agent::conntrack::{
    ConntrackEntry, ConntrackEvents, ConntrackSocket, DEFAULT_EVENT_BUFFER, DumpFilter,
    EventGroups, EventKind, Received,
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
                Received::Events(_) | Received::Idle => {}
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
                Received::Events(_) => mirror.extend(seen),
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
