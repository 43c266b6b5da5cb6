//! Templates: an ordered list of fields, with the offsets of the fixed-length prefix
//! precomputed so a record's leading fields can be read without walking it.

use crate::registry::{DataType, InformationElement, Registry};
use crate::wire::field_specifier::{FieldSpecifier, FieldSpecifierRepr, VARIABLE_LENGTH};
use crate::wire::set::MIN_DATA_SET_ID;
use crate::wire::template_record::{
    OPTIONS_TEMPLATE_HEADER_LEN, OptionsTemplateRecordHeader, OptionsTemplateRecordHeaderRepr,
    TEMPLATE_HEADER_LEN, TemplateRecordHeader, TemplateRecordHeaderRepr,
};

/// Why a template cannot be built or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Template ids 0..=255 are reserved for set ids (RFC 7011 section 3.4.1).
    #[error("template id {0} is reserved (template ids start at 256)")]
    ReservedId(u16),
    /// A fixed-length field of length zero.
    #[error("field {index} (element {pen}/{id}) has length 0")]
    ZeroLengthField { index: usize, pen: u32, id: u16 },
    /// A field length its data type cannot take.
    #[error("field {index} ({name}) cannot be {length} bytes long as {data_type}")]
    BadFieldLength {
        index: usize,
        name: &'static str,
        length: u16,
        data_type: &'static str,
    },
    /// More fields than a template record can count, or none at all.
    #[error("a template needs 1 to 65535 fields, not {0}")]
    FieldCount(usize),
    /// An options template whose scope count is 0 or exceeds the field count.
    #[error("options template scope count {scope} is not within 1..={fields}")]
    BadScopeCount { scope: u16, fields: usize },
}

/// One field of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field specifier as sent on the wire.
    pub spec: FieldSpecifierRepr,
    /// The registry entry, when the element is known.
    pub ie: Option<InformationElement>,
    /// Offset inside a data record, known while every earlier field is fixed-length.
    pub offset: Option<u16>,
}

impl Field {
    /// The element's data type; unknown elements are treated as octet arrays.
    pub fn data_type(&self) -> DataType {
        self.ie.map_or(DataType::OctetArray, |ie| ie.data_type)
    }

    /// True for a variable-length field.
    pub fn is_variable(&self) -> bool {
        self.spec.length == VARIABLE_LENGTH
    }
}

/// One step of walking a data record: runs of fixed fields that need no check are merged,
/// so the decoder does a few steps per record instead of one per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Fixed-length bytes that need no validation.
    Skip(usize),
    /// A fixed-length field whose value must be checked (string, boolean).
    Checked { index: usize, len: usize },
    /// A variable-length field; `check` for strings (UTF-8).
    Variable { index: usize, check: bool },
}

/// A template or options template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    id: u16,
    scope_field_count: u16,
    fields: Vec<Field>,
    fixed_len: usize,
    variable_fields: usize,
    steps: Vec<Step>,
}

impl Template {
    /// A template of known elements, each at its natural length.
    pub fn new(id: u16, elements: &[InformationElement]) -> Result<Self, TemplateError> {
        Self::build(
            id,
            0,
            elements
                .iter()
                .map(|ie| (ie.id, ie.pen, ie.length(), Some(*ie))),
        )
    }

    /// A template of known elements looked up by name, each at its natural length.
    /// Panics on an unknown name: meant for constant tables.
    pub fn from_names(registry: &Registry, id: u16, names: &[&str]) -> Result<Self, TemplateError> {
        let elements: Vec<_> = names.iter().map(|name| registry.expect(name)).collect();
        Self::new(id, &elements)
    }

    /// A template of known elements looked up by name, each at its natural length but
    /// those given a length in `lengths` (a 16-byte octet array, say).
    /// Panics on an unknown name: meant for constant tables.
    pub fn from_names_with_lengths(
        registry: &Registry,
        id: u16,
        names: &[&str],
        lengths: &[(&str, u16)],
    ) -> Result<Self, TemplateError> {
        Self::build(
            id,
            0,
            names.iter().map(|name| {
                let ie = registry.expect(name);
                let length = lengths
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(ie.length(), |(_, l)| *l);
                (ie.id, ie.pen, length, Some(ie))
            }),
        )
    }

    /// An options template: the first `scope_field_count` elements are its scope.
    pub fn options(
        id: u16,
        scope_field_count: u16,
        elements: &[InformationElement],
    ) -> Result<Self, TemplateError> {
        if scope_field_count == 0 || usize::from(scope_field_count) > elements.len() {
            return Err(TemplateError::BadScopeCount {
                scope: scope_field_count,
                fields: elements.len(),
            });
        }
        Self::build(
            id,
            scope_field_count,
            elements
                .iter()
                .map(|ie| (ie.id, ie.pen, ie.length(), Some(*ie))),
        )
    }

    /// A template from wire field specifiers, resolving elements through `registry`.
    pub fn from_specs(
        registry: &Registry,
        id: u16,
        scope_field_count: u16,
        specs: &[FieldSpecifierRepr],
    ) -> Result<Self, TemplateError> {
        if scope_field_count > 0 && usize::from(scope_field_count) > specs.len() {
            return Err(TemplateError::BadScopeCount {
                scope: scope_field_count,
                fields: specs.len(),
            });
        }
        Self::build(
            id,
            scope_field_count,
            specs.iter().map(|spec| {
                let ie = registry.by_id(spec.enterprise_number, spec.element_id);
                (spec.element_id, spec.enterprise_number, spec.length, ie)
            }),
        )
    }

    fn build(
        id: u16,
        scope_field_count: u16,
        specs: impl Iterator<Item = (u16, u32, u16, Option<InformationElement>)>,
    ) -> Result<Self, TemplateError> {
        if id < MIN_DATA_SET_ID {
            return Err(TemplateError::ReservedId(id));
        }
        let mut fields = Vec::with_capacity(specs.size_hint().0);
        let mut fixed_len = 0usize;
        let mut variable_fields = 0usize;
        for (index, (element_id, pen, length, ie)) in specs.enumerate() {
            if length == 0 {
                return Err(TemplateError::ZeroLengthField {
                    index,
                    pen,
                    id: element_id,
                });
            }
            if let Some(ie) = ie
                && length != VARIABLE_LENGTH
                && !ie.data_type.accepts_length(length)
            {
                return Err(TemplateError::BadFieldLength {
                    index,
                    name: ie.name,
                    length,
                    data_type: ie.data_type.name(),
                });
            }
            if let Some(ie) = ie
                && length == VARIABLE_LENGTH
                && !matches!(ie.data_type, DataType::String | DataType::OctetArray)
            {
                return Err(TemplateError::BadFieldLength {
                    index,
                    name: ie.name,
                    length,
                    data_type: ie.data_type.name(),
                });
            }
            let offset = if variable_fields == 0 {
                u16::try_from(fixed_len).ok()
            } else {
                None
            };
            if length == VARIABLE_LENGTH {
                variable_fields += 1;
            } else {
                fixed_len += usize::from(length);
            }
            fields.push(Field {
                spec: FieldSpecifierRepr {
                    element_id,
                    length,
                    enterprise_number: pen,
                },
                ie,
                offset,
            });
        }
        if fields.is_empty() || fields.len() > usize::from(u16::MAX) {
            return Err(TemplateError::FieldCount(fields.len()));
        }
        let steps = walk_steps(&fields);
        Ok(Self {
            id,
            scope_field_count,
            fields,
            fixed_len,
            variable_fields,
            steps,
        })
    }

    /// The steps that walk one data record.
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Template id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// True for an options template.
    pub fn is_options(&self) -> bool {
        self.scope_field_count > 0
    }

    /// Number of scope fields (0 for a plain template).
    pub fn scope_field_count(&self) -> u16 {
        self.scope_field_count
    }

    /// The fields in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Index of the field carrying element `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| f.ie.is_some_and(|ie| ie.name == name))
    }

    /// Index of the field carrying element `id` of enterprise `pen`.
    #[inline]
    pub fn position_of(&self, pen: u32, id: u16) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| f.spec.element_id == id && f.spec.enterprise_number == pen)
    }

    /// Sum of the fixed-length fields.
    pub fn fixed_len(&self) -> usize {
        self.fixed_len
    }

    /// Number of variable-length fields.
    pub fn variable_fields(&self) -> usize {
        self.variable_fields
    }

    /// Shortest possible data record (each variable field empty, one length byte).
    pub fn min_record_len(&self) -> usize {
        self.fixed_len + self.variable_fields
    }

    /// The smallest message that carries this template and one (shortest) record of it:
    /// message header, a template set and a data set.
    pub fn smallest_message(&self) -> usize {
        crate::wire::message::HEADER_LEN
            + 2 * crate::wire::set::HEADER_LEN
            + self.wire_len()
            + self.min_record_len()
    }

    /// Bytes of this template's record in a (options) template set.
    pub fn wire_len(&self) -> usize {
        let header = if self.is_options() {
            OPTIONS_TEMPLATE_HEADER_LEN
        } else {
            TEMPLATE_HEADER_LEN
        };
        header
            + self
                .fields
                .iter()
                .map(|f| f.spec.buffer_len())
                .sum::<usize>()
    }

    /// Writes the template record into `buf`, which must be exactly `wire_len()` bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let field_count = self.fields.len() as u16;
        let mut at = if self.is_options() {
            OptionsTemplateRecordHeaderRepr {
                template_id: self.id,
                field_count,
                scope_field_count: self.scope_field_count,
            }
            .emit(&mut OptionsTemplateRecordHeader::new_unchecked(&mut *buf));
            OPTIONS_TEMPLATE_HEADER_LEN
        } else {
            TemplateRecordHeaderRepr {
                template_id: self.id,
                field_count,
            }
            .emit(&mut TemplateRecordHeader::new_unchecked(&mut *buf));
            TEMPLATE_HEADER_LEN
        };
        for field in &self.fields {
            let len = field.spec.buffer_len();
            field
                .spec
                .emit(&mut FieldSpecifier::new_unchecked(&mut buf[at..at + len]));
            at += len;
        }
    }
}

fn walk_steps(fields: &[Field]) -> Vec<Step> {
    let mut steps = Vec::new();
    for (index, field) in fields.iter().enumerate() {
        let checked = matches!(field.data_type(), DataType::String | DataType::Boolean);
        let step = if field.is_variable() {
            Step::Variable {
                index,
                check: field.data_type() == DataType::String,
            }
        } else if checked {
            Step::Checked {
                index,
                len: usize::from(field.spec.length),
            }
        } else {
            let len = usize::from(field.spec.length);
            if let Some(Step::Skip(run)) = steps.last_mut() {
                *run += len;
                continue;
            }
            Step::Skip(len)
        };
        steps.push(step);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn offsets_cover_the_fixed_prefix() {
        let registry = Registry::default();
        let template = Template::from_names(
            &registry,
            300,
            &[
                "sourceIPv4Address",
                "sourceTransportPort",
                "sourcePodName",
                "octetDeltaCount",
            ],
        )
        .unwrap();
        let offsets: Vec<_> = template.fields().iter().map(|f| f.offset).collect();
        assert_eq!(offsets, [Some(0), Some(4), Some(6), None]);
        assert_eq!(template.fixed_len(), 14);
        assert_eq!(template.min_record_len(), 15);
        // 4 header + 3 IANA specifiers * 4 + 1 enterprise specifier * 8
        assert_eq!(template.wire_len(), 24);
    }

    #[test]
    fn template_record_bytes() {
        let registry = Registry::default();
        let template =
            Template::from_names(&registry, 256, &["sourceIPv4Address", "sourcePodName"]).unwrap();
        let mut out = vec![0u8; template.wire_len()];
        template.emit(&mut out);
        assert_eq!(
            out,
            [
                0x01, 0x00, 0x00, 0x02, // id 256, 2 fields
                0x00, 0x08, 0x00, 0x04, // sourceIPv4Address, 4
                0x80, 0x65, 0xff, 0xff, 0x00, 0x00, 0xdc,
                0xba, // sourcePodName, variable, 56506
            ]
        );
    }

    #[test]
    fn invalid_templates_are_refused() {
        let registry = Registry::default();
        let ip = registry.expect("sourceIPv4Address");
        assert_eq!(
            Template::new(255, &[ip]),
            Err(TemplateError::ReservedId(255))
        );
        assert_eq!(Template::new(256, &[]), Err(TemplateError::FieldCount(0)));
        let spec = |id, length| FieldSpecifierRepr {
            element_id: id,
            length,
            enterprise_number: 0,
        };
        assert_eq!(
            Template::from_specs(&registry, 256, 0, &[spec(8, 0)]),
            Err(TemplateError::ZeroLengthField {
                index: 0,
                pen: 0,
                id: 8
            })
        );
        assert!(matches!(
            Template::from_specs(&registry, 256, 0, &[spec(8, 3)]),
            Err(TemplateError::BadFieldLength { index: 0, .. })
        ));
        assert!(matches!(
            Template::from_specs(&registry, 256, 0, &[spec(8, VARIABLE_LENGTH)]),
            Err(TemplateError::BadFieldLength { .. })
        ));
        // reduced-size encoding of a counter and an unknown element are fine
        let template =
            Template::from_specs(&registry, 256, 0, &[spec(1, 4), spec(999, 7)]).unwrap();
        assert_eq!(template.fixed_len(), 11);
        assert!(template.fields()[1].ie.is_none());
        assert!(matches!(
            Template::options(256, 2, &[ip]),
            Err(TemplateError::BadScopeCount { .. })
        ));
    }
}
