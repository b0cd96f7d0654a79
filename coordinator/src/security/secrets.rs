//! Secrets on the coordinator: encrypted at rest, sealed per node on the way out.
//!
//! **At rest.** Each `Secret` is stored in [`Table::Secrets`](crate::store::Table) as
//! `MAGIC | nonce (12) | ChaCha20-Poly1305(JSON of api::Secret)`, keyed by a 32-byte data
//! key in `<data-dir>/pki/secrets.key` (mode 0600, made on first use), with the secret's
//! name as associated data so two entries cannot be swapped. A copy of `baton.redb`
//! without that file reveals key names only as the store's keys (the secret names), never
//! values, key names or sizes beyond the ciphertext length. Backups must include the key
//! file, or the secrets are lost with it. Entries written before encryption existed
//! (plain JSON) still load, and are rewritten encrypted at start.
//!
//! **On the wire.** A node's desired state carries exactly the secrets its (sent) pods
//! reference through env `secretKeyRef`, `secret` volumes and `imagePullSecrets` (the core
//! decides which, [`crate::core::secrets`]), each sealed to the node's enrolled Ed25519 key
//! with `baton_proto::seal` under `secret_context(node, name, version)`. The broker and
//! other devices see ciphertext. `version` is a keyed hash (HMAC-SHA256 under a key
//! derived from the data key) of the content: it changes when the content does, yet a
//! broker operator cannot test guesses of a low-entropy value against it.
//!
//! **When a secret cannot be sent** (it does not exist, lacks a referenced key, or the
//! node has no enrolled key to seal to) the core withholds the pod from its node and shows
//! `CreateContainerConfigError` with the reason; it is sent as soon as that is fixed (see
//! [`crate::core::secrets`]). A node never receives a secret in plaintext.
//!
//! [`SecretKeeper`] is the core's [`Keeper`]: the core holds it behind that trait, so the
//! core depends on no part of security.
//!
//! Sealing is randomized, so sealed blobs are cached per (node, secret) and reused while
//! the version and the node's key are unchanged: republishing a desired state after a
//! lost message sends the same bytes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use baton_proto::seal::{self, SealError};
use baton_proto::sign::VerifyingKey;
use baton_proto::{self as proto, BString};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::core::secrets::{Keeper, KeeperError, SentSecret, ENCRYPTED_PREFIX};
use crate::core::CoreError;
use crate::model::api;
use crate::model::wire::encode_data;

/// The data key's file inside `<data-dir>/pki`.
pub const KEY_FILE: &str = "secrets.key";
/// The prefix of an encrypted store entry (anything else is legacy plain JSON).
const MAGIC: &[u8] = ENCRYPTED_PREFIX;
const NONCE_BYTES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a secrets data key (want 64 hex digits)")]
    BadKeyFile { path: PathBuf },
    #[error(
        "secret {name:?} does not decrypt with this data key (wrong or replaced secrets.key?)"
    )]
    Decrypt { name: String },
    #[error("secret {name:?}: {source}")]
    Json {
        name: String,
        source: serde_json::Error,
    },
    #[error("cannot encrypt secret {name:?}")]
    Encrypt { name: String },
    #[error("secret {name:?} is stored encrypted, but no data key is loaded")]
    NoKey { name: String },
    #[error("secret {name:?}: {source}")]
    Seal { name: String, source: SealError },
    #[error("secret {name:?} does not fit the wire format: {source}")]
    Wire {
        name: String,
        source: proto::ProtoError,
    },
}

/// The core reports a keeper's failures, and the server a data key it cannot load, as
/// [`CoreError::Secrets`].
impl From<SecretsError> for CoreError {
    fn from(e: SecretsError) -> Self {
        Self::Secrets(Box::new(e))
    }
}

/// The data key secrets are encrypted under at rest.
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Reads `<dir>/secrets.key`, making it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, SecretsError> {
        let path = dir.join(KEY_FILE);
        let io = |source| SecretsError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| SecretsError::BadKeyFile { path: path.clone() })?;
                Ok(Self(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private(&path, format!("{}\n", hex::encode(key)).as_bytes())?;
                tracing::info!(path = %path.display(), "made the secrets data key");
                Ok(Self(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A key that lives only in this process (tests, in-memory stores).
    pub fn ephemeral() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    fn aad(name: &str) -> Vec<u8> {
        let mut v = b"baton secret at rest v1\0".to_vec();
        v.extend_from_slice(name.as_bytes());
        v
    }

    /// The store bytes of `secret`, encrypted.
    pub fn encrypt(&self, name: &str, secret: &api::Secret) -> Result<Vec<u8>, SecretsError> {
        let json = serde_json::to_vec(secret).map_err(|source| SecretsError::Json {
            name: name.to_owned(),
            source,
        })?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &json,
                    aad: &Self::aad(name),
                },
            )
            .map_err(|_| SecretsError::Encrypt {
                name: name.to_owned(),
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_BYTES + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`DataKey::encrypt`] made for the same `name`.
    pub fn decrypt(&self, name: &str, bytes: &[u8]) -> Result<api::Secret, SecretsError> {
        let err = || SecretsError::Decrypt {
            name: name.to_owned(),
        };
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(err)?;
        if rest.len() < NONCE_BYTES {
            return Err(err());
        }
        let (nonce, ct) = rest.split_at(NONCE_BYTES);
        let json = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &Self::aad(name),
                },
            )
            .map_err(|_| err())?;
        serde_json::from_slice(&json).map_err(|source| SecretsError::Json {
            name: name.to_owned(),
            source,
        })
    }

    /// A key for content versions, separate from the encryption key.
    fn version_key(&self) -> [u8; 32] {
        let mut mac = hmac(&self.0);
        mac.update(b"baton secret version key v1");
        mac.finalize().into_bytes().into()
    }
}

/// HMAC-SHA256 keyed by 32 bytes. HMAC zero-pads a key shorter than the 64-byte block, so
/// padding it here first is the same function, and infallible.
fn hmac(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    crate::store::durable::write_private(path, bytes).map_err(|source| SecretsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Where nodes' sealing keys come from: their enrolled identities.
pub trait NodeKeys: Send + Sync {
    /// The node's current Ed25519 public key, `None` if it has none (or is revoked).
    fn sealing_key(&self, node: &str) -> Option<VerifyingKey>;
}

/// A closure is a key source: the server passes one over its enrolled identities.
impl<F> NodeKeys for F
where
    F: Fn(&str) -> Option<VerifyingKey> + Send + Sync,
{
    fn sealing_key(&self, node: &str) -> Option<VerifyingKey> {
        self(node)
    }
}

/// A node's sealing key from its identity record's public key (standard base64 of the
/// 32-byte Ed25519 key).
pub fn decode_public_key(b64: &str) -> Option<VerifyingKey> {
    let bytes = crate::model::api::base64::decode(b64)?;
    baton_proto::sign::verifying_key(&bytes).ok()
}

type SealCache = HashMap<(String, String), (u64, [u8; 32], proto::SealedSecret)>;

/// The core's handle on secrets: at-rest encryption, node keys, sealing (see the module
/// docs). The core owns it as its [`Keeper`]; the cache is behind a `Mutex` only because
/// sealing happens while building messages from `&Core`.
pub struct SecretKeeper {
    data_key: DataKey,
    keys: Arc<dyn NodeKeys>,
    version_key: [u8; 32],
    cache: Mutex<SealCache>,
}

impl std::fmt::Debug for SecretKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeeper").finish_non_exhaustive()
    }
}

impl SecretKeeper {
    pub fn new(data_key: DataKey, keys: Arc<dyn NodeKeys>) -> Self {
        Self {
            version_key: data_key.version_key(),
            data_key,
            keys,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// What goes into the store for `secret`: it encrypted.
    pub fn to_store(&self, name: &str, secret: &api::Secret) -> Result<Vec<u8>, SecretsError> {
        self.data_key.encrypt(name, secret)
    }

    /// Reads one store entry: the secret, and whether it must be rewritten (it was plain
    /// JSON, written before encryption existed). A keeper reads every entry, so never
    /// `None` (which is for a core without a keeper, `crate::core::secrets::Unkept`).
    pub fn from_store(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<Option<(api::Secret, bool)>, SecretsError> {
        if bytes.starts_with(MAGIC) {
            return self.data_key.decrypt(name, bytes).map(|s| Some((s, false)));
        }
        let s = serde_json::from_slice(bytes).map_err(|source| SecretsError::Json {
            name: name.to_owned(),
            source,
        })?;
        Ok(Some((s, true)))
    }

    /// The content version of `secret` (see the module docs).
    pub fn version(&self, secret: &api::Secret) -> u64 {
        let mut mac = hmac(&self.version_key);
        mac.update(secret.type_.as_str().as_bytes());
        for (k, v) in &secret.data {
            mac.update(&(k.len() as u64).to_be_bytes());
            mac.update(k.as_bytes());
            mac.update(&(v.len() as u64).to_be_bytes());
            mac.update(v);
        }
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }

    pub fn node_key(&self, node: &str) -> Option<VerifyingKey> {
        self.keys.sealing_key(node)
    }

    /// Seals `secret` (as `sent` describes it) to `node`, reusing an earlier seal of the
    /// same version to the same key.
    pub fn seal(
        &self,
        node: &str,
        sent: &SentSecret,
        secret: &api::Secret,
    ) -> Result<proto::SealedSecret, SecretsError> {
        let cache_key = (node.to_owned(), sent.name.clone());
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((v, k, sealed)) = cache.get(&cache_key) {
                if *v == sent.version && *k == sent.key {
                    return Ok(sealed.clone());
                }
            }
        }
        let name = &sent.name;
        let seal_err = |source| SecretsError::Seal {
            name: name.clone(),
            source,
        };
        let wire_err = |source| SecretsError::Wire {
            name: name.clone(),
            source,
        };
        let recipient = baton_proto::sign::verifying_key(&sent.key)
            .map_err(|_| seal_err(SealError::WeakKey))?;
        let plaintext = encode_data(secret).map_err(wire_err)?;
        let ctx = seal::secret_context(node, name, sent.version);
        let sealed = proto::SealedSecret {
            name: BString::new(name.as_str()).map_err(wire_err)?,
            version: sent.version,
            sealed: seal::seal(&recipient, &ctx, &plaintext).map_err(seal_err)?,
        };
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cache_key, (sent.version, sent.key, sealed.clone()));
        Ok(sealed)
    }

    /// Forgets cached seals for secrets or nodes that are gone.
    pub fn forget_except(&self, keep: &BTreeSet<(String, String)>) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| keep.contains(k));
    }
}

/// The core sees the keeper through its trait; the errors become [`CoreError::Secrets`].
impl Keeper for SecretKeeper {
    fn to_store(&self, name: &str, secret: &api::Secret) -> Result<Vec<u8>, KeeperError> {
        Ok(SecretKeeper::to_store(self, name, secret)?)
    }

    fn read_store(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<Option<(api::Secret, bool)>, KeeperError> {
        Ok(SecretKeeper::from_store(self, name, bytes)?)
    }

    fn version(&self, secret: &api::Secret) -> u64 {
        SecretKeeper::version(self, secret)
    }

    fn node_key(&self, node: &str) -> Option<VerifyingKey> {
        SecretKeeper::node_key(self, node)
    }

    fn seal(
        &self,
        node: &str,
        sent: &SentSecret,
        secret: &api::Secret,
    ) -> Result<proto::SealedSecret, KeeperError> {
        Ok(SecretKeeper::seal(self, node, sent, secret)?)
    }

    fn forget_except(&self, keep: &BTreeSet<(String, String)>) {
        SecretKeeper::forget_except(self, keep)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::secrets::{self as core_secrets, load, Unkept};
    use baton_proto::sign::SigningKey;

    fn secret(name: &str, data: &[(&str, &[u8])]) -> api::Secret {
        api::Secret {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: api::ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            type_: api::SecretType::Opaque,
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        }
    }

    struct Keys(BTreeMap<String, VerifyingKey>);
    impl NodeKeys for Keys {
        fn sealing_key(&self, node: &str) -> Option<VerifyingKey> {
            self.0.get(node).copied()
        }
    }

    /// No node has a key.
    struct NoKeys;
    impl NodeKeys for NoKeys {
        fn sealing_key(&self, _: &str) -> Option<VerifyingKey> {
            None
        }
    }

    #[test]
    fn at_rest_round_trip_hides_the_value_and_binds_the_name() {
        let k = DataKey::ephemeral();
        let s = secret("db", &[("password", b"hunter2-at-rest")]);
        let bytes = k.encrypt("db", &s).unwrap();
        assert!(!bytes.windows(15).any(|w| w == b"hunter2-at-rest"));
        assert!(!bytes.windows(8).any(|w| w == b"password"));
        assert_eq!(k.decrypt("db", &bytes).unwrap(), s);
        assert!(matches!(
            k.decrypt("other", &bytes),
            Err(SecretsError::Decrypt { .. })
        ));
        assert!(DataKey::ephemeral().decrypt("db", &bytes).is_err());
    }

    #[test]
    fn key_file_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = DataKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = DataKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        std::fs::write(dir.path().join(KEY_FILE), "short").unwrap();
        assert!(matches!(
            DataKey::load_or_create(dir.path()),
            Err(SecretsError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn legacy_plain_entries_load_and_are_marked_for_rewrite() {
        let keeper = SecretKeeper::new(DataKey::ephemeral(), Arc::new(NoKeys));
        let s = secret("db", &[("a", b"1")]);
        let plain = serde_json::to_vec(&s).unwrap();
        let enc = keeper.to_store("db2", &s).unwrap();
        let (m, rewrite) = load(
            &keeper,
            vec![("db".into(), plain), ("db2".into(), enc.clone())],
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(rewrite, vec!["db".to_string()]);
        // A core without a keeper skips encrypted entries instead of failing.
        let (m, _) = load(&Unkept, vec![("db2".into(), enc)]).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn version_follows_content_and_is_keyed() {
        let keeper = SecretKeeper::new(DataKey::ephemeral(), Arc::new(NoKeys));
        let a = secret("db", &[("password", b"one")]);
        let b = secret("db", &[("password", b"two")]);
        assert_eq!(keeper.version(&a), keeper.version(&a.clone()));
        assert_ne!(keeper.version(&a), keeper.version(&b));
        let other = SecretKeeper::new(DataKey::ephemeral(), Arc::new(NoKeys));
        assert_ne!(keeper.version(&a), other.version(&a));
    }

    #[test]
    fn sealed_secrets_open_only_on_their_node_and_are_cached() {
        let device = SigningKey::from_bytes(&[9; 32]);
        let keys = Keys([("pi-1".to_string(), device.verifying_key())].into());
        let keeper = SecretKeeper::new(DataKey::ephemeral(), Arc::new(keys));
        let s = secret("db", &[("password", b"hunter2")]);
        let secrets: BTreeMap<_, _> = [("db".to_string(), s.clone())].into();
        let names: BTreeSet<String> = ["db".to_string(), "gone".to_string()].into();
        let sent = core_secrets::sent(&keeper, "pi-1", &names, &secrets);
        assert_eq!(sent.len(), 1);
        assert!(core_secrets::sent(&keeper, "pi-2", &names, &secrets).is_empty());
        let a = keeper.seal("pi-1", &sent[0], &s).unwrap();
        let b = keeper.seal("pi-1", &sent[0], &s).unwrap();
        assert_eq!(a, b, "a republish reuses the seal");
        let ctx = seal::secret_context("pi-1", "db", a.version);
        let plain = seal::open(&device, &ctx, &a.sealed).unwrap();
        let data: proto::SecretData = postcard::from_bytes(&plain).unwrap();
        assert_eq!(data.items[0].key.as_str(), "password");
        assert_eq!(&data.items[0].value[..], b"hunter2");
        let wrong_ctx = seal::secret_context("pi-2", "db", a.version);
        assert!(seal::open(&device, &wrong_ctx, &a.sealed).is_err());
    }
}
