//! One pull into the store, behind [`super::ImageStore::ensure`]: resolve the manifest, make
//! room, bring in the config and every layer (downloaded, verified, unpacked), and write the
//! ref record last. Talking to the registry is [`super::pull`]'s.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::manifest::OciDescriptor;
use oci_client::Reference;
use tracing::{debug, info, warn};

use super::auth::Credentials;
use super::gc::PullGuard;
use super::layout::{self, digest_hex};
use super::local::{check_config, image_config, parse_config, parse_manifest, RefRecord};
use super::{blocking, meter, unpack, Counters, ImageConfig, ImageError, Inner, LAYER_CONCURRENCY};

impl Inner {
    /// Resolves `reference` for our platform and brings every blob and layer it needs into the
    /// store, then records the reference.
    pub(super) async fn pull(
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

    /// Blocking: unpacks a layer blob into `dir`, metered against the store's limits.
    pub(super) fn unpack_metered(
        &self,
        blob: &Path,
        dir: &Path,
        digest: &str,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        // A layer that made the agent panic before is refused, not unpacked again: with the
        // device build's abort on panic, it would crash the agent at every start (crash.rs).
        let quarantine = self.layout.quarantine(digest)?;
        if let Some(why) = crate::crash::marker(&quarantine) {
            return Err(ImageError::InvalidLayer {
                digest: digest.to_owned(),
                reason: format!(
                    "quarantined: {why}; remove {} to try it again",
                    quarantine.display()
                ),
            });
        }
        let _guard = crate::crash::guard(quarantine, format!("unpacking layer {digest}"));
        let meter = meter::StoreMeter::new(self, digest)?;
        unpack::unpack_layer(blob, dir, digest, diff_id, &meter)
    }

    pub(super) async fn pull_inner(
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
    pub(super) async fn ensure_layer(
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
    pub(super) async fn ensure_blob(
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
