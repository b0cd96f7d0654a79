//! Container root filesystems as overlay mounts over the store's unpacked layers.
//!
//! `container_dir/{rootfs,upper,work}`: the layers stay read-only and shared, each container
//! writes only to its own `upper`. Mount options travel in one page, so the number of layers
//! is bounded by path length (about 40 layers at typical store paths); past that the mount is
//! refused with a clear error rather than failing obscurely.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::{debug, warn};

use super::ImageError;

/// The kernel copies mount data into a single page.
const MAX_MOUNT_DATA: usize = 4095;

/// Whether `path` is the root of a mount other than its parent's. Overlay mounts always get
/// their own device number, so comparing with the parent suffices.
fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let Some(parent) = path.parent() else {
        return Ok(true);
    };
    let here = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let up = fs::symlink_metadata(parent)?;
    Ok(here.dev() != up.dev())
}

fn check_path(p: &Path) -> Result<&str, ImageError> {
    let s = p
        .to_str()
        .ok_or_else(|| ImageError::Rootfs(format!("path {} is not UTF-8", p.display())))?;
    // ',' separates mount options and ':' separates lower dirs.
    if s.contains([',', ':']) {
        return Err(ImageError::Rootfs(format!(
            "path {s} contains ',' or ':', which overlay mount options cannot carry"
        )));
    }
    Ok(s)
}

/// Mounts the overlay of `lowers` (top first) on `container_dir/rootfs`; a mount already
/// there is kept (so a retried create or a restarted agent gets the same rootfs).
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    container_dir: &Path,
) -> Result<PathBuf, ImageError> {
    if lowers.is_empty() {
        return Err(ImageError::Rootfs("image has no layers".into()));
    }
    let rootfs = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&rootfs, &upper, &work] {
        fs::create_dir_all(dir).map_err(ImageError::io(format!("create {}", dir.display())))?;
    }
    if is_mountpoint(&rootfs).map_err(ImageError::io(format!("inspect {}", rootfs.display())))? {
        debug!(rootfs = %rootfs.display(), "rootfs already mounted");
        return Ok(rootfs);
    }
    let lower = lowers
        .iter()
        .map(|p| check_path(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        check_path(&upper)?,
        check_path(&work)?
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(ImageError::Rootfs(format!(
            "{} layers make overlay options of {} bytes, more than the kernel's {MAX_MOUNT_DATA}",
            lowers.len(),
            data.len()
        )));
    }
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| ImageError::Mount {
        target: rootfs.clone(),
        source,
    })?;
    debug!(rootfs = %rootfs.display(), layers = lowers.len(), "rootfs mounted");
    Ok(rootfs)
}

/// Unmounts `container_dir/rootfs` (detaching it if busy) and removes `container_dir`.
pub(crate) fn unmount_and_remove(container_dir: &Path) -> Result<(), ImageError> {
    let rootfs = container_dir.join("rootfs");
    // Loop in case something was mounted more than once on top.
    for _ in 0..8 {
        let mounted = is_mountpoint(&rootfs)
            .map_err(ImageError::io(format!("inspect {}", rootfs.display())))?;
        if !mounted {
            break;
        }
        match umount2(&rootfs, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                warn!(rootfs = %rootfs.display(), "rootfs busy, detaching it");
                umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|source| ImageError::Mount {
                    target: rootfs.clone(),
                    source,
                })?;
            }
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(source) => {
                return Err(ImageError::Mount {
                    target: rootfs.clone(),
                    source,
                })
            }
        }
    }
    // Never delete through a mount: that would write whiteouts into, or worse, files of
    // something we do not own.
    if is_mountpoint(&rootfs).map_err(ImageError::io(format!("inspect {}", rootfs.display())))? {
        return Err(ImageError::Rootfs(format!(
            "{} is still mounted",
            rootfs.display()
        )));
    }
    match fs::remove_dir_all(container_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(format!(
            "remove {}",
            container_dir.display()
        ))(e)),
    }
}
