//! Where connections come from: the conntrack table (dumps, events, targeted gets) and the
//! NFLOG group that logs what policies deny. Each source reads its kernel's numbers and
//! hands the store what it saw: its own parsed entries, which the store reads through
//! [`crate::store::Observed`], and [`crate::store::Denial`]s.

pub mod conntrack;
pub mod deny;
