//! The exporting process: records are encoded once into shared batches; each collector has
//! its own bounded queue, encoder (message packing, sequence numbers) and transport task,
//! so a slow or absent collector never blocks the others or the sources.

mod backoff;
mod batch;
pub mod certificates;
mod collector;
pub mod grpc;
pub mod statistics;
pub mod tls;
mod transport;

pub use backoff::Backoff;
pub use batch::{BatchBuilder, EncodedBatch};
pub use collector::{
    CollectorHandle, CollectorStats, CollectorTarget, DEFAULT_LOG_INTERVAL, DropReason,
    ExportingProcess, StartError, check_target, smallest_message,
};
