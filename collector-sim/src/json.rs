//! Data records as JSON objects keyed by information element name, with typed values.

use flowex_ipfix::{DataRecord, Value};
use serde_json::{Map, Value as Json, json};

/// The JSON key of a field: the element's name, or `PEN:ID` for unknown elements.
fn key(field: &flowex_ipfix::Field) -> String {
    match field.ie {
        Some(ie) => ie.name.to_owned(),
        None => format!("{}:{}", field.spec.enterprise_number, field.spec.element_id),
    }
}

/// A value as JSON: numbers as numbers, addresses and strings as strings, octets as hex.
pub fn value_to_json(value: Value<'_>) -> Json {
    match value {
        Value::Unsigned(v)
        | Value::DateTimeMilliseconds(v)
        | Value::DateTimeMicroseconds(v)
        | Value::DateTimeNanoseconds(v) => json!(v),
        Value::Signed(v) => json!(v),
        Value::Float(v) => json!(v),
        Value::Boolean(v) => json!(v),
        Value::DateTimeSeconds(v) => json!(v),
        Value::Mac(m) => json!(format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )),
        Value::Ipv4(a) => json!(a.to_string()),
        Value::Ipv6(a) => json!(a.to_string()),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

/// A data record as one JSON object.
pub fn record_to_json(record: &DataRecord<'_>) -> Map<String, Json> {
    record
        .values()
        .map(|(field, value)| (key(field), value_to_json(value)))
        .collect()
}
