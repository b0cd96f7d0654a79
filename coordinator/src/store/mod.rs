//! The coordinator's persistent state behind a small trait: a few tables of
//! key -> bytes, read one key or a whole table at a time, and written in atomic,
//! durable batches.
//!
//! The trait is deliberately tiny (get, list, commit) so that the etcd backend for
//! coordinators that share their state ([`etcd::EtcdStore`]) needs nothing from the
//! core. The core keeps everything in memory and only writes through, so `list` is only
//! used at start.
//!
//! [`RedbStore`] is the embedded backend: one file, `DATA_DIR/baton.redb`. redb commits
//! are copy-on-write with a checksummed commit slot and an fsync before `commit`
//! returns (durability `Immediate`, redb's default), so a crash or power cut leaves
//! either the old or the new state of a batch, never a mix; the crash test below checks
//! that with SIGKILL.

pub mod conformance;
pub mod durable;
pub mod etcd;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The on-disk layout version. Bump it when the meaning of stored bytes changes, and
/// teach `RedbStore::open` to migrate the older versions.
pub const SCHEMA_VERSION: u32 = 1;
/// The key under [`Table::Meta`] that holds [`SCHEMA_VERSION`] as decimal text.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// The store's file inside the data directory.
pub const FILE_NAME: &str = "baton.redb";
/// redb defaults to a 1 GiB page cache; an edge board has a fraction of that, and the
/// coordinator's state is small and also held in memory by the core.
const CACHE_BYTES: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Deployments,
    Pods,
    Nodes,
    Events,
    Meta,
    /// Deployment revisions, keyed `<deployment>/<revision>` (see `crate::decide::rollout`).
    Revisions,
    /// API tokens, keyed by name; only their SHA-256 is stored (see `crate::security::auth`).
    Tokens,
    /// Secrets, keyed by name (`api::Secret`).
    Secrets,
    /// Imported images, keyed `repository:tag` (see `crate::registry`).
    Images,
    /// Join tokens for enrollment, keyed by id; only their SHA-256 (see `crate::security::enroll`).
    JoinTokens,
    /// Enrolled node identities (keys, certificates, revocation), keyed by node name
    /// (see `crate::security::gate`).
    Identities,
    /// The last sequence number accepted from each node, keyed by node name, written
    /// lazily (see `crate::security::gate`).
    Seqs,
    /// Imported agent releases, keyed by `sha256:<hex>` (`model::release::ReleaseRecord`;
    /// the binaries are files, see `crate::registry::releases`).
    Releases,
    /// Agent update rollouts (`kind: AgentUpdate`), keyed by name.
    AgentUpdates,
    /// DaemonSets, keyed by name (their revisions are in `Revisions`).
    DaemonSets,
    /// Jobs with their status, keyed by name (their pods are in `Pods`).
    Jobs,
    /// CronJobs with their status, keyed by name (their Jobs are in `Jobs`).
    CronJobs,
    /// ConfigMaps, keyed by name (plain JSON: they are not secret).
    ConfigMaps,
    /// Services with their allocated ClusterIP and nodePorts, keyed by name (JSON).
    Services,
    /// Namespaces other than `default`, keyed by name (`api::Namespace`, JSON). The
    /// namespaced tables key their objects by qualified name (`api::qualify`): `default`'s
    /// by name alone, as before namespaces existed.
    Namespaces,
}

impl Table {
    pub const ALL: [Table; 20] = [
        Table::Deployments,
        Table::Pods,
        Table::Nodes,
        Table::Events,
        Table::Meta,
        Table::Revisions,
        Table::Tokens,
        Table::Images,
        Table::Secrets,
        Table::JoinTokens,
        Table::Identities,
        Table::Seqs,
        Table::Releases,
        Table::AgentUpdates,
        Table::DaemonSets,
        Table::Jobs,
        Table::CronJobs,
        Table::ConfigMaps,
        Table::Services,
        Table::Namespaces,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Deployments => "deployments",
            Table::Pods => "pods",
            Table::Nodes => "nodes",
            Table::Events => "events",
            Table::Meta => "meta",
            Table::Revisions => "revisions",
            Table::Tokens => "tokens",
            Table::Secrets => "secrets",
            Table::Images => "images",
            Table::JoinTokens => "join_tokens",
            Table::Identities => "identities",
            Table::Seqs => "seqs",
            Table::Releases => "releases",
            Table::AgentUpdates => "agent_updates",
            Table::DaemonSets => "daemon_sets",
            Table::Jobs => "jobs",
            Table::CronJobs => "cron_jobs",
            Table::ConfigMaps => "config_maps",
            Table::Services => "services",
            Table::Namespaces => "namespaces",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path} is already open in another process")]
    AlreadyOpen { path: PathBuf },
    #[error("store {path} is corrupt or not a Baton store: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "store {path} was written by a newer Baton (schema version {found}, this build \
         supports up to {supported}); run a newer Baton or use another data directory"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store {path} is unavailable: reopening it after an I/O error failed")]
    Unavailable { path: PathBuf },
    #[error("store {path} has an invalid schema version {found:?}")]
    InvalidSchema { path: PathBuf, found: String },
    /// An I/O failure (a full disk, say) or another backend error. The batch that hit it
    /// was not applied.
    #[error("store: {0}")]
    Backend(#[from] Box<redb::Error>),
    /// etcd refused or did not answer; the batch that hit it was not applied.
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("cannot encode {table:?}/{key}: {source}")]
    Encode {
        table: Table,
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot decode {table:?}/{key}: {source}")]
    Decode {
        table: Table,
        key: String,
        source: serde_json::Error,
    },
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(Box::new(e.into()))
}

pub trait Store: Send + Sync + 'static {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry of `table`, sorted by key.
    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `ops` in order, atomically and durably: when this returns `Ok` all of them
    /// survive a crash, and when it fails or the process dies first none of them apply.
    fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError>;
}

/// The embedded store: one redb file.
///
/// After an I/O error (a full disk, say) redb refuses every later call on the same
/// handle with `PreviousIo` until the file is reopened. So that a coordinator whose disk
/// filled up recovers once space is freed, without a restart, the store remembers the
/// failure and reopens the file at the start of the next call; that call fails again if
/// the disk is still full, and the state on disk stays the last committed one.
pub struct RedbStore {
    path: PathBuf,
    /// `None` only between dropping a failed handle and a successful reopen. The write
    /// lock is taken only to reopen, so calls share the handle as redb intends.
    db: RwLock<Option<redb::Database>>,
    needs_reopen: AtomicBool,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens `data_dir/baton.redb`, creating the directory and the file if needed.
    ///
    /// Refuses a file written by a newer schema, and reports a corrupt or foreign file as
    /// [`StoreError::Corrupt`]. After a crash redb repairs the file here, which can take
    /// a moment on a large file.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = open_db(&path)?;
        check_schema(&db, &path)?;
        Ok(RedbStore {
            path,
            db: RwLock::new(Some(db)),
            needs_reopen: AtomicBool::new(false),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the database handle, reopening it first after an earlier I/O error,
    /// and noting a new I/O error for the next call.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&redb::Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.needs_reopen.load(Ordering::Acquire) {
            self.reopen()?;
        }
        // A panic while holding the lock cannot leave the handle half-changed.
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = guard.as_ref() else {
            return Err(StoreError::Unavailable {
                path: self.path.clone(),
            });
        };
        let result = f(db);
        if let Err(StoreError::Backend(e)) = &result {
            if matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                self.needs_reopen.store(true, Ordering::Release);
            }
        }
        result
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        if !self.needs_reopen.load(Ordering::Acquire) {
            return Ok(()); // another caller reopened it meanwhile
        }
        tracing::warn!(path = %self.path.display(), "reopening the store after an I/O error");
        // Drop the failed handle first: it holds the file lock.
        *guard = None;
        let db = open_db(&self.path)?;
        check_schema(&db, &self.path)?;
        *guard = Some(db);
        self.needs_reopen.store(false, Ordering::Release);
        Ok(())
    }
}

fn open_db(path: &Path) -> Result<redb::Database, StoreError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    // The v3 format is what redb 3 reads without an upgrade step.
    builder.create_with_file_format_v3(true);
    builder.create(path).map_err(|e| open_error(path, e))
}

/// Reads the schema version, or writes it (and creates every table) on a new file.
fn check_schema(db: &redb::Database, path: &Path) -> Result<(), StoreError> {
    match get(db, Table::Meta, SCHEMA_VERSION_KEY)? {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let found: u32 = text.parse().map_err(|_| StoreError::InvalidSchema {
                path: path.to_path_buf(),
                found: text.clone(),
            })?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    path: path.to_path_buf(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Ok(())
        }
        None => {
            let txn = db.begin_write().map_err(backend)?;
            for t in Table::ALL {
                txn.open_table(t.definition()).map_err(backend)?;
            }
            {
                let mut meta = txn.open_table(Table::Meta.definition()).map_err(backend)?;
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        }
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(message)) => {
            StoreError::Corrupt { path, message }
        }
        // redb reports a file without its magic number or with a damaged header so.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Corrupt {
                path,
                message: "bad file header".to_string(),
            }
        }
        other => StoreError::Open {
            path,
            source: Box::new(other.into()),
        },
    }
}

fn get(db: &redb::Database, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let t = match txn.open_table(table.definition()) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(backend(e)),
    };
    Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn list(db: &redb::Database, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let t = match txn.open_table(table.definition()) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(backend(e)),
    };
    let mut out = Vec::new();
    for entry in t.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

fn commit(db: &redb::Database, ops: Vec<Op>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut tables = HashMap::new();
        for op in &ops {
            let table = match op {
                Op::Put(t, ..) | Op::Delete(t, _) => *t,
            };
            let t = match tables.entry(table) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(txn.open_table(table.definition()).map_err(backend)?),
            };
            match op {
                Op::Put(_, k, v) => {
                    t.insert(k.as_str(), v.as_slice()).map_err(backend)?;
                }
                Op::Delete(_, k) => {
                    t.remove(k.as_str()).map_err(backend)?;
                }
            }
        }
    }
    // Dropping `txn` on an error above aborts it: nothing of the batch is written.
    txn.commit().map_err(backend)
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| get(db, table, key))
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_db(|db| list(db, table))
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.with_db(|db| commit(db, ops))
    }
}

/// An in-memory store for unit tests; batches are atomic because they apply under one
/// lock and cannot fail halfway.
#[derive(Debug, Default)]
pub struct MemStore {
    tables: Mutex<HashMap<Table, BTreeMap<String, Vec<u8>>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Table, BTreeMap<String, Vec<u8>>>> {
        // A panic elsewhere cannot leave a half-applied batch (see `commit`), so the data
        // behind a poisoned lock is still consistent.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .get(&table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut tables = self.lock();
        for op in ops {
            match op {
                Op::Put(t, k, v) => {
                    tables.entry(t).or_default().insert(k, v);
                }
                Op::Delete(t, k) => {
                    if let Some(t) = tables.get_mut(&t) {
                        t.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A `Put` of `v` as JSON, the encoding of every table but `Meta`.
pub fn put_json<T: Serialize>(table: Table, key: &str, v: &T) -> Result<Op, StoreError> {
    let bytes = serde_json::to_vec(v).map_err(|source| StoreError::Encode {
        table,
        key: key.to_string(),
        source,
    })?;
    Ok(Op::Put(table, key.to_string(), bytes))
}

pub fn get_json<T: DeserializeOwned>(
    s: &dyn Store,
    table: Table,
    key: &str,
) -> Result<Option<T>, StoreError> {
    s.get(table, key)?
        .map(|bytes| decode(table, key, &bytes))
        .transpose()
}

/// Every value of `table`, in key order.
pub fn list_json<T: DeserializeOwned>(s: &dyn Store, table: Table) -> Result<Vec<T>, StoreError> {
    s.list(table)?
        .iter()
        .map(|(k, v)| decode(table, k, v))
        .collect()
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table,
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_round_trip() {
        conformance::exercise(&MemStore::new());
    }

    #[test]
    fn redb_store_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(dir.path()).expect("open");
        conformance::exercise(&s);
        assert_eq!(
            s.get(Table::Meta, SCHEMA_VERSION_KEY).expect("meta"),
            Some(SCHEMA_VERSION.to_string().into_bytes())
        );
    }
}
