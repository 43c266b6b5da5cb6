//! The message encoder: writes header, template sets and data sets straight into one
//! reusable buffer, packing as many records as fit under the maximum message size.
//!
//! Encoding a record is "compute its length, then emit into the slice it will occupy":
//! there are no intermediate objects per field, and once the buffer has grown to the
//! maximum message size, adding records never allocates.

use bytes::BytesMut;

use crate::template::{Field, Template};
use crate::value::Value;
use crate::wire::message::{HEADER_LEN as MESSAGE_HEADER_LEN, MessageHeader, MessageHeaderRepr};
use crate::wire::set::{
    HEADER_LEN as SET_HEADER_LEN, OPTIONS_TEMPLATE_SET_ID, SetHeader, SetHeaderRepr,
    TEMPLATE_SET_ID,
};

/// Largest IPFIX message: the length field is 16 bits.
pub const MAX_MESSAGE_SIZE: usize = 65_535;
/// Default maximum for UDP over IPv4 on a 1500-byte MTU (1500 - 20 IP - 8 UDP).
pub const DEFAULT_UDP_MESSAGE_SIZE: usize = 1472;
/// Smallest maximum message size the encoder accepts: a header, a set header and room
/// for a small record.
pub const MIN_MESSAGE_SIZE: usize = 64;

/// Why a record or template could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Not enough room left in this message: finish it and add again to a new one.
    #[error("message is full")]
    MessageFull,
    /// The item can never fit, even alone in a message of the maximum size.
    #[error("{len} bytes cannot fit in a message of at most {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The maximum message size is outside 64..=65535.
    #[error("maximum message size {0} is outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE}")]
    InvalidMessageSize(usize),
    /// A record wrote a different number of bytes than its `encoded_len` announced.
    #[error("record announced {announced} bytes but wrote {written}")]
    LengthMismatch { announced: usize, written: usize },
    /// A generic record has a different number of values than its template has fields.
    #[error("template has {fields} fields but {values} values were given")]
    ValueCount { fields: usize, values: usize },
    /// A value does not fit its template field (wrong type or over-long).
    #[error("value for field {index} does not match the template field")]
    ValueMismatch { index: usize },
}

/// Encoded size of a variable-length field holding `len` bytes (RFC 7011 section 7).
#[inline]
pub const fn variable_len(len: usize) -> usize {
    if len < 255 { 1 + len } else { 3 + len }
}

/// Writes fields of one data record, in template order, into the slice reserved for it.
/// Never panics: writing past the end sets a flag that the encoder reports as an error.
pub struct FieldWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> FieldWriter<'a> {
    /// A writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True once a write did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Appends raw bytes.
    #[inline]
    pub fn bytes(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos += bytes.len();
            }
            None => self.overflow = true,
        }
    }

    /// Appends an unsigned8.
    #[inline]
    pub fn u8(&mut self, value: u8) {
        self.bytes(&[value]);
    }

    /// Appends an unsigned16.
    #[inline]
    pub fn u16(&mut self, value: u16) {
        self.bytes(&value.to_be_bytes());
    }

    /// Appends an unsigned32 (also dateTimeSeconds).
    #[inline]
    pub fn u32(&mut self, value: u32) {
        self.bytes(&value.to_be_bytes());
    }

    /// Appends an unsigned64 (also dateTimeMilliseconds).
    #[inline]
    pub fn u64(&mut self, value: u64) {
        self.bytes(&value.to_be_bytes());
    }

    /// Appends the low `len` bytes of `value` (reduced-size encoding).
    #[inline]
    pub fn uint(&mut self, value: u64, len: usize) {
        let be = value.to_be_bytes();
        match be.get(8usize.wrapping_sub(len)..) {
            Some(tail) if len <= 8 => self.bytes(tail),
            _ => self.overflow = true,
        }
    }

    /// Appends an IPv4 address.
    #[inline]
    pub fn ipv4(&mut self, addr: std::net::Ipv4Addr) {
        self.bytes(&addr.octets());
    }

    /// Appends an IPv6 address.
    #[inline]
    pub fn ipv6(&mut self, addr: std::net::Ipv6Addr) {
        self.bytes(&addr.octets());
    }

    /// Appends a variable-length octet array with its 1- or 3-byte length prefix.
    #[inline]
    pub fn variable(&mut self, bytes: &[u8]) {
        if bytes.len() < 255 {
            self.u8(bytes.len() as u8);
        } else if let Ok(len) = u16::try_from(bytes.len()) {
            self.u8(255);
            self.u16(len);
        } else {
            self.overflow = true;
            return;
        }
        self.bytes(bytes);
    }

    /// Appends a variable-length string.
    #[inline]
    pub fn string(&mut self, value: &str) {
        self.variable(value.as_bytes());
    }
}

/// A data record that knows its encoded size and can write itself.
pub trait Record {
    /// Exact number of bytes `emit` will write.
    fn encoded_len(&self) -> usize;
    /// Writes the fields in template order.
    fn emit(&self, writer: &mut FieldWriter<'_>);
}

/// A record given as one [`Value`] per template field, for tools and tests.
#[derive(Debug, Clone, Copy)]
pub struct ValueRecord<'t, 'v> {
    template: &'t Template,
    values: &'v [Value<'v>],
}

impl<'t, 'v> ValueRecord<'t, 'v> {
    /// Pairs values with a template's fields, checking each value fits its field.
    pub fn new(template: &'t Template, values: &'v [Value<'v>]) -> Result<Self, EncodeError> {
        if values.len() != template.fields().len() {
            return Err(EncodeError::ValueCount {
                fields: template.fields().len(),
                values: values.len(),
            });
        }
        for (index, (field, value)) in template.fields().iter().zip(values).enumerate() {
            if !value_fits(field, value) {
                return Err(EncodeError::ValueMismatch { index });
            }
        }
        Ok(Self { template, values })
    }
}

fn value_fits(field: &Field, value: &Value<'_>) -> bool {
    use crate::registry::DataType as T;
    let len = usize::from(field.spec.length);
    let fits_uint = |v: u64| len >= 8 || v >> (8 * len) == 0;
    match (field.data_type(), value) {
        (T::Unsigned8 | T::Unsigned16 | T::Unsigned32 | T::Unsigned64, Value::Unsigned(v)) => {
            fits_uint(*v)
        }
        (T::Signed8 | T::Signed16 | T::Signed32 | T::Signed64, Value::Signed(v)) => {
            let shift = 64 - 8 * len as u32;
            len >= 8 || ((*v << shift) >> shift) == *v
        }
        (T::Float32, Value::Float(_)) | (T::Float64, Value::Float(_)) => true,
        (T::Boolean, Value::Boolean(_)) | (T::MacAddress, Value::Mac(_)) => true,
        (T::Ipv4Address, Value::Ipv4(_)) | (T::Ipv6Address, Value::Ipv6(_)) => true,
        (T::DateTimeSeconds, Value::DateTimeSeconds(_)) => true,
        (T::DateTimeMilliseconds, Value::DateTimeMilliseconds(_)) => true,
        (T::DateTimeMicroseconds, Value::DateTimeMicroseconds(_)) => true,
        (T::DateTimeNanoseconds, Value::DateTimeNanoseconds(_)) => true,
        (T::String, Value::String(s)) => field.is_variable() || s.len() == len,
        (T::OctetArray, Value::Bytes(b)) => field.is_variable() || b.len() == len,
        _ => false,
    }
}

impl Record for ValueRecord<'_, '_> {
    fn encoded_len(&self) -> usize {
        self.template
            .fields()
            .iter()
            .zip(self.values)
            .map(|(field, value)| {
                if field.is_variable() {
                    match value {
                        Value::String(s) => variable_len(s.len()),
                        Value::Bytes(b) => variable_len(b.len()),
                        _ => 0,
                    }
                } else {
                    usize::from(field.spec.length)
                }
            })
            .sum()
    }

    fn emit(&self, w: &mut FieldWriter<'_>) {
        for (field, value) in self.template.fields().iter().zip(self.values) {
            let len = usize::from(field.spec.length);
            match *value {
                Value::Unsigned(v) | Value::DateTimeMilliseconds(v) => w.uint(v, len),
                Value::DateTimeMicroseconds(v) | Value::DateTimeNanoseconds(v) => w.uint(v, len),
                Value::Signed(v) => w.uint(v as u64, len),
                Value::DateTimeSeconds(v) => w.u32(v),
                Value::Float(v) if len == 4 => w.u32((v as f32).to_bits()),
                Value::Float(v) => w.u64(v.to_bits()),
                Value::Boolean(v) => w.u8(if v { 1 } else { 2 }),
                Value::Mac(mac) => w.bytes(&mac),
                Value::Ipv4(addr) => w.ipv4(addr),
                Value::Ipv6(addr) => w.ipv6(addr),
                Value::String(s) if field.is_variable() => w.string(s),
                Value::Bytes(b) if field.is_variable() => w.variable(b),
                Value::String(s) => w.bytes(s.as_bytes()),
                Value::Bytes(b) => w.bytes(b),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct OpenSet {
    start: usize,
    set_id: u16,
}

/// Builds IPFIX messages for one stream (transport session) and observation domain.
///
/// Add templates and records; when an add returns [`EncodeError::MessageFull`], call
/// [`Encoder::finish`], send the bytes, and add again. The sequence number in each
/// header counts the data records finished before it (RFC 7011 section 3.1).
#[derive(Debug)]
pub struct Encoder {
    buf: BytesMut,
    max_message_size: usize,
    observation_domain_id: u32,
    sequence_number: u32,
    records_in_message: u32,
    open_set: Option<OpenSet>,
    finished: bool,
}

impl Encoder {
    /// An encoder whose messages never exceed `max_message_size` bytes.
    pub fn new(observation_domain_id: u32, max_message_size: usize) -> Result<Self, EncodeError> {
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&max_message_size) {
            return Err(EncodeError::InvalidMessageSize(max_message_size));
        }
        let mut buf = BytesMut::with_capacity(max_message_size);
        buf.resize(MESSAGE_HEADER_LEN, 0);
        Ok(Self {
            buf,
            max_message_size,
            observation_domain_id,
            sequence_number: 0,
            records_in_message: 0,
            open_set: None,
            finished: false,
        })
    }

    /// The maximum message size.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The observation domain id written into each header.
    pub fn observation_domain_id(&self) -> u32 {
        self.observation_domain_id
    }

    /// Data records finished in this stream so far (mod 2^32): the next header's sequence number.
    pub fn sequence_number(&self) -> u32 {
        self.sequence_number
    }

    /// Restarts the sequence, e.g. for a new transport session after a reconnect.
    pub fn set_sequence_number(&mut self, value: u32) {
        self.sequence_number = value;
    }

    /// Data records in the message being built.
    pub fn records_in_message(&self) -> u32 {
        if self.finished {
            0
        } else {
            self.records_in_message
        }
    }

    /// Bytes of the message being built.
    pub fn message_len(&self) -> usize {
        if self.finished {
            MESSAGE_HEADER_LEN
        } else {
            self.buf.len()
        }
    }

    /// True when the message being built has no set yet.
    pub fn is_empty(&self) -> bool {
        self.message_len() == MESSAGE_HEADER_LEN
    }

    /// Bytes still free in the message being built.
    pub fn remaining(&self) -> usize {
        self.max_message_size - self.message_len()
    }

    #[inline]
    fn restart_if_finished(&mut self) {
        if self.finished {
            self.buf.truncate(MESSAGE_HEADER_LEN);
            self.records_in_message = 0;
            self.open_set = None;
            self.finished = false;
        }
    }

    /// Makes room for an item of `len` bytes in a set with `set_id`, opening a new set when the
    /// open one has another id; returns the item's offset.
    #[inline]
    fn reserve(&mut self, set_id: u16, len: usize) -> Result<usize, EncodeError> {
        self.restart_if_finished();
        let needs_header = !matches!(self.open_set, Some(open) if open.set_id == set_id);
        let total = len + if needs_header { SET_HEADER_LEN } else { 0 };
        if MESSAGE_HEADER_LEN + SET_HEADER_LEN + len > self.max_message_size {
            return Err(EncodeError::TooLarge {
                len,
                max: self.max_message_size - MESSAGE_HEADER_LEN - SET_HEADER_LEN,
            });
        }
        if self.buf.len() + total > self.max_message_size {
            return Err(EncodeError::MessageFull);
        }
        if needs_header {
            self.close_set();
            self.open_set = Some(OpenSet {
                start: self.buf.len(),
                set_id,
            });
            self.buf.resize(self.buf.len() + SET_HEADER_LEN, 0);
        }
        let at = self.buf.len();
        self.buf.resize(at + len, 0);
        Ok(at)
    }

    fn close_set(&mut self) {
        if let Some(open) = self.open_set.take() {
            let length = (self.buf.len() - open.start) as u16;
            SetHeaderRepr {
                set_id: open.set_id,
                length,
            }
            .emit(&mut SetHeader::new_unchecked(&mut self.buf[open.start..]));
        }
    }

    /// Throws away the message being built (its sets and records), as if it had never
    /// been started; the sequence number does not move.
    pub fn discard(&mut self) {
        self.finished = true;
    }

    /// Adds a template (to a template set) or an options template (to an options template set).
    pub fn add_template(&mut self, template: &Template) -> Result<(), EncodeError> {
        let set_id = if template.is_options() {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        };
        let len = template.wire_len();
        let at = self.reserve(set_id, len)?;
        template.emit(&mut self.buf[at..at + len]);
        Ok(())
    }

    /// Adds a template withdrawal (RFC 7011 section 8.1), for TCP and SCTP streams only.
    /// `template_id` 2 (or 3 with `options`) withdraws all (options) templates.
    pub fn add_withdrawal(&mut self, template_id: u16, options: bool) -> Result<(), EncodeError> {
        let set_id = if options {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        };
        let at = self.reserve(set_id, 4)?;
        self.buf[at..at + 2].copy_from_slice(&template_id.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&0u16.to_be_bytes());
        Ok(())
    }

    /// Adds one data record for `template`. Allocation-free once the buffer has grown.
    #[inline]
    pub fn add_record<R: Record + ?Sized>(
        &mut self,
        template: &Template,
        record: &R,
    ) -> Result<(), EncodeError> {
        self.add_record_with_id(template.id(), record)
    }

    /// Adds one data record to a data set with id `template_id`.
    #[inline]
    pub fn add_record_with_id<R: Record + ?Sized>(
        &mut self,
        template_id: u16,
        record: &R,
    ) -> Result<(), EncodeError> {
        let len = record.encoded_len();
        self.restart_if_finished();
        let (len_before, set_before) = (self.buf.len(), self.open_set);
        let at = self.reserve(template_id, len)?;
        let mut writer = FieldWriter::new(&mut self.buf[at..at + len]);
        record.emit(&mut writer);
        let (written, overflowed) = (writer.position(), writer.overflowed());
        if overflowed || written != len {
            // Undo the reservation, including a set header opened for this record; the
            // set that was open before is patched again when it closes.
            self.buf.truncate(len_before);
            self.open_set = set_before;
            return Err(EncodeError::LengthMismatch {
                announced: len,
                written,
            });
        }
        self.records_in_message += 1;
        Ok(())
    }

    /// Adds a data record already encoded (for sending one encoding to several collectors).
    #[inline]
    pub fn add_encoded_record(
        &mut self,
        template_id: u16,
        bytes: &[u8],
    ) -> Result<(), EncodeError> {
        let at = self.reserve(template_id, bytes.len())?;
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.records_in_message += 1;
        Ok(())
    }

    /// Closes the message: patches set and message lengths, stamps the header, advances the
    /// sequence number, and returns the bytes. The next add starts a new message.
    pub fn finish(&mut self, export_time: u32) -> &[u8] {
        self.restart_if_finished();
        self.close_set();
        let length = self.buf.len() as u16;
        MessageHeaderRepr {
            length,
            export_time,
            sequence_number: self.sequence_number,
            observation_domain_id: self.observation_domain_id,
        }
        .emit(&mut MessageHeader::new_unchecked(&mut self.buf[..]));
        self.sequence_number = self.sequence_number.wrapping_add(self.records_in_message);
        self.finished = true;
        &self.buf[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn variable_len_forms() {
        assert_eq!(variable_len(0), 1);
        assert_eq!(variable_len(254), 255);
        assert_eq!(variable_len(255), 258);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            Encoder::new(1, 63).unwrap_err(),
            EncodeError::InvalidMessageSize(63)
        );
        assert!(Encoder::new(1, 65_536).is_err());
    }

    struct Liar;
    impl Record for Liar {
        fn encoded_len(&self) -> usize {
            4
        }
        fn emit(&self, w: &mut FieldWriter<'_>) {
            w.u64(1);
        }
    }

    #[test]
    fn lying_record_is_rolled_back() {
        let registry = Registry::default();
        let template = Template::from_names(&registry, 256, &["octetDeltaCount"]).unwrap();
        let mut encoder = Encoder::new(1, 1472).unwrap();
        assert!(matches!(
            encoder.add_record(&template, &Liar),
            Err(EncodeError::LengthMismatch { announced: 4, .. })
        ));
        assert!(encoder.is_empty());
        assert_eq!(encoder.records_in_message(), 0);
    }
}
