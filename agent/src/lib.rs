//! The flowex node agent. Built so far: the conntrack source (ctnetlink parser, table dumps
//! with kernel-side filters, table statistics). Events, NFLOG, the connection store and the
//! exporting process are still to come.

pub mod conntrack;
pub mod netlink;
