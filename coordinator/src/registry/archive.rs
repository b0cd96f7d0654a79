//! Reading an uploaded archive: each blob hashed as it is written to a private upload
//! directory, and the small documents kept for the walk.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::oci::{digest_hex, LayoutJson};
use super::{RegistryError, MAX_JSON_BYTES};

/// What [`extract`] found in an archive.
#[derive(Debug, Default)]
pub(super) struct Extracted {
    pub(super) index: Option<Vec<u8>>,
    /// Verified blobs written into the directory: size by hex.
    pub(super) blobs: BTreeMap<String, u64>,
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
pub(super) fn extract(reader: impl Read, dir: &Path) -> Result<Extracted, RegistryError> {
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

pub(super) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    crate::store::durable::sync_dir(dir)
        .map_err(RegistryError::io(format!("sync {}", dir.display())))
}

/// A private upload directory, removed with everything in it when dropped.
pub(super) struct UploadDir(pub(super) PathBuf);

impl UploadDir {
    pub(super) fn new(parent: &Path) -> Result<Self, RegistryError> {
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

/// Why [`feed`] stopped before the end of the body.
#[derive(Debug)]
pub(super) enum FeedError {
    /// More than the limit arrived.
    TooLarge { limit: u64 },
    /// The body broke off (the client went away).
    Upload(String),
}

/// Sends an HTTP body's chunks to a [`ChannelReader`] on a blocking thread, at most
/// `limit` bytes. If the reader stops early (it refused the upload; its result says why),
/// the rest of the body is still read and discarded, up to the limit, so that the client
/// gets the refusal as an answer instead of a connection reset halfway through its upload.
pub(super) async fn feed<S, E>(
    mut body: S,
    tx: mpsc::Sender<Result<Bytes, String>>,
    limit: u64,
) -> Result<(), FeedError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let mut total = 0u64;
    let mut tx = Some(tx);
    loop {
        match body.next().await {
            None => return Ok(()),
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                if total > limit {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Err("the upload is too large".into())).await;
                    }
                    return Err(FeedError::TooLarge { limit });
                }
                if let Some(t) = &tx {
                    if t.send(Ok(chunk)).await.is_err() {
                        tx = None;
                    }
                }
            }
            Some(Err(e)) => {
                let msg = e.to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(msg.clone())).await;
                }
                return Err(FeedError::Upload(msg));
            }
        }
    }
}

/// A blocking [`Read`] over chunks sent from async code: how an HTTP body reaches the
/// synchronous tar reader without being buffered whole.
pub(super) struct ChannelReader {
    pub(super) rx: mpsc::Receiver<Result<Bytes, String>>,
    pub(super) chunk: Bytes,
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
