//! The agent's health: healthy until a part it cannot run without (a source thread, a
//! collector task) fails. The first failure is kept, logged, answered on `/healthz` with
//! 503, and stops the agent, which flushes what it has and exits non-zero so that its
//! DaemonSet restarts it.

use tokio::sync::watch;

/// Shared by the supervised parts, the main loop and the HTTP endpoint.
#[derive(Debug)]
pub struct Health {
    failure: watch::Sender<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Healthy.
    pub fn new() -> Self {
        Self {
            failure: watch::Sender::new(None),
        }
    }

    /// Records a failure (logged once; later failures are logged but the first is kept as
    /// the reason).
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!("{reason}: stopping (flushing first)");
        self.failure.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            *failure = Some(reason);
            true
        });
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves once a failure is recorded.
    pub async fn failed(&self) {
        let mut receiver = self.failure.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = receiver.wait_for(Option::is_some).await;
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_the_reason() {
        let health = Health::new();
        assert_eq!(health.failure(), None);
        health.fail("conntrack source panicked: boom");
        health.fail("collector a: task ended");
        assert_eq!(
            health.failure().as_deref(),
            Some("conntrack source panicked: boom")
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(health.failed());
    }

    #[test]
    fn panic_payloads_read_as_text() {
        let payload = std::panic::catch_unwind(|| panic!("at {}", 3)).unwrap_err();
        assert_eq!(panic_message(&*payload), "at 3");
        let payload = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*payload), "plain");
    }
}
