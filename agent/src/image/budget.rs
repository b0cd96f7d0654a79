//! The store's disk budget around a pull: what a pull will add, making room for it first,
//! and checking the measured use after every layer (the collector itself is [`super::gc`]).

use std::sync::Arc;

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::Reference;
use tracing::debug;

use super::gc::{human, Gc, GcReport};
use super::layout::digest_hex;
use super::{blocking, pull, ImageError, Inner};

impl Inner {
    pub(super) fn gc(&self) -> Gc<'_> {
        Gc {
            layout: &self.layout,
            keep: &self.keep,
            limits: self.limits,
            sizes: &self.layer_sizes,
        }
    }

    /// Blocking: one collection making room for `need` bytes.
    pub(super) fn collect(&self, need: u64) -> Result<GcReport, ImageError> {
        let _one = self.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.gc().collect(need)
    }

    /// Makes room before downloading. `need` is a guess of what the pull adds (compressed
    /// blobs plus unpacked layers); `must` what it certainly adds at least (the compressed
    /// blobs). Fails only if even `must` cannot fit, so a metered link is not spent on an
    /// image that cannot be stored.
    pub(super) async fn make_room(
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
    pub(super) async fn check_limits(
        self: &Arc<Self>,
        reference: &Reference,
    ) -> Result<(), ImageError> {
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

    /// What a pull of `manifest` adds to the store: a guess (compressed blobs missing, plus
    /// their unpacked size guessed at 3x for gzip, the usual ratio for root filesystems) and
    /// a floor (the compressed blobs alone), in bytes. Layers already unpacked add nothing.
    pub(super) fn room_needed(
        &self,
        manifest: &OciImageManifest,
    ) -> Result<(u64, u64), ImageError> {
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
