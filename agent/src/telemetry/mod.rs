//! What the agent tells its operators: Prometheus metrics, its health, and the HTTP
//! endpoint on `metrics.listen` that serves both.

pub mod health;
pub mod http;
pub mod metrics;

pub use health::Health;
pub use metrics::Metrics;
