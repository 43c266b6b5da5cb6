//! Network namespaces for kernel tests: created per test, deleted on drop (also when the
//! test fails), entered from a thread with setns.

#![allow(dead_code)]

pub mod certificates;
pub mod exporting;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace named `fx<pid>-<n><tag>`.
pub struct Netns {
    pub name: String,
}

/// Runs a command, failing the test with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Netns {
    /// Creates a namespace with conntrack accounting and timestamps on, and loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "fx{}-{}{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]);
        ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Makes conntrack track this namespace's traffic (a rule that uses conntrack).
    pub fn track_connections(&self) {
        self.exec(&["nft", "add table inet fx"]);
        self.exec(&[
            "nft",
            "add chain inet fx in { type filter hook input priority 0; policy accept; }",
        ]);
        self.exec(&[
            "nft",
            "add rule inet fx in ct state new,established,related accept",
        ]);
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.enter_async(f)
            .join()
            .expect("thread in namespace panicked")
    }
}

impl Netns {
    /// Like [`Netns::enter`], but returns at once with the thread's handle.
    pub fn enter_async<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd changes only this thread's netns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A client and a server namespace joined by a veth pair, with IPv4 and IPv6 addresses:
/// client 10.200.0.1 / fd00:200::1, server 10.200.0.2 / fd00:200::2.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
}

impl Pair {
    pub fn new() -> Self {
        let client = Netns::new("c");
        let server = Netns::new("s");
        run(
            "ip",
            &[
                "-n",
                &client.name,
                "link",
                "add",
                "vc",
                "type",
                "veth",
                "peer",
                "name",
                "vs",
                "netns",
                &server.name,
            ],
        );
        for (ns, dev, v4, v6) in [
            (&client, "vc", "10.200.0.1/24", "fd00:200::1/64"),
            (&server, "vs", "10.200.0.2/24", "fd00:200::2/64"),
        ] {
            ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
            ns.exec(&["ip", "addr", "add", v6, "dev", dev, "nodad"]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        server.track_connections();
        Self { client, server }
    }
}

/// One entry of `conntrack -L -o extended`, the fields the tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliEntry {
    pub protocol: u8,
    pub original: (String, String, u16, u16),
    pub reply: (String, String, u16, u16),
    pub original_counters: (u64, u64),
    pub reply_counters: (u64, u64),
    pub zone: u16,
    pub mark: u32,
}

/// Parses `conntrack -L -o extended` output (an independent reading of the table).
pub fn conntrack_cli(ns: &Netns) -> Vec<CliEntry> {
    let output = ns.exec(&["conntrack", "-L", "-o", "extended"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let protocol: u8 = words[3].parse().expect("protocol number");
            let mut values: std::collections::HashMap<&str, Vec<&str>> = Default::default();
            for word in &words {
                if let Some((k, v)) = word.split_once('=') {
                    values.entry(k).or_default().push(v);
                }
            }
            let get = |k: &str, i: usize| values.get(k).and_then(|v| v.get(i)).copied();
            let num = |k: &str, i: usize| get(k, i).map_or(0, |v| v.parse::<u64>().unwrap());
            let tuple = |i: usize| {
                (
                    get("src", i).unwrap().to_owned(),
                    get("dst", i).unwrap().to_owned(),
                    num("sport", i) as u16,
                    num("dport", i) as u16,
                )
            };
            CliEntry {
                protocol,
                original: tuple(0),
                reply: tuple(1),
                original_counters: (num("packets", 0), num("bytes", 0)),
                reply_counters: (num("packets", 1), num("bytes", 1)),
                zone: num("zone", 0) as u16,
                mark: num("mark", 0) as u32,
            }
        })
        .collect()
}
