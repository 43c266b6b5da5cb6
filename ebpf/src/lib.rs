//! Home of flowex's eBPF socket probe and its loader. Nothing is implemented yet: the probe
//! (process and pod attribution of flows) is tracked as its own piece of work, and this
//! crate deliberately exports no API until it exists.
