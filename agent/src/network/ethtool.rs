//! The ethtool generic-netlink messages the NIC metrics use: resolving the "ethtool"
//! family (`CTRL_CMD_GETFAMILY`), and ring sizes (`ETHTOOL_MSG_RINGS_GET`) and channel
//! counts (`ETHTOOL_MSG_CHANNELS_GET`) of one device, asked for by interface index.
//! Replies parse into plain values without allocating; every type also emits the message
//! the kernel would send, for tests.

use crate::netlink::{
    Attribute, Attributes, NLM_F_REQUEST, ParseError, RequestBuilder, socket::RequestSocket,
};

/// The generic netlink controller's fixed family id.
pub const GENL_ID_CTRL: u16 = 0x10;
/// Length of `struct genlmsghdr`.
pub const GENL_HEADER_LEN: usize = 4;

const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// The family's name, as the kernel registers it.
pub const ETHTOOL_FAMILY: &str = "ethtool";
const ETHTOOL_GENL_VERSION: u8 = 1;

const ETHTOOL_MSG_RINGS_GET: u8 = 15;
const ETHTOOL_MSG_CHANNELS_GET: u8 = 17;
const ETHTOOL_MSG_RINGS_GET_REPLY: u8 = 16;
const ETHTOOL_MSG_CHANNELS_GET_REPLY: u8 = 18;

/// `ETHTOOL_A_RINGS_HEADER` and `ETHTOOL_A_CHANNELS_HEADER` are both 1.
const ETHTOOL_A_HEADER: u16 = 1;
const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;

const ETHTOOL_A_RINGS_RX_MAX: u16 = 2;
const ETHTOOL_A_RINGS_TX_MAX: u16 = 5;
const ETHTOOL_A_RINGS_RX: u16 = 6;
const ETHTOOL_A_RINGS_TX: u16 = 9;

const ETHTOOL_A_CHANNELS_RX_MAX: u16 = 2;
const ETHTOOL_A_CHANNELS_TX_MAX: u16 = 3;
const ETHTOOL_A_CHANNELS_COMBINED_MAX: u16 = 5;
const ETHTOOL_A_CHANNELS_RX_COUNT: u16 = 6;
const ETHTOOL_A_CHANNELS_TX_COUNT: u16 = 7;
const ETHTOOL_A_CHANNELS_COMBINED_COUNT: u16 = 9;

/// Splits a generic netlink payload into its command and attributes.
fn genl_attributes(payload: &[u8]) -> Result<(u8, Attributes<'_>), ParseError> {
    if payload.len() < GENL_HEADER_LEN {
        return Err(ParseError::Truncated {
            needed: GENL_HEADER_LEN,
            available: payload.len(),
        });
    }
    Ok((payload[0], Attributes::new(&payload[GENL_HEADER_LEN..])))
}

fn wrong_command(got: u8, payload: &[u8]) -> ParseError {
    ParseError::BadPayload {
        attribute: u16::from(got),
        length: payload.len(),
    }
}

/// Writes a request for the id of generic netlink family `name` into `buf`.
pub fn family_request(buf: &mut Vec<u8>, sequence: u32, name: &str) {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    let mut message = RequestBuilder::with_header(
        buf,
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        sequence,
        &[CTRL_CMD_GETFAMILY, 1, 0, 0],
    );
    message.attribute(CTRL_ATTR_FAMILY_NAME, &bytes);
    message.finish();
}

/// The family id in the controller's answer to [`family_request`].
pub fn parse_family_id(payload: &[u8]) -> Result<u16, ParseError> {
    let (command, attributes) = genl_attributes(payload)?;
    if command != CTRL_CMD_NEWFAMILY {
        return Err(wrong_command(command, payload));
    }
    for attribute in attributes {
        let attribute = attribute?;
        if attribute.kind == CTRL_ATTR_FAMILY_ID {
            return attribute.u16();
        }
    }
    Err(ParseError::Truncated {
        needed: GENL_HEADER_LEN + 8,
        available: payload.len(),
    })
}

/// Appends the controller's answer naming `family` `id` (what the kernel sends).
pub fn emit_family(buf: &mut Vec<u8>, sequence: u32, family: &str, id: u16) {
    let mut name = family.as_bytes().to_vec();
    name.push(0);
    let mut message = RequestBuilder::append(
        buf,
        GENL_ID_CTRL,
        0,
        sequence,
        &[CTRL_CMD_NEWFAMILY, 2, 0, 0],
    );
    message
        .attribute(CTRL_ATTR_FAMILY_NAME, &name)
        .attribute(CTRL_ATTR_FAMILY_ID, &id.to_ne_bytes());
    message.finish();
}

/// Resolves the ethtool family's id on a `NETLINK_GENERIC` socket: None when the kernel
/// has no such family (before 5.6, or built without it).
pub fn resolve_family(
    socket: &mut RequestSocket,
    buf: &mut Vec<u8>,
) -> Result<Option<u16>, crate::netlink::socket::RequestError> {
    let sequence = socket.reserve(1);
    family_request(buf, sequence, ETHTOOL_FAMILY);
    let mut id = None;
    socket.exchange(buf, sequence, 1, |_, reply| {
        if let crate::netlink::socket::Reply::Message(_, payload) = reply {
            id = Some(parse_family_id(payload)?);
        }
        Ok::<_, crate::netlink::socket::RequestError>(())
    })?;
    Ok(id)
}

/// Which request a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Rings,
    Channels,
}

impl Query {
    fn command(self) -> u8 {
        match self {
            Self::Rings => ETHTOOL_MSG_RINGS_GET,
            Self::Channels => ETHTOOL_MSG_CHANNELS_GET,
        }
    }
}

/// Appends a `query` for device `index` to `buf` (the header nest names the device by
/// index only, so a renamed device is still the one asked for).
pub fn append_request(buf: &mut Vec<u8>, family: u16, sequence: u32, query: Query, index: u32) {
    let mut message = RequestBuilder::append(
        buf,
        family,
        NLM_F_REQUEST,
        sequence,
        &[query.command(), ETHTOOL_GENL_VERSION, 0, 0],
    );
    message
        .begin_nested(ETHTOOL_A_HEADER)
        .attribute(ETHTOOL_A_HEADER_DEV_INDEX, &index.to_ne_bytes())
        .end_nested();
    message.finish();
}

/// The device a reply is about, from its header nest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Device<'a> {
    pub index: u32,
    pub name: &'a str,
}

impl<'a> Device<'a> {
    fn parse(attribute: &Attribute<'a>) -> Result<Self, ParseError> {
        let mut device = Self::default();
        for inner in attribute.attributes() {
            let inner = inner?;
            match inner.kind {
                ETHTOOL_A_HEADER_DEV_INDEX => device.index = inner.u32()?,
                ETHTOOL_A_HEADER_DEV_NAME => device.name = inner.string()?,
                _ => {}
            }
        }
        Ok(device)
    }

    fn emit(&self, message: &mut RequestBuilder<'_>) {
        let mut name = self.name.as_bytes().to_vec();
        name.push(0);
        message
            .begin_nested(ETHTOOL_A_HEADER)
            .attribute(ETHTOOL_A_HEADER_DEV_INDEX, &self.index.to_ne_bytes())
            .attribute(ETHTOOL_A_HEADER_DEV_NAME, &name)
            .end_nested();
    }
}

/// Ring sizes (descriptors); a size the driver does not report is None.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rings<'a> {
    pub device: Device<'a>,
    pub rx: Option<u32>,
    pub rx_max: Option<u32>,
    pub tx: Option<u32>,
    pub tx_max: Option<u32>,
}

/// Channel (queue) counts; a count the driver does not report is None.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Channels<'a> {
    pub device: Device<'a>,
    pub rx: Option<u32>,
    pub rx_max: Option<u32>,
    pub tx: Option<u32>,
    pub tx_max: Option<u32>,
    pub combined: Option<u32>,
    pub combined_max: Option<u32>,
}

impl<'a> Rings<'a> {
    const FIELDS: [u16; 4] = [
        ETHTOOL_A_RINGS_RX,
        ETHTOOL_A_RINGS_RX_MAX,
        ETHTOOL_A_RINGS_TX,
        ETHTOOL_A_RINGS_TX_MAX,
    ];

    fn slots(&mut self) -> [&mut Option<u32>; 4] {
        [
            &mut self.rx,
            &mut self.rx_max,
            &mut self.tx,
            &mut self.tx_max,
        ]
    }

    /// The sizes alone, without the borrowed device name.
    pub fn detached(&self) -> Rings<'static> {
        Rings {
            device: Device::default(),
            rx: self.rx,
            rx_max: self.rx_max,
            tx: self.tx,
            tx_max: self.tx_max,
        }
    }

    /// Parses an `ETHTOOL_MSG_RINGS_GET_REPLY` payload (after the netlink header).
    pub fn parse(payload: &'a [u8]) -> Result<Self, ParseError> {
        let mut rings = Self::default();
        rings.device = parse_reply(payload, ETHTOOL_MSG_RINGS_GET_REPLY, |kind, a| {
            if let Some(i) = Self::FIELDS.iter().position(|&f| f == kind) {
                *rings.slots()[i] = Some(a.u32()?);
            }
            Ok(())
        })?;
        Ok(rings)
    }

    /// Appends the reply the kernel would send, under `family`.
    pub fn emit(&self, buf: &mut Vec<u8>, family: u16, sequence: u32) {
        let mut copy = *self;
        let values = copy.slots().map(|slot| *slot);
        emit_reply(
            buf,
            family,
            sequence,
            ETHTOOL_MSG_RINGS_GET_REPLY,
            &self.device,
            Self::FIELDS.into_iter().zip(values),
        );
    }
}

impl<'a> Channels<'a> {
    const FIELDS: [u16; 6] = [
        ETHTOOL_A_CHANNELS_RX_COUNT,
        ETHTOOL_A_CHANNELS_RX_MAX,
        ETHTOOL_A_CHANNELS_TX_COUNT,
        ETHTOOL_A_CHANNELS_TX_MAX,
        ETHTOOL_A_CHANNELS_COMBINED_COUNT,
        ETHTOOL_A_CHANNELS_COMBINED_MAX,
    ];

    fn slots(&mut self) -> [&mut Option<u32>; 6] {
        [
            &mut self.rx,
            &mut self.rx_max,
            &mut self.tx,
            &mut self.tx_max,
            &mut self.combined,
            &mut self.combined_max,
        ]
    }

    /// The counts alone, without the borrowed device name.
    pub fn detached(&self) -> Channels<'static> {
        Channels {
            device: Device::default(),
            rx: self.rx,
            rx_max: self.rx_max,
            tx: self.tx,
            tx_max: self.tx_max,
            combined: self.combined,
            combined_max: self.combined_max,
        }
    }

    /// Parses an `ETHTOOL_MSG_CHANNELS_GET_REPLY` payload (after the netlink header).
    pub fn parse(payload: &'a [u8]) -> Result<Self, ParseError> {
        let mut channels = Self::default();
        channels.device = parse_reply(payload, ETHTOOL_MSG_CHANNELS_GET_REPLY, |kind, a| {
            if let Some(i) = Self::FIELDS.iter().position(|&f| f == kind) {
                *channels.slots()[i] = Some(a.u32()?);
            }
            Ok(())
        })?;
        Ok(channels)
    }

    /// Appends the reply the kernel would send, under `family`.
    pub fn emit(&self, buf: &mut Vec<u8>, family: u16, sequence: u32) {
        let mut copy = *self;
        let values = copy.slots().map(|slot| *slot);
        emit_reply(
            buf,
            family,
            sequence,
            ETHTOOL_MSG_CHANNELS_GET_REPLY,
            &self.device,
            Self::FIELDS.into_iter().zip(values),
        );
    }
}

/// Walks a reply of `command`: the header nest becomes the device, every other attribute
/// goes to `field`.
fn parse_reply<'a>(
    payload: &'a [u8],
    command: u8,
    mut field: impl FnMut(u16, &Attribute<'a>) -> Result<(), ParseError>,
) -> Result<Device<'a>, ParseError> {
    let (got, attributes) = genl_attributes(payload)?;
    if got != command {
        return Err(wrong_command(got, payload));
    }
    let mut device = None;
    for attribute in attributes {
        let attribute = attribute?;
        if attribute.kind == ETHTOOL_A_HEADER {
            device = Some(Device::parse(&attribute)?);
        } else {
            field(attribute.kind, &attribute)?;
        }
    }
    // Every reply names its device: one without is not an answer to our request.
    device.ok_or(ParseError::Truncated {
        needed: GENL_HEADER_LEN + 12,
        available: payload.len(),
    })
}

fn emit_reply(
    buf: &mut Vec<u8>,
    family: u16,
    sequence: u32,
    command: u8,
    device: &Device<'_>,
    fields: impl Iterator<Item = (u16, Option<u32>)>,
) {
    let mut message = RequestBuilder::append(
        buf,
        family,
        0,
        sequence,
        &[command, ETHTOOL_GENL_VERSION, 0, 0],
    );
    device.emit(&mut message);
    for (kind, value) in fields {
        if let Some(value) = value {
            message.attribute(kind, &value.to_ne_bytes());
        }
    }
    message.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Messages;

    /// `ETHTOOL_MSG_CHANNELS_GET_REPLY` for "eth0" (index 2) under family 21: rx 1 of 2,
    /// tx 1 of 2, no combined channels, as a little-endian kernel sends it.
    #[rustfmt::skip]
    const CHANNELS_REPLY: [u8; 76] = [
        // nlmsghdr: length 76, type 21 (the family), flags 0, sequence 4, port 0
        76, 0, 0, 0,  21, 0,  0, 0,  4, 0, 0, 0,  0, 0, 0, 0,
        // genlmsghdr: command 18 (CHANNELS_GET_REPLY), version 1
        18, 1, 0, 0,
        // ETHTOOL_A_CHANNELS_HEADER (1, nested): DEV_INDEX (1) 2, DEV_NAME (2) "eth0\0"
        24, 0, 1, 0x80,  8, 0, 1, 0,  2, 0, 0, 0,  9, 0, 2, 0,  b'e', b't', b'h', b'0', 0, 0, 0, 0,
        // RX_MAX (2) 2, TX_MAX (3) 2, RX_COUNT (6) 1, TX_COUNT (7) 1
        8, 0, 2, 0,  2, 0, 0, 0,
        8, 0, 3, 0,  2, 0, 0, 0,
        8, 0, 6, 0,  1, 0, 0, 0,
        8, 0, 7, 0,  1, 0, 0, 0,
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn a_channels_reply_written_out_parses() {
        let (header, payload) = Messages::new(&CHANNELS_REPLY).next().unwrap().unwrap();
        assert_eq!((header.kind, header.sequence), (21, 4));
        let channels = Channels::parse(payload).unwrap();
        let expected = Channels {
            device: Device {
                index: 2,
                name: "eth0",
            },
            rx: Some(1),
            rx_max: Some(2),
            tx: Some(1),
            tx_max: Some(2),
            combined: None,
            combined_max: None,
        };
        assert_eq!(channels, expected);
        // Emitted in the order rx, rx_max, tx, tx_max: same attributes, other order.
        let mut buf = Vec::new();
        expected.emit(&mut buf, 21, 4);
        let (_, emitted) = Messages::new(&buf).next().unwrap().unwrap();
        assert_eq!(Channels::parse(emitted), Ok(expected));
        assert_eq!(buf.len(), CHANNELS_REPLY.len());
    }

    #[test]
    fn rings_round_trip_and_missing_fields_stay_absent() {
        let rings = Rings {
            device: Device {
                index: 9,
                name: "ens5",
            },
            rx: Some(1024),
            rx_max: Some(4096),
            tx: Some(512),
            tx_max: None,
        };
        let mut buf = Vec::new();
        rings.emit(&mut buf, 30, 1);
        let (_, payload) = Messages::new(&buf).next().unwrap().unwrap();
        assert_eq!(Rings::parse(payload), Ok(rings));
        // A channels reply is not a rings reply.
        assert!(Rings::parse(&CHANNELS_REPLY[16..]).is_err());
    }

    #[test]
    fn malformed_replies_are_errors() {
        let payload = &CHANNELS_REPLY[16..];
        for end in 0..payload.len() {
            // Truncations either lose the header nest or cut an attribute: never a panic.
            let _ = Channels::parse(&payload[..end]);
        }
        assert!(Channels::parse(&payload[..3]).is_err());
        // Header only (no device): not an answer.
        assert!(Channels::parse(&payload[..4]).is_err());
        // A count of two bytes.
        let mut short = payload.to_vec();
        short[28] = 6;
        assert!(matches!(
            Channels::parse(&short),
            Err(ParseError::BadPayload { attribute: 2, .. })
        ));
        // A header nest that claims more than the message holds.
        let mut nest = payload.to_vec();
        nest[4] = 200;
        assert!(Channels::parse(&nest).is_err());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn requests_and_family_resolution() {
        let mut buf = Vec::new();
        append_request(&mut buf, 21, 3, Query::Rings, 2);
        #[rustfmt::skip]
        assert_eq!(buf, [
            // nlmsghdr: length 32, type 21 (the family), NLM_F_REQUEST, sequence 3
            32, 0, 0, 0,  21, 0,  1, 0,  3, 0, 0, 0,  0, 0, 0, 0,
            // genlmsghdr: command 15 (RINGS_GET), version 1
            15, 1, 0, 0,
            // ETHTOOL_A_RINGS_HEADER (1, nested) { DEV_INDEX (1) 2 }
            12, 0, 1, 0x80,  8, 0, 1, 0,  2, 0, 0, 0,
        ]);
        family_request(&mut buf, 1, ETHTOOL_FAMILY);
        #[rustfmt::skip]
        assert_eq!(buf, [
            // nlmsghdr: length 32, GENL_ID_CTRL (16), NLM_F_REQUEST, sequence 1
            32, 0, 0, 0,  16, 0,  1, 0,  1, 0, 0, 0,  0, 0, 0, 0,
            // genlmsghdr: CTRL_CMD_GETFAMILY (3), version 1
            3, 1, 0, 0,
            // CTRL_ATTR_FAMILY_NAME (2) "ethtool\0"
            12, 0, 2, 0,  b'e', b't', b'h', b't', b'o', b'o', b'l', 0,
        ]);
        buf.clear();
        emit_family(&mut buf, 1, ETHTOOL_FAMILY, 21);
        let (_, payload) = Messages::new(&buf).next().unwrap().unwrap();
        assert_eq!(parse_family_id(payload), Ok(21));
        assert!(parse_family_id(&payload[..4]).is_err());
        assert!(parse_family_id(&CHANNELS_REPLY[16..]).is_err());
    }
}
