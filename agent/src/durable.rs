//! Replacing a file so that readers, and the disk after a power cut, see either the old
//! content or the whole new one: the agent's one way of persisting state.
//!
//! [`write()`] puts the bytes in a temporary sibling created with the final mode (so a secret
//! is never readable by others, not even while half written), fsyncs it, renames it over the
//! target and fsyncs the directory (without that, the rename itself may not survive a power
//! cut). Files that are not written in one piece (downloads, unpacked layers) are synced by
//! their writers and put in place with [`rename`], the same last two steps; a name made by
//! a hard link is made durable with [`sync_parent`].
//!
//! [`write_unsynced`] skips both fsyncs: still atomic for readers, but a power cut may lose
//! the new content, or (on some filesystems) leave an empty file. Only for what is not worth
//! a disk flush; each caller says why.
//!
//! Temporary names are `<name>.tmp-<pid>-<n>` ([`temp_sibling`]): unique within the process,
//! so concurrent writers of one target never share a temporary file. A failed write removes
//! its temporary file; one left by a killed process is swept by the image store
//! (`image::layout`) and otherwise harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` durably: temporary file of mode `mode` (less the umask), fsync,
/// rename, fsync of the directory. On an error before the rename `path` is untouched.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, mode, Durability::Synced, |f| f.write_all(bytes))
}

/// [`write()`] without the fsyncs: atomic for readers, not across a power cut.
pub fn write_unsynced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, mode, Durability::Unsynced, |f| f.write_all(bytes))
}

/// Replaces `to` with a copy of the file `from`, durably like [`write()`], with exactly `mode`
/// (not less the umask: an installed binary must be executable by everyone whatever the
/// installer's umask). Returns the bytes copied.
pub fn copy(from: &Path, to: &Path, mode: u32) -> io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let mut src = File::open(from)?;
    let mut copied = 0;
    replace(to, mode, Durability::Synced, |f| {
        copied = io::copy(&mut src, f)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
    })?;
    Ok(copied)
}

/// Renames `from` (already written and synced by the caller) over `to`, then fsyncs `to`'s
/// directory so that the rename survives a power cut.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(to)
}

/// A unique name for a temporary sibling of `path`: `<name>.tmp-<pid>-<n>`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Synced,
    Unsynced,
}

/// The one implementation: `fill` writes the content into the temporary file.
fn replace(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let (mut f, tmp) = create_temp(path, mode)?;
    let written = (|| {
        fill(&mut f)?;
        if durability == Durability::Synced {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match durability {
        Durability::Synced => sync_parent(path),
        Durability::Unsynced => Ok(()),
    }
}

/// Creates the temporary sibling of `path` with `mode` from the start.
fn create_temp(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    let tmp = temp_sibling(path);
    Ok((open_new(&tmp, mode)?, tmp))
}

/// Creates `tmp` with `O_CREAT|O_EXCL` and `mode`, which the kernel applies at creation: the
/// file never has a wider mode, not even while empty.
fn open_new(tmp: &Path, mode: u32) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)
    };
    match open() {
        // Left by an earlier process that had our pid (pids repeat across reboots) and was
        // killed mid-write: nobody else can be using this name now.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

/// Fsyncs the directory holding `path`, which makes a rename or a new name in it durable
/// (for a name made another way than [`rename`], e.g. a hard link).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests;
