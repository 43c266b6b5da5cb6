//! The conntrack sysctls that decide what flowex can see, read (and optionally set) in the
//! agent's own network namespace at startup.

use std::fs;
use std::path::{Path, PathBuf};

/// One setting, what flowex needs of it, and what is lost without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub wanted: u32,
    pub cost_when_missing: &'static str,
}

/// The settings flowex checks.
pub const SETTINGS: [Setting; 3] = [
    Setting {
        name: "nf_conntrack_acct",
        wanted: 1,
        cost_when_missing: "entries carry no packet or byte counters: records will show 0 octets and packets",
    },
    Setting {
        name: "nf_conntrack_timestamp",
        wanted: 1,
        cost_when_missing: "entries carry no start time: flowStart is when flowex first saw the connection",
    },
    Setting {
        name: "nf_conntrack_events",
        wanted: 1,
        cost_when_missing: "no events for connections created while nobody listened (value 2) or none at all (0): \
             short connections between two polls can be missed",
    },
];

/// The outcome for one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub setting: Setting,
    /// The value read, if the file exists and holds a number.
    pub value: Option<u32>,
    /// True when flowex wrote the wanted value.
    pub changed: bool,
    /// Why writing failed, when it was attempted and failed.
    pub write_error: Option<String>,
}

impl Check {
    /// True when the setting is as flowex needs it.
    pub fn ok(&self) -> bool {
        self.value == Some(self.setting.wanted)
    }

    /// A log line for people.
    pub fn describe(&self) -> String {
        let name = self.setting.name;
        match (self.ok(), self.changed, &self.write_error, self.value) {
            (true, true, _, _) => format!("set net.netfilter.{name}=1"),
            (true, false, _, _) => format!("net.netfilter.{name}=1"),
            (false, _, Some(error), value) => format!(
                "net.netfilter.{name} is {} and could not be set to 1 ({error}): {}",
                value.map_or("unreadable".to_owned(), |v| v.to_string()),
                self.setting.cost_when_missing
            ),
            (false, _, None, value) => format!(
                "net.netfilter.{name} is {}, not 1: {} (fix: sysctl -w net.netfilter.{name}=1 in this network namespace)",
                value.map_or("unreadable".to_owned(), |v| v.to_string()),
                self.setting.cost_when_missing
            ),
        }
    }
}

fn path(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

fn read(root: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(path(root, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Checks every setting under `root` (normally `/proc/sys/net/netfilter`, which shows the
/// calling thread's network namespace), writing the wanted value first when `set` is true.
pub fn check_settings(root: &Path, set: bool) -> Vec<Check> {
    SETTINGS
        .iter()
        .map(|setting| {
            let mut value = read(root, setting.name);
            let mut changed = false;
            let mut write_error = None;
            if set && value != Some(setting.wanted) {
                match fs::write(path(root, setting.name), format!("{}\n", setting.wanted)) {
                    Ok(()) => {
                        value = read(root, setting.name);
                        changed = value == Some(setting.wanted);
                    }
                    Err(error) => write_error = Some(error.to_string()),
                }
            }
            Check {
                setting: *setting,
                value,
                changed,
                write_error,
            }
        })
        .collect()
}

/// The sysctl directory of the calling thread's network namespace.
pub fn default_root() -> PathBuf {
    PathBuf::from("/proc/sys/net/netfilter")
}
