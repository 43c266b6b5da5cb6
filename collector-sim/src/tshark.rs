//! Capturing on loopback with tshark and reading IPFIX back with its decoder: an
//! independent implementation to check flowex's encoder and collector-sim against.
//! Needs root (or capture capabilities) and tshark on the PATH.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tshark capture on the loopback interface, written to a pcap file.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts capturing packets matching the BPF `filter` on `lo`, and returns once tshark
    /// says it is capturing.
    pub fn start(filter: &str) -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!(
            "flowex-capture-{}-{}.pcap",
            std::process::id(),
            filter.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let _ = std::fs::remove_file(&path);
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-q", "-f", filter, "-w"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tshark (apt-get install tshark): {e}"))?;
        let stderr = child.stderr.take().ok_or("tshark has no stderr")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Capturing on") {
                    let _ = ready_tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = ready_tx.send(Err(said.join("\n")));
        });
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {
                // dumpcap reports before the first packet can be missed only by a hair;
                // a short pause makes the start of the capture certain.
                std::thread::sleep(Duration::from_millis(300));
                Ok(Self { child, path })
            }
            Ok(Err(said)) => Err(format!("tshark did not start capturing: {said}")),
            Err(_) => {
                let _ = child.kill();
                Err("tshark did not start capturing within 20 s".into())
            }
        }
    }

    /// Stops the capture (SIGINT, so the file is complete) and returns the pcap path.
    pub fn stop(mut self) -> Result<PathBuf, String> {
        std::thread::sleep(Duration::from_millis(300));
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err("tshark did not stop".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.path.clone())
    }
}

/// One row per captured packet of `fields` as decoded by tshark's cflow dissector for
/// `decode_as` (e.g. `udp.port==4739`); every occurrence of a field, comma-separated.
pub fn fields(pcap: &Path, decode_as: &str, fields: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(pcap)
        .args(["-d", &format!("{decode_as},cflow"), "-Y", "cflow"])
        .args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"])
        .args(["-E", "separator=;"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run tshark: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split(';').map(str::to_owned).collect())
        .collect())
}

/// tshark's expert-info lines of warning severity or worse for the capture (sequence
/// errors, malformed packets); empty when tshark found nothing to complain about.
pub fn expert_warnings(pcap: &Path, decode_as: &str) -> Result<Vec<String>, String> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-d",
            &format!("{decode_as},cflow"),
            "-q",
            "-z",
            "expert,warn",
        ])
        .output()
        .map_err(|e| format!("cannot run tshark: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(text
        .lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            !line.trim().is_empty()
                && !lower.starts_with("====")
                && !lower.contains("expert information")
        })
        .map(str::to_owned)
        .collect())
}
