//! The per-interface metrics: what is exported, under which names and labels, and how a
//! kernel reading becomes a Prometheus value.
//!
//! Counters carry the kernel's own value (not a sum of differences): a device's counters
//! only fall when the device is re-created or its driver resets them, and Prometheus reads
//! a fall as a counter reset, which is what it is. The series of a device that goes away
//! (deleted, renamed, moved to another namespace, or relabelled once its pod is known)
//! are removed, so a name that comes back starts a series of its own.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::ethtool::{Channels, Rings};
use super::rtnetlink::LinkStats;

/// An exported counter: the middle of its name, its help, and the field it reads.
pub type Counter = (&'static str, &'static str, fn(&LinkStats) -> u64);

/// The counters of `struct rtnl_link_stats64` that are exported, as
/// `flowex_network_<name>_total{device, namespace, pod}`. Each is one kernel field (where
/// node_exporter's /proc/net/dev reading sums several into "frame" and "drop", these stay
/// apart). Left out: multicast and collisions (not health on a modern node),
/// rx_length_errors, tx_aborted/heartbeat/window errors (all inside the errs totals, and
/// zero for virtual devices), the compressed counters (cslip), and rx_nohandler /
/// rx_otherhost_dropped (packets nobody wanted, not lost).
pub const COUNTERS: [Counter; 15] = [
    ("receive_bytes", "Bytes received (rx_bytes).", |s| {
        s.rx_bytes
    }),
    ("receive_packets", "Packets received (rx_packets).", |s| {
        s.rx_packets
    }),
    (
        "receive_errs",
        "Bad packets received, all receive errors together (rx_errors).",
        |s| s.rx_errors,
    ),
    (
        "receive_drop",
        "Good packets dropped on receive, no room or filtered by the device (rx_dropped; a veth counts what its peer could not deliver).",
        |s| s.rx_dropped,
    ),
    (
        "receive_fifo",
        "Receive FIFO overruns (rx_fifo_errors).",
        |s| s.rx_fifo_errors,
    ),
    (
        "receive_frame",
        "Frames with alignment errors (rx_frame_errors).",
        |s| s.rx_frame_errors,
    ),
    (
        "receive_missed",
        "Packets the NIC missed for lack of host buffers (rx_missed_errors).",
        |s| s.rx_missed_errors,
    ),
    (
        "receive_over",
        "Packets larger than the receive buffer, or receive ring overflows (rx_over_errors).",
        |s| s.rx_over_errors,
    ),
    (
        "receive_crc",
        "Packets received with a bad CRC (rx_crc_errors).",
        |s| s.rx_crc_errors,
    ),
    ("transmit_bytes", "Bytes transmitted (tx_bytes).", |s| {
        s.tx_bytes
    }),
    (
        "transmit_packets",
        "Packets transmitted (tx_packets).",
        |s| s.tx_packets,
    ),
    (
        "transmit_errs",
        "Transmit errors, all kinds together (tx_errors).",
        |s| s.tx_errors,
    ),
    (
        "transmit_drop",
        "Packets dropped on transmit, e.g. no room in the queue, or a veth whose peer is down (tx_dropped).",
        |s| s.tx_dropped,
    ),
    (
        "transmit_fifo",
        "Transmit FIFO underruns (tx_fifo_errors).",
        |s| s.tx_fifo_errors,
    ),
    (
        "transmit_carrier",
        "Transmits that failed for loss of carrier (tx_carrier_errors).",
        |s| s.tx_carrier_errors,
    ),
];

/// The label values of one interface's series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub device: String,
    /// The pod's namespace, empty for a node interface (or a pod not known yet).
    pub namespace: String,
    pub pod: String,
}

impl Labels {
    fn values(&self) -> [&str; 3] {
        [&self.device, &self.namespace, &self.pod]
    }
}

/// The series of one interface's counters and state, looked up once: a refresh sets
/// them without hashing label values again.
pub struct InterfaceSeries {
    pub labels: Labels,
    counters: [IntCounter; COUNTERS.len()],
    up: IntGauge,
}

impl InterfaceSeries {
    /// The counters as last set (the kernel's values), in the order of [`COUNTERS`].
    pub fn values(&self) -> [u64; COUNTERS.len()] {
        std::array::from_fn(|i| self.counters[i].get())
    }

    /// Sets the counters and the state.
    pub fn set(&self, stats: &LinkStats, up: bool) {
        for (counter, (_, _, field)) in self.counters.iter().zip(COUNTERS) {
            set_counter(counter, field(stats));
        }
        self.up.set(i64::from(up));
    }
}

/// The ring gauges: rx, rx max, tx, tx max.
const RINGS: [(&str, &str); 4] = [
    (
        "flowex_network_ring_rx_current",
        "Receive ring size in descriptors (ethtool -g).",
    ),
    (
        "flowex_network_ring_rx_max",
        "Largest receive ring the NIC supports.",
    ),
    (
        "flowex_network_ring_tx_current",
        "Transmit ring size in descriptors.",
    ),
    (
        "flowex_network_ring_tx_max",
        "Largest transmit ring the NIC supports.",
    ),
];

/// The channel gauges: (current, max) of rx, tx and combined.
const CHANNELS: [(&str, &str); 6] = [
    (
        "flowex_network_channels_rx_current",
        "Receive-only channels (queues) in use (ethtool -l); only for NICs that have them.",
    ),
    (
        "flowex_network_channels_rx_max",
        "Most receive-only channels the NIC supports.",
    ),
    (
        "flowex_network_channels_tx_current",
        "Transmit-only channels in use; only for NICs that have them.",
    ),
    (
        "flowex_network_channels_tx_max",
        "Most transmit-only channels the NIC supports.",
    ),
    (
        "flowex_network_channels_combined_current",
        "Combined (receive and transmit) channels in use.",
    ),
    (
        "flowex_network_channels_combined_max",
        "Most combined channels the NIC supports.",
    ),
];

/// Every per-interface metric, registered once.
pub struct InterfaceMetrics {
    counters: [IntCounterVec; COUNTERS.len()],
    up: IntGaugeVec,
    rings: [IntGaugeVec; RINGS.len()],
    channels: [IntGaugeVec; CHANNELS.len()],
    driver: IntCounterVec,
    errors: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are constants and unique: registration cannot fail.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

/// Sets a counter to the kernel's value: a lower value is a reset.
pub fn set_counter(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value < current {
        counter.reset();
        counter.inc_by(value);
    } else {
        counter.inc_by(value - current);
    }
}

impl InterfaceMetrics {
    /// Registers the metrics on `registry`.
    pub fn new(registry: &Registry) -> Self {
        let interface_labels = ["device", "namespace", "pod"];
        let gauges = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["device"]).expect("valid metric"),
            )
        };
        Self {
            counters: COUNTERS.map(|(name, help, _)| {
                register(
                    registry,
                    IntCounterVec::new(
                        Opts::new(format!("flowex_network_{name}_total"), help),
                        &interface_labels,
                    )
                    .expect("valid metric"),
                )
            }),
            up: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowex_network_up",
                        "1 when the interface's operational state is up (RFC 2863), else 0.",
                    ),
                    &interface_labels,
                )
                .expect("valid metric"),
            ),
            rings: RINGS.map(|(name, help)| gauges(name, help)),
            channels: CHANNELS.map(|(name, help)| gauges(name, help)),
            driver: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowex_network_driver_stat_total",
                        "A driver's own statistic (ethtool -S) of a node interface, by name; the kernel's value as is (a few drivers report levels, not counts, under some names).",
                    ),
                    &["device", "stat"],
                )
                .expect("valid metric"),
            ),
            errors: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowex_network_interface_read_errors_total",
                        "Failed reads of interface data, by request (links, stats, addresses, rings, channels, driver_stats, notifications); a driver that does not support a request is not an error.",
                    ),
                    &["request"],
                )
                .expect("valid metric"),
            ),
        }
    }

    /// The series of an interface's counters and state under `labels` (created now).
    pub fn interface_series(&self, labels: Labels) -> InterfaceSeries {
        let values = labels.values();
        InterfaceSeries {
            counters: std::array::from_fn(|i| self.counters[i].with_label_values(&values)),
            up: self.up.with_label_values(&values),
            labels,
        }
    }

    /// Removes every series of an interface: its counters and state, and (for a node
    /// interface) its rings, channels and the driver statistics named `stats`.
    pub fn remove_interface<'a>(&self, labels: &Labels, stats: impl Iterator<Item = &'a str>) {
        let values = labels.values();
        for vec in &self.counters {
            let _ = vec.remove_label_values(&values);
        }
        let _ = self.up.remove_label_values(&values);
        for gauge in self.rings.iter().chain(&self.channels) {
            let _ = gauge.remove_label_values(&[&labels.device]);
        }
        for stat in stats {
            let _ = self.driver.remove_label_values(&[&labels.device, stat]);
        }
    }

    /// Sets the ring gauges the driver reported and removes those it no longer reports.
    /// `present` keeps which of the device's ring series exist (a bit each), so a gauge
    /// that stays absent costs nothing.
    pub fn set_rings(&self, device: &str, rings: &Rings<'_>, present: &mut u8) {
        let values = [rings.rx, rings.rx_max, rings.tx, rings.tx_max];
        set_gauges(&self.rings, device, values, present);
    }

    /// Sets the channel gauges: rx and tx only when the NIC has such channels (a count or
    /// a maximum above 0), combined whenever reported. `present` as for
    /// [`InterfaceMetrics::set_rings`].
    pub fn set_channels(&self, device: &str, channels: &Channels<'_>, present: &mut u8) {
        let has = |current: Option<u32>, max: Option<u32>| {
            current.unwrap_or(0) > 0 || max.unwrap_or(0) > 0
        };
        let rx = has(channels.rx, channels.rx_max);
        let tx = has(channels.tx, channels.tx_max);
        let values = [
            channels.rx.filter(|_| rx),
            channels.rx_max.filter(|_| rx),
            channels.tx.filter(|_| tx),
            channels.tx_max.filter(|_| tx),
            channels.combined,
            channels.combined_max,
        ];
        set_gauges(&self.channels, device, values, present);
    }

    /// Removes the ring series of `device` that `present` marks.
    pub fn remove_rings(&self, device: &str, present: &mut u8) {
        set_gauges(&self.rings, device, [None; RINGS.len()], present);
    }

    /// Removes the channel series of `device` that `present` marks.
    pub fn remove_channels(&self, device: &str, present: &mut u8) {
        set_gauges(&self.channels, device, [None; CHANNELS.len()], present);
    }

    /// The series of one driver statistic (created now).
    pub fn driver_stat(&self, device: &str, stat: &str) -> IntCounter {
        self.driver.with_label_values(&[device, stat])
    }

    /// Removes one driver statistic's series.
    pub fn remove_driver_stat(&self, device: &str, stat: &str) {
        let _ = self.driver.remove_label_values(&[device, stat]);
    }

    /// Counts a failed read of `request`.
    pub fn read_failed(&self, request: &str) {
        self.errors.with_label_values(&[request]).inc();
    }
}

/// Sets each gauge to its value, or removes its series when the value is gone; bit `i` of
/// `present` says whether gauge `i`'s series exists.
fn set_gauges<const N: usize>(
    gauges: &[IntGaugeVec],
    device: &str,
    values: [Option<u32>; N],
    present: &mut u8,
) {
    for (i, (gauge, value)) in gauges.iter().zip(values).enumerate() {
        let bit = 1 << i;
        match value {
            Some(value) => {
                gauge.with_label_values(&[device]).set(i64::from(value));
                *present |= bit;
            }
            None if *present & bit != 0 => {
                let _ = gauge.remove_label_values(&[device]);
                *present &= !bit;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_the_kernel_value_and_a_fall_is_a_reset() {
        let counter = IntCounter::new("c", "c").unwrap();
        set_counter(&counter, 10);
        set_counter(&counter, 25);
        assert_eq!(counter.get(), 25);
        set_counter(&counter, 3);
        assert_eq!(counter.get(), 3);
        set_counter(&counter, u64::MAX);
        assert_eq!(counter.get(), u64::MAX);
    }

    #[test]
    fn each_exported_counter_reads_its_own_field() {
        let mut stats = LinkStats {
            rx_bytes: 1,
            rx_packets: 2,
            rx_errors: 3,
            rx_dropped: 4,
            rx_fifo_errors: 5,
            rx_frame_errors: 6,
            rx_missed_errors: 7,
            rx_over_errors: 8,
            rx_crc_errors: 9,
            tx_bytes: 10,
            tx_packets: 11,
            tx_errors: 12,
            tx_dropped: 13,
            tx_fifo_errors: 14,
            tx_carrier_errors: 15,
            ..Default::default()
        };
        stats.multicast = 99;
        let read: Vec<u64> = COUNTERS.iter().map(|(_, _, field)| field(&stats)).collect();
        assert_eq!(read, (1..=15).collect::<Vec<u64>>());
    }
}
