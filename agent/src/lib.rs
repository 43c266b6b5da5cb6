//! The flowex node agent. Its modules (conntrack and NFLOG sources, connection store,
//! expiry, record building, exporting process, metrics) are not written yet; the crate
//! exports nothing until they are.
