//! Unpacking layer tarballs into directories overlayfs can stack.
//!
//! Layers mark deletions with AUFS-style whiteout files; overlayfs wants its own markers:
//! - `dir/.wh.<name>` becomes a character device 0:0 named `dir/<name>`;
//! - `dir/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on `dir`.
//!
//! Layers come from the network, so nothing outside the layer's own (temporary) directory
//! is ever created, changed or removed, whatever the tarball holds:
//! - absolute paths and `..` are refused, in entry names and hard link targets;
//! - a whiteout names exactly one file in its directory: `.wh.`, `.wh..` and `.wh...` are
//!   refused (`.wh...` once made the agent remove `<layer tmp>/..`, every layer of the node);
//! - nothing is created through a symlink that leads out of the layer (regular entries go
//!   through tar's `unpack_in`, which checks the canonical parent and the canonical hard link
//!   target; the nodes and markers created here walk the parent components without following
//!   symlinks, and xattrs are set with `lsetxattr`);
//! - device nodes lose setuid, setgid and sticky bits; setuid files keep theirs (images need
//!   them), and the store's root is 0700 ([`super::layout`]) so no other host user reaches
//!   them or the nodes;
//! - every byte written is charged to a [`Meter`] before it is written, so a layer that
//!   expands past the disk budget stops within one read buffer (see [`super::meter`]).
//!
//! Overlay's own xattrs (`trusted.overlay.*`) are never taken from a tarball: they would let
//! a layer forge redirects or metacopy files. `hostile` (tests and the fuzz target) feeds
//! arbitrary entries and checks that the outside stays as it was.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest, Sha256};
use tar::EntryType;
use tracing::{debug, warn};

use super::ImageError;
use crate::durable::{self, temp_sibling};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
/// An entry name that panics the unpack in tests.
#[cfg(test)]
pub(crate) const PANIC_IN_TESTS: &str = "baton-test-panic";
/// Symlink targets this long get a data block of their own on ext4.
const EXT4_FAST_SYMLINK: usize = 60;

/// Whether the store can unpack layers of this media type. The payload is sniffed anyway
/// (gzip or plain tar), so this only rules out what cannot work: zstd, and non-layers.
pub(crate) fn supported_media_type(media_type: &str) -> bool {
    let mt = media_type.to_ascii_lowercase();
    !mt.contains("zstd") && (mt.contains("tar") || mt.ends_with("layer.v1"))
}

/// Counts what an unpack writes.
pub(crate) trait Meter {
    /// `bytes` more are about to be written; an error (normally [`ImageError::DiskBudget`])
    /// stops the unpack before they are.
    fn charge(&self, bytes: u64) -> Result<(), ImageError>;
}

/// A meter with an optional fixed limit, for tests and fuzzing: counts what was charged.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Default)]
pub(crate) struct Tally {
    pub limit: Option<u64>,
    pub charged: std::cell::Cell<u64>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Meter for Tally {
    fn charge(&self, bytes: u64) -> Result<(), ImageError> {
        let now = self.charged.get().saturating_add(bytes);
        self.charged.set(now);
        match self.limit {
            Some(limit) if now > limit => Err(ImageError::DiskBudget(format!(
                "layer would use more than {limit} B"
            ))),
            _ => Ok(()),
        }
    }
}

/// Unpacks the layer blob into `dest`, which must not exist yet: into a temporary sibling
/// first, checked against `diff_id` (the digest of the uncompressed tar), synced to disk and
/// renamed into place, so that `dest` existing means the layer is complete. Whatever fails
/// (a hostile entry, the budget), the temporary directory is removed.
pub(crate) fn unpack_layer(
    blob: &Path,
    dest: &Path,
    digest: &str,
    diff_id: &str,
    meter: &dyn Meter,
) -> Result<(), ImageError> {
    let tmp = temp_sibling(dest);
    fs::create_dir(&tmp).map_err(ImageError::io(format!("create {}", tmp.display())))?;
    let result = (|| {
        let actual = extract(blob, &tmp, digest, meter)?;
        if actual != diff_id {
            return Err(ImageError::InvalidLayer {
                digest: digest.to_owned(),
                reason: format!(
                    "uncompressed content is {actual}, the image config says {diff_id}"
                ),
            });
        }
        // One syncfs instead of an fsync per file: a power cut after the rename must not
        // leave a layer directory that exists but holds empty files.
        let dir =
            fs::File::open(&tmp).map_err(ImageError::io(format!("open {}", tmp.display())))?;
        nix::unistd::syncfs(dir.as_raw_fd())
            .map_err(|e| ImageError::io(format!("sync {}", tmp.display()))(io::Error::from(e)))?;
        // The directory too: a layer that was there before a power cut is there after.
        durable::rename(&tmp, dest).map_err(ImageError::io(format!("rename to {}", dest.display())))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// A reader that hashes what passes through it and charges it to the meter before handing
/// it on: tar writes file data as it reads it, so nothing is written past a refusal. (The
/// tar stream is at least the data it holds, headers and padding included; what it does
/// not cover, block rounding and directories, is charged per entry.)
struct Hashing<'m, R> {
    inner: R,
    hasher: Sha256,
    meter: &'m dyn Meter,
    refused: &'m RefCell<Option<ImageError>>,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.meter.charge(n as u64) {
            *self.refused.borrow_mut() = Some(e);
            return Err(io::Error::other("stopped by the disk budget"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Extracts the (gzip or plain) tarball `blob` into `root`; returns the `sha256:` digest of
/// the uncompressed tar.
pub(crate) fn extract(
    blob: &Path,
    root: &Path,
    digest: &str,
    meter: &dyn Meter,
) -> Result<String, ImageError> {
    let file = fs::File::open(blob).map_err(ImageError::io(format!("open {}", blob.display())))?;
    let mut reader = BufReader::new(file);
    let head = reader
        .fill_buf()
        .map_err(ImageError::io(format!("read {}", blob.display())))?;
    let bad = |reason: String| ImageError::InvalidLayer {
        digest: digest.to_owned(),
        reason,
    };
    let decoded: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(bad("zstd layers are not supported".into()));
    } else {
        Box::new(reader)
    };
    let refused = RefCell::new(None);
    let mut archive = tar::Archive::new(Hashing {
        inner: decoded,
        hasher: Sha256::new(),
        meter,
        refused: &refused,
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // Xattrs are applied by us, filtered; see the module doc.
    archive.set_unpack_xattrs(false);

    // A refusal by the meter surfaces from tar as some io error; the meter's reason wins.
    let budget_first = |e: ImageError| refused.borrow_mut().take().unwrap_or(e);
    let block = fs_block(root);
    // The layer's own directory.
    meter.charge(block)?;
    let entries = archive
        .entries()
        .map_err(|e| budget_first(bad(format!("not a tar archive: {e}"))))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| budget_first(bad(format!("corrupt tar: {e}"))))?;
        unpack_entry(&mut entry, root, meter, block).map_err(|e| match e {
            EntryError::Unsafe(reason) => budget_first(bad(reason)),
            EntryError::Io(context, source) => budget_first(ImageError::io(context)(source)),
            EntryError::Refused(e) => *e,
        })?;
    }
    // The tar may end before the stream does (end-of-archive blocks, padding); the diff_id
    // covers all of it. It is charged too, which bounds the work a bomb made of trailing
    // zeros can cause.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| budget_first(bad(format!("corrupt stream: {e}"))))?;
    Ok(format!("sha256:{}", hex::encode(rest.hasher.finalize())))
}

/// The filesystem's allocation unit, at least 4 KiB (what ext4 and tmpfs allocate).
#[allow(clippy::unnecessary_cast)] // c_ulong is u32 on 32-bit targets
fn fs_block(root: &Path) -> u64 {
    nix::sys::statvfs::statvfs(root)
        .map(|s| s.fragment_size() as u64)
        .unwrap_or(0)
        .max(4096)
}

#[derive(Debug)]
pub(crate) enum EntryError {
    /// The layer tries something it must not; the message says what.
    Unsafe(String),
    Io(String, io::Error),
    /// The meter stopped the unpack.
    Refused(Box<ImageError>),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EntryError {
    let context = context.into();
    move |e| EntryError::Io(context, e)
}

/// Normalises a path from a tarball to a relative one. `.` parts are dropped; absolute paths
/// and `..` are refused.
pub(crate) fn safe_relative(path: &Path) -> Result<PathBuf, EntryError> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => {
                return Err(EntryError::Unsafe(format!(
                    "absolute path {} in layer",
                    path.display()
                )))
            }
            Component::ParentDir => {
                return Err(EntryError::Unsafe(format!(
                    "path {} leaves the layer",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Returns `root/rel`, creating missing directories, without following any symlink: an
/// existing component that is not a real directory is refused.
pub(crate) fn safe_dir(root: &Path, rel: &Path) -> Result<PathBuf, EntryError> {
    let mut cur = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            return Err(EntryError::Unsafe(format!(
                "bad directory {}",
                rel.display()
            )));
        };
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(EntryError::Unsafe(format!(
                    "{} is a symlink or file, not a directory",
                    rel.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io_err(format!("create {}", cur.display())))?;
            }
            Err(e) => return Err(io_err(format!("inspect {}", cur.display()))(e)),
        }
    }
    Ok(cur)
}

/// Removes whatever is at `path` (never following a symlink).
fn remove_existing(path: &Path) -> Result<(), EntryError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_err(format!("remove {}", path.display())))
}

/// What a whiteout-style name means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Marker<'a> {
    /// `.wh..wh..opq`: the directory hides the layers below.
    Opaque,
    /// `.wh.<name>`: `<name>` is deleted.
    Whiteout(&'a OsStr),
    /// `.wh..wh.<other>`: AUFS bookkeeping, dropped.
    AufsMeta,
    None,
}

pub(crate) fn marker(name: &OsStr) -> Marker<'_> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER.as_bytes() {
        Marker::Opaque
    } else if let Some(rest) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            Marker::AufsMeta
        } else {
            Marker::Whiteout(OsStr::from_bytes(rest))
        }
    } else {
        Marker::None
    }
}

/// Whether `name` is exactly one normal path component: not empty, `.` or `..`, no `/`.
pub(crate) fn single_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// How many directories under `root` creating `root/rel` creates (missing ancestors).
fn missing_dirs(root: &Path, rel: &Path) -> u64 {
    let mut n = 0;
    let mut p = root.join(rel);
    while p != root && p.starts_with(root) && fs::symlink_metadata(&p).is_err() {
        n += 1;
        if !p.pop() {
            break;
        }
    }
    n
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
    meter: &dyn Meter,
    block: u64,
) -> Result<(), EntryError> {
    let raw = entry
        .path()
        .map_err(io_err("read entry path"))?
        .into_owned();
    let rel = safe_relative(&raw)?;
    // Tests stand in for a decoder bug with this name (the quarantine, crate::crash).
    #[cfg(test)]
    if rel == Path::new(PANIC_IN_TESTS) {
        panic!("a test layer's stand-in for a decoder bug");
    }
    let Some(name) = rel.file_name() else {
        // The layer's root itself ("./"): the layer directory's own mode stays ours.
        return Ok(());
    };
    let parent = rel.parent().unwrap_or(Path::new(""));
    // What the tar stream does not pay for: directories created on the way.
    let charge = |bytes: u64| {
        meter
            .charge(bytes)
            .map_err(|e| EntryError::Refused(Box::new(e)))
    };
    charge(missing_dirs(root, parent) * block)?;

    match marker(name) {
        Marker::Opaque => {
            let dir = safe_dir(root, parent)?;
            charge(block)?;
            return xattr::set(&dir, OPAQUE_XATTR, b"y")
                .map_err(io_err(format!("set {OPAQUE_XATTR} on {}", dir.display())));
        }
        Marker::Whiteout(hidden) => {
            if !single_name(hidden) {
                return Err(EntryError::Unsafe(format!(
                    "whiteout {} does not name a file in its directory",
                    rel.display()
                )));
            }
            let dir = safe_dir(root, parent)?;
            let target = dir.join(hidden);
            remove_existing(&target)?;
            return mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| io_err(format!("whiteout {}", target.display()))(e.into()));
        }
        Marker::AufsMeta => {
            debug!(path = %rel.display(), "skipping aufs metadata");
            return Ok(());
        }
        Marker::None => {}
    }

    let xattrs = pax_xattrs(entry)?;
    let kind = entry.header().entry_type();
    // Allocation the stream does not cover: a file's last block, a directory's first, a
    // long symlink's target, an xattr block.
    let mut extra = if xattrs.is_empty() { 0 } else { block };
    if kind.is_dir() {
        extra += missing_dirs(root, &rel) * block;
    } else if kind.is_symlink() {
        let long = entry
            .link_name_bytes()
            .is_some_and(|l| l.len() >= EXT4_FAST_SYMLINK);
        extra += if long { block } else { 0 };
    } else if !(kind.is_hard_link()
        || matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo))
    {
        let size = entry.size();
        extra += size
            .div_ceil(block)
            .saturating_mul(block)
            .saturating_sub(size);
    }
    charge(extra)?;
    if kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(io_err("read link name"))?
            .ok_or_else(|| {
                EntryError::Unsafe(format!("hard link {} without target", rel.display()))
            })?;
        safe_relative(&target)?;
    }
    match kind {
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            // tar would write these as regular files.
            make_node(entry, root, parent, name, kind)?;
        }
        _ => {
            let inside = entry
                .unpack_in(root)
                .map_err(|e| classify_unpack_error(&rel, e))?;
            if !inside {
                return Err(EntryError::Unsafe(format!(
                    "path {} leaves the layer",
                    rel.display()
                )));
            }
        }
    }
    if !xattrs.is_empty() && !kind.is_symlink() {
        let path = root.join(&rel);
        for (key, value) in xattrs {
            if let Err(e) = xattr::set(&path, &key, &value) {
                warn!(path = %rel.display(), xattr = %key, error = %e, "cannot set xattr from layer");
            }
        }
    }
    Ok(())
}

/// tar reports an escape through a symlink as an io error; it is a refusal, not an io fault.
fn classify_unpack_error(rel: &Path, e: io::Error) -> EntryError {
    let msg = e.to_string();
    if msg.contains("outside of destination") {
        EntryError::Unsafe(format!(
            "{} leads out of the layer through a symlink",
            rel.display()
        ))
    } else {
        EntryError::Io(format!("unpack {}", rel.display()), e)
    }
}

fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<(String, Vec<u8>)>, EntryError> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(io_err("read pax headers"))? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(io_err("read pax header"))?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) else {
            continue;
        };
        if name.starts_with("trusted.overlay.") {
            warn!(xattr = %name, "dropping overlay xattr from layer");
            continue;
        }
        out.push((name.to_owned(), ext.value_bytes().to_vec()));
    }
    Ok(out)
}

fn make_node<R: Read>(
    entry: &tar::Entry<'_, R>,
    root: &Path,
    parent: &Path,
    name: &OsStr,
    kind: EntryType,
) -> Result<(), EntryError> {
    let header = entry.header();
    let dir = safe_dir(root, parent)?;
    let target = dir.join(name);
    remove_existing(&target)?;
    // No setuid, setgid or sticky bit on a device node or fifo: they mean nothing there.
    let mode = header.mode().map_err(io_err("read mode"))? & 0o777;
    let (flag, dev) = match kind {
        EntryType::Fifo => (SFlag::S_IFIFO, 0),
        _ => {
            let major = header
                .device_major()
                .map_err(io_err("read device"))?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(io_err("read device"))?
                .unwrap_or(0);
            let flag = if kind == EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (flag, makedev(major.into(), minor.into()))
        }
    };
    mknod(&target, flag, Mode::from_bits_truncate(mode), dev)
        .map_err(|e| io_err(format!("mknod {}", target.display()))(e.into()))?;
    let uid = header.uid().map_err(io_err("read uid"))?;
    let gid = header.gid().map_err(io_err("read gid"))?;
    let (uid, gid) = (
        u32::try_from(uid).map_err(|_| EntryError::Unsafe(format!("uid {uid} out of range")))?,
        u32::try_from(gid).map_err(|_| EntryError::Unsafe(format!("gid {gid} out of range")))?,
    );
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", target.display())))?;
    // mknod's mode went through the umask; set it exactly.
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", target.display())))
}

#[cfg(test)]
mod tests;
