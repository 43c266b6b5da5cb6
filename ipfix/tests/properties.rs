//! Property tests: encode -> decode round trips over random templates and values, and the
//! decoder never panics on arbitrary bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowex_ipfix::{
    DataType, Decoder, EncodeError, Encoder, InformationElement, Item, Registry, Template, Value,
    ValueRecord, wire::field_specifier::FieldSpecifierRepr,
};
use proptest::prelude::*;

fn elements() -> Vec<InformationElement> {
    Registry::default()
        .iter()
        .filter(|ie| ie.data_type != DataType::Float32 && ie.data_type != DataType::Float64)
        .collect()
}

/// A field spec for `ie`, with a reduced or fixed length chosen by `choice`.
fn spec_for(ie: InformationElement, choice: u8) -> FieldSpecifierRepr {
    let natural = ie.length();
    let length = match ie.data_type {
        DataType::String | DataType::OctetArray => {
            if choice.is_multiple_of(2) {
                0xffff
            } else {
                u16::from(choice % 7 + 1)
            }
        }
        DataType::Unsigned16
        | DataType::Unsigned32
        | DataType::Unsigned64
        | DataType::Signed16
        | DataType::Signed32
        | DataType::Signed64 => u16::from(choice) % natural + 1,
        _ => natural,
    };
    FieldSpecifierRepr {
        element_id: ie.id,
        length,
        enterprise_number: ie.pen,
    }
}

/// An owned value for a field, derived from random bytes.
#[derive(Debug, Clone, PartialEq)]
enum Owned {
    Value(Value<'static>),
    Text(String),
    Bytes(Vec<u8>),
}

fn owned_for(data_type: DataType, length: u16, raw: &[u8]) -> Owned {
    let variable = length == 0xffff;
    let len = usize::from(length);
    let mut padded = raw.to_vec();
    padded.resize(raw.len().max(16), 0);
    let uint = |n: usize| {
        padded[..n]
            .iter()
            .fold(0u64, |a, b| (a << 8) | u64::from(*b))
    };
    match data_type {
        DataType::String if variable => Owned::Text(String::from_utf8_lossy(raw).into_owned()),
        DataType::String => Owned::Text("x".repeat(len)),
        DataType::OctetArray if variable => Owned::Bytes(raw.to_vec()),
        DataType::OctetArray => Owned::Bytes(padded.iter().cycle().take(len).copied().collect()),
        DataType::Unsigned8 => Owned::Value(Value::Unsigned(uint(1))),
        DataType::Unsigned16 | DataType::Unsigned32 | DataType::Unsigned64 => {
            Owned::Value(Value::Unsigned(uint(len)))
        }
        DataType::Signed8 | DataType::Signed16 | DataType::Signed32 | DataType::Signed64 => {
            let n = len.max(1);
            let shift = 64 - 8 * n as u32;
            Owned::Value(Value::Signed(((uint(n) << shift) as i64) >> shift))
        }
        DataType::Boolean => Owned::Value(Value::Boolean(padded[0].is_multiple_of(2))),
        DataType::MacAddress => Owned::Value(Value::Mac(padded[..6].try_into().unwrap())),
        DataType::Ipv4Address => Owned::Value(Value::Ipv4(Ipv4Addr::from(uint(4) as u32))),
        DataType::Ipv6Address => {
            let octets: [u8; 16] = padded[..16].try_into().unwrap();
            Owned::Value(Value::Ipv6(Ipv6Addr::from(octets)))
        }
        DataType::DateTimeSeconds => Owned::Value(Value::DateTimeSeconds(uint(4) as u32)),
        DataType::DateTimeMilliseconds => Owned::Value(Value::DateTimeMilliseconds(uint(8))),
        DataType::DateTimeMicroseconds => Owned::Value(Value::DateTimeMicroseconds(uint(8))),
        DataType::DateTimeNanoseconds => Owned::Value(Value::DateTimeNanoseconds(uint(8))),
        DataType::Float32 | DataType::Float64 => unreachable!("filtered out"),
    }
}

fn borrow(owned: &Owned) -> Value<'_> {
    match owned {
        Owned::Value(v) => *v,
        Owned::Text(s) => Value::String(s),
        Owned::Bytes(b) => Value::Bytes(b),
    }
}

fn to_owned(value: Value<'_>) -> Owned {
    match value {
        Value::String(s) => Owned::Text(s.to_owned()),
        Value::Bytes(b) => Owned::Bytes(b.to_vec()),
        Value::Unsigned(v) => Owned::Value(Value::Unsigned(v)),
        Value::Signed(v) => Owned::Value(Value::Signed(v)),
        Value::Float(v) => Owned::Value(Value::Float(v)),
        Value::Boolean(v) => Owned::Value(Value::Boolean(v)),
        Value::Mac(v) => Owned::Value(Value::Mac(v)),
        Value::Ipv4(v) => Owned::Value(Value::Ipv4(v)),
        Value::Ipv6(v) => Owned::Value(Value::Ipv6(v)),
        Value::DateTimeSeconds(v) => Owned::Value(Value::DateTimeSeconds(v)),
        Value::DateTimeMilliseconds(v) => Owned::Value(Value::DateTimeMilliseconds(v)),
        Value::DateTimeMicroseconds(v) => Owned::Value(Value::DateTimeMicroseconds(v)),
        Value::DateTimeNanoseconds(v) => Owned::Value(Value::DateTimeNanoseconds(v)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_gives_back_every_value(
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..24),
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..400),
        max_size in 200usize..9000,
        domain in any::<u32>(),
    ) {
        let registry = Registry::default();
        let all = elements();
        let specs: Vec<_> = picks
            .iter()
            .map(|(index, choice)| spec_for(*index.get(&all), *choice))
            .collect();
        let template = Template::from_specs(&registry, 999, 0, &specs).unwrap();
        // Build records by cycling the raw byte strings over the fields.
        let fields = template.fields();
        let records: Vec<Vec<Owned>> = raw
            .chunks(fields.len())
            .filter(|chunk| chunk.len() == fields.len())
            .map(|chunk| {
                fields
                    .iter()
                    .zip(chunk)
                    .map(|(f, bytes)| owned_for(f.data_type(), f.spec.length, bytes))
                    .collect()
            })
            .collect();

        let mut encoder = Encoder::new(domain, max_size).unwrap();
        let mut messages = Vec::new();
        let mut sent = Vec::new();
        encoder.add_template(&template).ok();
        for record in &records {
            let values: Vec<Value<'_>> = record.iter().map(borrow).collect();
            let value_record = ValueRecord::new(&template, &values).unwrap();
            match encoder.add_record(&template, &value_record) {
                Ok(()) => sent.push(record.clone()),
                Err(EncodeError::MessageFull) => {
                    messages.push(encoder.finish(1).to_vec());
                    encoder.add_template(&template).unwrap();
                    let mut result = encoder.add_record(&template, &value_record);
                    if result == Err(EncodeError::MessageFull) {
                        // Template and record do not fit together: send the template alone.
                        messages.push(encoder.finish(1).to_vec());
                        result = encoder.add_record(&template, &value_record);
                    }
                    match result {
                        Ok(()) => sent.push(record.clone()),
                        Err(EncodeError::TooLarge { .. }) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
                Err(EncodeError::TooLarge { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        messages.push(encoder.finish(1).to_vec());

        let mut decoder = Decoder::new(registry);
        let mut received = Vec::new();
        let mut expected_sequence = 0u32;
        for message in &messages {
            prop_assert!(message.len() <= max_size);
            let info = decoder
                .decode(1, message, |item| {
                    if let Item::Record(record) = item {
                        received.push(record.values().map(|(_, v)| to_owned(v)).collect::<Vec<_>>());
                    }
                })
                .unwrap();
            prop_assert_eq!(info.header.sequence_number, expected_sequence);
            prop_assert_eq!(info.header.observation_domain_id, domain);
            expected_sequence += info.data_records;
        }
        prop_assert_eq!(received, sent);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut decoder = Decoder::default();
        let _ = decoder.decode(1, &bytes, |item| {
            if let Item::Record(record) = item {
                for _ in record.values() {}
            }
        });
    }

    #[test]
    fn decoding_mutated_messages_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        // Start from a valid message so the mutations reach the deeper parsers.
        let registry = Registry::default();
        let template = flowex_ipfix::antrea::ipv4_template(&registry).unwrap();
        let mut encoder = Encoder::new(1, 1472).unwrap();
        encoder.add_template(&template).unwrap();
        let record = flowex_ipfix::antrea::FlowRecord {
            source_pod_name: "client-7d9f",
            tcp_state: "ESTABLISHED",
            ..Default::default()
        };
        encoder.add_record(&template, &record).unwrap();
        let mut bytes = encoder.finish(0).to_vec();
        for (index, value) in flips {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        let mut decoder = Decoder::default();
        let _ = decoder.decode(1, &bytes, |item| {
            if let Item::Record(record) = item {
                for _ in record.values() {}
            }
        });
    }
}
