//! The local copy of an image: the ref record that names it, and the manifest and config
//! read back and checked before anything of it is used.

use std::io;
use std::path::Path;

use oci_client::manifest::OciImageManifest;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::layout::{digest_hex, Layout};
use super::platform;
use super::{ImageConfig, ImageError, Platform};

/// What `refs/` records for a reference.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    pub(super) reference: String,
    pub(super) platform: Platform,
    pub(super) manifest_digest: String,
    pub(super) config_digest: String,
}

/// The parts of an image config (OCI image-spec `config.json`) the store reads. Parsed here
/// rather than with oci-client's `ConfigFile`, which has no `variant`.
#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    pub(super) architecture: String,
    pub(super) os: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
    #[serde(default)]
    pub(super) config: Option<RawRunConfig>,
    pub(super) rootfs: RawRootfs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawRunConfig {
    #[serde(default)]
    pub(super) entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub(super) cmd: Option<Vec<String>>,
    #[serde(default)]
    pub(super) env: Option<Vec<String>>,
    #[serde(default)]
    pub(super) working_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRootfs {
    #[serde(default)]
    pub(super) diff_ids: Vec<String>,
}

/// Sets a ref file's mtime to now: its image was just used (LRU order for collection).
/// Best effort: a failure only makes the image look older.
pub(super) fn touch(path: &Path) {
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
pub(super) fn ref_key(reference: &Reference, platform: &Platform) -> String {
    format!("{}|{}", reference.whole(), platform)
}

/// The local copy of an image, if it is complete and its manifest and config verify.
pub(super) fn load_local(
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

pub(super) fn parse_manifest(
    reference: &Reference,
    bytes: &[u8],
) -> Result<OciImageManifest, ImageError> {
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
pub(super) fn check_config(
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

pub(super) fn parse_config(reference: &Reference, bytes: &[u8]) -> Result<RawConfig, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidManifest {
        reference: reference.whole(),
        reason: format!("bad image config: {e}"),
    })
}

pub(super) fn image_config(
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
