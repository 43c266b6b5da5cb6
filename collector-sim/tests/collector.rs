//! collector-sim fed over real UDP and TCP sockets on loopback, with exact counters.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use collector_sim::sender::Sender;
use collector_sim::{Collector, CollectorConfig, Endpoint, Summary, synthetic};
use flowex_ipfix::antrea::{self, FlowRecord};
use flowex_ipfix::{Encoder, Registry};

const WAIT: Duration = Duration::from_secs(10);

fn start(listen: &[&str], keep_records: bool) -> Collector {
    let mut config = CollectorConfig::new(listen.iter().map(|e| e.parse().unwrap()).collect());
    config.keep_records = keep_records;
    Collector::start(config).unwrap()
}

fn settle(collector: &Collector) -> Summary {
    collector.wait_until_quiet(Duration::from_millis(200), WAIT)
}

fn send_records(target: Endpoint, domain: u32, from: u64, count: u64, ipv6: bool) {
    let mut sender = Sender::connect(target, domain, None).unwrap();
    for index in from..from + count {
        sender.send(&synthetic::flow_record(index, ipv6)).unwrap();
    }
    sender.flush().unwrap();
    assert_eq!(sender.stats().records, count);
}

/// One message with the IPv4 template and the given records, as an exporter would send it.
fn message(domain: u32, sequence: u32, with_template: bool, records: &[FlowRecord<'_>]) -> Vec<u8> {
    let template = antrea::ipv4_template(&Registry::default()).unwrap();
    let mut encoder = Encoder::new(domain, 65_535).unwrap();
    encoder.set_sequence_number(sequence);
    if with_template {
        encoder.add_template(&template).unwrap();
    }
    for record in records {
        encoder.add_record(&template, record).unwrap();
    }
    encoder.finish(1_764_000_000).to_vec()
}

#[test]
fn several_exporters_over_udp_and_tcp_ipv4_and_ipv6() {
    let collector = start(
        &[
            "udp://127.0.0.1:0",
            "udp://[::1]:0",
            "tcp://127.0.0.1:0",
            "tcp://[::1]:0",
        ],
        false,
    );
    let endpoints = collector.local_endpoints().to_vec();
    let threads: Vec<_> = endpoints
        .iter()
        .enumerate()
        .flat_map(|(i, endpoint)| {
            // two exporters per endpoint, each its own observation domain
            (0..2u32).map(move |j| {
                let endpoint = *endpoint;
                let domain = 10 * i as u32 + j;
                std::thread::spawn(move || send_records(endpoint, domain, 0, 3_000, i % 2 == 1))
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(collector.wait_for_records(24_000, WAIT));
    let summary = settle(&collector);
    assert_eq!(summary.records, 24_000);
    assert_eq!(summary.missing_records, 0);
    assert_eq!(summary.sequence_gaps, 0);
    assert_eq!(summary.decode_error_total(), 0);
    assert_eq!(summary.by_observation_domain.len(), 8);
    assert!(summary.by_observation_domain.values().all(|n| *n == 3_000));
    assert_eq!(summary.by_template.get(&256), Some(&12_000));
    assert_eq!(summary.by_template.get(&257), Some(&12_000));
    // flowEndReason cycles 1..=4 over each exporter's 3,000 records
    for reason in 1..=4u8 {
        assert_eq!(summary.by_flow_end_reason.get(&reason), Some(&6_000));
    }
    // every exporter sent both templates once
    assert_eq!(summary.templates, 16);
    assert_eq!(summary.tcp_connections, 4);
}

#[test]
fn json_records_carry_typed_values_by_element_name() {
    let collector = start(&["udp://127.0.0.1:0"], true);
    send_records(collector.udp_endpoint().unwrap(), 7, 0, 2, false);
    assert!(collector.wait_for_records(2, WAIT));
    let records = collector.records();
    assert_eq!(records.len(), 2);
    let first = &records[0];
    let expected = synthetic::flow_record(0, false);
    assert_eq!(
        first["sourceIPv4Address"],
        expected.source_address.to_string()
    );
    assert_eq!(first["destinationIPv4Address"], "10.96.0.0");
    assert_eq!(first["sourceTransportPort"], 32_768);
    assert_eq!(first["destinationTransportPort"], 80);
    assert_eq!(first["protocolIdentifier"], 17);
    assert_eq!(first["octetDeltaCount"], expected.forward.octet_delta);
    assert_eq!(
        first["reverseOctetDeltaCount"],
        expected.reverse.octet_delta
    );
    assert_eq!(first["sourcePodName"], "frontend-5c7b8d9f4-x2k8p");
    assert_eq!(first["destinationServicePortName"], "shop/frontend:http");
    assert_eq!(first["flowEndReason"], 1);
    assert_eq!(first["flowStartSeconds"], 1_764_000_000);
    assert_eq!(first["tcpState"], "ESTABLISHED");
    assert_eq!(first["egressName"], "");
    assert_eq!(first.as_object().unwrap().len(), 43);
    assert_eq!(records[1]["flowEndReason"], 2);
}

#[test]
fn data_before_template_is_counted_then_decoded_once_the_template_arrives() {
    let collector = start(&["udp://127.0.0.1:0"], false);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .connect(collector.udp_endpoint().unwrap().addr())
        .unwrap();
    let records: Vec<_> = (0..3).map(|i| synthetic::flow_record(i, false)).collect();
    socket.send(&message(1, 0, false, &records)).unwrap();
    socket.send(&message(1, 3, true, &records)).unwrap();
    // a refreshed template alone, then more data
    socket.send(&message(1, 6, true, &[])).unwrap();
    socket.send(&message(1, 6, false, &records[..1])).unwrap();
    assert!(collector.wait_for_records(4, WAIT));
    let summary = settle(&collector);
    assert_eq!(summary.sets_without_template, 1);
    assert_eq!(summary.records, 4);
    assert_eq!(summary.templates, 2);
    assert_eq!(summary.messages, 4);
    // the first message's 3 records were never decoded: the second message's sequence
    // number (3) shows them missing
    assert_eq!(summary.sequence_gaps, 1);
    assert_eq!(summary.missing_records, 3);
}

#[test]
fn sequence_gaps_made_on_purpose_are_counted_exactly() {
    let collector = start(&["udp://127.0.0.1:0", "tcp://127.0.0.1:0"], false);
    for endpoint in collector.local_endpoints().to_vec() {
        let mut sender = Sender::connect(endpoint, 3, Some(1472)).unwrap();
        for index in 0..50 {
            sender.send(&synthetic::flow_record(index, false)).unwrap();
        }
        sender.flush().unwrap();
        // pretend 17 records went out and were lost
        let next = sender.encoder_mut().sequence_number();
        sender.encoder_mut().set_sequence_number(next + 17);
        for index in 0..50 {
            sender.send(&synthetic::flow_record(index, false)).unwrap();
        }
        sender.flush().unwrap();
    }
    assert!(collector.wait_for_records(200, WAIT));
    let summary = settle(&collector);
    assert_eq!(summary.records, 200);
    assert_eq!(summary.sequence_gaps, 2);
    assert_eq!(summary.missing_records, 34);
    assert_eq!(summary.sequence_resets, 0);
}

#[test]
fn malformed_udp_is_counted_by_kind_and_the_collector_carries_on() {
    let collector = start(&["udp://127.0.0.1:0"], false);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .connect(collector.udp_endpoint().unwrap().addr())
        .unwrap();
    let good = message(9, 0, true, &[synthetic::flow_record(1, false)]);
    socket.send(b"definitely not ipfix").unwrap(); // bad version
    socket.send(&good[..10]).unwrap(); // truncated header
    let mut wrong_length = good.clone();
    wrong_length[3] ^= 0x01;
    socket.send(&wrong_length).unwrap();
    let mut reserved_set = good.clone();
    reserved_set[17] = 5;
    socket.send(&reserved_set).unwrap();
    socket.send(&good).unwrap();
    assert!(collector.wait_for_records(1, WAIT));
    let summary = settle(&collector);
    assert_eq!(summary.records, 1);
    assert_eq!(summary.decode_error_total(), 4);
    for kind in [
        "bad_version",
        "truncated",
        "length_mismatch",
        "reserved_set_id",
    ] {
        assert_eq!(summary.decode_errors.get(kind), Some(&1), "{kind}");
    }
}

#[test]
fn tcp_garbage_disconnects_that_peer_only() {
    let collector = start(&["tcp://127.0.0.1:0"], false);
    let target = collector.tcp_endpoint().unwrap();
    let mut good = TcpStream::connect(target.addr()).unwrap();
    let mut bad = TcpStream::connect(target.addr()).unwrap();
    let records: Vec<_> = (0..5).map(|i| synthetic::flow_record(i, false)).collect();
    // The good exporter's first message arrives in two pieces (a partial read).
    let first = message(1, 0, true, &records);
    good.write_all(&first[..100]).unwrap();
    good.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    bad.write_all(b"\x00\x09\x00\x20garbage garbage garbage garbage")
        .unwrap();
    good.write_all(&first[100..]).unwrap();
    assert!(collector.wait_for_records(5, WAIT));
    // The bad peer was disconnected: reading gives EOF (or a reset).
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(&mut bad, &mut byte),
        Ok(0) | Err(_)
    ));
    // The good one carries on.
    good.write_all(&message(1, 5, false, &records)).unwrap();
    assert!(collector.wait_for_records(10, WAIT));
    let summary = settle(&collector);
    assert_eq!(summary.records, 10);
    assert_eq!(summary.decode_errors.get("bad_framing"), Some(&1));
    assert_eq!(summary.tcp_disconnects, 1);
    assert_eq!(summary.sequence_gaps, 0);
}

#[test]
fn a_tcp_stream_ending_inside_a_message_is_counted() {
    let collector = start(&["tcp://127.0.0.1:0"], false);
    let target = collector.tcp_endpoint().unwrap();
    let records = [synthetic::flow_record(0, false)];
    {
        let mut stream = TcpStream::connect(target.addr()).unwrap();
        let whole = message(1, 0, true, &records);
        stream.write_all(&whole).unwrap();
        stream.write_all(&whole[..30]).unwrap();
    }
    assert!(collector.wait_for_records(1, WAIT));
    let summary = collector.wait_until_quiet(Duration::from_millis(300), WAIT);
    assert_eq!(summary.records, 1);
    assert_eq!(summary.decode_errors.get("truncated_stream"), Some(&1));
}

#[test]
fn udp_templates_expire_after_their_lifetime() {
    let mut config = CollectorConfig::new(vec!["udp://127.0.0.1:0".parse().unwrap()]);
    config.template_lifetime = Duration::from_millis(100);
    let collector = Collector::start(config).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .connect(collector.udp_endpoint().unwrap().addr())
        .unwrap();
    let records = [synthetic::flow_record(0, false)];
    socket.send(&message(1, 0, true, &records)).unwrap();
    assert!(collector.wait_for_records(1, WAIT));
    // The receiver expires templates once a second.
    std::thread::sleep(Duration::from_millis(1_300));
    socket.send(&message(1, 1, false, &records)).unwrap();
    let summary = collector.wait_until_quiet(Duration::from_millis(300), WAIT);
    assert_eq!(summary.records, 1);
    assert_eq!(summary.sets_without_template, 1);
}

#[test]
fn binding_a_taken_port_is_a_clear_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("udp://{}", taken.local_addr().unwrap());
    let error = Collector::start(CollectorConfig::new(vec![endpoint.parse().unwrap()]))
        .err()
        .unwrap();
    assert!(error.to_string().starts_with(&endpoint), "{error}");
}

/// A storm of messages with random observation domains and random sequence numbers, each
/// with a template, beside an exporter that keeps sending properly: the collector's state
/// stays bounded (streams and templates evicted, least recently used first, and counted),
/// random numbers count as resets rather than billions of missing records, and the proper
/// exporter's records are all decoded, with no gap.
#[test]
fn a_storm_of_random_domains_and_sequence_numbers_keeps_state_bounded() {
    let collector = start(&["udp://127.0.0.1:0"], false);
    let target = collector.udp_endpoint().unwrap();
    let storm = UdpSocket::bind("127.0.0.1:0").unwrap();
    storm.connect(target.addr()).unwrap();
    let record = synthetic::flow_record(1, false);
    let mut x: u32 = 0x9e37_79b9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut proper = Sender::connect(target, 4242, Some(1472)).unwrap();
    let storm_messages = 80_000u64;
    for i in 0..storm_messages {
        let domain = next();
        let sequence = next();
        let datagram = message(domain, sequence, true, &[record]);
        storm.send(&datagram).unwrap();
        if i % 1_000 == 0 {
            // The proper exporter: 5 records now and then, on its own socket.
            for index in 0..5 {
                proper
                    .send(&synthetic::flow_record(i + index, false))
                    .unwrap();
            }
            proper.flush().unwrap();
            // Keep the receive buffer from overflowing: this is about state, not speed.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let proper_records = 5 * storm_messages.div_ceil(1_000);
    let expected = storm_messages + proper_records;
    assert!(
        collector.wait_for_records(expected, Duration::from_secs(30)),
        "{:?}",
        collector.summary()
    );
    let summary = settle(&collector);
    assert_eq!(summary.records, expected);
    assert_eq!(summary.decode_error_total(), 0);
    assert_eq!(
        summary.by_observation_domain.get(&4242),
        Some(&proper_records)
    );
    // 80,001 streams and templates from 2 peers: more than the 65,536 streams and 16,384
    // templates kept.
    assert!(summary.evicted_streams >= 8_192, "{summary:?}");
    assert!(summary.evicted_templates >= 8_192, "{summary:?}");
    // Every storm stream is new (random domains): no gap and no reset among them, and the
    // proper exporter, used all along, is never evicted: no gap either.
    assert_eq!(summary.sequence_gaps, 0, "{summary:?}");
    assert_eq!(summary.missing_records, 0);
}

/// Random sequence numbers in one stream count as resets, not as missing records.
#[test]
fn random_sequence_numbers_in_one_stream_are_resets() {
    let collector = start(&["udp://127.0.0.1:0"], false);
    let target = collector.udp_endpoint().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(target.addr()).unwrap();
    let record = synthetic::flow_record(1, false);
    let mut x: u32 = 0x1234_5678;
    for i in 0..2_000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        socket.send(&message(9, x, i == 0, &[record])).unwrap();
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(collector.wait_for_records(2_000, WAIT));
    let summary = settle(&collector);
    assert!(summary.sequence_resets > 1_200, "{summary:?}");
    // Only numbers landing within 65,536 of the expected one can count as loss.
    assert!(summary.missing_records < 5 * 65_536, "{summary:?}");
}
