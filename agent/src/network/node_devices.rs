//! The node's own devices (NICs, bridges, tunnels, a veth with both ends on the node; not
//! pods' veths, which a node has hundreds of): ring sizes and channel counts through the
//! ethtool netlink family, one send for every device, and driver statistics through the
//! ethtool ioctl. A driver that does not support one of them (EOPNOTSUPP) is remembered
//! and not asked again; that is not an error.

use std::collections::{HashMap, HashSet};
use std::io;

use netlink_sys::protocols::NETLINK_GENERIC;
use prometheus::IntCounter;

use super::driver_stats::{DriverStatsError, DriverStatsReader};
use super::ethtool::{self, Channels, Query, Rings};
use super::interface_metrics::{InterfaceMetrics, set_counter};
use super::links::{Failures, Interface, Request, Role};
use crate::netlink::socket::{Reply, RequestError, RequestSocket};

/// Driver statistics exported per device; a driver with more (per-queue counters of a
/// many-queue NIC) has the rest left out, and that is logged once.
pub const MAX_DRIVER_STATS: usize = 1024;

/// What an ethtool query said in this refresh, until it is applied.
#[derive(Default)]
enum Answer<T> {
    #[default]
    Nothing,
    Values(T),
    /// The driver does not support it (EOPNOTSUPP): its series go, and it is not asked
    /// again.
    Unsupported,
}

/// The driver statistics of a node device.
#[derive(Default)]
struct DriverStats {
    unsupported: bool,
    /// The statistics' names (the first [`MAX_DRIVER_STATS`]; a repeated name is kept
    /// once, the repeats are empty and skipped).
    names: Vec<String>,
    /// `names` changed since their series were made.
    renamed: bool,
    /// How many the driver had when `names` were read; 0 before the first read.
    count: u32,
    /// Read the names again (the device changed, or its count did).
    stale: bool,
    values: Vec<u64>,
    /// `values` were read in this refresh.
    fresh: bool,
    /// The names whose series exist, under the interface's device label, and the series
    /// (None for a repeated name).
    exported: Vec<String>,
    series: Vec<Option<IntCounter>>,
    cut_logged: bool,
}

/// The ethtool state of a node device.
#[derive(Default)]
pub struct NodeDevice {
    rings_unsupported: bool,
    channels_unsupported: bool,
    /// Which ring and channel series exist (a bit per gauge).
    rings_present: u8,
    channels_present: u8,
    rings: Answer<Rings<'static>>,
    channels: Answer<Channels<'static>>,
    driver: DriverStats,
    /// The RX ring (current, maximum) last read, for `/diagnose`.
    ring_rx: Option<(u32, u32)>,
}

/// Whether a driver statistic's name tells of loss (`rx_queue_3_drops`, `rx_discards`,
/// `rx_missed_errors`...), for `/diagnose`.
fn tells_of_loss(name: &str) -> bool {
    name.contains("drop") || name.contains("discard") || name.contains("miss")
}

impl NodeDevice {
    /// The RX ring (current, maximum), where the driver reports it.
    pub fn ring_rx(&self) -> Option<(u32, u32)> {
        self.ring_rx
    }

    /// The driver statistics that tell of loss, with their last values.
    pub fn loss_stats(&self, out: &mut Vec<(String, u64)>) {
        out.clear();
        for (name, series) in self.driver.exported.iter().zip(&self.driver.series) {
            if let Some(series) = series
                && tells_of_loss(name)
            {
                out.push((name.clone(), series.get()));
            }
        }
    }

    /// The device changed (a link notification): read its statistics' names again.
    pub fn changed(&mut self) {
        self.driver.stale = true;
    }

    /// Forgets the driver statistics' series and returns the names they were under, for
    /// the caller to remove them.
    pub fn take_exported(&mut self) -> Vec<String> {
        self.rings_present = 0;
        self.channels_present = 0;
        self.driver.series.clear();
        self.driver.renamed = true;
        std::mem::take(&mut self.driver.exported)
    }

    /// Writes this refresh's answers into the metrics under `device`.
    pub fn apply(&mut self, metrics: &InterfaceMetrics, device: &str) {
        match std::mem::take(&mut self.rings) {
            Answer::Values(rings) => {
                self.ring_rx = rings.rx.zip(rings.rx_max);
                metrics.set_rings(device, &rings, &mut self.rings_present);
            }
            Answer::Unsupported => {
                self.ring_rx = None;
                metrics.remove_rings(device, &mut self.rings_present);
            }
            Answer::Nothing => {}
        }
        match std::mem::take(&mut self.channels) {
            Answer::Values(channels) => {
                metrics.set_channels(device, &channels, &mut self.channels_present)
            }
            Answer::Unsupported => metrics.remove_channels(device, &mut self.channels_present),
            Answer::Nothing => {}
        }
        let driver = &mut self.driver;
        let fresh = std::mem::take(&mut driver.fresh);
        if driver.renamed {
            for stat in &driver.exported {
                metrics.remove_driver_stat(device, stat);
            }
            driver.series.clear();
            driver.exported.clear();
            if fresh {
                // A repeated name (left empty) gets no series.
                driver.series.extend(
                    driver
                        .names
                        .iter()
                        .map(|stat| (!stat.is_empty()).then(|| metrics.driver_stat(device, stat))),
                );
                driver.exported.clone_from(&driver.names);
                driver.renamed = false;
            }
        }
        if fresh {
            for (series, value) in driver.series.iter().zip(&driver.values) {
                if let Some(series) = series {
                    set_counter(series, *value);
                }
            }
        }
    }
}

/// The ethtool netlink family, when the kernel has it.
struct Ethtool {
    socket: RequestSocket,
    family: u16,
}

/// Reads the node devices' rings, channels and driver statistics.
pub struct NodeReader {
    ethtool: Option<Ethtool>,
    driver: Option<DriverStatsReader>,
    request: Vec<u8>,
    /// The index and query of each ethtool request of a send.
    queries: Vec<(u32, Query)>,
    names: Vec<String>,
}

impl NodeReader {
    /// Opens the sockets in the calling thread's network namespace; what cannot be opened
    /// is logged once and left out.
    pub fn open() -> Self {
        let mut request = Vec::with_capacity(1024);
        let ethtool = match RequestSocket::open(NETLINK_GENERIC) {
            Ok(mut socket) => match ethtool::resolve_family(&mut socket, &mut request) {
                Ok(Some(family)) => Some(Ethtool { socket, family }),
                Ok(None) => {
                    tracing::info!("no ethtool netlink family: no ring or channel metrics");
                    None
                }
                Err(error) => {
                    tracing::info!(
                        "no ethtool netlink family ({error}): no ring or channel metrics"
                    );
                    None
                }
            },
            Err(error) => {
                tracing::info!("no generic netlink socket ({error}): no ring or channel metrics");
                None
            }
        };
        let driver = DriverStatsReader::open()
            .inspect_err(|error| {
                tracing::info!("no socket for ethtool ioctls ({error}): no driver statistics")
            })
            .ok();
        Self {
            ethtool,
            driver,
            request,
            queries: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Reads every node device of `interfaces` into its [`NodeDevice`].
    pub fn read(
        &mut self,
        interfaces: &mut HashMap<u32, Interface>,
        failures: &mut Failures,
        metrics: &InterfaceMetrics,
    ) {
        self.read_rings_and_channels(interfaces, failures, metrics);
        let Some(reader) = &mut self.driver else {
            return;
        };
        for interface in interfaces.values_mut() {
            let Role::Node(device) = &mut interface.role else {
                continue;
            };
            let driver = &mut device.driver;
            if driver.unsupported {
                continue;
            }
            match read_driver_stats(reader, &interface.name, driver, &mut self.names) {
                Ok(()) => {}
                Err(error) if error.unsupported() => {
                    driver.unsupported = true;
                    // Its series (if any) go at the next apply.
                    driver.names.clear();
                    driver.renamed = true;
                }
                // Gone since the last notifications, or its count grew past the buffer.
                Err(DriverStatsError::Io(error))
                    if matches!(error.raw_os_error(), Some(libc::ENODEV | libc::EFAULT)) =>
                {
                    driver.stale = true;
                }
                Err(error) => {
                    driver.stale = true;
                    failures.report(metrics, Request::DriverStats, &error);
                }
            }
            if driver.count as usize > MAX_DRIVER_STATS && !driver.cut_logged {
                tracing::info!(
                    "{}: only the first {MAX_DRIVER_STATS} of {} driver statistics are exported",
                    interface.name,
                    driver.count
                );
                driver.cut_logged = true;
            }
        }
    }

    /// One send for every ring and channel query of the node devices that answer them.
    fn read_rings_and_channels(
        &mut self,
        interfaces: &mut HashMap<u32, Interface>,
        failures: &mut Failures,
        metrics: &InterfaceMetrics,
    ) {
        let Some(ethtool) = &mut self.ethtool else {
            return;
        };
        self.queries.clear();
        for (index, interface) in interfaces.iter() {
            if let Role::Node(device) = &interface.role {
                if !device.rings_unsupported {
                    self.queries.push((*index, Query::Rings));
                }
                if !device.channels_unsupported {
                    self.queries.push((*index, Query::Channels));
                }
            }
        }
        let first = ethtool.socket.reserve(self.queries.len());
        self.request.clear();
        for (i, (index, query)) in self.queries.iter().enumerate() {
            ethtool::append_request(
                &mut self.request,
                ethtool.family,
                first.wrapping_add(i as u32),
                *query,
                *index,
            );
        }
        let queries = &self.queries;
        let mut refused: Option<(Query, i32)> = None;
        let result = ethtool
            .socket
            .exchange(&self.request, first, queries.len(), |i, reply| {
                let (index, query) = queries[i];
                let Some(Interface {
                    role: Role::Node(device),
                    ..
                }) = interfaces.get_mut(&index)
                else {
                    return Ok(());
                };
                match (reply, query) {
                    (Reply::Message(_, payload), Query::Rings) => {
                        let rings = Rings::parse(payload)?;
                        if rings.device.index == index {
                            device.rings = Answer::Values(rings.detached());
                        }
                    }
                    (Reply::Message(_, payload), Query::Channels) => {
                        let channels = Channels::parse(payload)?;
                        if channels.device.index == index {
                            device.channels = Answer::Values(channels.detached());
                        }
                    }
                    (Reply::Refused(libc::EOPNOTSUPP), Query::Rings) => {
                        device.rings_unsupported = true;
                        device.rings = Answer::Unsupported;
                    }
                    (Reply::Refused(libc::EOPNOTSUPP), Query::Channels) => {
                        device.channels_unsupported = true;
                        device.channels = Answer::Unsupported;
                    }
                    // Gone since the last notifications: its DELLINK follows.
                    (Reply::Refused(libc::ENODEV), _) => {}
                    (Reply::Refused(errno), query) => refused = Some((query, errno)),
                }
                Ok::<_, RequestError>(())
            });
        if let Err(error) = result {
            failures.report(metrics, Request::Rings, &error);
        }
        if let Some((query, errno)) = refused {
            let request = match query {
                Query::Rings => Request::Rings,
                Query::Channels => Request::Channels,
            };
            failures.report(metrics, request, &io::Error::from_raw_os_error(errno));
        }
    }
}

/// Reads a device's driver statistics into `driver`: the names when they are stale or
/// not read yet, then the values. A count that changed between two calls (channels added
/// or removed) reads the names again, once.
fn read_driver_stats(
    reader: &mut DriverStatsReader,
    device: &str,
    driver: &mut DriverStats,
    names: &mut Vec<String>,
) -> Result<(), DriverStatsError> {
    driver.fresh = false;
    for _ in 0..2 {
        if driver.stale || driver.count == 0 {
            let Some(count) = reader.count(device)? else {
                return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP).into());
            };
            if reader.names(device, count, MAX_DRIVER_STATS, names)? != count {
                continue;
            }
            let mut seen = HashSet::with_capacity(names.len());
            for name in names.iter_mut() {
                if !seen.insert(name.clone()) {
                    name.clear();
                }
            }
            if driver.names != *names {
                std::mem::swap(&mut driver.names, names);
                driver.renamed = true;
            }
            driver.count = count;
            driver.stale = false;
        }
        let read = reader.values(device, driver.count, driver.names.len(), &mut driver.values)?;
        if read == driver.count {
            driver.fresh = true;
            return Ok(());
        }
        driver.stale = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &prometheus::Registry) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn driver_statistics_series_follow_their_names() {
        let registry = prometheus::Registry::new();
        let metrics = InterfaceMetrics::new(&registry);
        let mut device = NodeDevice::default();
        let driver = &mut device.driver;
        driver.names = vec!["rx_drops".into(), String::new(), "tx_drops".into()];
        driver.renamed = true;
        driver.values = vec![5, 6, 7];
        driver.fresh = true;
        device.apply(&metrics, "eth0");
        let text = render(&registry);
        assert!(
            text.contains("flowex_network_driver_stat_total{device=\"eth0\",stat=\"rx_drops\"} 5")
        );
        assert!(
            text.contains("flowex_network_driver_stat_total{device=\"eth0\",stat=\"tx_drops\"} 7")
        );
        assert!(!text.contains("stat=\"\""), "a repeated name has no series");
        // Not read this time: the values stay.
        device.apply(&metrics, "eth0");
        assert_eq!(render(&registry), text);
        // Other names: the old series go when the new ones are read.
        let driver = &mut device.driver;
        driver.names = vec!["rx_queue_0_drops".into()];
        driver.renamed = true;
        driver.values = vec![1];
        driver.fresh = true;
        device.apply(&metrics, "eth0");
        let text = render(&registry);
        assert!(!text.contains("stat=\"rx_drops\""));
        assert!(text.contains("stat=\"rx_queue_0_drops\"} 1"));
        let exported = device.take_exported();
        assert_eq!(exported, ["rx_queue_0_drops"]);
    }
}
