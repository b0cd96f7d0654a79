//! Agent releases: signed agent binaries the coordinator keeps for its nodes to download
//! (issue 13), content-addressed like the image blobs.
//!
//! **Storage.** A binary is the file `<data-dir>/releases/sha256/<hex>`; its index row is a
//! [`ReleaseRecord`] in [`Table::Releases`], keyed `sha256:<hex>`. At most one release per
//! (version, target): that pair is how a rollout names what a node should run.
//!
//! **Import is all or nothing, and idempotent.** The signature is checked first, against
//! the release public key the server was given (`baton server --release-public-key-file`),
//! over the metadata `baton release sign` wrote; without a key nothing is imported. Then
//! the body is streamed into a private upload directory, hashed and counted as it arrives,
//! synced, and checked against the signed size and sha256. Only then is it renamed into
//! `sha256/` (directory synced) and its row committed; a failed commit removes the file.
//! A refused or interrupted upload leaves nothing: its upload directory goes with it, and
//! [`Releases::open`] removes files no row names. Importing the same release again
//! answers the row already there (the bytes sent are checked all the same).
//!
//! **Serving.** Any API token reads a binary (`ReleaseBinary`, with `Range: bytes=N-` so a
//! node resumes); it is hashed once per process (again if its file changes) before it is
//! served, like image blobs. Devices verify it too, against the key they pinned: the
//! coordinator is not trusted with the release key, only with delivery.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::StatusCode;
use baton_proto::release::{self, ReleaseError};
use baton_proto::sign::VerifyingKey;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::archive::{feed, sha256_file, ChannelReader, FeedError, UploadDir};
use crate::contract::releases::{parse_public_key, InvalidRelease, ReleaseSummary, SignedRelease};
use crate::model::release::{ReleaseIndex, ReleaseRecord, RolloutVersions};
use crate::store::{self, Op, Store, StoreError, Table};

/// The largest agent binary accepted (a bound against a runaway upload).
pub const MAX_RELEASE_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseStoreError {
    #[error("no release key configured (baton server --release-public-key-file): releases cannot be imported")]
    NoKey,
    #[error("release {version} for {target} refused: {source}")]
    Refused {
        version: String,
        target: String,
        #[source]
        source: ReleaseError,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidRelease),
    #[error("release {version} for {target} is already imported as {digest}: delete it first")]
    Conflict {
        version: String,
        target: String,
        digest: String,
    },
    #[error("release {0} not found")]
    NotFound(String),
    #[error(
        "release {version} is named by rollout {rollout:?}: delete or finish the rollout first"
    )]
    InUse { version: String, rollout: String },
    #[error("invalid release public key in {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the upload is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted: {0}")]
    Upload(String),
    #[error("release {0} on the coordinator's disk does not match its digest: delete and import it again")]
    CorruptOnDisk(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ReleaseStoreError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ReleaseStoreError {
        let context = context.into();
        move |source| ReleaseStoreError::Io { context, source }
    }

    /// The HTTP status of the API answer.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ReleaseStoreError::NotFound(_) => StatusCode::NOT_FOUND,
            ReleaseStoreError::Conflict { .. } | ReleaseStoreError::InUse { .. } => {
                StatusCode::CONFLICT
            }
            ReleaseStoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReleaseStoreError::Store(_)
            | ReleaseStoreError::Io { .. }
            | ReleaseStoreError::Key { .. }
            | ReleaseStoreError::CorruptOnDisk(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a `release.pub` file (`--release-public-key-file`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, ReleaseStoreError> {
    let text = fs::read_to_string(path).map_err(|e| ReleaseStoreError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse_public_key(&text).ok_or_else(|| ReleaseStoreError::Key {
        path: path.to_owned(),
        reason: "expected base64 of a 32-byte Ed25519 public key (release.pub)".into(),
    })
}

impl From<&ReleaseRecord> for ReleaseSummary {
    fn from(r: &ReleaseRecord) -> Self {
        ReleaseSummary {
            version: r.version.clone(),
            target: r.target.clone(),
            protocol: r.protocol,
            size: r.size,
            digest: r.digest(),
            imported_at: r.imported_at.clone(),
        }
    }
}

/// Copies `reader` to `out` (the file `path`), hashing and counting, and refuses as soon
/// as more bytes arrive than `wire` was signed for (the rest is not read).
fn receive(
    mut reader: impl Read,
    wire: &baton_proto::Release,
    out: &mut impl Write,
    path: &Path,
) -> Result<(u64, [u8; 32]), ReleaseStoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReleaseStoreError::Upload(e.to_string())),
        };
        n += k as u64;
        if n > wire.size {
            return Err(ReleaseStoreError::Refused {
                version: wire.version.to_string(),
                target: wire.target.to_string(),
                source: ReleaseError::Size {
                    got: n,
                    want: wire.size,
                },
            });
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(ReleaseStoreError::io(format!("write {}", path.display())))?;
    }
    Ok((n, hasher.finalize().into()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before it can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The coordinator's release store, beside the image [`super::Registry`] that holds it.
pub struct Releases {
    files: PathBuf,
    uploads: PathBuf,
    store: Arc<dyn Store>,
    /// Set once at start (`baton server --release-public-key-file`).
    key: std::sync::RwLock<Option<VerifyingKey>>,
    max_bytes: u64,
    /// Records by digest. A std mutex: never held across an await.
    records: Mutex<BTreeMap<String, ReleaseRecord>>,
    /// Serialises imports' and deletes' commits. Taken on blocking threads only.
    commit: Mutex<()>,
    /// Files hashed since start, with the (length, mtime) they had then.
    verified: Mutex<HashMap<String, (u64, Option<SystemTime>)>>,
    /// Which version each rollout installs, as the core (their owner) shares it.
    in_use: RolloutVersions,
}

impl Releases {
    /// Opens `<data_dir>/releases`, loads the index, and removes what an interrupted
    /// import or delete left: the upload directory and files no row names.
    pub fn open(data_dir: &Path, store: Arc<dyn Store>) -> Result<Self, ReleaseStoreError> {
        let root = data_dir.join("releases");
        let files = root.join("sha256");
        let uploads = root.join("uploads");
        let _ = fs::remove_dir_all(&uploads);
        for d in [&files, &uploads] {
            fs::create_dir_all(d)
                .map_err(ReleaseStoreError::io(format!("create {}", d.display())))?;
        }
        let mut records = BTreeMap::new();
        for rec in store::list_json::<ReleaseRecord>(store.as_ref(), Table::Releases)? {
            records.insert(rec.digest(), rec);
        }
        let entries = fs::read_dir(&files)
            .map_err(ReleaseStoreError::io(format!("list {}", files.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !records.contains_key(&format!("sha256:{name}")) {
                tracing::info!(file = %name, "removing a release file no release names");
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Releases {
            files,
            uploads,
            store,
            key: std::sync::RwLock::new(None),
            max_bytes: MAX_RELEASE_BYTES,
            records: Mutex::new(records),
            commit: Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            in_use: RolloutVersions::default(),
        })
    }

    /// The view of rollouts' versions that deletes check; the same one goes to the core.
    pub fn rollout_versions(&self) -> RolloutVersions {
        self.in_use.clone()
    }

    /// Sets the release public key imports are checked against.
    pub fn set_key(&self, key: Option<VerifyingKey>) {
        *self.key.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The release public key imports are checked against, if any.
    pub fn key(&self) -> Option<VerifyingKey> {
        *self.key.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every imported release, by version then target.
    pub fn list(&self) -> Vec<ReleaseSummary> {
        let mut v: Vec<ReleaseSummary> = lock(&self.records)
            .values()
            .map(ReleaseSummary::from)
            .collect();
        v.sort_by(|a, b| (&a.version, &a.target).cmp(&(&b.version, &b.target)));
        v
    }

    /// The record named `digest` (`sha256:<hex>`).
    pub fn get(&self, digest: &str) -> Option<ReleaseRecord> {
        lock(&self.records).get(digest).cloned()
    }

    fn path_of(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.files.join(hex))
    }

    /// Checks the metadata and its signature; with the row already there if this release
    /// is imported.
    fn admit(
        &self,
        meta: &SignedRelease,
    ) -> Result<(baton_proto::Release, Option<ReleaseSummary>), ReleaseStoreError> {
        let key = self.key().ok_or(ReleaseStoreError::NoKey)?;
        let wire = meta.to_wire()?;
        release::verify(&wire, &key).map_err(|source| ReleaseStoreError::Refused {
            version: meta.version.clone(),
            target: meta.target.clone(),
            source,
        })?;
        if wire.size > self.max_bytes {
            return Err(ReleaseStoreError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let digest = release::digest_string(&wire.sha256);
        let records = lock(&self.records);
        if let Some(r) = records.get(&digest) {
            if r.version == meta.version && r.target == meta.target {
                return Ok((wire, Some(ReleaseSummary::from(r))));
            }
        }
        if let Some(r) = records
            .values()
            .find(|r| r.version == meta.version && r.target == meta.target)
            .or_else(|| records.get(&digest))
        {
            return Err(ReleaseStoreError::Conflict {
                version: r.version.clone(),
                target: r.target.clone(),
                digest: r.digest(),
            });
        }
        Ok((wire, None))
    }

    /// Blocking: imports the binary read from `reader`, signed as `meta` says, all or
    /// nothing. A release already imported answers its row, once the bytes sent are
    /// checked too (nothing is written): an operator whose copy is damaged hears so.
    pub fn import_reader(
        &self,
        meta: &SignedRelease,
        reader: impl Read,
    ) -> Result<ReleaseSummary, ReleaseStoreError> {
        let (wire, existing) = self.admit(meta)?;
        let refused = |source| ReleaseStoreError::Refused {
            version: meta.version.clone(),
            target: meta.target.clone(),
            source,
        };
        if let Some(existing) = existing {
            let (n, sha) = receive(reader, &wire, &mut io::sink(), Path::new("-"))?;
            release::check_content(&wire, n, &sha).map_err(refused)?;
            return Ok(existing);
        }
        let upload =
            UploadDir::new(&self.uploads).map_err(|e| ReleaseStoreError::Upload(e.to_string()))?;
        let tmp = upload.0.join("binary");
        let mut f = fs::File::create(&tmp)
            .map_err(ReleaseStoreError::io(format!("create {}", tmp.display())))?;
        let (n, sha) = receive(reader, &wire, &mut f, &tmp)?;
        release::check_content(&wire, n, &sha).map_err(refused)?;
        f.sync_all()
            .map_err(ReleaseStoreError::io(format!("sync {}", tmp.display())))?;
        drop(f);
        let now = crate::model::api::now_rfc3339();
        let record = ReleaseRecord {
            version: meta.version.clone(),
            target: meta.target.clone(),
            protocol: meta.protocol,
            size: n,
            sha256: hex::encode(sha),
            signature: meta.signature.clone(),
            imported_at: now,
        };
        self.commit_import(&tmp, record)
    }

    fn commit_import(
        &self,
        tmp: &Path,
        record: ReleaseRecord,
    ) -> Result<ReleaseSummary, ReleaseStoreError> {
        let _one = lock(&self.commit);
        let digest = record.digest();
        // Checked again under the commit lock: another import may have won the race.
        if let Some(r) = lock(&self.records).get(&digest) {
            return Ok(ReleaseSummary::from(r));
        }
        let to = self.files.join(&record.sha256);
        fs::rename(tmp, &to).map_err(ReleaseStoreError::io(format!(
            "move {} to {}",
            tmp.display(),
            to.display()
        )))?;
        crate::store::durable::sync_dir(&self.files).map_err(ReleaseStoreError::io(format!(
            "sync {}",
            self.files.display()
        )))?;
        let op = store::put_json(Table::Releases, &digest, &record)?;
        if let Err(e) = self.store.commit(vec![op]) {
            let _ = fs::remove_file(&to);
            return Err(e.into());
        }
        lock(&self.verified).remove(&digest);
        tracing::info!(version = %record.version, target = %record.target, %digest, size = record.size, "release imported");
        let summary = ReleaseSummary::from(&record);
        lock(&self.records).insert(digest, record);
        Ok(summary)
    }

    /// Imports a binary arriving as a stream of chunks (an HTTP body), without holding it
    /// in memory: the chunks feed [`Releases::import_reader`] on a blocking thread.
    pub async fn import_stream<S, E>(
        self: Arc<Self>,
        body: S,
        meta: SignedRelease,
    ) -> Result<ReleaseSummary, ReleaseStoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(16);
        let this = Arc::clone(&self);
        let task = tokio::task::spawn_blocking(move || {
            this.import_reader(
                &meta,
                ChannelReader {
                    rx,
                    chunk: Bytes::new(),
                },
            )
        });
        // The signed size bounds the body (plus slack, so that "too long" is reported as
        // the size mismatch it is); the store's limit bounds the signed size.
        let fed = feed(body, tx, self.max_bytes + 1).await;
        let result = task
            .await
            .map_err(|e| ReleaseStoreError::Upload(format!("import task failed: {e}")))?;
        // A refusal of the release says more than the broken body it caused.
        if let Err(e @ (ReleaseStoreError::Refused { .. } | ReleaseStoreError::NoKey)) = result {
            return Err(e);
        }
        match fed {
            Err(FeedError::TooLarge { limit }) => Err(ReleaseStoreError::TooLarge { limit }),
            Err(FeedError::Upload(msg)) => Err(ReleaseStoreError::Upload(msg)),
            Ok(()) => result,
        }
    }

    /// Blocking: removes the release `digest` (row, then file). Refused while a rollout
    /// names its version.
    pub fn delete(&self, digest: &str) -> Result<ReleaseSummary, ReleaseStoreError> {
        let _one = lock(&self.commit);
        let rec = self
            .get(digest)
            .ok_or_else(|| ReleaseStoreError::NotFound(digest.to_owned()))?;
        if let Some(rollout) = self.in_use.naming(&rec.version) {
            return Err(ReleaseStoreError::InUse {
                version: rec.version,
                rollout,
            });
        }
        self.store
            .commit(vec![Op::Delete(Table::Releases, digest.to_owned())])?;
        lock(&self.records).remove(digest);
        lock(&self.verified).remove(digest);
        if let Some(p) = self.path_of(digest) {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Swept at the next start: no row names it.
                Err(e) => {
                    tracing::warn!(release = %digest, error = %e, "cannot remove a deleted release's file")
                }
            }
        }
        tracing::info!(version = %rec.version, target = %rec.target, %digest, "release deleted");
        Ok(ReleaseSummary::from(&rec))
    }

    /// Blocking: the path and length of a release's file, hashed first unless it was since
    /// it last changed.
    pub fn verified_file(&self, digest: &str) -> Result<(PathBuf, u64), ReleaseStoreError> {
        if self.get(digest).is_none() {
            return Err(ReleaseStoreError::NotFound(digest.to_owned()));
        }
        let path = self
            .path_of(digest)
            .ok_or_else(|| ReleaseStoreError::NotFound(digest.to_owned()))?;
        let meta = fs::metadata(&path)
            .map_err(ReleaseStoreError::io(format!("stat {}", path.display())))?;
        let stamp = (meta.len(), meta.modified().ok());
        if lock(&self.verified).get(digest) == Some(&stamp) {
            return Ok((path, meta.len()));
        }
        let actual = sha256_file(&path)
            .map_err(ReleaseStoreError::io(format!("read {}", path.display())))?;
        if actual != digest {
            tracing::error!(release = %digest, %actual, "release file does not match its digest; not serving it");
            return Err(ReleaseStoreError::CorruptOnDisk(digest.to_owned()));
        }
        lock(&self.verified).insert(digest.to_owned(), stamp);
        Ok((path, meta.len()))
    }
}

#[cfg(test)]
mod tests;

impl ReleaseIndex for Releases {
    fn releases(&self) -> Vec<ReleaseRecord> {
        lock(&self.records).values().cloned().collect()
    }
}
