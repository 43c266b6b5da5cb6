//! Per-CPU packet processing, from `/proc/net/softnet_stat`: what the kernel's receive
//! path did on each CPU (packets processed, packets dropped because the backlog was full,
//! the times the budget ran out before the work did) and the settings that bound it
//! (`net.core.netdev_budget`, `netdev_budget_usecs`, `netdev_max_backlog`).
//!
//! The file has one line per online CPU of hexadecimal 32-bit columns, more of them in
//! newer kernels: processed, dropped, time_squeeze, six unused, received_rps,
//! flow_limit_count (from 2.6.36 on, 11 columns), the backlog's length and the CPU's
//! number (5.10, 13 columns), the input and process queue lengths (6.x, 15 columns).
//! A line's CPU is its number column where the kernel prints it: with CPUs offline, the
//! line index is not the CPU.

use std::path::Path;

/// Columns every kernel flowex runs on prints.
const MIN_COLUMNS: usize = 11;

/// One CPU's line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoftnetCpu {
    pub cpu: u32,
    /// Packets taken off the CPU's backlog and NIC queues (32 bits: it wraps).
    pub processed: u32,
    /// Packets dropped because the backlog was full (netdev_max_backlog).
    pub dropped: u32,
    /// NET_RX rounds that ended with work left: the budget ran out.
    pub time_squeeze: u32,
    /// Times this CPU was woken to process packets steered to it (RPS).
    pub received_rps: u32,
    /// Packets dropped by the flow limit.
    pub flow_limit_count: u32,
    /// Packets waiting in the backlog when the file was read (5.10 and later).
    pub backlog_len: Option<u32>,
}

/// Why the file's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoftnetError {
    #[error("softnet_stat line {line}: {columns} columns, at least {MIN_COLUMNS} expected")]
    TooFewColumns { line: usize, columns: usize },
    #[error("softnet_stat line {line}, column {column}: {text:?} is not a 32-bit hex number")]
    NotHex {
        line: usize,
        column: usize,
        text: String,
    },
}

/// Parses the whole file into `out` (cleared first; reused between reads, so a read
/// allocates nothing once `out` has a slot per CPU).
pub fn parse_softnet(text: &str, out: &mut Vec<SoftnetCpu>) -> Result<(), SoftnetError> {
    out.clear();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut values = [0u32; 15];
        let mut columns = 0;
        for (column, field) in line.split_ascii_whitespace().enumerate() {
            let value = u32::from_str_radix(field, 16).map_err(|_| SoftnetError::NotHex {
                line: index + 1,
                column: column + 1,
                text: field.to_owned(),
            })?;
            if let Some(slot) = values.get_mut(column) {
                *slot = value;
            }
            columns = column + 1;
        }
        if columns < MIN_COLUMNS {
            return Err(SoftnetError::TooFewColumns {
                line: index + 1,
                columns,
            });
        }
        out.push(SoftnetCpu {
            cpu: if columns >= 13 {
                values[12]
            } else {
                index as u32
            },
            processed: values[0],
            dropped: values[1],
            time_squeeze: values[2],
            received_rps: values[9],
            flow_limit_count: values[10],
            backlog_len: (columns >= 12).then_some(values[11]),
        });
    }
    Ok(())
}

/// The receive path's limits, from `/proc/sys/net/core` (None where unreadable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxLimits {
    /// Packets one NET_RX round may process across all devices.
    pub netdev_budget: Option<u64>,
    /// Microseconds one NET_RX round may take.
    pub netdev_budget_usecs: Option<u64>,
    /// Packets a CPU's backlog holds before it drops.
    pub netdev_max_backlog: Option<u64>,
}

impl RxLimits {
    /// Reads the three settings under `proc_sys_net_core` (normally `/proc/sys/net/core`).
    pub fn read(proc_sys_net_core: &Path) -> Self {
        let read = |name: &str| {
            std::fs::read_to_string(proc_sys_net_core.join(name))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        Self {
            netdev_budget: read("netdev_budget"),
            netdev_budget_usecs: read("netdev_budget_usecs"),
            netdev_max_backlog: read("netdev_max_backlog"),
        }
    }
}

/// How much a 32-bit counter grew from `before` to `now`, across one wrap.
pub fn grew(before: u32, now: u32) -> u64 {
    u64::from(now.wrapping_sub(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two CPUs as Linux 6.18 prints them (15 columns), the second with a backlog entry.
    const LINUX_6_18: &str = "\
00d05fae 00000003 00000024 00000000 00000000 00000000 00000000 00000000 00000000 00000007 00000000 00000000 00000000 00000000 00000000
00873e8f 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000001 00000001 00000001 00000000
";

    #[test]
    fn reads_every_column_of_a_current_kernel() {
        let mut cpus = Vec::new();
        parse_softnet(LINUX_6_18, &mut cpus).unwrap();
        assert_eq!(
            cpus,
            [
                SoftnetCpu {
                    cpu: 0,
                    processed: 0x00d0_5fae,
                    dropped: 3,
                    time_squeeze: 0x24,
                    received_rps: 7,
                    flow_limit_count: 0,
                    backlog_len: Some(0),
                },
                SoftnetCpu {
                    cpu: 1,
                    processed: 0x0087_3e8f,
                    dropped: 0,
                    time_squeeze: 1,
                    received_rps: 0,
                    flow_limit_count: 2,
                    backlog_len: Some(1),
                },
            ]
        );
    }

    #[test]
    fn the_cpu_column_wins_over_the_line_index() {
        // CPU 1 offline: the second line is CPU 2 (13 columns, as in 5.10).
        let text = "\
00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
00000020 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002
";
        let mut cpus = Vec::new();
        parse_softnet(text, &mut cpus).unwrap();
        assert_eq!(cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn an_old_kernel_has_no_backlog_column_and_cpus_by_line() {
        let text = "00000005 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n";
        let mut cpus = Vec::new();
        parse_softnet(text, &mut cpus).unwrap();
        assert_eq!(cpus[0].cpu, 0);
        assert_eq!(cpus[0].backlog_len, None);
        assert_eq!(cpus[0].dropped, 1);
    }

    #[test]
    fn broken_text_is_an_error_not_a_panic() {
        let mut cpus = Vec::new();
        assert_eq!(
            parse_softnet("00000001 00000002\n", &mut cpus),
            Err(SoftnetError::TooFewColumns {
                line: 1,
                columns: 2
            })
        );
        assert_eq!(
            parse_softnet(
                "0000000g 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n",
                &mut cpus
            ),
            Err(SoftnetError::NotHex {
                line: 1,
                column: 1,
                text: "0000000g".into()
            })
        );
        assert_eq!(
            parse_softnet("1ffffffff 0 0 0 0 0 0 0 0 0 0\n", &mut cpus)
                .unwrap_err()
                .to_string(),
            "softnet_stat line 1, column 1: \"1ffffffff\" is not a 32-bit hex number"
        );
    }

    #[test]
    fn counters_grow_across_a_wrap() {
        assert_eq!(grew(10, 15), 5);
        assert_eq!(grew(u32::MAX - 1, 3), 5);
    }
}
