//! The exporter's options records: RFC 7011 section 4 statistics (what each collector got
//! and missed, what the sources observed and lost), RFC 5610 type records for flowex's own
//! elements, and the withdrawal of every template when a TCP session ends. Read by
//! collector-sim, by tshark, and by python-ipfix, which learns flowex's elements from the
//! type records itself.

mod support;

use std::io::Read;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_sim::tshark::{self, Capture};
use collector_sim::{Collector, CollectorConfig, Endpoint};
use flowex_agent::config::Transport;
use flowex_agent::export::statistics::{InterfaceDrops, Losses, Statistics, StatisticsSource};
use flowex_agent::export::{BatchBuilder, DropReason, EncodedBatch, ExportingProcess};
use flowex_ipfix::{Registry, Template, Value, ValueRecord, antrea};
use serde_json::Value as Json;
use support::exporting::{WAIT, eventually, target};

/// The enterprise number of these tests: one collector-sim's registry does not know.
const PEN: u32 = 4_242;
/// A template of flowex's own elements (under [`PEN`]).
const OWNER_TEMPLATE_ID: u16 = 300;

/// Losses as the agent's sources would report them.
struct Sources;

impl StatisticsSource for Sources {
    fn losses(&self) -> [Losses; 2] {
        [
            Losses {
                count: 2,
                first_ms: 1_764_000_000_000,
                last_ms: 1_764_000_060_000,
            },
            Losses {
                count: 1,
                first_ms: 1_764_000_030_000,
                last_ms: 1_764_000_030_000,
            },
        ]
    }

    fn interface_drops(&self) -> Vec<InterfaceDrops> {
        Vec::new()
    }
}

fn templates(registry: &Registry) -> Arc<Vec<Template>> {
    Arc::new(vec![
        antrea::ipv4_template(registry).unwrap(),
        antrea::ipv6_template(registry).unwrap(),
        Template::from_names(
            registry,
            OWNER_TEMPLATE_ID,
            &["sourceIPv4Address", "sourceProcessId", "sourceProcessName"],
        )
        .unwrap(),
    ])
}

/// `count` records of the owner template: 10.1.0.i, pid 1000 + i, "curl".
fn owner_batch(templates: &[Template], count: u32) -> EncodedBatch {
    let template = &templates[2];
    let mut builder = BatchBuilder::default();
    for i in 0..count {
        let values = [
            Value::Ipv4(Ipv4Addr::from(0x0a01_0000 + i)),
            Value::Unsigned(u64::from(1_000 + i)),
            Value::String("curl"),
        ];
        assert!(builder.push(
            OWNER_TEMPLATE_ID,
            &ValueRecord::new(template, &values).unwrap()
        ));
    }
    builder.finish()
}

/// A TCP listener that keeps every byte it is sent, until the sender closes.
fn raw_sink() -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        bytes
    });
    (address, reader)
}

fn options_of(records: &[Json], template_id: u16) -> Vec<&Json> {
    records
        .iter()
        .filter(|r| r["optionsTemplateId"] == template_id)
        .collect()
}

/// Over TCP: statistics on their interval and at the end, type records after the
/// templates, and every template withdrawn when the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_type_records_and_withdrawals_over_tcp() {
    let collector = {
        let mut config = CollectorConfig::new(vec!["tcp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    };
    let port = collector.tcp_endpoint().unwrap().addr().port();
    let capture = Capture::start(&format!("tcp port {port}")).unwrap();
    let (sink, sink_bytes) = raw_sink();

    let registry = Registry::new(PEN).unwrap();
    let templates = templates(&registry);
    let statistics = Arc::new(
        Statistics::new(&registry, Some(Duration::from_millis(300)), false, true).unwrap(),
    );
    statistics.set_source(Arc::new(Sources));
    let mut to_collector = target(
        Transport::Tcp,
        collector.tcp_endpoint().unwrap().addr().to_string(),
        None,
    );
    to_collector.options = true;
    let mut to_sink = target(Transport::Tcp, sink, None);
    to_sink.name = "sink".into();
    to_sink.options = true;
    let process = ExportingProcess::start_with_statistics(
        &[to_collector, to_sink],
        Arc::clone(&templates),
        21,
        Some(statistics),
    )
    .unwrap();
    process.export(owner_batch(&templates, 500));
    assert!(
        collector.wait_for_records(500, WAIT),
        "{:?}",
        collector.summary()
    );
    // A statistics record within its interval that counts all 500 as exported.
    let stats = Arc::clone(&process.collectors()[0].stats);
    eventually("statistics counting the 500 records", || {
        options_of(&collector.options_records(), 258)
            .iter()
            .any(|r| r["exportedFlowRecordTotalCount"] == 500)
    })
    .await;
    process.shutdown(WAIT).await;
    let summary = collector.wait_until_quiet(Duration::from_millis(300), WAIT);
    let pcap = capture.stop().unwrap();

    // collector-sim: every record, no gap, the names learned from the type records.
    assert_eq!(summary.records, 500);
    assert_eq!(summary.sequence_gaps, 0, "{summary:?}");
    assert_eq!(summary.decode_error_total(), 0, "{summary:?}");
    assert_eq!(summary.type_records, 13, "{summary:?}");
    // 256, 257, 300 and the options templates 258, 259 and 261.
    assert_eq!(summary.withdrawals, 6, "{summary:?}");
    let records = collector.records();
    assert_eq!(records[0]["sourceProcessName"], "curl", "{}", records[0]);
    assert_eq!(records[7]["sourceProcessId"], 1_007, "{}", records[7]);
    let options = collector.options_records();
    let last = *options_of(&options, 258).last().unwrap();
    assert_eq!(last["exportingProcessId"], 1);
    assert_eq!(last["exportedFlowRecordTotalCount"], 500);
    assert_eq!(last["notSentFlowTotalCount"], 0);
    assert_eq!(last["flowStartMilliseconds"], 0);
    assert_eq!(
        last["exportedMessageTotalCount"],
        stats.messages.load(Ordering::Acquire) - 2,
        "every message but its own and the withdrawals' was sent when it was built"
    );
    let metering = options_of(&options, 259);
    let conntrack = metering
        .iter()
        .rev()
        .find(|r| r["meteringProcessId"] == 1)
        .unwrap();
    assert_eq!(conntrack["ignoredPacketTotalCount"], 2);
    assert_eq!(conntrack["flowStartMilliseconds"], 1_764_000_000_000u64);
    assert_eq!(conntrack["flowEndMilliseconds"], 1_764_000_060_000u64);
    let deny = metering
        .iter()
        .rev()
        .find(|r| r["meteringProcessId"] == 2)
        .unwrap();
    assert_eq!(deny["ignoredPacketTotalCount"], 1);

    // tshark: the statistics and the type records, and no complaint about the stream.
    let decode_as = format!("tcp.port=={port}");
    let rows = tshark::fields(
        &pcap,
        &decode_as,
        &[
            "cflow.notsent_flows",
            "cflow.information_element_name",
            "cflow.mp_id",
        ],
    )
    .unwrap();
    let column = |i: usize| -> Vec<String> {
        rows.iter()
            .flat_map(|row| row[i].split(',').map(str::to_owned).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .collect()
    };
    assert!(!column(0).is_empty() && column(0).iter().all(|v| v == "0"));
    assert!(
        column(1).contains(&"sourceProcessName".to_owned()),
        "{rows:?}"
    );
    assert_eq!(column(1).len() % 13, 0, "{rows:?}");
    assert!(column(2).contains(&"1".to_owned()) && column(2).contains(&"2".to_owned()));
    // tshark's one complaint is its own: its dissector reads a scope field count in every
    // options template record, also in a withdrawal, which RFC 7011 section 8.1 gives as
    // template id and field count 0 alone; it then takes the next withdrawn id (259) for
    // a scope count. Nothing else in the stream is flagged.
    let warnings = tshark::expert_warnings(&pcap, &decode_as).unwrap();
    let complaints: Vec<&String> = warnings
        .iter()
        .filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(complaints.len(), 1, "{warnings:?}");
    assert!(
        complaints[0].ends_with("More scope fields (259) than fields (0)"),
        "{warnings:?}"
    );

    // python-ipfix, on the sink's copy of the stream: learns the elements from the type
    // records, then decodes the records by name with what it learned.
    let bytes = sink_bytes.join().unwrap();
    let path = std::env::temp_dir().join(format!("flowex-statistics-{}.ipfix", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let python = |args: &[&str]| {
        let output = std::process::Command::new("python3")
            .args(["-c", PYTHON_IPFIX_LEARN])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "python-ipfix: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let specs = python(&["learn"]);
    let mut args = vec!["decode"];
    args.extend(specs.lines());
    let decoded = python(&args);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        decoded.trim(),
        "learned 13 elements of PEN 4242; 500 records named curl, pids 1000..1499; exported 500, not sent 0; unreadable: 1 message(s), the last: True"
    );
}

/// Reads an IPFIX stream, in two runs: `learn` prints an element spec for each type record
/// (whose own elements python-ipfix knows: they are IANA's); `decode SPEC...` registers
/// those elements, then decodes the data records by their names and reads the last
/// exporting process statistics. python-ipfix reads
/// every options template record with a scope field count, which the 4-byte withdrawal
/// records of RFC 7011 section 8.1 lack, so it cannot read the stream's last message (the
/// withdrawals); the script says how many messages it could not read and whether those
/// were the last.
const PYTHON_IPFIX_LEARN: &str = r#"
import sys
import ipfix.ie, ipfix.message
ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()
TYPES = ["octetArray", "unsigned8", "unsigned16", "unsigned32", "unsigned64", "signed8",
         "signed16", "signed32", "signed64", "float32", "float64", "boolean", "macAddress",
         "string", "dateTimeSeconds", "dateTimeMilliseconds", "dateTimeMicroseconds",
         "dateTimeNanoseconds", "ipv4Address", "ipv6Address"]

def records(path):
    """Every record python-ipfix can read, and the positions of the messages it cannot."""
    out, unreadable, count = [], [], 0
    buffer = ipfix.message.MessageBuffer()
    with open(path, "rb") as stream:
        while True:
            try:
                buffer.read_message(stream)
            except EOFError:
                break
            try:
                out.extend(buffer.namedict_iterator())
            except ValueError:
                unreadable.append(count)
            count += 1
    return out, unreadable, count

if sys.argv[2] == "learn":
    # A fresh interpreter: python-ipfix caches every element it meets, unnamed ones too,
    # so the learning pass and the decoding pass run in two processes.
    for record in records(sys.argv[1])[0]:
        if "informationElementName" in record:
            kind = TYPES[record["informationElementDataType"]]
            print(f'{record["informationElementName"]}({record["privateEnterpriseNumber"]}/'
                  f'{record["informationElementId"]})<{kind}>')
    sys.exit(0)
learned = set()
for spec in sys.argv[3:]:
    element = ipfix.ie.for_spec(spec)
    learned.add((element.pen, element.num))
names, pids, exported, not_sent = set(), [], None, None
all_records, unreadable, count = records(sys.argv[1])
for record in all_records:
    if "sourceProcessName" in record:
        names.add(record["sourceProcessName"])
        pids.append(record["sourceProcessId"])
    if "notSentFlowTotalCount" in record:
        exported = record["exportedFlowRecordTotalCount"]
        not_sent = record["notSentFlowTotalCount"]
pens = sorted({pen for pen, _ in learned})
print(f"learned {len(learned)} elements of PEN {','.join(map(str, pens))}; "
      f"{len(pids)} records named {','.join(sorted(names))}, pids {min(pids)}..{max(pids)}; "
      f"exported {exported}, not sent {not_sent}; "
      f"unreadable: {len(unreadable)} message(s), the last: {unreadable == [count - 1]}")
"#;

/// Over UDP, a collector that was down when records were sent: the statistics it gets
/// once it is up say how many records it missed and when, the same number the metrics
/// give, and exported + not sent = produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_learns_from_the_statistics_what_it_missed() {
    let unused = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    let registry = Registry::default();
    let templates = Arc::new(vec![
        antrea::ipv4_template(&registry).unwrap(),
        antrea::ipv6_template(&registry).unwrap(),
    ]);
    let statistics = Arc::new(
        Statistics::new(&registry, Some(Duration::from_millis(300)), false, false).unwrap(),
    );
    let mut down = target(Transport::Udp, address.to_string(), None);
    down.options = true;
    down.max_message_size = 1_472;
    down.queue_capacity = 100;
    let process =
        ExportingProcess::start_with_statistics(&[down], templates, 5, Some(statistics)).unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    // The queue takes 100; 150 are dropped at once (queue_full).
    process.export(support::exporting::batch(0, 250));
    assert_eq!(stats.dropped(DropReason::QueueFull), 150);
    let collector = {
        let mut config = CollectorConfig::new(vec![Endpoint::Udp(address)]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    };
    eventually("the queued records", || {
        stats.records_exported.load(Ordering::Acquire) + stats.records_dropped() == 250
    })
    .await;
    eventually("statistics with the final counts", || {
        options_of(&collector.options_records(), 258)
            .iter()
            .any(|r| {
                r["exportedFlowRecordTotalCount"].as_u64().unwrap()
                    + r["notSentFlowTotalCount"].as_u64().unwrap()
                    == 250
            })
    })
    .await;
    let options = collector.options_records();
    let last = *options_of(&options, 258).last().unwrap();
    let not_sent = last["notSentFlowTotalCount"].as_u64().unwrap();
    assert_eq!(not_sent, stats.records_dropped());
    assert!(not_sent >= 150, "{last}");
    assert_eq!(
        last["exportedFlowRecordTotalCount"].as_u64().unwrap(),
        stats.records_exported.load(Ordering::Acquire)
    );
    let (first, last_drop) = (
        last["flowStartMilliseconds"].as_u64().unwrap(),
        last["flowEndMilliseconds"].as_u64().unwrap(),
    );
    assert!(first > 1_700_000_000_000 && last_drop >= first, "{last}");
    process.shutdown(WAIT).await;
    // UDP: templates are never withdrawn (RFC 7011 section 8.4).
    let summary = collector.wait_until_quiet(Duration::from_millis(300), WAIT);
    assert_eq!(summary.withdrawals, 0);
}
