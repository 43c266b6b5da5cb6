//! collector-sim's costs: decoding alone (records/s on one core, Antrea IPv4 template),
//! and UDP receive over loopback at full sending speed, with the loss it counted.

use std::time::{Duration, Instant};

use collector_sim::sender::Sender;
use collector_sim::{Collector, CollectorConfig, synthetic};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowex_ipfix::antrea;
use flowex_ipfix::{Decoder, EncodeError, Encoder, Item, Registry};
use std::hint::black_box;

const RECORDS: u64 = 10_000;

fn messages(max: usize) -> Vec<Vec<u8>> {
    let registry = Registry::default();
    let template = antrea::ipv4_template(&registry).expect("template");
    let mut encoder = Encoder::new(1, max).expect("encoder");
    encoder.add_template(&template).expect("template fits");
    let mut out = Vec::new();
    for i in 0..RECORDS {
        let record = synthetic::flow_record(i, false);
        if encoder.add_record(&template, &record) == Err(EncodeError::MessageFull) {
            out.push(encoder.finish(0).to_vec());
            encoder.add_record(&template, &record).expect("fits");
        }
    }
    out.push(encoder.finish(0).to_vec());
    out
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("collector");
    group.throughput(Throughput::Elements(RECORDS));
    for max in [1472usize, 65_535] {
        let messages = messages(max);
        group.bench_function(format!("decode_antrea_ipv4/max{max}"), |b| {
            let mut decoder = Decoder::default();
            b.iter(|| {
                let mut records = 0u64;
                let mut octets = 0u64;
                for message in &messages {
                    decoder
                        .decode(1, message, |item| {
                            if let Item::Record(record) = item {
                                records += 1;
                                // read one field, as the collector does for flowEndReason
                                if let Some(flowex_ipfix::Value::Unsigned(v)) = record.value_at(9) {
                                    octets += v;
                                }
                            }
                        })
                        .expect("valid message");
                }
                assert_eq!(records, RECORDS);
                black_box(octets)
            })
        });
    }
    group.finish();
}

fn udp_receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("collector");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(20);
    let collector = Collector::start(CollectorConfig::new(vec![
        "udp://127.0.0.1:0".parse().expect("endpoint"),
    ]))
    .expect("collector");
    let target = collector.udp_endpoint().expect("udp endpoint");
    let records: Vec<_> = (0..RECORDS)
        .map(|i| synthetic::flow_record(i, false))
        .collect();
    let mut sent = 0u64;
    let mut sender = Sender::connect(target, 1, None).expect("sender");
    // Each iteration sends RECORDS records as fast as the sender can and waits until the
    // collector has counted all of them (or 5 s passed, which shows as loss below).
    group.bench_function("udp_send_and_receive_antrea_ipv4/max1472", |b| {
        b.iter(|| {
            for record in &records {
                sender.send(record).expect("send");
            }
            sender.flush().expect("flush");
            sent += RECORDS;
            collector.wait_for_records(sent, Duration::from_secs(5));
        })
    });
    group.finish();
    let started = Instant::now();
    let summary = collector.wait_until_quiet(Duration::from_millis(300), Duration::from_secs(10));
    println!(
        "collector/udp_receive: sent {sent} records, received {}, missing (sequence) {}, \
         decode errors {}, receive buffer {:?} bytes, settled in {:?}",
        summary.records,
        summary.missing_records,
        summary.decode_error_total(),
        collector.receive_buffers(),
        started.elapsed()
    );
}

criterion_group!(benches, decode, udp_receive);
criterion_main!(benches);
