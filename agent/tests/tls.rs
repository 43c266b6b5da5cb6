//! IPFIX over TLS with certificates made here by openssl(1): to collector-sim requiring
//! client certificates, to `openssl s_server -Verify` (an independent TLS stack, its
//! plain stream then decoded by collector-sim over TCP), and the failures a user meets: no
//! client certificate, a certificate file that appears later (read at each connection),
//! an untrusted server, and `insecureSkipVerify`.

#[path = "support/fake_api.rs"]
mod fake_api;
mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_sim::{Collector, CollectorConfig, Endpoint, synthetic};
use flowex_agent::config::{TlsConfig, Transport};
use flowex_agent::export::{CollectorTarget, ExportingProcess};
use support::certificates::Certificates;
use support::exporting::{self, WAIT, batch, eventually, templates};

/// The address of a collector-sim endpoint.
fn address(endpoint: Endpoint) -> String {
    endpoint.addr().to_string()
}

/// A TLS collector target with `tls`.
fn target(address: String, tls: TlsConfig) -> CollectorTarget {
    exporting::target(Transport::Tls, address, Some(tls))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_a_tls_collector_that_requires_a_client_certificate() {
    let certs = Certificates::new("ok");
    let collector = certs.collector("server");
    let process = ExportingProcess::start(
        &[target(
            address(collector.tls_endpoint().unwrap()),
            certs.agent("ca", true),
        )],
        templates(),
        9,
    )
    .unwrap();
    for chunk in 0..10 {
        process.export(batch(chunk * 1_000, 1_000));
    }
    let stats = Arc::clone(&process.collectors()[0].stats);
    assert!(collector.wait_for_records(10_000, WAIT));
    // Confirmed by the collector's acknowledgements of the TLS bytes, before shutdown.
    eventually("every record confirmed", || {
        stats.records_exported.load(Ordering::Acquire) == 10_000
    })
    .await;
    process.shutdown(WAIT).await;
    let summary = collector.wait_until_quiet(Duration::from_millis(200), WAIT);
    assert_eq!(summary.records, 10_000);
    assert_eq!(summary.templates, 2);
    assert_eq!(summary.sequence_gaps, 0);
    assert_eq!(summary.decode_error_total(), 0);
    assert_eq!(summary.tls_refused, 0);
    assert_eq!(summary.tcp_connections, 1);
    assert_eq!(stats.records_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_session_is_refused_and_retried_until_the_files_appear() {
    let certs = Certificates::new("late");
    let collector = certs.collector("server");
    // The agent's pair is configured but not there yet (a Secret not mounted yet).
    let mut tls = certs.agent("ca", true);
    let late_cert = certs.path("late-client.crt");
    let late_key = certs.path("late-client.key");
    tls.cert_file = Some(late_cert.clone());
    tls.key_file = Some(late_key.clone());
    let process = ExportingProcess::start(
        &[target(address(collector.tls_endpoint().unwrap()), tls)],
        templates(),
        3,
    )
    .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 500));
    eventually("failed attempts on the missing files", || {
        stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    assert!(!stats.connected.load(Ordering::Acquire));
    assert_eq!(
        collector.summary().tcp_connections,
        0,
        "files are read first"
    );

    // Now without any certificate: the collector refuses the handshake, and counts it.
    let process_without = ExportingProcess::start(
        &[target(
            address(collector.tls_endpoint().unwrap()),
            certs.agent("ca", false),
        )],
        templates(),
        4,
    )
    .unwrap();
    let without = Arc::clone(&process_without.collectors()[0].stats);
    process_without.export(batch(0, 100));
    eventually("refused sessions", || collector.summary().tls_refused >= 2).await;
    assert!(without.send_errors.load(Ordering::Acquire) >= 2);
    assert_eq!(without.records_exported.load(Ordering::Acquire), 0);
    assert_eq!(collector.summary().records, 0);
    assert_eq!(
        process_without.shutdown(Duration::from_millis(100)).await,
        100
    );

    // The files appear (a rotation works the same way): the next attempt uses them and
    // the queued records all arrive, once.
    std::fs::copy(certs.path("client.crt"), &late_cert).unwrap();
    std::fs::copy(certs.path("client.key"), &late_key).unwrap();
    assert!(collector.wait_for_records(500, WAIT));
    eventually("the records confirmed", || {
        stats.records_exported.load(Ordering::Acquire) == 500
    })
    .await;
    process.shutdown(WAIT).await;
    let summary = collector.wait_until_quiet(Duration::from_millis(200), WAIT);
    assert_eq!(summary.records, 500);
    assert_eq!(summary.by_observation_domain.get(&3), Some(&500));
    assert_eq!(stats.records_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_collector_gets_nothing_unless_verification_is_skipped() {
    let certs = Certificates::new("rogue");
    let collector = certs.collector("rogue-server");
    let endpoint = address(collector.tls_endpoint().unwrap());
    let process = ExportingProcess::start(
        &[target(endpoint.clone(), certs.agent("ca", true))],
        templates(),
        5,
    )
    .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 200));
    eventually("refused handshakes", || {
        stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    assert_eq!(collector.summary().records, 0);
    assert_eq!(stats.records_exported.load(Ordering::Acquire), 0);
    assert_eq!(process.shutdown(Duration::from_millis(100)).await, 200);

    let mut skip = certs.agent("ca", true);
    skip.insecure_skip_verify = true;
    let process = ExportingProcess::start(&[target(endpoint, skip)], templates(), 6).unwrap();
    process.export(batch(0, 200));
    assert!(collector.wait_for_records(200, WAIT));
    process.shutdown(WAIT).await;
    assert_eq!(collector.summary().records, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_server_requiring_a_client_certificate_receives_every_record() {
    let certs = Certificates::new("openssl");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    // s_server writes the decrypted stream to stdout; its stdin stays open (no input).
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            &certs.path("server.crt"),
            "-key",
            &certs.path("server.key"),
            "-CAfile",
            &certs.path("ca.crt"),
            "-Verify",
            "1",
            "-verify_return_error",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The plain stream goes on to collector-sim over TCP, which decodes and counts it.
    let decoder = Collector::start(CollectorConfig::new(vec![
        "tcp://127.0.0.1:0".parse().unwrap(),
    ]))
    .unwrap();
    let mut plain = server.stdout.take().unwrap();
    let mut forward = std::net::TcpStream::connect(decoder.tcp_endpoint().unwrap().addr()).unwrap();
    // ... and is kept, for python-ipfix to decode on its own afterwards.
    let pump = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 65_536];
        while let Ok(n) = plain.read(&mut buf) {
            if n == 0 || forward.write_all(&buf[..n]).is_err() {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
        }
        kept
    });
    // Wait for s_server to listen.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // That probe connection was one session; s_server serves the next.
    std::thread::sleep(Duration::from_millis(200));
    let process = ExportingProcess::start(
        &[target(format!("127.0.0.1:{port}"), certs.agent("ca", true))],
        templates(),
        11,
    )
    .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    for chunk in 0..4 {
        process.export(batch(chunk * 1_000, 1_000));
    }
    let arrived = decoder.wait_for_records(4_000, WAIT);
    process.shutdown(WAIT).await;
    let _ = server.kill();
    let _ = server.wait();
    let stream = pump.join().unwrap();
    assert!(arrived, "{:?}", decoder.summary());
    let summary = decoder.wait_until_quiet(Duration::from_millis(200), WAIT);
    assert_eq!(summary.records, 4_000);
    assert_eq!(summary.templates, 2);
    assert_eq!(summary.decode_error_total(), 0);
    assert_eq!(summary.by_observation_domain.get(&11), Some(&4_000));
    assert_eq!(stats.records_exported.load(Ordering::Acquire), 4_000);

    // python-ipfix, an independent decoder, reads the same plain stream.
    let file = certs.dir.join("stream.ipfix");
    std::fs::write(&file, &stream).unwrap();
    let output = Command::new("python3")
        .args(["-c", PYTHON_IPFIX_COUNT])
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "python-ipfix (pip install ipfix): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected_ports: std::collections::BTreeSet<u16> = (0..4_000u64)
        .map(|i| synthetic::flow_record(i, i % 4 == 3).source_port)
        .collect();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!(
            "4000 records, domain 11, {} source ports",
            expected_ports.len()
        )
    );
}

/// Counts the records of an IPFIX stream file with python-ipfix.
const PYTHON_IPFIX_COUNT: &str = r#"
import sys
import ipfix.ie, ipfix.reader
ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()
records, domains, ports = 0, set(), set()
with open(sys.argv[1], "rb") as stream:
    reader = ipfix.reader.from_stream(stream)
    for record in reader.namedict_iterator():
        records += 1
        domains.add(reader.msg.odid)
        ports.add(record["sourceTransportPort"])
print(f"{records} records, domain {','.join(map(str, sorted(domains)))}, {len(ports)} source ports")
"#;

/// `tls.antrea`: the CA and client pair come from a ConfigMap and a Secret of the API
/// (a stand-in server speaking the real list and watch JSON); replacing both, with a
/// collector now trusting only the new CA, is followed without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_api_are_used_and_followed_when_rotated() {
    use fake_api::{FakeApi, config_map, secret};
    use flowex_agent::export::certificates::ApiCertificates;

    let old = Certificates::new("api-old");
    let new = Certificates::new("api-new");
    let read = |c: &Certificates, f: &str| std::fs::read(c.dir.join(f)).unwrap();
    let api = FakeApi::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    api.add(
        "configmaps",
        config_map(
            "flow-aggregator",
            "flow-aggregator-ca",
            &[(
                "ca.crt",
                std::str::from_utf8(&read(&old, "ca.crt")).unwrap(),
            )],
        ),
    );
    // Another ConfigMap of the namespace, which the name selector must leave out.
    api.add(
        "configmaps",
        config_map(
            "flow-aggregator",
            "other",
            &[("ca.crt", "not a certificate")],
        ),
    );
    api.add(
        "secrets",
        secret(
            "flow-aggregator",
            "flow-aggregator-client-tls",
            &[
                ("tls.crt", &read(&old, "client.crt")),
                ("tls.key", &read(&old, "client.key")),
            ],
        ),
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let certificates = Arc::new(ApiCertificates::new(
        "flow-aggregator/flow-aggregator-ca",
        "flow-aggregator/flow-aggregator-client-tls",
    ));
    let watchers = certificates.watch(client);

    let first = old.collector("server");
    let address = first.tls_endpoint().unwrap().addr().to_string();
    let mut target = target(
        address.clone(),
        TlsConfig {
            antrea: true,
            ..TlsConfig::default()
        },
    );
    target.api_certificates = Some(Arc::clone(&certificates));
    let process = ExportingProcess::start(&[target], templates(), 7).unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 300));
    assert!(first.wait_for_records(300, WAIT), "{:?}", first.summary());

    // Both rotate to a new CA and pair; the collector restarts trusting only the new CA.
    api.modify(
        "configmaps",
        config_map(
            "flow-aggregator",
            "flow-aggregator-ca",
            &[(
                "ca.crt",
                std::str::from_utf8(&read(&new, "ca.crt")).unwrap(),
            )],
        ),
    );
    api.modify(
        "secrets",
        secret(
            "flow-aggregator",
            "flow-aggregator-client-tls",
            &[
                ("tls.crt", &read(&new, "client.crt")),
                ("tls.key", &read(&new, "client.key")),
            ],
        ),
    );
    eventually("the new pair", || {
        certificates.material().cert.as_deref() == Some(&read(&new, "client.crt")[..])
    })
    .await;
    drop(first);
    let second = {
        let mut config = CollectorConfig::new(vec![format!("tls://{address}").parse().unwrap()]);
        config.tls = Some(collector_sim::tls::TlsFiles {
            ca: Some(new.dir.join("ca.crt")),
            cert: new.dir.join("server.crt"),
            key: new.dir.join("server.key"),
        });
        Collector::start(config).unwrap()
    };
    process.export(batch(300, 200));
    assert!(second.wait_for_records(200, WAIT), "{:?}", second.summary());
    eventually("every record confirmed", || {
        stats.records_exported.load(Ordering::Acquire) == 500
    })
    .await;
    process.shutdown(WAIT).await;
    assert_eq!(second.summary().tls_refused, 0);
    assert_eq!(stats.records_dropped(), 0);
    for watcher in watchers {
        watcher.abort();
    }
}

/// An expired collector certificate and a serverName the certificate does not carry are
/// refused (counted, retried, nothing counted as exported); once the collector has a
/// valid certificate, or the name is right, the queued records arrive, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_or_a_wrong_server_name_is_refused_until_fixed() {
    let certs = Certificates::new("expired");
    let expired = certs.collector("expired-server");
    let address = expired.tls_endpoint().unwrap().addr().to_string();
    let process = ExportingProcess::start(
        &[target(address.clone(), certs.agent("ca", true))],
        templates(),
        12,
    )
    .unwrap();
    let stats = Arc::clone(&process.collectors()[0].stats);
    process.export(batch(0, 400));
    eventually("refused handshakes", || {
        stats.send_errors.load(Ordering::Acquire) >= 2
    })
    .await;
    assert_eq!(expired.summary().records, 0);
    assert_eq!(stats.records_exported.load(Ordering::Acquire), 0);
    assert!(!stats.connected.load(Ordering::Acquire));
    // The collector gets a valid certificate (a restart on the same port).
    drop(expired);
    let renewed = {
        let mut config = CollectorConfig::new(vec![format!("tls://{address}").parse().unwrap()]);
        config.tls = Some(collector_sim::tls::TlsFiles {
            ca: Some(certs.dir.join("ca.crt")),
            cert: certs.dir.join("server.crt"),
            key: certs.dir.join("server.key"),
        });
        Collector::start(config).unwrap()
    };
    assert!(
        renewed.wait_for_records(400, WAIT),
        "{:?}",
        renewed.summary()
    );
    eventually("the records confirmed", || {
        stats.records_exported.load(Ordering::Acquire) == 400
    })
    .await;
    process.shutdown(WAIT).await;
    assert_eq!(
        renewed
            .wait_until_quiet(Duration::from_millis(200), WAIT)
            .records,
        400
    );

    // A name the certificate does not carry: refused; the name it does carry: accepted.
    for (name, accepted) in [("other.test", false), ("collector.test", true)] {
        let mut tls = certs.agent("ca", true);
        tls.server_name = Some(name.into());
        let before = renewed.summary().records;
        let process =
            ExportingProcess::start(&[target(address.clone(), tls)], templates(), 13).unwrap();
        let stats = Arc::clone(&process.collectors()[0].stats);
        process.export(batch(0, 50));
        if accepted {
            assert!(renewed.wait_for_records(before + 50, WAIT));
            eventually("confirmed", || {
                stats.records_exported.load(Ordering::Acquire) == 50
            })
            .await;
        } else {
            eventually("refused handshakes", || {
                stats.send_errors.load(Ordering::Acquire) >= 2
            })
            .await;
            assert_eq!(renewed.summary().records, before);
            assert_eq!(stats.records_exported.load(Ordering::Acquire), 0);
        }
        process.shutdown(Duration::from_millis(300)).await;
    }
}
