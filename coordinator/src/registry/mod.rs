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
//! size) is the store's [`Table::Images`], keyed `repository:tag`. A blob is kept while
//! any image needs it (the refcount is computed from the index, so it can never drift)
//! and deleted with the last image that needed it.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path as UrlPath, Query};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use crate::contract::images::ImageSummary;
use crate::store::{self, Op, Store, StoreError, Table};

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

// ---------------------------------------------------------------------------------------
// Names

fn valid_component(c: &str) -> bool {
    // Distribution: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter()
            .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
        && !c.contains("..")
}

fn valid_tag(t: &str) -> bool {
    // Distribution: [\w][\w.-]{0,127}
    let b = t.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || b"_.-".contains(&x))
}

/// Is `s` a valid repository path (`a/b/c`, lowercase)?
pub fn valid_repository(s: &str) -> bool {
    s.len() <= 255 && s.split('/').all(valid_component)
}

/// Splits an image name into the repository agents will ask for and its tag, if any:
/// a registry host is dropped and Docker Hub names are normalized as Docker does
/// (`busybox` -> `library/busybox`).
pub fn normalize_name(name: &str) -> Result<(String, Option<String>), RegistryError> {
    let bad = |reason: &str| RegistryError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.contains('@') {
        return Err(bad("a digest cannot name an image; use REPOSITORY:TAG"));
    }
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t.to_owned())),
        _ => (name, None),
    };
    if let Some(t) = &tag {
        if !valid_tag(t) {
            return Err(bad("a tag is 1-128 of letters, digits, '_', '.' and '-'"));
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let first = parts[0];
    let has_host =
        parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    let (host, rest) = if has_host {
        (Some(first), &parts[1..])
    } else {
        (None, &parts[..])
    };
    let docker_hub = matches!(
        host,
        None | Some("docker.io" | "index.docker.io" | "registry-1.docker.io")
    );
    let mut repo = rest.join("/");
    if docker_hub && rest.len() == 1 {
        repo = format!("library/{repo}");
    }
    if !valid_repository(&repo) {
        return Err(bad(
            "a repository is lowercase letters, digits and '.', '_', '-' between '/'",
        ));
    }
    Ok((repo, tag))
}

// ---------------------------------------------------------------------------------------
// OCI documents

#[derive(Clone, Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<PlatformJson>,
}

#[derive(Clone, Debug, Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl PlatformJson {
    fn render(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// A manifest or an index: which one is told by its media type, or else by its fields.
#[derive(Debug, Deserialize)]
struct ManifestJson {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct LayoutJson {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// The hex of a `sha256:<64 lowercase hex>` digest; anything else is refused, since
/// digests become file names.
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

fn is_manifest_type(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// What one image needs, found by walking its manifests.
#[derive(Debug, Default)]
struct Walk {
    manifests: BTreeMap<String, String>,
    blobs: BTreeMap<String, u64>,
    platforms: BTreeSet<String>,
}

/// Reads a small blob of `dir` whole, checking its size against the descriptor. Its digest
/// was checked when it was extracted.
fn read_small(dir: &Path, d: &Descriptor) -> Result<Vec<u8>, RegistryError> {
    let hex = digest_hex(&d.digest)
        .ok_or_else(|| RegistryError::invalid("descriptor", format!("digest {:?}", d.digest)))?;
    if d.size > MAX_JSON_BYTES {
        return Err(RegistryError::invalid(
            format!("manifest {}", d.digest),
            format!("{} bytes is too large", d.size),
        ));
    }
    let bytes = match fs::read(dir.join(hex)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RegistryError::MissingBlob(d.digest.clone()))
        }
        Err(e) => return Err(RegistryError::io(format!("read {}", d.digest))(e)),
    };
    if bytes.len() as u64 != d.size {
        return Err(RegistryError::SizeMismatch {
            digest: d.digest.clone(),
            expected: d.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

fn check_blob(dir: &Path, d: &Descriptor) -> Result<(), RegistryError> {
    let hex = digest_hex(&d.digest)
        .ok_or_else(|| RegistryError::invalid("descriptor", format!("digest {:?}", d.digest)))?;
    match fs::metadata(dir.join(hex)) {
        Ok(m) if m.len() == d.size => Ok(()),
        Ok(m) => Err(RegistryError::SizeMismatch {
            digest: d.digest.clone(),
            expected: d.size,
            actual: m.len(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(RegistryError::MissingBlob(d.digest.clone()))
        }
        Err(e) => Err(RegistryError::io(format!("stat {}", d.digest))(e)),
    }
}

/// Walks the manifest `d` (an index or an image manifest) in `dir`, checking that every
/// manifest parses and every blob is there with its announced size.
fn walk(dir: &Path, d: &Descriptor, depth: usize, out: &mut Walk) -> Result<(), RegistryError> {
    let bytes = read_small(dir, d)?;
    let m: ManifestJson = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::invalid(format!("manifest {}", d.digest), e))?;
    let media_type = m
        .media_type
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| (!d.media_type.is_empty()).then(|| d.media_type.clone()))
        .unwrap_or_else(|| {
            if m.manifests.is_some() {
                OCI_INDEX.to_owned()
            } else {
                OCI_MANIFEST.to_owned()
            }
        });
    if is_index_type(&media_type) {
        if depth >= MAX_INDEX_DEPTH {
            return Err(RegistryError::invalid(
                format!("index {}", d.digest),
                "indexes nested too deep",
            ));
        }
        out.manifests.insert(d.digest.clone(), media_type);
        for child in m.manifests.unwrap_or_default() {
            if let Some(p) = &child.platform {
                if p.os != "unknown" {
                    out.platforms.insert(p.render());
                }
            }
            walk(dir, &child, depth + 1, out)?;
        }
        return Ok(());
    }
    if !is_manifest_type(&media_type) {
        return Err(RegistryError::invalid(
            format!("manifest {}", d.digest),
            format!("unsupported media type {media_type}"),
        ));
    }
    let config = m.config.ok_or_else(|| {
        RegistryError::invalid(format!("manifest {}", d.digest), "no config descriptor")
    })?;
    out.manifests.insert(d.digest.clone(), media_type);
    if depth == 0 {
        // A single-platform image: its platform is in its config.
        #[derive(Deserialize)]
        struct ConfigPlatform {
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            variant: Option<String>,
        }
        let bytes = read_small(dir, &config)?;
        if let Ok(c) = serde_json::from_slice::<ConfigPlatform>(&bytes) {
            if !c.os.is_empty() {
                let p = PlatformJson {
                    os: c.os,
                    architecture: c.architecture,
                    variant: c.variant,
                };
                out.platforms.insert(p.render());
            }
        }
    } else {
        check_blob(dir, &config)?;
    }
    out.blobs.insert(config.digest.clone(), config.size);
    for l in m.layers {
        check_blob(dir, &l)?;
        out.blobs.insert(l.digest.clone(), l.size);
    }
    Ok(())
}

/// The name an index.json entry gives itself: a full name, or only a tag.
enum EntryName {
    Full(String),
    Tag(String),
    None,
}

fn entry_name(d: &Descriptor) -> EntryName {
    if let Some(n) = d.annotations.get(CONTAINERD_NAME).filter(|n| !n.is_empty()) {
        return EntryName::Full(n.clone());
    }
    match d.annotations.get(OCI_REF_NAME) {
        // Tags cannot hold '/' or ':', so either makes it a name.
        Some(n) if n.contains('/') || n.contains(':') => EntryName::Full(n.clone()),
        Some(n) if !n.is_empty() => EntryName::Tag(n.clone()),
        _ => EntryName::None,
    }
}

/// Decides the `repository:tag` of each image in index.json, from its annotations and the
/// operator's `--name` (`REPO:TAG` names one image, `REPO` gives every image's tag that
/// repository).
fn plan_names(
    entries: &[Descriptor],
    name: Option<&str>,
) -> Result<Vec<(String, Descriptor)>, RegistryError> {
    if entries.is_empty() {
        return Err(RegistryError::Naming(
            "the archive's index.json lists no image".into(),
        ));
    }
    let tag_of = |e: &Descriptor| -> Result<Option<String>, RegistryError> {
        Ok(match entry_name(e) {
            EntryName::Full(n) => normalize_name(&n)?.1,
            EntryName::Tag(t) => Some(t),
            EntryName::None => None,
        })
    };
    let tags: Vec<String> = entries
        .iter()
        .filter_map(|e| tag_of(e).ok().flatten())
        .collect();
    let mut out = Vec::new();
    match name {
        Some(n) => {
            let (repo, tag) = normalize_name(n)?;
            match tag {
                Some(tag) => {
                    let mut pick = None;
                    for e in entries {
                        if tag_of(e)?.as_deref() == Some(tag.as_str()) {
                            pick = Some(e);
                        }
                    }
                    let pick = match (pick, entries) {
                        (Some(e), _) => e,
                        (None, [only]) => only,
                        (None, _) => {
                            return Err(RegistryError::Naming(format!(
                                "the archive holds {} images (tags: {}) and none is tagged {tag:?}: pass --name {repo}:TAG with one of those tags, or --name {repo} to import them all",
                                entries.len(),
                                tags.join(", ")
                            )))
                        }
                    };
                    out.push((format!("{repo}:{tag}"), pick.clone()));
                }
                None => {
                    for e in entries {
                        let tag = match tag_of(e)? {
                            Some(t) => t,
                            None if entries.len() == 1 => "latest".to_owned(),
                            None => {
                                return Err(RegistryError::Naming(format!(
                                    "image {} in the archive has no tag: pass --name {repo}:TAG",
                                    e.digest
                                )))
                            }
                        };
                        out.push((format!("{repo}:{tag}"), e.clone()));
                    }
                }
            }
        }
        None => {
            for e in entries {
                match entry_name(e) {
                    EntryName::Full(n) => {
                        let (repo, tag) = normalize_name(&n)?;
                        let tag = tag.unwrap_or_else(|| "latest".to_owned());
                        out.push((format!("{repo}:{tag}"), e.clone()));
                    }
                    EntryName::Tag(t) => {
                        return Err(RegistryError::Naming(format!(
                            "the archive names image {} only by its tag {t:?}: pass --name REPOSITORY (or --name REPOSITORY:TAG)",
                            e.digest
                        )))
                    }
                    EntryName::None => {
                        return Err(RegistryError::Naming(format!(
                            "image {} in the archive has no name: pass --name REPOSITORY:TAG",
                            e.digest
                        )))
                    }
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (n, _) in &out {
        if !seen.insert(n.clone()) {
            return Err(RegistryError::Naming(format!(
                "the archive holds two images named {n}"
            )));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Archive extraction

/// What [`extract`] found in an archive.
#[derive(Debug, Default)]
struct Extracted {
    index: Option<Vec<u8>>,
    /// Verified blobs written into the directory: size by hex.
    blobs: BTreeMap<String, u64>,
}

/// An archive member's path without `./` prefixes, `/`-joined.
fn member_path(p: &Path) -> String {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn read_member(entry: &mut impl Read, size: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    if size > MAX_JSON_BYTES {
        return Err(RegistryError::invalid(
            what,
            format!("{size} bytes is too large"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut buf)
        .map_err(|e| RegistryError::Archive(e.to_string()))?;
    if buf.len() as u64 != size {
        return Err(RegistryError::Truncated(what.to_owned()));
    }
    Ok(buf)
}

/// Reads a tar of an OCI image layout from `reader`, writing each `blobs/sha256/<hex>`
/// member to `dir/<hex>` (synced) after checking that its content hashes to its name.
/// Other members (Docker's `manifest.json`, directories) are ignored.
fn extract(reader: impl Read, dir: &Path) -> Result<Extracted, RegistryError> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Extracted::default();
    let entries = archive
        .entries()
        .map_err(|e| RegistryError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| RegistryError::Archive(e.to_string()))?;
        let path = member_path(
            &entry
                .path()
                .map_err(|e| RegistryError::Archive(e.to_string()))?,
        );
        let kind = entry.header().entry_type();
        let size = entry.size();
        if path == "index.json" {
            out.index = Some(read_member(&mut entry, size, "index.json")?);
        } else if path == "oci-layout" {
            let bytes = read_member(&mut entry, size, "oci-layout")?;
            let l: LayoutJson = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::invalid("oci-layout", e))?;
            if !l.version.starts_with("1.") {
                return Err(RegistryError::invalid(
                    "oci-layout",
                    format!("image layout version {} is not supported", l.version),
                ));
            }
        } else if let Some(name) = path.strip_prefix("blobs/sha256/") {
            if kind.is_dir() {
                continue;
            }
            let digest = format!("sha256:{name}");
            if digest_hex(&digest).is_none() {
                return Err(RegistryError::invalid(
                    format!("archive member {path}"),
                    "not a sha256 digest",
                ));
            }
            if !kind.is_file() {
                return Err(RegistryError::invalid(
                    format!("archive member {path}"),
                    "a blob must be a regular file",
                ));
            }
            let (written, actual) = write_hashed(&mut entry, &dir.join(name), &path)?;
            if written != size {
                return Err(RegistryError::Truncated(path));
            }
            if actual != digest {
                return Err(RegistryError::CorruptBlob { digest, actual });
            }
            out.blobs.insert(name.to_owned(), size);
        }
    }
    Ok(out)
}

/// Copies `from` into a new file at `to`, synced, and returns its length and digest.
fn write_hashed(
    from: &mut impl Read,
    to: &Path,
    what: &str,
) -> Result<(u64, String), RegistryError> {
    let mut f =
        fs::File::create(to).map_err(RegistryError::io(format!("create {}", to.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(RegistryError::Truncated(what.to_owned()))
            }
            Err(e) => return Err(RegistryError::Archive(e.to_string())),
        };
        hasher.update(&buf[..k]);
        f.write_all(&buf[..k])
            .map_err(RegistryError::io(format!("write {}", to.display())))?;
        n += k as u64;
    }
    f.sync_all()
        .map_err(RegistryError::io(format!("sync {}", to.display())))?;
    Ok((n, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(RegistryError::io(format!("sync {}", dir.display())))
}

/// A private upload directory, removed with everything in it when dropped.
struct UploadDir(PathBuf);

impl UploadDir {
    fn new(parent: &Path) -> Result<Self, RegistryError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = parent.join(format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(RegistryError::io(format!("create {}", dir.display())))?;
        Ok(UploadDir(dir))
    }
}

impl Drop for UploadDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove an upload directory");
        }
    }
}

/// A blocking [`Read`] over chunks sent from async code: how an HTTP body reaches the
/// synchronous tar reader without being buffered whole.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// The registry

/// The coordinator's image store. Shared by the HTTP handlers (like [`crate::security::auth::Tokens`],
/// it is not routed through the core, which never reads its table).
pub struct Registry {
    blobs: PathBuf,
    uploads: PathBuf,
    store: Arc<dyn Store>,
    max_import_bytes: u64,
    /// Records by name. A std mutex: never held across an await.
    images: Mutex<BTreeMap<String, ImageRecord>>,
    /// Serialises the commit of imports and deletes, which move and remove blobs by
    /// refcount. Taken on blocking threads only.
    commit: Mutex<()>,
    /// Blobs hashed since start, with the (length, mtime) they had then.
    verified: Mutex<HashMap<String, (u64, Option<SystemTime>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before it can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Opens `<data_dir>/registry`, loads the index, and removes what an interrupted import
    /// or delete left: the upload directory and blobs no image needs.
    pub fn open(data_dir: &Path, store: Arc<dyn Store>) -> Result<Self, RegistryError> {
        let root = data_dir.join("registry");
        let blobs = root.join("blobs").join("sha256");
        let uploads = root.join("uploads");
        let _ = fs::remove_dir_all(&uploads);
        for d in [&blobs, &uploads] {
            fs::create_dir_all(d).map_err(RegistryError::io(format!("create {}", d.display())))?;
        }
        let mut images = BTreeMap::new();
        for rec in store::list_json::<ImageRecord>(store.as_ref(), Table::Images)? {
            images.insert(rec.name.clone(), rec);
        }
        let reg = Registry {
            blobs,
            uploads,
            store,
            max_import_bytes: MAX_IMPORT_BYTES,
            images: Mutex::new(images),
            commit: Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
        };
        reg.sweep()?;
        Ok(reg)
    }

    /// The same registry with another upload limit (tests).
    pub fn with_max_import_bytes(mut self, max: u64) -> Self {
        self.max_import_bytes = max;
        self
    }

    fn referenced(images: &BTreeMap<String, ImageRecord>) -> BTreeSet<String> {
        images.values().flat_map(|r| r.digests().cloned()).collect()
    }

    /// Deletes blob files no image needs (and temporary files).
    fn sweep(&self) -> Result<(), RegistryError> {
        let keep = Self::referenced(&lock(&self.images));
        let entries = fs::read_dir(&self.blobs)
            .map_err(RegistryError::io(format!("list {}", self.blobs.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                tracing::info!(blob = %name, "removing a blob no imported image needs");
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|h| self.blobs.join(h))
    }

    /// Every imported image, by name.
    pub fn list(&self) -> Vec<ImageSummary> {
        lock(&self.images)
            .values()
            .map(ImageSummary::from)
            .collect()
    }

    /// Blocking: imports the tar archive read from `reader`, all or nothing, and returns the
    /// images it added or replaced.
    pub fn import_reader(
        &self,
        reader: impl Read,
        name: Option<&str>,
    ) -> Result<Vec<ImageSummary>, RegistryError> {
        let upload = UploadDir::new(&self.uploads)?;
        let ex = extract(reader, &upload.0)?;
        let index = ex.index.ok_or(RegistryError::NoIndex)?;
        let index: IndexJson =
            serde_json::from_slice(&index).map_err(|e| RegistryError::invalid("index.json", e))?;
        let planned = plan_names(&index.manifests, name)?;
        let now = crate::model::api::now_rfc3339();
        let mut records = Vec::new();
        for (name, desc) in planned {
            let mut w = Walk::default();
            walk(&upload.0, &desc, 0, &mut w)?;
            let size = w
                .manifests
                .keys()
                .chain(w.blobs.keys())
                .filter_map(|d| digest_hex(d))
                .filter_map(|h| ex.blobs.get(h))
                .sum();
            records.push(ImageRecord {
                name,
                digest: desc.digest.clone(),
                media_type: w
                    .manifests
                    .get(&desc.digest)
                    .cloned()
                    .unwrap_or_else(|| OCI_MANIFEST.to_owned()),
                platforms: w.platforms.into_iter().collect(),
                manifests: w.manifests,
                blobs: w.blobs,
                size,
                creation_timestamp: now.clone(),
            });
        }
        self.commit_import(&upload.0, records)
    }

    /// Moves the records' blobs from the upload directory into the store, commits the
    /// records, and drops blobs only replaced images needed.
    fn commit_import(
        &self,
        dir: &Path,
        records: Vec<ImageRecord>,
    ) -> Result<Vec<ImageSummary>, RegistryError> {
        let _one = lock(&self.commit);
        let needed: BTreeSet<&String> = records.iter().flat_map(|r| r.digests()).collect();
        for d in &needed {
            let Some(hex) = digest_hex(d) else { continue };
            let (from, to) = (dir.join(hex), self.blobs.join(hex));
            fs::rename(&from, &to).map_err(RegistryError::io(format!(
                "move {} to {}",
                from.display(),
                to.display()
            )))?;
            lock(&self.verified).remove(d.as_str());
        }
        sync_dir(&self.blobs)?;
        let ops = records
            .iter()
            .map(|r| store::put_json(Table::Images, &r.name, r))
            .collect::<Result<Vec<Op>, _>>()?;
        if let Err(e) = self.store.commit(ops) {
            // Nothing refers to the moved blobs: remove those no image had before.
            let keep = Self::referenced(&lock(&self.images));
            for d in needed.iter().filter(|d| !keep.contains(d.as_str())) {
                if let Some(p) = self.blob_path(d) {
                    let _ = fs::remove_file(p);
                }
            }
            return Err(e.into());
        }
        let mut images = lock(&self.images);
        let mut replaced = Vec::new();
        for r in &records {
            tracing::info!(image = %r.name, digest = %r.digest, size = r.size, "image imported");
            if let Some(old) = images.insert(r.name.clone(), r.clone()) {
                replaced.push(old);
            }
        }
        self.drop_unreferenced(&images, replaced.iter());
        Ok(records.iter().map(ImageSummary::from).collect())
    }

    /// Deletes the blobs of `gone` that no image in `images` needs any more.
    fn drop_unreferenced<'a>(
        &self,
        images: &BTreeMap<String, ImageRecord>,
        gone: impl Iterator<Item = &'a ImageRecord>,
    ) {
        let keep = Self::referenced(images);
        for d in gone.flat_map(|r| r.digests()) {
            if keep.contains(d) {
                continue;
            }
            if let Some(p) = self.blob_path(d) {
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(blob = %d, error = %e, "cannot remove an unused blob"),
                }
            }
            lock(&self.verified).remove(d);
        }
    }

    /// Blocking: removes the image `name` (`repository:tag`, normalized like imports) and
    /// the blobs no other image needs.
    pub fn delete(&self, name: &str) -> Result<ImageSummary, RegistryError> {
        let (repo, tag) = normalize_name(name)?;
        let key = format!("{repo}:{}", tag.as_deref().unwrap_or("latest"));
        let _one = lock(&self.commit);
        let Some(rec) = lock(&self.images).get(&key).cloned() else {
            return Err(RegistryError::NotFound(name.to_owned()));
        };
        self.store
            .commit(vec![Op::Delete(Table::Images, key.clone())])?;
        let mut images = lock(&self.images);
        images.remove(&key);
        self.drop_unreferenced(&images, std::iter::once(&rec));
        tracing::info!(image = %key, "image deleted");
        Ok(ImageSummary::from(&rec))
    }

    /// Imports an archive arriving as a stream of chunks (an HTTP body), without holding
    /// it in memory: the chunks feed [`Registry::import_reader`] on a blocking thread.
    ///
    /// If the import fails early (a corrupt blob, say), the rest of the body is still read
    /// and discarded, up to the size limit, so that the client gets the error as an answer
    /// instead of a connection reset halfway through its upload.
    pub async fn import_stream<S, E>(
        self: Arc<Self>,
        mut body: S,
        name: Option<String>,
    ) -> Result<Vec<ImageSummary>, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(16);
        let reg = Arc::clone(&self);
        let task = tokio::task::spawn_blocking(move || {
            reg.import_reader(
                ChannelReader {
                    rx,
                    chunk: Bytes::new(),
                },
                name.as_deref(),
            )
        });
        let limit = self.max_import_bytes;
        let mut total = 0u64;
        let mut tx = Some(tx);
        let fed: Result<(), RegistryError> = loop {
            match body.next().await {
                None => break Ok(()),
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    if total > limit {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Err("the upload is too large".into())).await;
                        }
                        break Err(RegistryError::TooLarge { limit });
                    }
                    if let Some(t) = &tx {
                        if t.send(Ok(chunk)).await.is_err() {
                            // The import stopped (its result says why); drain the body.
                            tx = None;
                        }
                    }
                }
                Some(Err(e)) => {
                    let msg = e.to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Err(msg.clone())).await;
                    }
                    break Err(RegistryError::Upload(msg));
                }
            }
        };
        drop(tx);
        let result = task
            .await
            .map_err(|e| RegistryError::Upload(format!("import task failed: {e}")))?;
        fed?;
        result
    }

    /// The records of `repo`.
    fn repo_images(&self, repo: &str) -> Vec<ImageRecord> {
        lock(&self.images)
            .values()
            .filter(|r| r.repository() == repo)
            .cloned()
            .collect()
    }

    /// Blocking: the path and length of a blob, hashed first unless it was since it last
    /// changed.
    fn verified_blob(&self, digest: &str) -> Result<(PathBuf, u64), RegistryError> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| RegistryError::NotFound(digest.to_owned()))?;
        let meta = fs::metadata(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RegistryError::NotFound(digest.to_owned())
            } else {
                RegistryError::io(format!("stat {}", path.display()))(e)
            }
        })?;
        let stamp = (meta.len(), meta.modified().ok());
        if lock(&self.verified).get(digest) == Some(&stamp) {
            return Ok((path, meta.len()));
        }
        let actual =
            sha256_file(&path).map_err(RegistryError::io(format!("read {}", path.display())))?;
        if actual != digest {
            tracing::error!(blob = %digest, %actual, "blob on disk does not match its digest; not serving it");
            return Err(RegistryError::CorruptOnDisk(digest.to_owned()));
        }
        lock(&self.verified).insert(digest.to_owned(), stamp);
        Ok((path, meta.len()))
    }

    /// Blocking: a manifest's bytes, hashed on every read (they are small).
    fn verified_manifest(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| RegistryError::NotFound(digest.to_owned()))?;
        let bytes =
            fs::read(&path).map_err(RegistryError::io(format!("read {}", path.display())))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            tracing::error!(manifest = %digest, %actual, "manifest on disk does not match its digest; not serving it");
            return Err(RegistryError::CorruptOnDisk(digest.to_owned()));
        }
        Ok(bytes)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: the API (`/api/v1/images...`) and the Distribution paths (`/v2/...`)

/// The registry's routes, for [`crate::edge::http::router_with_images`] to put behind its token
/// middleware:
///
/// ```text
/// GET    /api/v1/images                         {"items": [ImageSummary, ...]}
/// POST   /api/v1/images/import[?name=REPO[:TAG]] body: the archive (tar) -> {"items": [...]}
/// DELETE /api/v1/images/REPO:TAG                {"deleted": ImageSummary}
/// GET    /v2/                                   {}
/// GET    /v2/NAME/manifests/TAG|DIGEST          the manifest, with its media type
/// GET    /v2/NAME/blobs/DIGEST                  the blob (Range: bytes=N-[M] honoured)
/// GET    /v2/NAME/tags/list                     {"name": NAME, "tags": [...]}
/// ```
///
/// `HEAD` works wherever `GET` does. Nothing under `/v2/` writes.
pub fn routes<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    Router::new()
        .route("/api/v1/images", get(list_images))
        .route("/api/v1/images/import", post(import))
        .route("/api/v1/images/{*name}", delete(delete_image))
        .route("/v2/", get(v2_root))
        .route("/v2", get(v2_root))
        .route("/v2/{*rest}", get(v2))
        .layer(Extension(registry))
}

fn api_error(e: RegistryError) -> Response {
    (e.status(), Json(json!({ "error": e.to_string() }))).into_response()
}

async fn list_images(Extension(reg): Extension<Arc<Registry>>) -> Response {
    Json(json!({ "items": reg.list() })).into_response()
}

#[derive(Deserialize)]
struct ImportQuery {
    name: Option<String>,
}

async fn import(
    Extension(reg): Extension<Arc<Registry>>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    match reg
        .import_stream(body.into_data_stream(), q.name.filter(|n| !n.is_empty()))
        .await
    {
        Ok(items) => {
            tracing::info!(
                images = items.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "import done"
            );
            Json(json!({ "items": items })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "image import refused");
            api_error(e)
        }
    }
}

async fn delete_image(
    Extension(reg): Extension<Arc<Registry>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match tokio::task::spawn_blocking(move || reg.delete(&name)).await {
        Ok(Ok(s)) => Json(json!({ "deleted": s })).into_response(),
        Ok(Err(e)) => api_error(e),
        Err(e) => api_error(RegistryError::Upload(format!("delete task failed: {e}"))),
    }
}

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// A Distribution error body: `{"errors": [{"code", "message", "detail"}]}`.
fn dist_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "errors": [{ "code": code, "message": message.into(), "detail": null }] });
    (status, [API_VERSION], Json(body)).into_response()
}

fn dist_failure(e: RegistryError, unknown: &str) -> Response {
    match e {
        RegistryError::NotFound(what) => {
            dist_error(StatusCode::NOT_FOUND, unknown, format!("{what} not found"))
        }
        other => dist_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            other.to_string(),
        ),
    }
}

async fn v2_root() -> Response {
    (StatusCode::OK, [API_VERSION], Json(json!({}))).into_response()
}

/// The Distribution routes whose repository name has slashes in it.
async fn v2(
    Extension(reg): Extension<Arc<Registry>>,
    method: Method,
    headers: HeaderMap,
    UrlPath(rest): UrlPath<String>,
) -> Response {
    let head = method == Method::HEAD;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return tags_list(&reg, name);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return manifest(reg, name, reference, head).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if digest.starts_with("uploads") {
            return dist_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is read-only: import images with `baton image import`",
            );
        }
        return blob(reg, name, digest, head, &headers).await;
    }
    dist_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        format!("no route for /v2/{rest}"),
    )
}

fn tags_list(reg: &Registry, name: &str) -> Response {
    let images = reg.repo_images(name);
    if images.is_empty() {
        return dist_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {name} is not known"),
        );
    }
    let tags: Vec<&str> = images.iter().map(ImageRecord::tag).collect();
    (
        StatusCode::OK,
        [API_VERSION],
        Json(json!({ "name": name, "tags": tags })),
    )
        .into_response()
}

fn digest_headers(
    status: StatusCode,
    content_type: &str,
    digest: &str,
    len: u64,
) -> axum::http::response::Builder {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest)
        .header(API_VERSION.0, API_VERSION.1);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        b = b.header(header::ETAG, etag);
    }
    b
}

async fn manifest(reg: Arc<Registry>, name: &str, reference: &str, head: bool) -> Response {
    let images = reg.repo_images(name);
    let found = if reference.starts_with("sha256:") {
        images.iter().find_map(|r| {
            r.manifests
                .get(reference)
                .map(|mt| (reference.to_owned(), mt.clone()))
        })
    } else {
        images
            .iter()
            .find(|r| r.tag() == reference)
            .map(|r| (r.digest.clone(), r.media_type.clone()))
    };
    let Some((digest, media_type)) = found else {
        return dist_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {name}:{reference} is not known"),
        );
    };
    let d = digest.clone();
    let bytes = match tokio::task::spawn_blocking(move || reg.verified_manifest(&d)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return dist_failure(e, "MANIFEST_UNKNOWN"),
        Err(e) => return dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()),
    };
    let len = bytes.len() as u64;
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    digest_headers(StatusCode::OK, &media_type, &digest, len)
        .body(body)
        .unwrap_or_else(|e| dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))
}

/// A single `bytes=START-[END]` range, clamped to `len`; `Err(())` if it cannot be served.
fn parse_range(value: &str, len: u64) -> Result<(u64, u64), ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    let (start, end) = spec.split_once('-').ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            // The last N bytes.
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.saturating_sub(1)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok((start, end))
}

async fn blob(
    reg: Arc<Registry>,
    name: &str,
    digest: &str,
    head: bool,
    headers: &HeaderMap,
) -> Response {
    let known = reg
        .repo_images(name)
        .iter()
        .any(|r| r.blobs.contains_key(digest) || r.manifests.contains_key(digest));
    if !known {
        return dist_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not known in {name}"),
        );
    }
    let d = digest.to_owned();
    let (path, len) = match tokio::task::spawn_blocking(move || reg.verified_blob(&d)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return dist_failure(e, "BLOB_UNKNOWN"),
        Err(e) => return dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(Err(())) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|e| {
                    dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
                })
        }
    };
    let mut b = digest_headers(status, "application/octet-stream", digest, count)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        match file_stream(&path, start, count).await {
            Ok(s) => Body::from_stream(s),
            Err(e) => {
                return dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
            }
        }
    };
    b.body(body)
        .unwrap_or_else(|e| dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))
}

/// `count` bytes of `path` from `start`, as a stream of chunks.
async fn file_stream(
    path: &Path,
    start: u64,
    count: u64,
) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(io::SeekFrom::Start(start)).await?;
    Ok(futures::stream::try_unfold(
        (f, count),
        |(mut f, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; left.min(256 * 1024) as usize];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shrank",
                ));
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), (f, left - n as u64))))
        },
    ))
}

// ---------------------------------------------------------------------------------------
// Client side: what `baton image import` uploads

/// The body `baton image import PATH` uploads: the file itself if `path` is an archive, or
/// a tar of `path` built on the fly if it is an OCI layout directory (only `oci-layout`,
/// `index.json` and `blobs/sha256/*` go in). Streamed either way, never held in memory.
pub async fn upload_body(path: &Path) -> Result<reqwest::Body, RegistryError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(RegistryError::io(format!("cannot read {}", path.display())))?;
    if !meta.is_dir() {
        let f = tokio::fs::File::open(path)
            .await
            .map_err(RegistryError::io(format!("cannot open {}", path.display())))?;
        let stream = futures::stream::try_unfold(f, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), f)))
        });
        return Ok(reqwest::Body::wrap_stream(stream));
    }
    if !path.join("index.json").is_file() {
        return Err(RegistryError::NoIndex);
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let dir = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let result = tar_layout(&dir, &mut w).and_then(|()| w.flush());
        if let Err(e) = result {
            // The server sees a broken body and refuses the import.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Writes a tar of the OCI layout at `dir` to `w`.
fn tar_layout(dir: &Path, w: &mut impl Write) -> io::Result<()> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Deterministic);
    for name in ["oci-layout", "index.json"] {
        let p = dir.join(name);
        if p.is_file() {
            b.append_path_with_name(&p, name)?;
        }
    }
    let blobs = dir.join("blobs").join("sha256");
    let mut names: Vec<_> = fs::read_dir(&blobs)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let p = blobs.join(&n);
        if p.is_file() {
            b.append_path_with_name(&p, Path::new("blobs/sha256").join(&n))?;
        }
    }
    b.into_inner()?.flush()
}

/// A blocking [`Write`] that sends 256 KiB chunks to an async receiver.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

#[cfg(test)]
mod tests;
