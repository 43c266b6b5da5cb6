//! Typed field values: what a decoded field holds, and what a generic record encodes.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::registry::DataType;

/// One field's value, borrowing strings and octet arrays from the message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Boolean(bool),
    Mac([u8; 6]),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// Seconds since the Unix epoch.
    DateTimeSeconds(u32),
    /// Milliseconds since the Unix epoch.
    DateTimeMilliseconds(u64),
    /// NTP-format timestamp (RFC 7011 section 6.1.9), raw.
    DateTimeMicroseconds(u64),
    /// NTP-format timestamp (RFC 7011 section 6.1.10), raw.
    DateTimeNanoseconds(u64),
    String(&'a str),
    Bytes(&'a [u8]),
}

/// Why a field's bytes are not a value of its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A string that is not UTF-8 (RFC 7011 section 6.1.6).
    #[error("string field is not valid UTF-8")]
    InvalidString,
    /// A boolean other than 1 (true) or 2 (false) (RFC 7011 section 6.1.5).
    #[error("boolean field holds {0}, not 1 or 2")]
    InvalidBoolean(u8),
    /// A length the type cannot have.
    #[error("{length} bytes cannot hold a {data_type}")]
    BadLength {
        length: usize,
        data_type: &'static str,
    },
}

fn be_unsigned(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

impl<'a> Value<'a> {
    /// Decodes a field of `data_type` from exactly its bytes, honouring reduced-size encoding.
    pub fn decode(data_type: DataType, bytes: &'a [u8]) -> Result<Self, ValueError> {
        let length = bytes.len();
        let bad = || ValueError::BadLength {
            length,
            data_type: data_type.name(),
        };
        if !matches!(data_type, DataType::String | DataType::OctetArray)
            && !data_type.accepts_length(length.try_into().map_err(|_| bad())?)
        {
            return Err(bad());
        }
        Ok(match data_type {
            DataType::OctetArray => Value::Bytes(bytes),
            DataType::String => {
                Value::String(std::str::from_utf8(bytes).map_err(|_| ValueError::InvalidString)?)
            }
            DataType::Unsigned8
            | DataType::Unsigned16
            | DataType::Unsigned32
            | DataType::Unsigned64 => Value::Unsigned(be_unsigned(bytes)),
            DataType::Signed8 | DataType::Signed16 | DataType::Signed32 | DataType::Signed64 => {
                let shift = 64 - 8 * length as u32;
                Value::Signed(((be_unsigned(bytes) << shift) as i64) >> shift)
            }
            DataType::Float32 => Value::Float(f64::from(f32::from_bits(be_unsigned(bytes) as u32))),
            DataType::Float64 if length == 4 => {
                Value::Float(f64::from(f32::from_bits(be_unsigned(bytes) as u32)))
            }
            DataType::Float64 => Value::Float(f64::from_bits(be_unsigned(bytes))),
            DataType::Boolean => match bytes[0] {
                1 => Value::Boolean(true),
                2 => Value::Boolean(false),
                other => return Err(ValueError::InvalidBoolean(other)),
            },
            DataType::MacAddress => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(bytes);
                Value::Mac(mac)
            }
            DataType::Ipv4Address => Value::Ipv4(Ipv4Addr::from(be_unsigned(bytes) as u32)),
            DataType::Ipv6Address => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                Value::Ipv6(Ipv6Addr::from(octets))
            }
            DataType::DateTimeSeconds => Value::DateTimeSeconds(be_unsigned(bytes) as u32),
            DataType::DateTimeMilliseconds => Value::DateTimeMilliseconds(be_unsigned(bytes)),
            DataType::DateTimeMicroseconds => Value::DateTimeMicroseconds(be_unsigned(bytes)),
            DataType::DateTimeNanoseconds => Value::DateTimeNanoseconds(be_unsigned(bytes)),
        })
    }
}
