//! Short connections end to end: the agent's CPU per connection, and whether every
//! connection reached the collector once.
//!
//! Two namespaces joined by a veth pair: a "node" (the server, collector-sim on loopback and
//! the agent, with conntrack events, the poll and the eBPF probe on as by default) and a
//! "client". N short TCP connections (100 bytes out, 1,000 back, the server closes first, as
//! an HTTP server without keep-alive does), then N UDP request/response exchanges, each from
//! a new socket. The agent runs as its own process (this executable started again with
//! `FLOWEX_BENCH_AGENT_CONFIG`, which runs exactly what `flowex run` runs), so its CPU is
//! read from the kernel's per-thread `schedstat` (nanoseconds) and nothing of the traffic
//! or the collector is counted in it.
//!
//! A phase's CPU runs from just before its first connection until the node's conntrack
//! table is empty again (TIME_WAIT and the UDP timeout are cut to 1 s in the node
//! namespace), so it includes the DESTROY events, the polls that saw the entries and the
//! export. The agent's idle cost over the same time (expiry ticks, polls of an empty
//! table) is measured before the traffic and printed beside it.
//!
//! Not a criterion benchmark: `cargo bench -p flowex-benches --bench short_connections`
//! prints a table and one JSON line. `FLOWEX_SHORT_CONNECTIONS` (default 4000) sets N;
//! `FLOWEX_SHORT_CONNECTIONS_PROMPT=1` runs the agent with `conntrack.promptTcpEnd: true`.
//! Needs root (namespaces, conntrack, eBPF).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use collector_sim::{Collector, CollectorConfig};
use flowex_agent::sources::conntrack::{ConntrackSocket, DumpFilter};

const AGENT_ENV: &str = "FLOWEX_BENCH_AGENT_CONFIG";
const CLIENT_IP: &str = "10.201.0.1";
const SERVER_IP: &str = "10.201.0.2";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const COLLECTOR: &str = "127.0.0.1:4739";

fn main() {
    if let Ok(path) = std::env::var(AGENT_ENV) {
        run_agent(&path);
        return;
    }
    let count: u64 = std::env::var("FLOWEX_SHORT_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("short_connections: needs root (namespaces, conntrack, eBPF); skipped");
        return;
    }
    let bench = Bench::new();
    let report = bench.run(count);
    drop(bench);
    report.print();
}

/// The agent side: what `flowex run --config PATH` does.
fn run_agent(path: &str) {
    let settings = flowex_agent::config::Settings::load(
        Some(std::path::Path::new(path)),
        &flowex_agent::config::Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    flowex_agent::app::init_logging(&settings.config.logging);
    if let Err(error) = flowex_agent::app::run_blocking(settings, None) {
        eprintln!("agent: {error:#}");
        std::process::exit(1);
    }
}

fn sh(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("fxsc{}-{tag}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.0.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// Runs `f` on a thread inside the namespace.
    fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.spawn(f).join().expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Bench {
    node: Netns,
    client: Netns,
    dir: std::path::PathBuf,
}

impl Bench {
    fn new() -> Self {
        let node = Netns::new("node");
        let client = Netns::new("client");
        sh(
            "ip",
            &[
                "-n", &client.0, "link", "add", "vc", "type", "veth", "peer", "name", "vn",
                "netns", &node.0,
            ],
        );
        client.exec(&["ip", "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"]);
        client.exec(&["ip", "link", "set", "vc", "up"]);
        node.exec(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vn"]);
        node.exec(&["ip", "link", "set", "vn", "up"]);
        for setting in [
            "net.netfilter.nf_conntrack_acct=1",
            "net.netfilter.nf_conntrack_timestamp=1",
            "net.netfilter.nf_conntrack_events=1",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
            "net.netfilter.nf_conntrack_udp_timeout=1",
            "net.netfilter.nf_conntrack_udp_timeout_stream=1",
        ] {
            node.exec(&["sysctl", "-qw", setting]);
        }
        node.exec(&["nft", "add table inet fx"]);
        node.exec(&[
            "nft",
            "add chain inet fx in { type filter hook input priority 0; policy accept; }",
        ]);
        node.exec(&[
            "nft",
            "add rule inet fx in ct state new,established,related accept",
        ]);
        let dir = std::env::temp_dir().join(format!("fxsc{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { node, client, dir }
    }

    fn run(&self, count: u64) -> Report {
        let collector = self.node.enter(|| {
            let mut config =
                CollectorConfig::new(vec![format!("tcp://{COLLECTOR}").parse().unwrap()]);
            config.keep_records = true;
            Collector::start(config).unwrap()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let servers = self.start_servers(&stop);
        let agent = self.start_agent();
        // The first poll and the probe's attachment are startup, not per-connection work.
        std::thread::sleep(Duration::from_secs(2));
        let idle_start = cpu_ns(agent.id());
        let idle_clock = Instant::now();
        // Two poll intervals (5 s each by default): a window that holds polls in the same
        // proportion as any long stretch of time.
        std::thread::sleep(Duration::from_secs(10));
        let idle_ns_per_s =
            (cpu_ns(agent.id()) - idle_start) as f64 / idle_clock.elapsed().as_secs_f64();

        let tcp = self.phase("tcp", count, idle_ns_per_s, &agent, &collector, || {
            self.client.enter(move || tcp_clients(count))
        });
        let udp = self.phase("udp", count, idle_ns_per_s, &agent, &collector, || {
            self.client.enter(move || udp_clients(count))
        });

        // SAFETY: kill sends a signal to our own child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let status = wait_child(agent, Duration::from_secs(30));
        stop.store(true, Ordering::Release);
        for server in servers {
            let _ = server.join();
        }
        let summary = collector.stop();
        // What the agent warned about (lost events, drops) belongs beside the figures.
        let warnings: Vec<String> = self
            .agent_log()
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .filter(|line| !line.contains("no answer to the templates"))
            .take(20)
            .map(str::to_owned)
            .collect();
        Report {
            count,
            idle_us_per_s: idle_ns_per_s / 1000.0,
            phases: vec![tcp, udp],
            sequence_gaps: summary.sequence_gaps,
            decode_errors: summary.decode_error_total(),
            agent_exit: status,
            warnings,
        }
    }

    fn start_servers(&self, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
        let tcp_stop = Arc::clone(stop);
        let tcp = self.node.spawn(move || {
            let listener = TcpListener::bind((SERVER_IP, TCP_PORT)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let mut request = [0u8; 100];
            let response = [7u8; 1000];
            while !tcp_stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        if stream.read_exact(&mut request).is_ok() {
                            let _ = stream.write_all(&response);
                        }
                        // Dropped: the server closes first.
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        let udp_stop = Arc::clone(stop);
        let udp = self.node.spawn(move || {
            let socket = UdpSocket::bind((SERVER_IP, UDP_PORT)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buffer = [0u8; 1500];
            while !udp_stop.load(Ordering::Acquire) {
                if let Ok((n, peer)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(&buffer[..n], peer);
                }
            }
        });
        vec![tcp, udp]
    }

    fn start_agent(&self) -> Child {
        let config = self.dir.join("agent.yaml");
        let pin = format!("/sys/fs/bpf/flowex-bench-{}", std::process::id());
        let prompt = std::env::var_os("FLOWEX_SHORT_CONNECTIONS_PROMPT").is_some();
        std::fs::write(
            &config,
            format!(
                "export:\n  collectors: [{{name: sim, address: \"{COLLECTOR}\", transport: tcp, maxMessageSize: 65535}}]\n\
                 conntrack: {{promptTcpEnd: {prompt}}}\n\
                 kubernetes: {{enabled: false}}\n\
                 attribution: {{pinPath: {pin}}}\n\
                 state: {{directory: \"\"}}\n\
                 metrics: {{listen: \"127.0.0.1:9491\"}}\n\
                 logging: {{format: text}}\n"
            ),
        )
        .unwrap();
        let log = File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node.0])
            .arg(std::env::current_exe().unwrap())
            .env(AGENT_ENV, &config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.agent_log().contains("running:") {
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs `traffic`, then waits until the collector has a record of every connection and
    /// the node's table is empty; the agent's CPU over that time.
    fn phase(
        &self,
        name: &'static str,
        count: u64,
        idle_ns_per_s: f64,
        agent: &Child,
        collector: &Collector,
        traffic: impl FnOnce() -> (Duration, Vec<u16>),
    ) -> Phase {
        let protocol = if name == "tcp" { 6 } else { 17 };
        let port = if name == "tcp" { TCP_PORT } else { UDP_PORT };
        let before = cpu_ns(agent.id());
        let started = Instant::now();
        let (traffic_time, ports) = traffic();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let received = matching(collector, protocol, port, &ports);
            let left = self.table_entries();
            if received.lost == 0 && left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "{name}: gave up waiting: {} of {count} connections without a final record, {left} entries left",
                    received.lost
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The DESTROY events of the last entries are read within the agent's next wake-up.
        std::thread::sleep(Duration::from_millis(300));
        let cpu = cpu_ns(agent.id()) - before;
        let elapsed = started.elapsed();
        let received = matching(collector, protocol, port, &ports);
        Phase {
            name,
            traffic_secs: traffic_time.as_secs_f64(),
            elapsed_secs: elapsed.as_secs_f64(),
            cpu_us_per_connection: cpu as f64 / 1000.0 / count as f64,
            idle_us_per_connection: idle_ns_per_s * elapsed.as_secs_f64() / 1000.0 / count as f64,
            received,
        }
    }

    /// Entries of the client's connections still in the node's table (the agent's own
    /// connection to the collector, on loopback, is not one of them).
    fn table_entries(&self) -> usize {
        self.node.enter(|| {
            let client: std::net::IpAddr = CLIENT_IP.parse().unwrap();
            let mut entries = 0;
            let result = ConntrackSocket::open().and_then(|mut socket| {
                socket.dump(&DumpFilter::default(), |entry| {
                    entries += usize::from(entry.original.source == client)
                })
            });
            if result.is_err() { usize::MAX } else { entries }
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the collector received of the client's connections to the server's `port`.
#[derive(Default)]
struct Received {
    /// Data records.
    records: u64,
    /// Final records (flowEndReason 3) beyond one per connection the client made from
    /// that port, and connections with none.
    extra: u64,
    lost: u64,
    by_reason: BTreeMap<u64, u64>,
}

/// Compares the final records with the client's connections, port by port (a client
/// port reused while its old entry was in TIME_WAIT is two connections, two records).
fn matching(collector: &Collector, protocol: u64, port: u16, used: &[u16]) -> Received {
    let mut received = Received::default();
    let mut finals: HashMap<u64, Vec<serde_json::Value>> = HashMap::new();
    for record in collector.records() {
        if record["protocolIdentifier"].as_u64() == Some(protocol)
            && record["destinationTransportPort"].as_u64() == Some(u64::from(port))
            && record["sourceIPv4Address"].as_str() == Some(CLIENT_IP)
        {
            received.records += 1;
            let reason = record["flowEndReason"].as_u64().unwrap_or(0);
            *received.by_reason.entry(reason).or_insert(0) += 1;
            if reason == 3 {
                let client_port = record["sourceTransportPort"].as_u64().unwrap_or(0);
                finals.entry(client_port).or_default().push(record);
            }
        }
    }
    let mut uses: HashMap<u64, usize> = HashMap::new();
    for &p in used {
        *uses.entry(u64::from(p)).or_insert(0) += 1;
    }
    let mut shown = 0;
    for (client_port, &made) in &uses {
        let got = finals.get(client_port).map_or(0, Vec::len);
        received.lost += made.saturating_sub(got) as u64;
        received.extra += got.saturating_sub(made) as u64;
        if got > made && shown < 3 && std::env::var_os("FLOWEX_SHORT_CONNECTIONS_SHOW").is_some() {
            shown += 1;
            let brief: Vec<_> = finals[client_port]
                .iter()
                .map(|r| {
                    (
                        r["flowStartMilliseconds"].as_u64(),
                        r["flowEndMilliseconds"].as_u64(),
                        r["packetDeltaCount"].as_u64(),
                        r["packetTotalCount"].as_u64(),
                        r["reversePacketDeltaCount"].as_u64(),
                    )
                })
                .collect();
            eprintln!(
                "port {client_port}: {made} connection(s), final records (start, end, packets, total, reverse packets) {brief:?}"
            );
        }
    }
    received
}

fn tcp_clients(count: u64) -> (Duration, Vec<u16>) {
    let server: SocketAddr = format!("{SERVER_IP}:{TCP_PORT}").parse().unwrap();
    let started = Instant::now();
    let mut reply = Vec::with_capacity(1000);
    let mut ports = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut stream = TcpStream::connect(server).unwrap();
        ports.push(stream.local_addr().unwrap().port());
        stream.write_all(&[1u8; 100]).unwrap();
        reply.clear();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 1000);
    }
    (started.elapsed(), ports)
}

fn udp_clients(count: u64) -> (Duration, Vec<u16>) {
    let server: SocketAddr = format!("{SERVER_IP}:{UDP_PORT}").parse().unwrap();
    let started = Instant::now();
    let mut reply = [0u8; 1500];
    let mut answered = 0;
    // A port of its own for each exchange: two exchanges from one port within the UDP
    // timeout are one conntrack entry (one flow), which would read as a lost connection.
    assert!(
        count <= 50_000,
        "at most 50,000 UDP exchanges (one client port each)"
    );
    for i in 0..count {
        let socket = UdpSocket::bind((CLIENT_IP, 10_000 + i as u16)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        socket.send_to(&[2u8; 64], server).unwrap();
        if socket.recv_from(&mut reply).is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, count, "UDP requests unanswered");
    (
        started.elapsed(),
        (0..count).map(|i| 10_000 + i as u16).collect(),
    )
}

/// CPU time of every thread of `pid` so far, in nanoseconds (`schedstat`'s first field).
/// A thread that exited takes its time with it; the agent's threads live as long as it.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn wait_child(mut child: Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.to_string();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return "killed after 30 s".into();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Phase {
    name: &'static str,
    traffic_secs: f64,
    elapsed_secs: f64,
    cpu_us_per_connection: f64,
    idle_us_per_connection: f64,
    received: Received,
}

struct Report {
    count: u64,
    idle_us_per_s: f64,
    phases: Vec<Phase>,
    sequence_gaps: u64,
    decode_errors: u64,
    agent_exit: String,
    warnings: Vec<String>,
}

impl Report {
    fn print(&self) {
        println!(
            "short_connections: {} connections per protocol; agent idle {:.0} us of CPU per second",
            self.count, self.idle_us_per_s
        );
        println!(
            "{:<5} {:>9} {:>9} {:>13} {:>10} {:>7} {:>5} {:>13}  records by flowEndReason",
            "proto",
            "traffic s",
            "until s",
            "agent us/conn",
            "of it idle",
            "records",
            "lost",
            "extra finals"
        );
        for phase in &self.phases {
            println!(
                "{:<5} {:>9.2} {:>9.2} {:>13.2} {:>10.2} {:>7} {:>5} {:>13}  {:?}",
                phase.name,
                phase.traffic_secs,
                phase.elapsed_secs,
                phase.cpu_us_per_connection,
                phase.idle_us_per_connection,
                phase.received.records,
                phase.received.lost,
                phase.received.extra,
                phase.received.by_reason
            );
        }
        println!(
            "collector: {} sequence gaps, {} decode errors; agent exit: {}",
            self.sequence_gaps, self.decode_errors, self.agent_exit
        );
        for warning in &self.warnings {
            println!("agent: {warning}");
        }
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{{\"protocol\":\"{}\",\"agent_us_per_connection\":{:.2},\"idle_us_per_connection\":{:.2},\"records\":{},\"lost\":{},\"extra_finals\":{}}}",
                    p.name,
                    p.cpu_us_per_connection,
                    p.idle_us_per_connection,
                    p.received.records,
                    p.received.lost,
                    p.received.extra
                )
            })
            .collect();
        println!(
            "{{\"connections\":{},\"idle_us_per_s\":{:.0},\"phases\":[{}]}}",
            self.count,
            self.idle_us_per_s,
            phases.join(",")
        );
    }
}
