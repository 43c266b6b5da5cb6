//! A Kubernetes API server stand-in for the metadata tests: plain HTTP on a socket the test
//! binds, serving the real list and watch JSON for pods and services. Lists honour
//! `fieldSelector=spec.nodeName=...`; watches stream ADDED, MODIFIED, DELETED and BOOKMARK
//! events after the requested resource version, and answer a version older than the
//! compacted history with the API server's 410 Gone error event, which forces a relist.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    version: u64,
    /// Current objects by (resource, namespace/name).
    objects: BTreeMap<(String, String), Value>,
    /// (version, resource, event type, object).
    events: Vec<(u64, String, String, Value)>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    /// Request targets, in order.
    requests: Vec<String>,
    stopped: bool,
}

/// The server; stops when dropped.
pub struct FakeApi {
    state: Arc<(Mutex<State>, Condvar)>,
    pub addr: SocketAddr,
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "nodes" => "Node",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        _ => "Service",
    }
}

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// Whether `object` passes a `spec.nodeName=X` selector (the only one the agent sends).
fn selected(object: &Value, selector: Option<&str>) -> bool {
    match selector {
        Some(s) if s.starts_with("spec.nodeName=") => {
            object["spec"]["nodeName"] == s["spec.nodeName=".len()..]
        }
        Some(s) if s.starts_with("metadata.name=") => {
            object["metadata"]["name"] == s["metadata.name=".len()..]
        }
        _ => true,
    }
}

/// `namespace` (None: all) and resource of an API path.
fn route(path: &str) -> Option<(Option<String>, &'static str)> {
    let resource = |name: &str| match name {
        "pods" => Some("pods"),
        "services" => Some("services"),
        "nodes" => Some("nodes"),
        "configmaps" => Some("configmaps"),
        "secrets" => Some("secrets"),
        _ => None,
    };
    let rest = path.strip_prefix("/api/v1/")?;
    match rest.split('/').collect::<Vec<_>>()[..] {
        [name] => Some((None, resource(name)?)),
        ["namespaces", namespace, name] => Some((Some(namespace.to_owned()), resource(name)?)),
        _ => None,
    }
}

/// True when `object` is in `namespace` (None: every namespace).
fn in_namespace(object: &Value, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| object["metadata"]["namespace"] == ns)
}

impl FakeApi {
    /// Serves on `listener` (bound by the test, possibly inside a namespace).
    pub fn start(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((
            Mutex::new(State {
                version: 100,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let shared = Arc::clone(&state);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            loop {
                if shared.0.lock().unwrap().stopped {
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&shared);
                        std::thread::spawn(move || {
                            let _ = serve(stream, &shared);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { state, addr }
    }

    /// A kubeconfig naming this server, without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
             current-context: fake\n",
            self.addr
        )
    }

    fn change(&self, resource: &str, kind: &str, mut object: Value) -> u64 {
        let (lock, wake) = &*self.state;
        let mut state = lock.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = (resource.to_owned(), key_of(&object));
        if kind == "DELETED" {
            state.objects.remove(&key);
        } else {
            state.objects.insert(key, object.clone());
        }
        state
            .events
            .push((version, resource.to_owned(), kind.to_owned(), object));
        wake.notify_all();
        version
    }

    /// Adds an object with an ADDED event.
    pub fn add(&self, resource: &str, object: Value) -> u64 {
        self.change(resource, "ADDED", object)
    }

    /// Replaces an object with a MODIFIED event.
    pub fn modify(&self, resource: &str, object: Value) -> u64 {
        self.change(resource, "MODIFIED", object)
    }

    /// Deletes an object with a DELETED event.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> u64 {
        let key = (resource.to_owned(), format!("{namespace}/{name}"));
        let object = self.state.0.lock().unwrap().objects[&key].clone();
        self.change(resource, "DELETED", object)
    }

    /// Sends a BOOKMARK at a new version; returns it.
    pub fn bookmark(&self, resource: &str) -> u64 {
        let (lock, wake) = &*self.state;
        let mut state = lock.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let mark = json!({
            "kind": kind_of(resource),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version.to_string()}
        });
        state
            .events
            .push((version, resource.to_owned(), "BOOKMARK".into(), mark));
        wake.notify_all();
        version
    }

    /// Changes objects without events (as if the watchers missed them), forgets the
    /// history up to now and ends the open watches: resuming gets 410 Gone.
    pub fn change_unseen_and_expire(&self, resource: &str, remove: &[&str], add: Vec<Value>) {
        let (lock, wake) = &*self.state;
        let mut state = lock.lock().unwrap();
        for key in remove {
            state
                .objects
                .remove(&(resource.to_owned(), (*key).to_owned()));
        }
        for mut object in add {
            state.version += 1;
            object["metadata"]["resourceVersion"] = json!(state.version.to_string());
            state
                .objects
                .insert((resource.to_owned(), key_of(&object)), object);
        }
        state.version += 1;
        state.compacted = state.version;
        state.epoch += 1;
        wake.notify_all();
    }

    /// Ends every open watch (the client resumes from its last version).
    pub fn close_watches(&self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap().epoch += 1;
        wake.notify_all();
    }

    /// Decoded request targets so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.0.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap().stopped = true;
        wake.notify_all();
    }
}

fn serve(stream: TcpStream, shared: &Arc<(Mutex<State>, Condvar)>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        // Skip the headers (GET requests carry no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
        }
        let target = decode(line.split_whitespace().nth(1).unwrap_or(""));
        shared.0.lock().unwrap().requests.push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        let (namespace, resource) = match route(path) {
            Some(found) => found,
            None => {
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
                continue;
            }
        };
        let selector = params.get("fieldSelector").copied();
        if matches!(params.get("watch"), Some(&"true") | Some(&"1")) {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return watch(
                stream,
                shared,
                resource,
                namespace.as_deref(),
                selector,
                from,
            );
        }
        let state = shared.0.lock().unwrap();
        let items: Vec<&Value> = state
            .objects
            .iter()
            .filter(|((r, _), o)| {
                r == resource && selected(o, selector) && in_namespace(o, namespace.as_deref())
            })
            .map(|(_, o)| o)
            .collect();
        let body = json!({
            "kind": format!("{}List", kind_of(resource)),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        })
        .to_string();
        drop(state);
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

fn chunk(stream: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
    stream.flush()
}

fn watch(
    mut stream: TcpStream,
    shared: &Arc<(Mutex<State>, Condvar)>,
    resource: &str,
    namespace: Option<&str>,
    selector: Option<&str>,
    from: u64,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let (lock, wake) = &**shared;
    let mut state = lock.lock().unwrap();
    if from < state.compacted {
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", state.compacted),
            "reason": "Expired", "code": 410
        }});
        drop(state);
        chunk(&mut stream, &gone.to_string())?;
        return write!(stream, "0\r\n\r\n");
    }
    let epoch = state.epoch;
    let mut sent = from;
    loop {
        let due: Vec<(u64, Value)> = state
            .events
            .iter()
            .filter(|(v, r, kind, o)| {
                *v > sent
                    && r == resource
                    && (kind == "BOOKMARK" || (selected(o, selector) && in_namespace(o, namespace)))
            })
            .map(|(v, _, kind, o)| (*v, json!({"type": kind, "object": o})))
            .collect();
        if let Some((last, _)) = due.last() {
            sent = *last;
        }
        if !due.is_empty() {
            drop(state);
            for (_, event) in &due {
                chunk(&mut stream, &event.to_string())?;
            }
            state = lock.lock().unwrap();
            continue;
        }
        if state.epoch != epoch || state.stopped {
            drop(state);
            return write!(stream, "0\r\n\r\n");
        }
        state = wake
            .wait_timeout(state, Duration::from_millis(200))
            .unwrap()
            .0;
    }
}

/// A uid in Kubernetes' form (a UUID), the same for the same `text`: two FNV-1a hashes
/// of it, written as 8-4-4-4-12 hex digits.
pub fn uid_of(text: &str) -> String {
    let hash = |seed: u64| {
        text.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hex = format!(
        "{:016x}{:016x}",
        hash(0xcbf2_9ce4_8422_2325),
        hash(0x8422_2325_cbf2_9ce4)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A pod object as the API server returns it.
pub fn pod(namespace: &str, name: &str, node: &str, ips: &[&str], containers: &[&str]) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid_of(&format!("pod/{namespace}/{name}")),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": name},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "example/app:1"}]
        },
        "status": {
            "phase": "Running",
            "podIP": ips.first().copied().unwrap_or(""),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "containerStatuses": containers.iter().map(|id| json!({
                "name": "main", "image": "example/app:1", "imageID": "", "ready": true,
                "restartCount": 0, "containerID": format!("containerd://{id}")
            })).collect::<Vec<_>>()
        }
    })
}

/// A ClusterIP service object.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ips: &[&str],
    ports: &[(&str, u16, &str)],
) -> Value {
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid_of(&format!("service/{namespace}/{name}"))},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ips.first().copied().unwrap_or("None"),
            "clusterIPs": cluster_ips,
            "ports": ports.iter().map(|(port_name, port, protocol)| json!({
                "name": port_name, "port": port, "protocol": protocol
            })).collect::<Vec<_>>()
        }
    })
}

/// A Node object with pod CIDRs.
pub fn node(name: &str, pod_cidrs: &[&str]) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": uid_of(&format!("node/{name}"))},
        "spec": {"podCIDR": pod_cidrs.first().copied().unwrap_or(""), "podCIDRs": pod_cidrs}
    })
}

/// A ConfigMap with `data`.
pub fn config_map(namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": namespace, "name": name},
        "data": data,
    })
}

/// A Secret of type kubernetes.io/tls with `data` (base64-encoded here).
pub fn secret(namespace: &str, name: &str, data: &[(&str, &[u8])]) -> Value {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let base64 = |bytes: &[u8]| {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(base64(v))))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"namespace": namespace, "name": name},
        "data": data,
    })
}
