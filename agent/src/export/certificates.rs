//! A collector's CA and client pair read through the Kubernetes API (`tls.antrea`), as
//! Antrea's agents read them: the CA from a ConfigMap's `ca.crt`, the pair from a
//! Secret's `tls.crt` and `tls.key`, by default the Flow Aggregator's
//! `flow-aggregator/flow-aggregator-ca` and `flow-aggregator/flow-aggregator-client-tls`.
//! Both are watched (one object each, by name), so a rotation is used from the next
//! connection on. A pod cannot mount another namespace's ConfigMap or Secret: this is how
//! an agent outside the aggregator's namespace gets them.

use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

/// The PEM bytes seen so far (None: not there, or without the key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Material {
    pub ca: Option<Vec<u8>>,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
}

/// The certificates of one ConfigMap and one Secret, kept current by [`Self::watch`].
pub struct ApiCertificates {
    /// `namespace/name` of the ConfigMap with `ca.crt`.
    pub config_map: String,
    /// `namespace/name` of the Secret with `tls.crt` and `tls.key`.
    pub secret: String,
    material: RwLock<Material>,
}

impl std::fmt::Debug for ApiCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCertificates")
            .field("config_map", &self.config_map)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ApiCertificates {
    fn eq(&self, other: &Self) -> bool {
        self.config_map == other.config_map && self.secret == other.secret
    }
}

impl Eq for ApiCertificates {}

/// `namespace/name` split.
fn split(object: &str) -> (&str, &str) {
    object.split_once('/').unwrap_or(("", object))
}

impl ApiCertificates {
    /// Certificates of `config_map` and `secret` (`namespace/name`), none seen yet.
    pub fn new(config_map: &str, secret: &str) -> Self {
        Self {
            config_map: config_map.to_owned(),
            secret: secret.to_owned(),
            material: RwLock::default(),
        }
    }

    /// What has been seen so far.
    pub fn material(&self) -> Material {
        self.material
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Material)) -> bool {
        let mut material = self
            .material
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = material.clone();
        change(&mut material);
        *material != before
    }

    /// The ConfigMap as it is now (None: deleted).
    pub fn set_config_map(&self, config_map: Option<&ConfigMap>) {
        let ca = config_map
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("ca.crt"))
            .filter(|pem| !pem.is_empty())
            .map(|pem| pem.as_bytes().to_vec());
        let present = ca.is_some();
        if self.update(|m| m.ca = ca) {
            tracing::info!(
                "ConfigMap {}: CA {}",
                self.config_map,
                if present {
                    "updated"
                } else {
                    "gone (no ca.crt)"
                }
            );
        }
    }

    /// The Secret as it is now (None: deleted).
    pub fn set_secret(&self, secret: Option<&Secret>) {
        let data = secret.and_then(|s| s.data.as_ref());
        let field = |key: &str| {
            data.and_then(|d| d.get(key))
                .filter(|v| !v.0.is_empty())
                .map(|v| v.0.clone())
        };
        let (cert, key) = (field("tls.crt"), field("tls.key"));
        let present = cert.is_some() && key.is_some();
        if self.update(|m| {
            m.cert = cert;
            m.key = key;
        }) {
            tracing::info!(
                "Secret {}: client certificate {}",
                self.secret,
                if present {
                    "updated"
                } else {
                    "gone (no tls.crt and tls.key)"
                }
            );
        }
    }

    /// Watches the ConfigMap and the Secret (each by name in its namespace) on the current
    /// runtime until the tasks are aborted; the watchers retry with backoff.
    pub fn watch(self: &Arc<Self>, client: kube::Client) -> Vec<tokio::task::JoinHandle<()>> {
        use futures_util::StreamExt;
        use kube::api::Api;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::{Config, Event, watcher};

        let (cm_namespace, cm_name) = split(&self.config_map);
        let (secret_namespace, secret_name) = split(&self.secret);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), cm_namespace);
        let secrets: Api<Secret> = Api::namespaced(client, secret_namespace);
        let cm_events = watcher(
            config_maps,
            Config::default().fields(&format!("metadata.name={cm_name}")),
        )
        .default_backoff();
        let secret_events = watcher(
            secrets,
            Config::default().fields(&format!("metadata.name={secret_name}")),
        )
        .default_backoff();
        let this = Arc::clone(self);
        let config_map_task = tokio::spawn(async move {
            let mut events = std::pin::pin!(cm_events);
            let mut failing = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(c) | Event::InitApply(c)) => this.set_config_map(Some(&c)),
                    Ok(Event::Delete(_)) => this.set_config_map(None),
                    Ok(Event::Init | Event::InitDone) => {}
                    Err(error) => {
                        if !failing {
                            tracing::warn!(
                                "ConfigMap {}: {error} (needs get, list and watch on it; retrying)",
                                this.config_map
                            );
                        }
                        failing = true;
                        continue;
                    }
                }
                failing = false;
            }
        });
        let this = Arc::clone(self);
        let secret_task = tokio::spawn(async move {
            let mut events = std::pin::pin!(secret_events);
            let mut failing = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(s) | Event::InitApply(s)) => this.set_secret(Some(&s)),
                    Ok(Event::Delete(_)) => this.set_secret(None),
                    Ok(Event::Init | Event::InitDone) => {}
                    Err(error) => {
                        if !failing {
                            tracing::warn!(
                                "Secret {}: {error} (needs get, list and watch on it; retrying)",
                                this.secret
                            );
                        }
                        failing = true;
                        continue;
                    }
                }
                failing = false;
            }
        });
        vec![config_map_task, secret_task]
    }
}
