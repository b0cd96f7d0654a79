//! API tokens and roles.
//!
//! Every API route but `GET /healthz` needs `Authorization: Bearer <token>`. A token is
//! 32 random bytes in hex (256 bits). The store keeps only its SHA-256, with the token's
//! name, role and creation time, under [`Table::Tokens`] keyed by name; the secret is
//! shown once, when it is made. Checking a token hashes it and looks the hash up in a
//! map: the lookup's timing depends only on the hash of what the client sent, which
//! tells an attacker nothing about any stored secret, so no constant-time compare is
//! needed.
//!
//! [`Tokens`] keeps every record in memory (there are a handful) and writes through to
//! the store. It is shared by the HTTP handlers rather than routed through the core: the
//! core never reads this table, and redb serialises the two writers' transactions.
//!
//! On first start ([`bootstrap`]) the coordinator makes an `admin` token and writes a
//! CLI config for it to `<data-dir>/admin.conf` (mode 0600), as k3s writes its
//! kubeconfig. The token is never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::client_config::ClientConfig;
use crate::contract::routes::{ListTokens, Route};
pub use crate::contract::tokens::{Role, TokenInfo};
use crate::store::{self, Op, Store, StoreError, Table};

/// The name of the token [`bootstrap`] makes.
pub const ADMIN_TOKEN_NAME: &str = "admin";
/// The CLI config [`bootstrap`] writes into the data directory.
pub const ADMIN_CONF: &str = "admin.conf";

/// A stored token: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub creation_timestamp: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// The namespaces the token is limited to; empty: not limited (see
    /// [`authorize_scoped`]). Tokens stored before namespaces existed have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token {0:?} already exists")]
    Exists(String),
    #[error("token {0:?} not found")]
    NotFound(String),
    #[error("invalid token name {0:?}: use 1-63 of a-z, 0-9, '-', '.' and '_'")]
    InvalidName(String),
    #[error("invalid namespace {0:?}: a namespace is 1-63 of a-z, 0-9 and '-' (RFC 1123 label)")]
    InvalidNamespace(String),
    #[error("cannot write {path}: {source}")]
    WriteConf {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a request may not go through (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forbidden: token {name:?} has role {role}, which may not {method} {path}")]
pub struct Denied {
    pub name: String,
    pub role: String,
    pub method: String,
    pub path: String,
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token: 256 random bits from the OS-seeded CSPRNG, in hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn valid_namespace(ns: &str) -> bool {
    (1..=63).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-')
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// May `role` call `method path`? Admins may do anything; read-only tokens may only
/// read, and may not list tokens.
pub fn authorize(role: Role, method: &str, path: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::ReadOnly => {
            let reads = method == "GET" || method == "HEAD";
            let tokens = path
                .strip_prefix(ListTokens::PATH)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            reads && !tokens
        }
    }
}

/// May a token of `role` limited to `namespaces` (none: not limited, [`authorize`])
/// call `method path`? A limited token reaches only its namespaces' routes
/// (`/api/v1/namespaces/NS/...`, by its role), reads its namespaces themselves, and may
/// `apply` if it is an admin (the core then refuses any object outside its namespaces and
/// any cluster-scoped one), and asks who it is (`whoami`); nothing else: no nodes, no tokens, no cluster-wide lists.
pub fn authorize_scoped(role: Role, namespaces: &[String], method: &str, path: &str) -> bool {
    if namespaces.is_empty() {
        return authorize(role, method, path);
    }
    if path == crate::contract::routes::Apply::PATH {
        return method == "POST" && role == Role::Admin;
    }
    if path == crate::contract::routes::WhoAmI::PATH {
        return method == "GET";
    }
    let Some(rest) = path.strip_prefix(crate::contract::routes::NAMESPACED_PREFIX) else {
        return false;
    };
    let (ns, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !namespaces.iter().any(|n| n == ns) {
        return false;
    }
    if tail.is_empty() {
        // The namespace object is cluster-scoped: read it, never delete it.
        return method == "GET" || method == "HEAD";
    }
    authorize(role, method, path)
}

/// The token table, in memory and in the store.
pub struct Tokens {
    store: Arc<dyn Store>,
    /// Records by name. A std mutex: it is never held across an await.
    by_name: Mutex<HashMap<String, TokenRecord>>,
    /// Name by hash, for [`Tokens::authenticate`].
    by_hash: Mutex<HashMap<String, String>>,
}

impl Tokens {
    /// Loads every token from the store.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, AuthError> {
        let mut by_name = HashMap::new();
        let mut by_hash = HashMap::new();
        for rec in store::list_json::<TokenRecord>(store.as_ref(), Table::Tokens)? {
            by_hash.insert(rec.sha256.clone(), rec.name.clone());
            by_name.insert(rec.name.clone(), rec);
        }
        Ok(Self {
            store,
            by_name: Mutex::new(by_name),
            by_hash: Mutex::new(by_hash),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenRecord>> {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hashes(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.by_hash.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a token and returns its secret, which is not kept.
    pub fn create(&self, name: &str, role: Role) -> Result<String, AuthError> {
        self.create_scoped(name, role, Vec::new())
    }

    /// [`Tokens::create`], limited to `namespaces` unless empty.
    pub fn create_scoped(
        &self,
        name: &str,
        role: Role,
        namespaces: Vec<String>,
    ) -> Result<String, AuthError> {
        if !valid_name(name) {
            return Err(AuthError::InvalidName(name.to_owned()));
        }
        if let Some(bad) = namespaces.iter().find(|n| !valid_namespace(n)) {
            return Err(AuthError::InvalidNamespace(bad.clone()));
        }
        let secret = new_secret();
        let rec = TokenRecord {
            name: name.to_owned(),
            role,
            creation_timestamp: crate::model::api::now_rfc3339(),
            sha256: hash_token(&secret),
            namespaces,
        };
        // Held across the commit so two creates of one name cannot both succeed.
        let mut names = self.names();
        if names.contains_key(name) {
            return Err(AuthError::Exists(name.to_owned()));
        }
        self.store
            .commit(vec![store::put_json(Table::Tokens, name, &rec)?])?;
        self.hashes().insert(rec.sha256.clone(), rec.name.clone());
        names.insert(rec.name.clone(), rec);
        Ok(secret)
    }

    pub fn delete(&self, name: &str) -> Result<(), AuthError> {
        let mut names = self.names();
        let Some(rec) = names.get(name) else {
            return Err(AuthError::NotFound(name.to_owned()));
        };
        let hash = rec.sha256.clone();
        self.store
            .commit(vec![Op::Delete(Table::Tokens, name.to_owned())])?;
        names.remove(name);
        self.hashes().remove(&hash);
        Ok(())
    }

    /// Every token, by name, without secrets or hashes.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut v: Vec<TokenInfo> = self
            .names()
            .values()
            .map(|r| TokenInfo {
                name: r.name.clone(),
                role: r.role,
                creation_timestamp: r.creation_timestamp.clone(),
                namespaces: r.namespaces.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The namespaces token `name` is limited to (empty: none).
    pub fn namespaces_of(&self, name: &str) -> Vec<String> {
        self.names()
            .get(name)
            .map(|r| r.namespaces.clone())
            .unwrap_or_default()
    }

    /// The name and role of the token `secret`, if it is one.
    pub fn authenticate(&self, secret: &str) -> Option<(String, Role)> {
        let name = self.hashes().get(&hash_token(secret)).cloned()?;
        let role = self.names().get(&name)?.role;
        Some((name, role))
    }
}

/// On first start (no tokens yet) makes the `admin` token and writes `admin.conf` for
/// it. On later starts, rewrites `admin.conf`'s `server` and `certificate-authority`
/// (the listen address or certificate may have changed) and keeps its token.
pub fn bootstrap(
    tokens: &Tokens,
    data_dir: &Path,
    server_url: &str,
    ca: Option<&Path>,
) -> Result<(), AuthError> {
    let path = data_dir.join(ADMIN_CONF);
    let token = if tokens.is_empty() {
        let secret = tokens.create(ADMIN_TOKEN_NAME, Role::Admin)?;
        tracing::info!(path = %path.display(), "created the admin token and its CLI config");
        secret
    } else {
        match ClientConfig::load(&path) {
            Ok(c) => match c.token {
                Some(t) => t,
                None => return Ok(()),
            },
            // Deleted or edited by the operator: leave it alone.
            Err(_) => return Ok(()),
        }
    };
    let conf = ClientConfig {
        server: Some(server_url.to_owned()),
        token: Some(token),
        certificate_authority: ca.map(|p| p.display().to_string()),
    };
    write_private(&path, conf.to_yaml().as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    crate::store::durable::write_private(path, bytes).map_err(|source| AuthError::WriteConf {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn tokens_are_random_hashed_and_found_by_hash() {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let tokens = Tokens::load(store.clone()).unwrap();
        assert!(tokens.is_empty());
        let secret = tokens.create("ci", Role::ReadOnly).unwrap();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, tokens.create("ci2", Role::ReadOnly).unwrap());
        assert_eq!(
            tokens.authenticate(&secret),
            Some(("ci".to_owned(), Role::ReadOnly))
        );
        assert_eq!(tokens.authenticate("nope"), None);
        assert_eq!(tokens.authenticate(&secret[..63]), None);
        // Only the hash is stored.
        let raw = store.get(Table::Tokens, "ci").unwrap().unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert!(!raw.contains(&secret));
        assert!(raw.contains(&hash_token(&secret)));
        // It survives a reload.
        let again = Tokens::load(store.clone()).unwrap();
        assert_eq!(
            again.authenticate(&secret).map(|t| t.1),
            Some(Role::ReadOnly)
        );
        assert!(matches!(
            again.create("ci", Role::Admin),
            Err(AuthError::Exists(_))
        ));
        assert!(matches!(
            again.create("Bad Name", Role::Admin),
            Err(AuthError::InvalidName(_))
        ));
        again.delete("ci").unwrap();
        assert_eq!(again.authenticate(&secret), None);
        assert!(matches!(again.delete("ci"), Err(AuthError::NotFound(_))));
        assert_eq!(
            Tokens::load(store)
                .unwrap()
                .list()
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["ci2"]
        );
    }

    #[test]
    fn roles_per_route() {
        use Role::*;
        let cases: &[(Role, &str, &str, bool)] = &[
            (Admin, "GET", "/api/v1/pods", true),
            (Admin, "POST", "/api/v1/apply", true),
            (Admin, "DELETE", "/api/v1/deployments/web", true),
            (Admin, "POST", "/api/v1/deployments/web/scale", true),
            (Admin, "POST", "/api/v1/tokens", true),
            (Admin, "GET", "/api/v1/tokens", true),
            (Admin, "DELETE", "/api/v1/tokens/ci", true),
            (ReadOnly, "GET", "/api/v1/pods", true),
            (ReadOnly, "GET", "/api/v1/pods/web-1", true),
            (ReadOnly, "HEAD", "/api/v1/nodes", true),
            (ReadOnly, "GET", "/api/v1/describe/pods/web-1", true),
            (ReadOnly, "GET", "/api/v1/events", true),
            (
                ReadOnly,
                "GET",
                "/api/v1/deployments/web/rollout/history",
                true,
            ),
            (ReadOnly, "POST", "/api/v1/apply", false),
            (ReadOnly, "DELETE", "/api/v1/pods/web-1", false),
            (ReadOnly, "DELETE", "/api/v1/deployments/web", false),
            (ReadOnly, "POST", "/api/v1/deployments/web/scale", false),
            (
                ReadOnly,
                "POST",
                "/api/v1/deployments/web/rollout/undo",
                false,
            ),
            (ReadOnly, "GET", "/api/v1/tokens", false),
            (ReadOnly, "POST", "/api/v1/tokens", false),
            (ReadOnly, "DELETE", "/api/v1/tokens/admin", false),
            (ReadOnly, "PUT", "/api/v1/pods/x", false),
            // `baton exec` runs code on a device: admin only.
            (Admin, "POST", "/api/v1/pods/web-1/exec", true),
            (ReadOnly, "POST", "/api/v1/pods/web-1/exec", false),
            (ReadOnly, "GET", "/api/v1/pods/web-1/exec", true),
        ];
        for (role, method, path, ok) in cases {
            assert_eq!(
                authorize(*role, method, path),
                *ok,
                "{role:?} {method} {path}"
            );
        }
    }

    #[test]
    fn bootstrap_writes_a_private_admin_conf_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let tokens = Tokens::load(store).unwrap();
        bootstrap(&tokens, dir.path(), "http://127.0.0.1:1", None).unwrap();
        let path = dir.path().join(ADMIN_CONF);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let conf = ClientConfig::load(&path).unwrap();
        let token = conf.token.clone().unwrap();
        assert_eq!(
            tokens.authenticate(&token),
            Some((ADMIN_TOKEN_NAME.to_owned(), Role::Admin))
        );
        // A restart on another port keeps the token and follows the address.
        bootstrap(&tokens, dir.path(), "http://127.0.0.1:2", None).unwrap();
        let again = ClientConfig::load(&path).unwrap();
        assert_eq!(again.token, Some(token));
        assert_eq!(again.server.as_deref(), Some("http://127.0.0.1:2"));
        assert_eq!(tokens.list().len(), 1);
    }

    #[test]
    fn a_token_limited_to_namespaces_reaches_only_them() {
        use Role::*;
        let a = vec!["a".to_owned()];
        let cases: &[(Role, &str, &str, bool)] = &[
            (ReadOnly, "GET", "/api/v1/namespaces/a/pods", true),
            (ReadOnly, "GET", "/api/v1/namespaces/a/pods/web-1/log", true),
            (ReadOnly, "GET", "/api/v1/namespaces/a", true),
            (ReadOnly, "DELETE", "/api/v1/namespaces/a/pods/x", false),
            (ReadOnly, "GET", "/api/v1/namespaces/b/pods", false),
            (ReadOnly, "GET", "/api/v1/namespaces/ab/pods", false),
            (ReadOnly, "GET", "/api/v1/pods", false),
            (ReadOnly, "GET", "/api/v1/nodes", false),
            (ReadOnly, "POST", "/api/v1/apply", false),
            (ReadOnly, "GET", "/api/v1/whoami", true),
            (ReadOnly, "POST", "/api/v1/whoami", false),
            (Admin, "POST", "/api/v1/apply", true),
            (
                Admin,
                "DELETE",
                "/api/v1/namespaces/a/deployments/web",
                true,
            ),
            (Admin, "POST", "/api/v1/namespaces/a/pods/x/exec", true),
            (Admin, "DELETE", "/api/v1/namespaces/a", false),
            (
                Admin,
                "DELETE",
                "/api/v1/namespaces/b/deployments/web",
                false,
            ),
            (Admin, "POST", "/api/v1/nodes/pi-1/spec", false),
            (Admin, "GET", "/api/v1/tokens", false),
            (Admin, "GET", "/metrics", false),
        ];
        for (role, method, path, want) in cases {
            assert_eq!(
                authorize_scoped(*role, &a, method, path),
                *want,
                "{role:?} {method} {path}"
            );
        }
        // Not limited: the roles' own rules.
        assert!(authorize_scoped(ReadOnly, &[], "GET", "/api/v1/pods"));
        let tokens = Tokens::load(Arc::new(MemStore::new())).unwrap();
        tokens
            .create_scoped("t", ReadOnly, vec!["a".into()])
            .unwrap();
        assert_eq!(tokens.namespaces_of("t"), ["a"]);
        assert!(matches!(
            tokens.create_scoped("u", ReadOnly, vec!["A_b".into()]),
            Err(AuthError::InvalidNamespace(_))
        ));
    }
}
