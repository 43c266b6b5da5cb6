//! The HTTP endpoint on `metrics.listen`, on hyper's HTTP/1.1 server: `/metrics`
//! (Prometheus text format), `/healthz` ("ok", or 503 with the reason once the agent
//! has failed) and `/diagnose` (the node network's findings, as text or, with
//! `?format=json`, JSON; always 200: a finding is information, not the agent's failure).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{Health, Metrics};
use crate::export::ExportingProcess;
use crate::store::ConnectionStore;

const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reports on.
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub store: Arc<ConnectionStore>,
    pub process: Arc<ExportingProcess>,
    pub health: Arc<Health>,
}

impl Endpoint {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match request.uri().path() {
            "/metrics" => {
                self.metrics.refresh(&self.store, &self.process);
                (
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    Bytes::from(self.metrics.render()),
                )
            }
            "/diagnose" => {
                let report = self.metrics.diagnose();
                if request.uri().query() == Some("format=json") {
                    (
                        StatusCode::OK,
                        "application/json",
                        Bytes::from(report.to_json().to_string()),
                    )
                } else {
                    (
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        Bytes::from(report.to_text()),
                    )
                }
            }
            "/healthz" => match self.health.failure() {
                None => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
                Some(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    Bytes::from(format!("failed: {reason}\n")),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"not found\n"),
            ),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    // A failing accept (EMFILE) fails again at once: wait before the next try (10 ms
    // doubling to 1 s), and log the first failure, then at most one line per minute with
    // the failures since, and the recovery after a logged failure.
    let mut pause = ACCEPT_PAUSE_MIN;
    let mut unreported = 0u64;
    let mut failing = false;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if failing {
                    tracing::info!("metrics server accepts connections again");
                    failing = false;
                }
                pause = ACCEPT_PAUSE_MIN;
                stream
            }
            Err(error) => {
                endpoint.metrics.accept_failed();
                unreported += 1;
                let now = tokio::time::Instant::now();
                if last_warning.is_none_or(|at| now - at >= ACCEPT_LOG_INTERVAL) {
                    tracing::warn!(
                        "metrics server cannot accept connections ({error}): {unreported} failure(s) since the last report, retrying every {} ms at most",
                        ACCEPT_PAUSE_MAX.as_millis()
                    );
                    unreported = 0;
                    last_warning = Some(now);
                    failing = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                continue;
            }
        };
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = endpoint.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request is its own business: nothing to log.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
