//! Information element registry: every element flowex sends or understands, with its
//! enterprise number, abstract data type and natural length.
//!
//! Four namespaces:
//! - IANA (enterprise 0), from RFC 7012 and IANA's IPFIX registry;
//! - reverse elements (enterprise 29305, RFC 5103): same ids as IANA, opposite direction;
//! - Antrea (enterprise 56506), as in Antrea's published registry;
//! - flowex's own elements, under an enterprise number chosen by the operator
//!   ([`FLOWEX_DEFAULT_PEN`] unless configured).
//!
//! Lookups scan or binary-search static tables and return `Copy` values: nothing allocates.

use crate::wire::field_specifier::VARIABLE_LENGTH;

/// Enterprise number of IANA elements.
pub const IANA_PEN: u32 = 0;
/// Enterprise number of reverse elements (RFC 5103).
pub const REVERSE_PEN: u32 = 29305;
/// Enterprise number of Antrea's elements.
pub const ANTREA_PEN: u32 = 56506;
/// Default enterprise number for flowex's own elements: 32473, the number RFC 5612 sets aside
/// for documentation and examples. Operators who own a registered number should configure it.
pub const FLOWEX_DEFAULT_PEN: u32 = 32473;

/// Abstract data types of RFC 7012 section 3.1, with their registry numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DataType {
    OctetArray = 0,
    Unsigned8 = 1,
    Unsigned16 = 2,
    Unsigned32 = 3,
    Unsigned64 = 4,
    Signed8 = 5,
    Signed16 = 6,
    Signed32 = 7,
    Signed64 = 8,
    Float32 = 9,
    Float64 = 10,
    Boolean = 11,
    MacAddress = 12,
    String = 13,
    DateTimeSeconds = 14,
    DateTimeMilliseconds = 15,
    DateTimeMicroseconds = 16,
    DateTimeNanoseconds = 17,
    Ipv4Address = 18,
    Ipv6Address = 19,
}

impl DataType {
    /// The type with registry number `number` (RFC 5610 `informationElementDataType`).
    pub const fn from_number(number: u8) -> Option<Self> {
        Some(match number {
            0 => Self::OctetArray,
            1 => Self::Unsigned8,
            2 => Self::Unsigned16,
            3 => Self::Unsigned32,
            4 => Self::Unsigned64,
            5 => Self::Signed8,
            6 => Self::Signed16,
            7 => Self::Signed32,
            8 => Self::Signed64,
            9 => Self::Float32,
            10 => Self::Float64,
            11 => Self::Boolean,
            12 => Self::MacAddress,
            13 => Self::String,
            14 => Self::DateTimeSeconds,
            15 => Self::DateTimeMilliseconds,
            16 => Self::DateTimeMicroseconds,
            17 => Self::DateTimeNanoseconds,
            18 => Self::Ipv4Address,
            19 => Self::Ipv6Address,
            _ => return None,
        })
    }

    /// Natural encoded length in bytes, or [`VARIABLE_LENGTH`] for strings and octet arrays.
    pub const fn natural_length(self) -> u16 {
        match self {
            Self::OctetArray | Self::String => VARIABLE_LENGTH,
            Self::Unsigned8 | Self::Signed8 | Self::Boolean => 1,
            Self::Unsigned16 | Self::Signed16 => 2,
            Self::Unsigned32 | Self::Signed32 | Self::Float32 | Self::DateTimeSeconds => 4,
            Self::Ipv4Address => 4,
            Self::Unsigned64 | Self::Signed64 | Self::Float64 => 8,
            Self::DateTimeMilliseconds | Self::DateTimeMicroseconds => 8,
            Self::DateTimeNanoseconds => 8,
            Self::MacAddress => 6,
            Self::Ipv6Address => 16,
        }
    }

    /// Whether `length` is a legal field length for this type: the natural length, a
    /// reduced-size encoding (RFC 7011 section 6.2) for integers and float64, any length for
    /// octet arrays and strings, and never 0 for fixed-length types.
    pub const fn accepts_length(self, length: u16) -> bool {
        match self {
            Self::OctetArray | Self::String => true,
            Self::Unsigned16 | Self::Unsigned32 | Self::Unsigned64 => {
                length >= 1 && length <= self.natural_length()
            }
            Self::Signed16 | Self::Signed32 | Self::Signed64 => {
                length >= 1 && length <= self.natural_length()
            }
            Self::Float64 => length == 4 || length == 8,
            _ => length == self.natural_length(),
        }
    }

    /// The registry name of the type.
    pub const fn name(self) -> &'static str {
        match self {
            Self::OctetArray => "octetArray",
            Self::Unsigned8 => "unsigned8",
            Self::Unsigned16 => "unsigned16",
            Self::Unsigned32 => "unsigned32",
            Self::Unsigned64 => "unsigned64",
            Self::Signed8 => "signed8",
            Self::Signed16 => "signed16",
            Self::Signed32 => "signed32",
            Self::Signed64 => "signed64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::Boolean => "boolean",
            Self::MacAddress => "macAddress",
            Self::String => "string",
            Self::DateTimeSeconds => "dateTimeSeconds",
            Self::DateTimeMilliseconds => "dateTimeMilliseconds",
            Self::DateTimeMicroseconds => "dateTimeMicroseconds",
            Self::DateTimeNanoseconds => "dateTimeNanoseconds",
            Self::Ipv4Address => "ipv4Address",
            Self::Ipv6Address => "ipv6Address",
        }
    }
}

/// One information element: its name, id, enterprise number and abstract data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InformationElement {
    pub name: &'static str,
    pub id: u16,
    pub pen: u32,
    pub data_type: DataType,
}

impl InformationElement {
    const fn new(name: &'static str, id: u16, pen: u32, data_type: DataType) -> Self {
        Self {
            name,
            id,
            pen,
            data_type,
        }
    }

    /// Natural length of the element on the wire, or 65535 for variable length.
    pub const fn length(&self) -> u16 {
        self.data_type.natural_length()
    }
}

use DataType::*;

const fn iana(name: &'static str, id: u16, data_type: DataType) -> InformationElement {
    InformationElement::new(name, id, IANA_PEN, data_type)
}

const fn reverse(name: &'static str, id: u16, data_type: DataType) -> InformationElement {
    InformationElement::new(name, id, REVERSE_PEN, data_type)
}

const fn antrea(name: &'static str, id: u16, data_type: DataType) -> InformationElement {
    InformationElement::new(name, id, ANTREA_PEN, data_type)
}

const fn own(name: &'static str, id: u16, data_type: DataType) -> InformationElement {
    InformationElement::new(name, id, FLOWEX_DEFAULT_PEN, data_type)
}

/// IANA elements (sorted by id).
pub static IANA: &[InformationElement] = &[
    iana("octetDeltaCount", 1, Unsigned64),
    iana("packetDeltaCount", 2, Unsigned64),
    iana("protocolIdentifier", 4, Unsigned8),
    iana("ipClassOfService", 5, Unsigned8),
    iana("tcpControlBits", 6, Unsigned16),
    iana("sourceTransportPort", 7, Unsigned16),
    iana("sourceIPv4Address", 8, Ipv4Address),
    iana("ingressInterface", 10, Unsigned32),
    iana("destinationTransportPort", 11, Unsigned16),
    iana("destinationIPv4Address", 12, Ipv4Address),
    iana("egressInterface", 14, Unsigned32),
    iana("sourceIPv6Address", 27, Ipv6Address),
    iana("destinationIPv6Address", 28, Ipv6Address),
    iana("icmpTypeCodeIPv4", 32, Unsigned16),
    iana("exportedOctetTotalCount", 40, Unsigned64),
    iana("exportedMessageTotalCount", 41, Unsigned64),
    iana("exportedFlowRecordTotalCount", 42, Unsigned64),
    iana("sourceMacAddress", 56, MacAddress),
    iana("flowDirection", 61, Unsigned8),
    iana("destinationMacAddress", 80, MacAddress),
    iana("interfaceName", 82, String),
    iana("octetTotalCount", 85, Unsigned64),
    iana("packetTotalCount", 86, Unsigned64),
    iana("exporterIPv4Address", 130, Ipv4Address),
    iana("exporterIPv6Address", 131, Ipv6Address),
    iana("droppedPacketTotalCount", 135, Unsigned64),
    iana("flowEndReason", 136, Unsigned8),
    iana("icmpTypeCodeIPv6", 139, Unsigned16),
    iana("meteringProcessId", 143, Unsigned32),
    iana("exportingProcessId", 144, Unsigned32),
    iana("templateId", 145, Unsigned16),
    iana("flowId", 148, Unsigned64),
    iana("observationDomainId", 149, Unsigned32),
    iana("flowStartSeconds", 150, DateTimeSeconds),
    iana("flowEndSeconds", 151, DateTimeSeconds),
    iana("flowStartMilliseconds", 152, DateTimeMilliseconds),
    iana("flowEndMilliseconds", 153, DateTimeMilliseconds),
    iana("systemInitTimeMilliseconds", 160, DateTimeMilliseconds),
    iana("flowDurationMilliseconds", 161, Unsigned32),
    iana("observedFlowTotalCount", 163, Unsigned64),
    iana("ignoredPacketTotalCount", 164, Unsigned64),
    iana("notSentFlowTotalCount", 166, Unsigned64),
    iana("notSentPacketTotalCount", 167, Unsigned64),
    iana("notSentOctetTotalCount", 168, Unsigned64),
    iana("icmpTypeIPv4", 176, Unsigned8),
    iana("icmpCodeIPv4", 177, Unsigned8),
    iana("icmpTypeIPv6", 178, Unsigned8),
    iana("icmpCodeIPv6", 179, Unsigned8),
    iana("paddingOctets", 210, OctetArray),
    iana("postNATSourceIPv4Address", 225, Ipv4Address),
    iana("postNATDestinationIPv4Address", 226, Ipv4Address),
    iana("postNAPTSourceTransportPort", 227, Unsigned16),
    iana("postNAPTDestinationTransportPort", 228, Unsigned16),
    iana("natEvent", 230, Unsigned8),
    iana("postNATSourceIPv6Address", 281, Ipv6Address),
    iana("postNATDestinationIPv6Address", 282, Ipv6Address),
    iana("informationElementId", 303, Unsigned16),
    iana("observationTimeMilliseconds", 323, DateTimeMilliseconds),
    iana("informationElementDataType", 339, Unsigned8),
    iana("informationElementDescription", 340, String),
    iana("informationElementName", 341, String),
    iana("informationElementSemantics", 344, Unsigned8),
    iana("informationElementUnits", 345, Unsigned16),
    iana("privateEnterpriseNumber", 346, Unsigned32),
];

/// Reverse elements (RFC 5103), sorted by id.
pub static REVERSE: &[InformationElement] = &[
    reverse("reverseOctetDeltaCount", 1, Unsigned64),
    reverse("reversePacketDeltaCount", 2, Unsigned64),
    reverse("reverseTcpControlBits", 6, Unsigned16),
    reverse("reverseOctetTotalCount", 85, Unsigned64),
    reverse("reversePacketTotalCount", 86, Unsigned64),
];

/// Antrea's elements (enterprise 56506), sorted by id.
pub static ANTREA: &[InformationElement] = &[
    antrea("sourcePodNamespace", 100, String),
    antrea("sourcePodName", 101, String),
    antrea("destinationPodNamespace", 102, String),
    antrea("destinationPodName", 103, String),
    antrea("sourceNodeName", 104, String),
    antrea("destinationNodeName", 105, String),
    antrea("destinationClusterIPv4", 106, Ipv4Address),
    antrea("destinationClusterIPv6", 107, Ipv6Address),
    antrea("destinationServicePort", 108, Unsigned16),
    antrea("destinationServicePortName", 109, String),
    antrea("ingressNetworkPolicyName", 110, String),
    antrea("ingressNetworkPolicyNamespace", 111, String),
    antrea("egressNetworkPolicyName", 112, String),
    antrea("egressNetworkPolicyNamespace", 113, String),
    antrea("ingressNetworkPolicyUID", 114, String),
    antrea("ingressNetworkPolicyType", 115, Unsigned8),
    antrea("ingressNetworkPolicyRulePriority", 116, Signed32),
    antrea("egressNetworkPolicyUID", 117, String),
    antrea("egressNetworkPolicyType", 118, Unsigned8),
    antrea("egressNetworkPolicyRulePriority", 119, Signed32),
    antrea("packetTotalCountFromSourceNode", 120, Unsigned64),
    antrea("octetTotalCountFromSourceNode", 121, Unsigned64),
    antrea("packetDeltaCountFromSourceNode", 122, Unsigned64),
    antrea("octetDeltaCountFromSourceNode", 123, Unsigned64),
    antrea("reversePacketTotalCountFromSourceNode", 124, Unsigned64),
    antrea("reverseOctetTotalCountFromSourceNode", 125, Unsigned64),
    antrea("reversePacketDeltaCountFromSourceNode", 126, Unsigned64),
    antrea("reverseOctetDeltaCountFromSourceNode", 127, Unsigned64),
    antrea("packetTotalCountFromDestinationNode", 128, Unsigned64),
    antrea("octetTotalCountFromDestinationNode", 129, Unsigned64),
    antrea("packetDeltaCountFromDestinationNode", 130, Unsigned64),
    antrea("octetDeltaCountFromDestinationNode", 131, Unsigned64),
    antrea(
        "reversePacketTotalCountFromDestinationNode",
        132,
        Unsigned64,
    ),
    antrea("reverseOctetTotalCountFromDestinationNode", 133, Unsigned64),
    antrea(
        "reversePacketDeltaCountFromDestinationNode",
        134,
        Unsigned64,
    ),
    antrea("reverseOctetDeltaCountFromDestinationNode", 135, Unsigned64),
    antrea("tcpState", 136, String),
    antrea("flowType", 137, Unsigned8),
    antrea("tcpStatePrevList", 138, String),
    antrea("ingressNetworkPolicyRuleAction", 139, Unsigned8),
    antrea("egressNetworkPolicyRuleAction", 140, Unsigned8),
    antrea("ingressNetworkPolicyRuleName", 141, String),
    antrea("egressNetworkPolicyRuleName", 142, String),
    antrea("sourcePodLabels", 143, String),
    antrea("destinationPodLabels", 144, String),
    antrea("throughput", 145, Unsigned64),
    antrea("reverseThroughput", 146, Unsigned64),
    antrea("throughputFromSourceNode", 147, Unsigned64),
    antrea("throughputFromDestinationNode", 148, Unsigned64),
    antrea("reverseThroughputFromSourceNode", 149, Unsigned64),
    antrea("reverseThroughputFromDestinationNode", 150, Unsigned64),
    antrea("flowEndSecondsFromSourceNode", 151, DateTimeSeconds),
    antrea("flowEndSecondsFromDestinationNode", 152, DateTimeSeconds),
    antrea("egressName", 153, String),
    antrea("egressIP", 154, String),
    antrea("appProtocolName", 155, String),
    antrea("httpVals", 156, String),
    antrea("egressNodeName", 157, String),
    antrea("clusterId", 158, String),
    antrea("sourcePodUUID", 159, OctetArray),
    antrea("destinationPodUUID", 160, OctetArray),
    antrea("sourceNodeUUID", 161, OctetArray),
    antrea("destinationNodeUUID", 162, OctetArray),
    antrea("destinationServiceUUID", 163, OctetArray),
    antrea("ingressNetworkPolicyUUID", 164, OctetArray),
    antrea("egressNetworkPolicyUUID", 165, OctetArray),
    antrea("egressUUID", 166, OctetArray),
    antrea("egressNodeUUID", 167, OctetArray),
    antrea("destinationServiceIPv4", 168, Ipv4Address),
    antrea("destinationServiceIPv6", 169, Ipv6Address),
    antrea("proxySnatIPv4", 170, Ipv4Address),
    antrea("proxySnatIPv6", 171, Ipv6Address),
    antrea("proxySnatPort", 172, Unsigned16),
];

/// flowex's own elements, sorted by id. The `pen` stored here is [`FLOWEX_DEFAULT_PEN`];
/// [`Registry`] substitutes the configured number.
///
/// "source" and "destination" follow the original direction of the connection: the
/// source process is the one that opened it (when it runs on this node), the destination
/// process the one that accepted it.
pub static FLOWEX: &[InformationElement] = &[
    own("sourceProcessId", 1, Unsigned32),
    own("sourceProcessName", 2, String),
    own("sourceCgroupId", 3, Unsigned64),
    own("sourceContainerId", 4, String),
    own("destinationProcessId", 5, Unsigned32),
    own("destinationProcessName", 6, String),
    own("destinationCgroupId", 7, Unsigned64),
    own("destinationContainerId", 8, String),
    own("conntrackZone", 9, Unsigned16),
    own("conntrackMark", 10, Unsigned32),
    own("conntrackId", 11, Unsigned32),
    own("conntrackLabels", 12, OctetArray),
    own("denyLogPrefix", 13, String),
];

/// Error building a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The chosen enterprise number collides with a namespace the registry already holds.
    #[error(
        "enterprise number {0} is reserved (0 IANA, 29305 reverse, 56506 Antrea); choose another for flowex's elements"
    )]
    ReservedPen(u32),
}

/// The set of known elements, with flowex's own elements under a chosen enterprise number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registry {
    flowex_pen: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            flowex_pen: FLOWEX_DEFAULT_PEN,
        }
    }
}

impl Registry {
    /// A registry whose flowex elements use `flowex_pen`.
    pub fn new(flowex_pen: u32) -> Result<Self, RegistryError> {
        if matches!(flowex_pen, IANA_PEN | REVERSE_PEN | ANTREA_PEN) {
            return Err(RegistryError::ReservedPen(flowex_pen));
        }
        Ok(Self { flowex_pen })
    }

    /// The enterprise number of flowex's own elements.
    pub fn flowex_pen(&self) -> u32 {
        self.flowex_pen
    }

    /// Looks an element up by enterprise number and id.
    pub fn by_id(&self, pen: u32, id: u16) -> Option<InformationElement> {
        let table = match pen {
            IANA_PEN => IANA,
            REVERSE_PEN => REVERSE,
            ANTREA_PEN => ANTREA,
            p if p == self.flowex_pen => FLOWEX,
            _ => return None,
        };
        let index = table.binary_search_by_key(&id, |ie| ie.id).ok()?;
        Some(self.with_pen(table[index]))
    }

    /// Looks an element up by its name (names are unique across namespaces).
    pub fn by_name(&self, name: &str) -> Option<InformationElement> {
        [IANA, REVERSE, ANTREA, FLOWEX]
            .into_iter()
            .flat_map(|table| table.iter())
            .find(|ie| ie.name == name)
            .map(|ie| self.with_pen(*ie))
    }

    /// Looks an element up by name; for tables built from constant names, where a miss is a
    /// programming error caught by the crate's tests.
    pub fn expect(&self, name: &str) -> InformationElement {
        match self.by_name(name) {
            Some(ie) => ie,
            None => panic!("information element {name:?} is not in the registry"),
        }
    }

    /// Every element, flowex's with the configured number.
    pub fn iter(&self) -> impl Iterator<Item = InformationElement> + '_ {
        [IANA, REVERSE, ANTREA, FLOWEX]
            .into_iter()
            .flat_map(|table| table.iter())
            .map(|ie| self.with_pen(*ie))
    }

    fn with_pen(&self, mut ie: InformationElement) -> InformationElement {
        if ie.pen == FLOWEX_DEFAULT_PEN {
            ie.pen = self.flowex_pen;
        }
        ie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        for table in [IANA, REVERSE, ANTREA, FLOWEX] {
            assert!(table.windows(2).all(|w| w[0].id < w[1].id));
        }
        let registry = Registry::default();
        let names: std::collections::HashSet<_> = registry.iter().map(|ie| ie.name).collect();
        assert_eq!(names.len(), registry.iter().count());
    }

    #[test]
    fn lookups_agree() {
        let registry = Registry::default();
        for ie in registry.iter() {
            assert_eq!(registry.by_id(ie.pen, ie.id), Some(ie));
            assert_eq!(registry.by_name(ie.name), Some(ie));
        }
        let ie = registry.by_name("destinationServicePortName").unwrap();
        assert_eq!((ie.pen, ie.id, ie.data_type), (56506, 109, String));
        let ie = registry.by_id(29305, 85).unwrap();
        assert_eq!(ie.name, "reverseOctetTotalCount");
        assert_eq!(registry.by_id(0, 3), None);
        assert_eq!(registry.by_id(12345, 1), None);
    }

    #[test]
    fn flowex_pen_is_configurable() {
        let registry = Registry::new(4_242).unwrap();
        let ie = registry.by_name("sourceProcessName").unwrap();
        assert_eq!((ie.pen, ie.id), (4_242, 2));
        assert_eq!(registry.by_id(4_242, 1).unwrap().name, "sourceProcessId");
        assert_eq!(registry.by_id(FLOWEX_DEFAULT_PEN, 1), None);
        assert_eq!(Registry::new(56506), Err(RegistryError::ReservedPen(56506)));
    }

    #[test]
    fn reduced_size_rules() {
        assert!(Unsigned64.accepts_length(4));
        assert!(!Unsigned64.accepts_length(0));
        assert!(!Unsigned64.accepts_length(9));
        assert!(!Ipv4Address.accepts_length(3));
        assert!(String.accepts_length(0));
        assert!(Float64.accepts_length(4));
        assert!(!Float64.accepts_length(5));
    }
}
