//! The image store's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::Platform;

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
    pub(super) fn no_space_to_budget(self, reference: &str) -> ImageError {
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
