//! TLS on a front door (rustls): the certificate chain and key are PEM files on the
//! host, read when the doors are opened. ALPN offers HTTP/2 and HTTP/1.1.

use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::host::proto::TlsFiles;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener's TLS configuration, replaced when the doors are opened again.
#[derive(Clone, Default)]
pub struct Acceptor(Arc<RwLock<Option<TlsAcceptor>>>);

impl Acceptor {
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(TlsAcceptor::from(config));
    }

    pub fn get(&self) -> Option<TlsAcceptor> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The server configuration of `files`; the error names the file and what is wrong.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let cert_path = super::super::paths::expand_home(&files.cert);
    let key_path = super::super::paths::expand_home(&files.key);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(Iterator::collect)
        .map_err(|e| format!("reading the TLS certificate {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("reading the TLS key {}: {e}", key_path.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("the TLS key {} does not fit the certificate {}: {e}", key_path.display(), cert_path.display())
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
