//! The deny source: reads the NFLOG group and adds every denied packet to the store, with
//! the group's own losses (socket overflows, unreadable packets) counted and logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::DenyListener;
use crate::store::{ConnectionStore, now_ms};
use crate::telemetry::Metrics;

/// After a failed read, the pause before the next (a failure that repeats would spin).
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Repeated read failures are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The NFLOG group's reader, until the agent stops.
pub struct DenySource<'a> {
    pub store: &'a ConnectionStore,
    pub metrics: &'a Metrics,
}

impl DenySource<'_> {
    /// Reads until `stopping` is set (the listener's interrupt wakes it).
    pub fn run(&self, mut listener: DenyListener, stopping: &AtomicBool) {
        let mut seen = listener.stats();
        let mut failures = 0u64;
        let mut last_logged: Option<Instant> = None;
        while !stopping.load(Ordering::Acquire) {
            let result = listener.receive(None, |event| {
                self.metrics.denied_packet();
                self.store.deny(event, now_ms())
            });
            if let Err(error) = result {
                failures += 1;
                if last_logged.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) {
                    tracing::error!(
                        "deny source: {error} ({failures} failed read(s) since the last report)"
                    );
                    failures = 0;
                    last_logged = Some(Instant::now());
                }
                std::thread::sleep(ERROR_PAUSE);
            }
            let now = listener.stats();
            if now.lost > seen.lost {
                tracing::warn!(
                    "NFLOG: denied packets lost {} time(s) (socket overflow, or a datagram too large or unreadable)",
                    now.lost - seen.lost
                );
            }
            self.metrics
                .deny_losses(now.lost - seen.lost, now.unreadable - seen.unreadable);
            seen = now;
        }
    }
}
