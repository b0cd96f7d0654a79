//! What a flash target is, and whether it is in use.
//!
//! A target is an image file or a whole block device (an SD card reader). Writing a FAT
//! that the kernel has mounted corrupts it, so a target is refused when it, any of its
//! partitions, or anything stacked on them (device-mapper, a loop device over the image
//! file) is mounted. Mounts are compared by device number (major:minor), never by name:
//! `/dev/disk/by-label/bootfs`, `/dev/mmcblk0p1` and a udisks path are the same device.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::FlashError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    /// A block device, with its device number.
    BlockDevice(u64),
}

#[derive(Debug)]
pub(super) struct Target {
    pub path: PathBuf,
    pub kind: Kind,
}

/// Classifies `path` and refuses anything but an unmounted image file or block device.
pub(super) fn inspect(path: &Path) -> Result<Target, FlashError> {
    let meta = fs::metadata(path).map_err(|source| FlashError::Read {
        path: path.display().to_string(),
        error: source,
    })?;
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_block_device() {
        if sysfs_dir(meta.rdev()).join("partition").exists() {
            return Err(FlashError::Target(format!(
                "{} is a partition: give the whole card (e.g. /dev/sdb, /dev/mmcblk0); flash finds its boot partition",
                path.display()
            )));
        }
        Kind::BlockDevice(meta.rdev())
    } else {
        return Err(FlashError::Target(format!(
            "{} is neither an image file nor a block device",
            path.display()
        )));
    };
    let loops = loop_devices();
    let in_use = match kind {
        Kind::BlockDevice(rdev) => family(&[rdev], &loops),
        Kind::File => {
            let me = Backing::File(meta.dev(), meta.ino());
            let over: Vec<u64> = loops
                .iter()
                .filter(|(_, b)| *b == me)
                .map(|(l, _)| *l)
                .collect();
            family(&over, &loops)
        }
    };
    for (dev, mountpoint) in mounted() {
        if in_use.contains(&dev) {
            let what = match kind {
                Kind::File => "the image (through a loop device)",
                Kind::BlockDevice(d) if d == dev => "the device",
                Kind::BlockDevice(_) => "a partition of the device (or a device stacked on it)",
            };
            return Err(FlashError::Target(format!(
                "{what} is mounted at {mountpoint} ({}:{}): unmount it first (`umount {mountpoint}`); \
                 baton flash never writes to a mounted filesystem",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            )));
        }
    }
    Ok(Target {
        path: path.to_owned(),
        kind,
    })
}

/// The device numbers of mounted filesystems: `/proc/self/mountinfo`'s own major:minor
/// field, plus every mount source of `/proc/self/mounts` that is a block device (stat'd),
/// which also catches filesystems such as btrfs whose reported device is anonymous.
pub(super) fn mounted() -> Vec<(u64, String)> {
    let mut out = Vec::new();
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 5 {
                continue;
            }
            if let Some((ma, mi)) = f[2].split_once(':') {
                if let (Ok(ma), Ok(mi)) = (ma.parse::<u64>(), mi.parse::<u64>()) {
                    out.push((nix::sys::stat::makedev(ma, mi), unescape(f[4])));
                }
            }
        }
    }
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        for line in mounts.lines() {
            let mut f = line.split(' ');
            let (Some(src), Some(at)) = (f.next(), f.next()) else {
                continue;
            };
            if !src.starts_with('/') {
                continue;
            }
            if let Ok(m) = fs::metadata(unescape(src)) {
                if m.file_type().is_block_device() {
                    out.push((m.rdev(), unescape(at)));
                }
            }
        }
    }
    out
}

/// The kernel escapes space, tab, newline and backslash in mount tables as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a loop device reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A block device (`losetup /dev/sdb`, or `mount -o offset=...` of one).
    Block(u64),
    /// A file, by device and inode.
    File(u64, u64),
}

/// Every loop device in use and what it reads from (sysfs `loop/backing_file`).
fn loop_devices() -> Vec<(u64, Backing)> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let (Some(dev), Ok(m)) = (
            read_dev(&e.path().join("dev")),
            fs::metadata(backing.trim_end()),
        ) else {
            continue;
        };
        let b = if m.file_type().is_block_device() {
            Backing::Block(m.rdev())
        } else {
            Backing::File(m.dev(), m.ino())
        };
        out.push((dev, b));
    }
    out
}

/// `devices`, their partitions, and whatever is stacked on any of them (their sysfs
/// `holders`, such as device-mapper, and loop devices reading from them), recursively:
/// everything whose mount would share blocks with the target.
fn family(devices: &[u64], loops: &[(u64, Backing)]) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<u64> = devices.to_vec();
    while let Some(dev) = todo.pop() {
        if !seen.insert(dev) {
            continue;
        }
        todo.extend(
            loops
                .iter()
                .filter(|(_, b)| *b == Backing::Block(dev))
                .map(|(l, _)| *l),
        );
        let Ok(dir) = fs::canonicalize(sysfs_dir(dev)) else {
            continue;
        };
        // Partitions are subdirectories with a `partition` file; holders are links.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.join("partition").exists() {
                    todo.extend(read_dev(&p.join("dev")));
                }
            }
        }
        if let Ok(holders) = fs::read_dir(dir.join("holders")) {
            for h in holders.flatten() {
                todo.extend(read_dev(&h.path().join("dev")));
            }
        }
    }
    seen
}

fn sysfs_dir(dev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    ))
}

/// A sysfs `dev` file (`MAJ:MIN`).
fn read_dev(p: &Path) -> Option<u64> {
    let s = fs::read_to_string(p).ok()?;
    let (ma, mi) = s.trim().split_once(':')?;
    Some(nix::sys::stat::makedev(ma.parse().ok()?, mi.parse().ok()?))
}
