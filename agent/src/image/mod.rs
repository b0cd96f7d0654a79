//! Image store: pulls, verifies and unpacks OCI images into a content-addressed cache, and
//! builds containers' root filesystems from it with overlayfs.
//!
//! Layout under the store's root (one [`ImageStore`] per root):
//!
//! ```text
//! blobs/sha256/<hex>          manifests, configs and compressed layers, verified
//! blobs/sha256/<hex>.partial  a download in progress; never read, swept at start
//! layers/sha256/<hex>/        a layer unpacked for overlayfs (whiteouts as 0:0 char devices)
//! refs/<sha256(ref|platform)>.json   reference -> manifest digest (+ config digest)
//! ```
//!
//! Invariants, so that a killed agent or a flipped bit on an SD card never yields a wrong
//! rootfs:
//! - Every blob is hashed against its digest before it is used, and a blob that fails is
//!   deleted (then fetched again), never used. Downloads go to `.partial` and are renamed
//!   only once their digest and size check out.
//! - A layer directory is complete if it exists: it is unpacked into a temporary sibling,
//!   checked against the config's `diff_id`, synced, and renamed into place.
//! - A ref file is written last, after everything it points to is in place.
//!
//! Deduplication: concurrent [`ImageStore::ensure`] calls for one reference share one pull
//! (a shared future), and each blob and layer has its own async lock, so a layer shared
//! between images is downloaded and unpacked once even when both images are pulled at once.

mod flight;
mod layout;
mod overlay;
mod platform;
mod pull;
mod unpack;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use baton_proto::PullPolicy;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument, warn};

pub use platform::Platform;

use flight::KeyedLocks;
use layout::{digest_hex, Layout};

/// How many layers of one image are fetched and unpacked at once. Small on purpose: the
/// boards we target have 2-4 cores and one SD card, and a slow link is the usual bottleneck.
const LAYER_CONCURRENCY: usize = 2;

/// Where the store lives and how it reaches registries.
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    pub root: PathBuf,
    /// Registries (`host:port`, as in image references) that are pulled over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The platform to pick from multi-arch images, normally [`Platform::host`].
    pub platform: Platform,
}

/// What the node loop needs from an image to run a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The reference as the caller gave it.
    pub reference: String,
    /// Digest of the platform-specific image manifest (not of the index).
    pub manifest_digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Empty when the image does not set one.
    pub working_dir: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
}

/// Counters of network traffic since the store was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageStoreStats {
    /// Manifest (and index) GETs.
    pub manifest_fetches: u64,
    pub manifest_bytes: u64,
    /// Blob GETs started (configs and layers), including ones that failed verification.
    pub blob_fetches: u64,
    /// Blob bytes received.
    pub blob_bytes: u64,
    /// Layers unpacked into `layers/`.
    pub layers_unpacked: u64,
}

/// Errors of the image store. The Display strings reach users (`baton get pods` shows
/// `ImagePullFailed: <this>`), so they name the image or registry and say what went wrong.
///
/// The enum is `Clone` because one pull's result is handed to every caller that joined it;
/// causes that are not `Clone` are kept behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference \"{reference}\": {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image \"{0}\" not found")]
    NotFound(String),
    #[error("image \"{0}\" is not present on this node and the pull policy is Never")]
    NotPresent(String),
    #[error("registry {registry} unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error(
        "registry {registry} denied access to \"{reference}\" (registry auth is not configured)"
    )]
    Unauthorized { registry: String, reference: String },
    #[error("registry {registry} error: {reason}")]
    Registry { registry: String, reason: String },
    #[error("no manifest for {platform} in index of \"{reference}\" (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: Platform,
        available: String,
    },
    #[error("image \"{reference}\" is built for {image}, this node needs {node}")]
    WrongPlatform {
        reference: String,
        image: String,
        node: Platform,
    },
    #[error("digest mismatch for {expected}: got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("invalid digest \"{0}\" (only sha256 is supported)")]
    InvalidDigest(String),
    #[error("invalid manifest for \"{reference}\": {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("unsupported media type {media_type} in \"{reference}\"")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("invalid layer {digest}: {reason}")]
    InvalidLayer { digest: String, reason: String },
    #[error("layer {0} is not in the store (ensure the image first)")]
    LayerMissing(String),
    #[error("cannot build rootfs: {0}")]
    Rootfs(String),
    #[error("mount of {} failed: {source}", target.display())]
    Mount {
        target: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<io::Error>,
    },
}

impl ImageError {
    /// Wraps an io error with what was being done, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io {
            context,
            source: Arc::new(source),
        }
    }
}

type SharedPull = Shared<BoxFuture<'static, Result<ImageConfig, ImageError>>>;

/// The agent's image cache. Cheap to clone: clones share one store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    registry: pull::Registry,
    platform: Platform,
    stats: Counters,
    /// Pulls in flight, by [`ref_key`]. A std mutex: it is held only to look up or insert,
    /// never across an await.
    pulls: Mutex<HashMap<String, SharedPull>>,
    blob_locks: KeyedLocks,
    layer_locks: KeyedLocks,
}

#[derive(Default)]
pub(crate) struct Counters {
    manifest_fetches: AtomicU64,
    manifest_bytes: AtomicU64,
    blob_fetches: AtomicU64,
    blob_bytes: AtomicU64,
    layers_unpacked: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What `refs/` records for a reference.
#[derive(Debug, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    platform: Platform,
    manifest_digest: String,
    config_digest: String,
}

/// The parts of an image config (OCI image-spec `config.json`) the store reads. Parsed here
/// rather than with oci-client's `ConfigFile`, which has no `variant`.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `cfg.root` and sweeps leftovers of a previous
    /// run that was killed mid-download or mid-unpack.
    pub fn new(cfg: ImageStoreConfig) -> Result<Self, ImageError> {
        let layout = Layout::open(&cfg.root)?;
        Ok(Self {
            inner: Arc::new(Inner {
                layout,
                registry: pull::Registry::new(cfg.insecure_registries),
                platform: cfg.platform,
                stats: Counters::default(),
                pulls: Mutex::new(HashMap::new()),
                blob_locks: KeyedLocks::default(),
                layer_locks: KeyedLocks::default(),
            }),
        })
    }

    /// The platform this store pulls for.
    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// Network counters since [`ImageStore::new`].
    pub fn stats(&self) -> ImageStoreStats {
        let s = &self.inner.stats;
        ImageStoreStats {
            manifest_fetches: s.manifest_fetches.load(Ordering::Relaxed),
            manifest_bytes: s.manifest_bytes.load(Ordering::Relaxed),
            blob_fetches: s.blob_fetches.load(Ordering::Relaxed),
            blob_bytes: s.blob_bytes.load(Ordering::Relaxed),
            layers_unpacked: s.layers_unpacked.load(Ordering::Relaxed),
        }
    }

    /// Makes sure the image is present, honouring the pull policy, and returns its config.
    ///
    /// `Always` re-resolves the manifest (blobs and layers already present are not fetched
    /// again); `IfNotPresent` uses the local copy by reference if it is complete and intact;
    /// `Never` fails with [`ImageError::NotPresent`] if it is not. Concurrent calls for the
    /// same reference share one pull.
    #[instrument(skip_all, fields(image = %reference, policy = ?policy))]
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<ImageConfig, ImageError> {
        let parsed: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            ImageError::InvalidReference {
                reference: reference.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let key = ref_key(&parsed, &self.inner.platform);

        if policy != PullPolicy::Always {
            let layout = self.inner.layout.clone();
            let (p, k) = (parsed.clone(), key.clone());
            let local = blocking(move || load_local(&layout, &p, &k)).await??;
            match (local, policy) {
                (Some(mut cfg), _) => {
                    debug!("image present locally");
                    cfg.reference = reference.to_owned();
                    return Ok(cfg);
                }
                (None, PullPolicy::Never) => {
                    return Err(ImageError::NotPresent(reference.to_owned()))
                }
                (None, _) => {}
            }
        }

        let pull = {
            let mut pulls = self.inner.pulls.lock().unwrap_or_else(|e| e.into_inner());
            pulls
                .entry(key.clone())
                .or_insert_with(|| {
                    let inner = Arc::clone(&self.inner);
                    let (parsed, key) = (parsed.clone(), key.clone());
                    async move { inner.pull(parsed, key).await }
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let result = pull.clone().await;
        {
            let mut pulls = self.inner.pulls.lock().unwrap_or_else(|e| e.into_inner());
            if pulls.get(&key).is_some_and(|p| p.ptr_eq(&pull)) {
                pulls.remove(&key);
            }
        }
        result.map(|mut cfg| {
            cfg.reference = reference.to_owned();
            cfg
        })
    }

    /// Builds a container's root filesystem: an overlay of the image's layers (top first)
    /// with `upper/` and `work/` inside `container_dir`, mounted on `container_dir/rootfs`,
    /// which is returned. Idempotent: an existing mount there is reused.
    pub fn mount_rootfs(
        &self,
        image: &ImageConfig,
        container_dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        let mut lowers = Vec::with_capacity(image.layers.len());
        for digest in image.layers.iter().rev() {
            let dir = self.inner.layout.layer(digest_hex(digest)?);
            if !dir.is_dir() {
                return Err(ImageError::LayerMissing(digest.clone()));
            }
            lowers.push(dir);
        }
        overlay::mount_overlay(&lowers, container_dir)
    }

    /// Unmounts `container_dir/rootfs` (lazily if it is busy) and removes `container_dir`
    /// with everything in it. Idempotent.
    pub fn unmount_rootfs(&self, container_dir: &Path) -> Result<(), ImageError> {
        overlay::unmount_and_remove(container_dir)
    }
}

/// The key of a reference in `refs/` and in the in-flight map: one reference resolves to
/// different manifests on different platforms.
fn ref_key(reference: &Reference, platform: &Platform) -> String {
    format!("{}|{}", reference.whole(), platform)
}

/// The local copy of an image, if it is complete and its manifest and config verify.
fn load_local(
    layout: &Layout,
    reference: &Reference,
    key: &str,
) -> Result<Option<ImageConfig>, ImageError> {
    let path = layout.ref_file(key);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(format!("read {}", path.display()))(e)),
    };
    let record: RefRecord = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unreadable ref record, pulling again");
            return Ok(None);
        }
    };
    let Some(manifest_bytes) = layout.read_verified(&record.manifest_digest)? else {
        return Ok(None);
    };
    let manifest = parse_manifest(reference, &manifest_bytes)?;
    if manifest.config.digest != record.config_digest {
        return Ok(None);
    }
    let Some(config_bytes) = layout.read_verified(&manifest.config.digest)? else {
        return Ok(None);
    };
    let config = parse_config(reference, &config_bytes)?;
    for layer in &manifest.layers {
        if !layout.layer(digest_hex(&layer.digest)?).is_dir() {
            return Ok(None);
        }
    }
    Ok(Some(image_config(
        reference,
        &record.manifest_digest,
        &manifest,
        config,
    )))
}

fn parse_manifest(reference: &Reference, bytes: &[u8]) -> Result<OciImageManifest, ImageError> {
    let manifest: OciImageManifest =
        serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidManifest {
            reference: reference.whole(),
            reason: e.to_string(),
        })?;
    if manifest.schema_version != 2 {
        return Err(ImageError::InvalidManifest {
            reference: reference.whole(),
            reason: format!(
                "schema version {} is not supported",
                manifest.schema_version
            ),
        });
    }
    Ok(manifest)
}

fn parse_config(reference: &Reference, bytes: &[u8]) -> Result<RawConfig, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidManifest {
        reference: reference.whole(),
        reason: format!("bad image config: {e}"),
    })
}

fn image_config(
    reference: &Reference,
    manifest_digest: &str,
    manifest: &OciImageManifest,
    config: RawConfig,
) -> ImageConfig {
    let run = config.config.unwrap_or_default();
    ImageConfig {
        reference: reference.whole(),
        manifest_digest: manifest_digest.to_owned(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.unwrap_or_default(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
    }
}

impl Inner {
    /// Resolves `reference` for our platform and brings every blob and layer it needs into the
    /// store, then records the reference.
    async fn pull(
        self: Arc<Self>,
        reference: Reference,
        key: String,
    ) -> Result<ImageConfig, ImageError> {
        info!(image = %reference.whole(), platform = %self.platform, "pulling image");
        let resolved = self
            .registry
            .resolve(&reference, &self.platform, &self.stats)
            .await?;
        let manifest = parse_manifest(&reference, &resolved.manifest)?;

        let layout = self.layout.clone();
        let (digest, bytes) = (resolved.manifest_digest.clone(), resolved.manifest.clone());
        blocking(move || layout.store_verified(&digest, &bytes)).await??;

        let config_path = self.ensure_blob(&reference, &manifest.config).await?;
        let layout = self.layout.clone();
        let config_digest = manifest.config.digest.clone();
        let config_bytes = blocking(move || layout.read_verified(&config_digest))
            .await??
            .ok_or_else(|| ImageError::DigestMismatch {
                expected: manifest.config.digest.clone(),
                actual: format!("a changed file at {}", config_path.display()),
            })?;
        let config = parse_config(&reference, &config_bytes)?;

        if platform::match_rank(
            &self.platform,
            &config.os,
            &config.architecture,
            config.variant.as_deref(),
        )
        .is_none()
        {
            return Err(ImageError::WrongPlatform {
                reference: reference.whole(),
                image: Platform::new(&config.os, &config.architecture, config.variant.as_deref())
                    .to_string(),
                node: self.platform.clone(),
            });
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::InvalidManifest {
                reference: reference.whole(),
                reason: format!(
                    "{} layers but {} diff_ids in the config",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }

        // Built before streaming: a closure over borrowed pairs inside this shared, Send
        // future trips rustc's higher-ranked lifetime inference.
        let layer_jobs: Vec<_> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| self.ensure_layer(&reference, layer, diff_id))
            .collect();
        futures::stream::iter(layer_jobs)
            .buffer_unordered(LAYER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;

        let record = RefRecord {
            reference: reference.whole(),
            platform: self.platform.clone(),
            manifest_digest: resolved.manifest_digest.clone(),
            config_digest: manifest.config.digest.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ImageError::Io {
            context: "encode ref record".into(),
            source: Arc::new(io::Error::other(e)),
        })?;
        let path = self.layout.ref_file(&key);
        blocking(move || {
            layout::write_atomic(&path, &json)
                .map_err(ImageError::io(format!("write {}", path.display())))
        })
        .await??;

        info!(image = %reference.whole(), manifest = %resolved.manifest_digest, "image ready");
        Ok(image_config(
            &reference,
            &resolved.manifest_digest,
            &manifest,
            config,
        ))
    }

    /// Makes sure the layer is unpacked under `layers/`, fetching its blob if needed. A layer
    /// already unpacked needs no blob at all.
    async fn ensure_layer(
        &self,
        reference: &Reference,
        layer: &OciDescriptor,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let hex = digest_hex(&layer.digest)?.to_owned();
        let _guard = self.layer_locks.lock(&hex).await;
        let dir = self.layout.layer(&hex);
        if dir.is_dir() {
            debug!(layer = %layer.digest, "layer already unpacked");
            return Ok(());
        }
        if !unpack::supported_media_type(&layer.media_type) {
            return Err(ImageError::UnsupportedMediaType {
                reference: reference.whole(),
                media_type: layer.media_type.clone(),
            });
        }
        let blob = self.ensure_blob(reference, layer).await?;
        let (digest, diff_id) = (layer.digest.clone(), diff_id.to_owned());
        blocking(move || unpack::unpack_layer(&blob, &dir, &digest, &diff_id)).await??;
        Counters::add(&self.stats.layers_unpacked, 1);
        Ok(())
    }

    /// Returns the path of the verified blob, downloading it if it is absent or corrupt. A
    /// download that fails verification is retried once.
    async fn ensure_blob(
        &self,
        reference: &Reference,
        desc: &OciDescriptor,
    ) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(&desc.digest)?.to_owned();
        let _guard = self.blob_locks.lock(&hex).await;
        let layout = self.layout.clone();
        let digest = desc.digest.clone();
        if let Some(path) = blocking(move || layout.verified_blob(&digest)).await?? {
            debug!(blob = %desc.digest, "blob present and verified");
            return Ok(path);
        }
        let path = self.layout.blob(&hex);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .registry
                .download_blob(reference, desc, &path, &self.stats)
                .await
            {
                Ok(()) => return Ok(path),
                Err(e @ ImageError::DigestMismatch { .. }) if attempt < 2 => {
                    warn!(blob = %desc.digest, error = %e, "downloaded blob failed verification, retrying once");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Io {
            context: "image store task failed".into(),
            source: Arc::new(io::Error::other(e.to_string())),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<ImageStore>();
        check::<ImageError>();
    }

    #[test]
    fn ref_key_depends_on_platform() {
        let r: Reference = "127.0.0.1:5000/app:v1".parse().unwrap();
        let a = ref_key(&r, &Platform::new("linux", "arm", Some("v6")));
        let b = ref_key(&r, &Platform::new("linux", "arm", Some("v7")));
        assert_ne!(a, b);
        let short: Reference = "busybox".parse().unwrap();
        assert!(ref_key(&short, &Platform::new("linux", "amd64", None))
            .starts_with("docker.io/library/busybox:latest|"));
    }
}
