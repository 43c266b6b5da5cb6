//! A ctnetlink socket: full-table dumps (with kernel-side zone and mark filters) streamed
//! entry by entry into a callback, and the table statistics queries.

use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::attributes::*;
use super::entry::{ConntrackEntry, Tuple, parse_entry};
use crate::netlink::{
    Attributes, MessageHeader, Messages, NFGEN_LEN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_FILTERED,
    NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, ParseError,
    RequestBuilder, error_code,
};

/// A dump datagram is at most 32 KiB on this kernel; a little more leaves headroom.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// What can go wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The socket failed (open, send, receive).
    #[error("ctnetlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel answered with an error code.
    #[error("ctnetlink request refused by the kernel: {0}")]
    Kernel(io::Error),
    /// The kernel's bytes did not parse.
    #[error("malformed ctnetlink message: {0}")]
    Parse(#[from] ParseError),
    /// The kernel ran out of buffer space during a dump (NLMSG_OVERRUN).
    #[error("ctnetlink dump overrun")]
    Overrun,
}

/// Which entries a dump returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpFilter {
    /// Address family: 0 (all), AF_INET or AF_INET6.
    pub family: u8,
    /// Only entries in this zone.
    pub zone: Option<u16>,
    /// Only entries whose mark & mask == value: (value, mask).
    pub mark: Option<(u32, u32)>,
}

impl DumpFilter {
    /// True when `entry` passes the filter (the user-space check).
    pub fn matches(&self, entry: &ConntrackEntry) -> bool {
        (self.family == 0 || entry.family == self.family)
            && self.zone.is_none_or(|zone| entry.zone == zone)
            && self
                .mark
                .is_none_or(|(value, mask)| entry.mark & mask == value & mask)
    }

    fn is_set(&self) -> bool {
        self.zone.is_some() || self.mark.is_some()
    }
}

/// What a dump did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries handed to the callback.
    pub entries: u64,
    /// Entries the kernel sent that the user-space filter dropped.
    pub filtered_in_user_space: u64,
    /// True when the kernel marked its replies NLM_F_DUMP_FILTERED.
    pub kernel_filtered: bool,
    /// True when the kernel flagged the dump as interrupted (table changed mid-dump).
    pub interrupted: bool,
    /// Datagrams and bytes received.
    pub datagrams: u64,
    pub bytes: u64,
}

pub use crate::net::CpuStats;

/// Table size and per-CPU counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub entries: u32,
    pub max_entries: u32,
    pub found: u64,
    pub invalid: u64,
    pub insert: u64,
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    pub error: u64,
    pub search_restart: u64,
}

/// A ctnetlink request socket in the calling thread's network namespace.
pub struct ConntrackSocket {
    socket: Socket,
    receive: Vec<u8>,
    request: Vec<u8>,
    batch: Vec<u8>,
    sequence: u32,
    /// Datagrams and bytes received so far (dump statistics are differences).
    datagrams: u64,
    bytes: u64,
}

/// Whether a request's replies go on after this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    More,
    Finished,
}

/// An NLMSG_ERROR payload: Ok for an acknowledgement (error 0), else the kernel's error.
fn kernel_error(payload: &[u8]) -> Result<(), ConntrackError> {
    match error_code(payload)? {
        0 => Ok(()),
        code => Err(ConntrackError::Kernel(io::Error::from_raw_os_error(-code))),
    }
}

/// Most entries fetched by one [`ConntrackSocket::get_many`]: the kernel queues all the
/// replies before the agent reads them, and 32 replies fit the default receive buffer.
pub const GET_BATCH: usize = 32;

impl ConntrackSocket {
    /// Opens a socket (needs CAP_NET_ADMIN).
    pub fn open() -> Result<Self, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            receive: Vec::with_capacity(RECEIVE_BUFFER),
            request: Vec::with_capacity(256),
            batch: Vec::with_capacity(GET_BATCH * 128),
            sequence: 1,
            datagrams: 0,
            bytes: 0,
        })
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    fn receive(&mut self) -> Result<(), ConntrackError> {
        self.receive.clear();
        loop {
            match self.socket.recv(&mut self.receive, 0) {
                Ok(_) => {
                    self.datagrams += 1;
                    self.bytes += self.receive.len() as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads replies to the `count` requests sent with sequence numbers from `first` on,
    /// until `on_reply` says they are finished: every request's replies pass through here
    /// (messages of other sequences are skipped). `on_reply` gets the request's index,
    /// the message's header and payload.
    fn replies(
        &mut self,
        first: u32,
        count: usize,
        mut on_reply: impl FnMut(usize, &MessageHeader, &[u8]) -> Result<Reply, ConntrackError>,
    ) -> Result<(), ConntrackError> {
        loop {
            self.receive()?;
            for message in Messages::new(&self.receive) {
                let (header, payload) = message?;
                let index = header.sequence.wrapping_sub(first) as usize;
                if index >= count {
                    continue;
                }
                if on_reply(index, &header, payload)? == Reply::Finished {
                    return Ok(());
                }
            }
        }
    }

    /// Sends a dump request carrying the filter's kernel-side attributes; returns its sequence.
    fn send_dump_request(&mut self, filter: &DumpFilter) -> Result<u32, ConntrackError> {
        let sequence = self.next_sequence();
        let mut request = RequestBuilder::new(
            &mut self.request,
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            sequence,
            filter.family,
        );
        if let Some(zone) = filter.zone {
            request.attribute(CTA_ZONE, &zone.to_be_bytes());
        }
        if let Some((value, mask)) = filter.mark {
            request.attribute(CTA_MARK, &value.to_be_bytes());
            request.attribute(CTA_MARK_MASK, &mask.to_be_bytes());
        }
        let request = request.finish();
        self.socket.send(request, 0)?;
        Ok(sequence)
    }

    /// Dumps the table, calling `on_entry` for each entry that passes `filter`. Entries are
    /// parsed into one reused struct: nothing is allocated per entry.
    pub fn dump(
        &mut self,
        filter: &DumpFilter,
        mut on_entry: impl FnMut(&ConntrackEntry),
    ) -> Result<DumpStats, ConntrackError> {
        let sequence = self.send_dump_request(filter)?;
        let (datagrams, bytes) = (self.datagrams, self.bytes);
        let mut stats = DumpStats::default();
        let mut entry = ConntrackEntry::default();
        let filter_set = filter.is_set() || filter.family != 0;
        self.replies(sequence, 1, |_, header, payload| {
            match header.kind {
                NLMSG_DONE => return Ok(Reply::Finished),
                NLMSG_ERROR => kernel_error(payload)?,
                NLMSG_OVERRUN => return Err(ConntrackError::Overrun),
                kind if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                    stats.kernel_filtered |= header.flags & NLM_F_DUMP_FILTERED != 0;
                    stats.interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                    parse_entry(payload, &mut entry)?;
                    // The user-space check is a few integer compares; it keeps the
                    // result exact on kernels that ignore some filter attributes.
                    if filter_set && !filter.matches(&entry) {
                        stats.filtered_in_user_space += 1;
                    } else {
                        stats.entries += 1;
                        on_entry(&entry);
                    }
                }
                _ => {}
            }
            Ok(Reply::More)
        })?;
        stats.datagrams = self.datagrams - datagrams;
        stats.bytes = self.bytes - bytes;
        Ok(stats)
    }

    /// Runs the same dump as [`ConntrackSocket::dump`] but only receives and counts bytes,
    /// reading no more than the message headers needed to find the end: the kernel's cost
    /// of a dump, the floor a parser is measured against.
    pub fn dump_bytes(&mut self, filter: &DumpFilter) -> Result<u64, ConntrackError> {
        let sequence = self.send_dump_request(filter)?;
        let bytes = self.bytes;
        self.replies(sequence, 1, |_, header, _| {
            Ok(match header.kind {
                NLMSG_DONE | NLMSG_ERROR => Reply::Finished,
                _ => Reply::More,
            })
        })?;
        Ok(self.bytes - bytes)
    }

    /// Fetches the one entry whose original tuple is `tuple` in `zone` into `out`; returns
    /// false when the kernel has no such entry. Used to read final counters at once when a
    /// TCP connection reaches TIME_WAIT/CLOSE (UPDATE events carry no counters).
    pub fn get(
        &mut self,
        tuple: &Tuple,
        zone: u16,
        out: &mut ConntrackEntry,
    ) -> Result<bool, ConntrackError> {
        let mut found = false;
        self.get_many(&[(*tuple, zone)], out, |_, entry| found = entry.is_some())?;
        Ok(found)
    }

    /// Fetches the entries of several (tuple, zone) pairs, at most [`GET_BATCH`], with one
    /// send: the requests travel in one datagram and the kernel answers each with its
    /// entry or an error (no acknowledgement is asked for, so one reply each). `answer`
    /// gets each request's index and its entry, or None when the kernel has none; the
    /// entry is parsed into `out`, which is reused.
    pub fn get_many(
        &mut self,
        wanted: &[(Tuple, u16)],
        out: &mut ConntrackEntry,
        mut answer: impl FnMut(usize, Option<&ConntrackEntry>),
    ) -> Result<(), ConntrackError> {
        if wanted.is_empty() {
            return Ok(());
        }
        if wanted.len() > GET_BATCH {
            return Err(ConntrackError::Kernel(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} gets in one batch, at most {GET_BATCH}", wanted.len()),
            )));
        }
        let first = self.sequence.wrapping_add(1);
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for (tuple, zone) in wanted {
            let sequence = self.next_sequence();
            batch.extend_from_slice(self.get_request(tuple, *zone, sequence)?);
        }
        let sent = self.socket.send(&batch, 0);
        self.batch = batch;
        sent?;
        // An error for one request is returned once every request has its answer, so the
        // others are still delivered and no reply is left behind.
        let mut failure = None;
        let mut answered = 0;
        self.replies(first, wanted.len(), |index, header, payload| {
            match header.kind {
                NLMSG_ERROR => {
                    answered += 1;
                    match -error_code(payload)? {
                        // An acknowledgement would follow an entry: not asked for.
                        0 => {}
                        libc::ENOENT => answer(index, None),
                        errno => {
                            failure.get_or_insert(io::Error::from_raw_os_error(errno));
                        }
                    }
                }
                kind if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                    answered += 1;
                    parse_entry(payload, out)?;
                    answer(index, Some(out));
                }
                _ => {}
            }
            Ok(if answered == wanted.len() {
                Reply::Finished
            } else {
                Reply::More
            })
        })?;
        failure.map_or(Ok(()), |error| Err(ConntrackError::Kernel(error)))
    }

    /// Writes a GET request for one entry into the request buffer.
    fn get_request(
        &mut self,
        tuple: &Tuple,
        zone: u16,
        sequence: u32,
    ) -> Result<&[u8], ConntrackError> {
        let family = if tuple.source.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let mut request = RequestBuilder::new(
            &mut self.request,
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST,
            sequence,
            family,
        );
        request.begin_nested(CTA_TUPLE_ORIG);
        request.begin_nested(CTA_TUPLE_IP);
        match (tuple.source, tuple.destination) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                request.attribute(CTA_IP_V4_SRC, &src.octets());
                request.attribute(CTA_IP_V4_DST, &dst.octets());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                request.attribute(CTA_IP_V6_SRC, &src.octets());
                request.attribute(CTA_IP_V6_DST, &dst.octets());
            }
            _ => {
                return Err(ConntrackError::Kernel(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "tuple mixes IPv4 and IPv6 addresses",
                )));
            }
        }
        request.end_nested();
        request.begin_nested(CTA_TUPLE_PROTO);
        request.attribute(CTA_PROTO_NUM, &[tuple.protocol]);
        match tuple.protocol {
            1 | 58 => {
                let v6 = tuple.protocol == 58;
                request.attribute(if v6 { 7 } else { 4 }, &tuple.icmp_id.to_be_bytes());
                request.attribute(if v6 { 8 } else { 5 }, &[tuple.icmp_type]);
                request.attribute(if v6 { 9 } else { 6 }, &[tuple.icmp_code]);
            }
            _ => {
                request.attribute(CTA_PROTO_SRC_PORT, &tuple.source_port.to_be_bytes());
                request.attribute(CTA_PROTO_DST_PORT, &tuple.destination_port.to_be_bytes());
            }
        }
        request.end_nested();
        request.end_nested();
        request.attribute(CTA_ZONE, &zone.to_be_bytes());
        Ok(request.finish())
    }

    /// Reads the table size, its maximum, and the per-CPU counters summed.
    pub fn table_stats(&mut self) -> Result<TableStats, ConntrackError> {
        let mut stats = TableStats::default();
        self.query(
            IPCTNL_MSG_CT_GET_STATS,
            NLM_F_REQUEST | NLM_F_ACK,
            |_, attrs| {
                for attr in attrs {
                    let attr = attr?;
                    match attr.kind {
                        CTA_STATS_GLOBAL_ENTRIES => stats.entries = attr.be32()?,
                        CTA_STATS_GLOBAL_MAX_ENTRIES => stats.max_entries = attr.be32()?,
                        _ => {}
                    }
                }
                Ok(())
            },
        )?;
        self.query(
            IPCTNL_MSG_CT_GET_STATS_CPU,
            NLM_F_REQUEST | NLM_F_DUMP,
            |_, attrs| {
                for attr in attrs {
                    let attr = attr?;
                    let value = u64::from(attr.be32()?);
                    match attr.kind {
                        CTA_STATS_FOUND => stats.found += value,
                        CTA_STATS_INVALID => stats.invalid += value,
                        CTA_STATS_INSERT => stats.insert += value,
                        CTA_STATS_INSERT_FAILED => stats.insert_failed += value,
                        CTA_STATS_DROP => stats.drop += value,
                        CTA_STATS_EARLY_DROP => stats.early_drop += value,
                        CTA_STATS_ERROR => stats.error += value,
                        CTA_STATS_SEARCH_RESTART => stats.search_restart += value,
                        _ => {}
                    }
                }
                Ok(())
            },
        )?;
        Ok(stats)
    }

    /// Reads every CPU's counters into `out` (cleared first; reused, so a read allocates
    /// nothing once it has a slot per CPU).
    pub fn cpu_stats(&mut self, out: &mut Vec<CpuStats>) -> Result<(), ConntrackError> {
        out.clear();
        self.query(
            IPCTNL_MSG_CT_GET_STATS_CPU,
            NLM_F_REQUEST | NLM_F_DUMP,
            |cpu, attrs| {
                let mut stats = CpuStats {
                    cpu,
                    ..CpuStats::default()
                };
                for attr in attrs {
                    let attr = attr?;
                    let value = attr.be32()?;
                    match attr.kind {
                        CTA_STATS_FOUND => stats.found = value,
                        CTA_STATS_INVALID => stats.invalid = value,
                        CTA_STATS_INSERT => stats.insert = value,
                        CTA_STATS_INSERT_FAILED => stats.insert_failed = value,
                        CTA_STATS_DROP => stats.drop = value,
                        CTA_STATS_EARLY_DROP => stats.early_drop = value,
                        CTA_STATS_ERROR => stats.error = value,
                        CTA_STATS_SEARCH_RESTART => stats.search_restart = value,
                        CTA_STATS_CLASH_RESOLVE => stats.clash_resolve = value,
                        CTA_STATS_CHAIN_TOOLONG => stats.chain_too_long = value,
                        _ => {}
                    }
                }
                out.push(stats);
                Ok(())
            },
        )
    }

    /// Sends a bodiless request and feeds each reply message to `each`: the nfgenmsg
    /// resource id (the CPU, for per-CPU statistics) and the attributes, until NLMSG_DONE
    /// or the acknowledgement.
    fn query(
        &mut self,
        message: u16,
        flags: u16,
        mut each: impl FnMut(u16, Attributes<'_>) -> Result<(), ParseError>,
    ) -> Result<(), ConntrackError> {
        let sequence = self.next_sequence();
        let request = RequestBuilder::new(
            &mut self.request,
            (NFNL_SUBSYS_CTNETLINK << 8) | message,
            flags,
            sequence,
            0,
        )
        .finish();
        self.socket.send(request, 0)?;
        self.replies(sequence, 1, |_, header, payload| {
            Ok(match header.kind {
                NLMSG_DONE => Reply::Finished,
                NLMSG_ERROR => {
                    kernel_error(payload)?;
                    Reply::Finished
                }
                _ => {
                    // nfgenmsg: family, version, resource id (big-endian).
                    let resource = payload
                        .get(2..4)
                        .map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
                    each(
                        resource,
                        Attributes::new(payload.get(NFGEN_LEN..).unwrap_or(&[])),
                    )?;
                    Reply::More
                }
            })
        })
    }
}
