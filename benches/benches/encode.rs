//! The encoder alone: full Antrea IPv4 flow records (realistic pod, namespace and node
//! names) packed into maximum-size messages. Reports records/s (criterion's throughput),
//! and prints bytes per record, records per message and allocations per record.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowex_benches::{CountingAllocator, allocations_per_op};
use flowex_ipfix::antrea::{self, FlowRecord};
use flowex_ipfix::{EncodeError, Encoder, Registry};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const RECORDS: usize = 10_000;

/// Encodes every record, finishing a message whenever one is full; returns
/// (messages, bytes).
fn encode_all(encoder: &mut Encoder, records: &[FlowRecord<'_>]) -> (u64, u64) {
    let mut messages = 0;
    let mut bytes = 0;
    for record in records {
        match encoder.add_record_with_id(record.template_id(), record) {
            Ok(()) => {}
            Err(EncodeError::MessageFull) => {
                bytes += black_box(encoder.finish(1_764_000_000)).len() as u64;
                messages += 1;
                encoder
                    .add_record_with_id(record.template_id(), record)
                    .expect("a record fits an empty message");
            }
            Err(other) => panic!("{other}"),
        }
    }
    bytes += black_box(encoder.finish(1_764_000_000)).len() as u64;
    (messages + 1, bytes)
}

fn encode(c: &mut Criterion) {
    // Test data is built outside the timed region.
    let records: Vec<FlowRecord<'static>> = (0..RECORDS as u64)
        .map(|i| collector_sim::synthetic::flow_record(i, false))
        .collect();
    let registry = Registry::default();
    let template = antrea::ipv4_template(&registry).expect("template");
    assert_eq!(template.fields().len(), 43);

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for max in [1472usize, 65_535] {
        let mut encoder = Encoder::new(1, max).expect("encoder");
        let (messages, bytes) = encode_all(&mut encoder, &records);
        let (allocs, alloc_bytes) = allocations_per_op(3, || {
            encode_all(&mut encoder, &records);
        });
        println!(
            "encode/antrea_ipv4/max{max}: {:.1} bytes/record, {:.1} records/message, \
             {:.4} allocations/record, {:.4} bytes allocated/record",
            bytes as f64 / RECORDS as f64,
            RECORDS as f64 / messages as f64,
            allocs / RECORDS as f64,
            alloc_bytes / RECORDS as f64,
        );
        group.bench_function(format!("antrea_ipv4/max{max}"), |b| {
            b.iter(|| encode_all(&mut encoder, black_box(&records)))
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
