//! A full conntrack dump + parse of 100k and 500k entries, next to a bare netlink receive
//! loop that only counts bytes (the kernel's cost: our floor) and `conntrack -L -o extended`.
//! And `poll_netlink`, Antrea's real-netlink poll benchmark: 32,768 connections in the
//! agent's zone plus 32,768 in another zone, polled through the full path (kernel-side zone
//! filter, parse, store update), with B/op and allocs/op.
//! Needs root: it creates a network namespace, loads synthetic entries with `conntrack -R`,
//! and (for 500k) raises the global nf_conntrack_max, restoring it afterwards.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowex_agent::sources::conntrack::{ConntrackSocket, DumpFilter};
use flowex_agent::store::{ConnectionStore, Timeouts};
use flowex_benches::{CountingAllocator, alloc_snapshot};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// A namespace holding a synthetic table; restores nf_conntrack_max and deletes itself.
struct Table {
    name: String,
    old_max: Option<String>,
}

impl Table {
    fn load(entries: u32) -> Self {
        Self::load_zones(entries, &[0])
    }

    /// `entries` spread evenly over `zones`.
    fn load_zones(entries: u32, zones: &[u16]) -> Self {
        let name = format!("fxbench{}-{entries}-{}", std::process::id(), zones.len());
        let old_max = std::fs::read_to_string(MAX_PATH).ok();
        let needed = u64::from(entries) * 2;
        if old_max
            .as_deref()
            .and_then(|m| m.trim().parse::<u64>().ok())
            .is_some_and(|m| m < needed)
        {
            std::fs::write(MAX_PATH, needed.to_string()).expect("raise nf_conntrack_max");
        }
        run(&["ip", "netns", "add", &name]);
        let path = std::env::temp_dir().join(format!("{name}.txt"));
        let lines: String = (0..entries)
            .map(|i| {
                format!(
                    "-I -s 10.{}.{}.{} -d 192.0.2.{} -p tcp --sport {} --dport 443 --state ESTABLISHED -t 3600 -u SEEN_REPLY -w {}\n",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff,
                    i % 200,
                    1024 + i % 60_000,
                    zones[i as usize % zones.len()]
                )
            })
            .collect();
        std::fs::write(&path, lines).expect("write table");
        run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "conntrack",
            "-R",
            path.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(path);
        Self { name, old_max }
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let file = File::open(format!("/var/run/netns/{}", self.name)).expect("netns");
        // SAFETY: setns on a valid namespace fd changes only this thread's netns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns failed");
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if let Some(old) = &self.old_max {
            let _ = std::fs::write(MAX_PATH, old.trim());
        }
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?} failed");
}

fn dump(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("conntrack_dump: skipped: needs root (network namespaces, conntrack -R)");
        return;
    }
    let host = File::open("/proc/self/ns/net").expect("own netns");
    for entries in [100_000u32, 500_000] {
        let table = Table::load(entries);
        table.enter();
        let mut socket = ConntrackSocket::open().expect("ctnetlink");
        let filter = DumpFilter::default();

        // Allocations per entry, over one whole dump.
        let before = alloc_snapshot();
        let mut seen = 0u64;
        socket.dump(&filter, |_| seen += 1).expect("dump");
        let after = alloc_snapshot();
        assert_eq!(seen, u64::from(entries));
        println!(
            "conntrack_dump/{entries}: {} entries, {} allocations in the dump ({:.6}/entry)",
            seen,
            after.allocations - before.allocations,
            (after.allocations - before.allocations) as f64 / seen as f64
        );

        let mut group = c.benchmark_group(format!("conntrack_dump/{entries}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(if entries > 200_000 { 30 } else { 10 }));
        group.throughput(Throughput::Elements(u64::from(entries)));
        group.bench_function("bare_receive", |b| {
            b.iter(|| socket.dump_bytes(&filter).expect("dump"))
        });
        group.bench_function("dump_and_parse", |b| {
            b.iter(|| {
                let mut octets = 0u64;
                socket
                    .dump(&filter, |e| octets += u64::from(e.original.source_port))
                    .expect("dump");
                octets
            })
        });
        // The agent's poll: dump + parse + store update (entries already known after the
        // first round, as in steady state). CPU time is read from getrusage.
        let store = ConnectionStore::new(Timeouts {
            active_ms: 5_000,
            idle_ms: 15_000,
            deny_idle_ms: 15_000,
        });
        let poll = |socket: &mut ConntrackSocket| {
            let generation = store.begin_poll();
            socket
                .dump(&filter, |e| store.update(e, generation, 0))
                .expect("dump");
        };
        poll(&mut socket);
        let (user0, sys0) = cpu_seconds();
        let rounds = 5;
        for _ in 0..rounds {
            poll(&mut socket);
        }
        let (user1, sys1) = cpu_seconds();
        println!(
            "conntrack_dump/{entries}/poll_into_store: {:.1} ms user + {:.1} ms system CPU per poll, {} connections in the store",
            (user1 - user0) * 1e3 / f64::from(rounds),
            (sys1 - sys0) * 1e3 / f64::from(rounds),
            store.len()
        );
        group.bench_function("poll_into_store", |b| b.iter(|| poll(&mut socket)));
        let name = table.name.clone();
        group.bench_function("conntrack_cli", |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                for _ in 0..iterations {
                    let status = Command::new("ip")
                        .args(["netns", "exec", &name, "conntrack", "-L", "-o", "extended"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("conntrack");
                    assert!(status.success());
                }
                started.elapsed()
            })
        });
        group.finish();
        // Back to the host namespace before the table is deleted.
        // SAFETY: as above, with the fd of our original namespace.
        unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) };
        drop(socket);
        drop(table);
    }
}

/// User and system CPU seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: rusage is plain data, written whole by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

/// Antrea's integration benchmark: 32,768 connections in the agent's zone (7) and 32,768 in
/// zone 8, one poll per op through the full path into the store.
fn poll_netlink(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("poll_netlink: skipped: needs root (network namespaces, conntrack -R)");
        return;
    }
    let host = File::open("/proc/self/ns/net").expect("own netns");
    let table = Table::load_zones(65_536, &[7, 8]);
    table.enter();
    let mut socket = ConntrackSocket::open().expect("ctnetlink");
    let filter = DumpFilter {
        zone: Some(7),
        ..DumpFilter::default()
    };
    let store = ConnectionStore::new(Timeouts {
        active_ms: 5_000,
        idle_ms: 15_000,
        deny_idle_ms: 15_000,
    });
    let poll = |socket: &mut ConntrackSocket| {
        let generation = store.begin_poll();
        let stats = socket
            .dump(&filter, |e| store.update(e, generation, 0))
            .expect("dump");
        stats.entries
    };
    // The first poll inserts; steady-state polls (what the benchmark times) update.
    let first = alloc_snapshot();
    assert_eq!(poll(&mut socket), 32_768);
    let inserted = alloc_snapshot();
    let rounds = 5u32;
    let (user0, sys0) = cpu_seconds();
    for _ in 0..rounds {
        poll(&mut socket);
    }
    let (user1, sys1) = cpu_seconds();
    let after = alloc_snapshot();
    assert_eq!(store.len(), 32_768);
    println!(
        "poll_netlink/32k_of_64k: first poll {} allocations / {} B (the store growing); then per poll {:.1} allocations, {:.1} B, {:.1} ms user + {:.1} ms system CPU",
        inserted.allocations - first.allocations,
        inserted.bytes - first.bytes,
        (after.allocations - inserted.allocations) as f64 / f64::from(rounds),
        (after.bytes - inserted.bytes) as f64 / f64::from(rounds),
        (user1 - user0) * 1e3 / f64::from(rounds),
        (sys1 - sys0) * 1e3 / f64::from(rounds),
    );
    let mut group = c.benchmark_group("poll_netlink");
    group.sample_size(20);
    group.throughput(Throughput::Elements(32_768));
    group.bench_function("32k_in_zone_of_64k", |b| b.iter(|| poll(&mut socket)));
    group.finish();
    // SAFETY: setns with the fd of our original namespace.
    unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) };
    drop(socket);
    drop(table);
}

criterion_group!(benches, poll_netlink, dump);
criterion_main!(benches);
