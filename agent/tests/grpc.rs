//! `transport: grpc`: Antrea's FlowExportService over mutual TLS, to collector-sim's gRPC
//! endpoint and to a server written with Python's grpcio (an independent HTTP/2, gRPC and
//! TLS stack), with certificates made here by openssl(1).

mod support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_sim::{Collector, Endpoint, synthetic};
use flowex_agent::config::Transport;
use flowex_agent::export::ExportingProcess;
use serde_json::Value;
use support::certificates::Certificates;
use support::exporting::{WAIT, batch, eventually, target, templates};

/// Records by (source address, source port), to compare two collectors' copies.
fn by_flow(records: &[Value]) -> BTreeMap<(String, u64), Value> {
    records
        .iter()
        .map(|r| {
            let source = r
                .get("sourceIPv4Address")
                .or_else(|| r.get("sourceIPv6Address"))
                .and_then(Value::as_str)
                .unwrap()
                .to_owned();
            (
                (source, r["sourceTransportPort"].as_u64().unwrap()),
                r.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_flows_carry_the_same_values_as_the_ipfix_records() {
    let certs = Certificates::new("grpc-same");
    let grpc = certs.collector_on("grpc://127.0.0.1:0", "server");
    let tcp = {
        let mut config =
            collector_sim::CollectorConfig::new(vec!["tcp://127.0.0.1:0".parse().unwrap()]);
        config.keep_records = true;
        Collector::start(config).unwrap()
    };
    let Some(Endpoint::Grpc(grpc_addr)) = grpc.grpc_endpoint() else {
        panic!("no grpc endpoint")
    };
    let process = ExportingProcess::start(
        &[
            target(
                Transport::Grpc,
                grpc_addr.to_string(),
                Some(certs.agent("ca", true)),
            ),
            target(
                Transport::Tcp,
                tcp.tcp_endpoint().unwrap().addr().to_string(),
                None,
            ),
        ],
        templates(),
        21,
    )
    .unwrap();
    for chunk in 0..6 {
        process.export(batch(chunk * 1_000, 1_000));
    }
    let grpc_stats = Arc::clone(&process.collectors()[0].stats);
    assert!(grpc.wait_for_records(6_000, WAIT));
    assert!(tcp.wait_for_records(6_000, WAIT));
    eventually("the aggregator's answers", || {
        grpc_stats.records_exported.load(Ordering::Acquire) == 6_000
    })
    .await;
    process.shutdown(WAIT).await;
    let summary = grpc.wait_until_quiet(Duration::from_millis(200), WAIT);
    assert_eq!(summary.records, 6_000);
    assert_eq!(summary.by_observation_domain.get(&21), Some(&6_000));
    assert_eq!(summary.tls_refused, 0);
    // Up to FLOWS_PER_REQUEST (1,024) flows per stream message.
    assert_eq!(
        summary.messages,
        6 * 1_000_u64.div_ceil(flowex_agent::export::grpc::FLOWS_PER_REQUEST as u64)
    );
    assert_eq!(grpc_stats.records_dropped(), 0);
    assert_eq!(grpc_stats.records_resent.load(Ordering::Acquire), 0);

    // Field by field: every key the gRPC side names has the IPFIX side's value.
    let ipfix = by_flow(&tcp.records());
    let flows = by_flow(&grpc.records());
    assert_eq!(flows.len(), 6_000);
    let mut compared = std::collections::BTreeSet::new();
    for (key, flow) in &flows {
        let record = &ipfix[key];
        for (name, value) in flow.as_object().unwrap() {
            let Some(expected) = record.get(name) else {
                continue;
            };
            compared.insert(name.clone());
            assert_eq!(value, expected, "{name} of {key:?}: {flow}\n{record}");
        }
    }
    assert!(compared.len() >= 38, "only {compared:?} compared");
    // What has another name or form on the gRPC side.
    let (some_key, some_flow) = flows.iter().next().unwrap();
    let record = &ipfix[some_key];
    assert_eq!(
        some_flow["flowStartMilliseconds"].as_u64().unwrap(),
        record["flowStartSeconds"].as_u64().unwrap() * 1000
    );
    for (grpc_name, ipfix_v4, ipfix_v6) in [
        (
            "destinationServiceIP",
            "destinationServiceIPv4",
            "destinationServiceIPv6",
        ),
        (
            "destinationClusterIP",
            "destinationClusterIPv4",
            "destinationClusterIPv6",
        ),
        ("proxySnatIP", "proxySnatIPv4", "proxySnatIPv6"),
    ] {
        for (key, flow) in &flows {
            let record = &ipfix[key];
            let expected = record
                .get(ipfix_v4)
                .or_else(|| record.get(ipfix_v6))
                .unwrap();
            let unspecified = matches!(expected.as_str(), Some("0.0.0.0" | "::"));
            match flow.get(grpc_name) {
                Some(value) => assert_eq!(value, expected, "{grpc_name} of {key:?}"),
                None => assert!(unspecified, "{grpc_name} of {key:?} missing: {expected}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_and_a_restarted_aggregator_lose_nothing() {
    let certs = Certificates::new("grpc-restart");
    let first = certs.collector_on("grpc://127.0.0.1:0", "server");
    let address = first.grpc_endpoint().unwrap().addr().to_string();

    // Without a client certificate the aggregator refuses every session.
    let refused = ExportingProcess::start(
        &[target(
            Transport::Grpc,
            address.clone(),
            Some(certs.agent("ca", false)),
        )],
        templates(),
        1,
    )
    .unwrap();
    let refused_stats = Arc::clone(&refused.collectors()[0].stats);
    refused.export(batch(0, 100));
    eventually("refused sessions", || first.summary().tls_refused >= 2).await;
    eventually("failed attempts", || {
        refused_stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    assert_eq!(refused_stats.records_exported.load(Ordering::Acquire), 0);
    assert_eq!(refused.shutdown(Duration::from_millis(100)).await, 100);
    assert_eq!(first.summary().records, 0);

    // With one: records flow; the aggregator restarts on the same port; the records
    // exported meanwhile wait and arrive at the new one.
    let process = ExportingProcess::start(
        &[target(
            Transport::Grpc,
            address.clone(),
            Some(certs.agent("ca", true)),
        )],
        templates(),
        2,
    )
    .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 1_000));
    assert!(first.wait_for_records(1_000, WAIT));
    eventually("the first answer", || {
        stats.records_exported.load(Ordering::Acquire) == 1_000
    })
    .await;
    drop(first);
    process.export(batch(1_000, 1_000));
    eventually("a failed attempt", || {
        stats.send_errors.load(Ordering::Acquire) >= 1
    })
    .await;
    let second = certs.collector_on(&format!("grpc://{address}"), "server");
    assert!(
        second.wait_for_records(1_000, WAIT),
        "{:?}",
        second.summary()
    );
    eventually("the second answer", || {
        stats.records_exported.load(Ordering::Acquire) == 2_000
    })
    .await;
    process.shutdown(WAIT).await;
    let summary = second.wait_until_quiet(Duration::from_millis(200), WAIT);
    assert_eq!(summary.records, 1_000);
    assert_eq!(stats.records_dropped(), 0);
    assert_eq!(
        stats.records_exported.load(Ordering::Acquire) + stats.records_dropped(),
        process.records_produced()
    );
}

/// A FlowExportService in Python's grpcio, compiled from flowex's .proto files at run
/// time, requiring client certificates; it prints one JSON line per stream.
const PYTHON_SERVER: &str = r#"
import json, os, sys, tempfile
from concurrent import futures
import grpc
from grpc_tools import protoc
proto_dir, cert, key, ca = sys.argv[1:5]
out = tempfile.mkdtemp()
include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
if protoc.main(["protoc", "-I" + proto_dir, "-I" + include, "--python_out=" + out,
                "--grpc_python_out=" + out, "flow.proto", "service.proto"]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, out)
import service_pb2, service_pb2_grpc

class Sink(service_pb2_grpc.FlowExportServiceServicer):
    def Export(self, requests, context):
        flows = []
        for request in requests:
            flows.extend(request.flows)
        print(json.dumps({
            "flows": len(flows),
            "domains": sorted({f.ipfix.observation_domain_id for f in flows}),
            "reasons": sorted({f.end_reason for f in flows}),
            "ports": sorted({f.transport.source_port for f in flows})[:3],
            "versions": sorted({f.ip.version for f in flows}),
            "service_port_names": sorted({f.k8s.destination_service_port_name for f in flows})[:2],
        }), flush=True)
        return service_pb2.ExportResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
service_pb2_grpc.add_FlowExportServiceServicer_to_server(Sink(), server)
credentials = grpc.ssl_server_credentials(
    [(open(key, "rb").read(), open(cert, "rb").read())],
    root_certificates=open(ca, "rb").read(), require_client_auth=True)
port = server.add_secure_port("127.0.0.1:0", credentials)
print(json.dumps({"port": port}), flush=True)
server.start()
server.wait_for_termination()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_receives_every_flow_with_its_values() {
    let certs = Certificates::new("grpc-python");
    let script = certs.dir.join("server.py");
    std::fs::write(&script, PYTHON_SERVER).unwrap();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../flowpb/proto");
    let mut server = Command::new("python3")
        .arg(&script)
        .args([
            proto,
            &certs.path("server.crt"),
            &certs.path("server.key"),
            &certs.path("ca.crt"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let port = first["port"]
        .as_u64()
        .expect("grpcio port (pip install grpcio grpcio-tools)");
    let process = ExportingProcess::start(
        &[target(
            Transport::Grpc,
            format!("127.0.0.1:{port}"),
            Some(certs.agent("ca", true)),
        )],
        templates(),
        33,
    )
    .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 1_000));
    let reader = std::thread::spawn(move || {
        let line = lines.next().unwrap().unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    });
    eventually("grpcio's answer", || {
        stats.records_exported.load(Ordering::Acquire) == 1_000
    })
    .await;
    process.shutdown(WAIT).await;
    let stream = reader.join().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(stream["flows"], 1_000);
    assert_eq!(stream["domains"], serde_json::json!([33]));
    assert_eq!(stream["versions"], serde_json::json!([4, 6]));
    let expected_ports: Vec<u64> = {
        let mut ports: Vec<u64> = (0..1_000)
            .map(|i| u64::from(synthetic::flow_record(i, i % 4 == 3).source_port))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports.truncate(3);
        ports
    };
    assert_eq!(stream["ports"], serde_json::json!(expected_ports));
    let reasons: Vec<u64> = {
        let mut r: Vec<u64> = (0..1_000)
            .map(|i| u64::from(synthetic::flow_record(i, i % 4 == 3).flow_end_reason))
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    };
    assert_eq!(stream["reasons"], serde_json::json!(reasons));
    assert_eq!(stats.records_dropped(), 0);
}
