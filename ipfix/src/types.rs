//! Information element type records (RFC 5610): how an exporter tells a collector the name,
//! data type, semantics and units of elements the collector may not know, here flowex's
//! own elements under its enterprise number. A collector that reads these records decodes
//! `sourceProcessName` by name with no configuration; [`ElementType::read`] is that reading.

use crate::encoder::{FieldWriter, Record, variable_len};
use crate::registry::{DataType, FLOWEX, InformationElement, Registry};
use crate::template::{Template, TemplateError};
use crate::{DataRecord, Value};

/// `informationElementSemantics` values (IANA "IPFIX Information Element Semantics").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Semantics {
    Default = 0,
    Quantity = 1,
    TotalCounter = 2,
    DeltaCounter = 3,
    Identifier = 4,
    Flags = 5,
}

/// `informationElementUnits` values (IANA "IPFIX Information Element Units"), the ones
/// flowex's elements use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Units {
    None = 0,
}

/// What flowex says of each of its own elements, by element id (see [`FLOWEX`]).
const OWN: &[(u16, Semantics, &str)] = &[
    (
        1,
        Semantics::Identifier,
        "Process id (in the node's pid namespace) of the process owning the socket at the flow's source end.",
    ),
    (
        2,
        Semantics::Default,
        "Command name (comm) of the process owning the socket at the flow's source end.",
    ),
    (
        3,
        Semantics::Identifier,
        "cgroup v2 id of the process owning the socket at the flow's source end.",
    ),
    (
        4,
        Semantics::Default,
        "Container id, from the cgroup path, of the process at the flow's source end.",
    ),
    (
        5,
        Semantics::Identifier,
        "Process id (in the node's pid namespace) of the process owning the socket at the flow's destination end.",
    ),
    (
        6,
        Semantics::Default,
        "Command name (comm) of the process owning the socket at the flow's destination end.",
    ),
    (
        7,
        Semantics::Identifier,
        "cgroup v2 id of the process owning the socket at the flow's destination end.",
    ),
    (
        8,
        Semantics::Default,
        "Container id, from the cgroup path, of the process at the flow's destination end.",
    ),
    (
        9,
        Semantics::Identifier,
        "Linux conntrack zone of the flow.",
    ),
    (10, Semantics::Flags, "Linux conntrack mark of the flow."),
    (11, Semantics::Identifier, "Linux conntrack id of the flow."),
    // An octet array: flags semantics is for unsigned integers only (RFC 7012 3.2.6).
    (
        12,
        Semantics::Default,
        "Linux conntrack labels (128 bits) of the flow.",
    ),
    (
        13,
        Semantics::Default,
        "Log prefix of the firewall rule that denied the flow (NFLOG).",
    ),
];

/// One element's type information, as a type record carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementType {
    pub element: InformationElement,
    pub semantics: Semantics,
    pub units: Units,
    pub description: &'static str,
}

/// The type records for every element flowex sends under its own enterprise number
/// (`registry`'s), in id order.
pub fn own_element_types(registry: &Registry) -> Vec<ElementType> {
    FLOWEX
        .iter()
        .filter_map(|ie| {
            let element = registry.by_id(registry.flowex_pen(), ie.id)?;
            let (_, semantics, description) = OWN.iter().find(|(id, _, _)| *id == ie.id)?;
            Some(ElementType {
                element,
                semantics: *semantics,
                units: Units::None,
                description,
            })
        })
        .collect()
}

/// The options template of type records: scope privateEnterpriseNumber and
/// informationElementId, then data type, semantics, units, name and description.
pub fn type_template(registry: &Registry, id: u16) -> Result<Template, TemplateError> {
    let elements: Vec<InformationElement> = [
        "privateEnterpriseNumber",
        "informationElementId",
        "informationElementDataType",
        "informationElementSemantics",
        "informationElementUnits",
        "informationElementName",
        "informationElementDescription",
    ]
    .iter()
    .map(|name| registry.expect(name))
    .collect();
    Template::options(id, 2, &elements)
}

impl Record for ElementType {
    fn encoded_len(&self) -> usize {
        4 + 2
            + 1
            + 1
            + 2
            + variable_len(self.element.name.len())
            + variable_len(self.description.len())
    }

    fn emit(&self, w: &mut FieldWriter<'_>) {
        w.u32(self.element.pen);
        w.u16(self.element.id);
        w.u8(self.element.data_type as u8);
        w.u8(self.semantics as u8);
        w.u16(self.units as u16);
        w.string(self.element.name);
        w.string(self.description);
    }
}

/// An element learned from a type record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedElement {
    pub pen: u32,
    pub id: u16,
    pub name: String,
    pub data_type: DataType,
}

impl ElementType {
    /// Reads a type record: a record of an options template with privateEnterpriseNumber,
    /// informationElementId, informationElementName and informationElementDataType (other
    /// fields are optional, RFC 5610 section 3.9). None for any other record, or one
    /// naming an unknown data type or an empty name.
    pub fn read(record: &DataRecord<'_>) -> Option<LearnedElement> {
        let template = record.template();
        if !template.is_options() {
            return None;
        }
        let unsigned = |id: u16| match record.value_at(template.position_of(0, id)?) {
            Some(Value::Unsigned(v)) => Some(v),
            _ => None,
        };
        let pen = u32::try_from(unsigned(346)?).ok()?;
        let id = u16::try_from(unsigned(303)?).ok()?;
        let data_type = DataType::from_number(u8::try_from(unsigned(339)?).ok()?)?;
        let name = match record.value_at(template.position_of(0, 341)?) {
            Some(Value::String(name)) if !name.is_empty() => name.to_owned(),
            _ => return None,
        };
        Some(LearnedElement {
            pen,
            id,
            name,
            data_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, Encoder, Item};

    #[test]
    fn every_own_element_has_a_description() {
        let registry = Registry::new(4_242).unwrap();
        let types = own_element_types(&registry);
        assert_eq!(types.len(), FLOWEX.len());
        assert!(types.iter().all(|t| t.element.pen == 4_242));
        assert!(types.iter().all(|t| !t.description.is_empty()));
    }

    #[test]
    fn type_records_read_back_into_the_elements_they_describe() {
        let registry = Registry::new(4_242).unwrap();
        let template = type_template(&registry, 300).unwrap();
        let types = own_element_types(&registry);
        let mut encoder = Encoder::new(7, 65_535).unwrap();
        encoder.add_template(&template).unwrap();
        for t in &types {
            encoder.add_record(&template, t).unwrap();
        }
        let message = encoder.finish(0).to_vec();
        let mut learned = Vec::new();
        // A decoder that knows nothing of PEN 4242: the names come from the records.
        Decoder::new(Registry::default())
            .decode(1, &message, |item| {
                if let Item::Record(record) = item {
                    learned.push(ElementType::read(&record).unwrap());
                }
            })
            .unwrap();
        assert_eq!(learned.len(), types.len());
        let name = learned.iter().find(|l| l.id == 2).unwrap();
        assert_eq!(
            name,
            &LearnedElement {
                pen: 4_242,
                id: 2,
                name: "sourceProcessName".into(),
                data_type: DataType::String,
            }
        );
    }
}
