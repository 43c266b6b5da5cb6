//! The flowex node agent: the kernel sources (conntrack dumps and events, NFLOG denials),
//! the connection store and its expiry, process attribution from the eBPF socket probe,
//! record building, and the exporting process that sends IPFIX to the collectors.

pub mod app;
pub mod config;
pub mod enrich;
pub mod export;
pub mod filter;
pub mod net;
pub mod netlink;
pub mod network;
pub mod records;
pub mod sources;
pub mod state;
pub mod store;
pub mod telemetry;
