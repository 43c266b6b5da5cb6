//! Field specifiers (RFC 7011 section 3.2): an information element id with the
//! enterprise bit, a field length, and an enterprise number when the bit is set.

use super::{WireError, need, read_u16, read_u32, write_u16, write_u32};

/// The enterprise bit in the first two bytes of a field specifier.
pub const ENTERPRISE_BIT: u16 = 0x8000;
/// Field length announcing a variable-length field (RFC 7011 section 7).
pub const VARIABLE_LENGTH: u16 = 0xffff;

mod field {
    use crate::wire::Field;
    pub const ELEMENT_ID: Field = 0..2;
    pub const FIELD_LENGTH: Field = 2..4;
    pub const ENTERPRISE_NUMBER: Field = 4..8;
}

/// A view of one field specifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpecifier<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FieldSpecifier<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer holding a whole specifier (4 bytes, or 8 with the enterprise bit).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), 4)?;
        let spec = Self { buffer };
        need(spec.buffer.as_ref(), spec.wire_len())?;
        Ok(spec)
    }

    /// True when an enterprise number follows.
    pub fn is_enterprise(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::ELEMENT_ID.start) & ENTERPRISE_BIT != 0
    }

    /// Information element id without the enterprise bit.
    pub fn element_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ELEMENT_ID.start) & !ENTERPRISE_BIT
    }

    /// Field length in bytes, or 65535 for variable length.
    pub fn field_length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FIELD_LENGTH.start)
    }

    /// Enterprise number, 0 when the enterprise bit is clear.
    pub fn enterprise_number(&self) -> u32 {
        if self.is_enterprise() {
            read_u32(self.buffer.as_ref(), field::ENTERPRISE_NUMBER.start)
        } else {
            0
        }
    }

    /// Bytes this specifier occupies.
    pub fn wire_len(&self) -> usize {
        if self.is_enterprise() { 8 } else { 4 }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FieldSpecifier<T> {
    /// Sets the id and enterprise bit together (enterprise 0 clears the bit).
    pub fn set_element(&mut self, element_id: u16, enterprise_number: u32) {
        let buffer = self.buffer.as_mut();
        if enterprise_number == 0 {
            write_u16(
                buffer,
                field::ELEMENT_ID.start,
                element_id & !ENTERPRISE_BIT,
            );
        } else {
            write_u16(buffer, field::ELEMENT_ID.start, element_id | ENTERPRISE_BIT);
            write_u32(buffer, field::ENTERPRISE_NUMBER.start, enterprise_number);
        }
    }

    /// Sets the field length.
    pub fn set_field_length(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::FIELD_LENGTH.start, value)
    }
}

/// A parsed field specifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldSpecifierRepr {
    /// Information element id (15 bits).
    pub element_id: u16,
    /// Field length, or [`VARIABLE_LENGTH`].
    pub length: u16,
    /// Private enterprise number; 0 for IANA elements.
    pub enterprise_number: u32,
}

impl FieldSpecifierRepr {
    /// Parses a specifier.
    pub fn parse<T: AsRef<[u8]>>(spec: &FieldSpecifier<T>) -> Result<Self, WireError> {
        need(spec.buffer.as_ref(), 4)?;
        need(spec.buffer.as_ref(), spec.wire_len())?;
        Ok(Self {
            element_id: spec.element_id(),
            length: spec.field_length(),
            enterprise_number: spec.enterprise_number(),
        })
    }

    /// Bytes the specifier occupies on the wire.
    pub const fn buffer_len(&self) -> usize {
        if self.enterprise_number == 0 { 4 } else { 8 }
    }

    /// Writes the specifier into the view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, spec: &mut FieldSpecifier<T>) {
        spec.set_element(self.element_id, self.enterprise_number);
        spec.set_field_length(self.length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iana_specifier() {
        let bytes = [0x00, 0x08, 0x00, 0x04]; // sourceIPv4Address, 4 bytes
        let spec = FieldSpecifier::new_checked(&bytes[..]).unwrap();
        let repr = FieldSpecifierRepr::parse(&spec).unwrap();
        assert_eq!(
            repr,
            FieldSpecifierRepr {
                element_id: 8,
                length: 4,
                enterprise_number: 0
            }
        );
        let mut out = [0u8; 4];
        repr.emit(&mut FieldSpecifier::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn enterprise_specifier_masks_the_bit() {
        // sourcePodName (Antrea 56506 = 0x0000dcba, id 101), variable length
        let bytes = [0x80, 0x65, 0xff, 0xff, 0x00, 0x00, 0xdc, 0xba];
        let spec = FieldSpecifier::new_checked(&bytes[..]).unwrap();
        assert!(spec.is_enterprise());
        let repr = FieldSpecifierRepr::parse(&spec).unwrap();
        assert_eq!(repr.element_id, 101);
        assert_eq!(repr.length, VARIABLE_LENGTH);
        assert_eq!(repr.enterprise_number, 56506);
        let mut out = [0u8; 8];
        repr.emit(&mut FieldSpecifier::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
        assert!(FieldSpecifier::new_checked(&bytes[..7]).is_err());
    }
}
