//! The store's directory layout, digest checks and crash-safe writes. All blocking.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::ImageError;

/// Paths of the store, rooted at one directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
    blobs: PathBuf,
    layers: PathBuf,
    refs: PathBuf,
}

/// The hex part of a `sha256:<64 lowercase hex>` digest. Digests come from registries and
/// become path components, so anything else is refused.
pub(crate) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(ImageError::InvalidDigest(digest.to_owned())),
    }
}

/// The mode of the store's files: readable by others as before; the store's root (0700, see
/// [`Layout::open`]) is what keeps them out.
pub(crate) const STORE_FILE: u32 = 0o644;

/// `sha256:<hex>` of a file's content.
pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Layout {
    /// Creates the directories and removes what a killed agent may have left half done:
    /// `.tmp-*` files and layer directories. `.partial` downloads stay: they are verified
    /// prefixes-to-be of blobs, resumed by the next pull (and hashed whole before use).
    pub(crate) fn open(root: &Path) -> Result<Self, ImageError> {
        let layout = Self {
            root: root.to_path_buf(),
            blobs: root.join("blobs").join("sha256"),
            layers: root.join("layers").join("sha256"),
            refs: root.join("refs"),
        };
        for dir in [&layout.blobs, &layout.layers, &layout.refs] {
            fs::create_dir_all(dir).map_err(ImageError::io(format!("create {}", dir.display())))?;
            sweep(dir)?;
        }
        // Layers hold what images hold: setuid-root files and device nodes. Only root may
        // walk to them on the host (containers see them through overlayfs, which checks
        // the layers with the mounter's credentials).
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io(format!("chmod {}", root.display())))?;
        Ok(layout)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The marker left by a panic while unpacking layer `digest` (crate::crash).
    pub(crate) fn quarantine(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("quarantine").join(digest_hex(digest)?))
    }

    pub(crate) fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    pub(crate) fn layers_dir(&self) -> &Path {
        &self.layers
    }

    pub(crate) fn refs_dir(&self) -> &Path {
        &self.refs
    }

    pub(crate) fn blob(&self, hex: &str) -> PathBuf {
        self.blobs.join(hex)
    }

    pub(crate) fn layer(&self, hex: &str) -> PathBuf {
        self.layers.join(hex)
    }

    pub(crate) fn ref_file(&self, key: &str) -> PathBuf {
        let hash = sha256_bytes(key.as_bytes());
        let hex = hash.trim_start_matches("sha256:");
        self.refs.join(format!("{hex}.json"))
    }

    /// The path of the blob if it is present and matches its digest. A blob that does not
    /// match is deleted, so that it is fetched again instead of used.
    pub(crate) fn verified_blob(&self, digest: &str) -> Result<Option<PathBuf>, ImageError> {
        let path = self.blob(digest_hex(digest)?);
        match sha256_file(&path) {
            Ok(actual) if actual == digest => Ok(Some(path)),
            Ok(actual) => {
                warn!(blob = %digest, %actual, "blob on disk is corrupt, deleting it");
                remove_file(&path)?;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("read {}", path.display()))(e)),
        }
    }

    /// The content of a blob if it is present and matches its digest (a corrupt one is
    /// deleted). Reads then hashes the very bytes it returns, so nothing unverified escapes.
    pub(crate) fn read_verified(&self, digest: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let path = self.blob(digest_hex(digest)?);
        match fs::read(&path) {
            Ok(bytes) => {
                let actual = sha256_bytes(&bytes);
                if actual == digest {
                    Ok(Some(bytes))
                } else {
                    warn!(blob = %digest, %actual, "blob on disk is corrupt, deleting it");
                    remove_file(&path)?;
                    Ok(None)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("read {}", path.display()))(e)),
        }
    }

    /// Stores bytes already known to hash to `digest` (a manifest), unless present.
    pub(crate) fn store_verified(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = sha256_bytes(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        if self.verified_blob(digest)?.is_some() {
            return Ok(());
        }
        let path = self.blob(digest_hex(digest)?);
        // Durably, like every file of the store: a node that reboots with no network must
        // still have the images it had.
        crate::durable::write(&path, bytes, STORE_FILE)
            .map_err(ImageError::io(format!("write {}", path.display())))
    }
}

fn remove_file(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(format!("remove {}", path.display()))(e)),
    }
}

/// Removes leftovers of interrupted work in `dir`: the temporary siblings of
/// [`crate::durable::temp_sibling`].
fn sweep(dir: &Path) -> Result<(), ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io(format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io(format!("list {}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.contains(".tmp-") {
            continue;
        }
        let path = entry.path();
        info!(path = %path.display(), "removing leftover of an interrupted pull");
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(ImageError::io(format!("remove {}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn digest_hex_refuses_non_sha256_and_paths() {
        assert!(digest_hex(D).is_ok());
        for bad in [
            "sha512:abcd",
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn corrupt_blob_is_deleted_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        layout.store_verified(D, b"hello").unwrap();
        assert_eq!(
            layout.read_verified(D).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        fs::write(layout.blob(digest_hex(D).unwrap()), b"hellO").unwrap();
        assert_eq!(layout.read_verified(D).unwrap(), None);
        assert!(!layout.blob(digest_hex(D).unwrap()).exists());
        assert!(layout.store_verified(D, b"other").is_err());
    }

    #[test]
    fn open_sweeps_leftovers_but_keeps_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let partial = layout.blobs.join("abc.partial");
        let tmp_layer = layout.layers.join("abc.tmp-1-0");
        let done_layer = layout.layers.join("abc");
        fs::write(&partial, b"half").unwrap();
        fs::create_dir_all(tmp_layer.join("etc")).unwrap();
        fs::create_dir_all(&done_layer).unwrap();
        Layout::open(dir.path()).unwrap();
        assert!(partial.exists(), "a partial download is resumed, not swept");
        assert!(!tmp_layer.exists());
        assert!(done_layer.exists());
    }
}
