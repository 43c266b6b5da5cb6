//! Antrea's flow API (`antrea_io.antrea.pkg.apis.flow.v1alpha1`): the `Flow` message and
//! the client-streaming `FlowExportService` that Antrea's agents call on the Flow
//! Aggregator, as prost types with a tonic client and server. The code is generated from
//! `proto/` and committed (see `tests/generated.rs`), so building needs no protoc.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!("generated.rs");
}

pub use generated::*;
