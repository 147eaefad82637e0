//! TLS for the gRPC listener: the `[tls]` section (a certificate chain and its key, and
//! optionally the CA whose client certificates are then required), loaded into a rustls
//! server configuration with ring as its explicitly chosen crypto provider (not whatever
//! provider happens to be the process default) and HTTP/2 offered by ALPN, as gRPC
//! clients such as grpcio insist on.
//!
//! The handshakes themselves run in [`super::connections`], one task per connection, so
//! that a slow or hostile peer holds up nobody else's. A reload (SIGHUP) swaps in the
//! files as they are then, so a renewed certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[tls]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The server's certificate chain (PEM), its own certificate first. With `key`, the
    /// gRPC listener takes TLS only. Default: none, plaintext.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; when set, every
    /// client must present one (mutual TLS). Default: none, no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// TLS, loaded and ready to accept with.
#[derive(Clone)]
pub struct Tls {
    /// Accepts handshakes with the loaded configuration.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Whether clients must present a certificate from `client_ca`.
    pub client_certs: bool,
}

/// The acceptor in force, shared by the accepting loop and the reload that replaces it.
/// Each handshake takes the one current when its connection was accepted, so a
/// replacement never changes a handshake under way nor touches established connections.
#[derive(Clone)]
pub struct Acceptor(Arc<RwLock<tokio_rustls::TlsAcceptor>>);

impl Acceptor {
    /// Starts with `tls`'s configuration.
    pub fn new(tls: &Tls) -> Acceptor {
        Acceptor(Arc::new(RwLock::new(tls.acceptor.clone())))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `tls`'s configuration from the next handshake on.
    pub fn replace(&self, tls: &Tls) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = tls.acceptor.clone();
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_certs", &self.client_certs)
            .finish_non_exhaustive()
    }
}

impl TlsSection {
    /// Loads the files named; `None` when TLS is not configured.
    pub fn resolve(&self) -> Result<Option<Tls>, ConfigError> {
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None) => {
                return match &self.client_ca {
                    Some(ca) => Err(file_error(
                        "tls.client_ca",
                        ca,
                        "client certificates need TLS: set tls.cert and tls.key too".into(),
                    )),
                    None => Ok(None),
                };
            }
            (Some(cert), Some(key)) => (cert, key),
            (Some(cert), None) => {
                return Err(file_error(
                    "tls.cert",
                    cert,
                    "tls.key must be set too".into(),
                ));
            }
            (None, Some(key)) => {
                return Err(file_error(
                    "tls.key",
                    key,
                    "tls.cert must be set too".into(),
                ));
            }
        };
        let chain = certificates("tls.cert", cert)?;
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| file_error("tls.key", key, pem_reason(e, "private key")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error("tls.cert", cert, e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates("tls.client_ca", ca)? {
                    roots
                        .add(certificate)
                        .map_err(|e| file_error("tls.client_ca", ca, e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| file_error("tls.client_ca", ca, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, private).map_err(|e| {
            let reason = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "not the key of the certificate in tls.cert".to_owned()
                }
                other => other.to_string(),
            };
            file_error("tls.key", key, reason)
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            client_certs: self.client_ca.is_some(),
        }))
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(field, path, pem_reason(e, "certificate")))?;
    if chain.is_empty() {
        return Err(file_error(
            field,
            path,
            "no PEM certificate (BEGIN CERTIFICATE) in it".into(),
        ));
    }
    Ok(chain)
}

fn pem_reason(error: rustls::pki_types::pem::Error, what: &str) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a PEM {what}: {other:?}"),
    }
}

fn file_error(field: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError::File {
        field,
        path: path.display().to_string(),
        reason,
    }
}
