//! Air-gapped image delivery: `baton image import` and a read-only registry.
//!
//! A site without internet still deploys: an operator imports an OCI image archive (a tar
//! of an OCI image layout, as `skopeo copy ... oci-archive:` or Docker 25+'s `docker save`
//! write; the CLI tars a layout directory on the fly) into the coordinator, and the
//! coordinator serves it to its agents on the standard Distribution API paths
//! (`/v2/<name>/manifests/<ref>`, `/v2/<name>/blobs/<digest>`, `/v2/<name>/tags/list`).
//! Agents use it as a registry mirror (`baton-agent --registry-mirror`).
//!
//! **Storage.** Blobs are content-addressed files, `<data-dir>/registry/blobs/sha256/<hex>`;
//! the index (image name -> top manifest, the manifests and blobs it needs, platforms,
//! size) is the store's [`crate::store::Table::Images`], keyed `repository:tag`. A blob is
//! kept while any image needs it (the refcount is computed from the index, so it can
//! never drift) and deleted with the last image that needed it.
//!
//! **Import is all or nothing.** The upload is streamed (never held in memory) straight
//! into a private `uploads/<id>/` directory, hashing each blob as it arrives; a blob whose
//! content does not hash to its name, a truncated archive, a missing blob or a manifest
//! that does not parse refuses the whole import. Only then are the blobs the images need
//! renamed into `blobs/` (each written with an fsync before its rename, then the
//! directory synced) and the index committed in one store transaction. A crash in between
//! leaves blobs no index entry names; [`Registry::open`] deletes them, and the upload
//! directory, at the next start.
//!
//! **Invariant: blobs are verified before they are stored or served.** Import hashes
//! every blob before it enters `blobs/`. Serving hashes a manifest on every read and a blob
//! once per process (again if its file changes), and refuses one that does not match
//! rather than send it: agents verify too, but a flipped bit on the coordinator's disk
//! should say so there.
//!
//! **Names.** Images are stored under the repository path agents will ask for, without a
//! registry host: `10.0.0.1:5000/baton/http-echo:1` is `baton/http-echo:1`, and Docker Hub
//! names are normalized as Docker does (`busybox:1` is `library/busybox:1`). A mirror
//! request for any registry's `baton/http-echo:1` is answered with the imported one.
//!
//! **Access.** The routes sit behind the API's token middleware: the registry paths are
//! `GET`/`HEAD`, so a `read-only` token pulls; import and delete need `admin`.
//!
//! **Agent releases** (issue 13) are the other artifacts the coordinator delivers: signed
//! agent binaries, content-addressed under `<data-dir>/releases/`, with their own index
//! table and the same all-or-nothing import (`releases`, served by `releases_api`). The
//! [`Registry`] holds the [`Releases`] so that both share one place in the server.
//!
//! **Files.** `names` normalizes image names; `oci` reads OCI layouts (indexes,
//! manifests, which image is called what); `archive` extracts and verifies an upload;
//! `image_store` is the [`Registry`] itself; `api` serves `/api/v1/images...` and
//! `distribution` the read-only `/v2/` paths. The CLI's side of an import (streaming a
//! layout as a tar) is `crate::cli::upload`.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use serde::{Deserialize, Serialize};

pub use crate::contract::images::ImageSummary;
use crate::store::StoreError;

mod api;
mod archive;
mod distribution;
mod image_store;
mod names;
mod oci;
mod releases;
mod releases_api;

pub use image_store::Registry;
pub use names::{normalize_name, valid_repository};
pub use oci::digest_hex;
pub use releases::{read_public_key, ReleaseStoreError, Releases, MAX_RELEASE_BYTES};

/// The largest archive `baton image import` accepts. A bound, so that a runaway upload
/// cannot fill the coordinator's disk; far above any image an edge device runs.
pub const MAX_IMPORT_BYTES: u64 = 8 << 30;
/// `index.json`, `oci-layout`, manifests and configs are small JSON documents.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// Nesting of indexes inside indexes that is followed.
const MAX_INDEX_DEPTH: usize = 3;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// containerd's and Docker's full image name, preferred over `ref.name`.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("not a readable tar archive ({0}); is the file truncated, compressed or not an OCI archive?")]
    Archive(String),
    #[error("the archive is truncated: {0} ends early")]
    Truncated(String),
    #[error("the archive has no index.json: not an OCI image layout (use `skopeo copy ... oci-archive:FILE`, or `docker save` of Docker 25 or newer)")]
    NoIndex,
    #[error("blob {digest} in the archive is corrupt: its content hashes to {actual}")]
    CorruptBlob { digest: String, actual: String },
    #[error("the archive lacks blob {0}, which a manifest needs (truncated or partial archive?)")]
    MissingBlob(String),
    #[error("blob {digest} has {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// The archive does not say what to call an image, or says it ambiguously.
    #[error("{0}")]
    Naming(String),
    #[error("the upload is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted: {0}")]
    Upload(String),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("blob {0} on the coordinator's disk does not match its digest: delete and import the image again")]
    CorruptOnDisk(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Release(#[from] ReleaseStoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl RegistryError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> RegistryError {
        let context = context.into();
        move |source| RegistryError::Io { context, source }
    }

    fn invalid(what: impl Into<String>, reason: impl ToString) -> RegistryError {
        RegistryError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// The HTTP status of the API answer.
    fn status(&self) -> StatusCode {
        match self {
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RegistryError::Release(e) => e.status(),
            RegistryError::Store(_)
            | RegistryError::Io { .. }
            | RegistryError::CorruptOnDisk(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// One imported image, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// `repository:tag`.
    pub name: String,
    /// Digest of the top manifest (an index for multi-platform images).
    pub digest: String,
    pub media_type: String,
    /// `os/arch[/variant]` of each image, sorted.
    pub platforms: Vec<String>,
    /// Every manifest this image serves (the top one and an index's children): media type
    /// by digest.
    pub manifests: BTreeMap<String, String>,
    /// Configs and layers: size by digest.
    pub blobs: BTreeMap<String, u64>,
    /// Bytes of every manifest and blob, each counted once.
    pub size: u64,
    pub creation_timestamp: String,
}

impl ImageRecord {
    pub fn repository(&self) -> &str {
        self.name.rsplit_once(':').map_or(&self.name, |(r, _)| r)
    }

    pub fn tag(&self) -> &str {
        self.name.rsplit_once(':').map_or("", |(_, t)| t)
    }

    fn digests(&self) -> impl Iterator<Item = &String> {
        self.manifests.keys().chain(self.blobs.keys())
    }
}

impl From<&ImageRecord> for ImageSummary {
    fn from(r: &ImageRecord) -> Self {
        ImageSummary {
            name: r.name.clone(),
            digest: r.digest.clone(),
            platforms: r.platforms.clone(),
            size: r.size,
            creation_timestamp: r.creation_timestamp.clone(),
        }
    }
}

/// The registry's routes, for [`crate::edge::http::router_with_images`] to put behind
/// its token middleware: the image API of [`crate::contract::routes`] (`ListImages`,
/// `ImportImages`, `DeleteImage`) and the Distribution paths:
///
/// ```text
/// GET    /v2/                                   {}
/// GET    /v2/NAME/manifests/TAG|DIGEST          the manifest, with its media type
/// GET    /v2/NAME/blobs/DIGEST                  the blob (Range: bytes=N-[M] honoured)
/// GET    /v2/NAME/tags/list                     {"name": NAME, "tags": [...]}
/// ```
///
/// `HEAD` works wherever `GET` does. Nothing under `/v2/` writes. The release API
/// (`ListReleases`, `ImportRelease`, `DeleteRelease`, `ReleaseBinary`) is served beside
/// them, from [`Registry::releases`].
pub fn routes<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    let releases = registry.releases();
    api::routes()
        .merge(distribution::routes())
        .layer(axum::Extension(registry))
        .merge(releases_api::routes().layer(axum::Extension(releases)))
}

/// Only `ReleaseBinary`, for the `--enroll-listen` listener, whose caller puts its own
/// check (a node's signature) in front.
pub fn release_download_routes<S: Clone + Send + Sync + 'static>(
    releases: Arc<Releases>,
) -> Router<S> {
    releases_api::download_routes().layer(axum::Extension(releases))
}

#[cfg(test)]
mod tests;
