//! The 16-byte IPFIX message header (RFC 7011 section 3.1).

use super::{WireError, need, read_u16, read_u32, write_u16, write_u32};

/// The version number every IPFIX message carries.
pub const VERSION: u16 = 10;
/// Length of the message header in bytes.
pub const HEADER_LEN: usize = 16;

mod field {
    use crate::wire::Field;
    pub const VERSION: Field = 0..2;
    pub const LENGTH: Field = 2..4;
    pub const EXPORT_TIME: Field = 4..8;
    pub const SEQUENCE_NUMBER: Field = 8..12;
    pub const DOMAIN_ID: Field = 12..16;
}

/// A view of a message header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MessageHeader<T> {
    /// Wraps a buffer without checking its length; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that must hold at least a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Checks that the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), WireError> {
        need(self.buffer.as_ref(), HEADER_LEN)
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (10 for IPFIX).
    pub fn version(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::VERSION.start)
    }

    /// Total message length in bytes, header included.
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Export time in seconds since the Unix epoch.
    pub fn export_time(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::EXPORT_TIME.start)
    }

    /// Data records sent in this stream and domain before this message (mod 2^32).
    pub fn sequence_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQUENCE_NUMBER.start)
    }

    /// Observation domain id.
    pub fn observation_domain_id(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::DOMAIN_ID.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MessageHeader<T> {
    /// Sets the version field.
    pub fn set_version(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::VERSION.start, value)
    }

    /// Sets the length field.
    pub fn set_length(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, value)
    }

    /// Sets the export time.
    pub fn set_export_time(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::EXPORT_TIME.start, value)
    }

    /// Sets the sequence number.
    pub fn set_sequence_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQUENCE_NUMBER.start, value)
    }

    /// Sets the observation domain id.
    pub fn set_observation_domain_id(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::DOMAIN_ID.start, value)
    }
}

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeaderRepr {
    pub length: u16,
    pub export_time: u32,
    pub sequence_number: u32,
    pub observation_domain_id: u32,
}

impl MessageHeaderRepr {
    /// Parses a header, refusing any version but 10.
    pub fn parse<T: AsRef<[u8]>>(header: &MessageHeader<T>) -> Result<Self, WireError> {
        header.check_len()?;
        if header.version() != VERSION {
            return Err(WireError::BadVersion(header.version()));
        }
        Ok(Self {
            length: header.length(),
            export_time: header.export_time(),
            sequence_number: header.sequence_number(),
            observation_domain_id: header.observation_domain_id(),
        })
    }

    /// Bytes the header occupies on the wire.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut MessageHeader<T>) {
        header.set_version(VERSION);
        header.set_length(self.length);
        header.set_export_time(self.export_time);
        header.set_sequence_number(self.sequence_number);
        header.set_observation_domain_id(self.observation_domain_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BYTES: [u8; 16] = [
        0x00, 0x0a, // version 10
        0x00, 0x40, // length 64
        0x65, 0x4f, 0x2a, 0x00, // export time 0x654f_2a00
        0x00, 0x00, 0x01, 0x02, // sequence 258
        0xde, 0xad, 0xbe, 0xef, // domain
    ];

    fn repr() -> MessageHeaderRepr {
        MessageHeaderRepr {
            length: 64,
            export_time: 0x654f_2a00,
            sequence_number: 258,
            observation_domain_id: 0xdead_beef,
        }
    }

    #[test]
    fn parse_reads_every_field() {
        let header = MessageHeader::new_checked(&BYTES[..]).unwrap();
        assert_eq!(header.version(), 10);
        assert_eq!(MessageHeaderRepr::parse(&header).unwrap(), repr());
    }

    #[test]
    fn emit_writes_exact_bytes() {
        let mut out = [0u8; 16];
        repr().emit(&mut MessageHeader::new_unchecked(&mut out[..]));
        assert_eq!(out, BYTES);
    }

    #[test]
    fn short_buffer_is_truncated() {
        assert_eq!(
            MessageHeader::new_checked(&BYTES[..15]).unwrap_err(),
            WireError::Truncated {
                needed: 16,
                available: 15
            }
        );
    }

    #[test]
    fn netflow_v9_version_is_refused() {
        let mut bytes = BYTES;
        bytes[1] = 9;
        let header = MessageHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            MessageHeaderRepr::parse(&header).unwrap_err(),
            WireError::BadVersion(9)
        );
    }
}
