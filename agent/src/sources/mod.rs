//! Where connections come from: the conntrack table (dumps, events, targeted gets) and the
//! NFLOG group that logs what policies deny. Each source reads its kernel's numbers and
//! hands the store neutral [`crate::store::Observation`]s and [`crate::store::Denial`]s.

pub mod conntrack;
pub mod deny;
