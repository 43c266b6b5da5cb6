//! The strict decoder: validates a whole message, keeps templates per transport session and
//! observation domain, and hands each data record to the caller as a borrowed view.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::registry::Registry;
use crate::template::{Field, Step, Template, TemplateError};
use crate::value::{Value, ValueError};
use crate::wire::field_specifier::{FieldSpecifier, FieldSpecifierRepr};
use crate::wire::message::{HEADER_LEN as MESSAGE_HEADER_LEN, MessageHeader, MessageHeaderRepr};
use crate::wire::set::{MIN_DATA_SET_ID, OPTIONS_TEMPLATE_SET_ID, SetIter, TEMPLATE_SET_ID};
use crate::wire::template_record::{
    OptionsTemplateRecordHeader, OptionsTemplateRecordHeaderRepr, TemplateRecordHeader,
    TemplateRecordHeaderRepr,
};
use crate::wire::{WireError, need};

/// Why a message was rejected. Each kind has a stable name (see [`DecodeError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A header, set, template record or field specifier is cut short, or a set overruns
    /// the message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The header's length differs from the bytes received.
    #[error("message header says {header} bytes but {actual} were received")]
    LengthMismatch { header: u16, actual: usize },
    /// A set id that is neither 2, 3 nor a template id (0, 1 and 4..=255 are reserved).
    #[error("set id {0} is reserved")]
    ReservedSetId(u16),
    /// A template that breaks the rules (reserved id, zero-length field, ...).
    #[error("bad template {template_id}: {error}")]
    Template {
        template_id: u16,
        error: TemplateError,
    },
    /// A variable-length field's length runs past the end of its data set.
    #[error("variable-length field {index} of template {template_id} overruns its set")]
    VariableLengthOverrun { template_id: u16, index: usize },
    /// A field's bytes are not a value of its type.
    #[error("field {index} of template {template_id}: {error}")]
    InvalidValue {
        template_id: u16,
        index: usize,
        error: ValueError,
    },
    /// A data set whose template this session and domain has not announced. Reported to the
    /// visitor (the message is otherwise well-formed); decoding goes on with the next set.
    #[error("data set for unknown template {template_id}")]
    UnknownTemplate { template_id: u16 },
}

impl DecodeError {
    /// A short stable name, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Wire(WireError::Truncated { .. }) => "truncated",
            Self::Wire(WireError::BadVersion(_)) => "bad_version",
            Self::Wire(WireError::SetTooShort(_)) => "set_too_short",
            Self::Wire(WireError::SetOverrun { .. }) => "set_overrun",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::ReservedSetId(_) => "reserved_set_id",
            Self::Template { error, .. } => match error {
                TemplateError::ReservedId(_) => "reserved_template_id",
                TemplateError::ZeroLengthField { .. } => "zero_length_field",
                TemplateError::BadFieldLength { .. } => "bad_field_length",
                TemplateError::FieldCount(_) => "bad_field_count",
                TemplateError::BadScopeCount { .. } => "bad_scope_count",
            },
            Self::VariableLengthOverrun { .. } => "variable_length_overrun",
            Self::InvalidValue { .. } => "invalid_value",
            Self::UnknownTemplate { .. } => "unknown_template",
        }
    }
}

/// One data record, borrowed from the message, with the template that describes it.
#[derive(Debug, Clone, Copy)]
pub struct DataRecord<'a> {
    template: &'a Template,
    bytes: &'a [u8],
}

impl<'a> DataRecord<'a> {
    /// A record of `template` in `bytes` (as an encoder wrote it). Fields that run past
    /// the end of `bytes` are not returned.
    pub fn new(template: &'a Template, bytes: &'a [u8]) -> Self {
        Self { template, bytes }
    }

    /// The record's template.
    pub fn template(&self) -> &'a Template {
        self.template
    }

    /// The record's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Each field with its raw bytes (length prefixes of variable fields removed).
    pub fn raw_fields(&self) -> RawFields<'a> {
        RawFields {
            fields: self.template.fields().iter(),
            rest: self.bytes,
        }
    }

    /// Each field with its typed value. The decoder has validated every value already.
    pub fn values(&self) -> impl Iterator<Item = (&'a Field, Value<'a>)> + 'a {
        self.raw_fields().filter_map(|(field, bytes)| {
            Value::decode(field.data_type(), bytes)
                .ok()
                .map(|value| (field, value))
        })
    }

    /// The value of the field carrying element `name`, if the template has it.
    pub fn value(&self, name: &str) -> Option<Value<'a>> {
        self.value_at(self.template.position(name)?)
    }

    /// The value of the field at `index` in the template; reads fixed-prefix fields directly.
    pub fn value_at(&self, index: usize) -> Option<Value<'a>> {
        let field = self.template.fields().get(index)?;
        let bytes = match field.offset {
            // A variable-length field's offset is where its length prefix starts.
            Some(offset) if !field.is_variable() => {
                let start = usize::from(offset);
                self.bytes
                    .get(start..start + usize::from(field.spec.length))?
            }
            _ => self.raw_fields().nth(index)?.1,
        };
        Value::decode(field.data_type(), bytes).ok()
    }
}

/// Iterator over a record's fields and their bytes.
#[derive(Debug, Clone)]
pub struct RawFields<'a> {
    fields: std::slice::Iter<'a, Field>,
    rest: &'a [u8],
}

impl<'a> Iterator for RawFields<'a> {
    type Item = (&'a Field, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let field = self.fields.next()?;
        let (len, skip) = field_extent(field, self.rest)?;
        let bytes = self.rest.get(skip..skip + len)?;
        self.rest = &self.rest[skip + len..];
        Some((field, bytes))
    }
}

/// Length of a field's value and of its length prefix, read from `rest`.
#[inline]
fn field_extent(field: &Field, rest: &[u8]) -> Option<(usize, usize)> {
    if !field.is_variable() {
        return Some((usize::from(field.spec.length), 0));
    }
    match *rest.first()? {
        255 => {
            let long = rest.get(1..3)?;
            Some((usize::from(u16::from_be_bytes([long[0], long[1]])), 3))
        }
        short => Some((usize::from(short), 1)),
    }
}

/// What the decoder found in a message, in order, handed to the caller's visitor.
#[derive(Debug)]
pub enum Item<'a> {
    /// A template or options template was learned (or replaced).
    Template(&'a Template),
    /// A template was withdrawn; id 2 or 3 withdraws all (options) templates.
    Withdrawal { template_id: u16, options: bool },
    /// A data record (or an options record, when its template is an options template).
    Record(DataRecord<'a>),
    /// A data set that could not be decoded for want of its template.
    UnknownTemplate { template_id: u16, set_length: usize },
}

/// Totals for one decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    pub header: MessageHeaderRepr,
    pub data_records: u32,
    pub options_records: u32,
    pub template_records: u32,
    pub options_template_records: u32,
    pub withdrawals: u32,
    pub template_sets: u32,
    pub unknown_template_sets: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TemplateKey {
    session: u64,
    domain: u32,
    template_id: u16,
}

#[derive(Debug)]
struct Learned {
    template: Template,
    at: Instant,
    /// The decoder's use count when the template was last learned or used.
    used: u64,
}

/// Templates a decoder keeps by default before it evicts the least recently used.
pub const DEFAULT_TEMPLATE_LIMIT: usize = 65_536;

/// A decoder with a template cache keyed by (transport session, observation domain, id).
/// Sessions are numbers the caller assigns, e.g. one per TCP connection or UDP peer.
#[derive(Debug)]
pub struct Decoder {
    registry: Registry,
    templates: HashMap<TemplateKey, Learned>,
    specs: Vec<FieldSpecifierRepr>,
    /// Bumped at each template learned or used: the recency of [`Learned::used`].
    uses: u64,
    limit: usize,
    evicted: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Registry::default())
    }
}

impl Decoder {
    /// A decoder resolving elements through `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            templates: HashMap::new(),
            specs: Vec::new(),
            uses: 0,
            limit: DEFAULT_TEMPLATE_LIMIT,
            evicted: 0,
        }
    }

    /// Keeps at most `limit` templates (at least 1): learning one more evicts the least
    /// recently used first, so a flood of exporters or domains cannot grow the cache
    /// without bound while the templates in use stay.
    pub fn set_template_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// Templates evicted for room so far.
    pub fn evicted_templates(&self) -> u64 {
        self.evicted
    }

    /// Makes room for one template: evicts the least recently used eighth (at least one)
    /// at once, so each eviction's scan is paid for by many insertions.
    fn make_room(&mut self) {
        if self.templates.len() < self.limit {
            return;
        }
        let excess = self.templates.len() + 1 - self.limit;
        let count = excess.max(self.limit / 8).max(1).min(self.templates.len());
        let mut uses: Vec<u64> = self.templates.values().map(|l| l.used).collect();
        let (_, cut, _) = uses.select_nth_unstable(count - 1);
        let cut = *cut;
        let mut removed = 0;
        self.templates.retain(|_, learned| {
            if removed < count && learned.used <= cut {
                removed += 1;
                false
            } else {
                true
            }
        });
        self.evicted += removed as u64;
    }

    /// Number of templates known, over all sessions.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// The template `template_id` of `session` and `domain`, if known.
    pub fn template(&self, session: u64, domain: u32, template_id: u16) -> Option<&Template> {
        self.templates
            .get(&TemplateKey {
                session,
                domain,
                template_id,
            })
            .map(|learned| &learned.template)
    }

    /// Forgets every template of a session (its transport connection closed).
    pub fn forget_session(&mut self, session: u64) {
        self.templates.retain(|key, _| key.session != session);
    }

    /// Forgets the templates of every session `forget` says yes to, in one pass.
    pub fn forget_sessions(&mut self, forget: impl Fn(u64) -> bool) {
        self.templates.retain(|key, _| !forget(key.session));
    }

    /// Forgets templates not refreshed within `lifetime` (UDP template lifetime);
    /// returns how many were dropped.
    pub fn expire_templates(&mut self, lifetime: Duration) -> usize {
        let before = self.templates.len();
        let now = Instant::now();
        self.templates
            .retain(|_, learned| now.duration_since(learned.at) <= lifetime);
        before - self.templates.len()
    }

    /// Decodes one whole message from `session`, calling `visit` for each item in order.
    ///
    /// Framing, template and value errors reject the message with an error (items visited
    /// before the error stand, e.g. templates earlier in the message). A data set whose
    /// template is unknown is reported as [`Item::UnknownTemplate`] and skipped.
    pub fn decode(
        &mut self,
        session: u64,
        message: &[u8],
        mut visit: impl FnMut(Item<'_>),
    ) -> Result<MessageInfo, DecodeError> {
        let view = MessageHeader::new_checked(message)?;
        let header = MessageHeaderRepr::parse(&view)?;
        if usize::from(header.length) != message.len() {
            return Err(DecodeError::LengthMismatch {
                header: header.length,
                actual: message.len(),
            });
        }
        let mut info = MessageInfo {
            header,
            data_records: 0,
            options_records: 0,
            template_records: 0,
            options_template_records: 0,
            withdrawals: 0,
            template_sets: 0,
            unknown_template_sets: 0,
        };
        let domain = header.observation_domain_id;
        for set in SetIter::new(&message[MESSAGE_HEADER_LEN..]) {
            let (set_header, body) = set?;
            match set_header.set_id {
                TEMPLATE_SET_ID | OPTIONS_TEMPLATE_SET_ID => {
                    let options = set_header.set_id == OPTIONS_TEMPLATE_SET_ID;
                    info.template_sets += 1;
                    self.template_set(session, domain, options, body, &mut info, &mut visit)?;
                }
                id if id >= MIN_DATA_SET_ID => {
                    self.data_set(session, domain, id, body, &mut info, &mut visit)?;
                }
                reserved => return Err(DecodeError::ReservedSetId(reserved)),
            }
        }
        Ok(info)
    }

    fn template_set(
        &mut self,
        session: u64,
        domain: u32,
        options: bool,
        mut body: &[u8],
        info: &mut MessageInfo,
        visit: &mut impl FnMut(Item<'_>),
    ) -> Result<(), DecodeError> {
        let all_id = if options {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        };
        // Fewer than 4 bytes left is padding (RFC 7011 section 3.3.1).
        while body.len() >= 4 {
            let (template_id, field_count, scope_field_count, header_len) = if options {
                let repr = OptionsTemplateRecordHeaderRepr::parse(
                    &OptionsTemplateRecordHeader::new_checked(body)?,
                )?;
                (
                    repr.template_id,
                    repr.field_count,
                    repr.scope_field_count,
                    repr.buffer_len(),
                )
            } else {
                let repr =
                    TemplateRecordHeaderRepr::parse(&TemplateRecordHeader::new_checked(body)?)?;
                (repr.template_id, repr.field_count, 0, repr.buffer_len())
            };
            body = &body[header_len..];
            if field_count == 0 {
                if template_id == all_id {
                    self.templates.retain(|key, learned| {
                        !(key.session == session
                            && key.domain == domain
                            && learned.template.is_options() == options)
                    });
                } else if template_id < MIN_DATA_SET_ID {
                    return Err(DecodeError::Template {
                        template_id,
                        error: TemplateError::ReservedId(template_id),
                    });
                } else {
                    self.templates.remove(&TemplateKey {
                        session,
                        domain,
                        template_id,
                    });
                }
                info.withdrawals += 1;
                visit(Item::Withdrawal {
                    template_id,
                    options,
                });
                continue;
            }
            if options && scope_field_count == 0 {
                return Err(DecodeError::Template {
                    template_id,
                    error: TemplateError::BadScopeCount {
                        scope: 0,
                        fields: usize::from(field_count),
                    },
                });
            }
            self.specs.clear();
            for _ in 0..field_count {
                let spec = FieldSpecifierRepr::parse(&FieldSpecifier::new_checked(body)?)?;
                body = &body[spec.buffer_len()..];
                self.specs.push(spec);
            }
            let template =
                Template::from_specs(&self.registry, template_id, scope_field_count, &self.specs)
                    .map_err(|error| DecodeError::Template { template_id, error })?;
            if options {
                info.options_template_records += 1;
            } else {
                info.template_records += 1;
            }
            let key = TemplateKey {
                session,
                domain,
                template_id,
            };
            if !self.templates.contains_key(&key) {
                self.make_room();
            }
            self.uses += 1;
            self.templates.insert(
                key,
                Learned {
                    template,
                    at: Instant::now(),
                    used: self.uses,
                },
            );
            if let Some(learned) = self.templates.get(&key) {
                visit(Item::Template(&learned.template));
            }
        }
        Ok(())
    }

    fn data_set(
        &mut self,
        session: u64,
        domain: u32,
        template_id: u16,
        body: &[u8],
        info: &mut MessageInfo,
        visit: &mut impl FnMut(Item<'_>),
    ) -> Result<(), DecodeError> {
        let key = TemplateKey {
            session,
            domain,
            template_id,
        };
        self.uses += 1;
        let uses = self.uses;
        let Some(learned) = self.templates.get_mut(&key) else {
            info.unknown_template_sets += 1;
            visit(Item::UnknownTemplate {
                template_id,
                set_length: body.len() + 4,
            });
            return Ok(());
        };
        learned.used = uses;
        let learned = &*learned;
        let template = &learned.template;
        let min_len = template.min_record_len();
        let mut rest = body;
        // Trailing bytes shorter than the shortest record are padding.
        while rest.len() >= min_len {
            let len = record_len(template, rest)?;
            let (bytes, tail) = rest.split_at(len);
            rest = tail;
            if template.is_options() {
                info.options_records += 1;
            } else {
                info.data_records += 1;
            }
            visit(Item::Record(DataRecord { template, bytes }));
        }
        Ok(())
    }
}

/// Walks one record, checking every field fits and every value is valid; returns its length.
fn record_len(template: &Template, record: &[u8]) -> Result<usize, DecodeError> {
    let template_id = template.id();
    let mut at = 0usize;
    for step in template.steps() {
        match *step {
            Step::Skip(len) => at += len,
            Step::Checked { index, len } => {
                need(record, at + len)?;
                let bytes = &record[at..at + len];
                check_value(template_id, index, &template.fields()[index], bytes)?;
                at += len;
            }
            Step::Variable { index, check } => {
                let overrun = DecodeError::VariableLengthOverrun { template_id, index };
                let rest = record.get(at..).ok_or(overrun)?;
                let (len, skip) = field_extent(&template.fields()[index], rest).ok_or(overrun)?;
                let bytes = rest.get(skip..skip + len).ok_or(overrun)?;
                // Names are nearly always ASCII: test that first, it is much cheaper than
                // a full UTF-8 validation of many short strings.
                if check && !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() {
                    return Err(DecodeError::InvalidValue {
                        template_id,
                        index,
                        error: ValueError::InvalidString,
                    });
                }
                at += skip + len;
            }
        }
    }
    need(record, at)?;
    Ok(at)
}

#[inline]
fn check_value(
    template_id: u16,
    index: usize,
    field: &Field,
    bytes: &[u8],
) -> Result<(), DecodeError> {
    Value::decode(field.data_type(), bytes)
        .map(|_| ())
        .map_err(|error| DecodeError::InvalidValue {
            template_id,
            index,
            error,
        })
}
