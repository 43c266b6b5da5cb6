//! Keeping the cache current: the API client, and one kube-rs watcher per resource (pods,
//! services, nodes). A watcher lists, then watches from the list's resource version, and
//! lists again when the watch expires (410 Gone); each event goes straight into the
//! indexes. No copy of the objects is kept: kube-rs's `reflector::Store` would keep the
//! latest object per key, which is both more than the indexes need and less (the pod index
//! remembers the holds of ended pods on their IPs). A failing watch is retried with
//! backoff by the watcher, counted, and logged once per outage.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{Node, Pod, Service};

use super::nodes::node_pod_cidrs;
use super::{Metadata, PodView, ServiceView};
use crate::config::{KubernetesConfig, PodScope};

pub(crate) use crate::store::now_ms;

impl Metadata {
    fn refresh_gauges(&self) {
        if let Some(m) = &self.metrics {
            m.pods.set(self.pods().live_pods() as i64);
            m.services.set(self.services().len() as i64);
            m.nodes.set(self.nodes().len() as i64);
        }
    }

    /// Applies one pod watch event.
    pub fn on_pod_event(&self, event: kube::runtime::watcher::Event<Pod>, now_ms: u64) {
        use kube::runtime::watcher::Event;
        {
            let mut pods = self.pods_mut();
            match event {
                Event::Init => {
                    pods.begin_relist();
                    self.count_list("pods");
                }
                Event::InitApply(pod) | Event::Apply(pod) => {
                    if let Some(view) = PodView::from_pod(&pod) {
                        pods.apply(view, now_ms);
                    }
                }
                Event::Delete(pod) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        pods.delete(uid, now_ms);
                    }
                }
                Event::InitDone => {
                    pods.end_relist(now_ms);
                    self.set_synced("pods", true);
                }
            }
        }
        self.refresh_gauges();
    }

    /// Applies one service watch event.
    pub fn on_service_event(&self, event: kube::runtime::watcher::Event<Service>) {
        use kube::runtime::watcher::Event;
        {
            let mut services = self.services_mut();
            match event {
                Event::Init => {
                    services.begin_relist();
                    self.count_list("services");
                }
                Event::InitApply(service) | Event::Apply(service) => {
                    if let Some(view) = ServiceView::from_service(&service) {
                        services.apply(&view);
                    }
                }
                Event::Delete(service) => {
                    if let Some(view) = ServiceView::from_service(&service) {
                        services.delete(&view.name);
                    }
                }
                Event::InitDone => {
                    services.end_relist();
                    self.set_synced("services", true);
                }
            }
        }
        self.refresh_gauges();
    }

    /// Applies one node watch event (pod CIDRs only).
    pub fn on_node_event(&self, event: kube::runtime::watcher::Event<Node>) {
        use kube::runtime::watcher::Event;
        {
            let mut nodes = self.nodes_mut();
            match event {
                Event::Init => {
                    nodes.begin_relist();
                    self.count_list("nodes");
                }
                Event::InitApply(node) | Event::Apply(node) => {
                    if let Some(name) = node.metadata.name.as_deref() {
                        let uid = super::pods::uid_bytes(
                            node.metadata.uid.as_deref().unwrap_or_default(),
                        );
                        nodes.apply_node(name, uid, node_pod_cidrs(&node));
                    }
                }
                Event::Delete(node) => {
                    if let Some(name) = node.metadata.name.as_deref() {
                        nodes.delete(name);
                    }
                }
                Event::InitDone => {
                    nodes.end_relist();
                    self.set_synced("nodes", true);
                }
            }
        }
        self.refresh_gauges();
    }

    fn count_list(&self, resource: &str) {
        if let Some(m) = &self.metrics {
            m.relists.with_label_values(&[resource]).inc();
        }
    }

    fn set_synced(&self, resource: &str, synced: bool) {
        let index = match resource {
            "pods" => 0,
            "services" => 1,
            _ => 2,
        };
        self.synced[index].store(synced, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.synced
                .with_label_values(&[resource])
                .set(i64::from(synced));
        }
    }

    fn count_error(&self, resource: &str) {
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&[resource]).inc();
        }
    }
}

/// The client for `config`: the kubeconfig file it names, else the usual inference
/// ($KUBECONFIG, ~/.kube/config, then the in-cluster service account). `Ok(None)` when
/// none is found; an error when a named kubeconfig cannot be used. The client comes with
/// the API server's URL.
pub async fn client(config: &KubernetesConfig) -> anyhow::Result<Option<(kube::Client, String)>> {
    use anyhow::Context;
    let client_config = if config.kubeconfig.is_empty() {
        match kube::Config::infer().await {
            Ok(c) => c,
            Err(_) => return Ok(None),
        }
    } else {
        let path = &config.kubeconfig;
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("kubernetes.kubeconfig {path}"))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .with_context(|| format!("kubernetes.kubeconfig {path}"))?
    };
    let url = client_config.cluster_url.to_string();
    let client = kube::Client::try_from(client_config).context("building the Kubernetes client")?;
    Ok(Some((client, url)))
}

/// Starts the pod, service and node watchers on the current runtime, feeding `metadata`.
/// `node` selects this node's pods unless the scope is the cluster.
pub fn start_watchers(
    metadata: &Arc<Metadata>,
    client: kube::Client,
    scope: PodScope,
    node: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    use kube::api::Api;
    use kube::runtime::{WatchStreamExt, watcher};

    for resource in ["pods", "services", "nodes"] {
        metadata.set_synced(resource, false);
    }
    metadata.activate();
    if let Some(m) = &metadata.metrics {
        m.available.set(1);
    }
    let pod_config = match scope {
        PodScope::Node => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        PodScope::Cluster => watcher::Config::default(),
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);

    let pod_events = watcher(pods, pod_config).default_backoff();
    let service_events = watcher(services, watcher::Config::default()).default_backoff();
    let node_events = watcher(nodes, watcher::Config::default()).default_backoff();
    vec![
        tokio::spawn(follow(
            pod_events,
            "pods",
            Arc::clone(metadata),
            |m, event| m.on_pod_event(event, now_ms()),
        )),
        tokio::spawn(follow(
            service_events,
            "services",
            Arc::clone(metadata),
            |m, event| m.on_service_event(event),
        )),
        tokio::spawn(follow(
            node_events,
            "nodes",
            Arc::clone(metadata),
            |m, event| m.on_node_event(event),
        )),
    ]
}

/// Applies a watcher's events until it ends; failures are counted, and logged once until
/// the watch recovers (the watcher retries with backoff by itself).
async fn follow<K>(
    events: impl futures_util::Stream<
        Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
    >,
    resource: &'static str,
    metadata: Arc<Metadata>,
    apply: impl Fn(&Metadata, kube::runtime::watcher::Event<K>),
) {
    use futures_util::StreamExt;
    let mut events = std::pin::pin!(events);
    let mut failing = false;
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => {
                if failing {
                    tracing::info!("{resource} watch recovered");
                    failing = false;
                }
                apply(&metadata, event);
            }
            Err(error) => {
                metadata.count_error(resource);
                if !failing {
                    tracing::warn!("{resource} watch failed (retrying with backoff): {error}");
                    failing = true;
                }
            }
        }
    }
}
