//! Decoding and counting one message: shared by the UDP and TCP receivers.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use flowex_ipfix::registry::IANA_PEN;
use flowex_ipfix::{DecodeError, Decoder, Item};
use serde_json::Value as Json;

use crate::json::{Learned, record_to_json};
use crate::stats::{MessageTally, Stats, StreamState, check_sequence, lock};
use flowex_ipfix::types::ElementType;

/// Id of flowEndReason (IANA).
const FLOW_END_REASON: u16 = 136;

/// Where decoded records go besides the counters.
#[derive(Default)]
pub(crate) struct RecordOutput {
    /// One JSON line per data record.
    pub json: Option<Mutex<Box<dyn Write + Send>>>,
    /// Records kept in memory for tests.
    pub kept: Option<Mutex<Vec<Json>>>,
    /// Options records (but type records) kept in memory for tests.
    pub kept_options: Option<Mutex<Vec<Json>>>,
}

impl RecordOutput {
    pub(crate) fn wanted(&self) -> bool {
        self.json.is_some() || self.kept.is_some()
    }

    pub(crate) fn deliver(&self, records: &mut Vec<Json>, options: &mut Vec<Json>) {
        if let Some(json) = &self.json {
            let mut out = lock(json);
            for record in records.iter().chain(options.iter()) {
                // A closed stdout (e.g. `| head`) must not stop the counting.
                let _ = writeln!(out, "{record}");
            }
            let _ = out.flush();
        }
        if let Some(kept) = &self.kept {
            lock(kept).append(records);
        }
        if let Some(kept) = &self.kept_options {
            lock(kept).append(options);
        }
        records.clear();
        options.clear();
    }
}

/// The state one receiving thread owns: its decoder (template cache) and the next sequence
/// number expected per (session, observation domain).
/// Streams (session, observation domain) whose sequence numbers one receiver follows
/// before it forgets the least recently used.
pub(crate) const STREAM_LIMIT: usize = 65_536;
/// Templates one receiver keeps (an Antrea template decodes into ~2 KB).
pub(crate) const TEMPLATE_LIMIT: usize = 16_384;
/// Elements one receiver learns from type records.
pub(crate) const LEARNED_LIMIT: usize = 4_096;

pub(crate) struct Receiver {
    pub decoder: Decoder,
    streams: HashMap<(u64, u32), StreamState>,
    uses: u64,
    /// Decoder evictions already reported to the stats.
    templates_evicted: u64,
    tally: MessageTally,
    pending: Vec<Json>,
    pending_options: Vec<Json>,
    /// Names and types of elements the exporters described (RFC 5610).
    learned: Learned,
}

impl Receiver {
    pub fn new() -> Self {
        Self {
            decoder: {
                let mut decoder = Decoder::default();
                decoder.set_template_limit(TEMPLATE_LIMIT);
                decoder
            },
            streams: HashMap::new(),
            uses: 0,
            templates_evicted: 0,
            tally: MessageTally::default(),
            pending: Vec::new(),
            pending_options: Vec::new(),
            learned: Learned::new(),
        }
    }

    /// Forgets a session's templates and sequence state.
    pub fn forget_session(&mut self, session: u64) {
        self.decoder.forget_session(session);
        self.streams.retain(|(s, _), _| *s != session);
    }

    /// Forgets the templates and sequence state of several sessions at once.
    pub fn forget_sessions(&mut self, sessions: &std::collections::HashSet<u64>) {
        self.decoder.forget_sessions(|s| sessions.contains(&s));
        self.streams.retain(|(s, _), _| !sessions.contains(s));
    }

    /// Evicts the least recently used eighth of the streams when there are too many;
    /// returns how many went.
    fn make_room(&mut self) -> u64 {
        if self.streams.len() < STREAM_LIMIT {
            return 0;
        }
        let count = STREAM_LIMIT / 8;
        let mut uses: Vec<u64> = self.streams.values().map(|s| s.used).collect();
        let (_, cut, _) = uses.select_nth_unstable(count - 1);
        let cut = *cut;
        let before = self.streams.len();
        self.streams.retain(|_, s| s.used > cut);
        (before - self.streams.len()) as u64
    }

    /// Decodes one message and counts it; a malformed message is counted as an error and
    /// contributes nothing else.
    pub fn handle(
        &mut self,
        stats: &Stats,
        output: &RecordOutput,
        session: u64,
        message: &[u8],
    ) -> Result<(), DecodeError> {
        self.tally.clear();
        self.pending.clear();
        self.pending_options.clear();
        let want_records = output.wanted();
        let tally = &mut self.tally;
        let pending = &mut self.pending;
        let pending_options = &mut self.pending_options;
        let learned = &mut self.learned;
        let result = self.decoder.decode(session, message, |item| match item {
            Item::Record(record) => {
                let template = record.template();
                if template.is_options() {
                    tally.options_records += 1;
                    if let Some(element) = ElementType::read(&record) {
                        tally.type_records += 1;
                        if learned.len() < LEARNED_LIMIT
                            || learned.contains_key(&(element.pen, element.id))
                        {
                            learned.insert(
                                (element.pen, element.id),
                                (element.name, element.data_type),
                            );
                        }
                    } else if want_records {
                        let mut object = record_to_json(&record, learned);
                        object.insert("optionsTemplateId".into(), Json::from(template.id()));
                        pending_options.push(Json::Object(object));
                    }
                } else {
                    tally.records += 1;
                    if let Some(index) = template.position_of(IANA_PEN, FLOW_END_REASON)
                        && let Some(flowex_ipfix::Value::Unsigned(reason)) = record.value_at(index)
                    {
                        tally.reasons[reason as u8 as usize] += 1;
                    }
                    if want_records {
                        pending.push(Json::Object(record_to_json(&record, learned)));
                    }
                }
                tally.count_template_record(template.id());
            }
            Item::Template(_) => tally.templates += 1,
            Item::Withdrawal { .. } => tally.withdrawals += 1,
            Item::UnknownTemplate { .. } => tally.sets_without_template += 1,
        });
        match result {
            Ok(info) => {
                self.tally.domain = info.header.observation_domain_id;
                self.tally.bytes = message.len() as u64;
                self.tally.template_sets = u64::from(info.template_sets);
                let key = (session, info.header.observation_domain_id);
                if !self.streams.contains_key(&key) {
                    let evicted = self.make_room();
                    if evicted > 0 {
                        stats.count_evicted_streams(evicted);
                    }
                }
                self.uses += 1;
                let mut state = self.streams.get(&key).copied();
                let sent = info.data_records + info.options_records;
                let check =
                    check_sequence(&mut state, info.header.sequence_number, sent, self.uses);
                if let Some(state) = state {
                    self.streams.insert(key, state);
                }
                stats.merge(&self.tally, check);
                let evicted = self.decoder.evicted_templates();
                if evicted > self.templates_evicted {
                    stats.count_evicted_templates(evicted - self.templates_evicted);
                    self.templates_evicted = evicted;
                }
                if !self.pending.is_empty() || !self.pending_options.is_empty() {
                    output.deliver(&mut self.pending, &mut self.pending_options);
                }
                if self.tally.sets_without_template > 0 {
                    stats.log_limited(
                        "unknown_template",
                        &format_args!(
                            "session {session}: {} data set(s) before their template",
                            self.tally.sets_without_template
                        ),
                    );
                }
                Ok(())
            }
            Err(error) => {
                stats.count_error(error.kind(), &format_args!("session {session}: {error}"));
                Err(error)
            }
        }
    }
}
