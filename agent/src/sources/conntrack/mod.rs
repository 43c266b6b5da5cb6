//! Conntrack over ctnetlink: an allocation-free parser for entries, and a socket that dumps
//! the table (with kernel-side zone and mark filters) and reads its statistics.

mod attributes;
mod entry;
mod events;
mod listing;
mod settings;
mod socket;
mod source;

pub use entry::{
    ConntrackEntry, Counters, IPS_CONFIRMED, IPS_DYING, Tuple, parse_entry, tcp_state_name,
};
pub use events::{
    ConntrackEvents, DEFAULT_EVENT_BUFFER, DRAIN_LIMIT, EventGroups, EventKind, Received,
};
pub use listing::{Listing, ListingError, entry_json, entry_line, list};
pub use settings::{Check, SETTINGS, Setting, check_settings, default_root};
pub use socket::{
    ConntrackError, ConntrackSocket, CpuStats, DumpFilter, DumpStats, GET_BATCH, TableStats,
};
pub use source::ConntrackSource;
