//! Talking to registries with oci-client: manifest resolution, verified and resumable blob
//! downloads, per-registry credentials and trusted CAs.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
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

use super::auth::{Credentials, RegistryConfig};
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

/// The registries this store pulls from: one oci-client [`Client`] per registry and
/// credential set, because oci-client keeps one auth (and token cache) per registry name and
/// one set of trusted roots per client. Cached: a client holds a connection pool and tokens.
pub(crate) struct Registry {
    insecure: Vec<String>,
    config: RegistryConfig,
    /// PEM bundles trusted for every registry (`--registry-ca`).
    extra_ca: Vec<Vec<u8>>,
    clients: Mutex<HashMap<String, Client>>,
}

/// The platform-specific manifest a reference resolved to.
pub(crate) struct Resolved {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// Just enough of a manifest to tell an index from an image manifest.
#[derive(Deserialize)]
pub(super) struct Probe {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: Option<String>,
    #[serde(default)]
    pub(super) manifests: Option<serde_json::Value>,
}

enum Kind {
    Index,
    Image,
}

impl Registry {
    pub(crate) fn new(
        insecure_registries: Vec<String>,
        config: RegistryConfig,
        extra_ca: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            insecure: insecure_registries,
            config,
            extra_ca,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the cached clients, and with them their idle connections: reqwest keeps a
    /// pooled registry connection open with a TCP keepalive every 15 s, about 600 KB a day
    /// on an idle link, six times a metered node's whole budget (`tests/bench/link.sh`). A
    /// pull under way keeps its own clone; the next one connects and authenticates again.
    pub(crate) fn forget_clients(&self) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The client and auth for `registry`: per-pull credentials if given, else the node's.
    fn client(
        &self,
        registry: &str,
        creds: Option<&Credentials>,
    ) -> Result<(Client, RegistryAuth), ImageError> {
        let creds = creds.or_else(|| self.config.credentials(registry));
        let auth = creds.map_or(RegistryAuth::Anonymous, Credentials::to_auth);
        let key = format!(
            "{registry}|{}",
            creds.map(Credentials::fingerprint).unwrap_or_default()
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok((c.clone(), auth));
        }
        let mut roots: Vec<Certificate> = self
            .extra_ca
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect();
        if let Some(pem) = self.config.ca(registry) {
            roots.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.to_vec(),
            });
        }
        crate::mqtt_tls::install_ring_provider();
        let client = Client::try_from(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            extra_root_certificates: roots,
            connect_timeout: Some(Duration::from_secs(10)),
            // Per read, not per download: a slow link is fine, a stalled one is not.
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        })
        .map_err(|e| ImageError::Tls {
            registry: registry.to_owned(),
            reason: format!("cannot set up the client: {e}"),
        })?;
        clients.insert(key, client.clone());
        Ok((client, auth))
    }

    /// Resolves a reference to the image manifest for `platform`, going through an index if
    /// the reference names one. Both documents are checked against their digests.
    pub(crate) async fn resolve(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        platform: &Platform,
        stats: &Counters,
    ) -> Result<Resolved, ImageError> {
        let (bytes, digest) = self.fetch_manifest(reference, creds, stats).await?;
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
                let (bytes, digest) = self.fetch_manifest(&by_digest, creds, stats).await?;
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
        creds: Option<&Credentials>,
        stats: &Counters,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let (client, auth) = self.client(reference.resolve_registry(), creds)?;
        Counters::add(&stats.manifest_fetches, 1);
        let (body, _) = client
            .pull_manifest_raw(reference, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| {
                map_err(
                    e,
                    reference,
                    creds.is_some()
                        || self
                            .config
                            .credentials(reference.resolve_registry())
                            .is_some(),
                )
            })?;
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

    /// Downloads a blob to `dest` through `dest.partial`, hashed and counted on the way,
    /// synced, and renamed only if digest and size match.
    ///
    /// Resuming: a `.partial` left by a dropped link or a power cut is kept and continued
    /// with a ranged GET (`Range: bytes=<len>-`, which Distribution honours;
    /// oci-client's `pull_blob_stream_partial` sends it with the same auth and TLS settings,
    /// so no second HTTP stack is needed). Its bytes are hashed again first and the digest
    /// is checked over the whole file at the end, so a partial that was truncated or
    /// corrupted is never used: it fails the digest, is deleted, and the caller fetches the
    /// blob again from zero. A registry that ignores the range (200 instead of 206) simply
    /// restarts the file. Only a digest or size mismatch deletes the partial; any other
    /// failure keeps it for the next attempt.
    pub(crate) async fn download_blob(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &OciDescriptor,
        dest: &Path,
        stats: &Counters,
    ) -> Result<(), ImageError> {
        let partial = partial_path(dest);
        let result = self
            .download_to(reference, creds, desc, &partial, dest, stats)
            .await;
        if let Err(ImageError::DigestMismatch { .. }) = result {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    async fn download_to(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &OciDescriptor,
        partial: &Path,
        dest: &Path,
        stats: &Counters,
    ) -> Result<(), ImageError> {
        let registry = reference.resolve_registry().to_owned();
        let has_creds = creds.is_some() || self.config.credentials(&registry).is_some();
        let (client, auth) = self.client(&registry, creds)?;
        client.store_auth_if_needed(&registry, &auth).await;
        let expected_size = u64::try_from(desc.size).ok().filter(|s| *s > 0);
        let mismatch = |actual: String| ImageError::DigestMismatch {
            expected: desc.digest.clone(),
            actual,
        };

        // What an earlier attempt left, hashed again: a partial is data from disk too.
        let (mut offset, mut hasher) = {
            let p = partial.to_path_buf();
            super::blocking(move || hash_prefix(&p))
                .await?
                .map_err(ImageError::io(format!("read {}", partial.display())))?
        };
        if expected_size.is_some_and(|s| offset > s) {
            return Err(mismatch(format!(
                "a partial download longer than the {} bytes announced",
                desc.size
            )));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .await
            .map_err(ImageError::io(format!("open {}", partial.display())))?;
        let mut received: u64 = offset;
        if expected_size != Some(offset) {
            Counters::add(&stats.blob_fetches, 1);
            let mut stream = if offset > 0 {
                debug!(blob = %desc.digest, offset, size = desc.size, "resuming blob download");
                match client
                    .pull_blob_stream_partial(reference, desc, offset, None)
                    .await
                {
                    Ok(BlobResponse::Partial(s)) => {
                        Counters::add(&stats.blob_bytes_resumed, offset);
                        s
                    }
                    Ok(BlobResponse::Full(s)) => {
                        info!(blob = %desc.digest, "registry ignored the range; starting over");
                        file.set_len(0)
                            .await
                            .map_err(ImageError::io(format!("truncate {}", partial.display())))?;
                        (offset, hasher, received) = (0, Sha256::new(), 0);
                        s
                    }
                    // The range is past the blob's end: the partial cannot be a prefix.
                    Err(OciDistributionError::ServerError { code: 416, .. }) => {
                        return Err(mismatch(format!(
                            "a partial download of {offset} bytes the registry cannot continue"
                        )))
                    }
                    Err(e) => return Err(map_err(e, reference, has_creds)),
                }
            } else {
                debug!(blob = %desc.digest, size = desc.size, "downloading blob");
                client
                    .pull_blob_stream(reference, desc)
                    .await
                    .map_err(|e| map_err(e, reference, has_creds))?
            };
            let _ = offset;
            let streamed: Result<(), ImageError> = async {
                while let Some(chunk) = stream.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        // oci-client verifies full downloads too, and reports a mismatch
                        // at the end of the stream.
                        Err(e) if is_digest_error(&e) => {
                            return Err(mismatch(format!(
                                "sha256:{}",
                                hex::encode(hasher.clone().finalize())
                            )))
                        }
                        Err(e) => {
                            return Err(ImageError::Registry {
                                registry: registry.clone(),
                                reason: format!(
                                    "download of {} failed: {}",
                                    desc.digest,
                                    root_cause(&e)
                                ),
                            })
                        }
                    };
                    received += chunk.len() as u64;
                    Counters::add(&stats.blob_bytes, chunk.len() as u64);
                    if expected_size.is_some_and(|s| received > s) {
                        return Err(mismatch(format!(
                            "more than the {} bytes announced",
                            desc.size
                        )));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk)
                        .await
                        .map_err(ImageError::io(format!("write {}", partial.display())))?;
                }
                Ok(())
            }
            .await;
            // Whatever arrived is kept for the next attempt, so make sure it reached the file.
            let flushed = file
                .flush()
                .await
                .map_err(ImageError::io(format!("write {}", partial.display())));
            streamed?;
            flushed?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err(mismatch(actual));
        }
        if let Some(size) = expected_size {
            if received != size {
                return Err(mismatch(format!("{received} bytes instead of {size}")));
            }
        }
        file.sync_all()
            .await
            .map_err(ImageError::io(format!("sync {}", partial.display())))?;
        drop(file);
        // With the directory synced too: a blob verified before a power cut is there after.
        let (from, to) = (partial.to_path_buf(), dest.to_path_buf());
        super::blocking(move || crate::durable::rename(&from, &to))
            .await?
            .map_err(ImageError::io(format!("rename {}", partial.display())))?;
        info!(blob = %desc.digest, bytes = received, "blob downloaded and verified");
        Ok(())
    }
}

/// `<dest>.partial`.
pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// The length of an existing partial download and the hash of its bytes (0 and an empty
/// hash if there is none).
fn hash_prefix(path: &Path) -> std::io::Result<(u64, Sha256)> {
    let mut hasher = Sha256::new();
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher))
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

/// Whether a request failed because the server's certificate was not accepted. reqwest
/// hides rustls's error type behind io errors, so this reads the cause chain's text; the
/// phrases are rustls's `Display` for certificate and handshake errors.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("invalid peer certificate")
            || text.contains("unknownissuer")
            || text.contains("certificate")
            || text.contains("handshake")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether our TLS client got an answer that is not TLS (rustls: "received corrupt
/// message of type InvalidContentType"): a plain-HTTP server, typically.
fn is_plain_http(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("InvalidContentType") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Turns oci-client's errors into the user-facing kinds of [`ImageError`].
fn map_err(e: OciDistributionError, reference: &Reference, has_creds: bool) -> ImageError {
    let registry = reference.resolve_registry().to_owned();
    let not_found = || ImageError::NotFound(reference.whole());
    let unauthorized = || ImageError::Unauthorized {
        registry: registry.clone(),
        reference: reference.whole(),
        hint: if has_creds {
            "check the credentials for it"
        } else {
            "no credentials are configured for it"
        },
    };
    match e {
        // Reachable, but not TLS: "unreachable" (what reqwest's connect error suggests)
        // sent people looking at the network instead of the flag.
        OciDistributionError::RequestError(ref r) if is_plain_http(r) => ImageError::Registry {
            reason: format!(
                "it speaks plain HTTP, not HTTPS ({}); to pull from it over plain HTTP, start the agent with --insecure-registry {registry}",
                root_cause(r)
            ),
            registry,
        },
        OciDistributionError::RequestError(ref r) if is_tls(r) => ImageError::Tls {
            registry: registry.clone(),
            reason: root_cause(r),
        },
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
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            unauthorized()
        }
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
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch { expected, actual }
        }
        other => ImageError::Registry {
            registry,
            reason: other.to_string(),
        },
    }
}
