//! Listen and target addresses written as `udp://HOST:PORT`, `tcp://HOST:PORT`,
//! `tls://HOST:PORT` or `grpc://HOST:PORT`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// A transport and a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    /// IPFIX over TLS on TCP.
    Tls(SocketAddr),
    /// Antrea's FlowExportService over mutual TLS.
    Grpc(SocketAddr),
}

impl Endpoint {
    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Udp(addr) | Self::Tcp(addr) | Self::Tls(addr) | Self::Grpc(addr) => *addr,
        }
    }

    /// True for UDP.
    pub fn is_udp(&self) -> bool {
        matches!(self, Self::Udp(_))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp(addr) => write!(f, "udp://{addr}"),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Tls(addr) => write!(f, "tls://{addr}"),
            Self::Grpc(addr) => write!(f, "grpc://{addr}"),
        }
    }
}

/// Why an endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointError(String);

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EndpointError {}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            EndpointError(format!(
                "{text:?}: expected udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or grpc://HOST:PORT"
            ))
        })?;
        let addr = rest
            .to_socket_addrs()
            .map_err(|e| EndpointError(format!("{text:?}: {e}")))?
            .next()
            .ok_or_else(|| EndpointError(format!("{text:?}: host resolves to no address")))?;
        match scheme {
            "udp" => Ok(Self::Udp(addr)),
            "tcp" => Ok(Self::Tcp(addr)),
            "tls" => Ok(Self::Tls(addr)),
            "grpc" => Ok(Self::Grpc(addr)),
            other => Err(EndpointError(format!(
                "{text:?}: unknown transport {other:?} (udp, tcp, tls or grpc)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_refuses_junk() {
        assert_eq!(
            "udp://127.0.0.1:4739".parse::<Endpoint>().unwrap(),
            Endpoint::Udp("127.0.0.1:4739".parse().unwrap())
        );
        assert_eq!(
            "tcp://[::1]:0".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            "tls://127.0.0.1:4739".parse::<Endpoint>().unwrap(),
            Endpoint::Tls("127.0.0.1:4739".parse().unwrap())
        );
        assert!("sctp://127.0.0.1:1".parse::<Endpoint>().is_err());
        assert!("127.0.0.1:1".parse::<Endpoint>().is_err());
        assert!("udp://127.0.0.1".parse::<Endpoint>().is_err());
    }
}
