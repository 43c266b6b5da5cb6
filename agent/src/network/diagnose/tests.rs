//! Findings from recorded samples: each kind of finding, its rate and its advice.

use super::*;

fn cpu(cpu: u32, squeeze: u32, dropped: u32) -> SoftnetCpu {
    SoftnetCpu {
        cpu,
        processed: 1000,
        dropped,
        time_squeeze: squeeze,
        ..SoftnetCpu::default()
    }
}

fn sample(at: Instant, softnet: Vec<SoftnetCpu>) -> Sample {
    Sample {
        at,
        softnet,
        limits: RxLimits {
            netdev_budget: Some(300),
            netdev_budget_usecs: Some(2000),
            netdev_max_backlog: Some(1000),
        },
        ..Sample::new()
    }
}

#[test]
fn cpus_are_written_as_ranges() {
    assert_eq!(cpu_ranges(&[3, 0, 1, 2, 6, 8, 9]), "0-3,6,8-9");
    assert_eq!(cpu_ranges(&[5]), "5");
    assert_eq!(cpu_ranges(&[]), "");
}

#[test]
fn squeezes_in_a_window_are_a_rate_with_the_budget_advice() {
    let t0 = Instant::now();
    let before = sample(
        t0,
        vec![cpu(0, 10, 0), cpu(1, 10, 0), cpu(2, 10, 0), cpu(3, 10, 0)],
    );
    let now = sample(
        t0 + Duration::from_secs(5),
        vec![cpu(0, 55, 0), cpu(1, 55, 0), cpu(2, 55, 0), cpu(3, 55, 0)],
    );
    let report = diagnose(Some(&before), &now);
    assert!(!report.healthy());
    assert_eq!(report.findings.len(), 1);
    let f = &report.findings[0];
    assert!(f.active);
    assert_eq!(
        f.summary,
        "time_squeeze grew 36/s on CPUs 0-3 while softnet dropped 0: the budget runs out before the backlog is empty"
    );
    assert_eq!(
        f.evidence[0],
        "time_squeeze by CPU: cpu0 +45 cpu1 +45 cpu2 +45 cpu3 +45"
    );
    assert_eq!(
        f.advice.as_deref(),
        Some(
            "consider net.core.netdev_budget=600 (and netdev_budget_usecs=4000) so a receive round drains the queues"
        )
    );
}

/// `/proc/net/softnet_stat` of a 16-CPU build node on an older kernel (11 columns: no
/// backlog length or CPU number), recorded twice 5 s apart: CPUs 0-3 take the NIC's
/// interrupts and squeeze, the rest only process.
fn sixteen_cpus(squeezed: u32) -> String {
    (0..16)
        .map(|cpu| {
            let busy = cpu < 4;
            let processed = if busy { 0x0a3f_1c20 } else { 0x0012_4f80 } + cpu;
            let squeeze = if busy { squeezed } else { 3 };
            format!(
                "{processed:08x} 00000000 {squeeze:08x} 00000000 00000000 00000000 00000000 00000000 00000000 {:08x} 00000000\n",
                if busy { 0 } else { 0x1f4 }
            )
        })
        .collect()
}

#[test]
fn a_recorded_sixteen_cpu_node_is_found_squeezing_on_its_interrupt_cpus() {
    let mut before = Vec::new();
    let mut now = Vec::new();
    crate::network::softnet::parse_softnet(&sixteen_cpus(0x1000), &mut before).unwrap();
    crate::network::softnet::parse_softnet(&sixteen_cpus(0x1000 + 45), &mut now).unwrap();
    assert_eq!(before.len(), 16);
    assert_eq!(now[15].cpu, 15);
    assert_eq!(now[2].time_squeeze, 0x1000 + 45);
    let t0 = Instant::now();
    let report = diagnose(
        Some(&sample(t0, before)),
        &sample(t0 + Duration::from_secs(5), now),
    );
    assert_eq!(report.findings.len(), 1, "{report:?}");
    let f = &report.findings[0];
    assert!(f.active);
    assert_eq!(
        f.summary,
        "time_squeeze grew 36/s on CPUs 0-3 while softnet dropped 0: the budget runs out before the backlog is empty"
    );
}

#[test]
fn a_rare_squeeze_is_reported_but_not_active() {
    let t0 = Instant::now();
    let before = sample(t0, vec![cpu(0, 10, 0)]);
    let now = sample(t0 + Duration::from_secs(10), vec![cpu(0, 12, 0)]);
    let report = diagnose(Some(&before), &now);
    assert_eq!(report.findings.len(), 1);
    assert!(!report.findings[0].active);
    assert!(report.healthy());
}

#[test]
fn one_sample_reports_counters_as_history_and_stays_healthy() {
    let now = sample(Instant::now(), vec![cpu(0, 7, 3)]);
    let report = diagnose(None, &now);
    assert!(report.healthy());
    assert_eq!(
        report
            .findings
            .iter()
            .map(|f| (f.active, f.summary.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                false,
                "time_squeeze grew 7 since boot on CPUs 0 while softnet dropped 3: the budget runs out before the backlog is empty"
            ),
            (
                false,
                "the receive backlog overflowed: softnet dropped 3 since boot on CPUs 0"
            ),
        ]
    );
}

#[test]
fn softnet_counters_wrap() {
    let t0 = Instant::now();
    let before = sample(t0, vec![cpu(0, 0, u32::MAX - 1)]);
    let now = sample(t0 + Duration::from_secs(1), vec![cpu(0, 0, 2)]);
    let report = diagnose(Some(&before), &now);
    assert_eq!(
        report.findings[0].summary,
        "the receive backlog overflowed: softnet dropped 4.0/s on CPUs 0"
    );
}

fn table(entries: u32, max: u32, drop: u32, insert_failed: u32) -> ConntrackSample {
    ConntrackSample {
        entries,
        max_entries: max,
        cpus: vec![CpuStats {
            cpu: 1,
            drop,
            insert_failed,
            ..CpuStats::default()
        }],
    }
}

#[test]
fn a_full_table_dropping_connections_is_active() {
    let t0 = Instant::now();
    let mut before = sample(t0, Vec::new());
    before.conntrack = Some(table(255_000, 262_144, 10, 10));
    let mut now = sample(t0 + Duration::from_secs(2), Vec::new());
    now.conntrack = Some(table(257_000, 262_144, 50, 10));
    let report = diagnose(Some(&before), &now);
    let summaries: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.active, f.summary.as_str()))
        .collect();
    assert_eq!(
        summaries,
        [
            (
                true,
                "new connections refused: drop 20/s, at 98% of nf_conntrack_max (257000 of 262144)"
            ),
            (
                true,
                "the table is at 98% of nf_conntrack_max (257000 of 262144)"
            ),
        ]
    );
    assert_eq!(report.findings[0].evidence, ["on CPUs 1"]);
    assert!(
        report.findings[0]
            .advice
            .as_deref()
            .unwrap()
            .starts_with("the table is full: raise net.netfilter.nf_conntrack_max (now 262144)")
    );
}

#[test]
fn a_table_at_80_percent_is_history_and_a_quiet_table_says_nothing() {
    let mut now = sample(Instant::now(), Vec::new());
    now.conntrack = Some(table(80, 100, 0, 0));
    let report = diagnose(None, &now);
    assert_eq!(report.findings.len(), 1);
    assert!(!report.findings[0].active);
    now.conntrack = Some(table(10, 100, 0, 0));
    let report = diagnose(None, &now);
    assert!(report.findings.is_empty());
    assert_eq!(report.checked, ["conntrack: 10 of 100 entries, 1 CPU(s)"]);
}

fn link(name: &str, rx_missed: u64, tx_dropped: u64, ring: Option<(u32, u32)>) -> InterfaceSample {
    InterfaceSample {
        index: 7,
        name: name.into(),
        kind: String::new(),
        pod: None,
        counters: LinkCounters {
            rx_packets: 1_000_000,
            tx_packets: 500,
            rx_missed,
            tx_dropped,
            ..LinkCounters::default()
        },
        ring_rx: ring,
        driver_drops: vec![("rx_queue_0_discards".into(), rx_missed)],
    }
}

#[test]
fn a_nic_missing_packets_with_a_small_ring_gets_the_ethtool_advice() {
    let t0 = Instant::now();
    let mut before = sample(t0, Vec::new());
    before.interfaces = vec![link("eth3", 100, 0, Some((453, 4078)))];
    let mut now = sample(t0 + Duration::from_secs(4), Vec::new());
    now.interfaces = vec![link("eth3", 500, 0, Some((453, 4078)))];
    let report = diagnose(Some(&before), &now);
    assert_eq!(report.findings.len(), 1);
    let f = &report.findings[0];
    assert_eq!(
        f.summary,
        "eth3 drops received packets: rx_missed 100/s, driver discards 100/s (1 counter(s))"
    );
    assert_eq!(
        f.evidence,
        [
            "rx_packets 0.0/s",
            "rx_missed +400",
            "driver: rx_queue_0_discards +400",
            "RX ring 453 of 4078"
        ]
    );
    assert_eq!(
        f.advice.as_deref(),
        Some("raise the RX ring with `ethtool -G eth3 rx 4078` (it resets the link)")
    );
}

#[test]
fn a_recreated_interface_counts_from_zero() {
    let t0 = Instant::now();
    let mut before = sample(t0, Vec::new());
    before.interfaces = vec![link("veth1", 0, 900, None)];
    let mut now = sample(t0 + Duration::from_secs(1), Vec::new());
    let mut fresh = link("veth1", 0, 3, None);
    fresh.index = 8;
    now.interfaces = vec![fresh];
    let report = diagnose(Some(&before), &now);
    assert_eq!(
        report.findings[0].summary,
        "veth1 drops packets it sends: tx_dropped 3.0/s"
    );
}

#[test]
fn json_and_text_carry_the_same_findings() {
    let mut now = sample(Instant::now(), Vec::new());
    now.conntrack = Some(table(95, 100, 0, 0));
    now.unavailable.push("ethtool: not supported".into());
    let report = diagnose(None, &now);
    let json = report.to_json();
    assert_eq!(json["healthy"], false);
    assert_eq!(json["window_seconds"], serde_json::Value::Null);
    assert_eq!(
        json["findings"][0]["summary"],
        "the table is at 95% of nf_conntrack_max (95 of 100)"
    );
    assert_eq!(json["unavailable"][0], "ethtool: not supported");
    let text = report.to_text();
    assert!(
        text.contains("[ACTIVE ] conntrack: the table is at 95% of nf_conntrack_max (95 of 100)\n")
    );
    assert!(text.ends_with("NOT healthy\n"));
}
