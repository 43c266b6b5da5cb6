//! Reconnecting to a collector: the backoff between attempts, and what is logged while
//! a collector cannot be reached.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::collector::CollectorTarget;

/// Backoff for reconnects: 100 ms doubling up to a cap, with ±20% jitter so agents that
/// lost the same collector do not all come back at the same instant.
pub struct Backoff {
    next: Duration,
    cap: Duration,
    seed: u64,
}

const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

impl Backoff {
    /// A backoff that never waits longer than `cap` (plus jitter).
    pub fn new(cap: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self {
            next: FIRST_RECONNECT_DELAY.min(cap),
            cap,
            seed,
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = FIRST_RECONNECT_DELAY.min(self.cap);
    }

    /// The next delay to wait.
    pub fn delay(&mut self) -> Duration {
        // xorshift64: enough randomness to spread reconnecting agents apart
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.8 + (self.seed % 1000) as f64 / 2500.0;
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.cap);
        delay
    }
}

/// A collector that cannot be reached: logged at the first failure, summarised once per
/// log interval while it lasts, and logged again when it ends.
pub(super) struct Outage {
    since: Option<Instant>,
    attempts: u64,
    reported: Instant,
}

impl Outage {
    pub(super) fn new() -> Self {
        Self {
            since: None,
            attempts: 0,
            reported: Instant::now(),
        }
    }

    pub(super) fn failed(
        &mut self,
        target: &CollectorTarget,
        what: &str,
        error: &dyn std::fmt::Display,
    ) {
        let now = Instant::now();
        self.attempts += 1;
        match self.since {
            None => {
                self.since = Some(now);
                self.reported = now;
                tracing::warn!(
                    "collector {} ({} {}): {what}: {error}; retrying every {:?} at most",
                    target.name,
                    target.transport.name(),
                    target.address,
                    target.max_reconnect_delay
                );
            }
            Some(since) if now - self.reported >= target.log_interval => {
                self.reported = now;
                tracing::warn!(
                    "collector {} ({}) still unreachable after {:.0} s: {} failed attempt(s), last: {what}: {error}",
                    target.name,
                    target.address,
                    (now - since).as_secs_f64(),
                    self.attempts
                );
            }
            Some(_) => {}
        }
    }

    pub(super) fn recovered(&mut self, target: &CollectorTarget) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                "collector {} ({}) reachable again after {:.1} s and {} failed attempt(s)",
                target.name,
                target.address,
                since.elapsed().as_secs_f64(),
                self.attempts
            );
        }
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::new(cap);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.delay()).collect();
        // 100, 200, 400, 800, 1600 ms, then 2 s: each within ±20%.
        let nominal = [
            100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000, 2000, 2000,
        ];
        for (delay, nominal) in delays.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *delay >= nominal.mul_f64(0.8) && *delay <= nominal.mul_f64(1.2),
                "{delay:?} vs {nominal:?}"
            );
        }
        assert!(delays.iter().all(|d| *d <= cap.mul_f64(1.2)));
        // Jitter: the capped delays are not all the same.
        assert!(delays[6..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(120));
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_delay() {
        let mut backoff = Backoff::new(Duration::from_millis(50));
        for _ in 0..5 {
            assert!(backoff.delay() <= Duration::from_millis(60));
        }
    }
}
