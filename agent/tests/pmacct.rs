//! pmacct's nfacctd (1.7.7, Debian 12) reading flowex's records with custom primitives for
//! flowex's own elements. With the plain mapping, sourceProcessId and sourceProcessName
//! (32473:1 and 32473:2) read 0 and "" while the other process elements decode: nfacctd
//! numbers repeated element ids in a template without their enterprise number
//! (`ext_db_get_next_ie` in its `nfv9_template.c`), and flowex's templates carry 29305:1
//! and 29305:2 before them. The mapping shipped in `examples/pmacct/primitives.lst` takes
//! that into account and reads every element.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_sim::synthetic;
use flowex_agent::config::Transport;
use flowex_agent::enrich::attribution::{EndOwner, FlowOwners};
use flowex_agent::export::statistics::Statistics;
use flowex_agent::export::{BatchBuilder, ExportingProcess};
use flowex_agent::records::{AgentRecord, templates};
use flowex_ipfix::Registry;
use support::exporting::{eventually, target};

const RECORDS: u64 = 20;

/// The naive mapping: one primitive per element.
const PLAIN: &str = "\
name=src_proc_id field_type=32473:1 len=4 semantics=u_int
name=src_proc_name field_type=32473:2 len=vlen semantics=str
name=src_cgroup field_type=32473:3 len=8 semantics=u_int
name=src_container field_type=32473:4 len=vlen semantics=str
name=dst_proc_id field_type=32473:5 len=4 semantics=u_int
name=dst_proc_name field_type=32473:6 len=vlen semantics=str
name=dst_cgroup field_type=32473:7 len=8 semantics=u_int
name=dst_container field_type=32473:8 len=vlen semantics=str
";

/// Sends [`RECORDS`] records with known owners to nfacctd using `primitives`, and returns
/// what it printed for each, by source port: (src pid, src name, dst pid, dst name).
async fn nfacctd_reads(
    name: &str,
    primitives: &Path,
) -> BTreeMap<u64, (String, String, String, String)> {
    let dir = std::env::temp_dir().join(format!("flowex-pmacct-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let output = dir.join("flows.json");
    let config = dir.join("nfacctd.conf");
    std::fs::write(
        &config,
        format!(
            "daemonize: false\n\
             nfacctd_ip: 127.0.0.1\n\
             nfacctd_port: {port}\n\
             aggregate_primitives: {}\n\
             plugins: print\n\
             print_output: json\n\
             print_output_file: {}\n\
             print_output_file_append: true\n\
             print_refresh_time: 1\n\
             aggregate: src_port, src_proc_id, src_proc_name, dst_proc_id, dst_proc_name\n",
            primitives.display(),
            output.display()
        ),
    )
    .unwrap();
    let nfacctd = Command::new("nfacctd")
        .arg("-f")
        .arg(&config)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nfacctd (apt-get install pmacct)");
    // nfacctd binds within a second; binding the port fails from then on.
    for _ in 0..100 {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let registry = Registry::default();
    let templates = Arc::new(templates(&registry).unwrap());
    let mut to_nfacctd = target(Transport::Udp, format!("127.0.0.1:{port}"), None);
    to_nfacctd.max_message_size = 1_472;
    // With the statistics and type records the agent sends by default among the records.
    to_nfacctd.options = true;
    let statistics =
        Arc::new(Statistics::new(&registry, Some(Duration::from_secs(1)), false, true).unwrap());
    let process =
        ExportingProcess::start_with_statistics(&[to_nfacctd], templates, 41, Some(statistics))
            .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    let mut builder = BatchBuilder::default();
    for i in 0..RECORDS {
        let record = AgentRecord {
            flow: synthetic::flow_record(i, false),
            start_ms: 1_764_000_000_000,
            end_ms: 1_764_000_001_000,
            owners: FlowOwners {
                source: Some(EndOwner::new(1_000 + i as u32, 7, "client", "")),
                destination: Some(EndOwner::new(2_000 + i as u32, 9, "server", "")),
            },
            kubernetes: Default::default(),
        };
        builder.push(record.flow.template_id(), &record);
    }
    process.export(builder.finish());
    eventually("the records sent", || {
        stats.records_exported.load(Ordering::Acquire) == RECORDS
    })
    .await;
    process.shutdown(Duration::from_secs(2)).await;
    // The print plugin writes at its refresh (1 s): wait until a line per record is there
    // (at most 10 s), then stop nfacctd's processes (its core ignores SIGTERM here; the
    // group is killed).
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&output).unwrap_or_default();
        if text.lines().count() as u64 >= RECORDS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", nfacctd.id())])
        .status()
        .unwrap();
    let _ = nfacctd.wait_with_output();
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|r| {
            let field = |k: &str| match &r[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((
                r["port_src"].as_u64()?,
                (
                    field("src_proc_id"),
                    field("src_proc_name"),
                    field("dst_proc_id"),
                    field("dst_proc_name"),
                ),
            ))
        })
        .collect()
}

fn expected(source: bool) -> BTreeMap<u64, (String, String, String, String)> {
    (0..RECORDS)
        .map(|i| {
            let port = u64::from(synthetic::flow_record(i, false).source_port);
            let (src_pid, src_name) = if source {
                ((1_000 + i).to_string(), "client".to_owned())
            } else {
                ("0".to_owned(), String::new())
            };
            (
                port,
                (
                    src_pid,
                    src_name,
                    (2_000 + i).to_string(),
                    "server".to_owned(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfacctd_reads_the_process_elements_with_the_shipped_primitives() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pmacct/primitives.lst");
    assert_eq!(nfacctd_reads("shipped", &shipped).await, expected(true));
}

/// The evidence that the fault is nfacctd's: the same records, the same primitives minus
/// the two placeholders, and only the two elements whose ids also occur under the reverse
/// enterprise number 29305 earlier in the template read as nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfacctd_misses_source_process_elements_with_the_plain_mapping() {
    let plain =
        std::env::temp_dir().join(format!("flowex-pmacct-{}-plain.lst", std::process::id()));
    std::fs::write(&plain, PLAIN).unwrap();
    let read = nfacctd_reads("plain", &plain).await;
    let _ = std::fs::remove_file(&plain);
    assert_eq!(read, expected(false));
}
