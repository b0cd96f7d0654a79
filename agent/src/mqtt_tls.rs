//! MQTT over TLS with a client certificate (`mqtts://`): the agent proves who it is to the
//! broker with its node certificate and accepts only a broker whose certificate chains to
//! the configured CA and names the host (DNS or IP SAN) the agent dialled.
//!
//! The material is held as PEM bytes, not paths, so that it can come from the agent's
//! identity file (the default: [`crate::identity::IdentityFile::mqtt_tls`]) or, to
//! override it, from flags ([`MqttTls::from_files`]). rustls uses the
//! ring provider explicitly: other crates in the tree also link aws-lc-rs, and with two
//! providers compiled in rustls cannot pick a process default by itself. Ed25519 client
//! keys work (ring signs with them in TLS 1.3 and 1.2), as do ECDSA and RSA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum MqttTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid MQTT CA certificate: {0}")]
    Ca(String),
    #[error("invalid MQTT client certificate: {0}")]
    Cert(String),
    #[error("invalid MQTT client key: {0}")]
    Key(String),
    #[error("cannot build the MQTT TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The CA that signs the broker's certificate, and this client's certificate chain and
/// private key, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Never prints the key.
impl std::fmt::Debug for MqttTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl MqttTls {
    /// Reads the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, MqttTlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| MqttTlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// The rustls client configuration: every certificate in `ca_pem` is a trust anchor,
    /// the chain in `cert_pem` (leaf first) is presented with the first key in `key_pem`.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, MqttTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = certs(&self.ca_pem).map_err(MqttTlsError::Ca)?;
        for ca in cas {
            roots.add(ca).map_err(|e| MqttTlsError::Ca(e.to_string()))?;
        }
        let chain = certs(&self.cert_pem).map_err(MqttTlsError::Cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| MqttTlsError::Key(e.to_string()))?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(cfg))
    }
}

/// Every certificate in a PEM bundle; at least one.
fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the PEM data".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::fixtures::{CA, NODE_CERT, NODE_KEY};
    use super::*;

    #[test]
    fn ed25519_client_identity_is_accepted() {
        let t = MqttTls {
            ca_pem: CA.into(),
            cert_pem: NODE_CERT.into(),
            key_pem: NODE_KEY.into(),
        };
        t.client_config().unwrap();
        // A key that is not PEM, or a CA bundle without a certificate, is refused.
        let bad_key = MqttTls {
            key_pem: b"junk".to_vec(),
            ..t.clone()
        };
        assert!(matches!(
            bad_key.client_config().unwrap_err(),
            MqttTlsError::Key(_)
        ));
        let no_ca = MqttTls {
            ca_pem: NODE_KEY.into(),
            ..t
        };
        assert!(matches!(
            no_ca.client_config().unwrap_err(),
            MqttTlsError::Ca(_)
        ));
    }

    /// The identity's key PEM is byte for byte what `openssl genpkey` writes, so OpenSSL
    /// 3.0 reads it, and an identity file carries everything mTLS needs.
    #[test]
    fn the_identity_key_pem_is_openssls_own_form() {
        use base64::Engine as _;
        let body: String = NODE_KEY
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let seed: [u8; 32] = der[der.len() - 32..].try_into().unwrap();
        assert_eq!(crate::identity::ed25519_pem(&seed), NODE_KEY);
        let id = crate::identity::IdentityFile {
            version: crate::identity::FORMAT_VERSION,
            node_name: "pi-1".into(),
            private_key: base64::engine::general_purpose::STANDARD.encode(seed),
            certificate: NODE_CERT.into(),
            coordinator_public_key: String::new(),
            ca_certificate: CA.into(),
            labels: Default::default(),
            not_after: 0,
            coordinator_api: None,
        };
        id.mqtt_tls().unwrap().client_config().unwrap();
        let dir = tempfile::tempdir().unwrap();
        id.save(&dir.path().join(crate::identity::IDENTITY_FILE))
            .unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(dir.path().join(crate::identity::KEY_PEM_FILE))
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn refuses_material_that_is_not_pem() {
        let t = MqttTls {
            ca_pem: b"not pem".to_vec(),
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
        };
        let err = t.client_config().unwrap_err();
        assert!(matches!(err, MqttTlsError::Ca(_)), "{err}");
        assert!(format!("{t:?}").contains("<redacted>"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let p = Path::new("/nonexistent/ca.pem");
        let err = MqttTls::from_files(p, p, p).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}

/// PEM test material, shared by the tests of every module that reads certificates.
#[cfg(test)]
pub(crate) mod fixtures {
    // An Ed25519 CA and an Ed25519 node certificate (CN=pi-1) under it, made with
    // `openssl genpkey -algorithm ed25519` and `openssl x509 -req -extfile` (webpki
    // refuses X.509 v1 certificates, which `x509 -req` makes without extensions).
    pub(crate) const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBQDCB86ADAgECAhR1gl+4St85DkMPCYg+ZvFRR62Z8zAFBgMrZXAwFTETMBEG\nA1UEAwwKZml4dHVyZS1jYTAgFw0yNjExMjYyMjQwMTZaGA8yMTI2MTEwMjIyNDAx\nNlowFTETMBEGA1UEAwwKZml4dHVyZS1jYTAqMAUGAytlcAMhAAG4MqKwZ9DXo4E2\nU3s0YO9zsz6goJy1GkvJdOK+We2/o1MwUTAdBgNVHQ4EFgQUyGpx2Eb7TkY2ZBgm\nrti7Du2zdgwwHwYDVR0jBBgwFoAUyGpx2Eb7TkY2ZBgmrti7Du2zdgwwDwYDVR0T\nAQH/BAUwAwEB/zAFBgMrZXADQQCfGSMqkdSFzuATKZqAmFzBb5/YDGauMYqL1ds3\nvuedcLZrKrk/akZtCWOZiir5C2LbbSCY4lQ/uNBZfM/JJRcC\n-----END CERTIFICATE-----\n";
    pub(crate) const NODE_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBPjCB8aADAgECAhR59MAqfpnvgN+LS88/I1QpqMi4rTAFBgMrZXAwFTETMBEG
A1UEAwwKZml4dHVyZS1jYTAgFw0yNjExMjYyMjQ2NTZaGA8yMTI2MTEwMjIyNDY1
NlowDzENMAsGA1UEAwwEcGktMTAqMAUGAytlcAMhABFAMlBRCfO/HaVw1dVuLEgy
3Kw91aYcZdnnVYGUZ5IBo1cwVTATBgNVHSUEDDAKBggrBgEFBQcDAjAdBgNVHQ4E
FgQUuP1/LmoLCcE14Hd5Kl7a9/VZaBUwHwYDVR0jBBgwFoAUyGpx2Eb7TkY2ZBgm
rti7Du2zdgwwBQYDK2VwA0EAwxFyek2mUrWWTIXLEeOedW4faLL0vpvks7V8EpW0
QEvMH0BSL665xupgYQd2hpMfE4NBwqDMAXb2v01SUQfOCQ==
-----END CERTIFICATE-----
";
    pub(crate) const NODE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPsybUd7tGeV0RWTpQka2uqw8sn0DlSpLDUNIywt4fyT\n-----END PRIVATE KEY-----\n";
}

/// The agent's reqwest 0.13 (oci-client's, and the agent's own for enrollment and release
/// downloads) is built without a rustls provider of its own (root Cargo.toml: linking
/// aws-lc beside ring cost megabytes) and takes the process default, panicking if there is
/// none. ring is the one provider linked, so make it the default before a client is built.
/// An `Err` only means a default is in place already.
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
