//! TLS for collectors (`transport: tls`, RFC 7011 section 11): the client configuration,
//! built from the PEM files at each connection so that a rotated certificate is used at
//! the next one, with the errors a user needs (which file, what is wrong with it).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::certificates::Material;
use crate::config::TlsConfig;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("{what} {object}: {message}")]
    Api {
        what: &'static str,
        object: String,
        message: String,
    },
    #[error("tls.serverName: {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// ring's suites, AES-128-GCM offered first: as strong as a collector needs and cheaper
/// than AES-256 for the bulk of an export (the collector picks; Go's crypto/tls, Antrea's
/// aggregator, prefers it too on hardware with AES instructions).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(provider)
}

fn certificates(
    key: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let file_error = |message: String| TlsSetupError::File {
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn pem_error(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The client configuration for `tls`, reading its files now.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsSetupError> {
    client_config_for(tls, None, &[])
}

fn parse_api_certificates(
    what: &'static str,
    object: &str,
    pem: Option<&[u8]>,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let error = |message: String| TlsSetupError::Api {
        what,
        object: object.to_owned(),
        message,
    };
    let pem =
        pem.ok_or_else(|| error("not seen yet (missing, or no permission to watch it)".into()))?;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// [`client_config`] offering the application protocols `alpn` (gRPC: `h2`), with the
/// certificates of `api` when `tls.antrea` is set.
pub fn client_config_for(
    tls: &TlsConfig,
    api: Option<&Material>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls.min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder =
        ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let from_api = if tls.antrea {
        Some(api.cloned().unwrap_or_default())
    } else {
        None
    };
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(
                provider().signature_verification_algorithms,
            )))
    } else if let Some(material) = &from_api {
        let mut roots = RootCertStore::empty();
        for cert in parse_api_certificates(
            "ca.crt of ConfigMap",
            &tls.ca_config_map,
            material.ca.as_deref(),
        )? {
            roots.add(cert).map_err(|e| TlsSetupError::Api {
                what: "ca.crt of ConfigMap",
                object: tls.ca_config_map.clone(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        builder.with_root_certificates(roots)
    } else {
        let path = tls.ca_file.as_deref().unwrap_or_default();
        let mut roots = RootCertStore::empty();
        for cert in certificates("caFile", path)? {
            roots.add(cert).map_err(|e| TlsSetupError::File {
                key: "caFile",
                path: path.to_owned(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = if let Some(material) = &from_api {
        let chain = parse_api_certificates(
            "tls.crt of Secret",
            &tls.client_secret,
            material.cert.as_deref(),
        )?;
        let key = material
            .key
            .as_deref()
            .ok_or_else(|| TlsSetupError::Api {
                what: "tls.key of Secret",
                object: tls.client_secret.clone(),
                message: "not seen yet".into(),
            })
            .and_then(|pem| {
                PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsSetupError::Api {
                    what: "tls.key of Secret",
                    object: tls.client_secret.clone(),
                    message: pem_error(&e),
                })
            })?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsSetupError::Api {
                what: "tls.key of Secret",
                object: tls.client_secret.clone(),
                message: format!("does not fit tls.crt: {e}"),
            })?
    } else {
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert_path), Some(key_path)) => {
                let chain = certificates("certFile", cert_path)?;
                let key =
                    PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsSetupError::File {
                        key: "keyFile",
                        path: key_path.clone(),
                        message: match e {
                            rustls_pki_types::pem::Error::NoItemsFound => {
                                "no PEM private key in it".into()
                            }
                            other => pem_error(&other),
                        },
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsSetupError::File {
                        key: "keyFile",
                        path: key_path.clone(),
                        message: format!("does not fit certFile {cert_path}: {e}"),
                    })?
            }
            _ => builder.with_no_client_auth(),
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name the collector's certificate must carry: `serverName`, else the host of
/// `address` (HOST:PORT, IPv6 in brackets).
pub fn server_name(tls: &TlsConfig, address: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let name = match &tls.server_name {
        Some(name) => name.as_str(),
        None => {
            let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
            host.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
        }
    };
    ServerName::try_from(name.to_owned()).map_err(|_| TlsSetupError::ServerName(name.to_owned()))
}

/// `insecureSkipVerify`: any certificate is accepted, but the handshake's signatures are
/// still checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: Option<&str>) -> TlsConfig {
        TlsConfig {
            ca_file: ca.map(str::to_owned),
            ..TlsConfig::default()
        }
    }

    #[test]
    fn certificates_not_seen_in_the_api_yet_name_the_object() {
        let config = TlsConfig {
            antrea: true,
            ..TlsConfig::default()
        };
        assert_eq!(
            client_config_for(&config, None, &[])
                .unwrap_err()
                .to_string(),
            "ca.crt of ConfigMap flow-aggregator/flow-aggregator-ca: not seen yet (missing, or no permission to watch it)"
        );
    }

    #[test]
    fn the_server_name_defaults_to_the_host_of_the_address() {
        let config = tls(None);
        assert_eq!(
            server_name(&config, "flow-aggregator.flow-aggregator.svc:4739").unwrap(),
            ServerName::try_from("flow-aggregator.flow-aggregator.svc").unwrap()
        );
        assert_eq!(
            server_name(&config, "[::1]:4739").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        let named = TlsConfig {
            server_name: Some("collector.example".into()),
            ..config
        };
        assert_eq!(
            server_name(&named, "10.0.0.1:4739").unwrap(),
            ServerName::try_from("collector.example").unwrap()
        );
    }

    #[test]
    fn a_missing_or_empty_ca_file_names_the_key_and_the_file() {
        let error = client_config(&tls(Some("/nonexistent/ca.crt"))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tls.caFile /nonexistent/ca.crt: No such file or directory (os error 2)"
        );
        let empty = std::env::temp_dir().join(format!("flowex-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = client_config(&tls(Some(empty.to_str().unwrap()))).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("tls.caFile {}: no PEM certificate in it", empty.display())
        );
        let _ = std::fs::remove_file(empty);
    }
}
