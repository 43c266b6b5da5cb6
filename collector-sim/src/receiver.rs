//! Decoding and counting one message: shared by the UDP and TCP receivers.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use flowex_ipfix::registry::IANA_PEN;
use flowex_ipfix::{DecodeError, Decoder, Item};
use serde_json::Value as Json;

use crate::json::record_to_json;
use crate::stats::{MessageTally, Stats, check_sequence, lock};

/// Id of flowEndReason (IANA).
const FLOW_END_REASON: u16 = 136;

/// Where decoded records go besides the counters.
#[derive(Default)]
pub(crate) struct RecordOutput {
    /// One JSON line per data record.
    pub json: Option<Mutex<Box<dyn Write + Send>>>,
    /// Records kept in memory for tests.
    pub kept: Option<Mutex<Vec<Json>>>,
}

impl RecordOutput {
    pub(crate) fn wanted(&self) -> bool {
        self.json.is_some() || self.kept.is_some()
    }

    pub(crate) fn deliver(&self, records: &mut Vec<Json>) {
        if let Some(json) = &self.json {
            let mut out = lock(json);
            for record in records.iter() {
                // A closed stdout (e.g. `| head`) must not stop the counting.
                let _ = writeln!(out, "{record}");
            }
            let _ = out.flush();
        }
        if let Some(kept) = &self.kept {
            lock(kept).append(records);
        }
        records.clear();
    }
}

/// The state one receiving thread owns: its decoder (template cache) and the next sequence
/// number expected per (session, observation domain).
pub(crate) struct Receiver {
    pub decoder: Decoder,
    expected: HashMap<(u64, u32), u32>,
    tally: MessageTally,
    pending: Vec<Json>,
}

impl Receiver {
    pub fn new() -> Self {
        Self {
            decoder: Decoder::default(),
            expected: HashMap::new(),
            tally: MessageTally::default(),
            pending: Vec::new(),
        }
    }

    /// Forgets a session's templates and sequence state.
    pub fn forget_session(&mut self, session: u64) {
        self.decoder.forget_session(session);
        self.expected.retain(|(s, _), _| *s != session);
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
        let want_records = output.wanted();
        let tally = &mut self.tally;
        let pending = &mut self.pending;
        let result = self.decoder.decode(session, message, |item| match item {
            Item::Record(record) => {
                let template = record.template();
                if template.is_options() {
                    tally.options_records += 1;
                } else {
                    tally.records += 1;
                    if let Some(index) = template.position_of(IANA_PEN, FLOW_END_REASON)
                        && let Some(flowex_ipfix::Value::Unsigned(reason)) = record.value_at(index)
                    {
                        tally.reasons[reason as u8 as usize] += 1;
                    }
                    if want_records {
                        pending.push(Json::Object(record_to_json(&record)));
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
                let check = check_sequence(
                    self.expected.get(&key).copied(),
                    info.header.sequence_number,
                );
                let sent = info.data_records + info.options_records;
                self.expected
                    .insert(key, info.header.sequence_number.wrapping_add(sent));
                stats.merge(&self.tally, check);
                if !self.pending.is_empty() {
                    output.deliver(&mut self.pending);
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
