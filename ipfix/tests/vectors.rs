//! Byte-exact vectors written out by hand, encoded and decoded.

use std::net::Ipv4Addr;

use flowex_ipfix::{
    DecodeError, Decoder, Encoder, Item, Registry, Template, Value, ValueRecord,
    registry::FLOWEX_DEFAULT_PEN,
    wire::{WireError, field_specifier::FieldSpecifierRepr},
};

fn template() -> Template {
    let registry = Registry::default();
    let spec = |element_id, length, enterprise_number| FieldSpecifierRepr {
        element_id,
        length,
        enterprise_number,
    };
    Template::from_specs(
        &registry,
        300,
        0,
        &[
            spec(8, 4, 0),            // sourceIPv4Address
            spec(11, 2, 0),           // destinationTransportPort
            spec(101, 0xffff, 56506), // sourcePodName
            spec(1, 4, 0),            // octetDeltaCount, reduced to 4 bytes
        ],
    )
    .unwrap()
}

const MESSAGE: [u8; 64] = [
    // message header
    0x00, 0x0a, 0x00, 0x40, // version 10, length 64
    0x65, 0x4f, 0x2a, 0x00, // export time
    0x00, 0x00, 0x00, 0x00, // sequence number 0
    0x01, 0x02, 0x03, 0x04, // observation domain
    // template set
    0x00, 0x02, 0x00, 0x1c, // set 2, length 28
    0x01, 0x2c, 0x00, 0x04, // template 300, 4 fields
    0x00, 0x08, 0x00, 0x04, // sourceIPv4Address, 4
    0x00, 0x0b, 0x00, 0x02, // destinationTransportPort, 2
    0x80, 0x65, 0xff, 0xff, 0x00, 0x00, 0xdc, 0xba, // sourcePodName, variable, PEN 56506
    0x00, 0x01, 0x00, 0x04, // octetDeltaCount, 4
    // data set
    0x01, 0x2c, 0x00, 0x14, // set 300, length 20
    0x0a, 0x00, 0x00, 0x01, // 10.0.0.1
    0x00, 0x50, // 80
    0x05, b'w', b'e', b'b', b'-', b'0', // "web-0"
    0x00, 0x00, 0x03, 0xe8, // 1000
];

#[test]
fn encodes_template_and_data_set_exactly() {
    let template = template();
    let mut encoder = Encoder::new(0x0102_0304, 1472).unwrap();
    encoder.add_template(&template).unwrap();
    let values = [
        Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
        Value::Unsigned(80),
        Value::String("web-0"),
        Value::Unsigned(1000),
    ];
    encoder
        .add_record(&template, &ValueRecord::new(&template, &values).unwrap())
        .unwrap();
    assert_eq!(encoder.finish(0x654f_2a00), &MESSAGE[..]);
    assert_eq!(encoder.sequence_number(), 1);
}

#[test]
fn decodes_the_same_bytes() {
    let mut decoder = Decoder::default();
    let mut records = Vec::new();
    let mut templates = 0;
    let info = decoder
        .decode(7, &MESSAGE, |item| match item {
            Item::Template(t) => {
                assert_eq!(t.id(), 300);
                templates += 1;
            }
            Item::Record(record) => {
                let values: Vec<String> = record
                    .values()
                    .map(|(field, value)| format!("{}={value:?}", field.ie.unwrap().name))
                    .collect();
                records.push(values.join(" "));
            }
            other => panic!("unexpected {other:?}"),
        })
        .unwrap();
    assert_eq!(templates, 1);
    assert_eq!(info.data_records, 1);
    assert_eq!(info.header.observation_domain_id, 0x0102_0304);
    assert_eq!(
        records,
        [
            "sourceIPv4Address=Ipv4(10.0.0.1) destinationTransportPort=Unsigned(80) \
          sourcePodName=String(\"web-0\") octetDeltaCount=Unsigned(1000)"
        ]
    );
}

#[test]
fn long_strings_use_the_three_byte_length() {
    let template = template();
    let name = "a".repeat(300);
    let values = [
        Value::Ipv4(Ipv4Addr::new(10, 0, 0, 2)),
        Value::Unsigned(443),
        Value::String(&name),
        Value::Unsigned(7),
    ];
    let mut encoder = Encoder::new(9, 1472).unwrap();
    encoder
        .add_record(&template, &ValueRecord::new(&template, &values).unwrap())
        .unwrap();
    let bytes = encoder.finish(0).to_vec();
    // header 16, set header 4, then ip 4 + port 2, then the length prefix
    assert_eq!(&bytes[26..29], &[0xff, 0x01, 0x2c]);
    assert_eq!(&bytes[29..329], name.as_bytes());
    assert_eq!(&bytes[329..333], &[0, 0, 0, 7]);
    assert_eq!(bytes.len(), 333);
}

#[test]
fn options_template_and_withdrawal_bytes() {
    let registry = Registry::default();
    let options = Template::options(
        400,
        1,
        &[
            registry.expect("observationDomainId"),
            registry.expect("exportedFlowRecordTotalCount"),
        ],
    )
    .unwrap();
    let mut encoder = Encoder::new(1, 1472).unwrap();
    encoder.add_template(&options).unwrap();
    encoder.add_withdrawal(256, false).unwrap();
    let bytes = encoder.finish(0);
    assert_eq!(
        &bytes[16..],
        &[
            0x00, 0x03, 0x00, 0x12, // options template set, length 18
            0x01, 0x90, 0x00, 0x02, 0x00, 0x01, // template 400, 2 fields, 1 scope field
            0x00, 0x95, 0x00, 0x04, // observationDomainId, 4
            0x00, 0x2a, 0x00, 0x08, // exportedFlowRecordTotalCount, 8
            0x00, 0x02, 0x00, 0x08, // template set, length 8
            0x01, 0x00, 0x00, 0x00, // withdraw template 256
        ]
    );
}

#[test]
fn flowex_elements_carry_the_configured_pen() {
    let registry = Registry::new(4242).unwrap();
    let template = Template::from_names(&registry, 256, &["sourceProcessId"]).unwrap();
    let mut out = vec![0; template.wire_len()];
    template.emit(&mut out);
    assert_eq!(
        out,
        [
            0x01, 0x00, 0x00, 0x01, 0x80, 0x01, 0x00, 0x04, 0, 0, 0x10, 0x92
        ]
    );
    assert_ne!(FLOWEX_DEFAULT_PEN, 4242);
}

/// Applies `patch` to a copy of MESSAGE and returns the decode error.
fn error_after(patch: impl FnOnce(&mut Vec<u8>)) -> DecodeError {
    let mut bytes = MESSAGE.to_vec();
    patch(&mut bytes);
    Decoder::default().decode(1, &bytes, |_| {}).unwrap_err()
}

#[test]
fn each_malformation_has_its_own_error() {
    // message length field disagrees with the datagram
    assert_eq!(
        error_after(|b| b[3] = 0x41),
        DecodeError::LengthMismatch {
            header: 65,
            actual: 64
        }
    );
    // set length overruns the message
    assert!(matches!(
        error_after(|b| b[47] = 0x15),
        DecodeError::Wire(WireError::SetOverrun { length: 21, .. })
    ));
    // template id below 256
    assert_eq!(error_after(|b| b[20] = 0).kind(), "reserved_template_id");
    // zero-length fixed field
    assert_eq!(error_after(|b| b[27] = 0).kind(), "zero_length_field");
    // variable-length field running past its set
    assert!(matches!(
        error_after(|b| b[54] = 0x30),
        DecodeError::VariableLengthOverrun {
            template_id: 300,
            index: 2
        }
    ));
    // invalid UTF-8 in a string
    assert_eq!(error_after(|b| b[55] = 0xff).kind(), "invalid_value");
    // reserved set id
    assert_eq!(error_after(|b| b[17] = 4), DecodeError::ReservedSetId(4));
    // a truncated datagram
    let err = Decoder::default()
        .decode(1, &MESSAGE[..10], |_| {})
        .unwrap_err();
    assert_eq!(err.kind(), "truncated");
}

#[test]
fn data_before_template_is_reported_not_lost() {
    // Just the data set, under a fresh header.
    let mut bytes = MESSAGE[..16].to_vec();
    bytes.extend_from_slice(&MESSAGE[44..]);
    bytes[3] = bytes.len() as u8;
    let mut unknown = Vec::new();
    let info = Decoder::default()
        .decode(1, &bytes, |item| {
            if let Item::UnknownTemplate {
                template_id,
                set_length,
            } = item
            {
                unknown.push((template_id, set_length));
            }
        })
        .unwrap();
    assert_eq!(unknown, [(300, 20)]);
    assert_eq!(info.unknown_template_sets, 1);
    assert_eq!(info.data_records, 0);
}

#[test]
fn templates_are_per_session_and_domain_and_withdrawable() {
    let mut decoder = Decoder::default();
    decoder.decode(1, &MESSAGE, |_| {}).unwrap();
    assert!(decoder.template(1, 0x0102_0304, 300).is_some());
    assert!(decoder.template(2, 0x0102_0304, 300).is_none());
    assert!(decoder.template(1, 5, 300).is_none());

    let mut encoder = Encoder::new(0x0102_0304, 1472).unwrap();
    encoder.add_withdrawal(2, false).unwrap();
    let withdraw_all = encoder.finish(0).to_vec();
    decoder.decode(1, &withdraw_all, |_| {}).unwrap();
    assert_eq!(decoder.template_count(), 0);
}

#[test]
fn options_records_round_trip_and_count_in_the_sequence() {
    let registry = Registry::default();
    let options = Template::options(
        400,
        1,
        &[
            registry.expect("observationDomainId"),
            registry.expect("exportedFlowRecordTotalCount"),
            registry.expect("notSentFlowTotalCount"),
        ],
    )
    .unwrap();
    let mut encoder = Encoder::new(77, 1472).unwrap();
    encoder.add_template(&options).unwrap();
    let values = [
        Value::Unsigned(77),
        Value::Unsigned(123_456),
        Value::Unsigned(9),
    ];
    encoder
        .add_record(&options, &ValueRecord::new(&options, &values).unwrap())
        .unwrap();
    let bytes = encoder.finish(0).to_vec();
    assert_eq!(encoder.sequence_number(), 1);
    let mut decoded = Vec::new();
    let info = Decoder::default()
        .decode(1, &bytes, |item| {
            if let Item::Record(record) = item {
                assert!(record.template().is_options());
                decoded.extend(record.values().map(|(_, v)| v == Value::Unsigned(0)));
                assert_eq!(
                    record.value("exportedFlowRecordTotalCount"),
                    Some(Value::Unsigned(123_456))
                );
            }
        })
        .unwrap();
    assert_eq!(info.options_template_records, 1);
    assert_eq!(info.options_records, 1);
    assert_eq!(info.data_records, 0);
    assert_eq!(decoded, [false, false, false]);
}
