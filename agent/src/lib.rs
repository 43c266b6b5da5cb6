//! The flowex node agent. Built so far: the kernel sources, conntrack (ctnetlink parser,
//! dumps with kernel-side filters, events, targeted get, table statistics) and the NFLOG
//! deny source. The connection store and the exporting process are still to come.

pub mod config;
pub mod conntrack;
pub mod deny;
pub mod export;
pub mod metrics;
pub mod netlink;
pub mod records;
pub mod run;
pub mod store;
