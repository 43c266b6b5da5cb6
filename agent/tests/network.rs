//! The node's network health metrics: softnet counters per CPU and the receive path's
//! limits, against this machine's own /proc (read independently here) and against files
//! written by the test (a counter that wraps, a broken file).

use std::path::PathBuf;
use std::process::Command;

use flowex_agent::network::{NodeNetwork, Sources};
use prometheus::{Encoder, Registry, TextEncoder};

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The value of `name{labels}` in the exposition, if present.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Column `column` of every CPU line of the real file, read here without the agent's parser.
fn columns(column: usize) -> Vec<u64> {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .map(|line| {
            let field = line.split_whitespace().nth(column).unwrap();
            u64::from_str_radix(field, 16).unwrap()
        })
        .collect()
}

fn sysctl(name: &str) -> u64 {
    let out = Command::new("sysctl").args(["-n", name]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn this_machines_softnet_counters_and_limits_are_exported() {
    let registry = Registry::new();
    let network = NodeNetwork::new(&registry, Sources::default());
    let before = columns(0);
    network.refresh();
    let after = columns(0);
    let text = render(&registry);
    for (cpu, (low, high)) in before.iter().zip(&after).enumerate() {
        let processed = value(
            &text,
            &format!("flowex_softnet_processed_total{{cpu=\"{cpu}\"}}"),
        )
        .unwrap();
        assert!(
            *low <= processed && processed <= *high,
            "cpu {cpu}: {processed} not in {low}..={high}"
        );
    }
    let dropped = columns(1);
    assert_eq!(
        value(&text, "flowex_softnet_dropped_total{cpu=\"0\"}"),
        Some(dropped[0])
    );
    for (metric, name) in [
        ("flowex_netdev_budget", "net.core.netdev_budget"),
        ("flowex_netdev_budget_usecs", "net.core.netdev_budget_usecs"),
        ("flowex_netdev_max_backlog", "net.core.netdev_max_backlog"),
    ] {
        assert_eq!(value(&text, metric), Some(sysctl(name)), "{metric}");
    }
}

fn line(processed: u32, dropped: u32) -> String {
    format!(
        "{processed:08x} {dropped:08x} 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n"
    )
}

#[test]
fn a_wrapping_counter_keeps_growing_and_a_broken_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("flowex-softnet-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("core")).unwrap();
    let file: PathBuf = dir.join("softnet_stat");
    let registry = Registry::new();
    let network = NodeNetwork::new(
        &registry,
        Sources {
            softnet_stat: file.clone(),
            proc_sys_net_core: dir.join("core"),
        },
    );
    std::fs::write(&file, line(0xffff_fff0, 2)).unwrap();
    network.refresh();
    std::fs::write(&file, line(0x10, 5)).unwrap();
    network.refresh();
    let text = render(&registry);
    assert_eq!(
        value(&text, "flowex_softnet_processed_total{cpu=\"0\"}"),
        Some(0xffff_fff0 + 0x20)
    );
    assert_eq!(
        value(&text, "flowex_softnet_dropped_total{cpu=\"0\"}"),
        Some(5)
    );
    // No sysctl files here: no made-up limits either.
    assert_eq!(value(&text, "flowex_netdev_budget"), None);
    std::fs::write(&file, "not hex at all\n").unwrap();
    network.refresh();
    assert_eq!(render(&registry), text);
    let _ = std::fs::remove_dir_all(dir);
}
