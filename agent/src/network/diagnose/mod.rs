//! Findings about the node's network, with their evidence and advice: what `flowex
//! diagnose` prints and the agent serves on `/diagnose`.
//!
//! A [`Sample`] is one read of every source (softnet per CPU, the receive path's limits,
//! conntrack's table and per-CPU counters, the interfaces). [`diagnose`] compares two
//! samples taken a window apart and reports what grew, as rates; given one sample it
//! reports levels (a table near its limit) as active and totals since boot as history,
//! because a counter that grew once after boot says nothing about now.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use super::softnet::{RxLimits, SoftnetCpu, grew};
use crate::net::CpuStats;

/// Conntrack table fill (percent of nf_conntrack_max) from which a finding is active.
pub const TABLE_FULL_PERCENT: u64 = 90;
/// Conntrack table fill from which it is reported as history (not active).
pub const TABLE_HIGH_PERCENT: u64 = 75;
/// Budget exhaustion below this rate (all CPUs together) is normal under bursts.
pub const SQUEEZE_ACTIVE_PER_SECOND: f64 = 1.0;

/// Conntrack's table and per-CPU counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSample {
    pub entries: u32,
    pub max_entries: u32,
    pub cpus: Vec<CpuStats>,
}

/// An interface's counters that tell of loss (rtnl_link_stats64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub rx_missed: u64,
    pub rx_fifo: u64,
    pub rx_over: u64,
    pub rx_crc: u64,
    pub rx_frame: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
    pub tx_fifo: u64,
    pub tx_carrier: u64,
}

/// One interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSample {
    pub index: u32,
    pub name: String,
    /// The link kind (`veth`, `bridge`...; empty for a physical device).
    pub kind: String,
    /// `namespace/name` of the pod on the other end of a veth.
    pub pod: Option<String>,
    pub counters: LinkCounters,
    /// RX ring: current and maximum, where the driver reports them.
    pub ring_rx: Option<(u32, u32)>,
    /// Driver statistics whose names tell of loss (`rx_queue_3_drops`, `rx_discards`...).
    pub driver_drops: Vec<(String, u64)>,
}

/// One read of every source.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub softnet: Vec<SoftnetCpu>,
    pub limits: RxLimits,
    pub conntrack: Option<ConntrackSample>,
    pub interfaces: Vec<InterfaceSample>,
    /// Sources that could not be read, and why.
    pub unavailable: Vec<String>,
}

impl Sample {
    /// An empty sample taken now.
    pub fn new() -> Self {
        Self {
            at: Instant::now(),
            softnet: Vec::new(),
            limits: RxLimits::default(),
            conntrack: None,
            interfaces: Vec::new(),
            unavailable: Vec::new(),
        }
    }
}

impl Default for Sample {
    fn default() -> Self {
        Self::new()
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// True when it describes the window (or a level now); false for history since boot.
    pub active: bool,
    /// What it is about: `softnet`, `conntrack`, or an interface's name.
    pub subject: String,
    pub summary: String,
    pub evidence: Vec<String>,
    pub advice: Option<String>,
}

/// The findings of one diagnosis.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The window rates are over; None for a single sample.
    pub window: Option<Duration>,
    pub findings: Vec<Finding>,
    /// What was read.
    pub checked: Vec<String>,
    pub unavailable: Vec<String>,
}

impl Report {
    /// No active finding.
    pub fn healthy(&self) -> bool {
        !self.findings.iter().any(|f| f.active)
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "healthy": self.healthy(),
            "window_seconds": self.window.map(|w| w.as_secs_f64()),
            "findings": self.findings.iter().map(|f| json!({
                "active": f.active,
                "subject": f.subject,
                "summary": f.summary,
                "evidence": f.evidence,
                "advice": f.advice,
            })).collect::<Vec<_>>(),
            "checked": self.checked,
            "unavailable": self.unavailable,
        })
    }

    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let active = self.findings.iter().filter(|f| f.active).count();
        let _ = match self.window {
            Some(window) => writeln!(
                out,
                "over {:.1} s: {active} active finding(s), {} from before",
                window.as_secs_f64(),
                self.findings.len() - active
            ),
            None => writeln!(
                out,
                "one sample (rates need --watch SECS): {active} active finding(s), {} since boot",
                self.findings.len() - active
            ),
        };
        for finding in &self.findings {
            let tag = if finding.active { "ACTIVE " } else { "history" };
            let _ = writeln!(out, "\n[{tag}] {}: {}", finding.subject, finding.summary);
            for line in &finding.evidence {
                let _ = writeln!(out, "    {line}");
            }
            if let Some(advice) = &finding.advice {
                let _ = writeln!(out, "  advice: {advice}");
            }
        }
        let _ = writeln!(out, "\nchecked: {}", self.checked.join("; "));
        for reason in &self.unavailable {
            let _ = writeln!(out, "not read: {reason}");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.healthy() {
                "healthy"
            } else {
                "NOT healthy"
            }
        );
        out
    }
}

/// How a counter moved over the window (or since boot without one).
struct Growth {
    window: Option<f64>,
}

impl Growth {
    fn u32(&self, before: Option<u32>, now: u32) -> u64 {
        match (self.window, before) {
            (Some(_), Some(before)) => grew(before, now),
            // A CPU that came online during the window counts from zero.
            _ => u64::from(now),
        }
    }

    fn u64(&self, before: Option<u64>, now: u64) -> u64 {
        match (self.window, before) {
            // A counter that went down was reset (driver reload): count from zero.
            (Some(_), Some(before)) if now >= before => now - before,
            _ => now,
        }
    }

    /// `n` as a rate over the window, or as a total.
    fn describe(&self, n: u64) -> String {
        match self.window {
            Some(seconds) => format!("{}/s", rate(n, seconds)),
            None => format!("{n} since boot"),
        }
    }

    /// The counters that grew, named: `drop 20/s, early_drop 1.5/s`, or
    /// `drop 59, early_drop 1 since boot`.
    fn list(&self, items: &[(&str, u64)]) -> String {
        let mut out = String::new();
        for (name, n) in items.iter().filter(|(_, n)| *n > 0) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = match self.window {
                Some(seconds) => write!(out, "{name} {}/s", rate(*n, seconds)),
                None => write!(out, "{name} {n}"),
            };
        }
        if self.window.is_none() && !out.is_empty() {
            out.push_str(" since boot");
        }
        out
    }
}

/// A rate rounded for reading: whole numbers from 10 up, one decimal below.
fn rate(n: u64, seconds: f64) -> String {
    let r = n as f64 / seconds.max(1e-3);
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// CPUs as ranges: `0-3,6`.
pub fn cpu_ranges(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if start == end {
            write!(out, "{start}")
        } else {
            write!(out, "{start}-{end}")
        };
        i += 1;
    }
    out
}

/// Diagnoses `now`, against `before` when given (rates over the window between them).
pub fn diagnose(before: Option<&Sample>, now: &Sample) -> Report {
    let window = before.map(|b| now.at.saturating_duration_since(b.at));
    let growth = Growth {
        window: window.map(|w| w.as_secs_f64()),
    };
    let mut report = Report {
        window,
        findings: Vec::new(),
        checked: Vec::new(),
        unavailable: now.unavailable.clone(),
    };
    softnet(&growth, before, now, &mut report);
    conntrack(&growth, before, now, &mut report);
    interfaces(&growth, before, now, &mut report);
    report
}

fn softnet(growth: &Growth, before: Option<&Sample>, now: &Sample, report: &mut Report) {
    if now.softnet.is_empty() {
        return;
    }
    report
        .checked
        .push(format!("softnet on {} CPU(s)", now.softnet.len()));
    let previous = |cpu: u32| before.and_then(|b| b.softnet.iter().find(|c| c.cpu == cpu).copied());
    let mut squeezed = Vec::new();
    let mut dropped = Vec::new();
    let mut limited = Vec::new();
    for cpu in &now.softnet {
        let was = previous(cpu.cpu);
        for (list, before, value) in [
            (&mut squeezed, was.map(|c| c.time_squeeze), cpu.time_squeeze),
            (&mut dropped, was.map(|c| c.dropped), cpu.dropped),
            (
                &mut limited,
                was.map(|c| c.flow_limit_count),
                cpu.flow_limit_count,
            ),
        ] {
            let n = growth.u32(before, value);
            if n > 0 {
                list.push((cpu.cpu, n));
            }
        }
    }
    let total = |list: &[(u32, u64)]| list.iter().map(|(_, n)| n).sum::<u64>();
    let cpus = |list: &[(u32, u64)]| cpu_ranges(&list.iter().map(|(c, _)| *c).collect::<Vec<_>>());
    let per_cpu = |what: &str, list: &[(u32, u64)]| {
        let mut line = format!("{what} by CPU:");
        for (cpu, n) in list {
            let _ = write!(line, " cpu{cpu} +{n}");
        }
        line
    };
    let limits = &now.limits;
    let setting = |name: &str, value: Option<u64>| match value {
        Some(v) => format!("net.core.{name}={v}"),
        None => format!("net.core.{name} unreadable"),
    };
    let active_window = growth.window.is_some();
    if !squeezed.is_empty() {
        let n = total(&squeezed);
        let rate_ok = growth
            .window
            .is_some_and(|seconds| n as f64 / seconds.max(1e-3) >= SQUEEZE_ACTIVE_PER_SECOND);
        let budget = limits.netdev_budget.unwrap_or(300);
        report.findings.push(Finding {
            active: rate_ok,
            subject: "softnet".into(),
            summary: format!(
                "time_squeeze grew {} on CPUs {} while softnet dropped {}: the budget runs out before the backlog is empty",
                growth.describe(n),
                cpus(&squeezed),
                total(&dropped)
            ),
            evidence: vec![
                per_cpu("time_squeeze", &squeezed),
                format!(
                    "{}, {}",
                    setting("netdev_budget", limits.netdev_budget),
                    setting("netdev_budget_usecs", limits.netdev_budget_usecs)
                ),
            ],
            advice: Some(format!(
                "consider net.core.netdev_budget={} (and netdev_budget_usecs={}) so a receive round drains the queues",
                budget * 2,
                limits.netdev_budget_usecs.unwrap_or(2000) * 2
            )),
        });
    }
    if !dropped.is_empty() {
        report.findings.push(Finding {
            active: active_window,
            subject: "softnet".into(),
            summary: format!(
                "the receive backlog overflowed: softnet dropped {} on CPUs {}",
                growth.describe(total(&dropped)),
                cpus(&dropped)
            ),
            evidence: vec![
                per_cpu("dropped", &dropped),
                setting("netdev_max_backlog", limits.netdev_max_backlog),
            ],
            advice: Some(format!(
                "consider net.core.netdev_max_backlog={}; if time_squeeze grows too, raise netdev_budget first",
                limits.netdev_max_backlog.unwrap_or(1000) * 2
            )),
        });
    }
    if !limited.is_empty() {
        report.findings.push(Finding {
            active: active_window,
            subject: "softnet".into(),
            summary: format!(
                "the flow limit dropped {} packets of large flows on CPUs {}",
                growth.describe(total(&limited)),
                cpus(&limited)
            ),
            evidence: vec![per_cpu("flow_limit_count", &limited)],
            advice: Some(
                "net.core.flow_limit_cpu_bitmap and flow_limit_table_len decide which flows are cut".into(),
            ),
        });
    }
}

fn conntrack(growth: &Growth, before: Option<&Sample>, now: &Sample, report: &mut Report) {
    let Some(table) = &now.conntrack else { return };
    report.checked.push(format!(
        "conntrack: {} of {} entries, {} CPU(s)",
        table.entries,
        table.max_entries,
        table.cpus.len()
    ));
    let fill = (table.max_entries > 0)
        .then(|| u64::from(table.entries) * 100 / u64::from(table.max_entries));
    let previous = |cpu: u16| {
        before
            .and_then(|b| b.conntrack.as_ref())
            .and_then(|t| t.cpus.iter().find(|c| c.cpu == cpu).copied())
    };
    let mut sums = [0u64; 6];
    let mut cpus_growing: Vec<u32> = Vec::new();
    const NAMES: [&str; 6] = [
        "insert_failed",
        "drop",
        "early_drop",
        "chaintoolong",
        "invalid",
        "error",
    ];
    for cpu in &table.cpus {
        let was = previous(cpu.cpu);
        let pick = |s: &CpuStats| {
            [
                s.insert_failed,
                s.drop,
                s.early_drop,
                s.chain_too_long,
                s.invalid,
                s.error,
            ]
        };
        let values = pick(cpu);
        let old = was.map(|w| pick(&w));
        let mut any = false;
        for (i, value) in values.iter().enumerate() {
            let n = growth.u32(old.map(|o| o[i]), *value);
            sums[i] += n;
            any |= i < 4 && n > 0;
        }
        if any {
            cpus_growing.push(u32::from(cpu.cpu));
        }
    }
    let counts = |range: std::ops::Range<usize>| {
        growth.list(&range.map(|i| (NAMES[i], sums[i])).collect::<Vec<_>>())
    };
    let fill_text = fill.map_or_else(
        || "nf_conntrack_max unknown".to_owned(),
        |p| {
            format!(
                "{p}% of nf_conntrack_max ({} of {})",
                table.entries, table.max_entries
            )
        },
    );
    let losing = sums[..4].iter().any(|&n| n > 0);
    if losing {
        let full = fill.is_some_and(|p| p >= TABLE_FULL_PERCENT);
        let advice = if full || sums[1] + sums[2] > 0 {
            format!(
                "the table is full: raise net.netfilter.nf_conntrack_max (now {}) or shorten timeouts of idle entries",
                table.max_entries
            )
        } else if sums[3] > 0 {
            "hash chains are too long: raise the table's buckets (nf_conntrack_buckets, the module's hashsize)".into()
        } else {
            "inserts lost a race (often two UDP packets of one new flow on two CPUs, such as DNS A and AAAA queries): usually harmless if rare".into()
        };
        report.findings.push(Finding {
            active: growth.window.is_some(),
            subject: "conntrack".into(),
            summary: format!("new connections refused: {}, at {fill_text}", counts(0..4)),
            evidence: vec![format!("on CPUs {}", cpu_ranges(&cpus_growing))],
            advice: Some(advice),
        });
    }
    if let Some(p) = fill.filter(|&p| p >= TABLE_HIGH_PERCENT) {
        report.findings.push(Finding {
            active: p >= TABLE_FULL_PERCENT,
            subject: "conntrack".into(),
            summary: format!("the table is at {fill_text}"),
            evidence: vec![format!(
                "new connections are dropped once it is full (drop and early_drop grow)"
            )],
            advice: Some(format!(
                "raise net.netfilter.nf_conntrack_max (now {}), or find what opens so many connections",
                table.max_entries
            )),
        });
    }
    if sums[4] + sums[5] > 0 {
        report.findings.push(Finding {
            active: false,
            subject: "conntrack".into(),
            summary: format!("packets conntrack could not classify: {}", counts(4..6)),
            evidence: vec![
                "invalid packets (out-of-window TCP, bad checksums) are dropped only by rules that match ctstate INVALID".into(),
            ],
            advice: None,
        });
    }
}

fn interfaces(growth: &Growth, before: Option<&Sample>, now: &Sample, report: &mut Report) {
    if now.interfaces.is_empty() {
        return;
    }
    let pods = now.interfaces.iter().filter(|i| i.pod.is_some()).count();
    report.checked.push(format!(
        "{} interface(s), {pods} of them pods'",
        now.interfaces.len()
    ));
    let squeezing = report
        .findings
        .iter()
        .any(|f| f.active && f.summary.starts_with("time_squeeze"));
    for link in &now.interfaces {
        // The same index and name: a re-created interface starts again from zero.
        let was = before.and_then(|b| {
            b.interfaces
                .iter()
                .find(|i| i.index == link.index && i.name == link.name)
        });
        let c = &link.counters;
        let w = was.map(|i| i.counters);
        let field = |get: fn(&LinkCounters) -> u64| growth.u64(w.as_ref().map(get), get(c));
        let receive = [
            ("rx_missed", field(|c| c.rx_missed)),
            ("rx_fifo", field(|c| c.rx_fifo)),
            ("rx_over", field(|c| c.rx_over)),
            ("rx_dropped", field(|c| c.rx_dropped)),
        ];
        let errors = [
            ("rx_crc", field(|c| c.rx_crc)),
            ("rx_frame", field(|c| c.rx_frame)),
            ("rx_errors", field(|c| c.rx_errors)),
            ("tx_errors", field(|c| c.tx_errors)),
            ("tx_carrier", field(|c| c.tx_carrier)),
        ];
        let transmit = [
            ("tx_dropped", field(|c| c.tx_dropped)),
            ("tx_fifo", field(|c| c.tx_fifo)),
        ];
        let driver: Vec<(String, u64)> = link
            .driver_drops
            .iter()
            .map(|(name, value)| {
                let old = was.and_then(|i| {
                    i.driver_drops
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| *v)
                });
                (name.clone(), growth.u64(old, *value))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let list = |items: &[(&str, u64)]| growth.list(items);
        // The counts themselves, beside the rates.
        let grown = |items: &[(&str, u64)]| {
            let mut line = String::new();
            for (name, n) in items.iter().filter(|(_, n)| *n > 0) {
                let _ = write!(
                    line,
                    "{}{name} +{n}",
                    if line.is_empty() { "" } else { ", " }
                );
            }
            line
        };
        let who = match &link.pod {
            Some(pod) => format!("{} (pod {pod})", link.name),
            None => link.name.clone(),
        };
        let active = growth.window.is_some();
        let ring = link
            .ring_rx
            .map(|(current, max)| format!("RX ring {current} of {max}"));
        if receive.iter().any(|(_, n)| *n > 0) || !driver.is_empty() {
            let mut evidence = vec![format!(
                "rx_packets {}",
                growth.describe(field(|c| c.rx_packets))
            )];
            if receive.iter().any(|(_, n)| *n > 0) {
                evidence.push(grown(&receive));
            }
            if !driver.is_empty() {
                let mut line = "driver:".to_owned();
                for (name, n) in &driver {
                    let _ = write!(line, " {name} +{n}");
                }
                evidence.push(line);
            }
            evidence.extend(ring.clone());
            let only_dropped = receive[..3].iter().all(|(_, n)| *n == 0) && driver.is_empty();
            let advice = match link.ring_rx {
                Some((current, max)) if current < max => Some(format!(
                    "raise the RX ring with `ethtool -G {} rx {max}` (it resets the link){}",
                    link.name,
                    if squeezing {
                        "; time_squeeze grows too: raise net.core.netdev_budget as well"
                    } else {
                        ""
                    }
                )),
                _ if link.pod.is_some() => Some(
                    "the pod's side drops what it is sent: its interface is down or it cannot keep up".into(),
                ),
                _ if only_dropped => Some(
                    "rx_dropped also counts frames no protocol wanted (LLDP, unknown VLANs): compare with rx_missed and the driver's discards".into(),
                ),
                _ if squeezing => Some(
                    "the CPUs run out of budget (time_squeeze): raise net.core.netdev_budget".into(),
                ),
                _ => None,
            };
            report.findings.push(Finding {
                active,
                subject: link.name.clone(),
                summary: format!(
                    "{who} drops received packets: {}",
                    [list(&receive), driver_summary(growth, &driver)]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                evidence,
                advice,
            });
        }
        if transmit.iter().any(|(_, n)| *n > 0) {
            report.findings.push(Finding {
                active,
                subject: link.name.clone(),
                summary: format!("{who} drops packets it sends: {}", list(&transmit)),
                evidence: vec![
                    grown(&transmit),
                    format!("tx_packets {}", growth.describe(field(|c| c.tx_packets))),
                ],
                advice: Some(if link.pod.is_some() || link.kind == "veth" {
                    "the other end of this veth is down or its pod cannot take more".into()
                } else {
                    "the device's queue is full or its link is down: check `tc -s qdisc show dev` and the link".into()
                }),
            });
        }
        if errors.iter().any(|(_, n)| *n > 0) {
            report.findings.push(Finding {
                active,
                subject: link.name.clone(),
                summary: format!("{who} has link errors: {}", list(&errors)),
                evidence: vec![grown(&errors)],
                advice: Some(
                    "CRC and frame errors point at the physical link: cable, optics, or the switch port".into(),
                ),
            });
        }
    }
}

fn driver_summary(growth: &Growth, driver: &[(String, u64)]) -> String {
    if driver.is_empty() {
        return String::new();
    }
    let n: u64 = driver.iter().map(|(_, n)| n).sum();
    format!(
        "driver discards {} ({} counter(s))",
        growth.describe(n),
        driver.len()
    )
}

#[cfg(test)]
mod tests;
