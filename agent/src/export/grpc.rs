//! `transport: grpc`: Antrea's `FlowExportService` over mutual TLS, as Antrea's agents
//! call it on the Flow Aggregator (port 14739).
//!
//! Records are encoded once, as IPFIX, for every collector; this transport reads each
//! record of its queue back into a `Flow`, field by field as Antrea's agent fills one,
//! through a layout worked out once per template. A chunk of the queue goes on one
//! client stream (up to [`FLOWS_PER_REQUEST`] flows per message), and its records count
//! as exported when the aggregator answers the stream's end with its `ExportResponse`:
//! that answer comes only after the aggregator has read every message. A stream that
//! fails is sent again whole on a new connection (its records counted as resent), so a
//! record may reach the aggregator twice but is never lost while the agent runs.

use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use flowex_flowpb::flow_export_service_client::FlowExportServiceClient;
use flowex_flowpb::{ExportRequest, Flow, Ip, Ipfix, Kubernetes, Stats, Tcp, transport};
use flowex_ipfix::decoder::DataRecord;
use flowex_ipfix::{Template, Value};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::backoff::{Backoff, Outage};
use super::collector::{Chunk, CollectorStats, CollectorTarget, DropReason};
use super::transport::CONNECT_TIMEOUT;

/// Flows per stream message: Antrea's agent sends one; batching saves framing.
pub const FLOWS_PER_REQUEST: usize = 1024;
/// How long one stream may take from its first message to the aggregator's answer.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a template's field goes in a `Flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    StartSeconds,
    EndSeconds,
    StartMilliseconds,
    EndMilliseconds,
    EndReason,
    SourcePort,
    DestinationPort,
    Protocol,
    PacketTotal,
    OctetTotal,
    PacketDelta,
    OctetDelta,
    ReversePacketTotal,
    ReverseOctetTotal,
    ReversePacketDelta,
    ReverseOctetDelta,
    Source,
    Destination,
    SourcePodName,
    SourcePodNamespace,
    SourceNodeName,
    DestinationPodName,
    DestinationPodNamespace,
    DestinationNodeName,
    ServicePort,
    ServicePortName,
    IngressPolicyName,
    IngressPolicyNamespace,
    IngressPolicyType,
    IngressRuleName,
    IngressRuleAction,
    EgressPolicyName,
    EgressPolicyNamespace,
    EgressPolicyType,
    EgressRuleName,
    EgressRuleAction,
    TcpState,
    FlowType,
    EgressName,
    EgressIp,
    EgressNodeName,
    ProxySnatPort,
    ClusterIp,
    ProxySnatIp,
    ServiceIp,
    SourcePodLabels,
    DestinationPodLabels,
    SourcePodUid,
    DestinationPodUid,
    SourceNodeUid,
    DestinationNodeUid,
    ServiceUid,
}

fn slot(name: &str) -> Option<Slot> {
    use Slot::*;
    Some(match name {
        "flowStartSeconds" => StartSeconds,
        "flowEndSeconds" => EndSeconds,
        "flowStartMilliseconds" => StartMilliseconds,
        "flowEndMilliseconds" => EndMilliseconds,
        "flowEndReason" => EndReason,
        "sourceTransportPort" => SourcePort,
        "destinationTransportPort" => DestinationPort,
        "protocolIdentifier" => Protocol,
        "packetTotalCount" => PacketTotal,
        "octetTotalCount" => OctetTotal,
        "packetDeltaCount" => PacketDelta,
        "octetDeltaCount" => OctetDelta,
        "reversePacketTotalCount" => ReversePacketTotal,
        "reverseOctetTotalCount" => ReverseOctetTotal,
        "reversePacketDeltaCount" => ReversePacketDelta,
        "reverseOctetDeltaCount" => ReverseOctetDelta,
        "sourceIPv4Address" | "sourceIPv6Address" => Source,
        "destinationIPv4Address" | "destinationIPv6Address" => Destination,
        "sourcePodName" => SourcePodName,
        "sourcePodNamespace" => SourcePodNamespace,
        "sourceNodeName" => SourceNodeName,
        "destinationPodName" => DestinationPodName,
        "destinationPodNamespace" => DestinationPodNamespace,
        "destinationNodeName" => DestinationNodeName,
        "destinationServicePort" => ServicePort,
        "destinationServicePortName" => ServicePortName,
        "ingressNetworkPolicyName" => IngressPolicyName,
        "ingressNetworkPolicyNamespace" => IngressPolicyNamespace,
        "ingressNetworkPolicyType" => IngressPolicyType,
        "ingressNetworkPolicyRuleName" => IngressRuleName,
        "ingressNetworkPolicyRuleAction" => IngressRuleAction,
        "egressNetworkPolicyName" => EgressPolicyName,
        "egressNetworkPolicyNamespace" => EgressPolicyNamespace,
        "egressNetworkPolicyType" => EgressPolicyType,
        "egressNetworkPolicyRuleName" => EgressRuleName,
        "egressNetworkPolicyRuleAction" => EgressRuleAction,
        "tcpState" => TcpState,
        "flowType" => FlowType,
        "egressName" => EgressName,
        "egressIP" => EgressIp,
        "egressNodeName" => EgressNodeName,
        "proxySnatPort" => ProxySnatPort,
        "sourcePodLabels" => SourcePodLabels,
        "destinationPodLabels" => DestinationPodLabels,
        "sourcePodUUID" => SourcePodUid,
        "destinationPodUUID" => DestinationPodUid,
        "sourceNodeUUID" => SourceNodeUid,
        "destinationNodeUUID" => DestinationNodeUid,
        "destinationServiceUUID" => ServiceUid,
        "destinationClusterIPv4" | "destinationClusterIPv6" => ClusterIp,
        "proxySnatIPv4" | "proxySnatIPv6" => ProxySnatIp,
        "destinationServiceIPv4" | "destinationServiceIPv6" => ServiceIp,
        _ => return None,
    })
}

/// A template's fields as `Flow` slots, worked out once (elements a `Flow` has no room
/// for, such as flowex's process elements, have none).
pub struct FlowLayout {
    template: Template,
    slots: Vec<Option<Slot>>,
}

impl FlowLayout {
    /// The layout of `template`.
    pub fn new(template: &Template) -> Self {
        Self {
            template: template.clone(),
            slots: template
                .fields()
                .iter()
                .map(|field| field.ie.and_then(|ie| slot(ie.name)))
                .collect(),
        }
    }

    /// The template's id.
    pub fn template_id(&self) -> u16 {
        self.template.id()
    }

    /// The `Flow` of one record encoded with this layout's template.
    pub fn flow(&self, bytes: &[u8], domain: u32, now: SystemTime) -> Flow {
        let record = DataRecord::new(&self.template, bytes);
        let mut flow = Flow {
            ipfix: Some(Ipfix {
                export_time: Some(now.into()),
                observation_domain_id: domain,
                ..Ipfix::default()
            }),
            ..Flow::default()
        };
        let mut ip = Ip::default();
        let mut ports = flowex_flowpb::Transport::default();
        let mut k8s = Kubernetes::default();
        let mut stats = Stats::default();
        let mut reverse = Stats::default();
        let (mut start_ms, mut end_ms) = (0u64, 0u64);
        let (mut start_s, mut end_s) = (0u32, 0u32);
        for ((field, raw), slot) in record.raw_fields().zip(&self.slots) {
            let Some(slot) = slot else { continue };
            let Ok(value) = Value::decode(field.data_type(), raw) else {
                continue;
            };
            apply(
                *slot,
                value,
                &mut Target {
                    flow: &mut flow,
                    ip: &mut ip,
                    ports: &mut ports,
                    k8s: &mut k8s,
                    stats: &mut stats,
                    reverse: &mut reverse,
                    times: (&mut start_s, &mut end_s, &mut start_ms, &mut end_ms),
                },
            );
        }
        let timestamp = |ms: u64, s: u32| -> prost_types::Timestamp {
            if ms > 0 {
                prost_types::Timestamp {
                    seconds: (ms / 1000) as i64,
                    nanos: ((ms % 1000) * 1_000_000) as i32,
                }
            } else {
                prost_types::Timestamp {
                    seconds: i64::from(s),
                    nanos: 0,
                }
            }
        };
        flow.start_ts = Some(timestamp(start_ms, start_s));
        flow.end_ts = Some(timestamp(end_ms, end_s));
        // Antrea names the node only for the ends whose pod it knows.
        if k8s.source_pod_name.is_empty() {
            k8s.source_node_name.clear();
        }
        if k8s.destination_pod_name.is_empty() {
            k8s.destination_node_name.clear();
        }
        flow.ip = Some(ip);
        flow.transport = Some(ports);
        flow.k8s = Some(k8s);
        flow.stats = Some(stats);
        flow.reverse_stats = Some(reverse);
        flow
    }
}

struct Target<'a> {
    flow: &'a mut Flow,
    ip: &'a mut Ip,
    ports: &'a mut flowex_flowpb::Transport,
    k8s: &'a mut Kubernetes,
    stats: &'a mut Stats,
    reverse: &'a mut Stats,
    times: (&'a mut u32, &'a mut u32, &'a mut u64, &'a mut u64),
}

/// Pod labels from their IPFIX form (a JSON object; empty: no pod, so no labels).
fn labels(json: &str) -> Option<flowex_flowpb::Labels> {
    let labels = serde_json::from_str(json).ok()?;
    Some(flowex_flowpb::Labels { labels })
}

/// A uid from its 16 IPFIX bytes, in the text form Kubernetes writes (empty for zeros).
fn uid_text(value: Value<'_>) -> String {
    match value {
        Value::Bytes(b) if b.len() == 16 && b.iter().any(|x| *x != 0) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        _ => String::new(),
    }
}

/// An address as Antrea sends it: 4 or 16 bytes, nothing for an unspecified one.
fn address_bytes(value: Value<'_>) -> Vec<u8> {
    match value {
        Value::Ipv4(a) if !a.is_unspecified() => a.octets().to_vec(),
        Value::Ipv6(a) if !a.is_unspecified() => a.octets().to_vec(),
        _ => Vec::new(),
    }
}

// destination_cluster_ip is deprecated in the proto, but Antrea's agents still fill it
// (with destination_service_ip) and older aggregators read only it.
#[allow(deprecated)]
fn apply(slot: Slot, value: Value<'_>, t: &mut Target<'_>) {
    let unsigned = match value {
        Value::Unsigned(n) => n,
        Value::DateTimeSeconds(s) => u64::from(s),
        Value::DateTimeMilliseconds(ms) => ms,
        _ => 0,
    };
    let text = match value {
        Value::String(s) => s,
        _ => "",
    };
    let k8s = &mut *t.k8s;
    match slot {
        Slot::StartSeconds => *t.times.0 = unsigned as u32,
        Slot::EndSeconds => *t.times.1 = unsigned as u32,
        Slot::StartMilliseconds => *t.times.2 = unsigned,
        Slot::EndMilliseconds => *t.times.3 = unsigned,
        Slot::EndReason => t.flow.end_reason = unsigned as i32,
        Slot::SourcePort => t.ports.source_port = unsigned as u32,
        Slot::DestinationPort => t.ports.destination_port = unsigned as u32,
        Slot::Protocol => t.ports.protocol_number = unsigned as u32,
        Slot::PacketTotal => t.stats.packet_total_count = unsigned,
        Slot::OctetTotal => t.stats.octet_total_count = unsigned,
        Slot::PacketDelta => t.stats.packet_delta_count = unsigned,
        Slot::OctetDelta => t.stats.octet_delta_count = unsigned,
        Slot::ReversePacketTotal => t.reverse.packet_total_count = unsigned,
        Slot::ReverseOctetTotal => t.reverse.octet_total_count = unsigned,
        Slot::ReversePacketDelta => t.reverse.packet_delta_count = unsigned,
        Slot::ReverseOctetDelta => t.reverse.octet_delta_count = unsigned,
        Slot::Source | Slot::Destination => {
            t.ip.version = match value {
                Value::Ipv6(_) => 6,
                _ => 4,
            };
            let bytes = match value {
                Value::Ipv4(a) => a.octets().to_vec(),
                Value::Ipv6(a) => a.octets().to_vec(),
                _ => Vec::new(),
            };
            if slot == Slot::Source {
                t.ip.source = bytes;
            } else {
                t.ip.destination = bytes;
            }
        }
        Slot::SourcePodName => k8s.source_pod_name = text.to_owned(),
        Slot::SourcePodNamespace => k8s.source_pod_namespace = text.to_owned(),
        Slot::SourceNodeName => k8s.source_node_name = text.to_owned(),
        Slot::DestinationPodName => k8s.destination_pod_name = text.to_owned(),
        Slot::DestinationPodNamespace => k8s.destination_pod_namespace = text.to_owned(),
        Slot::DestinationNodeName => k8s.destination_node_name = text.to_owned(),
        Slot::ServicePort => k8s.destination_service_port = unsigned as u32,
        Slot::ServicePortName => k8s.destination_service_port_name = text.to_owned(),
        Slot::IngressPolicyName => k8s.ingress_network_policy_name = text.to_owned(),
        Slot::IngressPolicyNamespace => k8s.ingress_network_policy_namespace = text.to_owned(),
        // Antrea's IPFIX codes and the proto's enum numbers are the same.
        Slot::IngressPolicyType => k8s.ingress_network_policy_type = unsigned as i32,
        Slot::IngressRuleName => k8s.ingress_network_policy_rule_name = text.to_owned(),
        Slot::IngressRuleAction => k8s.ingress_network_policy_rule_action = unsigned as i32,
        Slot::EgressPolicyName => k8s.egress_network_policy_name = text.to_owned(),
        Slot::EgressPolicyNamespace => k8s.egress_network_policy_namespace = text.to_owned(),
        Slot::EgressPolicyType => k8s.egress_network_policy_type = unsigned as i32,
        Slot::EgressRuleName => k8s.egress_network_policy_rule_name = text.to_owned(),
        Slot::EgressRuleAction => k8s.egress_network_policy_rule_action = unsigned as i32,
        Slot::TcpState => {
            if !text.is_empty() {
                t.ports.protocol = Some(transport::Protocol::Tcp(Tcp {
                    state_name: text.to_owned(),
                }));
            }
        }
        Slot::FlowType => k8s.flow_type = unsigned as i32,
        Slot::SourcePodLabels => k8s.source_pod_labels = labels(text),
        Slot::DestinationPodLabels => k8s.destination_pod_labels = labels(text),
        Slot::SourcePodUid => k8s.source_pod_uid = uid_text(value),
        Slot::DestinationPodUid => k8s.destination_pod_uid = uid_text(value),
        Slot::SourceNodeUid => k8s.source_node_uid = uid_text(value),
        Slot::DestinationNodeUid => k8s.destination_node_uid = uid_text(value),
        Slot::ServiceUid => k8s.destination_service_uid = uid_text(value),
        Slot::EgressName => k8s.egress_name = text.to_owned(),
        Slot::EgressIp => {
            k8s.egress_ip = text
                .parse::<IpAddr>()
                .map(|ip| match ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                })
                .unwrap_or_default();
        }
        Slot::EgressNodeName => k8s.egress_node_name = text.to_owned(),
        Slot::ProxySnatPort => t.flow.proxy_snat_port = unsigned as u32,
        Slot::ClusterIp => k8s.destination_cluster_ip = address_bytes(value),
        Slot::ProxySnatIp => t.flow.proxy_snat_ip = address_bytes(value),
        Slot::ServiceIp => k8s.destination_service_ip = address_bytes(value),
    }
}

/// Connects TCP, then TLS offering h2, for tonic's channel: the same TLS files and
/// checks as `transport: tls`, read at each connection.
#[derive(Clone)]
struct TlsConnector {
    target: Arc<CollectorTarget>,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let target = Arc::clone(&self.target);
        Box::pin(async move {
            let settings = target.tls.clone().unwrap_or_default();
            let material = target.api_certificates.as_ref().map(|api| api.material());
            let config = super::tls::client_config_for(&settings, material.as_ref(), &[b"h2"])
                .map_err(std::io::Error::other)?;
            let name = super::tls::server_name(&settings, &target.address)
                .map_err(std::io::Error::other)?;
            let addr = tokio::net::lookup_host(&target.address)
                .await?
                .next()
                .ok_or_else(|| {
                    std::io::Error::other(format!("{} resolves to nothing", target.address))
                })?;
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// An error with its sources, on one line (tonic's own text hides the TLS reason).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

async fn connect(
    target: &Arc<CollectorTarget>,
) -> Result<FlowExportServiceClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
        .map_err(|e| describe(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect_with_connector(TlsConnector {
            target: Arc::clone(target),
        })
        .await
        .map_err(|e| describe(&e))?;
    Ok(FlowExportServiceClient::new(channel))
}

/// The flows of `chunk`, in stream messages. Records of a template the layouts do not
/// know are counted and left out (the agent's own templates are all known).
fn requests(
    chunk: &Chunk,
    layouts: &[FlowLayout],
    domain: u32,
    unknown: &mut u64,
) -> Vec<ExportRequest> {
    let now = SystemTime::now();
    let mut out: Vec<ExportRequest> = Vec::new();
    let mut flows = Vec::with_capacity(FLOWS_PER_REQUEST);
    for index in chunk.start..chunk.end {
        let Some((template_id, bytes)) = chunk.record(index) else {
            break;
        };
        match layouts.iter().find(|l| l.template_id() == template_id) {
            Some(layout) => flows.push(layout.flow(bytes, domain, now)),
            None => *unknown += 1,
        }
        if flows.len() == FLOWS_PER_REQUEST {
            out.push(ExportRequest {
                flows: std::mem::take(&mut flows),
            });
        }
    }
    if !flows.is_empty() {
        out.push(ExportRequest { flows });
    }
    out
}

/// The collector task of a gRPC collector.
pub(super) async fn run(
    target: CollectorTarget,
    templates: Arc<Vec<Template>>,
    domain: u32,
    mut queue: mpsc::UnboundedReceiver<Chunk>,
    stats: Arc<CollectorStats>,
) {
    let layouts: Vec<FlowLayout> = templates.iter().map(FlowLayout::new).collect();
    let target = Arc::new(target);
    let mut backoff = Backoff::new(target.max_reconnect_delay);
    let mut outage = Outage::new();
    let mut client: Option<FlowExportServiceClient<Channel>> = None;
    let mut retry: VecDeque<Chunk> = VecDeque::new();
    loop {
        let chunk = match retry.pop_front() {
            Some(chunk) => chunk,
            None => match queue.recv().await {
                Some(chunk) => chunk,
                None => break,
            },
        };
        let mut unknown = 0;
        let messages = requests(&chunk, &layouts, domain, &mut unknown);
        let records = chunk.len() - unknown;
        if messages.is_empty() {
            stats.settle_dropped(DropReason::SendFailed, unknown);
            continue;
        }
        let Some(connected) = client.as_mut() else {
            match connect(&target).await {
                Ok(new) => {
                    client = Some(new);
                    backoff.reset();
                    outage.recovered(&target);
                    stats.connected.store(true, Ordering::Release);
                }
                Err(error) => {
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    outage.failed(&target, "cannot connect", &error);
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
            // Built again on the next round (after the backoff when it failed).
            retry.push_front(chunk);
            continue;
        };
        let count = messages.len() as u64;
        let bytes: u64 = messages
            .iter()
            .map(|m| prost::Message::encoded_len(m) as u64)
            .sum();
        let call = connected.export(futures_util::stream::iter(messages));
        match tokio::time::timeout(STREAM_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                stats.messages.fetch_add(count, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                stats.records_sent.fetch_add(records, Ordering::Relaxed);
                stats.settle_exported(records);
                if unknown > 0 {
                    stats.settle_dropped(DropReason::SendFailed, unknown);
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(status)) => describe(&status),
                    _ => format!("no answer within {STREAM_TIMEOUT:?}"),
                };
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                stats.records_resent.fetch_add(records, Ordering::Relaxed);
                stats.connected.store(false, Ordering::Release);
                outage.failed(&target, "the stream failed", &error);
                client = None;
                retry.push_front(chunk);
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AgentRecord, KubernetesElements, KubernetesValues, templates_with};
    use flowex_ipfix::{FieldWriter, Record, Registry};

    #[test]
    fn labels_and_uids_reach_the_flow_in_antreas_forms() {
        let templates = templates_with(
            &Registry::default(),
            KubernetesElements {
                pod_labels: true,
                uids: true,
            },
        )
        .unwrap();
        let mut uid = [0u8; 16];
        uid[0] = 0xab;
        uid[15] = 0x01;
        let record = AgentRecord {
            flow: flowex_ipfix::antrea::FlowRecord {
                source_address: "10.244.1.5".parse().unwrap(),
                destination_address: "10.244.2.7".parse().unwrap(),
                ..Default::default()
            },
            start_ms: 1_000,
            end_ms: 2_000,
            owners: Default::default(),
            kubernetes: KubernetesValues {
                labels: Some([r#"{"app":"web","tier":"front"}"#, ""]),
                uids: Some([uid, [0; 16], [0; 16], [0; 16], uid]),
            },
        };
        let mut bytes = vec![0; record.encoded_len()];
        record.emit(&mut FieldWriter::new(&mut bytes));
        let flow = FlowLayout::new(&templates[0]).flow(&bytes, 1, SystemTime::now());
        let k8s = flow.k8s.unwrap();
        let labels = k8s.source_pod_labels.unwrap().labels;
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["tier"], "front");
        // No pod at the destination: no labels at all (Antrea's nil), not an empty map.
        assert_eq!(k8s.destination_pod_labels, None);
        assert_eq!(k8s.source_pod_uid, "ab000000-0000-0000-0000-000000000001");
        assert_eq!(k8s.destination_service_uid, k8s.source_pod_uid);
        assert_eq!(k8s.destination_pod_uid, "");
        assert_eq!(k8s.source_node_uid, "");
    }
}
