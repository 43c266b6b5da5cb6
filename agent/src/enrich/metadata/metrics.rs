//! What the metadata cache tells Prometheus: whether an API server is configured, whether
//! each resource's list is loaded, how many pods, services and nodes the indexes hold, how
//! often each resource was listed or failed, and how each record end found its pod.
//! Registering twice on one registry (several caches in one test) keeps the first.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Kubernetes metrics.
pub(super) struct KubeMetrics {
    pub(super) available: IntGauge,
    pub(super) synced: IntGaugeVec,
    pub(super) pods: IntGauge,
    pub(super) services: IntGauge,
    pub(super) nodes: IntGauge,
    pub(super) relists: IntCounterVec,
    pub(super) errors: IntCounterVec,
    /// Per end (source, destination), per result (ip, container, none).
    pub(super) lookups: [[IntCounter; 3]; 2],
}

impl KubeMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            let _ = r.register(Box::new(m.clone()));
            m
        }
        let per_resource = |name: &str, help: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &["resource"]).expect("valid metric"),
            )
        };
        let lookups = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "flowex_records_pod_lookups_total",
                    "Pod lookups per end (a connection's first export, and retries), by how the pod was found: ip, container, none.",
                ),
                &["end", "result"],
            )
            .expect("valid metric"),
        );
        let per_end = |end: &str| {
            ["ip", "container", "none"].map(|result| lookups.with_label_values(&[end, result]))
        };
        Self {
            lookups: [per_end("source"), per_end("destination")],
            available: register(
                registry,
                IntGauge::new(
                    "flowex_kubernetes_api_configured",
                    "1 when an API server is configured (in-cluster or kubeconfig); 0: records carry no pod metadata.",
                )
                .expect("valid metric"),
            ),
            synced: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowex_kubernetes_synced",
                        "1 once the resource's list has been loaded and its watch runs.",
                    ),
                    &["resource"],
                )
                .expect("valid metric"),
            ),
            pods: register(
                registry,
                IntGauge::new("flowex_kubernetes_pods", "Pods in the metadata index.")
                    .expect("valid metric"),
            ),
            services: register(
                registry,
                IntGauge::new(
                    "flowex_kubernetes_services",
                    "Services in the metadata index.",
                )
                .expect("valid metric"),
            ),
            nodes: register(
                registry,
                IntGauge::new(
                    "flowex_kubernetes_nodes_with_pod_cidrs",
                    "Nodes whose spec.podCIDRs tell pod addresses from external ones.",
                )
                .expect("valid metric"),
            ),
            relists: per_resource(
                "flowex_kubernetes_lists_total",
                "Full lists of the resource (the first, and relists after a watch expired).",
            ),
            errors: per_resource(
                "flowex_kubernetes_watch_errors_total",
                "Failed lists and watches (retried with backoff).",
            ),
        }
    }
}
