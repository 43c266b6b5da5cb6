//! Set headers (RFC 7011 section 3.3.2) and iteration over the sets of a message.

use super::{WireError, need, read_u16, write_u16};

/// Set id of a template set.
pub const TEMPLATE_SET_ID: u16 = 2;
/// Set id of an options template set.
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Lowest set id of a data set (and lowest template id).
pub const MIN_DATA_SET_ID: u16 = 256;
/// Length of a set header in bytes.
pub const HEADER_LEN: usize = 4;

mod field {
    use crate::wire::Field;
    pub const SET_ID: Field = 0..2;
    pub const LENGTH: Field = 2..4;
}

/// A view of a set header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SetHeader<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that must hold at least a set header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), HEADER_LEN)?;
        Ok(Self { buffer })
    }

    /// Set id: 2 template, 3 options template, 256 and above a data set's template id.
    pub fn set_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SET_ID.start)
    }

    /// Set length in bytes, header included.
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SetHeader<T> {
    /// Sets the set id.
    pub fn set_set_id(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SET_ID.start, value)
    }

    /// Sets the set length.
    pub fn set_length(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, value)
    }
}

/// A parsed set header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetHeaderRepr {
    pub set_id: u16,
    pub length: u16,
}

impl SetHeaderRepr {
    /// Parses a set header; the length must at least cover the header.
    pub fn parse<T: AsRef<[u8]>>(header: &SetHeader<T>) -> Result<Self, WireError> {
        need(header.buffer.as_ref(), HEADER_LEN)?;
        let length = header.length();
        if usize::from(length) < HEADER_LEN {
            return Err(WireError::SetTooShort(length));
        }
        Ok(Self {
            set_id: header.set_id(),
            length,
        })
    }

    /// Bytes the header occupies on the wire.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut SetHeader<T>) {
        header.set_set_id(self.set_id);
        header.set_length(self.length);
    }
}

/// Walks the sets of a message body (the bytes after the message header), yielding each
/// set's header and body. Stops after the first error.
#[derive(Debug, Clone)]
pub struct SetIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> SetIter<'a> {
    /// Iterates the sets in `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            failed: false,
        }
    }
}

impl<'a> Iterator for SetIter<'a> {
    type Item = Result<(SetHeaderRepr, &'a [u8]), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let parsed = SetHeader::new_checked(self.rest)
            .and_then(|header| SetHeaderRepr::parse(&header))
            .and_then(|repr| {
                let length = usize::from(repr.length);
                if length > self.rest.len() {
                    Err(WireError::SetOverrun {
                        length: repr.length,
                        remaining: self.rest.len(),
                    })
                } else {
                    Ok((repr, length))
                }
            });
        match parsed {
            Ok((repr, length)) => {
                let body = &self.rest[HEADER_LEN..length];
                self.rest = &self.rest[length..];
                Some(Ok((repr, body)))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let bytes = [0x01, 0x00, 0x00, 0x0c];
        let repr = SetHeaderRepr::parse(&SetHeader::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            SetHeaderRepr {
                set_id: 256,
                length: 12
            }
        );
        let mut out = [0u8; 4];
        repr.emit(&mut SetHeader::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn iterates_sets_and_bodies() {
        let body = [
            0x00, 0x02, 0x00, 0x06, 0xaa, 0xbb, // template set, 2-byte body
            0x01, 0x00, 0x00, 0x05, 0xcc, // data set 256, 1-byte body
        ];
        let sets: Vec<_> = SetIter::new(&body).map(Result::unwrap).collect();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].0.set_id, TEMPLATE_SET_ID);
        assert_eq!(sets[0].1, &[0xaa, 0xbb]);
        assert_eq!(sets[1].0.set_id, 256);
        assert_eq!(sets[1].1, &[0xcc]);
    }

    #[test]
    fn short_and_overrunning_sets_are_errors() {
        let short = [0x01, 0x00, 0x00, 0x03];
        assert_eq!(
            SetIter::new(&short).next().unwrap().unwrap_err(),
            WireError::SetTooShort(3)
        );
        let overrun = [0x01, 0x00, 0x00, 0x09, 0x00];
        assert_eq!(
            SetIter::new(&overrun).next().unwrap().unwrap_err(),
            WireError::SetOverrun {
                length: 9,
                remaining: 5
            }
        );
        let mut iter = SetIter::new(&[0x01, 0x00]);
        assert!(matches!(
            iter.next(),
            Some(Err(WireError::Truncated { .. }))
        ));
        assert!(iter.next().is_none());
    }
}
