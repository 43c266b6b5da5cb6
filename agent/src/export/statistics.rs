//! Options records about the exporter itself, for collectors that read IPFIX (UDP, TCP,
//! TLS; not gRPC, and not Antrea's Flow Aggregator, which keeps flow records only):
//!
//! - *exporting process statistics* (RFC 7011 section 4.3, with the counts of 4.1), one
//!   record per collector: messages, records and bytes sent to it, the records it did not
//!   get (`notSentFlowTotalCount`, the same number as `flowex_records_dropped_total`) and
//!   when the first and last of those were dropped;
//! - *metering process statistics* (sections 4.1 and 4.2), one record per source
//!   (meteringProcessId 1: conntrack, 2: NFLOG deny): flows observed (counted when their
//!   last record is built) and losses (`ignoredPacketTotalCount`: conntrack event losses,
//!   NFLOG overflows and unreadable packets) with the time of the first and last;
//! - optionally, the receive and transmit drops of the node's followed interfaces;
//! - type records (RFC 5610) for flowex's own elements, sent with the templates.
//!
//! The records every collector shares (metering, interfaces) are built once per interval
//! whichever collector asks first; only the exporting process record is per collector.
//! Statistics are snapshots of running totals: one that cannot be sent is not kept, the
//! next carries the newer totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use flowex_ipfix::types::{ElementType, own_element_types, type_template};
use flowex_ipfix::{FieldWriter, Record, Registry, Template, TemplateError, Value, ValueRecord};

use super::collector::CollectorStats;

/// Template ids of the options records (the data templates are 256 and 257).
pub const EXPORTING_TEMPLATE_ID: u16 = 258;
pub const METERING_TEMPLATE_ID: u16 = 259;
/// Receive drops, scope `ingressInterface`; transmit drops, scope `egressInterface`.
pub const INTERFACE_TEMPLATE_ID: u16 = 260;
pub const INTERFACE_TRANSMIT_TEMPLATE_ID: u16 = 262;
pub const TYPE_TEMPLATE_ID: u16 = 261;

/// meteringProcessId of each source.
pub const CONNTRACK_METERING_ID: u32 = 1;
pub const DENY_METERING_ID: u32 = 2;

/// Losses of one source: how many, and when the first and last happened (ms since the
/// epoch, 0 when none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// A followed interface's drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDrops {
    pub index: u32,
    pub name: String,
    pub receive_dropped: u64,
    pub transmit_dropped: u64,
}

/// What the rest of the agent tells the statistics records.
pub trait StatisticsSource: Send + Sync {
    /// Losses of the conntrack source and of the NFLOG source.
    fn losses(&self) -> [Losses; 2];
    /// The followed interfaces' drops, read now.
    fn interface_drops(&self) -> Vec<InterfaceDrops>;
}

/// A running first/last time pair, set where a loss is counted.
#[derive(Debug, Default)]
pub struct LossWindow {
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

impl LossWindow {
    /// Notes a loss at `now_ms`.
    pub fn note(&self, now_ms: u64) {
        let _ = self
            .first_ms
            .compare_exchange(0, now_ms, Ordering::AcqRel, Ordering::Acquire);
        self.last_ms.fetch_max(now_ms, Ordering::AcqRel);
    }

    /// (first, last), 0 when nothing was noted.
    pub fn get(&self) -> (u64, u64) {
        (
            self.first_ms.load(Ordering::Acquire),
            self.last_ms.load(Ordering::Acquire),
        )
    }
}

/// Encoded records of one options template.
type Encoded = Vec<(u16, Vec<u8>)>;

/// The statistics of one exporting process, shared by its collectors' tasks.
pub struct Statistics {
    /// None: no statistics records (type records may still go).
    interval: Option<Duration>,
    interfaces: bool,
    templates: Vec<Template>,
    type_records: Encoded,
    source: OnceLock<Arc<dyn StatisticsSource>>,
    /// Flows whose last record was built, by source (conntrack, deny).
    flows_ended: [AtomicU64; 2],
    started_ms: u64,
    /// The records every collector shares, and when they were built.
    shared: Mutex<Option<(Instant, Arc<Encoded>)>>,
}

fn encode(record: &ValueRecord<'_, '_>) -> Vec<u8> {
    let mut bytes = vec![0; record.encoded_len()];
    record.emit(&mut FieldWriter::new(&mut bytes));
    bytes
}

impl Statistics {
    /// Statistics every `interval` (None: none), with the interfaces' drops when
    /// `interfaces`, and type records for flowex's own elements when `type_records`.
    pub fn new(
        registry: &Registry,
        interval: Option<Duration>,
        interfaces: bool,
        type_records: bool,
    ) -> Result<Self, TemplateError> {
        let ie = |name: &str| registry.expect(name);
        let mut templates = Vec::new();
        if interval.is_some() {
            templates.push(Template::options(
                EXPORTING_TEMPLATE_ID,
                1,
                &[
                    ie("exportingProcessId"),
                    ie("exportedMessageTotalCount"),
                    ie("exportedFlowRecordTotalCount"),
                    ie("exportedOctetTotalCount"),
                    ie("notSentFlowTotalCount"),
                    ie("flowStartMilliseconds"),
                    ie("flowEndMilliseconds"),
                    ie("systemInitTimeMilliseconds"),
                ],
            )?);
            templates.push(Template::options(
                METERING_TEMPLATE_ID,
                1,
                &[
                    ie("meteringProcessId"),
                    ie("observedFlowTotalCount"),
                    ie("ignoredPacketTotalCount"),
                    ie("flowStartMilliseconds"),
                    ie("flowEndMilliseconds"),
                    ie("systemInitTimeMilliseconds"),
                ],
            )?);
            if interfaces {
                for (id, scope) in [
                    (INTERFACE_TEMPLATE_ID, "ingressInterface"),
                    (INTERFACE_TRANSMIT_TEMPLATE_ID, "egressInterface"),
                ] {
                    templates.push(Template::options(
                        id,
                        1,
                        &[
                            ie(scope),
                            ie("interfaceName"),
                            ie("droppedPacketTotalCount"),
                            ie("observationTimeMilliseconds"),
                        ],
                    )?);
                }
            }
        }
        let mut encoded_types = Vec::new();
        if type_records {
            let template = type_template(registry, TYPE_TEMPLATE_ID)?;
            for element in own_element_types(registry) {
                let mut bytes = vec![0; element.encoded_len()];
                ElementType::emit(&element, &mut FieldWriter::new(&mut bytes));
                encoded_types.push((TYPE_TEMPLATE_ID, bytes));
            }
            templates.push(template);
        }
        Ok(Self {
            interval,
            interfaces: interfaces && interval.is_some(),
            templates,
            type_records: encoded_types,
            source: OnceLock::new(),
            flows_ended: Default::default(),
            started_ms: crate::store::now_ms(),
            shared: Mutex::new(None),
        })
    }

    /// Where losses and interface drops come from (set once, after the metrics exist).
    pub fn set_source(&self, source: Arc<dyn StatisticsSource>) {
        let _ = self.source.set(source);
    }

    /// How often statistics go out; None: never.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// The options templates to announce with the data templates.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    fn template(&self, id: u16) -> Option<&Template> {
        self.templates.iter().find(|t| t.id() == id)
    }

    /// The type records, sent after the templates.
    pub fn type_records(&self) -> &[(u16, Vec<u8>)] {
        &self.type_records
    }

    /// Counts a flow whose last record was built.
    pub fn flow_ended(&self, denied: bool) {
        self.flows_ended[usize::from(denied)].fetch_add(1, Ordering::Relaxed);
    }

    /// The exporting process record of the collector numbered `process_id`.
    pub fn exporting_record(&self, process_id: u32, stats: &CollectorStats) -> Option<Vec<u8>> {
        self.interval?;
        let template = self.template(EXPORTING_TEMPLATE_ID)?;
        let (first, last) = stats.drop_window.get();
        let values = [
            Value::Unsigned(u64::from(process_id)),
            Value::Unsigned(stats.messages.load(Ordering::Acquire)),
            Value::Unsigned(stats.records_exported.load(Ordering::Acquire)),
            Value::Unsigned(stats.bytes.load(Ordering::Acquire)),
            Value::Unsigned(stats.records_dropped()),
            Value::DateTimeMilliseconds(first),
            Value::DateTimeMilliseconds(last),
            Value::DateTimeMilliseconds(self.started_ms),
        ];
        ValueRecord::new(template, &values).ok().map(|r| encode(&r))
    }

    /// The records every collector shares, built at most once per half interval.
    pub fn shared_records(&self) -> Arc<Encoded> {
        let Some(interval) = self.interval else {
            return Arc::default();
        };
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, records)) = shared.as_ref()
            && at.elapsed() < interval / 2
        {
            return Arc::clone(records);
        }
        let records = Arc::new(self.build_shared());
        *shared = Some((Instant::now(), Arc::clone(&records)));
        records
    }

    fn build_shared(&self) -> Encoded {
        let mut records = Vec::new();
        let source = self.source.get();
        let losses = source.map(|s| s.losses()).unwrap_or_default();
        if let Some(template) = self.template(METERING_TEMPLATE_ID) {
            for (i, id) in [CONNTRACK_METERING_ID, DENY_METERING_ID]
                .into_iter()
                .enumerate()
            {
                let values = [
                    Value::Unsigned(u64::from(id)),
                    Value::Unsigned(self.flows_ended[i].load(Ordering::Relaxed)),
                    Value::Unsigned(losses[i].count),
                    Value::DateTimeMilliseconds(losses[i].first_ms),
                    Value::DateTimeMilliseconds(losses[i].last_ms),
                    Value::DateTimeMilliseconds(self.started_ms),
                ];
                if let Ok(record) = ValueRecord::new(template, &values) {
                    records.push((METERING_TEMPLATE_ID, encode(&record)));
                }
            }
        }
        if self.interfaces
            && let (Some(receive), Some(transmit), Some(source)) = (
                self.template(INTERFACE_TEMPLATE_ID),
                self.template(INTERFACE_TRANSMIT_TEMPLATE_ID),
                source,
            )
        {
            let now = crate::store::now_ms();
            for interface in source.interface_drops() {
                for (template, dropped) in [
                    (receive, interface.receive_dropped),
                    (transmit, interface.transmit_dropped),
                ] {
                    let values = [
                        Value::Unsigned(u64::from(interface.index)),
                        Value::String(&interface.name),
                        Value::Unsigned(dropped),
                        Value::DateTimeMilliseconds(now),
                    ];
                    if let Ok(record) = ValueRecord::new(template, &values) {
                        records.push((template.id(), encode(&record)));
                    }
                }
            }
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowex_ipfix::{Decoder, Encoder, Item};

    struct Fixed;

    impl StatisticsSource for Fixed {
        fn losses(&self) -> [Losses; 2] {
            [
                Losses {
                    count: 3,
                    first_ms: 1_000,
                    last_ms: 5_000,
                },
                Losses::default(),
            ]
        }
        fn interface_drops(&self) -> Vec<InterfaceDrops> {
            vec![InterfaceDrops {
                index: 7,
                name: "veth1".into(),
                receive_dropped: 11,
                transmit_dropped: 25,
            }]
        }
    }

    fn decode(statistics: &Statistics, records: &[(u16, Vec<u8>)]) -> Vec<(u16, String)> {
        let mut encoder = Encoder::new(1, 65_535).unwrap();
        for template in statistics.templates() {
            encoder.add_template(template).unwrap();
        }
        for (id, bytes) in records {
            encoder.add_encoded_record(*id, bytes).unwrap();
        }
        let message = encoder.finish(0).to_vec();
        let mut out = Vec::new();
        Decoder::default()
            .decode(1, &message, |item| {
                if let Item::Record(record) = item {
                    let fields: Vec<String> = record
                        .values()
                        .map(|(f, v)| format!("{}={v:?}", f.ie.map_or("?", |ie| ie.name)))
                        .collect();
                    out.push((record.template().id(), fields.join(" ")));
                }
            })
            .unwrap();
        out
    }

    #[test]
    fn shared_records_carry_the_sources_losses_and_interface_drops() {
        let statistics = Statistics::new(
            &Registry::default(),
            Some(Duration::from_secs(60)),
            true,
            false,
        )
        .unwrap();
        statistics.set_source(Arc::new(Fixed));
        statistics.flow_ended(false);
        statistics.flow_ended(false);
        statistics.flow_ended(true);
        let decoded = decode(&statistics, &statistics.shared_records());
        let started = statistics.started_ms;
        assert_eq!(
            decoded,
            vec![
                (
                    METERING_TEMPLATE_ID,
                    format!(
                        "meteringProcessId=Unsigned(1) observedFlowTotalCount=Unsigned(2) ignoredPacketTotalCount=Unsigned(3) flowStartMilliseconds=DateTimeMilliseconds(1000) flowEndMilliseconds=DateTimeMilliseconds(5000) systemInitTimeMilliseconds=DateTimeMilliseconds({started})"
                    )
                ),
                (
                    METERING_TEMPLATE_ID,
                    format!(
                        "meteringProcessId=Unsigned(2) observedFlowTotalCount=Unsigned(1) ignoredPacketTotalCount=Unsigned(0) flowStartMilliseconds=DateTimeMilliseconds(0) flowEndMilliseconds=DateTimeMilliseconds(0) systemInitTimeMilliseconds=DateTimeMilliseconds({started})"
                    )
                ),
                (INTERFACE_TEMPLATE_ID, decoded[2].1.clone()),
                (INTERFACE_TRANSMIT_TEMPLATE_ID, decoded[3].1.clone()),
            ]
        );
        assert!(decoded[2].1.starts_with(
            "ingressInterface=Unsigned(7) interfaceName=String(\"veth1\") droppedPacketTotalCount=Unsigned(11)"
        ));
        assert!(decoded[3].1.starts_with(
            "egressInterface=Unsigned(7) interfaceName=String(\"veth1\") droppedPacketTotalCount=Unsigned(25)"
        ));
        // Built once per half interval: a second ask shares the first build.
        assert!(Arc::ptr_eq(
            &statistics.shared_records(),
            &statistics.shared_records()
        ));
    }

    #[test]
    fn the_exporting_record_carries_the_collectors_counts() {
        let statistics = Statistics::new(
            &Registry::default(),
            Some(Duration::from_secs(60)),
            false,
            true,
        )
        .unwrap();
        let stats = CollectorStats::default();
        stats.messages.store(4, Ordering::Relaxed);
        stats.bytes.store(4_000, Ordering::Relaxed);
        stats.queued.store(10, Ordering::Relaxed);
        stats.settle_exported(7);
        stats.settle_dropped(super::super::DropReason::CollectorRefused, 3);
        let (first, last) = stats.drop_window.get();
        assert!(first > 0 && last >= first);
        let record = statistics.exporting_record(2, &stats).unwrap();
        let decoded = decode(&statistics, &[(EXPORTING_TEMPLATE_ID, record)]);
        assert_eq!(
            decoded[0].1,
            format!(
                "exportingProcessId=Unsigned(2) exportedMessageTotalCount=Unsigned(4) exportedFlowRecordTotalCount=Unsigned(7) exportedOctetTotalCount=Unsigned(4000) notSentFlowTotalCount=Unsigned(3) flowStartMilliseconds=DateTimeMilliseconds({first}) flowEndMilliseconds=DateTimeMilliseconds({last}) systemInitTimeMilliseconds=DateTimeMilliseconds({})",
                statistics.started_ms
            )
        );
        // Type records follow the templates: one per own element.
        assert_eq!(statistics.type_records().len(), 13);
        assert_eq!(
            statistics
                .templates()
                .iter()
                .map(Template::id)
                .collect::<Vec<_>>(),
            [
                EXPORTING_TEMPLATE_ID,
                METERING_TEMPLATE_ID,
                TYPE_TEMPLATE_ID
            ]
        );
    }

    #[test]
    fn no_interval_no_statistics_templates() {
        let statistics = Statistics::new(&Registry::default(), None, true, false).unwrap();
        assert!(statistics.templates().is_empty());
        assert!(statistics.shared_records().is_empty());
        assert!(
            statistics
                .exporting_record(1, &CollectorStats::default())
                .is_none()
        );
    }
}
