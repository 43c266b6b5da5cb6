//! Interoperability with an IPFIX implementation nobody here wrote: tshark decodes what
//! flowex's encoder sends (UDP and TCP, Antrea IPv4 and IPv6 templates), and agrees with
//! collector-sim on the same capture. Runs as root with tshark installed (the README's
//! test command installs it); without them these tests fail with the reason.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use collector_sim::tshark::{self, Capture};
use collector_sim::{Collector, CollectorConfig, Endpoint, synthetic};
use flowex_ipfix::antrea::{self, FlowRecord};
use flowex_ipfix::{EncodeError, Encoder, Registry};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn push_text(out: &mut Vec<String>, text: &str) {
    // tshark lists no entry for an empty string
    if !text.is_empty() {
        out.push(hex(text.as_bytes()));
    }
}

/// The Antrea-PEN fields of a record as tshark lists them (hex, empty strings absent).
fn antrea_entries(r: &FlowRecord<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for text in [
        r.source_pod_name,
        r.source_pod_namespace,
        r.source_node_name,
        r.destination_pod_name,
        r.destination_pod_namespace,
        r.destination_node_name,
    ] {
        push_text(&mut out, text);
    }
    out.push(hex(&r.destination_service_port.to_be_bytes()));
    push_text(&mut out, r.destination_service_port_name);
    for rule in [&r.ingress, &r.egress] {
        push_text(&mut out, rule.name);
        push_text(&mut out, rule.namespace);
        out.push(hex(&[rule.policy_type as u8]));
        push_text(&mut out, rule.rule_name);
        out.push(hex(&[rule.rule_action as u8]));
    }
    push_text(&mut out, r.tcp_state);
    out.push(hex(&[r.flow_type as u8]));
    for text in [r.egress_name, r.egress_ip, r.egress_node_name] {
        push_text(&mut out, text);
    }
    out.push(hex(&r.proxy_snat_port.to_be_bytes()));
    for addr in [
        r.destination_cluster_ip,
        r.proxy_snat_ip,
        r.destination_service_ip,
    ] {
        out.push(match addr {
            IpAddr::V4(a) => hex(&a.octets()),
            IpAddr::V6(a) => hex(&a.octets()),
        });
    }
    out
}

/// Encodes `records` into messages of at most `max` bytes, templates in the first message.
/// Returns the messages and each message's sequence number.
fn encode(records: &[FlowRecord<'_>], max: usize) -> (Vec<Vec<u8>>, Vec<u32>) {
    let registry = Registry::default();
    let templates = [
        antrea::ipv4_template(&registry).unwrap(),
        antrea::ipv6_template(&registry).unwrap(),
    ];
    let mut encoder = Encoder::new(0x00c0_ffee, max).unwrap();
    for template in &templates {
        encoder.add_template(template).unwrap();
    }
    let mut messages = Vec::new();
    let mut sequences = Vec::new();
    for record in records {
        if let Err(EncodeError::MessageFull) =
            encoder.add_record_with_id(record.template_id(), record)
        {
            sequences.push(encoder.sequence_number());
            messages.push(encoder.finish(1_764_000_000).to_vec());
            encoder
                .add_record_with_id(record.template_id(), record)
                .unwrap();
        }
    }
    sequences.push(encoder.sequence_number());
    messages.push(encoder.finish(1_764_000_000).to_vec());
    (messages, sequences)
}

fn records() -> Vec<FlowRecord<'static>> {
    // IPv4 and IPv6 records interleaved, so that data sets switch template mid-message.
    (0..24)
        .map(|i| synthetic::flow_record(i, i % 3 == 2))
        .collect()
}

const FIELDS: [&str; 14] = [
    "cflow.sequence",
    "cflow.srcaddr",
    "cflow.dstaddr",
    "cflow.srcaddrv6",
    "cflow.dstaddrv6",
    "cflow.srcport",
    "cflow.dstport",
    "cflow.protocol",
    "cflow.packets",
    "cflow.octets",
    "cflow.permanent_packets",
    "cflow.permanent_octets",
    "cflow.flow_end_reason",
    "cflow.enterprise_private_entry",
];

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What tshark should list for the records of one message, field by field.
fn expected_row(sequence: u32, records: &[FlowRecord<'_>]) -> Vec<String> {
    let v4: Vec<_> = records.iter().filter(|r| !r.is_ipv6()).collect();
    let v6: Vec<_> = records.iter().filter(|r| r.is_ipv6()).collect();
    let both = |f: &dyn Fn(&FlowRecord<'_>) -> [u64; 2]| join(records.iter().flat_map(f));
    vec![
        sequence.to_string(),
        join(v4.iter().map(|r| r.source_address)),
        join(v4.iter().map(|r| r.destination_address)),
        join(v6.iter().map(|r| r.source_address)),
        join(v6.iter().map(|r| r.destination_address)),
        join(records.iter().map(|r| r.source_port)),
        join(records.iter().map(|r| r.destination_port)),
        join(records.iter().map(|r| r.protocol)),
        both(&|r| [r.forward.packet_delta, r.reverse.packet_delta]),
        both(&|r| [r.forward.octet_delta, r.reverse.octet_delta]),
        both(&|r| [r.forward.packet_total, r.reverse.packet_total]),
        both(&|r| [r.forward.octet_total, r.reverse.octet_total]),
        join(records.iter().map(|r| r.flow_end_reason)),
        join(records.iter().flat_map(antrea_entries)),
    ]
}

/// Splits `records` the way `encode` packed them, by each message's record count.
fn expected_rows(
    records: &[FlowRecord<'_>],
    messages: &[Vec<u8>],
    sequences: &[u32],
) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut next = 0usize;
    for (i, _) in messages.iter().enumerate() {
        let count = sequences
            .get(i + 1)
            .map_or(records.len() - next, |s| (*s - sequences[i]) as usize);
        rows.push(expected_row(sequences[i], &records[next..next + count]));
        next += count;
    }
    rows
}

#[test]
fn tshark_decodes_udp_messages_exactly_as_encoded() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let records = records();
    let (messages, sequences) = encode(&records, 1472);
    assert!(
        messages.len() >= 4,
        "expected several messages, got {}",
        messages.len()
    );

    let capture = Capture::start(&format!("udp port {port}")).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for message in &messages {
        socket.send_to(message, ("127.0.0.1", port)).unwrap();
    }
    let pcap = capture.stop().unwrap();

    let decode_as = format!("udp.port=={port}");
    let rows = tshark::fields(&pcap, &decode_as, &FIELDS).unwrap();
    assert_eq!(rows, expected_rows(&records, &messages, &sequences));
    assert_eq!(
        tshark::expert_warnings(&pcap, &decode_as).unwrap(),
        Vec::<String>::new()
    );
    let _ = std::fs::remove_file(pcap);
}

#[test]
fn tshark_decodes_tcp_messages_exactly_as_encoded() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let drain = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        all.len()
    });
    let records = records();
    // Small TCP messages, so the stream carries several.
    let (messages, sequences) = encode(&records, 3000);
    assert!(messages.len() >= 3);

    let capture = Capture::start(&format!("tcp port {port}")).unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for message in &messages {
        stream.write_all(message).unwrap();
        // one message per segment keeps tshark's rows one per message
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
    let total: usize = messages.iter().map(Vec::len).sum();
    assert_eq!(drain.join().unwrap(), total);
    let pcap = capture.stop().unwrap();

    let decode_as = format!("tcp.port=={port}");
    let rows = tshark::fields(&pcap, &decode_as, &FIELDS).unwrap();
    assert_eq!(rows, expected_rows(&records, &messages, &sequences));
    assert_eq!(
        tshark::expert_warnings(&pcap, &decode_as).unwrap(),
        Vec::<String>::new()
    );
    let _ = std::fs::remove_file(pcap);
}

#[test]
fn tshark_flags_a_sequence_gap_that_we_made() {
    // The expert-info check above must be able to fail: a deliberate gap is reported.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let records = records();
    let (mut messages, _) = encode(&records, 1472);
    messages.remove(1);
    let capture = Capture::start(&format!("udp port {port}")).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for message in &messages {
        socket.send_to(message, ("127.0.0.1", port)).unwrap();
    }
    let pcap = capture.stop().unwrap();
    let warnings = tshark::expert_warnings(&pcap, &format!("udp.port=={port}")).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.to_ascii_lowercase().contains("sequence")),
        "{warnings:?}"
    );
    let _ = std::fs::remove_file(pcap);
}

#[test]
fn collector_sim_and_tshark_agree_on_the_same_capture() {
    let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
    config.keep_records = true;
    let collector = Collector::start(config).unwrap();
    let Endpoint::Udp(addr) = collector.udp_endpoint().unwrap() else {
        unreachable!()
    };
    let capture = Capture::start(&format!("udp port {}", addr.port())).unwrap();
    let mut sender = collector_sim::sender::Sender::connect(Endpoint::Udp(addr), 5, None).unwrap();
    for index in 0..500 {
        sender
            .send(&synthetic::flow_record(index, index % 2 == 1))
            .unwrap();
    }
    sender.flush().unwrap();
    assert!(collector.wait_for_records(500, Duration::from_secs(10)));
    let pcap = capture.stop().unwrap();
    let summary = collector.stop();

    let decode_as = format!("udp.port=={}", addr.port());
    let rows = tshark::fields(
        &pcap,
        &decode_as,
        &["cflow.srcport", "cflow.octets", "cflow.flow_end_reason"],
    )
    .unwrap();
    let ports: Vec<u64> = rows
        .iter()
        .flat_map(|row| {
            row[0]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
        })
        .collect();
    assert_eq!(ports.len() as u64, summary.records);
    assert_eq!(summary.records, 500);
    assert_eq!(summary.messages as usize, rows.len());
    // the same values, record by record, in the same order
    let kept: Vec<_> = (0..500)
        .map(|i| synthetic::flow_record(i, i % 2 == 1).source_port as u64)
        .collect();
    assert_eq!(ports, kept);
    let reasons: Vec<u64> = rows
        .iter()
        .flat_map(|row| {
            row[2]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
        })
        .collect();
    for reason in 1..=4u8 {
        let tshark_count = reasons.iter().filter(|r| **r == u64::from(reason)).count() as u64;
        assert_eq!(
            summary.by_flow_end_reason.get(&reason).copied(),
            Some(tshark_count)
        );
    }
    let _ = std::fs::remove_file(pcap);
}
