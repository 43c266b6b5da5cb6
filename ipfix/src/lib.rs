//! IPFIX (RFC 7011) wire format for flowex: typed views over the wire structures, an
//! information element registry, templates, a zero-copy message encoder and a strict
//! decoder. No I/O and no async runtime: the agent and collector-sim bring their own.

pub mod antrea;
pub mod decoder;
pub mod encoder;
pub mod registry;
pub mod template;
pub mod types;
pub mod value;
pub mod wire;

pub use decoder::{DataRecord, DecodeError, Decoder, Item, MessageInfo};
pub use encoder::{
    DEFAULT_UDP_MESSAGE_SIZE, EncodeError, Encoder, FieldWriter, MAX_MESSAGE_SIZE, Record,
    ValueRecord, variable_len,
};
pub use registry::{DataType, InformationElement, Registry};
pub use template::{Field, Template, TemplateError};
pub use value::{Value, ValueError};
