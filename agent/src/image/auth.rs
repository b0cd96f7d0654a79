//! Registry credentials and trust anchors.
//!
//! The node-level file (`--registry-config`) is Docker's `config.json`, because operators
//! already have one (`docker login` writes it), plus one Baton key for per-registry CAs:
//!
//! ```json
//! {
//!   "auths": {
//!     "registry.lan:5000": { "auth": "<base64 of user:password>" },
//!     "https://index.docker.io/v1/": { "username": "me", "password": "secret" },
//!     "ghcr.io": { "registrytoken": "<bearer token>" }
//!   },
//!   "caFiles": { "registry.lan:5000": "registry-ca.pem" }
//! }
//! ```
//!
//! Keys are registries as they appear in image references; a scheme and path are ignored,
//! and Docker Hub's names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one.
//! `caFiles` paths are PEM bundles, relative to the file's directory. Docker's
//! `credsStore`/`credHelpers` (external programs) and `identitytoken` (OAuth refresh) are not
//! supported and are ignored with a warning. Basic credentials also drive Distribution's
//! bearer-token flow: oci-client sends them to the token realm the registry names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::ImageError;

/// Credentials for one registry. The coordinator will later send per-pod ones
/// (imagePullSecrets); [`super::ImageStore::ensure_with`] already takes them.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic, or exchanged for a bearer token when the registry asks for one.
    Basic { username: String, password: String },
    /// A bearer token used as is.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

impl Credentials {
    pub(crate) fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }

    /// A stable, non-reversible name for these credentials, so that clients and in-flight
    /// pulls with different credentials are kept apart without keeping secrets in keys.
    pub(crate) fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Credentials::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.as_bytes());
            }
            Credentials::Bearer(t) => {
                h.update(b"bearer\0");
                h.update(t.as_bytes());
            }
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Node-level registry settings: credentials and extra CAs per registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    auths: BTreeMap<String, Credentials>,
    cas: BTreeMap<String, Vec<u8>>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "caFiles")]
    ca_files: BTreeMap<String, PathBuf>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl RegistryConfig {
    /// Reads the file described in the module doc. CA files are read now, so a typo shows at
    /// start, not at the first pull.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let bytes = std::fs::read(path).map_err(|e| ImageError::RegistryConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        Self::parse(&bytes, base).map_err(|reason| ImageError::RegistryConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(bytes: &[u8], base: &Path) -> Result<Self, String> {
        let raw: DockerConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if raw.creds_store.is_some() || raw.cred_helpers.is_some() {
            warn!("credsStore and credHelpers are not supported; only inline auths are used");
        }
        let mut cfg = RegistryConfig::default();
        for (key, a) in raw.auths {
            let registry = normalize_registry(&key);
            let creds = if let Some(token) = a.registrytoken.filter(|t| !t.is_empty()) {
                Credentials::Bearer(token)
            } else if let (Some(username), Some(password)) = (a.username.clone(), a.password) {
                Credentials::Basic { username, password }
            } else if let Some(auth) = a.auth.filter(|s| !s.is_empty()) {
                let decoded = base64_decode(auth.trim())
                    .ok_or_else(|| format!("auths.{key}.auth is not base64"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                Credentials::Basic {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }
            } else {
                if a.identitytoken.is_some() {
                    warn!(registry = %registry, "identitytoken is not supported; ignoring");
                }
                continue;
            };
            cfg.auths.insert(registry, creds);
        }
        for (key, file) in raw.ca_files {
            let path = base.join(&file);
            let pem = std::fs::read(&path)
                .map_err(|e| format!("caFiles.{key}: {}: {e}", path.display()))?;
            check_pem(&pem).map_err(|e| format!("caFiles.{key}: {}: {e}", path.display()))?;
            cfg.cas.insert(normalize_registry(&key), pem);
        }
        Ok(cfg)
    }

    /// Credentials from the `.dockerconfigjson` of a pod's imagePullSecret: its `auths`
    /// only. A `caFiles` entry is dropped: it would name files on this node, which a
    /// secret sent from the coordinator has no business choosing.
    pub fn from_docker_config_json(bytes: &[u8]) -> Result<Self, String> {
        let mut raw: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if let Some(obj) = raw.as_object_mut() {
            obj.remove("caFiles");
        }
        let clean = serde_json::to_vec(&raw).map_err(|e| e.to_string())?;
        Self::parse(&clean, Path::new("/"))
    }

    /// Sets the credentials of a registry (for programmatic setup and tests).
    pub fn with_credentials(mut self, registry: &str, creds: Credentials) -> Self {
        self.auths.insert(normalize_registry(registry), creds);
        self
    }

    /// Trusts a PEM bundle for one registry.
    pub fn with_ca(mut self, registry: &str, pem: Vec<u8>) -> Self {
        self.cas.insert(normalize_registry(registry), pem);
        self
    }

    pub(crate) fn credentials(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&normalize_registry(registry))
    }

    pub(crate) fn ca(&self, registry: &str) -> Option<&[u8]> {
        self.cas
            .get(&normalize_registry(registry))
            .map(Vec::as_slice)
    }
}

/// Reads a PEM CA bundle for `--registry-ca`.
pub fn load_ca(path: &Path) -> Result<Vec<u8>, ImageError> {
    let pem = std::fs::read(path).map_err(|e| ImageError::RegistryConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    check_pem(&pem).map_err(|reason| ImageError::RegistryConfig {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(pem)
}

fn check_pem(pem: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err("no PEM certificate in it".into())
    }
}

/// The registry part of a config key, as oci-client's `resolve_registry` spells it.
pub(crate) fn normalize_registry(key: &str) -> String {
    let s = key.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_owned(),
        _ => host,
    }
}

/// Standard base64 with optional padding (what `docker login` writes). Hand-rolled to avoid
/// a dependency for twenty lines.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWI").unwrap(), b"ab");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("a*bc").is_none());
    }

    #[test]
    fn parses_docker_config_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let json = br#"{
            "auths": {
                "127.0.0.1:5000": { "auth": "dXNlcjpwOnc=" },
                "https://index.docker.io/v1/": { "username": "me", "password": "pw" },
                "ghcr.io": { "registrytoken": "tok" },
                "quay.io": { "identitytoken": "x" }
            },
            "caFiles": { "127.0.0.1:5000": "ca.pem" },
            "credsStore": "desktop"
        }"#;
        let cfg = RegistryConfig::parse(json, dir.path()).unwrap();
        assert_eq!(
            cfg.credentials("127.0.0.1:5000"),
            Some(&Credentials::Basic {
                username: "user".into(),
                password: "p:w".into()
            })
        );
        assert_eq!(
            cfg.credentials("index.docker.io"),
            Some(&Credentials::Basic {
                username: "me".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            cfg.credentials("ghcr.io"),
            Some(&Credentials::Bearer("tok".into()))
        );
        assert_eq!(cfg.credentials("quay.io"), None);
        assert!(cfg.ca("127.0.0.1:5000").is_some());
        assert!(cfg.ca("ghcr.io").is_none());

        let missing = br#"{ "caFiles": { "r": "nope.pem" } }"#;
        assert!(RegistryConfig::parse(missing, dir.path())
            .unwrap_err()
            .contains("nope.pem"));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Bearer("tok".into())).contains("tok"));
        assert_ne!(
            c.fingerprint(),
            Credentials::Bearer("hunter2".into()).fingerprint()
        );
    }
}
