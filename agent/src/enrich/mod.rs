//! What a record learns beyond conntrack: the owners of its ends (process, cgroup,
//! container) from the eBPF socket probe, and the pods, services and nodes behind its
//! addresses from the Kubernetes API. Both are looked up when a record is built; neither
//! knows how records are encoded.

pub mod attribution;
pub mod metadata;
