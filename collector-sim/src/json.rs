//! Data records as JSON objects keyed by information element name, with typed values.

use std::collections::HashMap;

use flowex_ipfix::{DataRecord, DataType, Value};
use serde_json::{Map, Value as Json, json};

/// Elements learned from the exporters' type records (RFC 5610), by (enterprise, id).
pub type Learned = HashMap<(u32, u16), (String, DataType)>;

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

/// A data record as one JSON object. A field of an element the registry does not know is
/// named and typed from `learned` when a type record described it, and keyed `PEN:ID`
/// with its bytes in hex otherwise.
pub fn record_to_json(record: &DataRecord<'_>, learned: &Learned) -> Map<String, Json> {
    record
        .raw_fields()
        .filter_map(|(field, bytes)| {
            if let Some(ie) = field.ie {
                let value = Value::decode(ie.data_type, bytes).ok()?;
                return Some((ie.name.to_owned(), value_to_json(value)));
            }
            let spec = &field.spec;
            // A learned type that does not fit the bytes: shown as unknown, not dropped.
            let learned = learned
                .get(&(spec.enterprise_number, spec.element_id))
                .and_then(|(name, data_type)| {
                    Some((
                        name.clone(),
                        value_to_json(Value::decode(*data_type, bytes).ok()?),
                    ))
                });
            Some(learned.unwrap_or_else(|| {
                (
                    format!("{}:{}", spec.enterprise_number, spec.element_id),
                    value_to_json(Value::Bytes(bytes)),
                )
            }))
        })
        .collect()
}
