//! The registry itself: the image index in the store, the blob files, imports committed
//! all or nothing, deletes by refcount, and blobs verified before they are served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::body::Bytes;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::archive::{extract, feed, sha256_file, sync_dir, ChannelReader, FeedError, UploadDir};
use super::names::normalize_name;
use super::oci::{digest_hex, plan_names, walk, IndexJson, Walk};
use super::releases::Releases;
use super::{ImageRecord, ImageSummary, RegistryError, MAX_IMPORT_BYTES, OCI_MANIFEST};
use crate::store::{self, Op, Store, Table};

/// The coordinator's image store. Shared by the HTTP handlers (like [`crate::security::auth::Tokens`],
/// it is not routed through the core, which never reads its table).
pub struct Registry {
    blobs: PathBuf,
    uploads: PathBuf,
    store: Arc<dyn Store>,
    max_import_bytes: u64,
    /// Records by name. A std mutex: never held across an await.
    images: Mutex<BTreeMap<String, ImageRecord>>,
    /// Serialises the commit of imports and deletes, which move and remove blobs by
    /// refcount. Taken on blocking threads only.
    commit: Mutex<()>,
    /// Blobs hashed since start, with the (length, mtime) they had then.
    verified: Mutex<HashMap<String, (u64, Option<SystemTime>)>>,
    /// Agent releases (`super::releases`), under `<data_dir>/releases`.
    releases: Arc<Releases>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before it can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Opens `<data_dir>/registry`, loads the index, and removes what an interrupted import
    /// or delete left: the upload directory and blobs no image needs.
    pub fn open(data_dir: &Path, store: Arc<dyn Store>) -> Result<Self, RegistryError> {
        let root = data_dir.join("registry");
        let blobs = root.join("blobs").join("sha256");
        let uploads = root.join("uploads");
        let _ = fs::remove_dir_all(&uploads);
        for d in [&blobs, &uploads] {
            fs::create_dir_all(d).map_err(RegistryError::io(format!("create {}", d.display())))?;
        }
        let store_for_releases = Arc::clone(&store);
        let mut images = BTreeMap::new();
        for rec in store::list_json::<ImageRecord>(store.as_ref(), Table::Images)? {
            images.insert(rec.name.clone(), rec);
        }
        let reg = Registry {
            blobs,
            uploads,
            store,
            max_import_bytes: MAX_IMPORT_BYTES,
            images: Mutex::new(images),
            commit: Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            releases: Arc::new(Releases::open(data_dir, store_for_releases)?),
        };
        reg.sweep()?;
        Ok(reg)
    }

    /// The agent release store beside the images.
    pub fn releases(&self) -> Arc<Releases> {
        Arc::clone(&self.releases)
    }

    /// The same registry with the release public key that release imports are checked
    /// against (`baton server --release-public-key-file`).
    pub fn with_release_key(self, key: Option<baton_proto::sign::VerifyingKey>) -> Self {
        self.releases.set_key(key);
        self
    }

    /// The same registry with another upload limit (tests).
    pub fn with_max_import_bytes(mut self, max: u64) -> Self {
        self.max_import_bytes = max;
        self
    }

    fn referenced(images: &BTreeMap<String, ImageRecord>) -> BTreeSet<String> {
        images.values().flat_map(|r| r.digests().cloned()).collect()
    }

    /// Deletes blob files no image needs (and temporary files).
    fn sweep(&self) -> Result<(), RegistryError> {
        let keep = Self::referenced(&lock(&self.images));
        let entries = fs::read_dir(&self.blobs)
            .map_err(RegistryError::io(format!("list {}", self.blobs.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                tracing::info!(blob = %name, "removing a blob no imported image needs");
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    pub(super) fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|h| self.blobs.join(h))
    }

    /// Every imported image, by name.
    pub fn list(&self) -> Vec<ImageSummary> {
        lock(&self.images)
            .values()
            .map(ImageSummary::from)
            .collect()
    }

    /// Blocking: imports the tar archive read from `reader`, all or nothing, and returns the
    /// images it added or replaced.
    pub fn import_reader(
        &self,
        reader: impl Read,
        name: Option<&str>,
    ) -> Result<Vec<ImageSummary>, RegistryError> {
        let upload = UploadDir::new(&self.uploads)?;
        let ex = extract(reader, &upload.0)?;
        let index = ex.index.ok_or(RegistryError::NoIndex)?;
        let index: IndexJson =
            serde_json::from_slice(&index).map_err(|e| RegistryError::invalid("index.json", e))?;
        let planned = plan_names(&index.manifests, name)?;
        let now = crate::model::api::now_rfc3339();
        let mut records = Vec::new();
        for (name, desc) in planned {
            let mut w = Walk::default();
            walk(&upload.0, &desc, 0, &mut w)?;
            let size = w
                .manifests
                .keys()
                .chain(w.blobs.keys())
                .filter_map(|d| digest_hex(d))
                .filter_map(|h| ex.blobs.get(h))
                .sum();
            records.push(ImageRecord {
                name,
                digest: desc.digest.clone(),
                media_type: w
                    .manifests
                    .get(&desc.digest)
                    .cloned()
                    .unwrap_or_else(|| OCI_MANIFEST.to_owned()),
                platforms: w.platforms.into_iter().collect(),
                manifests: w.manifests,
                blobs: w.blobs,
                size,
                creation_timestamp: now.clone(),
            });
        }
        self.commit_import(&upload.0, records)
    }

    /// Moves the records' blobs from the upload directory into the store, commits the
    /// records, and drops blobs only replaced images needed.
    fn commit_import(
        &self,
        dir: &Path,
        records: Vec<ImageRecord>,
    ) -> Result<Vec<ImageSummary>, RegistryError> {
        let _one = lock(&self.commit);
        let needed: BTreeSet<&String> = records.iter().flat_map(|r| r.digests()).collect();
        for d in &needed {
            let Some(hex) = digest_hex(d) else { continue };
            let (from, to) = (dir.join(hex), self.blobs.join(hex));
            fs::rename(&from, &to).map_err(RegistryError::io(format!(
                "move {} to {}",
                from.display(),
                to.display()
            )))?;
            lock(&self.verified).remove(d.as_str());
        }
        sync_dir(&self.blobs)?;
        let ops = records
            .iter()
            .map(|r| store::put_json(Table::Images, &r.name, r))
            .collect::<Result<Vec<Op>, _>>()?;
        if let Err(e) = self.store.commit(ops) {
            // Nothing refers to the moved blobs: remove those no image had before.
            let keep = Self::referenced(&lock(&self.images));
            for d in needed.iter().filter(|d| !keep.contains(d.as_str())) {
                if let Some(p) = self.blob_path(d) {
                    let _ = fs::remove_file(p);
                }
            }
            return Err(e.into());
        }
        let mut images = lock(&self.images);
        let mut replaced = Vec::new();
        for r in &records {
            tracing::info!(image = %r.name, digest = %r.digest, size = r.size, "image imported");
            if let Some(old) = images.insert(r.name.clone(), r.clone()) {
                replaced.push(old);
            }
        }
        self.drop_unreferenced(&images, replaced.iter());
        Ok(records.iter().map(ImageSummary::from).collect())
    }

    /// Deletes the blobs of `gone` that no image in `images` needs any more.
    fn drop_unreferenced<'a>(
        &self,
        images: &BTreeMap<String, ImageRecord>,
        gone: impl Iterator<Item = &'a ImageRecord>,
    ) {
        let keep = Self::referenced(images);
        for d in gone.flat_map(|r| r.digests()) {
            if keep.contains(d) {
                continue;
            }
            if let Some(p) = self.blob_path(d) {
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(blob = %d, error = %e, "cannot remove an unused blob"),
                }
            }
            lock(&self.verified).remove(d);
        }
    }

    /// Blocking: removes the image `name` (`repository:tag`, normalized like imports) and
    /// the blobs no other image needs.
    pub fn delete(&self, name: &str) -> Result<ImageSummary, RegistryError> {
        let (repo, tag) = normalize_name(name)?;
        let key = format!("{repo}:{}", tag.as_deref().unwrap_or("latest"));
        let _one = lock(&self.commit);
        let Some(rec) = lock(&self.images).get(&key).cloned() else {
            return Err(RegistryError::NotFound(name.to_owned()));
        };
        self.store
            .commit(vec![Op::Delete(Table::Images, key.clone())])?;
        let mut images = lock(&self.images);
        images.remove(&key);
        self.drop_unreferenced(&images, std::iter::once(&rec));
        tracing::info!(image = %key, "image deleted");
        Ok(ImageSummary::from(&rec))
    }

    /// Imports an archive arriving as a stream of chunks (an HTTP body), without holding
    /// it in memory: the chunks feed [`Registry::import_reader`] on a blocking thread
    /// ([`feed`]: an import refused early still reads the body, so the client gets the
    /// refusal as an answer).
    pub async fn import_stream<S, E>(
        self: Arc<Self>,
        body: S,
        name: Option<String>,
    ) -> Result<Vec<ImageSummary>, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(16);
        let reg = Arc::clone(&self);
        let task = tokio::task::spawn_blocking(move || {
            reg.import_reader(
                ChannelReader {
                    rx,
                    chunk: Bytes::new(),
                },
                name.as_deref(),
            )
        });
        let fed = feed(body, tx, self.max_import_bytes).await;
        let result = task
            .await
            .map_err(|e| RegistryError::Upload(format!("import task failed: {e}")))?;
        match fed {
            Err(FeedError::TooLarge { limit }) => return Err(RegistryError::TooLarge { limit }),
            Err(FeedError::Upload(msg)) => return Err(RegistryError::Upload(msg)),
            Ok(()) => {}
        }
        result
    }

    /// The records of `repo`.
    pub(super) fn repo_images(&self, repo: &str) -> Vec<ImageRecord> {
        lock(&self.images)
            .values()
            .filter(|r| r.repository() == repo)
            .cloned()
            .collect()
    }

    /// Blocking: the path and length of a blob, hashed first unless it was since it last
    /// changed.
    pub(super) fn verified_blob(&self, digest: &str) -> Result<(PathBuf, u64), RegistryError> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| RegistryError::NotFound(digest.to_owned()))?;
        let meta = fs::metadata(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RegistryError::NotFound(digest.to_owned())
            } else {
                RegistryError::io(format!("stat {}", path.display()))(e)
            }
        })?;
        let stamp = (meta.len(), meta.modified().ok());
        if lock(&self.verified).get(digest) == Some(&stamp) {
            return Ok((path, meta.len()));
        }
        let actual =
            sha256_file(&path).map_err(RegistryError::io(format!("read {}", path.display())))?;
        if actual != digest {
            tracing::error!(blob = %digest, %actual, "blob on disk does not match its digest; not serving it");
            return Err(RegistryError::CorruptOnDisk(digest.to_owned()));
        }
        lock(&self.verified).insert(digest.to_owned(), stamp);
        Ok((path, meta.len()))
    }

    /// Blocking: a manifest's bytes, hashed on every read (they are small).
    pub(super) fn verified_manifest(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| RegistryError::NotFound(digest.to_owned()))?;
        let bytes =
            fs::read(&path).map_err(RegistryError::io(format!("read {}", path.display())))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            tracing::error!(manifest = %digest, %actual, "manifest on disk does not match its digest; not serving it");
            return Err(RegistryError::CorruptOnDisk(digest.to_owned()));
        }
        Ok(bytes)
    }
}
