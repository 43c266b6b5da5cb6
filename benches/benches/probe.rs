//! What the eBPF socket probe costs the traffic it watches: loopback TCP throughput with the
//! probe attached and detached, for small request/response messages (50 bytes each way, the
//! workload with the most send/recv calls per byte) and for bulk transfer (64 KiB writes).
//! A third workload, 1-byte UDP datagrams sent and received by one thread, has no context
//! switches and shows the per-call cost with the least noise. Needs root (CAP_BPF +
//! CAP_PERFMON); prints why and skips otherwise. With bpftool installed, the kernel's own
//! accounting (`kernel.bpf_stats_enabled`, restored afterwards) gives the probe's CPU time
//! per run exactly. `probe/owner_lookup` measures the agent's side: finding one flow end's
//! owner when a record is built.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowex_ebpf::{SocketKey, SocketProbe};
use std::hint::black_box;

const EXCHANGES: u64 = 2_000;
const BULK_BYTES: u64 = 64 << 20;

/// A connected pair with an echo server on its own thread: for every 50-byte request it
/// answers 50 bytes; in bulk mode it reads and discards.
fn pair(bulk: bool) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if bulk {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            } else {
                if s.read_exact(&mut buf[..50]).is_err() {
                    return;
                }
                if s.write_all(&buf[..50]).is_err() {
                    return;
                }
            }
        }
    });
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn request_response(s: &mut TcpStream) {
    let mut buf = [7u8; 50];
    for _ in 0..EXCHANGES {
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
    }
}

fn bulk(s: &mut TcpStream) {
    let chunk = vec![1u8; 1 << 16];
    for _ in 0..BULK_BYTES / chunk.len() as u64 {
        s.write_all(&chunk).unwrap();
    }
}

const DATAGRAMS: u64 = 10_000;

fn udp_send_recv(tx: &UdpSocket, rx: &UdpSocket) {
    let mut buf = [0u8; 8];
    for _ in 0..DATAGRAMS {
        tx.send(&[1]).unwrap();
        rx.recv(&mut buf).unwrap();
    }
}

/// (runs, nanoseconds) of the probe's programs from `bpftool -j prog show`, if available.
fn probe_run_stats() -> Option<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Flat scan of the JSON array for our two programs' run_cnt / run_time_ns.
    let mut runs = 0;
    let mut nanos = 0;
    for program in text.split("},{") {
        let ours = ["sock_send_lengt", "sock_recv_lengt", "send_btf", "recv_btf"]
            .iter()
            .any(|name| program.contains(&format!("\"name\":\"{name}")));
        if ours {
            let field = |name: &str| -> u64 {
                program
                    .split(&format!("\"{name}\":"))
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            runs += field("run_cnt");
            nanos += field("run_time_ns");
        }
    }
    Some((runs, nanos))
}

fn measure(c: &mut Criterion, label: &str, probe: Option<&SocketProbe>) {
    let mut group = c.benchmark_group(format!("probe/{label}"));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    let mut rr = pair(false);
    group.throughput(Throughput::Elements(EXCHANGES));
    let before = probe.map(SocketProbe::stats);
    group.bench_function("tcp_rr_50B_2000_exchanges", |b| {
        b.iter(|| request_response(&mut rr))
    });
    if let (Some(probe), Some(before)) = (probe, before) {
        let after = probe.stats();
        println!(
            "probe/{label}: rr: {} send/recv calls seen, {} owners recorded, {} map errors",
            after.calls - before.calls,
            after.recorded - before.recorded,
            after.map_errors - before.map_errors
        );
    }
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    group.throughput(Throughput::Elements(DATAGRAMS * 2));
    group.bench_function("udp_send_recv_1B_one_thread", |b| {
        b.iter(|| udp_send_recv(&tx, &rx))
    });
    let mut stream = pair(true);
    group.throughput(Throughput::Bytes(BULK_BYTES));
    group.bench_function("tcp_bulk_64MiB", |b| b.iter(|| bulk(&mut stream)));
    group.finish();
}

/// What attribution costs the agent per record: looking up one flow end in the owner
/// maps, for a local socket (found by its exact tuple) and for a remote end (the exact
/// lookup and the address-to-namespace lookup both miss).
fn lookups(c: &mut Criterion, probe: &SocketProbe) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(server).unwrap();
    client.write_all(b"x").unwrap();
    let local = client.local_addr().unwrap();
    let found = SocketKey::new(6, local.ip(), local.port(), server.ip(), server.port());
    assert!(probe.owners().find(&found).is_some());
    let remote_ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let remote = SocketKey::new(6, remote_ip, 443, local.ip(), local.port());
    assert!(probe.owners().find(&remote).is_none());
    let mut group = c.benchmark_group("probe/owner_lookup");
    group.bench_function("local_end_exact", |b| {
        b.iter(|| probe.owners().find(black_box(&found)))
    });
    group.bench_function("remote_end_miss", |b| {
        b.iter(|| probe.owners().find(black_box(&remote)))
    });
    group.finish();
}

fn probe_overhead(c: &mut Criterion) {
    measure(c, "detached", None);
    let probe = match SocketProbe::load(65_536, None) {
        Ok(probe) => {
            run_time(&probe, "tp_btf");
            probe
        }
        Err(error) => {
            println!("probe/attached: skipped: {error} (run as root)");
            return;
        }
    };
    measure(c, "attached_tp_btf", Some(&probe));
    lookups(c, &probe);
    match SocketProbe::load_tracepoints(65_536, None) {
        Ok(classic) => {
            drop(probe);
            measure(c, "attached_tracepoint", Some(&classic));
            run_time(&classic, "tracepoint");
        }
        Err(error) => println!("probe/attached_tracepoint: skipped: {error}"),
    }
}

/// `_probe` is the probe being measured: only it must be loaded while this runs.
fn run_time(_probe: &SocketProbe, label: &str) {
    // The kernel's accounting of the probe's own CPU time, on the one-thread UDP workload.
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(sysctl).unwrap_or_default();
    if std::fs::write(sysctl, "1").is_ok() {
        let before = probe_run_stats();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        for _ in 0..100 {
            udp_send_recv(&tx, &rx);
        }
        let after = probe_run_stats();
        let _ = std::fs::write(sysctl, previous.trim());
        match (before, after) {
            (Some((r0, n0)), Some((r1, n1))) if r1 > r0 => println!(
                "probe/run_time/{label}: {} runs, {:.1} ns of probe CPU per send/recv call (kernel.bpf_stats_enabled)",
                r1 - r0,
                (n1 - n0) as f64 / (r1 - r0) as f64
            ),
            _ => println!("probe/run_time: skipped: bpftool not installed or no runs counted"),
        }
    }
}

criterion_group!(benches, probe_overhead);
criterion_main!(benches);
