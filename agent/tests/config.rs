//! The configuration file: defaults, and a table of invalid configs with their messages.

use std::process::Command;

use flowex_agent::config::{Config, Overrides, Settings, Transport};

#[test]
fn invalid_configs_are_rejected_with_one_clear_line() {
    let cases: &[(&str, &str)] = &[
        ("exprot: {}", "unknown field `exprot`"),
        (
            "export: {activeTimout: 5s}",
            "export: unknown field `activeTimout`",
        ),
        (
            "export: {collectors: [{name: a, address: \"127.0.0.1:4739\", colour: red}]}",
            "export.collectors[0]: unknown field `colour`",
        ),
        (
            "export: {activeTimeout: 0s}",
            "export.activeTimeout: must be greater than 0",
        ),
        (
            "export: {idleTimeout: 5}",
            "export.idleTimeout: \"5\" has no unit",
        ),
        (
            "kubernetes: {podScope: namespace}",
            "kubernetes.podScope: unknown variant `namespace`, expected `node` or `cluster`",
        ),
        ("export: {idleTimeout: 5d}", "unknown unit"),
        (
            "export:\n  idleTimeout: 15s\n  activeTimeout: 5d\n",
            "export.activeTimeout: \"5d\" has unknown unit",
        ),
        (
            "export:\n  collectors:\n    - name: a\n      address: \"a:1\"\n      templateRefresh: 1y\n",
            "export.collectors[0].templateRefresh: \"1y\" has unknown unit",
        ),
        (
            "export: {collectors: [{name: a, address: \"999.999.999.999:4739\"}]}",
            "export.collectors[0].address: \"999.999.999.999:4739\" has an invalid host",
        ),
        (
            "export: {collectors: [{name: a, address: \"1.2.3.4.5:4739\"}]}",
            "export.collectors[0].address: \"1.2.3.4.5:4739\" has an invalid host",
        ),
        (
            "metrics: {listen: \"1.2.3.4.5:9400\"}",
            "metrics.listen: \"1.2.3.4.5:9400\" has an invalid host",
        ),
        (
            "metrics: {listen: \"localhost:9400\"}",
            "metrics.listen: \"localhost:9400\": listen on an IP address",
        ),
        (
            "conntrack: {pollInterval: 0ms}",
            "conntrack.pollInterval: must be greater than 0",
        ),
        (
            "deny: {idleTimeout: 0s}",
            "deny.idleTimeout: must be greater than 0",
        ),
        (
            "export: {statistics: {interval: 100ms}}",
            "export.statistics.interval: must be 0s (no statistics) or at least 1s",
        ),
        (
            "export: {statistics: {intervall: 1m}}",
            "export.statistics: unknown field `intervall`",
        ),
        ("deny: {nflogGroup: 70000}", "deny.nflogGroup"),
        (
            "attribution: {maxSockets: 0}",
            "attribution.maxSockets: must be greater than 0",
        ),
        (
            "attribution: {procRoot: \"\"}",
            "attribution.procRoot: must not be empty",
        ),
        (
            "attribution: {maxSocket: 5}",
            "attribution: unknown field `maxSocket`",
        ),
        (
            "export: {collectors: [{name: a, address: \"nonsense\"}]}",
            "export.collectors[0].address: \"nonsense\" is not HOST:PORT",
        ),
        (
            "export: {collectors: [{name: a, address: \"10.0.0.1:99999\"}]}",
            "export.collectors[0].address: \"10.0.0.1:99999\" has an invalid port",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", maxMessageSize: 40}]}",
            "export.collectors[0].maxMessageSize: 40 is outside 64..=65507",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tcp, maxMessageSize: 70000}]}",
            "export.collectors[0].maxMessageSize: 70000 is outside 64..=65535",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\"}, {name: a, address: \"b:2\"}]}",
            "export.collectors[1].name: \"a\" is used by another collector",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: sctp}]}",
            "unknown variant `sctp`",
        ),
        (
            "export: {collectors: []}",
            "export.collectors: at least one collector is needed",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", queueCapacity: 0}]}",
            "export.collectors[0].queueCapacity: must be greater than 0",
        ),
        (
            "export: {podCIDRs: [\"10.244.0.0/33\"]}",
            "export.podCIDRs[0]: \"10.244.0.0/33\": prefix length above 32",
        ),
        (
            "export: {enterpriseNumber: 56506}",
            "export.enterpriseNumber: enterprise number 56506 is reserved",
        ),
        (
            "metrics: {listen: \"127.0.0.1\"}",
            "metrics.listen: \"127.0.0.1\" is not HOST:PORT",
        ),
        ("logging: {level: loud}", "unknown variant `loud`"),
        (
            "conntrack: {eventBufferBytes: 1024}",
            "conntrack.eventBufferBytes: 1024 is below 65536",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls}]}",
            "export.collectors[0].tls: transport tls needs tls.caFile, or tls.antrea: true (or tls.insecureSkipVerify: true)",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", tls: {caFile: ca.crt}}]}",
            "export.collectors[0].tls: TLS settings given for transport udp: set transport: tls",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {certFile: c.crt}}]}",
            "export.collectors[0].tls.caFile: is needed to verify the collector (or antrea: true to read it from the API, or insecureSkipVerify: true, for tests)",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {caFile: ca.crt, certFile: c.crt}}]}",
            "export.collectors[0].tls.keyFile: is needed with certFile",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {caFile: ca.crt, keyFile: c.key}}]}",
            "export.collectors[0].tls.certFile: is needed with keyFile",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {caFile: ca.crt, minVersion: \"1.1\"}}]}",
            "export.collectors[0].tls.minVersion: \"1.1\" is not \"1.2\" or \"1.3\"",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {caFile: ca.crt, serverName: \"bad name!\"}}]}",
            "export.collectors[0].tls.serverName: \"bad name!\" is not a DNS name or IP address",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {caFile: ca.crt, clientCert: c.crt}}]}",
            "export.collectors[0].tls: unknown field `clientCert`",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: grpc}]}",
            "export.collectors[0].tls: transport grpc needs tls.caFile, or tls.antrea: true (or tls.insecureSkipVerify: true)",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: grpc, tls: {antrea: true, caFile: ca.crt}}]}",
            "export.collectors[0].tls.antrea: reads the certificates from caConfigMap and clientSecret: remove caFile, certFile and keyFile",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, tls: {antrea: true, clientSecret: flow-aggregator-client-tls}}]}",
            "export.collectors[0].tls.clientSecret: \"flow-aggregator-client-tls\" is not NAMESPACE/NAME",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", filter: {protocols: [tcpp]}}]}",
            "export.collectors[0].filter.protocols[0]: \"tcpp\" is not tcp, udp, sctp, icmp, icmpv6 or a number 0-255",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", filter: {excludeSourceCIDRs: [10.0.0.0/40]}}]}",
            "export.collectors[0].filter.excludeSourceCIDRs[0]: ",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", filter: {destinationPorts: [\"443-80\"]}}]}",
            "export.collectors[0].filter.destinationPorts: \"443-80\" is not a port or FIRST-LAST",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", filter: {flowType: [interNode]}}]}",
            "export.collectors[0].filter: unknown field `flowType`",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", aggregator: nfacctd}]}",
            "unknown variant `nfacctd`, expected `antrea`",
        ),
        (
            "export: {collectors: [{name: a, address: \"a:1\", transport: tls, maxMessageSize: 70000, tls: {caFile: ca.crt}}]}",
            "export.collectors[0].maxMessageSize: 70000 is outside",
        ),
    ];
    for (yaml, expected) in cases {
        let error = Config::from_yaml(yaml)
            .err()
            .unwrap_or_else(|| panic!("{yaml} was accepted"))
            .to_string();
        assert!(
            error.contains(expected),
            "{yaml}\n  gave: {error}\n  want: {expected}"
        );
        assert!(!error.contains('\n'), "{yaml}: error spans lines: {error}");
    }
}

#[test]
fn a_full_config_is_read_with_every_value() {
    let config = Config::from_yaml(
        r#"
nodeName: worker-7
conntrack: { pollInterval: 2s, zones: [0, 5], events: false, setSysctls: true }
export:
  activeTimeout: 1m
  idleTimeout: 500ms
  observationDomainId: 42
  podCIDRs: ["10.244.0.0/16", "fd00:10:244::/56"]
  collectors:
    - { name: aggregator, address: "flow-aggregator.flow-aggregator.svc:4739", transport: tcp, maxMessageSize: 65535 }
    - { name: local, address: "[::1]:2055", templateRefresh: 30s, queueCapacity: 1024 }
deny: { enabled: false, nflogGroup: 9, idleTimeout: 30s }
kubernetes: { enabled: true, kubeconfig: /etc/flowex/kubeconfig, podScope: cluster }
metrics: { listen: "0.0.0.0:9400" }
logging: { level: debug, format: json }
"#,
    )
    .unwrap();
    assert_eq!(
        Settings::new(config.clone()).unwrap().observation_domain_id,
        42
    );
    assert_eq!(config.conntrack.zones, [0, 5]);
    assert_eq!(config.export.active_timeout.0.as_secs(), 60);
    assert_eq!(config.export.idle_timeout.0.as_millis(), 500);
    assert_eq!(config.export.collectors[1].max_message_size, 1472);
    assert_eq!(config.export.collectors[1].queue_capacity, 1024);
    assert_eq!(config.deny.nflog_group, 9);
    assert_eq!(config.kubernetes.kubeconfig, "/etc/flowex/kubeconfig");
    assert_eq!(
        config.kubernetes.pod_scope,
        flowex_agent::config::PodScope::Cluster
    );
    // Without an explicit id: FNV-32 (FNV-1, as Go's fnv.New32) of the node name.
    let derived = Config::from_yaml("nodeName: worker-7").unwrap();
    assert_eq!(
        Settings::new(derived).unwrap().observation_domain_id,
        flowex_agent::config::fnv32(b"worker-7")
    );
}

#[test]
fn cli_check_config_and_print_default_config() {
    let flowex = env!("CARGO_BIN_EXE_flowex");
    let default = Command::new(flowex)
        .arg("print-default-config")
        .output()
        .unwrap();
    assert!(default.status.success());
    let dir = std::env::temp_dir().join(format!("flowex-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, &default.stdout).unwrap();
    let ok = Command::new(flowex)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok");

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "export: {activeTimeout: 0s}\n").unwrap();
    let rejected = Command::new(flowex)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(rejected.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        stderr.contains("export.activeTimeout: must be greater than 0"),
        "{stderr}"
    );

    // Valid as a number, but too small for flowex's IPv6 template and one record: refused
    // by check-config as by run, with the size needed.
    let small = dir.join("small.yaml");
    std::fs::write(
        &small,
        "export:\n  collectors:\n    - {name: small, address: \"127.0.0.1:4739\", transport: udp, maxMessageSize: 300}\n",
    )
    .unwrap();
    let rejected = Command::new(flowex)
        .arg("check-config")
        .arg(&small)
        .output()
        .unwrap();
    assert_eq!(rejected.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&rejected.stderr).trim(),
        "flowex: collector small: maxMessageSize 300 cannot carry template 257 and one record: it needs at least 624 bytes"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn command_line_collectors_replace_the_files_and_are_checked_like_them() {
    let overrides = |urls: &[&str]| Overrides {
        collectors: urls.iter().map(|u| u.to_string()).collect(),
    };
    let settings = Settings::load(
        None,
        &overrides(&["tcp://127.0.0.1:4739", "udp://[::1]:2055"]),
    )
    .unwrap();
    let collectors = &settings.config.export.collectors;
    assert_eq!(collectors.len(), 2);
    assert_eq!(collectors[0].name, "collector-0");
    assert_eq!(collectors[0].transport, Transport::Tcp);
    assert_eq!(collectors[0].max_message_size, 65_535);
    assert_eq!(collectors[1].address, "[::1]:2055");
    assert_eq!(collectors[1].max_message_size, 1472);
    assert_eq!(
        Settings::load(None, &overrides(&["sctp://127.0.0.1:4739"]))
            .unwrap_err()
            .to_string(),
        "--collector \"sctp://127.0.0.1:4739\": expected udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or grpc://HOST:PORT"
    );
    assert_eq!(
        Settings::load(None, &overrides(&["tls://127.0.0.1:4739"]))
            .unwrap_err()
            .to_string(),
        "--collector \"tls://127.0.0.1:4739\": TLS needs certificates: give them as tls: {caFile, certFile, keyFile} on the first collector of the config file, whose settings --collector keeps"
    );
    assert_eq!(
        Settings::load(None, &overrides(&["udp://1.2.3.4.5:4739"]))
            .unwrap_err()
            .to_string(),
        "export.collectors[0].address: \"1.2.3.4.5:4739\" has an invalid host"
    );
}

#[test]
fn a_tls_url_keeps_the_files_of_the_first_collector() {
    let path = std::env::temp_dir().join(format!("flowex-tls-url-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "export:\n  collectors:\n    - name: fa\n      address: \"10.0.0.1:4739\"\n      transport: tls\n      tls: {caFile: /ca.crt, certFile: /c.crt, keyFile: /c.key, minVersion: \"1.3\"}\n",
    )
    .unwrap();
    let settings = Settings::load(
        Some(&path),
        &Overrides {
            collectors: vec![
                "tls://127.0.0.1:24739".into(),
                "udp://127.0.0.1:4739".into(),
            ],
        },
    )
    .unwrap();
    let _ = std::fs::remove_file(&path);
    let collectors = &settings.config.export.collectors;
    assert_eq!(collectors[0].transport, Transport::Tls);
    assert_eq!(collectors[0].address, "127.0.0.1:24739");
    assert_eq!(collectors[0].max_message_size, 65_535);
    let tls = collectors[0].tls.as_ref().unwrap();
    assert_eq!(tls.ca_file.as_deref(), Some("/ca.crt"));
    assert_eq!(tls.key_file.as_deref(), Some("/c.key"));
    assert_eq!(tls.min_version, "1.3");
    assert_eq!(collectors[1].tls, None);
}

#[test]
fn antrea_certificates_default_to_the_flow_aggregators_objects() {
    let settings = Settings::new(
        serde_yaml::from_str(
            "export: {collectors: [{name: fa, address: \"flow-aggregator.flow-aggregator.svc:14739\", transport: grpc, tls: {antrea: true}}]}",
        )
        .unwrap(),
    )
    .unwrap();
    let tls = settings.config.export.collectors[0].tls.clone().unwrap();
    assert!(tls.antrea);
    assert_eq!(tls.ca_config_map, "flow-aggregator/flow-aggregator-ca");
    assert_eq!(
        tls.client_secret,
        "flow-aggregator/flow-aggregator-client-tls"
    );
    assert_eq!(tls.min_version, "1.2");
    assert_eq!(
        settings.config.export.collectors[0].transport,
        Transport::Grpc
    );
}

#[test]
fn antreas_aggregator_gets_udp_messages_it_reads_whole() {
    let settings = |yaml: &str| Settings::new(serde_yaml::from_str(yaml).unwrap()).unwrap();
    // The default size is lowered without a word; a size the user chose is lowered with one.
    let quiet =
        settings("export: {collectors: [{name: fa, address: \"a:4739\", aggregator: antrea}]}");
    assert_eq!(quiet.config.export.collectors[0].max_message_size, 1024);
    assert_eq!(quiet.warnings, Vec::<String>::new());
    let loud = settings(
        "export: {collectors: [{name: fa, address: \"a:4739\", aggregator: antrea, maxMessageSize: 1400}]}",
    );
    assert_eq!(loud.config.export.collectors[0].max_message_size, 1024);
    assert_eq!(
        loud.warnings,
        [
            "export.collectors[0].maxMessageSize: 1400 is more than the 1024 bytes Antrea's Flow Aggregator reads from a UDP datagram: 1024 is used"
        ]
    );
    // Smaller sizes, and TCP, are left alone.
    let small = settings(
        "export: {collectors: [{name: fa, address: \"a:4739\", aggregator: antrea, maxMessageSize: 800}, {name: t, address: \"a:4739\", transport: tcp, aggregator: antrea, maxMessageSize: 65535}]}",
    );
    assert_eq!(small.config.export.collectors[0].max_message_size, 800);
    assert_eq!(small.config.export.collectors[1].max_message_size, 65_535);
    // check-config says it on stderr and still answers ok.
    let path = std::env::temp_dir().join(format!("flowex-agg-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "export: {collectors: [{name: fa, address: \"127.0.0.1:4739\", aggregator: antrea, maxMessageSize: 1400}]}",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flowex"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "flowex: warning: export.collectors[0].maxMessageSize: 1400 is more than the 1024 bytes Antrea's Flow Aggregator reads from a UDP datagram: 1024 is used\n"
    );
}
