//! `grpc://` endpoints: Antrea's `FlowExportService` behind mutual TLS, as the Flow
//! Aggregator serves it. Each `Flow` counts as a record (by flowEndReason and observation
//! domain, like IPFIX records) and each stream message as a message; with --json each
//! flow is printed keyed by the IPFIX element names its fields stand for, so records
//! from IPFIX and gRPC can be compared line by line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flowex_flowpb::flow_export_service_server::{FlowExportService, FlowExportServiceServer};
use flowex_flowpb::{ExportRequest, ExportResponse, Flow, transport};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Map, Value as Json, json};
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use crate::stats::{MessageTally, SequenceCheck};

/// Counts and prints the flows of every stream.
struct Sink {
    shared: Arc<Shared>,
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// A flow as the JSON object of the IPFIX record it would be.
#[allow(deprecated)]
pub fn flow_to_json(flow: &Flow) -> Json {
    let mut out = Map::new();
    let mut put = |key: &str, value: Json| {
        out.insert(key.to_owned(), value);
    };
    let seconds = |t: &Option<prost_types::Timestamp>| t.as_ref().map_or(0, |t| t.seconds);
    let millis = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
    };
    put("flowStartSeconds", json!(seconds(&flow.start_ts)));
    put("flowEndSeconds", json!(seconds(&flow.end_ts)));
    put("flowStartMilliseconds", json!(millis(&flow.start_ts)));
    put("flowEndMilliseconds", json!(millis(&flow.end_ts)));
    put("flowEndReason", json!(flow.end_reason));
    if let Some(ip) = &flow.ip {
        let v6 = ip.version == 6;
        for (key, bytes) in [
            (
                if v6 {
                    "sourceIPv6Address"
                } else {
                    "sourceIPv4Address"
                },
                &ip.source,
            ),
            (
                if v6 {
                    "destinationIPv6Address"
                } else {
                    "destinationIPv4Address"
                },
                &ip.destination,
            ),
        ] {
            if let Some(a) = address(bytes) {
                put(key, json!(a.to_string()));
            }
        }
    }
    if let Some(t) = &flow.transport {
        put("protocolIdentifier", json!(t.protocol_number));
        put("sourceTransportPort", json!(t.source_port));
        put("destinationTransportPort", json!(t.destination_port));
        let state = match &t.protocol {
            Some(transport::Protocol::Tcp(tcp)) => tcp.state_name.as_str(),
            None => "",
        };
        put("tcpState", json!(state));
    }
    for (prefix, stats) in [("", &flow.stats), ("reverse", &flow.reverse_stats)] {
        let Some(s) = stats else { continue };
        let name = |base: &str| {
            if prefix.is_empty() {
                base.to_owned()
            } else {
                let mut chars = base.chars();
                let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or(' ');
                format!("{prefix}{first}{}", chars.as_str())
            }
        };
        put(&name("packetTotalCount"), json!(s.packet_total_count));
        put(&name("octetTotalCount"), json!(s.octet_total_count));
        put(&name("packetDeltaCount"), json!(s.packet_delta_count));
        put(&name("octetDeltaCount"), json!(s.octet_delta_count));
    }
    if let Some(k) = &flow.k8s {
        for (key, value) in [
            ("sourcePodName", &k.source_pod_name),
            ("sourcePodNamespace", &k.source_pod_namespace),
            ("sourceNodeName", &k.source_node_name),
            ("destinationPodName", &k.destination_pod_name),
            ("destinationPodNamespace", &k.destination_pod_namespace),
            ("destinationNodeName", &k.destination_node_name),
            (
                "destinationServicePortName",
                &k.destination_service_port_name,
            ),
            ("ingressNetworkPolicyName", &k.ingress_network_policy_name),
            (
                "ingressNetworkPolicyNamespace",
                &k.ingress_network_policy_namespace,
            ),
            (
                "ingressNetworkPolicyRuleName",
                &k.ingress_network_policy_rule_name,
            ),
            ("egressNetworkPolicyName", &k.egress_network_policy_name),
            (
                "egressNetworkPolicyNamespace",
                &k.egress_network_policy_namespace,
            ),
            (
                "egressNetworkPolicyRuleName",
                &k.egress_network_policy_rule_name,
            ),
            ("egressName", &k.egress_name),
            ("egressNodeName", &k.egress_node_name),
        ] {
            put(key, json!(value));
        }
        put("flowType", json!(k.flow_type));
        put("destinationServicePort", json!(k.destination_service_port));
        put(
            "ingressNetworkPolicyType",
            json!(k.ingress_network_policy_type),
        );
        put(
            "ingressNetworkPolicyRuleAction",
            json!(k.ingress_network_policy_rule_action),
        );
        put(
            "egressNetworkPolicyType",
            json!(k.egress_network_policy_type),
        );
        put(
            "egressNetworkPolicyRuleAction",
            json!(k.egress_network_policy_rule_action),
        );
        put(
            "egressIP",
            json!(
                address(&k.egress_ip)
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
        );
        for (key, bytes) in [
            ("destinationClusterIP", &k.destination_cluster_ip),
            ("destinationServiceIP", &k.destination_service_ip),
        ] {
            if let Some(a) = address(bytes) {
                put(key, json!(a.to_string()));
            }
        }
    }
    put("proxySnatPort", json!(flow.proxy_snat_port));
    if let Some(a) = address(&flow.proxy_snat_ip) {
        put("proxySnatIP", json!(a.to_string()));
    }
    if let Some(ipfix) = &flow.ipfix {
        put("observationDomainId", json!(ipfix.observation_domain_id));
    }
    Json::Object(out)
}

#[tonic::async_trait]
impl FlowExportService for Sink {
    async fn export(
        &self,
        request: Request<Streaming<ExportRequest>>,
    ) -> Result<Response<ExportResponse>, Status> {
        let mut stream = request.into_inner();
        let mut pending = Vec::new();
        while let Some(message) = stream.message().await? {
            let mut tally = MessageTally {
                bytes: prost::Message::encoded_len(&message) as u64,
                records: message.flows.len() as u64,
                ..MessageTally::default()
            };
            for flow in &message.flows {
                tally.reasons[(flow.end_reason & 0xff) as usize] += 1;
                tally.domain = flow.ipfix.as_ref().map_or(0, |i| i.observation_domain_id);
                if self.shared.output.wanted() {
                    pending.push(flow_to_json(flow));
                }
            }
            self.shared.stats.merge(&tally, SequenceCheck::InOrder);
            self.shared.output.deliver(&mut pending, &mut Vec::new());
        }
        Ok(Response::new(ExportResponse {}))
    }
}

/// Serves `listener` until the collector stops.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("collector-sim: cannot start the gRPC server: {error}");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("collector-sim: gRPC listener: {error}");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        while !shared.stop.load(Ordering::Acquire) {
            let accepted =
                match tokio::time::timeout(Duration::from_millis(50), listener.accept()).await {
                    Err(_) => continue,
                    Ok(accepted) => accepted,
                };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    shared.stats.log_limited("grpc_accept", &error);
                    continue;
                }
            };
            shared.stats.count_tcp_connection();
            // HTTP/2's small control frames (window updates) must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let shared = Arc::clone(&shared);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        shared.stats.count_tls_refused();
                        shared.stats.log_limited("tls_handshake", &error);
                        return;
                    }
                    Err(_) => {
                        shared.stats.count_tls_refused();
                        return;
                    }
                };
                let service = FlowExportServiceServer::new(Sink {
                    shared: Arc::clone(&shared),
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .adaptive_window(true)
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
}
