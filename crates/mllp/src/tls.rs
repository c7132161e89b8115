//! TLS and mutual TLS for MLLP: loading PEM files into rustls configs (ring provider) and
//! naming the verified client certificate.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig as RustlsClientConfig, RootCertStore, ServerConfig as RustlsServerConfig};

use crate::Error;

/// Server-side TLS settings: PEM files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerConfig {
    /// Server certificate chain, leaf first.
    pub cert_chain_pem: PathBuf,
    /// Private key for the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: PathBuf,
    /// When set, clients must present a certificate that chains to one of these CAs (mTLS).
    pub client_ca_pem: Option<PathBuf>,
}

/// Client-side TLS settings: PEM files on disk and the name the server's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientConfig {
    /// CAs trusted to sign the server's certificate.
    pub ca_pem: PathBuf,
    /// Client certificate chain for mTLS; needs `client_key_pem` too.
    pub client_cert_pem: Option<PathBuf>,
    /// Private key for `client_cert_pem`.
    pub client_key_pem: Option<PathBuf>,
    /// DNS name (or IP address) checked against the server certificate.
    pub server_name: String,
}

/// The process-wide default provider may be unset or a different backend depending on which
/// other crates enabled which rustls features; naming ring explicitly avoids both surprises.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::TlsConfig { path: path.to_path_buf(), reason: reason.into() }
}

fn open(path: &Path) -> Result<BufReader<File>, Error> {
    File::open(path).map(BufReader::new).map_err(|e| tls_err(path, format!("cannot open: {e}")))
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no CERTIFICATE found"));
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| tls_err(path, format!("invalid PEM: {e}")))?
        .ok_or_else(|| tls_err(path, "no PRIVATE KEY found"))
}

fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| tls_err(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

impl TlsServerConfig {
    /// Read the files and build a rustls server config. Errors name the offending file.
    pub fn load(&self) -> Result<Arc<RustlsServerConfig>, Error> {
        let certs = load_certs(&self.cert_chain_pem)?;
        let key = load_key(&self.key_pem)?;
        let builder = RustlsServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&self.cert_chain_pem, e.to_string()))?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| tls_err(ca, format!("cannot build client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| tls_err(&self.key_pem, format!("certificate and key do not match or are unusable: {e}")))?;
        Ok(Arc::new(config))
    }
}

impl TlsClientConfig {
    /// Read the files and build a rustls client config. Errors name the offending file.
    pub fn load(&self) -> Result<Arc<RustlsClientConfig>, Error> {
        let roots = load_roots(&self.ca_pem)?;
        let builder = RustlsClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&self.ca_pem, e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| tls_err(key, format!("client certificate and key do not match or are unusable: {e}")))?,
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => return Err(tls_err(cert, "client certificate given without client_key_pem")),
            (None, Some(key)) => return Err(tls_err(key, "client key given without client_cert_pem")),
        };
        Ok(Arc::new(config))
    }

    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, Error> {
        ServerName::try_from(self.server_name.clone()).map_err(|_| Error::InvalidServerName(self.server_name.clone()))
    }
}

/// The subject of the first (leaf) peer certificate, if the handshake verified one.
pub(crate) fn peer_subject(conn: &rustls::ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    crate::x509::subject_string(leaf.as_ref())
}
