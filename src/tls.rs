//! TLS for the listener (rustls): the server's certificate and key, and for mTLS the CA that
//! signs client certificates. Client certificates are optional at the handshake, so token
//! callers need none; one that is presented must verify, and then names its caller. Also the
//! crypto provider every outgoing HTTPS client uses.

use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsConfig;

/// Installs ring as the process's rustls crypto provider: reqwest (the Alibaba client, STS, the
/// OTLP/HTTP exporter) is built without a default one. Installing again is a harmless no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS handshake that takes longer than this is abandoned, so idle connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the listener's TLS cannot be set up, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("server.tls_cert / server.tls_key: {0}")]
    Settings(#[source] tonic::transport::Error),
}

/// The tonic TLS settings, or what is wrong with the files (naming the key).
pub(crate) fn server_config(tls: &TlsConfig) -> Result<ServerTlsConfig, TlsError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert = read("server.tls_cert", &tls.cert)?;
    let key = read("server.tls_key", &tls.key)?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read("server.client_ca", ca)?))
            .client_auth_optional(true);
    }
    Ok(config)
}
