//! Typed views over IPFIX wire structures (RFC 7011 section 3), in the smoltcp style:
//! a view wraps a byte buffer and reads or writes fields in place, `new_checked` refuses a
//! buffer too short for the structure, and a `Repr` is the parsed, owned form with
//! `parse`, `buffer_len` and `emit`.

pub mod field_specifier;
pub mod message;
pub mod set;
pub mod template_record;

pub use field_specifier::{FieldSpecifier, FieldSpecifierRepr};
pub use message::{MessageHeader, MessageHeaderRepr};
pub use set::{SetHeader, SetHeaderRepr, SetIter};
pub use template_record::{
    OptionsTemplateRecordHeader, OptionsTemplateRecordHeaderRepr, TemplateRecordHeader,
    TemplateRecordHeaderRepr,
};

/// A byte range of a fixed-layout wire structure.
pub(crate) type Field = core::ops::Range<usize>;

/// Why a buffer cannot be read as the wire structure asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the structure does.
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The message header's version is not 10.
    #[error("version {0} is not IPFIX (10)")]
    BadVersion(u16),
    /// A set header claims fewer than the 4 bytes of the header itself.
    #[error("set length {0} is shorter than a set header")]
    SetTooShort(u16),
    /// A set claims more bytes than the message has left.
    #[error("set length {length} overruns the {remaining} bytes left in the message")]
    SetOverrun { length: u16, remaining: usize },
}

#[inline]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline]
pub(crate) fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline]
pub(crate) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Returns `Truncated` unless `buf` holds at least `needed` bytes.
#[inline]
pub(crate) fn need(buf: &[u8], needed: usize) -> Result<(), WireError> {
    if buf.len() < needed {
        Err(WireError::Truncated {
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}
