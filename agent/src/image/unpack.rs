//! Unpacking layer tarballs into directories overlayfs can stack.
//!
//! Layers mark deletions with AUFS-style whiteout files; overlayfs wants its own markers:
//! - `dir/.wh.<name>` becomes a character device 0:0 named `dir/<name>`;
//! - `dir/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on `dir`.
//!
//! Layers come from the network, so every path is checked: absolute paths and `..` are
//! refused, and nothing is ever created through a symlink that leads out of the layer
//! (regular entries go through tar's `unpack_in`, which checks the canonical parent; the
//! nodes and markers created here walk the parent components without following symlinks).
//! Overlay's own xattrs (`trusted.overlay.*`) are never taken from a tarball: they would let
//! a layer forge redirects or metacopy files.

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

use super::layout::temp_sibling;
use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Whether the store can unpack layers of this media type. The payload is sniffed anyway
/// (gzip or plain tar), so this only rules out what cannot work: zstd, and non-layers.
pub(crate) fn supported_media_type(media_type: &str) -> bool {
    let mt = media_type.to_ascii_lowercase();
    !mt.contains("zstd") && (mt.contains("tar") || mt.ends_with("layer.v1"))
}

/// Unpacks the layer blob into `dest`, which must not exist yet: into a temporary sibling
/// first, checked against `diff_id` (the digest of the uncompressed tar), synced to disk and
/// renamed into place, so that `dest` existing means the layer is complete.
pub(crate) fn unpack_layer(
    blob: &Path,
    dest: &Path,
    digest: &str,
    diff_id: &str,
) -> Result<(), ImageError> {
    let tmp = temp_sibling(dest);
    fs::create_dir(&tmp).map_err(ImageError::io(format!("create {}", tmp.display())))?;
    let result = (|| {
        let actual = extract(blob, &tmp, digest)?;
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
        fs::rename(&tmp, dest).map_err(ImageError::io(format!("rename to {}", dest.display())))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Extracts the (gzip or plain) tarball `blob` into `root`; returns the `sha256:` digest of
/// the uncompressed tar.
pub(crate) fn extract(blob: &Path, root: &Path, digest: &str) -> Result<String, ImageError> {
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
    let mut archive = tar::Archive::new(Hashing {
        inner: decoded,
        hasher: Sha256::new(),
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // Xattrs are applied by us, filtered; see the module doc.
    archive.set_unpack_xattrs(false);

    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar: {e}")))?;
        unpack_entry(&mut entry, root).map_err(|e| match e {
            EntryError::Unsafe(reason) => bad(reason),
            EntryError::Io(context, source) => ImageError::io(context)(source),
        })?;
    }
    // The tar may end before the stream does (end-of-archive blocks, padding); the diff_id
    // covers all of it.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| bad(format!("corrupt stream: {e}")))?;
    Ok(format!("sha256:{}", hex::encode(rest.hasher.finalize())))
}

#[derive(Debug)]
pub(crate) enum EntryError {
    /// The layer tries something it must not; the message says what.
    Unsafe(String),
    Io(String, io::Error),
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
        if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) || rest.is_empty() {
            Marker::AufsMeta
        } else {
            Marker::Whiteout(OsStr::from_bytes(rest))
        }
    } else {
        Marker::None
    }
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, root: &Path) -> Result<(), EntryError> {
    let raw = entry
        .path()
        .map_err(io_err("read entry path"))?
        .into_owned();
    let rel = safe_relative(&raw)?;
    let Some(name) = rel.file_name() else {
        // The layer's root itself ("./"): the layer directory's own mode stays ours.
        return Ok(());
    };
    let parent = rel.parent().unwrap_or(Path::new(""));

    match marker(name) {
        Marker::Opaque => {
            let dir = safe_dir(root, parent)?;
            return xattr::set(&dir, OPAQUE_XATTR, b"y")
                .map_err(io_err(format!("set {OPAQUE_XATTR} on {}", dir.display())));
        }
        Marker::Whiteout(hidden) => {
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
    let mode = header.mode().map_err(io_err("read mode"))? & 0o7777;
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
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar entry with the exact name and link bytes given, bypassing the checks of
    /// `tar::Builder` (which refuses `..`), as a hostile registry would send it.
    fn raw_entry(out: &mut Vec<u8>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        {
            let bytes = h.as_mut_bytes();
            bytes[..100].fill(0);
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[157..257].fill(0);
            bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn hdr(kind: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    fn finish(mut out: Vec<u8>) -> Vec<u8> {
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }

    fn run(tar: &[u8]) -> (tempfile::TempDir, Result<String, ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, tar).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let res = extract(&blob, &root, "sha256:test");
        (dir, res)
    }

    #[test]
    fn markers() {
        assert_eq!(marker(OsStr::new(".wh..wh..opq")), Marker::Opaque);
        assert_eq!(
            marker(OsStr::new(".wh.foo")),
            Marker::Whiteout(OsStr::new("foo"))
        );
        assert_eq!(marker(OsStr::new(".wh..wh.plnk")), Marker::AufsMeta);
        assert_eq!(marker(OsStr::new(".wh.")), Marker::AufsMeta);
        assert_eq!(marker(OsStr::new("foo.wh.bar")), Marker::None);
        assert_eq!(marker(OsStr::new(".whale")), Marker::None);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            safe_relative(Path::new("./a/./b")).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(safe_relative(Path::new("./")).unwrap(), PathBuf::new());
        assert!(matches!(
            safe_relative(Path::new("/etc/passwd")),
            Err(EntryError::Unsafe(_))
        ));
        assert!(matches!(
            safe_relative(Path::new("a/../../x")),
            Err(EntryError::Unsafe(_))
        ));
        assert!(matches!(
            safe_relative(Path::new("..")),
            Err(EntryError::Unsafe(_))
        ));
    }

    #[test]
    fn whiteouts_become_overlay_markers() {
        let mut t = Vec::new();
        raw_entry(&mut t, "./etc/", EntryType::Directory, "", b"");
        raw_entry(&mut t, "./etc/.wh.passwd", EntryType::Regular, "", b"");
        raw_entry(&mut t, "opq/", EntryType::Directory, "", b"");
        raw_entry(&mut t, "opq/.wh..wh..opq", EntryType::Regular, "", b"");
        raw_entry(&mut t, "opq/new", EntryType::Regular, "", b"n");
        // Whiteout in a directory the layer does not list: created on the way.
        raw_entry(&mut t, "usr/lib/.wh.libx.so", EntryType::Regular, "", b"");
        raw_entry(&mut t, ".wh..wh.plnk", EntryType::Regular, "", b"");
        let (dir, res) = run(&finish(t));
        res.unwrap();
        let root = dir.path().join("root");
        for w in ["etc/passwd", "usr/lib/libx.so"] {
            let m = fs::symlink_metadata(root.join(w)).unwrap();
            assert!(m.file_type().is_char_device(), "{w}");
            assert_eq!(m.rdev(), 0, "{w}");
        }
        assert!(!root.join("etc/.wh.passwd").exists());
        assert_eq!(
            xattr::get(root.join("opq"), OPAQUE_XATTR)
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert!(!root.join("opq/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"n");
        assert!(!root.join(".wh..wh.plnk").exists());
    }

    #[test]
    fn preserves_modes_symlinks_and_hardlinks() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut hdr(EntryType::Directory, 0o750, 0), "bin", &[][..])
            .unwrap();
        b.append_data(
            &mut hdr(EntryType::Regular, 0o4755, 3),
            "bin/tool",
            &b"abc"[..],
        )
        .unwrap();
        b.append_link(
            &mut hdr(EntryType::Symlink, 0o777, 0),
            "bin/sh",
            "/bin/tool",
        )
        .unwrap();
        b.append_link(&mut hdr(EntryType::Link, 0o644, 0), "bin/tool2", "bin/tool")
            .unwrap();
        b.append_data(&mut hdr(EntryType::Fifo, 0o600, 0), "bin/fifo", &[][..])
            .unwrap();
        let (dir, res) = run(&b.into_inner().unwrap());
        res.unwrap();
        let root = dir.path().join("root");
        assert_eq!(
            fs::metadata(root.join("bin")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            fs::metadata(root.join("bin/tool")).unwrap().mode() & 0o7777,
            0o4755
        );
        // Absolute symlinks are fine inside a rootfs; they are not followed here.
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            PathBuf::from("/bin/tool")
        );
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("bin/tool"), ino("bin/tool2"));
        let fifo = fs::symlink_metadata(root.join("bin/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o600);
    }

    #[test]
    fn refuses_parent_dir_and_absolute_paths() {
        for name in ["../evil", "a/../../evil", "/evil"] {
            let mut t = Vec::new();
            raw_entry(&mut t, name, EntryType::Regular, "", b"x");
            let (dir, res) = run(&finish(t));
            let err = res.unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidLayer { .. }),
                "{name}: {err}"
            );
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_owned();
        let mut t = Vec::new();
        raw_entry(&mut t, "escape", EntryType::Symlink, &target, b"");
        raw_entry(&mut t, "escape/pwned", EntryType::Regular, "", b"x");
        let (_dir, res) = run(&finish(t));
        assert!(
            matches!(res, Err(ImageError::InvalidLayer { .. })),
            "{res:?}"
        );
        assert!(!outside.path().join("pwned").exists());

        // A whiteout or opaque marker under the symlink must not touch the outside either.
        for marker in ["escape/.wh.victim", "escape/.wh..wh..opq"] {
            fs::write(outside.path().join("victim"), b"keep").unwrap();
            let mut t = Vec::new();
            raw_entry(&mut t, "escape", EntryType::Symlink, &target, b"");
            raw_entry(&mut t, marker, EntryType::Regular, "", b"");
            let (_dir, res) = run(&finish(t));
            assert!(
                matches!(res, Err(ImageError::InvalidLayer { .. })),
                "{marker}: {res:?}"
            );
            assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
            assert_eq!(xattr::get(outside.path(), OPAQUE_XATTR).unwrap(), None);
        }
    }

    #[test]
    fn refuses_hardlink_out_of_the_layer() {
        let mut t = Vec::new();
        raw_entry(
            &mut t,
            "passwd",
            EntryType::Link,
            "../../../etc/passwd",
            b"",
        );
        let (_dir, res) = run(&finish(t));
        assert!(
            matches!(res, Err(ImageError::InvalidLayer { .. })),
            "{res:?}"
        );
        let mut t = Vec::new();
        raw_entry(&mut t, "passwd", EntryType::Link, "/etc/passwd", b"");
        let (dir, res) = run(&finish(t));
        assert!(
            matches!(res, Err(ImageError::InvalidLayer { .. })),
            "{res:?}"
        );
        assert!(!dir.path().join("root/passwd").exists());
    }

    #[test]
    fn drops_overlay_xattrs_from_the_tarball() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.user.baton", &b"kept"[..]),
        ])
        .unwrap();
        b.append_data(&mut hdr(EntryType::Regular, 0o644, 1), "f", &b"x"[..])
            .unwrap();
        let (dir, res) = run(&b.into_inner().unwrap());
        res.unwrap();
        let f = dir.path().join("root/f");
        assert_eq!(xattr::get(&f, "trusted.overlay.redirect").unwrap(), None);
        assert_eq!(
            xattr::get(&f, "user.baton").unwrap().as_deref(),
            Some(&b"kept"[..])
        );
    }

    #[test]
    fn gzip_and_plain_give_the_same_diff_id_and_bad_diff_id_leaves_nothing() {
        let mut t = Vec::new();
        raw_entry(&mut t, "a", EntryType::Regular, "", b"hello");
        let tar = finish(t);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(run(&tar).1.unwrap(), diff_id);
        assert_eq!(run(&gz).1.unwrap(), diff_id);

        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, &gz).unwrap();
        let dest = dir.path().join("layer");
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(unpack_layer(&blob, &dest, "sha256:x", &wrong).is_err());
        assert!(!dest.exists());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temp dir left behind");
        unpack_layer(&blob, &dest, "sha256:x", &diff_id).unwrap();
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"hello");
    }

    #[test]
    fn media_types() {
        assert!(supported_media_type(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(supported_media_type(
            "application/vnd.oci.image.layer.v1.tar"
        ));
        assert!(supported_media_type(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!supported_media_type(
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ));
        assert!(!supported_media_type(
            "application/vnd.oci.image.config.v1+json"
        ));
    }
}
