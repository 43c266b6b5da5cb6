//! The TLS side of `tls://` endpoints: a server configuration from PEM files that, given a
//! CA, requires every client to present a certificate that chains to it (as Antrea's
//! Flow Aggregator does), and the handshake of one accepted connection.

use std::io;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The files of a TLS endpoint.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA of the client certificates: given, a client without a valid one is refused.
    pub ca: Option<PathBuf>,
    /// The collector's certificate chain and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn invalid(path: &std::path::Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {what}", path.display()),
    )
}

fn certificates(path: &std::path::Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(path, format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no PEM certificate"));
    }
    Ok(certs)
}

/// The server configuration for `files`.
pub fn server_config(files: &TlsFiles) -> io::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &files.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| invalid(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| invalid(&files.key, format!("{e:?}")))?;
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&files.key, e))?;
    Ok(Arc::new(config))
}

/// Completes the handshake on an accepted connection (its read timeout bounds each wait;
/// `give_up` is checked between waits).
pub(crate) fn accept(
    config: &Arc<ServerConfig>,
    mut tcp: TcpStream,
    give_up: impl Fn() -> bool,
) -> io::Result<StreamOwned<ServerConnection, TcpStream>> {
    let mut session = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    let started = std::time::Instant::now();
    while session.is_handshaking() {
        match session.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if give_up() || started.elapsed() > std::time::Duration::from_secs(10) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no TLS handshake within 10 s",
                    ));
                }
            }
            Err(error) => return Err(error),
        }
    }
    // TLS 1.3 verifies the client's certificate in the last flight: write the alert or
    // the session tickets out now.
    while session.wants_write() {
        session.write_tls(&mut tcp)?;
    }
    Ok(StreamOwned::new(session, tcp))
}
