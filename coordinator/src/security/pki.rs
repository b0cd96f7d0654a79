//! The coordinator's key and certificate authority.
//!
//! One Ed25519 key, `<data-dir>/pki/coordinator.key` (PKCS#8 v1 PEM, mode 0600, made on
//! first start; v1 because OpenSSL 3.0 cannot read the v2 form with the public key that
//! ed25519-dalek writes, and a key written that way by an older version is rewritten), signs every envelope the coordinator sends and every certificate it
//! issues. `<data-dir>/pki/ca.crt` is a self-signed X.509 CA certificate for that key.
//! Agents pin the CA by the SHA-256 of its DER bytes, which every join token carries
//! (like kubeadm's discovery hash), and the coordinator's public key is the CA's key, so
//! pinning one pins the other.
//!
//! Node certificates are X.509 leaves, CN = node name, for the device's own Ed25519 key,
//! signed by the CA; the agent presents it to the MQTT broker (mutual TLS), so enrollment
//! is the device's whole onboarding. The broker's server certificate
//! ([`Pki::issue_server`]: the embedded broker's `--mqtt-tls-auto`, Mosquitto's from
//! `baton broker mosquitto-config`) and the coordinator's own MQTT client certificate
//! ([`Pki::issue_client`], CN [`COORDINATOR_CN`]) come from the same CA. The API's TLS certificate ([`Pki::api_tls`]) is a leaf of the
//! same CA, so an agent that pinned the CA can enroll over HTTPS from another host.
//!
//! rcgen does the X.509 encoding; signing goes through ed25519-dalek via [`rcgen::SigningKey`],
//! so no second crypto library is linked for it.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::security::encoding;

pub const KEY_FILE: &str = "coordinator.key";
pub const CA_FILE: &str = "ca.crt";
/// The API's TLS certificate and key, reissued on every start by [`Pki::api_tls`].
pub const API_CERT_FILE: &str = "api.crt";
pub const API_KEY_FILE: &str = "api.key";
/// The embedded broker's TLS certificate and key (`--mqtt-tls-auto`), reissued on every
/// start by [`Pki::broker_tls`].
pub const BROKER_CERT_FILE: &str = "mqtt-server.crt";
pub const BROKER_KEY_FILE: &str = "mqtt-server.key";
const CA_COMMON_NAME: &str = "baton coordinator CA";
/// The coordinator's MQTT identity (CN). The colon cannot occur in a node name, so no
/// device can be issued it (deploy/mosquitto/acl relies on that).
pub const COORDINATOR_CN: &str = "baton:coordinator";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid coordinator key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot build a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("invalid certificate expiry {0}")]
    Expiry(u64),
    #[error("invalid subject alternative name {0:?}")]
    San(String),
}

/// The coordinator's key pair and CA certificate.
pub struct Pki {
    dir: PathBuf,
    key: SigningKey,
    ca_pem: String,
    ca_der: Vec<u8>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("public_key", &self.key.verifying_key())
            .finish_non_exhaustive()
    }
}

/// An ed25519-dalek key as rcgen's signer.
struct Ed25519Signer<'a>(&'a SigningKey);

impl rcgen::PublicKeyData for Ed25519Signer<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_ref().as_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for Ed25519Signer<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

/// A device's public key, as the subject key of its certificate.
struct DeviceKey<'a>(&'a VerifyingKey);

impl rcgen::PublicKeyData for DeviceKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// The CA's parameters. Deterministic, so the issuer name and key identifier of issued
/// certificates match the stored `ca.crt` without parsing it.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = false;
    p
}

fn unix_time(secs: u64) -> Result<time::OffsetDateTime, PkiError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(PkiError::Expiry(secs))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pki {
    /// Loads the key and CA certificate from `dir`, creating both on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PkiError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        let ca_path = dir.join(CA_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| PkiError::Key {
                    path: key_path.clone(),
                    message: e.to_string(),
                })?;
                let v1 = ed25519_pem(&key);
                if pem != v1 {
                    // An older version wrote PKCS#8 v2, which OpenSSL 3.0 cannot read.
                    write_private(&key_path, v1.as_bytes())?;
                }
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key();
                write_private(&key_path, ed25519_pem(&key).as_bytes())?;
                // A new key needs a new CA certificate.
                let _ = std::fs::remove_file(&ca_path);
                tracing::info!(path = %key_path.display(), "created the coordinator key");
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let ca_pem = match std::fs::read_to_string(&ca_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut p = ca_params();
                p.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
                p.not_before = unix_time(now_unix().saturating_sub(3600))?;
                p.not_after = unix_time(now_unix() + 30 * 365 * 86400)?;
                let pem = p.self_signed(&Ed25519Signer(&key))?.pem();
                write_private(&ca_path, pem.as_bytes())?;
                pem
            }
            Err(e) => return Err(io(&ca_path)(e)),
        };
        let ca_der = pem_to_der(&ca_pem).ok_or_else(|| PkiError::Key {
            path: ca_path.clone(),
            message: "no certificate in the file".into(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            key,
            ca_pem,
            ca_der,
        })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The coordinator's signing key (for envelopes; see `security::OutboundSigner`).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub fn sign(&self, msg: &[u8]) -> ed25519_dalek::Signature {
        self.key.sign(msg)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Hex SHA-256 of the CA certificate's DER bytes: what join tokens carry.
    pub fn ca_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.ca_der))
    }

    fn issuer(&self) -> Issuer<'static, Ed25519Signer<'_>> {
        Issuer::new(ca_params(), Ed25519Signer(&self.key))
    }

    /// A node certificate: CN = `node`, for `device`'s key, valid until `not_after`
    /// (Unix seconds), for TLS client authentication. Returns PEM.
    pub fn issue_node_cert(
        &self,
        node: &str,
        device: &VerifyingKey,
        not_after: u64,
    ) -> Result<String, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        p.distinguished_name = dn;
        p.not_before = unix_time(now_unix().saturating_sub(300))?;
        p.not_after = unix_time(not_after)?;
        p.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        Ok(p.signed_by(&DeviceKey(device), &self.issuer())?.pem())
    }

    /// Issues the API's TLS certificate for `sans` (IP addresses or DNS names) with a
    /// fresh key, writes both next to the CA, and returns their paths (cert, key).
    pub fn api_tls(&self, sans: &[String]) -> Result<(PathBuf, PathBuf), PkiError> {
        let (cert, key) = self.issue_server("baton coordinator API", sans)?;
        self.write_pair(API_CERT_FILE, API_KEY_FILE, &cert, &key)
    }

    /// The embedded broker's TLS certificate (`--mqtt-tls-auto`) for `sans`, written next
    /// to the CA like [`Pki::api_tls`]; returns (cert, key) paths.
    pub fn broker_tls(&self, sans: &[String]) -> Result<(PathBuf, PathBuf), PkiError> {
        let (cert, key) = self.issue_server("baton MQTT broker", sans)?;
        self.write_pair(BROKER_CERT_FILE, BROKER_KEY_FILE, &cert, &key)
    }

    fn write_pair(
        &self,
        cert_file: &str,
        key_file: &str,
        cert: &str,
        key: &str,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert_path = self.dir.join(cert_file);
        let key_path = self.dir.join(key_file);
        write_private(&key_path, key.as_bytes())?;
        write_private(&cert_path, cert.as_bytes())?;
        Ok((cert_path, key_path))
    }

    /// A TLS server certificate for `sans` (IP addresses or DNS names), valid a year, with
    /// a fresh Ed25519 key. Returns (the chain: leaf then CA, so clients that pinned the
    /// CA can verify it; the key as PKCS#8 v1 PEM).
    pub fn issue_server(&self, cn: &str, sans: &[String]) -> Result<(String, String), PkiError> {
        let mut p = self.leaf_params(cn)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for s in sans {
            let san = match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(s.clone().try_into().map_err(|_| PkiError::San(s.clone()))?)
                }
            };
            p.subject_alt_names.push(san);
        }
        let key = new_key();
        let pem = p.signed_by(&Ed25519Signer(&key), &self.issuer())?.pem();
        Ok((format!("{pem}{}", self.ca_pem), ed25519_pem(&key)))
    }

    /// A TLS client certificate with this CN (e.g. [`COORDINATOR_CN`]), valid a year, with
    /// a fresh Ed25519 key. Returns (certificate PEM, key as PKCS#8 v1 PEM).
    pub fn issue_client(&self, cn: &str) -> Result<(String, String), PkiError> {
        let mut p = self.leaf_params(cn)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = new_key();
        let pem = p.signed_by(&Ed25519Signer(&key), &self.issuer())?.pem();
        Ok((pem, ed25519_pem(&key)))
    }

    fn leaf_params(&self, cn: &str) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.not_before = unix_time(now_unix().saturating_sub(300))?;
        p.not_after = unix_time(now_unix() + 365 * 86400)?;
        p.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}

fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// An Ed25519 key as PKCS#8 v1 PEM (RFC 8410 without the public key), the form OpenSSL
/// 3.0, rustls and ring all read.
pub fn ed25519_pem(key: &SigningKey) -> String {
    // PrivateKeyInfo { version 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING {
    // OCTET STRING (32) } }: a fixed prefix and the seed.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    let b64 = encoding::b64(&der);
    format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
}

/// The DER bytes of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// The subject's common name, if it has exactly one and it is UTF-8.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next()?.as_str().ok()?.to_owned();
    cns.next().is_none().then_some(cn)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    crate::store::durable::write_private(path, bytes).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_ca_are_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path()).unwrap();
        let b = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.ca_pem(), b.ca_pem());
        assert_eq!(a.ca_sha256().len(), 64);
        for f in [KEY_FILE, CA_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let pem = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    }

    #[test]
    fn node_certificates_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let device = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let pem = pki
            .issue_node_cert("pi-1", &device, now_unix() + 3600)
            .unwrap();
        let der = pem_to_der(&pem).unwrap();
        // The device's key is in the certificate, and the CA's key verifies it: rustls's
        // own verifier (webpki) accepts it as a client certificate chained to the CA.
        assert!(der.windows(32).any(|w| w == device.as_bytes()));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(pki.ca_der.clone()))
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        verifier
            .verify_client_cert(
                &rustls_pki_types::CertificateDer::from(der),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap();
        assert!(pki.issue_node_cert("pi-1", &device, u64::MAX).is_err());
    }

    /// Every key the coordinator writes is one OpenSSL 3.0 reads (`openssl pkey`), and
    /// one written by an older version in PKCS#8 v2 is rewritten on load.
    #[test]
    fn keys_are_readable_by_openssl() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let old = SigningKey::from_bytes(&[9; 32]);
        let v2 = old
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        std::fs::write(dir.path().join(KEY_FILE), v2.as_bytes()).unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pki.public_key(), old.verifying_key());
        let (_, broker_key) = pki.broker_tls(&["127.0.0.1".into()]).unwrap();
        let (_, api_key) = pki.api_tls(&["127.0.0.1".into()]).unwrap();
        let (_, client_key) = pki.issue_client(COORDINATOR_CN).unwrap();
        let client_path = dir.path().join("client.key");
        std::fs::write(&client_path, client_key).unwrap();
        for key in [dir.path().join(KEY_FILE), broker_key, api_key, client_path] {
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-noout", "-in"])
                .arg(&key)
                .output()
                .expect("openssl is installed (scripts/install-deps.sh)");
            assert!(
                out.status.success(),
                "openssl cannot read {}: {}",
                key.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The same key, still.
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public_key(), old.verifying_key());
    }

    #[test]
    fn the_api_certificate_loads_into_rustls() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let (cert, key) = pki
            .api_tls(&["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        crate::edge::tls::server_config(&cert, &key).unwrap();
    }
}
