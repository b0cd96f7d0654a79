//! Talking to registries with oci-client: manifest resolution and verified blob downloads.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciDescriptor, OciImageIndex, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::layout::sha256_bytes;
use super::platform::{describe_entries, select_manifest, Platform};
use super::{Counters, ImageError};

/// Manifests are small JSON documents; anything bigger is refused rather than buffered.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

pub(crate) struct Registry {
    client: Client,
}

/// The platform-specific manifest a reference resolved to.
pub(crate) struct Resolved {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// Just enough of a manifest to tell an index from an image manifest.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

enum Kind {
    Index,
    Image,
}

impl Registry {
    pub(crate) fn new(insecure_registries: Vec<String>) -> Self {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_registries),
            connect_timeout: Some(Duration::from_secs(10)),
            // Per read, not per download: a slow link is fine, a stalled one is not.
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        Self { client }
    }

    /// Credentials for a registry. Anonymous for now; per-registry secrets plug in here.
    fn auth(&self, _registry: &str) -> RegistryAuth {
        RegistryAuth::Anonymous
    }

    /// Resolves a reference to the image manifest for `platform`, going through an index if
    /// the reference names one. Both documents are checked against their digests.
    pub(crate) async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
        stats: &Counters,
    ) -> Result<Resolved, ImageError> {
        let (bytes, digest) = self.fetch_manifest(reference, stats).await?;
        match kind(reference, &bytes)? {
            Kind::Image => Ok(Resolved {
                manifest: bytes,
                manifest_digest: digest,
            }),
            Kind::Index => {
                let index: OciImageIndex =
                    serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidManifest {
                        reference: reference.whole(),
                        reason: format!("bad index: {e}"),
                    })?;
                let entry = select_manifest(&index.manifests, platform).ok_or_else(|| {
                    let available = describe_entries(&index.manifests);
                    ImageError::NoMatchingPlatform {
                        reference: reference.whole(),
                        platform: platform.clone(),
                        available: if available.is_empty() {
                            "no platforms".to_owned()
                        } else {
                            available.join(", ")
                        },
                    }
                })?;
                debug!(manifest = %entry.digest, "selected manifest from index");
                let by_digest = reference.clone_with_digest(entry.digest.clone());
                let (bytes, digest) = self.fetch_manifest(&by_digest, stats).await?;
                if digest != entry.digest {
                    return Err(ImageError::DigestMismatch {
                        expected: entry.digest.clone(),
                        actual: digest,
                    });
                }
                match kind(reference, &bytes)? {
                    Kind::Image => Ok(Resolved {
                        manifest: bytes,
                        manifest_digest: digest,
                    }),
                    Kind::Index => Err(ImageError::InvalidManifest {
                        reference: reference.whole(),
                        reason: "index entry points to another index".into(),
                    }),
                }
            }
        }
    }

    /// One manifest GET; returns the body and its (computed) digest, checked against the
    /// digest in the reference if it has one.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        stats: &Counters,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let auth = self.auth(reference.resolve_registry());
        Counters::add(&stats.manifest_fetches, 1);
        let (body, _) = self
            .client
            .pull_manifest_raw(reference, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| map_err(e, reference))?;
        Counters::add(&stats.manifest_bytes, body.len() as u64);
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(ImageError::InvalidManifest {
                reference: reference.whole(),
                reason: format!("manifest of {} bytes is too large", body.len()),
            });
        }
        let digest = sha256_bytes(&body);
        if let Some(expected) = reference.digest() {
            if expected != digest {
                return Err(ImageError::DigestMismatch {
                    expected: expected.to_owned(),
                    actual: digest,
                });
            }
        }
        Ok((body.to_vec(), digest))
    }

    /// Downloads a blob to `dest`: into `dest.partial`, hashed and counted on the way,
    /// synced, and renamed only if digest and size match. Nothing is left behind on error.
    pub(crate) async fn download_blob(
        &self,
        reference: &Reference,
        desc: &OciDescriptor,
        dest: &Path,
        stats: &Counters,
    ) -> Result<(), ImageError> {
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = dest.with_file_name(name);
        let result = self
            .download_to(reference, desc, &partial, dest, stats)
            .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    async fn download_to(
        &self,
        reference: &Reference,
        desc: &OciDescriptor,
        partial: &Path,
        dest: &Path,
        stats: &Counters,
    ) -> Result<(), ImageError> {
        let registry = reference.resolve_registry().to_owned();
        self.client
            .store_auth_if_needed(&registry, &self.auth(&registry))
            .await;
        let mut file = tokio::fs::File::create(partial)
            .await
            .map_err(ImageError::io(format!("create {}", partial.display())))?;
        Counters::add(&stats.blob_fetches, 1);
        debug!(blob = %desc.digest, size = desc.size, "downloading blob");
        let mut stream = self
            .client
            .pull_blob_stream(reference, desc)
            .await
            .map_err(|e| map_err(e, reference))?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let expected_size = u64::try_from(desc.size).ok().filter(|s| *s > 0);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // oci-client verifies too, and reports a mismatch at the end of the stream.
                Err(e) if is_digest_error(&e) => {
                    return Err(ImageError::DigestMismatch {
                        expected: desc.digest.clone(),
                        actual: format!("sha256:{}", hex::encode(hasher.finalize())),
                    })
                }
                Err(e) => {
                    return Err(ImageError::Registry {
                        registry,
                        reason: format!("download of {} failed: {}", desc.digest, root_cause(&e)),
                    })
                }
            };
            received += chunk.len() as u64;
            Counters::add(&stats.blob_bytes, chunk.len() as u64);
            if expected_size.is_some_and(|s| received > s) {
                return Err(ImageError::DigestMismatch {
                    expected: desc.digest.clone(),
                    actual: format!("more than the {} bytes announced", desc.size),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(ImageError::io(format!("write {}", partial.display())))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                expected: desc.digest.clone(),
                actual,
            });
        }
        if let Some(size) = expected_size {
            if received != size {
                return Err(ImageError::DigestMismatch {
                    expected: desc.digest.clone(),
                    actual: format!("{received} bytes instead of {size}"),
                });
            }
        }
        file.sync_all()
            .await
            .map_err(ImageError::io(format!("sync {}", partial.display())))?;
        drop(file);
        tokio::fs::rename(partial, dest)
            .await
            .map_err(ImageError::io(format!("rename {}", partial.display())))?;
        info!(blob = %desc.digest, bytes = received, "blob downloaded and verified");
        Ok(())
    }
}

fn kind(reference: &Reference, bytes: &[u8]) -> Result<Kind, ImageError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidManifest {
        reference: reference.whole(),
        reason: e.to_string(),
    })?;
    match probe.media_type.as_deref() {
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE) => Ok(Kind::Index),
        Some(OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE) => Ok(Kind::Image),
        None if probe.manifests.is_some() => Ok(Kind::Index),
        None => Ok(Kind::Image),
        Some(other) => Err(ImageError::UnsupportedMediaType {
            reference: reference.whole(),
            media_type: other.to_owned(),
        }),
    }
}

fn is_digest_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some())
}

/// The innermost cause of an error: for reqwest that is the useful part ("Connection
/// refused (os error 111)") under layers of "error sending request for url".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turns oci-client's errors into the user-facing kinds of [`ImageError`].
fn map_err(e: OciDistributionError, reference: &Reference) -> ImageError {
    let registry = reference.resolve_registry().to_owned();
    let not_found = || ImageError::NotFound(reference.whole());
    match e {
        OciDistributionError::RequestError(ref r) if r.is_connect() || r.is_timeout() => {
            ImageError::Unreachable {
                registry,
                reason: root_cause(r),
            }
        }
        OciDistributionError::RequestError(ref r) => ImageError::Registry {
            registry,
            reason: root_cause(r),
        },
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) =>
        {
            not_found()
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => ImageError::Unauthorized {
            registry,
            reference: reference.whole(),
        },
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch { expected, actual }
        }
        other => ImageError::Registry {
            registry,
            reason: other.to_string(),
        },
    }
}
