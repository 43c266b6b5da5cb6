//! Counters shared by the receiving threads, and the summary read from them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

/// Everything the collector counts. Merged once per message under one lock, so a snapshot
/// is always consistent (a message is counted whole or not at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages decoded without error.
    pub messages: u64,
    /// Data records (not options records) in those messages.
    pub records: u64,
    /// Template records plus options template records.
    pub templates: u64,
    /// Template sets and options template sets.
    pub template_sets: u64,
    /// Options data records.
    pub options_records: u64,
    /// Template withdrawals.
    pub withdrawals: u64,
    /// Data sets that arrived before (or without) their template.
    pub sets_without_template: u64,
    /// Messages whose sequence number was ahead of the records seen so far.
    pub sequence_gaps: u64,
    /// Records the exporters numbered but that never arrived (sum of the gaps).
    pub missing_records: u64,
    /// Messages whose sequence number went backwards (exporter restart or reordering).
    pub sequence_resets: u64,
    /// Messages (or TCP streams) rejected, by error kind.
    pub decode_errors: BTreeMap<&'static str, u64>,
    /// Data records by flowEndReason value (records without the element are not counted here).
    pub by_flow_end_reason: BTreeMap<u8, u64>,
    /// Data and options records by template id.
    pub by_template: BTreeMap<u16, u64>,
    /// Data and options records by observation domain.
    pub by_observation_domain: BTreeMap<u32, u64>,
    /// Bytes of decoded messages.
    pub bytes: u64,
    /// TCP connections accepted.
    pub tcp_connections: u64,
    /// TCP connections closed by the collector because the peer sent something malformed.
    pub tcp_disconnects: u64,
    /// TLS sessions refused in the handshake (no client certificate, an untrusted one, no
    /// common version).
    pub tls_refused: u64,
}

impl Summary {
    /// Total number of decode errors of all kinds.
    pub fn decode_error_total(&self) -> u64 {
        self.decode_errors.values().sum()
    }

    /// The summary as the JSON object printed at exit.
    pub fn to_json(&self) -> Json {
        let mut reasons: BTreeMap<String, u64> =
            (1..=4).map(|reason: u8| (reason.to_string(), 0)).collect();
        for (reason, count) in &self.by_flow_end_reason {
            reasons.insert(reason.to_string(), *count);
        }
        let keyed = |map: Vec<(String, u64)>| -> serde_json::Map<String, Json> {
            map.into_iter().map(|(k, v)| (k, json!(v))).collect()
        };
        json!({
            "messages": self.messages,
            "records": self.records,
            "templates": self.templates,
            "options_records": self.options_records,
            "sequence_gaps": self.sequence_gaps,
            "missing_records": self.missing_records,
            "decode_errors": self.decode_error_total(),
            "by_flow_end_reason": reasons,
            "template_sets": self.template_sets,
            "withdrawals": self.withdrawals,
            "sets_without_template": self.sets_without_template,
            "sequence_resets": self.sequence_resets,
            "decode_errors_by_kind": keyed(
                self.decode_errors.iter().map(|(k, v)| (k.to_string(), *v)).collect()
            ),
            "by_template": keyed(self.by_template.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            "by_observation_domain": keyed(
                self.by_observation_domain.iter().map(|(k, v)| (k.to_string(), *v)).collect()
            ),
            "bytes": self.bytes,
            "tcp_connections": self.tcp_connections,
            "tcp_disconnects": self.tcp_disconnects,
            "tls_refused": self.tls_refused,
        })
    }

    /// A one-line summary for people.
    pub fn one_line(&self) -> String {
        format!(
            "messages={} records={} templates={} options_records={} sequence_gaps={} missing_records={} decode_errors={} sets_without_template={}",
            self.messages,
            self.records,
            self.templates,
            self.options_records,
            self.sequence_gaps,
            self.missing_records,
            self.decode_error_total(),
            self.sets_without_template,
        )
    }
}

/// What one message added, gathered without locks and merged at once.
#[derive(Debug)]
pub(crate) struct MessageTally {
    pub records: u64,
    pub options_records: u64,
    pub templates: u64,
    pub template_sets: u64,
    pub withdrawals: u64,
    pub sets_without_template: u64,
    pub reasons: [u64; 256],
    pub template_counts: Vec<(u16, u64)>,
    pub domain: u32,
    pub bytes: u64,
}

impl Default for MessageTally {
    fn default() -> Self {
        Self {
            records: 0,
            options_records: 0,
            templates: 0,
            template_sets: 0,
            withdrawals: 0,
            sets_without_template: 0,
            reasons: [0; 256],
            template_counts: Vec::new(),
            domain: 0,
            bytes: 0,
        }
    }
}

impl MessageTally {
    pub fn count_template_record(&mut self, template_id: u16) {
        match self.template_counts.last_mut() {
            Some((id, count)) if *id == template_id => *count += 1,
            _ => self.template_counts.push((template_id, 1)),
        }
    }

    pub fn clear(&mut self) {
        let template_counts = std::mem::take(&mut self.template_counts);
        *self = Self {
            template_counts,
            ..Self::default()
        };
        self.template_counts.clear();
    }
}

/// Shared counters: the hot totals as atomics (for cheap waiting), the rest under a lock.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    records: AtomicU64,
    summary: Mutex<Summary>,
    log: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

/// Interval between two log lines about the same kind of error.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Stats {
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Summary {
        lock(&self.summary).clone()
    }

    pub fn merge(&self, tally: &MessageTally, gap: SequenceCheck) {
        let mut summary = lock(&self.summary);
        summary.messages += 1;
        summary.records += tally.records;
        summary.options_records += tally.options_records;
        summary.templates += tally.templates;
        summary.template_sets += tally.template_sets;
        summary.withdrawals += tally.withdrawals;
        summary.sets_without_template += tally.sets_without_template;
        summary.bytes += tally.bytes;
        for (reason, count) in tally.reasons.iter().enumerate() {
            if *count > 0 {
                *summary.by_flow_end_reason.entry(reason as u8).or_default() += count;
            }
        }
        for (id, count) in &tally.template_counts {
            *summary.by_template.entry(*id).or_default() += count;
        }
        let all = tally.records + tally.options_records;
        if all > 0 {
            *summary
                .by_observation_domain
                .entry(tally.domain)
                .or_default() += all;
        }
        match gap {
            SequenceCheck::InOrder => {}
            SequenceCheck::Gap(missing) => {
                summary.sequence_gaps += 1;
                summary.missing_records += u64::from(missing);
            }
            SequenceCheck::Backwards => summary.sequence_resets += 1,
        }
        drop(summary);
        self.records.fetch_add(tally.records, Ordering::AcqRel);
    }

    pub fn count_error(&self, kind: &'static str, detail: &dyn std::fmt::Display) {
        *lock(&self.summary).decode_errors.entry(kind).or_default() += 1;
        self.log_limited(kind, detail);
    }

    /// Logs `detail` on stderr, at most once per [`LOG_EVERY`] for each kind.
    pub fn log_limited(&self, kind: &'static str, detail: &dyn std::fmt::Display) {
        let mut log = lock(&self.log);
        let now = Instant::now();
        match log.get_mut(kind) {
            None => {
                eprintln!("collector-sim: {kind}: {detail}");
                log.insert(kind, (now, 0));
            }
            Some((last, suppressed)) if now.duration_since(*last) >= LOG_EVERY => {
                eprintln!(
                    "collector-sim: {kind}: {detail} ({} more since the last report)",
                    *suppressed
                );
                *last = now;
                *suppressed = 0;
            }
            Some((_, suppressed)) => *suppressed += 1,
        }
    }

    pub fn count_tcp_connection(&self) {
        lock(&self.summary).tcp_connections += 1;
    }

    pub fn count_tcp_disconnect(&self) {
        lock(&self.summary).tcp_disconnects += 1;
    }

    pub fn count_tls_refused(&self) {
        lock(&self.summary).tls_refused += 1;
    }
}

/// The outcome of checking a message's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    InOrder,
    Gap(u32),
    Backwards,
}

/// Compares a message's sequence number with the one expected in its stream.
pub(crate) fn check_sequence(expected: Option<u32>, actual: u32) -> SequenceCheck {
    let Some(expected) = expected else {
        // The first message of a stream sets the baseline.
        return SequenceCheck::InOrder;
    };
    match actual.wrapping_sub(expected) {
        0 => SequenceCheck::InOrder,
        ahead if ahead < 1 << 31 => SequenceCheck::Gap(ahead),
        _ => SequenceCheck::Backwards,
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking receiver thread must not take the counters down with it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_checks() {
        assert_eq!(check_sequence(None, 77), SequenceCheck::InOrder);
        assert_eq!(check_sequence(Some(10), 10), SequenceCheck::InOrder);
        assert_eq!(check_sequence(Some(10), 15), SequenceCheck::Gap(5));
        assert_eq!(check_sequence(Some(u32::MAX - 1), 3), SequenceCheck::Gap(5));
        assert_eq!(check_sequence(Some(10), 4), SequenceCheck::Backwards);
    }

    #[test]
    fn summary_json_has_every_reason_key() {
        let summary = Summary::default();
        let json = summary.to_json();
        for reason in ["1", "2", "3", "4"] {
            assert_eq!(json["by_flow_end_reason"][reason], 0);
        }
        assert_eq!(json["decode_errors"], 0);
    }
}
