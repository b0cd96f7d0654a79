//! TLS for the HTTP API: a rustls server config from PEM files (handshakes run in
//! [`crate::edge::serve`], one task per connection with a deadline). Also the MQTT side's TLS
//! material: the client config for an `mqtts://` broker ([`mqtt_client_config`]) and the
//! embedded broker's TLS front config ([`broker_server_config`]; the front itself is
//! [`crate::edge::mqtt_front`]).
//!
//! rustls uses the ring provider explicitly: reqwest's `rustls-tls` links ring, and with
//! two providers compiled in rustls cannot pick a process default by itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("cannot read the TLS key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("invalid TLS certificate or key: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot read the CA {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("invalid client CA: {0}")]
    ClientCa(String),
}

/// The coordinator's MQTT client identity for an `mqtts://` broker, as PEM files: the CA
/// that signed the broker's certificate, and the coordinator's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The embedded broker's TLS listener, as PEM files: its certificate chain and key, and
/// the CA whose certificates clients must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: path.to_owned(),
            message: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let certs = read_certs(path).map_err(|e| match e {
        TlsError::Cert { path, message } => TlsError::Ca { path, message },
        other => other,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The coordinator's MQTT client over TLS: the broker's certificate must chain to
/// `files.ca` and name the host dialled (DNS or IP SAN); the coordinator presents
/// `files.cert` (Ed25519, ECDSA or RSA key).
pub fn mqtt_client_config(files: &MqttClientFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = read_roots(&files.ca)?;
    let cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)?;
    Ok(Arc::new(cfg))
}

/// [`mqtt_client_config`] from PEM bytes (the coordinator's own CA and the client
/// certificate it issued itself).
pub fn mqtt_client_config_pem(
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mem = |what: &str| PathBuf::from(format!("<{what} in memory>"));
    let certs = |pem: &[u8], what: &str| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Cert {
                path: mem(what),
                message: e.to_string(),
            })
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca, "CA")? {
        roots
            .add(c)
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key {
        path: mem("key"),
        message: e.to_string(),
    })?;
    let cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert, "certificate")?, key)?;
    Ok(Arc::new(cfg))
}

/// The embedded broker's TLS front ([`crate::edge::mqtt_front`]): its certificate chain and
/// key, and a client certificate required that chains to one of the CAs in
/// `files.client_ca`. Built at start-up, so a bad file is an error then.
pub fn broker_server_config(files: &BrokerTlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = read_roots(&files.client_ca)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring())
            .build()
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)?;
    Ok(Arc::new(cfg))
}

/// Checks the embedded broker's TLS files (see [`broker_server_config`]).
pub fn check_broker_tls(files: &BrokerTlsFiles) -> Result<(), TlsError> {
    broker_server_config(files).map(|_| ())
}

/// Builds the server side from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}
