//! Certificates made by openssl(1) for the TLS and gRPC tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use collector_sim::tls::TlsFiles;
use collector_sim::{Collector, CollectorConfig};
use flowex_agent::config::TlsConfig;

/// A directory of certificates: `ca`, `server` (IP 127.0.0.1, DNS collector.test),
/// `client`, and `rogue-ca` with a `rogue-server` of its own.
pub struct Certificates {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Certificates {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowex-tls-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Self { dir };
        certs.ca("ca");
        certs.ca("rogue-ca");
        certs.leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:collector.test\nextendedKeyUsage=serverAuth",
        );
        certs.leaf(
            "client",
            "ca",
            "subjectAltName=DNS:flowex-agent\nextendedKeyUsage=clientAuth",
        );
        // Valid until yesterday: `-days -1` makes notAfter a day before notBefore.
        certs.leaf_for_days(
            "expired-server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:collector.test\nextendedKeyUsage=serverAuth",
            "-1",
        );
        certs.leaf(
            "rogue-server",
            "rogue-ca",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        );
        certs
    }

    pub fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
    }

    pub fn leaf(&self, name: &str, ca: &str, extensions: &str) {
        self.leaf_for_days(name, ca, extensions, "2");
    }

    pub fn leaf_for_days(&self, name: &str, ca: &str, extensions: &str, days: &str) {
        std::fs::write(
            self.dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{extensions}\n"),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                days,
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    /// The agent's settings: trusts `ca`, presents `client` when `with_client`.
    pub fn agent(&self, ca: &str, with_client: bool) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.path(&format!("{ca}.crt"))),
            cert_file: with_client.then(|| self.path("client.crt")),
            key_file: with_client.then(|| self.path("client.key")),
            server_name: None,
            ..TlsConfig::default()
        }
    }

    /// collector-sim requiring client certificates from `ca`, listening on `listen`.
    pub fn collector_on(&self, listen: &str, server: &str) -> Collector {
        let mut config = CollectorConfig::new(vec![listen.parse().unwrap()]);
        config.keep_records = true;
        config.tls = Some(TlsFiles {
            ca: Some(self.dir.join("ca.crt")),
            cert: self.dir.join(format!("{server}.crt")),
            key: self.dir.join(format!("{server}.key")),
        });
        Collector::start(config).unwrap()
    }

    /// collector-sim on `tls://`, requiring client certificates from `ca`.
    pub fn collector(&self, server: &str) -> Collector {
        self.collector_on("tls://127.0.0.1:0", server)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
