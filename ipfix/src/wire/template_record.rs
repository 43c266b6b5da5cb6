//! Template and options template record headers (RFC 7011 sections 3.4.1 and 3.4.2).

use super::{WireError, need, read_u16, write_u16};

/// Length of a template record header.
pub const TEMPLATE_HEADER_LEN: usize = 4;
/// Length of an options template record header.
pub const OPTIONS_TEMPLATE_HEADER_LEN: usize = 6;

mod field {
    use crate::wire::Field;
    pub const TEMPLATE_ID: Field = 0..2;
    pub const FIELD_COUNT: Field = 2..4;
    pub const SCOPE_FIELD_COUNT: Field = 4..6;
}

/// A view of a template record header: template id and field count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateRecordHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TemplateRecordHeader<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that must hold a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), TEMPLATE_HEADER_LEN)?;
        Ok(Self { buffer })
    }

    /// Template id (256 and above; 2 with a zero field count withdraws all templates).
    pub fn template_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TEMPLATE_ID.start)
    }

    /// Number of field specifiers that follow; 0 marks a withdrawal.
    pub fn field_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FIELD_COUNT.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TemplateRecordHeader<T> {
    /// Sets the template id.
    pub fn set_template_id(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::TEMPLATE_ID.start, value)
    }

    /// Sets the field count.
    pub fn set_field_count(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::FIELD_COUNT.start, value)
    }
}

/// A parsed template record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateRecordHeaderRepr {
    pub template_id: u16,
    pub field_count: u16,
}

impl TemplateRecordHeaderRepr {
    /// Parses the header.
    pub fn parse<T: AsRef<[u8]>>(header: &TemplateRecordHeader<T>) -> Result<Self, WireError> {
        need(header.buffer.as_ref(), TEMPLATE_HEADER_LEN)?;
        Ok(Self {
            template_id: header.template_id(),
            field_count: header.field_count(),
        })
    }

    /// Bytes the header occupies on the wire.
    pub const fn buffer_len(&self) -> usize {
        TEMPLATE_HEADER_LEN
    }

    /// Writes the header into the view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut TemplateRecordHeader<T>) {
        header.set_template_id(self.template_id);
        header.set_field_count(self.field_count);
    }
}

/// A view of an options template record header: template id, field count, scope field count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionsTemplateRecordHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> OptionsTemplateRecordHeader<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that must hold a whole header. A withdrawal (field count 0) is only
    /// 4 bytes long; check `field_count` before reading the scope count.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), TEMPLATE_HEADER_LEN)?;
        let header = Self { buffer };
        if header.field_count() != 0 {
            need(header.buffer.as_ref(), OPTIONS_TEMPLATE_HEADER_LEN)?;
        }
        Ok(header)
    }

    /// Template id.
    pub fn template_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TEMPLATE_ID.start)
    }

    /// Number of field specifiers, scope fields included.
    pub fn field_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FIELD_COUNT.start)
    }

    /// Number of leading scope fields (at least 1 unless this is a withdrawal).
    pub fn scope_field_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SCOPE_FIELD_COUNT.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OptionsTemplateRecordHeader<T> {
    /// Sets the template id.
    pub fn set_template_id(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::TEMPLATE_ID.start, value)
    }

    /// Sets the field count.
    pub fn set_field_count(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::FIELD_COUNT.start, value)
    }

    /// Sets the scope field count.
    pub fn set_scope_field_count(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SCOPE_FIELD_COUNT.start, value)
    }
}

/// A parsed options template record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionsTemplateRecordHeaderRepr {
    pub template_id: u16,
    pub field_count: u16,
    pub scope_field_count: u16,
}

impl OptionsTemplateRecordHeaderRepr {
    /// Parses the header; a withdrawal (field count 0) has no scope count and parses as 0.
    pub fn parse<T: AsRef<[u8]>>(
        header: &OptionsTemplateRecordHeader<T>,
    ) -> Result<Self, WireError> {
        need(header.buffer.as_ref(), TEMPLATE_HEADER_LEN)?;
        let field_count = header.field_count();
        let scope_field_count = if field_count == 0 {
            0
        } else {
            need(header.buffer.as_ref(), OPTIONS_TEMPLATE_HEADER_LEN)?;
            header.scope_field_count()
        };
        Ok(Self {
            template_id: header.template_id(),
            field_count,
            scope_field_count,
        })
    }

    /// Bytes the header occupies on the wire (4 for a withdrawal, else 6).
    pub const fn buffer_len(&self) -> usize {
        if self.field_count == 0 {
            TEMPLATE_HEADER_LEN
        } else {
            OPTIONS_TEMPLATE_HEADER_LEN
        }
    }

    /// Writes the header into the view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut OptionsTemplateRecordHeader<T>) {
        header.set_template_id(self.template_id);
        header.set_field_count(self.field_count);
        if self.field_count != 0 {
            header.set_scope_field_count(self.scope_field_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_header_round_trip() {
        let bytes = [0x01, 0x00, 0x00, 0x2b];
        let repr = TemplateRecordHeaderRepr::parse(
            &TemplateRecordHeader::new_checked(&bytes[..]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            repr,
            TemplateRecordHeaderRepr {
                template_id: 256,
                field_count: 43
            }
        );
        let mut out = [0u8; 4];
        repr.emit(&mut TemplateRecordHeader::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn options_header_round_trip_and_withdrawal() {
        let bytes = [0x01, 0x02, 0x00, 0x05, 0x00, 0x01];
        let view = OptionsTemplateRecordHeader::new_checked(&bytes[..]).unwrap();
        let repr = OptionsTemplateRecordHeaderRepr::parse(&view).unwrap();
        assert_eq!(
            repr,
            OptionsTemplateRecordHeaderRepr {
                template_id: 258,
                field_count: 5,
                scope_field_count: 1
            }
        );
        let mut out = [0u8; 6];
        repr.emit(&mut OptionsTemplateRecordHeader::new_unchecked(
            &mut out[..],
        ));
        assert_eq!(out, bytes);

        let withdrawal = [0x01, 0x02, 0x00, 0x00];
        let view = OptionsTemplateRecordHeader::new_checked(&withdrawal[..]).unwrap();
        assert_eq!(
            OptionsTemplateRecordHeaderRepr::parse(&view)
                .unwrap()
                .buffer_len(),
            4
        );
        assert!(OptionsTemplateRecordHeader::new_checked(&bytes[..5]).is_err());
    }
}
