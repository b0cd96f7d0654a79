//! Image store: pulls, verifies and unpacks OCI images into a content-addressed cache, and
//! builds containers' root filesystems from it with overlayfs.
//!
//! Layout under the store's root (one [`ImageStore`] per root):
//!
//! ```text
//! blobs/sha256/<hex>          manifests and configs (and, with keep_layer_blobs, compressed
//!                             layers), verified
//! blobs/sha256/<hex>.partial  a download in progress or cut off; resumed, hashed whole
//! layers/sha256/<hex>/        a layer unpacked for overlayfs (whiteouts as 0:0 char devices)
//! refs/<sha256(ref|platform)>.json   reference -> manifest digest (+ config digest);
//!                             its mtime is the image's last use, for LRU collection
//! ```
//!
//! A layer's compressed blob is deleted once the layer is unpacked and its `diff_id`
//! verified (unless [`ImageStoreConfig::keep_layer_blobs`]): the unpacked directory is what
//! containers use, and keeping both roughly doubled the store on devices whose SD card is
//! the scarcest resource. The cost: a layer lost from `layers/` is fetched again.
//!
//! Disk budget: see [`gc`]. Pulls make room first (orphans, then unused images least
//! recently used first), refuse up front what cannot fit even then (`disk budget: ...`,
//! before downloading), count every byte while a layer unpacks and stop it at the budget or
//! the free-disk floor ([`meter`]), and check the measured use again after every layer.
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

mod auth;
mod flight;
pub mod gc;
/// Hostile layers for the property test and the fuzz target (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod hostile;
mod layout;
mod meter;
mod mirror;
mod overlay;
mod platform;
mod preload;
mod pull;
mod unpack;

use std::collections::{BTreeSet, HashMap};
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

pub use auth::{load_ca, Credentials, RegistryConfig};
pub use gc::{DiskLimits, DiskSize, DiskUsage, GcReport};
pub use mirror::RegistryMirror;
pub use platform::Platform;
pub use preload::PreloadReport;

use flight::KeyedLocks;
use gc::{human, Gc, Keep, PullGuard};
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
    /// Node-level credentials and per-registry CAs (`--registry-config`).
    pub registry_config: RegistryConfig,
    /// PEM bundles trusted for every registry, on top of the built-in roots (`--registry-ca`).
    pub registry_ca: Vec<Vec<u8>>,
    /// Disk budget and free-space floor.
    pub limits: DiskLimits,
    /// Keep compressed layer blobs after unpacking (see the module doc). Off by default.
    pub keep_layer_blobs: bool,
    /// A registry tried first for every image (see [`mirror`]).
    pub mirror: Option<RegistryMirror>,
}

impl ImageStoreConfig {
    /// A store at `root` for `platform`, anonymous, with no budget and the default floor.
    pub fn new(root: impl Into<PathBuf>, platform: Platform) -> Self {
        Self {
            root: root.into(),
            insecure_registries: Vec::new(),
            platform,
            registry_config: RegistryConfig::default(),
            registry_ca: Vec::new(),
            limits: DiskLimits::default(),
            keep_layer_blobs: false,
            mirror: None,
        }
    }
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
    /// Bytes of partial downloads that were continued instead of fetched again.
    pub blob_bytes_resumed: u64,
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
    #[error("unauthorized: registry {registry} denied access to \"{reference}\" ({hint})")]
    Unauthorized {
        registry: String,
        reference: String,
        hint: &'static str,
    },
    #[error("tls error with registry {registry}: {reason} (trust its CA with --registry-ca or caFiles in --registry-config)")]
    Tls { registry: String, reason: String },
    /// The store cannot hold the image within its budget or free-space floor, even after
    /// removing every image that no pod uses; or the disk filled up during the pull.
    #[error("disk budget: {0}")]
    DiskBudget(String),
    #[error("registry config {}: {reason}", path.display())]
    RegistryConfig { path: PathBuf, reason: String },
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
    #[error("invalid registry mirror {url:?}: {reason}")]
    Mirror { url: String, reason: String },
}

impl ImageError {
    /// A full disk (or quota) anywhere in a pull is a budget failure, not an obscure io one.
    fn no_space_to_budget(self, reference: &str) -> ImageError {
        if let ImageError::Io { context, source } = &self {
            let full = matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) || matches!(
                source.raw_os_error(),
                Some(libc_errno::ENOSPC | libc_errno::EDQUOT)
            );
            if full {
                return ImageError::DiskBudget(format!(
                    "no space left on the device holding the image store while pulling \"{reference}\" ({context})"
                ));
            }
        }
        self
    }

    /// Wraps an io error with what was being done, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io {
            context,
            source: Arc::new(source),
        }
    }
}

/// errno values for [`ImageError::no_space_to_budget`].
mod libc_errno {
    pub const ENOSPC: i32 = nix::errno::Errno::ENOSPC as i32;
    pub const EDQUOT: i32 = nix::errno::Errno::EDQUOT as i32;
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
    /// What garbage collection must leave alone; see [`gc`].
    keep: Keep,
    limits: DiskLimits,
    /// Measured sizes of unpacked layers, by hex digest (layers never change).
    layer_sizes: Mutex<HashMap<String, u64>>,
    /// What unpacks in flight have written; see [`meter`].
    unpack_charges: meter::Charges,
    /// One collection at a time; held on a blocking thread only.
    gc_lock: Mutex<()>,
    keep_layer_blobs: bool,
    mirror: Option<RegistryMirror>,
}

#[derive(Default)]
pub(crate) struct Counters {
    manifest_fetches: AtomicU64,
    manifest_bytes: AtomicU64,
    blob_fetches: AtomicU64,
    blob_bytes: AtomicU64,
    blob_bytes_resumed: AtomicU64,
    layers_unpacked: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What `refs/` records for a reference.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RefRecord {
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
    pub fn new(mut cfg: ImageStoreConfig) -> Result<Self, ImageError> {
        let layout = Layout::open(&cfg.root)?;
        if let Some(m) = &cfg.mirror {
            if m.is_insecure() {
                cfg.insecure_registries.push(m.host().to_owned());
            }
            if let Some(ca) = m.ca() {
                cfg.registry_ca.push(ca.to_vec());
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                layout,
                registry: pull::Registry::new(
                    cfg.insecure_registries,
                    cfg.registry_config,
                    cfg.registry_ca,
                ),
                platform: cfg.platform,
                stats: Counters::default(),
                pulls: Mutex::new(HashMap::new()),
                blob_locks: KeyedLocks::default(),
                layer_locks: KeyedLocks::default(),
                keep: Keep::new(),
                limits: cfg.limits,
                layer_sizes: Mutex::new(HashMap::new()),
                unpack_charges: meter::Charges::default(),
                gc_lock: Mutex::new(()),
                keep_layer_blobs: cfg.keep_layer_blobs,
                mirror: cfg.mirror,
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
            blob_bytes_resumed: s.blob_bytes_resumed.load(Ordering::Relaxed),
            layers_unpacked: s.layers_unpacked.load(Ordering::Relaxed),
        }
    }

    /// Makes sure the image is present, honouring the pull policy, and returns its config.
    ///
    /// `Always` re-resolves the manifest (blobs and layers already present are not fetched
    /// again); `IfNotPresent` uses the local copy by reference if it is complete and intact;
    /// `Never` fails with [`ImageError::NotPresent`] if it is not. Concurrent calls for the
    /// same reference share one pull.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<ImageConfig, ImageError> {
        self.ensure_with(reference, policy, None).await
    }

    /// [`ImageStore::ensure`] with credentials for this pull (a pod's imagePullSecret),
    /// used instead of the node's for the image's registry. Pulls with different
    /// credentials do not join each other. An image already present is used whatever the
    /// credentials, as with kubelet's `IfNotPresent`.
    #[instrument(skip_all, fields(image = %reference, policy = ?policy))]
    pub async fn ensure_with(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
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
                    touch(&self.inner.layout.ref_file(&key));
                    cfg.reference = reference.to_owned();
                    return Ok(cfg);
                }
                (None, PullPolicy::Never) => {
                    return Err(ImageError::NotPresent(reference.to_owned()))
                }
                (None, _) => {}
            }
        }

        let flight_key = match credentials {
            Some(c) => format!("{key}|{}", c.fingerprint()),
            None => key.clone(),
        };
        let pull = {
            let mut pulls = self.inner.pulls.lock().unwrap_or_else(|e| e.into_inner());
            pulls
                .entry(flight_key.clone())
                .or_insert_with(|| {
                    let inner = Arc::clone(&self.inner);
                    let (parsed, key) = (parsed.clone(), key.clone());
                    let creds = credentials.cloned();
                    async move { inner.pull(parsed, key, creds).await }
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let result = pull.clone().await;
        {
            let mut pulls = self.inner.pulls.lock().unwrap_or_else(|e| e.into_inner());
            if pulls.get(&flight_key).is_some_and(|p| p.ptr_eq(&pull)) {
                pulls.remove(&flight_key);
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
    ///
    /// The layers stay pinned against garbage collection until [`ImageStore::unmount_rootfs`].
    pub fn mount_rootfs(
        &self,
        image: &ImageConfig,
        container_dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        // Pin first, then look: the collector checks pins right before it removes a layer.
        self.inner
            .keep
            .lock()
            .pin_mount(container_dir, &image.layers);
        let result = self.mount_pinned(image, container_dir);
        if result.is_err() {
            self.inner.keep.lock().unpin_mount(container_dir);
        }
        result
    }

    fn mount_pinned(
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
        overlay::unmount_and_remove(container_dir)?;
        self.inner.keep.lock().unpin_mount(container_dir);
        Ok(())
    }

    /// Tells the store which images assigned or running pods use (references as the pods
    /// give them): garbage collection never removes them. The node loop calls this whenever
    /// its desired state or its set of pods changes; each call replaces the previous set.
    pub fn set_in_use(&self, references: &BTreeSet<String>) {
        let platform = &self.inner.platform;
        let keys = gc::keys_of(references, |r| {
            r.parse::<Reference>().ok().map(|p| ref_key(&p, platform))
        });
        let mut st = self.inner.keep.lock();
        if st.in_use != keys {
            debug!(images = keys.len(), "images in use");
            st.in_use = keys;
        }
    }

    /// Collects garbage if the store is over its budget or the disk under its floor (the
    /// node loop calls this periodically; pulls do it themselves).
    pub async fn gc(&self) -> Result<GcReport, ImageError> {
        let inner = Arc::clone(&self.inner);
        let report = blocking(move || inner.collect(0)).await??;
        if !report.fits {
            warn!(
                usage = report.usage,
                budget = ?report.budget,
                free = report.free,
                min_free = report.min_free,
                "image store over its limits and nothing left that may be removed"
            );
        }
        Ok(report)
    }

    /// The store's measured disk use.
    pub async fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.gc().usage()).await?
    }
}

/// Sets a ref file's mtime to now: its image was just used (LRU order for collection).
/// Best effort: a failure only makes the image look older.
fn touch(path: &Path) {
    let result = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = result {
        debug!(path = %path.display(), error = %e, "cannot record image use");
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
/// What every image config must satisfy before its layers are used, whether it came from a
/// registry, a mirror or a preload archive: it is for this node's platform, and it names one
/// diff_id per layer.
fn check_config(
    reference: &Reference,
    platform: &Platform,
    config: &RawConfig,
    layers: usize,
) -> Result<(), ImageError> {
    if platform::match_rank(
        platform,
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
            node: platform.clone(),
        });
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(ImageError::InvalidManifest {
            reference: reference.whole(),
            reason: format!(
                "{layers} layers but {} diff_ids in the config",
                config.rootfs.diff_ids.len()
            ),
        });
    }
    Ok(())
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
        creds: Option<Credentials>,
    ) -> Result<ImageConfig, ImageError> {
        let whole = reference.whole();
        let result = Arc::clone(&self)
            .pull_via_mirror(reference, key, creds)
            .await;
        let result = result.map_err(|e| e.no_space_to_budget(&whole));
        if let Err(ImageError::DiskBudget(_)) = result {
            // What this pull left is now an orphan; over the limits, collect it at once.
            let inner = Arc::clone(&self);
            if let Ok(Err(e)) = blocking(move || inner.collect(0)).await {
                warn!(error = %e, "garbage collection after a failed pull failed");
            }
        }
        result
    }

    fn gc(&self) -> Gc<'_> {
        Gc {
            layout: &self.layout,
            keep: &self.keep,
            limits: self.limits,
            sizes: &self.layer_sizes,
        }
    }

    /// Blocking: unpacks a layer blob into `dir`, metered against the store's limits.
    fn unpack_metered(
        &self,
        blob: &Path,
        dir: &Path,
        digest: &str,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let meter = meter::StoreMeter::new(self, digest)?;
        unpack::unpack_layer(blob, dir, digest, diff_id, &meter)
    }

    /// Blocking: one collection making room for `need` bytes.
    fn collect(&self, need: u64) -> Result<GcReport, ImageError> {
        let _one = self.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.gc().collect(need)
    }

    /// Makes room before downloading. `need` is a guess of what the pull adds (compressed
    /// blobs plus unpacked layers); `must` what it certainly adds at least (the compressed
    /// blobs). Fails only if even `must` cannot fit, so a metered link is not spent on an
    /// image that cannot be stored.
    async fn make_room(
        self: &Arc<Self>,
        reference: &Reference,
        need: u64,
        must: u64,
    ) -> Result<(), ImageError> {
        let inner = Arc::clone(self);
        let report = blocking(move || inner.collect(need)).await??;
        if report.fits {
            return Ok(());
        }
        let inner = Arc::clone(self);
        let report = blocking(move || inner.collect(must)).await??;
        if report.fits {
            debug!(
                need,
                must, "room for the download, maybe not for the unpacked layers"
            );
            return Ok(());
        }
        Err(ImageError::DiskBudget(format!(
            "\"{}\" needs at least {} more; {} (every image left is in use)",
            reference.whole(),
            human(must),
            describe(&report)
        )))
    }

    /// After a layer landed: the measured use must still be within the limits.
    async fn check_limits(self: &Arc<Self>, reference: &Reference) -> Result<(), ImageError> {
        let inner = Arc::clone(self);
        let report = blocking(move || inner.collect(0)).await??;
        if report.fits {
            return Ok(());
        }
        Err(ImageError::DiskBudget(format!(
            "\"{}\" does not fit once unpacked; {} (every image left is in use)",
            reference.whole(),
            describe(&report)
        )))
    }

    async fn pull_inner(
        self: Arc<Self>,
        reference: Reference,
        key: String,
        creds: Option<Credentials>,
    ) -> Result<ImageConfig, ImageError> {
        info!(image = %reference.whole(), platform = %self.platform, "pulling image");
        let mut guard = PullGuard::new(&self.keep, &key);
        let resolved = self
            .registry
            .resolve(&reference, creds.as_ref(), &self.platform, &self.stats)
            .await?;
        let manifest = parse_manifest(&reference, &resolved.manifest)?;
        // Registered before anything is looked up on disk: see gc's module doc.
        guard.protect(
            [
                resolved.manifest_digest.clone(),
                manifest.config.digest.clone(),
            ]
            .into_iter()
            .chain(manifest.layers.iter().map(|l| l.digest.clone())),
        );
        let (need, must) = self.room_needed(&manifest)?;
        if must > 0 {
            self.make_room(&reference, need, must).await?;
        }

        let layout = self.layout.clone();
        let (digest, bytes) = (resolved.manifest_digest.clone(), resolved.manifest.clone());
        blocking(move || layout.store_verified(&digest, &bytes)).await??;

        let config_path = self
            .ensure_blob(&reference, creds.as_ref(), &manifest.config)
            .await?;
        let layout = self.layout.clone();
        let config_digest = manifest.config.digest.clone();
        let config_bytes = blocking(move || layout.read_verified(&config_digest))
            .await??
            .ok_or_else(|| ImageError::DigestMismatch {
                expected: manifest.config.digest.clone(),
                actual: format!("a changed file at {}", config_path.display()),
            })?;
        let config = parse_config(&reference, &config_bytes)?;

        check_config(&reference, &self.platform, &config, manifest.layers.len())?;

        // Built before streaming: a closure over borrowed pairs inside this shared, Send
        // future trips rustc's higher-ranked lifetime inference.
        let layer_jobs: Vec<_> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| self.ensure_layer(&reference, creds.as_ref(), layer, diff_id))
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
            crate::durable::write(&path, &json, layout::STORE_FILE)
                .map_err(ImageError::io(format!("write {}", path.display())))
        })
        .await??;
        drop(guard);

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
        self: &Arc<Self>,
        reference: &Reference,
        creds: Option<&Credentials>,
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
        let blob = self.ensure_blob(reference, creds, layer).await?;
        let (digest, diff_id) = (layer.digest.clone(), diff_id.to_owned());
        let keep_blob = self.keep_layer_blobs;
        let inner = Arc::clone(self);
        blocking(move || {
            inner.unpack_metered(&blob, &dir, &digest, &diff_id)?;
            if !keep_blob {
                // The layer is complete and verified; its compressed copy is dead weight.
                if let Err(e) = std::fs::remove_file(&blob) {
                    warn!(blob = %blob.display(), error = %e, "cannot remove unpacked layer blob");
                }
            }
            Ok::<(), ImageError>(())
        })
        .await??;
        Counters::add(&self.stats.layers_unpacked, 1);
        self.check_limits(reference).await
    }

    /// Returns the path of the verified blob, downloading it if it is absent or corrupt. A
    /// download that fails verification is retried once.
    async fn ensure_blob(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
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
                .download_blob(reference, creds, desc, &path, &self.stats)
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

impl Inner {
    /// What a pull of `manifest` adds to the store: a guess (compressed blobs missing, plus
    /// their unpacked size guessed at 3x for gzip, the usual ratio for root filesystems) and
    /// a floor (the compressed blobs alone), in bytes. Layers already unpacked add nothing.
    fn room_needed(&self, manifest: &OciImageManifest) -> Result<(u64, u64), ImageError> {
        let size = |d: &OciDescriptor| u64::try_from(d.size).unwrap_or(0);
        let (mut need, mut must) = (0u64, 0u64);
        if !self
            .layout
            .blob(digest_hex(&manifest.config.digest)?)
            .exists()
        {
            need += size(&manifest.config);
            must += size(&manifest.config);
        }
        for l in &manifest.layers {
            if self.layout.layer(digest_hex(&l.digest)?).is_dir() {
                continue;
            }
            let partial = pull::partial_path(&self.layout.blob(digest_hex(&l.digest)?));
            let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            let compressed = size(l).saturating_sub(have);
            let unpacked = if l.media_type.contains("gzip") {
                size(l).saturating_mul(3)
            } else {
                size(l)
            };
            need = need.saturating_add(compressed).saturating_add(unpacked);
            must = must.saturating_add(compressed);
        }
        Ok((need, must))
    }
}

fn describe(r: &GcReport) -> String {
    let budget = match r.budget {
        Some(b) => format!(
            "the image store uses {} of its {} budget",
            human(r.usage),
            human(b)
        ),
        None => format!("the image store uses {}", human(r.usage)),
    };
    format!(
        "{budget}, and the disk has {} free of the {} to keep free",
        human(r.free),
        human(r.min_free)
    )
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
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
