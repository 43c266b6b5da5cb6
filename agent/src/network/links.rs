//! The interfaces of the agent's network namespace and their health: counters for every
//! interface but loopback (the node's NICs, bridges, tunnels and the pods' veths), and
//! for the node's own devices (not pod veths) their rings, channels and driver statistics.
//!
//! A table maps each interface index to its name, kind and, for a pod's veth, its pod.
//! It is filled by one link dump when the agent starts and kept current from the kernel's
//! link notifications (NEWLINK/DELLINK), drained without waiting at each scrape; a lost
//! notification (ENOBUFS) or one that does not parse is repaired by dumping again. Names,
//! kinds and pods are resolved once per interface, never per scrape.
//!
//! Counters come from `RTM_GETSTATS` requests filtered to `IFLA_STATS_LINK_64` (240
//! bytes per interface, the bare `struct rtnl_link_stats64`), one per followed interface,
//! all sent in one datagram. Kinds that carry no traffic of their own (dummy, nlmon, ifb)
//! are not followed: they get no request and no series. The kernel still finds each
//! followed device by index in a per-namespace hash whose chains grow with every device,
//! so a thousand unfollowed devices add about 10 µs to a refresh (BENCHMARKS.md, "Node
//! network metrics per scrape"). Measured once here with 202 interfaces: a GETSTATS dump
//! takes 19 µs and 47 KB and GETSTATS per index 101 µs when each request is its own send;
//! an `RTM_GETLINK` per index 309 µs and a GETLINK dump 212 µs, both 305 KB (the whole
//! link description: addresses, IPv6 settings, queues). A dump walks every link of the
//! namespace, ignored kinds too.

//! A reading is applied only if the table still names the same interface after the
//! notifications that arrived while it was taken: a device deleted, renamed or moved in
//! the meantime loses that reading instead of reporting another device's numbers under
//! its name (the ethtool ioctl names the device, so this matters for driver statistics).
//!
//! Which pod a veth belongs to is [`super::pod_veths`]' job; the rings, channels and
//! driver statistics of the node's own devices are [`super::node_devices`]'.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::interface_metrics::{InterfaceMetrics, InterfaceSeries, Labels};
use super::node_devices::{NodeDevice, NodeReader};
use super::pod_veths::{PodLookup, PodVeth};
use super::rtnetlink::{
    IF_OPER_UP, IFF_LOOPBACK, LinkMessage, LinkStats, RTM_DELLINK, RTM_NEWLINK, RTM_NEWSTATS,
    RTNLGRP_LINK, StatsMessage, link_dump_request, link_get_request, stats_get_request,
};
use crate::netlink::Messages;
use crate::netlink::socket::{Reply, RequestError, RequestSocket};

/// Pod veths whose addresses are asked for in one refresh (the rest wait for the next).
const ADDRESS_QUERIES_PER_REFRESH: usize = 16;
/// Receive buffer of the notification socket: a burst of pod churn is a few KiB per link.
const NOTIFICATION_BUFFER: usize = 4 << 20;
/// Most notification datagrams one drain reads (the rest wait for the next scrape).
const NOTIFICATION_DRAIN_MAX: usize = 100_000;
/// A failing request kind is logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(300);

/// What was asked of the kernel, for error counts and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    Links,
    Stats,
    Addresses,
    Rings,
    Channels,
    DriverStats,
    Notifications,
}

impl Request {
    const ALL: usize = 7;

    fn label(self) -> &'static str {
        match self {
            Self::Links => "links",
            Self::Stats => "stats",
            Self::Addresses => "addresses",
            Self::Rings => "rings",
            Self::Channels => "channels",
            Self::DriverStats => "driver_stats",
            Self::Notifications => "notifications",
        }
    }
}

/// Counts every failure, logs each kind at most every five minutes.
pub(super) struct Failures {
    last_log: [Option<Instant>; Request::ALL],
}

impl Failures {
    pub(super) fn report(
        &mut self,
        metrics: &InterfaceMetrics,
        request: Request,
        error: &dyn std::fmt::Display,
    ) {
        metrics.read_failed(request.label());
        let last = &mut self.last_log[request as usize];
        if last.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) {
            tracing::warn!("reading interface {}: {error}", request.label());
            *last = Some(Instant::now());
        }
    }
}

/// What an interface is to the metrics.
pub(super) enum Role {
    /// The node's own device: counters, and rings, channels and driver statistics.
    Node(Box<NodeDevice>),
    /// A pod's veth: counters, labelled with the pod once it is known.
    Pod(PodVeth),
}

/// One interface of the table.
pub(super) struct Interface {
    pub(super) name: String,
    kind: String,
    /// `IFLA_LINK` of a device whose lower device or peer is in this namespace.
    link: Option<u32>,
    up: bool,
    pub(super) role: Role,
    /// The counters read in this refresh, until they are applied.
    stats: Option<LinkStats>,
    /// Its counters' series, once any were written.
    series: Option<InterfaceSeries>,
    /// Seen by the dump of a resync in progress.
    seen: bool,
}

impl Interface {
    fn new(link: &LinkMessage<'_>) -> Self {
        let remote = link.remote_peer();
        Self {
            name: link.name.to_owned(),
            kind: link.kind.to_owned(),
            link: if remote.is_some() { None } else { link.link },
            up: link.operstate == Some(IF_OPER_UP),
            role: match remote {
                Some(peer) => Role::Pod(PodVeth::new(peer)),
                None => Role::Node(Box::default()),
            },
            stats: None,
            series: None,
            seen: true,
        }
    }

    /// True when `link` describes the same device under the same name.
    fn same(&self, link: &LinkMessage<'_>) -> bool {
        let peer = match &self.role {
            Role::Pod(veth) => Some(veth.peer),
            Role::Node(_) => None,
        };
        self.name == link.name && self.kind == link.kind && peer == link.remote_peer()
    }

    /// The pod's namespace and name, empty when there is none (yet).
    fn pod(&self) -> (&str, &str) {
        match &self.role {
            Role::Pod(PodVeth { pod: Some(pod), .. }) => (&pod.namespace, &pod.name),
            _ => ("", ""),
        }
    }

    fn labels(&self) -> Labels {
        let (namespace, pod) = self.pod();
        Labels {
            device: self.name.clone(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        }
    }

    /// True when the series written carry other labels than the interface has now.
    fn relabelled(&self) -> bool {
        let Some(series) = &self.series else {
            return false;
        };
        let (namespace, pod) = self.pod();
        let labels = &series.labels;
        labels.device != self.name || labels.namespace != namespace || labels.pod != pod
    }

    /// Removes every series written for this interface.
    fn remove_series(&mut self, metrics: &InterfaceMetrics) {
        let Some(series) = self.series.take() else {
            return;
        };
        let stats = match &mut self.role {
            Role::Node(device) => device.take_exported(),
            Role::Pod(_) => Vec::new(),
        };
        metrics.remove_interface(&series.labels, stats.iter().map(String::as_str));
    }
}

/// The interface table and its metrics.
struct Table {
    interfaces: HashMap<u32, Interface>,
    metrics: InterfaceMetrics,
    /// Veths to describe again: their peer left this namespace, which the kernel reports
    /// as the peer's DELLINK alone.
    recheck: Vec<u32>,
}

/// Link kinds not followed, so that a node with many of them pays nothing for them per
/// scrape: dummy and nlmon carry no traffic of the node's or its pods', and an ifb only
/// mirrors packets redirected from another device, which counts them itself.
const IGNORED_KINDS: [&str; 3] = ["dummy", "nlmon", "ifb"];

impl Table {
    /// Adds or updates an interface from a link message; a new name, kind or peer at a
    /// known index is a new interface (the old one's series go).
    fn upsert(&mut self, link: &LinkMessage<'_>) {
        if link.flags & IFF_LOOPBACK != 0 || IGNORED_KINDS.contains(&link.kind) {
            self.remove(link.index);
            return;
        }
        match self.interfaces.get_mut(&link.index) {
            Some(known) if known.same(link) => {
                known.up = link.operstate == Some(IF_OPER_UP);
                known.seen = true;
                if let Role::Node(device) = &mut known.role {
                    device.changed();
                }
            }
            _ => {
                if let Some(mut old) = self.interfaces.insert(link.index, Interface::new(link)) {
                    old.remove_series(&self.metrics);
                }
            }
        }
    }

    fn remove(&mut self, index: u32) {
        let Some(mut old) = self.interfaces.remove(&index) else {
            return;
        };
        old.remove_series(&self.metrics);
        if old.kind == "veth" {
            self.recheck.extend(
                self.interfaces
                    .iter()
                    .filter(|(_, other)| other.kind == "veth" && other.link == Some(index))
                    .map(|(index, _)| *index),
            );
        }
    }
}

/// The notification socket: link changes, read without waiting.
struct Notifications {
    socket: Socket,
    buffer: Vec<u8>,
}

impl Notifications {
    fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        socket.add_membership(RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        crate::netlink::set_receive_buffer(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            NOTIFICATION_BUFFER,
        );
        Ok(Self {
            socket,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }
}

/// The interfaces of the namespace the opening thread is in, and their metrics.
pub struct Links {
    route: RequestSocket,
    notifications: Notifications,
    node_devices: NodeReader,
    table: Table,
    lookup: Option<PodLookup>,
    failures: Failures,
    refreshes: u64,
    request: Vec<u8>,
}

impl Links {
    /// Subscribes to link notifications, lists the interfaces, and registers the metrics
    /// on `registry`. The sockets belong to the calling thread's network namespace.
    pub fn open(registry: &prometheus::Registry) -> Result<Self, RequestError> {
        // Subscribed before the dump: a change during the dump arrives as a notification.
        let notifications = Notifications::subscribe()?;
        let route = RequestSocket::open(NETLINK_ROUTE)?;
        // Needed for the address dump's target namespace and index filter.
        route.socket().set_netlink_get_strict_chk(true)?;
        let mut links = Self {
            route,
            notifications,
            node_devices: NodeReader::open(),
            table: Table {
                interfaces: HashMap::new(),
                metrics: InterfaceMetrics::new(registry),
                recheck: Vec::new(),
            },
            lookup: None,
            failures: Failures {
                last_log: [None; Request::ALL],
            },
            refreshes: 0,
            request: Vec::with_capacity(1024),
        };
        links.resync()?;
        Ok(links)
    }

    /// Every interface with counters, as `/diagnose` compares them (from the values the
    /// last refresh wrote).
    pub fn samples(&self) -> Vec<super::diagnose::InterfaceSample> {
        use super::diagnose::{InterfaceSample, LinkCounters};
        use super::interface_metrics::COUNTERS;
        let position = |name: &str| COUNTERS.iter().position(|(n, _, _)| *n == name);
        let positions = [
            "receive_packets",
            "receive_errs",
            "receive_drop",
            "receive_fifo",
            "receive_frame",
            "receive_missed",
            "receive_over",
            "receive_crc",
            "transmit_packets",
            "transmit_errs",
            "transmit_drop",
            "transmit_fifo",
            "transmit_carrier",
        ]
        .map(position);
        let mut samples: Vec<InterfaceSample> = self
            .table
            .interfaces
            .iter()
            .filter_map(|(index, interface)| {
                let series = interface.series.as_ref()?;
                let values = series.values();
                let v = |i: usize| positions[i].map_or(0, |p| values[p]);
                let counters = LinkCounters {
                    rx_packets: v(0),
                    rx_errors: v(1),
                    rx_dropped: v(2),
                    rx_fifo: v(3),
                    rx_frame: v(4),
                    rx_missed: v(5),
                    rx_over: v(6),
                    rx_crc: v(7),
                    tx_packets: v(8),
                    tx_errors: v(9),
                    tx_dropped: v(10),
                    tx_fifo: v(11),
                    tx_carrier: v(12),
                };
                let (ring_rx, driver_drops) = match &interface.role {
                    Role::Node(device) => {
                        let mut drops = Vec::new();
                        device.loss_stats(&mut drops);
                        (device.ring_rx(), drops)
                    }
                    Role::Pod(_) => (None, Vec::new()),
                };
                let labels = &series.labels;
                Some(InterfaceSample {
                    index: *index,
                    name: interface.name.clone(),
                    kind: interface.kind.clone(),
                    pod: (!labels.pod.is_empty())
                        .then(|| format!("{}/{}", labels.namespace, labels.pod)),
                    counters,
                    ring_rx,
                    driver_drops,
                })
            })
            .collect();
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        samples
    }

    /// Sets how a veth's peer address is turned into its pod.
    pub fn set_pod_lookup(&mut self, lookup: PodLookup) {
        self.lookup = Some(lookup);
    }

    /// Brings the table up to date and the metrics with it.
    pub fn refresh(&mut self) {
        self.refreshes += 1;
        self.follow_notifications();
        self.resolve_pods();
        self.read_counters();
        self.node_devices.read(
            &mut self.table.interfaces,
            &mut self.failures,
            &self.table.metrics,
        );
        // What changed while the readings were taken drops them (see the module doc).
        self.follow_notifications();
        self.apply();
    }

    /// Lists every link and makes the table match: links not listed are gone.
    fn resync(&mut self) -> Result<(), RequestError> {
        for interface in self.table.interfaces.values_mut() {
            interface.seen = false;
        }
        let sequence = self.route.reserve(1);
        link_dump_request(&mut self.request, sequence);
        let table = &mut self.table;
        self.route
            .exchange(&self.request, sequence, 1, |_, reply| match reply {
                Reply::Message(header, payload) if header.kind == RTM_NEWLINK => {
                    table.upsert(&LinkMessage::parse(payload)?);
                    Ok(())
                }
                Reply::Message(..) => Ok(()),
                Reply::Refused(errno) => Err(RequestError::Io(io::Error::from_raw_os_error(errno))),
            })?;
        let gone: Vec<u32> = table
            .interfaces
            .iter()
            .filter(|(_, interface)| !interface.seen)
            .map(|(index, _)| *index)
            .collect();
        for index in gone {
            table.remove(index);
        }
        Ok(())
    }

    /// Describes one link again (`RTM_GETLINK` of its index).
    fn describe(&mut self, index: u32) -> Result<(), RequestError> {
        let sequence = self.route.reserve(1);
        self.request.clear();
        link_get_request(&mut self.request, sequence, index);
        let table = &mut self.table;
        self.route
            .exchange(&self.request, sequence, 1, |_, reply| match reply {
                Reply::Message(header, payload) if header.kind == RTM_NEWLINK => {
                    table.upsert(&LinkMessage::parse(payload)?);
                    Ok(())
                }
                Reply::Message(..) => Ok(()),
                Reply::Refused(libc::ENODEV) => {
                    table.remove(index);
                    Ok(())
                }
                Reply::Refused(errno) => Err(RequestError::Io(io::Error::from_raw_os_error(errno))),
            })
    }

    /// Applies the queued link notifications; resyncs when some were lost or unreadable.
    fn follow_notifications(&mut self) {
        let mut lost = false;
        for _ in 0..NOTIFICATION_DRAIN_MAX {
            let buffer = &mut self.notifications.buffer;
            buffer.clear();
            match self.notifications.socket.recv(buffer, libc::MSG_TRUNC) {
                Ok(length) if length > buffer.capacity() => {
                    self.failures.report(
                        &self.table.metrics,
                        Request::Notifications,
                        &format!("a {length}-byte notification did not fit"),
                    );
                    lost = true;
                }
                Ok(_) => {
                    for message in Messages::new(buffer) {
                        let parsed = message.and_then(|(header, payload)| {
                            match header.kind {
                                RTM_NEWLINK => self.table.upsert(&LinkMessage::parse(payload)?),
                                RTM_DELLINK => {
                                    self.table.remove(LinkMessage::parse(payload)?.index)
                                }
                                _ => {}
                            }
                            Ok(())
                        });
                        if let Err(error) = parsed {
                            self.failures.report(
                                &self.table.metrics,
                                Request::Notifications,
                                &error,
                            );
                            lost = true;
                            break;
                        }
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // The kernel dropped notifications: what is queued after this is newer.
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => lost = true,
                Err(error) => {
                    self.failures
                        .report(&self.table.metrics, Request::Notifications, &error);
                    break;
                }
            }
        }
        if lost && let Err(error) = self.resync() {
            self.failures
                .report(&self.table.metrics, Request::Links, &error);
        }
        // Each describe may remove a veth and queue its own peer: bounded by the table.
        while let Some(index) = self.table.recheck.pop() {
            if self.table.interfaces.contains_key(&index)
                && let Err(error) = self.describe(index)
            {
                self.failures
                    .report(&self.table.metrics, Request::Links, &error);
            }
        }
    }

    /// Finds the pods of veths not resolved yet: a bounded number of address queries per
    /// refresh, and a lookup of the addresses found at each refresh until a pod holds one
    /// (the pod index may learn of the pod after the veth appears).
    fn resolve_pods(&mut self) {
        let Some(lookup) = &self.lookup else {
            return;
        };
        let mut queries = 0;
        for interface in self.table.interfaces.values_mut() {
            let Role::Pod(veth) = &mut interface.role else {
                continue;
            };
            if queries < ADDRESS_QUERIES_PER_REFRESH && veth.wants_addresses(self.refreshes) {
                queries += 1;
                if let Err(error) =
                    veth.ask_addresses(&mut self.route, &mut self.request, self.refreshes)
                {
                    self.failures
                        .report(&self.table.metrics, Request::Addresses, &error);
                }
            }
            veth.look_up(lookup);
        }
    }

    /// Reads the counters of every interface (one dump) into the table.
    fn read_counters(&mut self) {
        // One request per followed interface, all in one send: the cost follows the
        // interfaces that matter, not every link of the namespace (a dump would walk
        // ignored kinds too).
        let count = self.table.interfaces.len();
        let first = self.route.reserve(count);
        self.request.clear();
        for (i, index) in self.table.interfaces.keys().enumerate() {
            stats_get_request(&mut self.request, first.wrapping_add(i as u32), *index);
        }
        let interfaces = &mut self.table.interfaces;
        let result = self
            .route
            .exchange(&self.request, first, count, |_, reply| match reply {
                Reply::Message(header, payload) if header.kind == RTM_NEWSTATS => {
                    let message = StatsMessage::parse(payload)?;
                    if let Some(interface) = interfaces.get_mut(&message.index) {
                        interface.stats = Some(message.stats);
                    }
                    Ok(())
                }
                Reply::Message(..) => Ok(()),
                // Deleted since the table last heard of it: its DELLINK is on its way.
                Reply::Refused(errno) if errno == libc::ENODEV => Ok(()),
                Reply::Refused(errno) => Err(RequestError::Io(io::Error::from_raw_os_error(errno))),
            });
        if let Err(error) = result {
            self.failures
                .report(&self.table.metrics, Request::Stats, &error);
        }
    }

    /// Writes the readings of this refresh into the metrics. Nothing here allocates
    /// unless an interface is new or its labels or statistics' names changed.
    fn apply(&mut self) {
        let metrics = &self.table.metrics;
        for interface in self.table.interfaces.values_mut() {
            if interface.relabelled() {
                interface.remove_series(metrics);
            }
            let Some(stats) = interface.stats.take() else {
                continue;
            };
            if interface.series.is_none() {
                interface.series = Some(metrics.interface_series(interface.labels()));
            }
            let series = interface.series.as_ref().expect("set above");
            series.set(&stats, interface.up);
            if let Role::Node(device) = &mut interface.role {
                device.apply(metrics, &series.labels.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pod_veths::PodName;
    use super::*;

    fn table() -> Table {
        Table {
            interfaces: HashMap::new(),
            metrics: InterfaceMetrics::new(&prometheus::Registry::new()),
            recheck: Vec::new(),
        }
    }

    fn link(index: u32, name: &'static str) -> LinkMessage<'static> {
        LinkMessage {
            index,
            name,
            operstate: Some(IF_OPER_UP),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_follows_new_renamed_moved_and_deleted_links() {
        let mut table = table();
        table.upsert(&LinkMessage {
            flags: IFF_LOOPBACK,
            ..link(1, "lo")
        });
        assert!(table.interfaces.is_empty(), "loopback is left out");
        table.upsert(&link(2, "eth0"));
        let pod = LinkMessage {
            kind: "veth",
            link: Some(2),
            link_netns_id: Some(0),
            ..link(7, "veth1")
        };
        table.upsert(&pod);
        assert!(matches!(table.interfaces[&7].role, Role::Pod(_)));
        assert!(matches!(table.interfaces[&2].role, Role::Node(_)));
        // A state change keeps the interface (and its resolved pod).
        if let Role::Pod(veth) = &mut table.interfaces.get_mut(&7).unwrap().role {
            veth.pod = Some(PodName {
                namespace: "shop".into(),
                name: "cart".into(),
            });
        }
        table.upsert(&LinkMessage {
            operstate: Some(2),
            ..pod
        });
        assert!(!table.interfaces[&7].up);
        assert_eq!(table.interfaces[&7].labels().pod, "cart");
        // The same index under another name is another interface.
        table.upsert(&link(7, "renamed"));
        assert_eq!(table.interfaces[&7].labels().pod, "");
        assert!(matches!(table.interfaces[&7].role, Role::Node(_)));
        table.remove(7);
        table.remove(99);
        assert_eq!(table.interfaces.keys().collect::<Vec<_>>(), [&2]);
        assert!(table.recheck.is_empty());
    }

    #[test]
    fn a_veth_whose_peer_leaves_is_described_again() {
        let mut table = table();
        let veth = |index, name, peer| LinkMessage {
            kind: "veth",
            link: Some(peer),
            ..link(index, name)
        };
        table.upsert(&veth(3, "host0", 4));
        table.upsert(&veth(4, "peer0", 3));
        table.upsert(&veth(5, "other", 6));
        // peer0 moves to a pod's namespace: here, that is its DELLINK alone.
        table.remove(4);
        assert_eq!(table.recheck, [3]);
    }
}
