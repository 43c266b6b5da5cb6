//! Process attribution end to end: a server process and a client process with known names,
//! in two namespaces joined by a veth pair; `flowex run` (with the eBPF probe) in the server
//! namespace exports to collector-sim. Every record of their flows names both processes, and
//! the bytes exported per process equal conntrack's counters exactly and the veth's L3 bytes
//! within 2%. Without the capabilities to load eBPF, the agent still exports every flow.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector_sim::{Collector, CollectorConfig};
use serde_json::Value;
use support::{Netns, Pair, conntrack_cli};

const SERVER_NAME: &str = "fx-test-server";
const CLIENT_NAME: &str = "fx-test-client";

/// Serves, until killed: TCP BASE request/response (50-byte requests and replies until the
/// client closes), TCP BASE+1 bulk (reads until EOF), UDP BASE+2 echo (bound to any address).
const SERVER: &str = r#"
import ctypes, socket, sys, threading
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
base = int(sys.argv[2])
def rr(conn):
    while True:
        data = b""
        while len(data) < 50:
            chunk = conn.recv(50 - len(data))
            if not chunk:
                conn.close(); return
            data += chunk
        conn.sendall(b"r" * 50)
def bulk(conn):
    while conn.recv(65536):
        pass
    conn.close()
def serve(port, handler):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.200.0.2", port)); s.listen(16)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", base + 2))
def echo():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(data, peer)
threading.Thread(target=echo, daemon=True).start()
threading.Thread(target=serve, args=(base + 1, bulk), daemon=True).start()
print("ready", flush=True)
serve(base, rr)
"#;

/// Phase "rr": 3 connections x 100 request/response exchanges of 50 bytes, then 20 UDP
/// echoes of 50 bytes. Phase "bulk": 4 MiB on one connection.
const CLIENT: &str = r#"
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
base = int(sys.argv[3])
if sys.argv[2] == "rr":
    for _ in range(3):
        c = socket.create_connection(("10.200.0.2", base))
        for _ in range(100):
            c.sendall(b"q" * 50)
            got = b""
            while len(got) < 50:
                got += c.recv(50 - len(got))
        c.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
    for _ in range(20):
        u.sendto(b"u" * 50, ("10.200.0.2", base + 2)); u.recv(2048)
else:
    c = socket.create_connection(("10.200.0.2", base + 1))
    c.sendall(b"b" * (4 << 20))
    c.close()
"#;

/// The tests' namespace pairs use the same addresses; the probe sees every namespace and
/// learns which one an address belongs to, so the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Rx+tx bytes and packets of the server's veth.
fn veth_counters(ns: &Netns) -> (u64, u64) {
    let read = |stat: &str| -> u64 {
        let out = ns.exec(&["cat", &format!("/sys/class/net/vs/statistics/{stat}")]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (
        read("rx_bytes") + read("tx_bytes"),
        read("rx_packets") + read("tx_packets"),
    )
}

fn start_agent(ns: &Netns, config: &str, port: u16, wrapper: &[&str]) -> Child {
    let config_path = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    // A state directory of its own: agents of parallel tests do not resume each other.
    let state = std::env::temp_dir().join(format!("{}-state", ns.name));
    std::fs::write(
        &config_path,
        format!("{config}\nstate: {{directory: {}}}\n", state.display()),
    )
    .unwrap();
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.name.clone()];
    args.extend(wrapper.iter().map(|s| s.to_string()));
    args.push(env!("CARGO_BIN_EXE_flowex").into());
    args.push("run".into());
    args.push("--config".into());
    args.push(config_path.display().to_string());
    args.push("--collector".into());
    args.push(format!("udp://127.0.0.1:{port}"));
    args.push("--duration".into());
    args.push("6".into());
    Command::new("ip")
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut agent: Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "flowex run did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        agent.wait().unwrap().success(),
        "flowex run failed:\n{stderr}"
    );
    stderr
}

fn collector_in(ns: &Netns) -> Collector {
    ns.enter(|| {
        let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    })
}

/// `python3 -c SCRIPT ARGS...` inside the namespace.
fn python_in(ns: &Netns, script: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &ns.name, python(), "-c", script])
        .args(args);
    command
}

fn spawn_server(ns: &Netns, base: u16) -> Child {
    let mut server = python_in(ns, SERVER, &[SERVER_NAME, &base.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    server
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    server
}

fn run_client(ns: &Netns, phase: &str, base: u16) -> u32 {
    let client = python_in(ns, CLIENT, &[CLIENT_NAME, phase, &base.to_string()])
        .spawn()
        .unwrap();
    let pid = client.id();
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success(), "client {phase} failed");
    pid
}

/// A flow of the workload on ports BASE..BASE+2.
fn is_test_flow(r: &Value, base: u16) -> bool {
    r["destinationTransportPort"]
        .as_u64()
        .is_some_and(|p| (u64::from(base)..u64::from(base) + 3).contains(&p))
        && r["sourceIPv4Address"] == "10.200.0.1"
}

/// Takes the test's turn, makes the namespace pair (with conntrack events on the server
/// side) and starts collector-sim there; returns them and the collector's UDP port.
fn setup() -> (std::sync::MutexGuard<'static, ()>, Pair, Collector, u16) {
    let turn = serial();
    let pair = Pair::new();
    pair.server
        .exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"]);
    let collector = collector_in(&pair.server);
    let port = collector.udp_endpoint().unwrap().addr().port();
    (turn, pair, collector, port)
}

fn octets(r: &Value) -> u64 {
    r["octetDeltaCount"].as_u64().unwrap() + r["reverseOctetDeltaCount"].as_u64().unwrap()
}

#[test]
fn records_name_the_client_and_server_processes_and_their_bytes_are_exact() {
    let (_serial, pair, collector, port) = setup();
    // `ip netns exec` mounts a fresh /sys for each command, so a pin under /sys/fs/bpf
    // would be private to the agent: pin in a bpffs of the test's own instead.
    let bpffs = BpfFs::mount(&pair.server.name);
    let pin = format!("{}/socket_owners", bpffs.path);
    let agent = start_agent(
        &pair.server,
        &format!(
            "conntrack: {{pollInterval: 500ms}}\n\
             export: {{activeTimeout: 1s, idleTimeout: 2s}}\n\
             deny: {{enabled: false}}\n\
             attribution: {{pinPath: {pin}}}\n"
        ),
        port,
        &[],
    );
    std::thread::sleep(Duration::from_millis(1_000));
    let mut server = spawn_server(&pair.server, 7400);
    let server_pid = server.id();
    std::thread::sleep(Duration::from_millis(200));

    let (bytes0, packets0) = veth_counters(&pair.server);
    let client_pid = run_client(&pair.client, "rr", 7400);
    let (bytes1, packets1) = veth_counters(&pair.server);
    run_client(&pair.client, "bulk", 7400);
    let (bytes2, packets2) = veth_counters(&pair.server);

    // While the agent runs, `flowex conntrack --json` shows the owners through the pin.
    let listing = pair.server.exec(&[
        env!("CARGO_BIN_EXE_flowex"),
        "conntrack",
        "--json",
        "--owners",
        &pin,
    ]);
    let listed: Vec<Value> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rr_entry = listed
        .iter()
        .find(|e| e["original"]["dport"] == 7400)
        .expect("a conntrack entry for port 7400");
    assert_eq!(rr_entry["source_owner"]["name"], CLIENT_NAME, "{rr_entry}");
    assert_eq!(
        rr_entry["destination_owner"]["pid"], server_pid,
        "{rr_entry}"
    );

    let stderr = finish(agent);
    assert!(stderr.contains("eBPF socket probe attached"), "{stderr}");
    let _ = server.kill();
    let _ = server.wait();
    let cli = conntrack_cli(&pair.server);
    let summary = collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(10));
    assert_eq!(summary.sequence_gaps, 0);
    assert_eq!(summary.decode_error_total(), 0);
    let records: Vec<Value> = collector
        .records()
        .into_iter()
        .filter(|r| is_test_flow(r, 7400))
        .collect();

    // Every record of the test flows names both processes: pid, name, cgroup.
    assert!(records.len() >= 5, "{} records", records.len());
    for r in &records {
        assert_eq!(r["sourceProcessName"], CLIENT_NAME, "{r}");
        assert_eq!(r["destinationProcessName"], SERVER_NAME, "{r}");
        assert_eq!(r["destinationProcessId"], server_pid, "{r}");
        assert!(r["sourceCgroupId"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["sourceContainerId"], "", "{r}");
    }
    // The rr client's flows carry its pid (the bulk client is another process).
    let rr_records: Vec<&Value> = records
        .iter()
        .filter(|r| r["destinationTransportPort"] != 7401)
        .collect();
    assert!(
        rr_records
            .iter()
            .all(|r| r["sourceProcessId"] == client_pid)
    );

    // Per process, summed over both directions: exactly conntrack's counters.
    let conntrack_bytes = |ports: &[u16]| -> u64 {
        cli.iter()
            .filter(|e| e.original.0 == "10.200.0.1" && ports.contains(&e.original.3))
            .map(|e| e.original_counters.1 + e.reply_counters.1)
            .sum()
    };
    let exported = |name: &str, ports: &[u64]| -> u64 {
        records
            .iter()
            .filter(|r| {
                (r["sourceProcessName"] == name || r["destinationProcessName"] == name)
                    && ports.contains(&r["destinationTransportPort"].as_u64().unwrap())
            })
            .map(octets)
            .sum()
    };
    let all = conntrack_bytes(&[7400, 7401, 7402]);
    assert_eq!(exported(SERVER_NAME, &[7400, 7401, 7402]), all);
    assert_eq!(exported(CLIENT_NAME, &[7400, 7401, 7402]), all);
    let rr = conntrack_bytes(&[7400, 7402]);
    assert_eq!(exported(CLIENT_NAME, &[7400, 7402]), rr);

    // And the veth's L3 bytes (its counters include the 14-byte Ethernet header).
    let l3 = |bytes: u64, packets: u64| bytes - 14 * packets;
    let within_2_percent = |exported: u64, wire: u64| {
        let diff = exported.abs_diff(wire) as f64;
        assert!(
            diff <= wire as f64 * 0.02,
            "exported {exported} vs veth L3 {wire}"
        );
    };
    eprintln!(
        "accuracy: request/response exported {} B, conntrack {rr} B, veth L3 {} B; bulk exported {} B, veth L3 {} B",
        exported(CLIENT_NAME, &[7400, 7402]),
        l3(bytes1 - bytes0, packets1 - packets0),
        exported(CLIENT_NAME, &[7401]),
        l3(bytes2 - bytes1, packets2 - packets1),
    );
    within_2_percent(
        exported(CLIENT_NAME, &[7400, 7402]),
        l3(bytes1 - bytes0, packets1 - packets0),
    );
    within_2_percent(
        exported(CLIENT_NAME, &[7401]),
        l3(bytes2 - bytes1, packets2 - packets1),
    );
    drop(bpffs);
}

/// A bpffs mounted for one test, unmounted on drop.
struct BpfFs {
    path: String,
}

impl BpfFs {
    fn mount(name: &str) -> Self {
        let path = format!("/run/{name}-bpf");
        std::fs::create_dir_all(&path).unwrap();
        support::run("mount", &["-t", "bpf", "bpf", &path]);
        Self { path }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn without_bpf_capabilities_the_agent_exports_without_owners() {
    let (_serial, pair, collector, port) = setup();
    // Root, but without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: the probe cannot load.
    let agent = start_agent(
        &pair.server,
        "conntrack: {pollInterval: 500ms}\n\
         export: {activeTimeout: 1s, idleTimeout: 2s}\n\
         deny: {enabled: false}\n\
         attribution: {pinPath: \"\"}\n",
        port,
        &[
            "setpriv",
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--inh-caps=-all",
        ],
    );
    std::thread::sleep(Duration::from_millis(1_000));
    let mut server = spawn_server(&pair.server, 7410);
    run_client(&pair.client, "rr", 7410);
    // The metrics say the probe is off.
    let metrics = pair.server.enter(|| {
        let mut stream = TcpStream::connect("127.0.0.1:9400").unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    assert!(
        metrics.lines().any(|l| l == "flowex_probe_loaded 0"),
        "{metrics}"
    );
    let stderr = finish(agent);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        stderr
            .matches("eBPF socket probe unavailable, exporting flows without process attribution")
            .count(),
        1,
        "{stderr}"
    );
    let cli = conntrack_cli(&pair.server);
    collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(10));
    let records: Vec<Value> = collector
        .records()
        .into_iter()
        .filter(|r| is_test_flow(r, 7410))
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        assert_eq!(r["sourceProcessId"], 0, "{r}");
        assert_eq!(r["sourceProcessName"], "", "{r}");
        assert_eq!(r["destinationProcessId"], 0, "{r}");
    }
    let expected: u64 = cli
        .iter()
        .filter(|e| e.original.0 == "10.200.0.1")
        .map(|e| e.original_counters.1 + e.reply_counters.1)
        .sum();
    assert_eq!(records.iter().map(octets).sum::<u64>(), expected);
}
