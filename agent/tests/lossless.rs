//! Every connection exported exactly once, nothing lost silently: `flowex run` in real
//! namespaces against real conntrack and collector-sim, through a reused client port, a
//! table far larger than the collector's queue, an agent restart, SIGHUP, collectors that
//! are down or cannot be resolved, and a metrics server out of file descriptors.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector_sim::{Collector, CollectorConfig, Summary};
use serde_json::Value;
use support::{Netns, Pair};

const SERVER: &str = "10.200.0.2";

/// `flowex run` inside a namespace, its log (stdout and stderr) in a file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(ns: &Netns, tag: &str, config: &str) -> Self {
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("{}-{tag}.yaml", ns.name));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{}-{tag}.log", ns.name));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                env!("CARGO_BIN_EXE_flowex"),
                "run",
            ])
            .arg("--config")
            .arg(&config_path)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Self { child, log };
        agent.wait_for_log("running:", Duration::from_secs(20));
        agent
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs the program: the child is the agent itself.
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the agent's log within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        support::run("kill", &["-s", signal, &self.pid().to_string()]);
    }

    /// Stops the agent with `signal`; returns its log once it exited with status 0.
    fn stop(mut self, signal: &str) -> String {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self.log();
                assert!(status.success(), "flowex run failed ({status}):\n{log}");
                let _ = std::fs::remove_file(&self.log);
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config for the test: no Kubernetes, no probe (the tests that need neither run in
/// parallel without sharing a pin), a state directory of its own.
fn config(state: &str, export: &str, collectors: &str, extra: &str) -> String {
    format!(
        "conntrack: {{pollInterval: 500ms}}\n\
         export: {{{export}, collectors: [{collectors}]}}\n\
         deny: {{enabled: false}}\n\
         attribution: {{enabled: false}}\n\
         kubernetes: {{enabled: false}}\n\
         state: {{directory: {state}}}\n\
         {extra}"
    )
}

fn state_dir(ns: &Netns) -> String {
    let dir = std::env::temp_dir().join(format!("{}-state", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    dir.display().to_string()
}

/// The collector's own account, from the agent's last log line for it:
/// (exported, produced, dropped, resent).
fn reconciliation(log: &str, collector: &str) -> (u64, u64, u64, u64) {
    let prefix = format!("collector {collector}: ");
    let line = log
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .rfind(|rest| rest.contains(" record(s) exported, "))
        .unwrap_or_else(|| panic!("no final account of {collector} in:\n{log}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    // "{exported} of {produced} record(s) exported, {dropped} dropped (...), {resent} resent"
    (numbers[0], numbers[1], numbers[2], *numbers.last().unwrap())
}

fn records_for(records: &[Value], source_port: u16, destination_port: u16) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| {
            r["sourceTransportPort"] == source_port
                && r["destinationTransportPort"] == destination_port
        })
        .collect()
}

fn number(record: &Value, key: &str) -> u64 {
    record[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {record}"))
}

/// (packets, bytes, reply packets, reply bytes) summed over records.
fn sums<'a>(records: impl IntoIterator<Item = &'a &'a Value>) -> (u64, u64, u64, u64) {
    records.into_iter().fold((0, 0, 0, 0), |s, r| {
        (
            s.0 + number(r, "packetDeltaCount"),
            s.1 + number(r, "octetDeltaCount"),
            s.2 + number(r, "reversePacketDeltaCount"),
            s.3 + number(r, "reverseOctetDeltaCount"),
        )
    })
}

/// Counters of one line of conntrack's extended output: (packets, bytes, reply packets,
/// reply bytes), with the client port.
fn cli_counters(line: &str) -> (u16, (u64, u64, u64, u64)) {
    let mut values: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for word in line.split_whitespace() {
        if let Some((k, v)) = word.split_once('=')
            && let Ok(v) = v.parse()
        {
            values.entry(k).or_default().push(v);
        }
    }
    let v = |k: &str, i: usize| values[k][i];
    (
        v("sport", 0) as u16,
        (
            v("packets", 0),
            v("bytes", 0),
            v("packets", 1),
            v("bytes", 1),
        ),
    )
}

fn start_collector(ns: &Netns, listen: &str, keep: bool) -> Collector {
    let listen = listen.to_owned();
    ns.enter(move || {
        let mut config = CollectorConfig::new(vec![listen.parse().unwrap()]);
        config.keep_records = keep;
        Collector::start(config).unwrap()
    })
}

fn quiet(collector: &Collector) -> Summary {
    collector.wait_until_quiet(Duration::from_millis(500), Duration::from_secs(30))
}

/// A TCP connection from `client` (bound to that address and port) to `server`: 100
/// bytes out, the server's 1,000 bytes back, the server closes first.
fn reuse_connect(client: SocketAddr, server: SocketAddr) {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let sockaddr = |addr: SocketAddr| {
            let SocketAddr::V4(v4) = addr else {
                unreachable!()
            };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }
        };
        let local = sockaddr(client);
        let len = size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0,
            "bind {client}: {}",
            std::io::Error::last_os_error()
        );
        let remote = sockaddr(server);
        assert_eq!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        TcpStream::from_raw_fd(fd)
    };
    let mut stream = stream;
    stream.write_all(&[1u8; 100]).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply.len(), 1000);
}

/// `conntrack -L -o extended` of the TCP entries to `port` in `ns`.
fn tcp_entries_to(ns: &Netns, port: u16) -> String {
    let port = port.to_string();
    let output = ns.exec(&[
        "conntrack",
        "-L",
        "-o",
        "extended",
        "-p",
        "tcp",
        "--dport",
        &port,
    ]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Serves `count` connections: reads 100 bytes, answers 1,000 and closes first.
fn serve_and_close_first(listener: TcpListener, count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..count {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 100];
            s.read_exact(&mut request).unwrap();
            s.write_all(&[5u8; 1000]).unwrap();
        }
    })
}

fn reused_port_connections_are_each_their_own_record(events: bool, prompt: bool) {
    let pair = Pair::new();
    // Events stay on in the kernel for conntrack's own DESTROY log; the agent is told
    // whether to listen to them.
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let collector = start_collector(&pair.server, "udp://127.0.0.1:0", true);
    let port = collector.udp_endpoint().unwrap().addr().port();
    // What conntrack itself reports as each connection ends.
    let destroys = Command::new("ip")
        .args(["netns", "exec", &pair.server.name])
        .args([
            "conntrack",
            "-E",
            "-e",
            "DESTROY",
            "-o",
            "extended",
            "-p",
            "tcp",
        ])
        .args(["--dport", "7400"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent::start(
        &pair.server,
        "agent",
        &config(
            &state_dir(&pair.server),
            "activeTimeout: 1s, idleTimeout: 2s",
            &format!("{{name: c0, address: '127.0.0.1:{port}'}}"),
            &format!(
                "conntrack: {{pollInterval: 300ms, events: {events}, promptTcpEnd: {prompt}}}\n"
            ),
        )
        .replace("conntrack: {pollInterval: 500ms}\n", ""),
    );
    let server: SocketAddr = format!("{SERVER}:7400").parse().unwrap();
    let listener = pair
        .server
        .enter(move || TcpListener::bind(server).unwrap());
    let served = serve_and_close_first(listener, 3);
    let client: SocketAddr = "10.200.0.1:40000".parse().unwrap();
    pair.client.enter(move || {
        for i in 0..3 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            reuse_connect(client, server);
        }
    });
    served.join().unwrap();
    // The last connection's TIME_WAIT entry is still in the table: its counters.
    std::thread::sleep(Duration::from_millis(1500));
    let table = tcp_entries_to(&pair.server, 7400);
    let log = agent.stop("TERM");
    let mut destroys = destroys;
    let _ = destroys.kill();
    let mut destroyed = String::new();
    destroys
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut destroyed)
        .unwrap();
    let _ = destroys.wait();
    let mut expected: Vec<(u64, u64, u64, u64)> = destroyed
        .lines()
        .filter(|l| l.contains("sport=40000"))
        .map(|l| cli_counters(l).1)
        .collect();
    let last: Vec<(u64, u64, u64, u64)> = table
        .lines()
        .filter(|l| l.contains("sport=40000"))
        .map(|l| cli_counters(l).1)
        .collect();
    assert_eq!(
        expected.len(),
        2,
        "conntrack's DESTROY events:\n{destroyed}"
    );
    assert_eq!(last.len(), 1, "{table}");
    expected.extend(last);

    quiet(&collector);
    let records = collector.records();
    let found = records_for(&records, 40000, 7400);
    // One connection per start time, in order, each ended once with flowEndReason 3.
    let mut starts: Vec<u64> = found
        .iter()
        .map(|r| number(r, "flowStartMilliseconds"))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(starts.len(), 3, "{found:#?}\n{log}");
    for (i, start) in starts.iter().enumerate() {
        let of: Vec<&Value> = found
            .iter()
            .copied()
            .filter(|r| number(r, "flowStartMilliseconds") == *start)
            .collect();
        let ends: Vec<u64> = of.iter().map(|r| number(r, "flowEndReason")).collect();
        assert_eq!(
            ends.iter().filter(|&&e| e == 3).count(),
            1,
            "connection {i}: reasons {ends:?}"
        );
        assert!(!ends.contains(&4), "connection {i} flushed again: {ends:?}");
        assert_eq!(sums(&of), expected[i], "connection {i}");
    }
    let (exported, produced, dropped, _) = reconciliation(&log, "c0");
    assert_eq!((exported, dropped), (produced, 0), "{log}");
    assert_eq!(collector.summary().records, exported);
}

#[test]
fn a_reused_client_port_gives_one_record_per_connection_with_events() {
    reused_port_connections_are_each_their_own_record(true, false);
}

#[test]
fn a_reused_client_port_gives_one_record_per_connection_with_prompt_tcp_ends() {
    reused_port_connections_are_each_their_own_record(true, true);
}

#[test]
fn a_reused_client_port_gives_one_record_per_connection_from_dumps_alone() {
    reused_port_connections_are_each_their_own_record(false, false);
}

/// One TCP connection, closed by the server: its final record (flowEndReason 3) carries
/// the counters conntrack shows for the entry in TIME_WAIT. With `promptTcpEnd` it comes
/// from the UPDATE event and a get, with polls an hour apart (so no poll can be the one
/// that exported it); without, from the next poll.
fn an_ended_tcp_connection_is_exported_once_with_its_final_counters(prompt: bool) {
    let pair = Pair::new();
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let collector = start_collector(&pair.server, "udp://127.0.0.1:0", true);
    let port = collector.udp_endpoint().unwrap().addr().port();
    let poll = if prompt { "1h" } else { "1s" };
    let agent = Agent::start(
        &pair.server,
        "agent",
        &config(
            &state_dir(&pair.server),
            "activeTimeout: 1h, idleTimeout: 1h",
            &format!("{{name: c0, address: '127.0.0.1:{port}'}}"),
            &format!("conntrack: {{pollInterval: {poll}, promptTcpEnd: {prompt}}}\n"),
        )
        .replace("conntrack: {pollInterval: 500ms}\n", ""),
    );
    let server: SocketAddr = format!("{SERVER}:7410").parse().unwrap();
    let listener = pair
        .server
        .enter(move || TcpListener::bind(server).unwrap());
    let served = serve_and_close_first(listener, 1);
    let client: SocketAddr = "10.200.0.1:40010".parse().unwrap();
    pair.client.enter(move || reuse_connect(client, server));
    served.join().unwrap();
    let ended = |collector: &Collector| {
        let records = collector.records();
        records_for(&records, 40010, 7410)
            .iter()
            .filter(|r| number(r, "flowEndReason") == 3)
            .map(|r| {
                (
                    number(r, "packetDeltaCount"),
                    number(r, "octetDeltaCount"),
                    number(r, "reversePacketDeltaCount"),
                    number(r, "reverseOctetDeltaCount"),
                )
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while ended(&collector).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = tcp_entries_to(&pair.server, 7410);
    assert!(table.contains("TIME_WAIT"), "{table}");
    let expected: Vec<(u64, u64, u64, u64)> = table.lines().map(|l| cli_counters(l).1).collect();
    // A few more polls (or none, with the prompt path) change nothing.
    std::thread::sleep(Duration::from_secs(2));
    let found = ended(&collector);
    let log = agent.stop("TERM");
    assert_eq!(found, expected, "{log}");
}

#[test]
fn an_ended_tcp_connection_leaves_from_the_next_poll() {
    an_ended_tcp_connection_is_exported_once_with_its_final_counters(false);
}

#[test]
fn an_ended_tcp_connection_leaves_at_once_with_prompt_tcp_end() {
    an_ended_tcp_connection_is_exported_once_with_its_final_counters(true);
}

fn fill_table(ns: &Netns, count: u32) {
    let path = std::env::temp_dir().join(format!("{}-table.txt", ns.name));
    let mut lines = String::with_capacity(count as usize * 80);
    for i in 0..count {
        let host = i / 50_000;
        let port = 1000 + i % 50_000;
        lines.push_str(&format!(
            "-I -p udp -s 10.9.{}.{} -d 10.8.0.1 --sport {port} --dport 53 -t 600\n",
            host / 250,
            host % 250 + 1
        ));
    }
    std::fs::write(&path, lines).unwrap();
    ns.exec(&["conntrack", "-R", &path.display().to_string()]);
    let _ = std::fs::remove_file(path);
    let counted = ns.exec(&["conntrack", "-C"]);
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout).trim(),
        count.to_string()
    );
}

#[test]
fn a_table_far_larger_than_the_queue_is_delivered_whole() {
    let pair = Pair::new();
    // The agent runs in the client namespace, which only holds the inserted entries (no
    // rule there makes conntrack track the agent's own traffic to the collector).
    fill_table(&pair.client, 100_000);
    let collector = start_collector(&pair.server, &format!("tcp://{SERVER}:0"), false);
    let port = collector.tcp_endpoint().unwrap().addr().port();
    let agent = Agent::start(
        &pair.client,
        "agent",
        &config(
            &state_dir(&pair.client),
            "activeTimeout: 1s, idleTimeout: 2s, shutdownTimeout: 60s",
            &format!(
                "{{name: c0, address: '{SERVER}:{port}', transport: tcp, maxMessageSize: 65535, queueCapacity: 500}}"
            ),
            "",
        ),
    );
    // Every entry is due at once at its active timeout (or, when the queue held it back
    // past the idle timeout, as idle), then idle once.
    std::thread::sleep(Duration::from_secs(6));
    let log = agent.stop("TERM");
    let summary = quiet(&collector);
    let (exported, produced, dropped, _) = reconciliation(&log, "c0");
    assert_eq!(dropped, 0, "{log}");
    assert_eq!(exported, produced, "{log}");
    assert_eq!(summary.records, exported);
    assert_eq!(summary.sequence_gaps, 0);
    // Each entry once as a forced end, and before that as active and idle.
    assert_eq!(
        summary.by_flow_end_reason.get(&4),
        Some(&100_000),
        "{summary:?}"
    );
    assert_eq!(
        summary.by_flow_end_reason.get(&1),
        Some(&100_000),
        "{summary:?}"
    );
    let active = summary.by_flow_end_reason.get(&2).copied().unwrap_or(0);
    assert!(active <= 100_000, "{summary:?}");
    assert_eq!(summary.records, 200_000 + active);
    assert!(
        log.contains("stopped: 100000 connection(s) exported with flowEndReason 4"),
        "{log}"
    );
}

#[test]
fn a_restarted_agent_neither_repeats_ended_connections_nor_restarts_deltas() {
    let pair = Pair::new();
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let collector = start_collector(&pair.server, "udp://127.0.0.1:0", true);
    let port = collector.udp_endpoint().unwrap().addr().port();
    let state = state_dir(&pair.server);
    let agent_config = config(
        &state,
        "activeTimeout: 1s, idleTimeout: 3s",
        &format!("{{name: c0, address: '127.0.0.1:{port}'}}"),
        "",
    );
    let first = Agent::start(&pair.server, "first", &agent_config);

    let short: SocketAddr = format!("{SERVER}:7410").parse().unwrap();
    let long: SocketAddr = format!("{SERVER}:7411").parse().unwrap();
    let (short_listener, long_listener) = pair.server.enter(move || {
        (
            TcpListener::bind(short).unwrap(),
            TcpListener::bind(long).unwrap(),
        )
    });
    let served = serve_and_close_first(short_listener, 5);
    let long_server = std::thread::spawn(move || {
        let (mut s, _) = long_listener.accept().unwrap();
        let mut buf = [0u8; 100];
        while s.read_exact(&mut buf).is_ok() {}
    });
    let (short_ports, mut long_stream) = pair.client.enter(move || {
        let mut ports = Vec::new();
        for _ in 0..5 {
            let mut s = TcpStream::connect(short).unwrap();
            ports.push(s.local_addr().unwrap().port());
            s.write_all(&[1u8; 100]).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).unwrap();
        }
        (ports, TcpStream::connect(long).unwrap())
    });
    served.join().unwrap();
    for _ in 0..10 {
        long_stream.write_all(&[2u8; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // The short ones are in TIME_WAIT, reported; the long one has an active record.
    std::thread::sleep(Duration::from_millis(1200));
    let first_log = first.stop("TERM");
    assert!(first_log.contains("saved "), "{first_log}");

    let second = Agent::start(&pair.server, "second", &agent_config);
    for _ in 0..10 {
        long_stream.write_all(&[2u8; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let long_port = long_stream.local_addr().unwrap().port();
    let table = pair
        .server
        .exec(&["conntrack", "-L", "-o", "extended", "-p", "tcp"]);
    let second_log = second.stop("TERM");
    drop(long_stream);
    long_server.join().unwrap();
    assert!(second_log.contains("resuming "), "{second_log}");

    quiet(&collector);
    let records = collector.records();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    let counters = |port: u16| {
        table
            .lines()
            .map(cli_counters)
            .find(|(p, _)| *p == port)
            .unwrap_or_else(|| panic!("no entry for port {port} in\n{table}"))
            .1
    };
    for port in short_ports {
        let found = records_for(&records, port, 7410);
        let ends: Vec<u64> = found.iter().map(|r| number(r, "flowEndReason")).collect();
        assert_eq!(
            ends.iter().filter(|&&e| e == 3).count(),
            1,
            "port {port}: {ends:?}"
        );
        assert!(!ends.contains(&4), "port {port}: {ends:?}");
        assert_eq!(sums(&found), counters(port), "port {port}");
    }
    // The long connection: ended by the first agent (4), continued by the second, its
    // deltas adding up to conntrack's counters exactly.
    let found = records_for(&records, long_port, 7411);
    let ends: Vec<u64> = found.iter().map(|r| number(r, "flowEndReason")).collect();
    assert_eq!(ends.iter().filter(|&&e| e == 4).count(), 2, "{ends:?}");
    assert_eq!(sums(&found), counters(long_port), "{ends:?}");
    for log in [&first_log, &second_log] {
        let (exported, produced, dropped, _) = reconciliation(log, "c0");
        assert_eq!((exported, dropped), (produced, 0), "{log}");
    }
}

#[test]
fn a_state_file_from_elsewhere_or_corrupt_is_a_warning_and_a_clean_start() {
    let here = Netns::new("a");
    let elsewhere = Netns::new("b");
    let state = state_dir(&here);
    let agent_config = config(
        &state,
        "activeTimeout: 1s",
        "{name: c0, address: '127.0.0.1:9'}",
        "",
    );
    let log = Agent::start(&here, "one", &agent_config).stop("TERM");
    assert!(log.contains("no state file in"), "{log}");
    assert!(log.contains("saved 0 connection(s)"), "{log}");

    // Another network namespace: the file describes another table.
    let log = Agent::start(&elsewhere, "two", &agent_config).stop("TERM");
    assert!(
        log.contains("ignoring the state file") && log.contains("another network namespace"),
        "{log}"
    );

    // Garbage where the file should be.
    let file = PathBuf::from(&state).join("flowex.state");
    std::fs::write(&file, b"FLOWEXST but not really a state file").unwrap();
    let log = Agent::start(&here, "three", &agent_config).stop("TERM");
    assert!(
        log.contains("ignoring the state file") && log.contains("not a flowex state file"),
        "{log}"
    );
    // The agent wrote a good one on its way out.
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    let log = Agent::start(&here, "four", &agent_config).stop("TERM");
    assert!(log.contains("resuming 0 connection(s)"), "{log}");
}

#[test]
fn sighup_flushes_and_stops_like_sigterm() {
    let pair = Pair::new();
    fill_table(&pair.client, 3);
    let collector = start_collector(&pair.server, &format!("udp://{SERVER}:0"), false);
    let port = collector.udp_endpoint().unwrap().addr().port();
    let agent = Agent::start(
        &pair.client,
        "agent",
        &config(
            &state_dir(&pair.client),
            "activeTimeout: 60s, idleTimeout: 60s",
            &format!("{{name: c0, address: '{SERVER}:{port}'}}"),
            "",
        ),
    );
    std::thread::sleep(Duration::from_millis(800));
    let log = agent.stop("HUP");
    assert!(log.contains("SIGHUP"), "{log}");
    let summary = quiet(&collector);
    assert_eq!(
        summary.by_flow_end_reason.get(&4),
        Some(&3),
        "{summary:?}\n{log}"
    );
    assert_eq!(reconciliation(&log, "c0"), (3, 3, 0, 0));
}

#[test]
fn unreachable_collectors_are_logged_once_then_summarised_and_recovery_is_logged() {
    let pair = Pair::new();
    fill_table(&pair.client, 3);
    // A port nothing listens on yet, and a name that resolves to nothing.
    let free = pair.server.enter(|| {
        TcpListener::bind(format!("{SERVER}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
    });
    let agent = Agent::start(
        &pair.client,
        "agent",
        &config(
            &state_dir(&pair.client),
            "activeTimeout: 60s, idleTimeout: 60s, shutdownTimeout: 1s",
            &format!(
                "{{name: late, address: '{free}', transport: tcp, maxMessageSize: 65535, maxReconnectDelay: 300ms}}, \
                 {{name: nowhere, address: 'collector.invalid:4739', transport: tcp, maxMessageSize: 65535}}"
            ),
            "logging: {summaryInterval: 1s}\n",
        ),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let collector = start_collector(&pair.server, &format!("tcp://{free}"), false);
    // Reconnects within the 300 ms cap (plus jitter), not tens of seconds.
    agent.wait_for_log("reachable again", Duration::from_secs(2));
    let log = agent.stop("TERM");
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    // The first failure once per collector, then summaries, not one line per attempt.
    assert_eq!(lines("collector late (tcp "), 1, "{log}");
    assert!(lines("collector late (") <= 5, "{log}");
    assert_eq!(lines("reachable again"), 1, "{log}");
    assert_eq!(
        lines("collector nowhere (tcp collector.invalid:4739): cannot connect"),
        1,
        "{log}"
    );
    assert!(
        lines("collector nowhere (collector.invalid:4739) still unreachable after") >= 1,
        "{log}"
    );
    // The forced ends reached the collector that came back; the other dropped them at
    // the deadline, and said how many.
    let summary = quiet(&collector);
    assert_eq!(summary.by_flow_end_reason.get(&4), Some(&3));
    assert_eq!(reconciliation(&log, "late"), (3, 3, 0, 0));
    assert_eq!(reconciliation(&log, "nowhere"), (0, 3, 3, 0));
    assert!(
        log.contains("collector nowhere: 3 record(s) not delivered by the shutdown deadline"),
        "{log}"
    );
}

fn http_get(path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&"127.0.0.1:9400".parse().unwrap(), Duration::from_secs(1))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

#[test]
fn out_of_file_descriptors_the_metrics_server_backs_off_and_recovers() {
    let ns = Netns::new("m");
    let agent = Agent::start(
        &ns,
        "agent",
        &config(
            &state_dir(&ns),
            "activeTimeout: 1s",
            "{name: c0, address: '127.0.0.1:9'}",
            "",
        ),
    );
    assert!(ns.enter(|| http_get("/healthz")).is_some());
    let pid = agent.pid().to_string();
    let mut open: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    open.sort_unstable();
    let lowest_free = (0..).find(|n| open.binary_search(n).is_err()).unwrap();
    // No descriptor left for an accepted connection.
    support::run(
        "prlimit",
        &["--pid", &pid, &format!("--nofile={lowest_free}:")],
    );
    let pending = ns.enter(|| {
        (0..4)
            .map(|_| TcpStream::connect("127.0.0.1:9400").unwrap())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(2));
    support::run("prlimit", &["--pid", &pid, "--nofile=1024:"]);
    drop(pending);
    let metrics = ns.enter(|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(m) = http_get("/metrics") {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "the metrics server did not recover"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flowex_metrics_accept_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    // A failing accept is retried at most every second after the first few: a handful in
    // two seconds, where a spinning server counts millions.
    assert!((1..=20).contains(&errors), "{errors} accept errors");
    let log = agent.stop("TERM");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("metrics server cannot accept"))
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("metrics server accepts connections again"),
        "{log}"
    );
}

/// Two collectors behind a 500-record queue each and a table of 100,000: the slower one
/// paces expiry, so neither drops anything; then one that accepts and never reads stops
/// pacing after a few seconds without progress, and the other still gets everything while
/// the stuck one's drops are counted.
#[test]
fn the_slowest_collector_paces_expiry_and_a_stuck_one_does_not() {
    let pair = Pair::new();
    fill_table(&pair.client, 100_000);
    let first = start_collector(&pair.server, &format!("tcp://{SERVER}:0"), false);
    let second = start_collector(&pair.server, &format!("udp://{SERVER}:0"), false);
    let first_port = first.tcp_endpoint().unwrap().addr().port();
    let second_port = second.udp_endpoint().unwrap().addr().port();
    // Accepts connections and never reads: a stuck collector.
    let stuck = pair
        .server
        .enter(|| TcpListener::bind((SERVER, 0)).unwrap());
    let stuck_port = stuck.local_addr().unwrap().port();
    // Holds what it accepts until the test is done.
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let held = std::thread::spawn(move || {
        stuck.set_nonblocking(true).unwrap();
        let mut streams = Vec::new();
        while done_rx.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
            if let Ok((stream, _)) = stuck.accept() {
                streams.push(stream);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let collectors = format!(
        "{{name: c0, address: '{SERVER}:{first_port}', transport: tcp, maxMessageSize: 65535, queueCapacity: 500}}, \
         {{name: c1, address: '{SERVER}:{second_port}', transport: udp, queueCapacity: 500}}, \
         {{name: c2, address: '{SERVER}:{stuck_port}', transport: tcp, maxMessageSize: 65535, queueCapacity: 500}}"
    );
    let agent = Agent::start(
        &pair.client,
        "agent",
        &config(
            &state_dir(&pair.client),
            "activeTimeout: 1s, idleTimeout: 2s, shutdownTimeout: 30s",
            &collectors,
            "",
        ),
    );
    std::thread::sleep(Duration::from_secs(15));
    let log = agent.stop("TERM");
    let first_summary = quiet(&first);
    let second_summary = quiet(&second);
    for (name, summary) in [("c0", &first_summary), ("c1", &second_summary)] {
        let (exported, produced, dropped, _) = reconciliation(&log, name);
        assert_eq!(dropped, 0, "{name}:\n{log}");
        assert_eq!(exported, produced, "{name}:\n{log}");
        assert_eq!(summary.records, exported, "{name}");
        assert_eq!(summary.sequence_gaps, 0, "{name}");
        assert_eq!(
            summary.by_flow_end_reason.get(&4),
            Some(&100_000),
            "{name}: {summary:?}"
        );
    }
    let (exported, produced, dropped, _) = reconciliation(&log, "c2");
    assert!(dropped > 0, "{log}");
    assert_eq!(exported + dropped, produced, "{log}");
    drop(done);
    held.join().unwrap();
}
