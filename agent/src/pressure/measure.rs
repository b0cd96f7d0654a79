//! Reading the node's signals: free space and inodes of the data disk and of the image
//! store's disk (only when it is another filesystem), `MemAvailable`, and pids left before
//! `pid_max`. Cheap enough for every heartbeat: two `statvfs`, two small `/proc` reads and
//! one `/proc` listing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::conditions::{Fs, Observed};

/// Where to measure.
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub image_dir: PathBuf,
}

pub fn observe(p: &Paths) -> Observed {
    let same_fs = match (fs::metadata(&p.data_dir), fs::metadata(&p.image_dir)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => true,
    };
    Observed {
        nodefs: statfs(&p.data_dir),
        imagefs: (!same_fs).then(|| statfs(&p.image_dir)).flatten(),
        memory: memory(),
        pids: pids(),
    }
}

pub fn statfs(path: &Path) -> Option<Fs> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as u64;
    Some(Fs {
        // What an unprivileged writer may still use, as kubelet's `available` (not `free`).
        avail_bytes: (s.blocks_available() as u64).saturating_mul(frag),
        total_bytes: (s.blocks() as u64).saturating_mul(frag),
        avail_inodes: s.files_available() as u64,
        total_inodes: s.files() as u64,
    })
}

/// `MemAvailable` and `MemTotal` from `/proc/meminfo`, in bytes.
pub fn memory() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// Pids left and `pid_max`: kubelet counts the processes of the node, as here (threads
/// take pids too, but counting them would need a read per process).
fn pids() -> Option<(u64, u64)> {
    let max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let used = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64;
    Some((max.saturating_sub(used), max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_can_be_measured() {
        let dir = tempfile::tempdir().unwrap();
        let o = observe(&Paths {
            data_dir: dir.path().into(),
            image_dir: dir.path().into(),
        });
        let nodefs = o.nodefs.unwrap();
        assert!(nodefs.total_bytes > 0 && nodefs.avail_bytes <= nodefs.total_bytes);
        assert_eq!(o.imagefs, None, "the same filesystem is measured once");
        let (avail, total) = o.memory.unwrap();
        assert!(avail > 0 && avail <= total);
        let (left, max) = o.pids.unwrap();
        assert!(left > 0 && left < max, "this process takes a pid");
    }
}
