//! A little disk space held back for the agent's own state.
//!
//! A workload (or its logs, or images) can fill the data disk to the last block. The agent
//! must still be able to write its desired state and pod records then, or a change cannot be
//! applied and restart counts are lost with the next agent restart. So it keeps
//! `<data>/reserve.bin`, a file of real blocks (written, not sparse), and gives it back to
//! the filesystem when one of its own writes hits ENOSPC, then retries that write once
//! ([`Reserve::write`]). The file is made again once the disk has room
//! ([`Reserve::refill`], from the heartbeat).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Enough for a desired state of a full node (a few hundred KiB at worst) and many records.
pub const DEFAULT_RESERVE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("cannot make the disk reserve {path}: {source}")]
    Fill { path: PathBuf, source: io::Error },
}

#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// Whether the file is (believed) in place; shared by the node loop's writers.
    held: AtomicBool,
}

/// Whether `e` says the filesystem is full.
pub fn is_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ENOSPC) || e.raw_os_error() == Some(nix::libc::EDQUOT)
}

impl Reserve {
    /// The reserve of `data_dir`, not yet made: call [`Reserve::refill`].
    pub fn new(data_dir: &Path, bytes: u64) -> Self {
        Self {
            path: data_dir.join("reserve.bin"),
            bytes,
            held: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Makes the reserve file if it is not whole. On a full disk nothing is left behind and
    /// the error says so; the agent runs on without a reserve and tries again later.
    pub fn refill(&self) -> Result<(), ReserveError> {
        if self.is_held() {
            return Ok(());
        }
        if fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes) {
            self.held.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let fill = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::datadir::PRIVATE_FILE)
                .open(&self.path)?;
            // Written, not `set_len`: a sparse file would hold no blocks to give back.
            let chunk = vec![0u8; 64 * 1024];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        };
        match fill() {
            Ok(()) => {
                self.held.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(source) => {
                let _ = fs::remove_file(&self.path);
                Err(ReserveError::Fill {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Gives the reserve's blocks back to the filesystem; `true` if there was one.
    pub fn release(&self) -> bool {
        let had = self.held.swap(false, Ordering::Relaxed);
        let removed = fs::remove_file(&self.path).is_ok();
        if removed {
            // The blocks are free once the directory entry is gone for good.
            let _ = File::open(self.path.parent().unwrap_or(Path::new("."))).map(|d| d.sync_all());
            tracing::warn!(path = %self.path.display(), "disk full: released the agent's reserve");
        }
        had || removed
    }

    /// Runs `write`; if it fails because the disk is full and the reserve is there, releases
    /// the reserve and runs it once more.
    pub fn write<T>(&self, mut write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match write() {
            Err(e) if is_full(&e) && self.release() => write(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::tests::Tmpfs;

    /// Fills the filesystem of `dir` to the last block.
    fn fill(dir: &Path) {
        let mut f = File::create(dir.join("hog")).unwrap();
        let chunk = vec![1u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }

    #[test]
    fn a_full_disk_still_takes_the_agents_write_once_the_reserve_is_released() {
        let disk = Tmpfs::new("1m");
        let r = Reserve::new(disk.path(), 256 * 1024);
        r.refill().unwrap();
        assert!(r.is_held());
        assert_eq!(fs::metadata(r.path()).unwrap().len(), 256 * 1024);
        fill(disk.path());

        let target = disk.path().join("desired.bin");
        let state = vec![7u8; 100 * 1024];
        let direct = crate::durable::write(&target, &state, 0o600).unwrap_err();
        assert!(is_full(&direct), "{direct}");
        r.write(|| crate::durable::write(&target, &state, 0o600))
            .unwrap();
        assert_eq!(fs::read(&target).unwrap(), state);
        assert!(!r.is_held() && !r.path().exists());

        // Filled again: no reserve to make, nothing half-made left, and writes fail plainly.
        let mut f = File::create(disk.path().join("hog2")).unwrap();
        while f.write_all(&[1u8; 4096]).is_ok() {}
        assert!(r.refill().is_err());
        assert!(!r.path().exists());
        let e = r
            .write(|| crate::durable::write(&target, &state, 0o600))
            .unwrap_err();
        assert!(is_full(&e), "{e}");
        assert_eq!(
            fs::read(&target).unwrap(),
            state,
            "the last write stays whole"
        );

        // Room again: the reserve comes back.
        fs::remove_file(disk.path().join("hog")).unwrap();
        r.refill().unwrap();
        assert!(r.is_held());
    }

    #[test]
    fn other_errors_do_not_spend_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path(), 4096);
        r.refill().unwrap();
        let e = r
            .write(|| crate::durable::write(&dir.path().join("no/such"), b"x", 0o600))
            .unwrap_err();
        assert!(!is_full(&e));
        assert!(r.is_held() && r.path().exists());
    }
}
