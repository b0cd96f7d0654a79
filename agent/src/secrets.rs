//! The device's secrets: opened from the desired state with the device key, held in memory.
//!
//! The coordinator seals each secret a node's pods use to that node's Ed25519 key
//! (`baton_proto::seal`), bound to the node's name, the secret's name and its version. The
//! desired state is persisted sealed (`desired.bin`): only this device can open it, and
//! the agent opens it again after a reboot without the network. Plaintext lives only in
//! this process's memory ([`DeviceSecrets`]) and in the pods' tmpfs secret volumes; it is
//! never written to disk by the agent.
//!
//! The key is read from `<data-dir>/identity.json` whenever something must be opened, so a
//! key rotated by `baton-agent rotate` is used at once. A secret that does not open
//! (sealed to an older key, tampered with, or for another node) is left out with an
//! error in the log: pods using it then fail with `CreateContainerConfigError` until the
//! coordinator sends one that opens.
//!
//! `imagePullSecrets` are secrets holding `.dockerconfigjson`; [`pull_credentials`] turns
//! them into the credentials for one image's registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use baton_proto::seal::{self, SealError};
use baton_proto::sign::SigningKey;
use baton_proto::{BString, SealedSecret, SecretData};
use tracing::{info, warn};

use crate::image::{Credentials, RegistryConfig};
use crate::volumes::SecretSource;

/// The key of a `kubernetes.io/dockerconfigjson` secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("no device key to open secrets with: {0}")]
    NoKey(String),
    #[error("secret {name:?} does not open with this device's key: {source}")]
    Open { name: String, source: SealError },
    #[error("secret {name:?} opened to malformed data: {reason}")]
    Malformed { name: String, reason: String },
}

/// Where the device key comes from.
#[derive(Clone)]
enum KeySource {
    /// `<data-dir>/identity.json`, read at each use (rotation-safe).
    IdentityFile(PathBuf),
    /// A fixed key (tests).
    Fixed(Arc<SigningKey>),
}

/// The opened secrets of the current desired state. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct DeviceSecrets {
    node: String,
    key: KeySource,
    /// By name: the version opened, and its plaintext.
    opened: Arc<RwLock<BTreeMap<String, (u64, SecretData)>>>,
}

impl std::fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.read().keys().cloned().collect();
        f.debug_struct("DeviceSecrets")
            .field("node", &self.node)
            .field("opened", &names)
            .finish()
    }
}

impl DeviceSecrets {
    /// Secrets for `node`, opened with the key in `<data_dir>/identity.json`.
    pub fn new(node: &str, data_dir: &Path) -> Self {
        Self {
            node: node.to_owned(),
            key: KeySource::IdentityFile(data_dir.join(crate::identity::IDENTITY_FILE)),
            opened: Arc::default(),
        }
    }

    /// Secrets for `node`, opened with `key`.
    pub fn with_key(node: &str, key: SigningKey) -> Self {
        Self {
            node: node.to_owned(),
            key: KeySource::Fixed(Arc::new(key)),
            opened: Arc::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, (u64, SecretData)>> {
        self.opened.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn signing_key(&self) -> Result<SigningKey, SecretsError> {
        match &self.key {
            KeySource::Fixed(k) => Ok((**k).clone()),
            KeySource::IdentityFile(path) => match crate::identity::IdentityFile::load(path) {
                Ok(Some(id)) => id
                    .signing_key()
                    .map_err(|e| SecretsError::NoKey(e.to_string())),
                Ok(None) => Err(SecretsError::NoKey(format!(
                    "{} does not exist (the node is not enrolled)",
                    path.display()
                ))),
                Err(e) => Err(SecretsError::NoKey(e.to_string())),
            },
        }
    }

    /// Makes the opened set match `sealed` (the desired state's secrets): opens new and
    /// changed versions, forgets the rest. Returns what failed to open (also logged).
    pub fn update(&self, sealed: &[SealedSecret]) -> Vec<SecretsError> {
        let mut errors = Vec::new();
        let mut next = BTreeMap::new();
        let mut key: Option<SigningKey> = None;
        {
            let current = self.read();
            for s in sealed {
                let name = s.name.as_str();
                if let Some((v, data)) = current.get(name) {
                    if *v == s.version {
                        next.insert(name.to_owned(), (*v, data.clone()));
                        continue;
                    }
                }
                if key.is_none() {
                    match self.signing_key() {
                        Ok(k) => key = Some(k),
                        Err(e) => {
                            warn!(error = %e, "cannot open secrets");
                            errors.push(e);
                            break;
                        }
                    }
                }
                let Some(k) = key.as_ref() else { break };
                match open_one(&self.node, k, s) {
                    Ok(data) => {
                        info!(secret = name, version = s.version, "opened secret");
                        next.insert(name.to_owned(), (s.version, data));
                    }
                    Err(e) => {
                        warn!(error = %e, "secret left out");
                        errors.push(e);
                    }
                }
            }
        }
        *self.opened.write().unwrap_or_else(PoisonError::into_inner) = next;
        errors
    }

    /// Names of the secrets currently open.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }
}

impl SecretSource for DeviceSecrets {
    fn get(&self, name: &str) -> Option<SecretData> {
        self.read().get(name).map(|(_, d)| d.clone())
    }
}

/// Opens one sealed secret for `node` with `key`.
pub fn open_one(
    node: &str,
    key: &SigningKey,
    s: &SealedSecret,
) -> Result<SecretData, SecretsError> {
    let name = s.name.as_str();
    let ctx = seal::secret_context(node, name, s.version);
    let plain = seal::open(key, &ctx, &s.sealed).map_err(|source| SecretsError::Open {
        name: name.to_owned(),
        source,
    })?;
    postcard::from_bytes(&plain).map_err(|e| SecretsError::Malformed {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Credentials for `image` from a pod's `imagePullSecrets`, the first secret with an entry
/// for the image's registry winning (as kubelet does). Unusable secrets are skipped with
/// a warning: the pull then goes on with the node's own credentials.
pub fn pull_credentials(
    secrets: &dyn SecretSource,
    pull_secrets: &[BString<253>],
    image: &str,
) -> Option<Credentials> {
    if pull_secrets.is_empty() {
        return None;
    }
    let registry = registry_of(image)?;
    for name in pull_secrets {
        let Some(data) = secrets.get(name.as_str()) else {
            warn!(
                secret = name.as_str(),
                "imagePullSecret is not available on this node"
            );
            continue;
        };
        let Some(item) = data
            .items
            .iter()
            .find(|i| i.key.as_str() == DOCKER_CONFIG_JSON_KEY)
        else {
            warn!(
                secret = name.as_str(),
                "imagePullSecret has no {DOCKER_CONFIG_JSON_KEY}"
            );
            continue;
        };
        match RegistryConfig::from_docker_config_json(&item.value) {
            Ok(cfg) => {
                if let Some(c) = cfg.credentials(&registry) {
                    return Some(c.clone());
                }
            }
            Err(e) => {
                warn!(secret = name.as_str(), error = %e, "imagePullSecret is not a Docker config")
            }
        }
    }
    None
}

/// The registry part of an image reference, as Docker config keys name it.
fn registry_of(image: &str) -> Option<String> {
    let r: oci_client::Reference = image.parse().ok()?;
    Some(r.registry().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BVec, SealScheme, Sealed, SecretItem};

    fn data(items: &[(&str, &[u8])]) -> SecretData {
        SecretData {
            items: BVec::from_vec(
                items
                    .iter()
                    .map(|(k, v)| SecretItem {
                        key: BString::new(*k).unwrap(),
                        value: BVec::from_vec(v.to_vec()).unwrap(),
                    })
                    .collect(),
            )
            .unwrap(),
        }
    }

    fn sealed_for(
        node: &str,
        key: &SigningKey,
        name: &str,
        version: u64,
        d: &SecretData,
    ) -> SealedSecret {
        let plain = postcard::to_allocvec(d).unwrap();
        let ctx = seal::secret_context(node, name, version);
        SealedSecret {
            name: BString::new(name).unwrap(),
            version,
            sealed: seal::seal(&key.verifying_key(), &ctx, &plain).unwrap(),
        }
    }

    #[test]
    fn opens_its_own_secrets_and_follows_the_desired_set() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let s = DeviceSecrets::with_key("pi-1", key.clone());
        let db = data(&[("password", b"hunter2")]);
        let errors = s.update(&[sealed_for("pi-1", &key, "db", 1, &db)]);
        assert!(errors.is_empty());
        assert_eq!(s.get("db"), Some(db));
        let db2 = data(&[("password", b"changed")]);
        assert!(s
            .update(&[sealed_for("pi-1", &key, "db", 2, &db2)])
            .is_empty());
        assert_eq!(s.get("db"), Some(db2));
        assert!(s.update(&[]).is_empty());
        assert_eq!(s.get("db"), None);
    }

    #[test]
    fn another_nodes_or_a_tampered_secret_is_left_out() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        let s = DeviceSecrets::with_key("pi-1", key.clone());
        let d = data(&[("k", b"v")]);
        let for_other_key = sealed_for("pi-1", &other, "a", 1, &d);
        let for_other_node = sealed_for("pi-2", &key, "b", 1, &d);
        let mut tampered = sealed_for("pi-1", &key, "c", 1, &d);
        let mut bytes = tampered.sealed.data.to_vec();
        bytes[40] ^= 1;
        tampered.sealed = Sealed {
            scheme: SealScheme::X25519ChaCha20Poly1305,
            data: BVec::from_vec(bytes).unwrap(),
        };
        // A blob moved to another name does not open either.
        let mut renamed = sealed_for("pi-1", &key, "d", 1, &d);
        renamed.name = BString::new("e").unwrap();
        let good = sealed_for("pi-1", &key, "ok", 1, &d);
        let errors = s.update(&[for_other_key, for_other_node, tampered, renamed, good]);
        assert_eq!(errors.len(), 4);
        assert_eq!(s.names(), vec!["ok".to_string()]);
    }

    #[test]
    fn without_an_identity_file_nothing_opens() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeviceSecrets::new("pi-1", dir.path());
        let key = SigningKey::from_bytes(&[3; 32]);
        let errors = s.update(&[sealed_for("pi-1", &key, "db", 1, &data(&[]))]);
        assert!(matches!(errors.as_slice(), [SecretsError::NoKey(_)]));
        assert!(s.names().is_empty());
    }

    #[test]
    fn pull_credentials_come_from_the_docker_config_secret() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let s = DeviceSecrets::with_key("pi-1", key.clone());
        let cfg = br#"{"auths":{"127.0.0.1:5000":{"username":"u","password":"p"}},"caFiles":{"127.0.0.1:5000":"/etc/shadow"}}"#;
        let other = br#"{"auths":{"ghcr.io":{"auth":"eDp5"}}}"#;
        s.update(&[
            sealed_for(
                "pi-1",
                &key,
                "ghcr",
                1,
                &data(&[(".dockerconfigjson", other)]),
            ),
            sealed_for("pi-1", &key, "reg", 1, &data(&[(".dockerconfigjson", cfg)])),
            sealed_for(
                "pi-1",
                &key,
                "junk",
                1,
                &data(&[(".dockerconfigjson", b"nope")]),
            ),
        ]);
        let names = |ns: &[&str]| {
            ns.iter()
                .map(|n| BString::new(*n).unwrap())
                .collect::<Vec<_>>()
        };
        let want = Credentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(
            pull_credentials(
                &s,
                &names(&["junk", "missing", "ghcr", "reg"]),
                "127.0.0.1:5000/app:1"
            ),
            Some(want)
        );
        assert_eq!(
            pull_credentials(&s, &names(&["ghcr"]), "ghcr.io/x/y:1"),
            Some(Credentials::Basic {
                username: "x".into(),
                password: "y".into()
            })
        );
        assert_eq!(
            pull_credentials(&s, &names(&["reg"]), "docker.io/library/busybox"),
            None
        );
        assert_eq!(pull_credentials(&s, &[], "127.0.0.1:5000/app:1"), None);
    }
}
