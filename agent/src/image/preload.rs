//! Preloading images at start (`--preload-images DIR`), like k3s's `agent/images/`: every
//! OCI image archive (`*.tar`, a tar of an OCI image layout) and every OCI layout
//! directory in `DIR` is imported into the store, so that a pod whose image is there runs
//! with `IfNotPresent` (or `Never`) without any registry.
//!
//! An image is known by the full name in its `index.json` entry (`io.containerd.image.name`,
//! else `org.opencontainers.image.ref.name` when that is a full reference such as
//! `registry.lan/app:1`; a bare tag names nothing and the entry is skipped with a warning),
//! and must match the pod's image reference as written (`registry.lan/app:1`).
//!
//! Nothing is trusted for being local: the path from `index.json` to the rootfs is checked
//! like a pull (every manifest and config hashed against its digest and size, every layer
//! blob hashed while it is copied out of the archive, every unpacked layer checked against
//! the config's `diff_id`), and a broken archive fails alone: the others still load and
//! the agent starts. Only the host's platform is unpacked from a multi-platform index.
//! Tar archives are read in place (one pass to find the members, then seeks), never
//! extracted whole.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::manifest::{ImageIndexEntry, OciImageIndex};
use oci_client::Reference;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::gc::PullGuard;
use super::layout::{digest_hex, sha256_bytes, STORE_FILE};
use super::local::{check_config, image_config, parse_config, parse_manifest, ref_key, RefRecord};
use super::platform::{describe_entries, select_manifest};
use super::pull::Probe;
use super::{blocking, unpack, ImageConfig, ImageError, ImageStore, Platform};
use crate::durable::{self, temp_sibling};

/// Small JSON documents (index, manifests, configs) are refused beyond this.
const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;

/// What [`ImageStore::preload_dir`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PreloadReport {
    /// References now in the store.
    pub imported: Vec<String>,
    /// Archives or layouts that failed, with why.
    pub failed: Vec<(PathBuf, String)>,
}

/// Where an OCI layout's files are: a directory, or members of a tar archive.
enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        /// `index.json`'s content.
        index: Vec<u8>,
        /// Blob hex -> (offset of its data in the archive, size).
        blobs: HashMap<String, (u64, u64)>,
    },
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Io {
        context: format!("preload {}", path.display()),
        source: Arc::new(io::Error::new(
            io::ErrorKind::InvalidData,
            reason.to_string(),
        )),
    }
}

impl Source {
    fn open(path: &Path) -> Result<Source, ImageError> {
        if path.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let f = fs::File::open(path).map_err(ImageError::io(format!("open {}", path.display())))?;
        let mut archive = tar::Archive::new(f);
        let mut index = None;
        let mut blobs = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|e| bad(path, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(path, format!("unreadable tar: {e}")))?;
            let name: Vec<String> = entry
                .path()
                .map_err(|e| bad(path, e))?
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            let size = entry.size();
            match name.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["index.json"] => {
                    if size > MAX_JSON_BYTES {
                        return Err(bad(path, "index.json is too large"));
                    }
                    let mut buf = Vec::new();
                    entry
                        .read_to_end(&mut buf)
                        .map_err(|e| bad(path, format!("index.json: {e}")))?;
                    index = Some(buf);
                }
                ["blobs", "sha256", hex] if entry.header().entry_type().is_file() => {
                    blobs.insert(hex.to_owned(), (entry.raw_file_position(), size));
                }
                _ => {}
            }
        }
        let index = index.ok_or_else(|| bad(path, "no index.json: not an OCI image archive"))?;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            index,
            blobs,
        })
    }

    fn path(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Tar { path: p, .. } => p,
        }
    }

    fn index(&self) -> Result<Vec<u8>, ImageError> {
        match self {
            Source::Dir(p) => {
                let f = p.join("index.json");
                fs::read(&f).map_err(ImageError::io(format!("read {}", f.display())))
            }
            Source::Tar { index, .. } => Ok(index.clone()),
        }
    }

    /// A reader over blob `digest` and its size on disk.
    fn open_blob(&self, digest: &str) -> Result<(Box<dyn Read>, u64), ImageError> {
        let hex = digest_hex(digest)?;
        let missing = || bad(self.path(), format!("blob {digest} is missing"));
        match self {
            Source::Dir(p) => {
                let f = p.join("blobs").join("sha256").join(hex);
                let file = fs::File::open(&f).map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        missing()
                    } else {
                        ImageError::io(format!("open {}", f.display()))(e)
                    }
                })?;
                let len = file
                    .metadata()
                    .map_err(ImageError::io(format!("stat {}", f.display())))?
                    .len();
                Ok((Box::new(file), len))
            }
            Source::Tar { path, blobs, .. } => {
                let (offset, size) = *blobs.get(hex).ok_or_else(missing)?;
                let mut file = fs::File::open(path)
                    .map_err(ImageError::io(format!("open {}", path.display())))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(ImageError::io(format!("seek {}", path.display())))?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// A small blob's bytes, checked against its digest and announced size.
    fn read_small(&self, digest: &str, size: i64) -> Result<Vec<u8>, ImageError> {
        let (mut r, len) = self.open_blob(digest)?;
        if len > MAX_JSON_BYTES || u64::try_from(size).ok() != Some(len) {
            return Err(bad(
                self.path(),
                format!("blob {digest} has {len} bytes, its descriptor says {size}"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.read_to_end(&mut buf).map_err(ImageError::io(format!(
            "read {digest} from {}",
            self.path().display()
        )))?;
        let actual = sha256_bytes(&buf);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(buf)
    }

    /// Copies blob `digest` to `dest` (through a temporary sibling, synced, renamed durably
    /// only if its digest and size match).
    fn copy_blob(&self, digest: &str, size: i64, dest: &Path) -> Result<(), ImageError> {
        let (mut r, _) = self.open_blob(digest)?;
        let tmp = temp_sibling(dest);
        let result = (|| {
            let mut f = fs::File::create(&tmp)
                .map_err(ImageError::io(format!("create {}", tmp.display())))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            loop {
                let k = r.read(&mut buf).map_err(ImageError::io(format!(
                    "read {digest} from {}",
                    self.path().display()
                )))?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                f.write_all(&buf[..k])
                    .map_err(ImageError::io(format!("write {}", tmp.display())))?;
                n += k as u64;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != digest {
                return Err(ImageError::DigestMismatch {
                    expected: digest.to_owned(),
                    actual,
                });
            }
            if u64::try_from(size).ok() != Some(n) {
                return Err(ImageError::DigestMismatch {
                    expected: digest.to_owned(),
                    actual: format!("{n} bytes instead of {size}"),
                });
            }
            f.sync_all()
                .map_err(ImageError::io(format!("sync {}", tmp.display())))?;
            durable::rename(&tmp, dest).map_err(ImageError::io(format!("rename {}", tmp.display())))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The full name an index.json entry gives its image, if it gives one.
fn entry_name(e: &ImageIndexEntry) -> Option<String> {
    let a = e.annotations.as_ref()?;
    if let Some(n) = a.get("io.containerd.image.name").filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    a.get("org.opencontainers.image.ref.name")
        .filter(|n| n.contains('/') || n.contains(':'))
        .cloned()
}

fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| match p.media_type.as_deref() {
        Some(t) => t.contains("index") || t.contains("manifest.list"),
        None => p.manifests.is_some(),
    })
}

/// The platform's image manifest for an index.json entry: `(digest, bytes)`, verified.
fn resolve(
    src: &Source,
    reference: &Reference,
    entry: &ImageIndexEntry,
    platform: &Platform,
) -> Result<(String, Vec<u8>), ImageError> {
    let (mut digest, mut size) = (entry.digest.clone(), entry.size);
    for _ in 0..3 {
        let bytes = src.read_small(&digest, size)?;
        if !is_index(&bytes) {
            return Ok((digest, bytes));
        }
        let index: OciImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidManifest {
                reference: reference.whole(),
                reason: format!("bad index: {e}"),
            })?;
        let pick = select_manifest(&index.manifests, platform).ok_or_else(|| {
            ImageError::NoMatchingPlatform {
                reference: reference.whole(),
                platform: platform.clone(),
                available: describe_entries(&index.manifests).join(", "),
            }
        })?;
        (digest, size) = (pick.digest.clone(), pick.size);
    }
    Err(ImageError::InvalidManifest {
        reference: reference.whole(),
        reason: "indexes nested too deep".into(),
    })
}

impl ImageStore {
    /// Imports every `*.tar` OCI archive and every OCI layout directory in `dir`, in name
    /// order. One that fails is logged and reported, and the rest still load.
    pub async fn preload_dir(&self, dir: &Path) -> Result<PreloadReport, ImageError> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(ImageError::io(format!("list {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                (p.is_file() && p.extension().is_some_and(|x| x == "tar"))
                    || (p.is_dir() && p.join("index.json").is_file())
            })
            .collect();
        paths.sort();
        let mut report = PreloadReport::default();
        for p in paths {
            match self.preload(&p).await {
                Ok(names) => report.imported.extend(names),
                Err(e) => {
                    warn!(path = %p.display(), error = %e, "cannot preload images");
                    report.failed.push((p, e.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Imports the images of one OCI archive or layout directory; returns their references.
    pub async fn preload(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let p = path.to_path_buf();
        let src = Arc::new(blocking(move || Source::open(&p)).await??);
        let index: OciImageIndex = serde_json::from_slice(&src.index()?)
            .map_err(|e| bad(path, format!("index.json: {e}")))?;
        let mut names = Vec::new();
        for entry in &index.manifests {
            let Some(name) = entry_name(entry) else {
                warn!(path = %path.display(), digest = %entry.digest, "skipping an image with no full name (set org.opencontainers.image.ref.name to e.g. registry.lan/app:1)");
                continue;
            };
            let reference: Reference =
                name.parse()
                    .map_err(|e: oci_client::ParseError| ImageError::InvalidReference {
                        reference: name.clone(),
                        reason: e.to_string(),
                    })?;
            self.preload_image(&src, &reference, entry).await?;
            info!(image = %reference.whole(), from = %path.display(), "image preloaded");
            names.push(reference.whole());
        }
        Ok(names)
    }

    async fn preload_image(
        &self,
        src: &Arc<Source>,
        reference: &Reference,
        entry: &ImageIndexEntry,
    ) -> Result<ImageConfig, ImageError> {
        let inner = &self.inner;
        let key = ref_key(reference, &inner.platform);
        let mut guard = PullGuard::new(&inner.keep, &key);
        let (s, r, e, pl) = (
            Arc::clone(src),
            reference.clone(),
            entry.clone(),
            inner.platform.clone(),
        );
        let (manifest_digest, manifest_bytes) =
            blocking(move || resolve(&s, &r, &e, &pl)).await??;
        let manifest = parse_manifest(reference, &manifest_bytes)?;
        guard.protect(
            [manifest_digest.clone(), manifest.config.digest.clone()]
                .into_iter()
                .chain(manifest.layers.iter().map(|l| l.digest.clone())),
        );
        let (s, cd, cs) = (
            Arc::clone(src),
            manifest.config.digest.clone(),
            manifest.config.size,
        );
        let config_bytes = blocking(move || s.read_small(&cd, cs)).await??;
        let config = parse_config(reference, &config_bytes)?;
        check_config(reference, &inner.platform, &config, manifest.layers.len())?;
        let layout = inner.layout.clone();
        let (md, mb, cd) = (
            manifest_digest.clone(),
            manifest_bytes,
            manifest.config.digest.clone(),
        );
        blocking(move || {
            layout.store_verified(&md, &mb)?;
            layout.store_verified(&cd, &config_bytes)
        })
        .await??;

        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let hex = digest_hex(&layer.digest)?.to_owned();
            let _lock = inner.layer_locks.lock(&hex).await;
            let dir = inner.layout.layer(&hex);
            if dir.is_dir() {
                continue;
            }
            if !unpack::supported_media_type(&layer.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    reference: reference.whole(),
                    media_type: layer.media_type.clone(),
                });
            }
            let blob = inner.layout.blob(&hex);
            let (s, digest, size, diff_id) = (
                Arc::clone(src),
                layer.digest.clone(),
                layer.size,
                diff_id.clone(),
            );
            let keep_blob = inner.keep_layer_blobs;
            let metered = Arc::clone(inner);
            blocking(move || {
                s.copy_blob(&digest, size, &blob)?;
                let unpacked = metered.unpack_metered(&blob, &dir, &digest, &diff_id);
                if !keep_blob || unpacked.is_err() {
                    let _ = fs::remove_file(&blob);
                }
                unpacked
            })
            .await??;
        }

        let record = RefRecord {
            reference: reference.whole(),
            platform: inner.platform.clone(),
            manifest_digest: manifest_digest.clone(),
            config_digest: manifest.config.digest.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ImageError::Io {
            context: "encode ref record".into(),
            source: Arc::new(io::Error::other(e)),
        })?;
        let path = inner.layout.ref_file(&key);
        blocking(move || {
            durable::write(&path, &json, STORE_FILE)
                .map_err(ImageError::io(format!("write {}", path.display())))
        })
        .await??;
        drop(guard);
        Ok(image_config(reference, &manifest_digest, &manifest, config))
    }
}

#[cfg(test)]
mod tests;
