//! Data records encoded once, shared by every collector.

use bytes::{Bytes, BytesMut};
use flowex_ipfix::{FieldWriter, Record};

use crate::filter::RecordSummary;

/// Encoded data records: one buffer and, per record, its template id and byte range, and
/// what collector filters look at (None for a record pushed without it: no filter leaves
/// it out).
#[derive(Debug, Clone, Default)]
pub struct EncodedBatch {
    bytes: Bytes,
    records: Vec<(u16, u32, u32)>,
    summaries: Vec<Option<RecordSummary>>,
}

impl EncodedBatch {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch has no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each record's template id and bytes.
    pub fn records(&self) -> impl Iterator<Item = (u16, &[u8])> + '_ {
        self.records.iter().map(|(template_id, start, len)| {
            let start = *start as usize;
            (*template_id, &self.bytes[start..start + *len as usize])
        })
    }

    /// The record at `index`.
    pub fn record(&self, index: usize) -> Option<(u16, &[u8])> {
        let (template_id, start, len) = *self.records.get(index)?;
        let start = start as usize;
        Some((template_id, &self.bytes[start..start + len as usize]))
    }

    /// What filters look at of the record at `index`.
    pub fn summary(&self, index: usize) -> Option<&RecordSummary> {
        self.summaries.get(index)?.as_ref()
    }
}

/// Most bytes reserved for the next batch after [`BatchBuilder::finish`].
pub const RESERVE_BYTES: usize = 4 << 20;

/// Encodes records into a batch; the buffers are reused between batches.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buffer: BytesMut,
    records: Vec<(u16, u32, u32)>,
    summaries: Vec<Option<RecordSummary>>,
    rejected: u64,
}

impl BatchBuilder {
    /// Appends one record for template `template_id`, with what collector filters look at.
    pub fn push_summarized<R: Record + ?Sized>(
        &mut self,
        template_id: u16,
        record: &R,
        summary: RecordSummary,
    ) {
        if self.push(template_id, record)
            && let Some(last) = self.summaries.last_mut()
        {
            *last = Some(summary);
        }
    }

    /// Appends one record for template `template_id`; false when it was refused.
    pub fn push<R: Record + ?Sized>(&mut self, template_id: u16, record: &R) -> bool {
        let len = record.encoded_len();
        let start = self.buffer.len();
        self.buffer.resize(start + len, 0);
        let mut writer = FieldWriter::new(&mut self.buffer[start..]);
        record.emit(&mut writer);
        if writer.overflowed() || writer.position() != len {
            // A record that misreports its length is dropped rather than corrupting others,
            // and counted (a bug in a record type, which the metrics should show).
            self.buffer.truncate(start);
            self.rejected += 1;
            return false;
        }
        self.records.push((template_id, start as u32, len as u32));
        self.summaries.push(None);
        true
    }

    /// Records refused so far because they wrote another length than they announced.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Records pushed since the last `finish`.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing was pushed since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Takes the records pushed so far as a shareable batch. The batch keeps the buffers
    /// (collectors read them while the next batch is built), so room for a batch of the
    /// same size (up to [`RESERVE_BYTES`]) is reserved at once: one allocation per buffer
    /// and batch, not a doubling series while records are pushed, and no burst (a shutdown
    /// flush) pins its size afterwards.
    pub fn finish(&mut self) -> EncodedBatch {
        let bytes = self.buffer.len().min(RESERVE_BYTES);
        let records = self.records.len().min(RESERVE_BYTES / 128);
        let batch = EncodedBatch {
            bytes: self.buffer.split().freeze(),
            records: std::mem::replace(&mut self.records, Vec::with_capacity(records)),
            summaries: std::mem::replace(&mut self.summaries, Vec::with_capacity(records)),
        };
        self.buffer.reserve(bytes);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Announces 8 bytes and writes 4.
    struct Misreported;

    impl Record for Misreported {
        fn encoded_len(&self) -> usize {
            8
        }
        fn emit(&self, writer: &mut FieldWriter<'_>) {
            writer.u32(7);
        }
    }

    /// Announces and writes 4 bytes.
    struct Honest;

    impl Record for Honest {
        fn encoded_len(&self) -> usize {
            4
        }
        fn emit(&self, writer: &mut FieldWriter<'_>) {
            writer.u32(9);
        }
    }

    #[test]
    fn a_record_that_misreports_its_length_is_refused_and_counted() {
        let mut builder = BatchBuilder::default();
        builder.push(256, &Honest);
        builder.push(256, &Misreported);
        builder.push(256, &Honest);
        assert_eq!(builder.len(), 2);
        assert_eq!(builder.rejected(), 1);
        let batch = builder.finish();
        assert_eq!(batch.record(0), Some((256, &[0, 0, 0, 9][..])));
        assert_eq!(batch.record(1), Some((256, &[0, 0, 0, 9][..])));
        assert_eq!(batch.record(2), None);
    }
}
