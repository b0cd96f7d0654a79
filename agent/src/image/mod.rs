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
mod budget;
mod ensure;
mod error;
mod flight;
pub mod gc;
/// Hostile layers for the property test and the fuzz target (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod hostile;
mod layout;
mod local;
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
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use tracing::{debug, instrument, warn};

pub use auth::{load_ca, Credentials, RegistryConfig};
pub use error::ImageError;
pub use gc::{DiskLimits, DiskSize, DiskUsage, GcReport};
pub use mirror::RegistryMirror;
pub use platform::Platform;
pub use preload::PreloadReport;

use flight::KeyedLocks;
use gc::Keep;
use layout::{digest_hex, Layout};
use local::{load_local, ref_key, touch};

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

    /// Closes the registry connections no pull is using (see
    /// `pull::Registry::forget_clients`); the node loop calls it periodically.
    pub fn close_idle_connections(&self) {
        self.inner.registry.forget_clients();
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

    /// Removes every image no pod uses (and orphaned blobs), whatever the limits: kubelet's
    /// first reclaim under disk pressure.
    pub async fn gc_unused(&self) -> Result<GcReport, ImageError> {
        let inner = Arc::clone(&self.inner);
        // No room is ever enough, so every unused image goes, least recently used first.
        blocking(move || inner.collect(u64::MAX)).await?
    }

    /// The store's measured disk use.
    pub async fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.gc().usage()).await?
    }
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
