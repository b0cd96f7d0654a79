//! OCI image layouts: the documents (index.json, indexes, manifests), walking an image's
//! manifests to the blobs it needs, and deciding what each image in an archive is called.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;

use serde::Deserialize;

use super::names::normalize_name;
use super::{
    RegistryError, CONTAINERD_NAME, DOCKER_LIST, DOCKER_MANIFEST, MAX_INDEX_DEPTH, MAX_JSON_BYTES,
    OCI_INDEX, OCI_MANIFEST, OCI_REF_NAME,
};

#[derive(Clone, Debug, Deserialize)]
pub(super) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: u64,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) platform: Option<PlatformJson>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct PlatformJson {
    pub(super) os: String,
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
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
pub(super) struct IndexJson {
    #[serde(default)]
    pub(super) manifests: Vec<Descriptor>,
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
pub(super) struct LayoutJson {
    #[serde(rename = "imageLayoutVersion")]
    pub(super) version: String,
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
pub(super) struct Walk {
    pub(super) manifests: BTreeMap<String, String>,
    pub(super) blobs: BTreeMap<String, u64>,
    pub(super) platforms: BTreeSet<String>,
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
pub(super) fn walk(
    dir: &Path,
    d: &Descriptor,
    depth: usize,
    out: &mut Walk,
) -> Result<(), RegistryError> {
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
pub(super) fn plan_names(
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
