//! TLS for the worker's main listener when USE_SSL is "true": the certificate and key Vast's
//! start script writes (`/etc/instance.crt`, `/etc/instance.key`), or paths given in settings.
//! The accept loop is [`ferry_serve`]'s, shared with plain HTTP; this module supplies the handshake.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} holds no certificate")]
    NoCert(String),
    #[error("{0} holds no private key")]
    NoKey(String),
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and private key into a server config (HTTP/1.1 and h2 by ALPN).
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.display().to_string()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS handshake as the accept step of [`ferry_serve`]'s loop, which gives HTTPS the same
/// timeouts, connection limit and graceful shutdown as plain HTTP (a TLS listener closes refused
/// connections without an HTTP answer).
#[derive(Clone)]
pub struct Tls(TlsAcceptor);

impl Tls {
    /// An acceptor for `config` (see [`load_config`]).
    pub fn new(config: Arc<rustls::ServerConfig>) -> Tls {
        Tls(TlsAcceptor::from(config))
    }
}

impl ferry_serve::Acceptor for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    fn accept(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send {
        self.0.accept(tcp)
    }

    fn plaintext(&self) -> bool {
        false
    }
}
