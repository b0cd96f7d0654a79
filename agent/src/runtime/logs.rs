//! Bounded container logs.
//!
//! The container's stdout and stderr are the write end of one pipe; a thread copies the read end
//! into `log_path`. Before a write would take the file past `max_bytes`, the file is renamed to
//! `<log_path>.1` (replacing the previous one) and a new file is started, so the disk use of one
//! container is at most `2 * max_bytes` however chatty it is.
//!
//! Why a pipe and a copier rather than handing the container the file itself: a file given to
//! the container can only be bounded by truncating it under the writer's feet, and the container
//! could still grow it between checks. With a pipe the kernel's pipe buffer is the only thing in
//! between, and a slow disk throttles the container instead of growing memory. If writing the log
//! fails (disk full, directory gone), the copier keeps draining the pipe and drops the bytes so
//! that the container never blocks on a full pipe.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Size of one read from the pipe.
const CHUNK: usize = 64 * 1024;

/// Path of the one rotated file kept next to `log_path`.
pub(crate) fn rotated_path(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// A log file that rotates itself at `max_bytes`.
pub(crate) struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens (appending) `path`. An existing file counts towards the bound, so a restarted
    /// container sharing the path cannot push it past `max_bytes`.
    pub(crate) fn open(path: PathBuf, max_bytes: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            max_bytes: max_bytes.max(1),
            file,
            size,
        })
    }

    pub(crate) fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.size >= self.max_bytes
                || (self.size > 0 && self.size + buf.len() as u64 > self.max_bytes)
            {
                self.rotate()?;
            }
            let room = usize::try_from(self.max_bytes - self.size).unwrap_or(usize::MAX);
            let n = buf.len().min(room);
            self.file.write_all(&buf[..n])?;
            self.size += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Starts a thread copying `pipe` into a [`RotatingLog`] at `path` until EOF, i.e. until every
/// process holding the write end is gone. The returned receiver yields once when the copy ended.
pub(crate) fn spawn_copier(
    name: String,
    mut pipe: File,
    path: PathBuf,
    max_bytes: u64,
) -> io::Result<mpsc::Receiver<()>> {
    let mut log = RotatingLog::open(path, max_bytes)?;
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("log-{name}"))
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut broken = false;
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "reading container output failed");
                        break;
                    }
                };
                if broken {
                    continue;
                }
                if let Err(e) = log.write(&buf[..n]) {
                    tracing::warn!(container = %name, error = %e, "writing container log failed; dropping further output");
                    broken = true;
                }
            }
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_before_exceeding_the_bound_and_keeps_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.log");
        let mut log = RotatingLog::open(path.clone(), 10).unwrap();
        log.write(b"12345").unwrap();
        log.write(b"678").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"12345678");
        // Does not fit: rotate first, never split across files unless larger than the bound.
        log.write(b"abcd").unwrap();
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"12345678");
        assert_eq!(fs::read(&path).unwrap(), b"abcd");
        // Larger than the bound: split, and only the last two pieces survive.
        log.write(b"ABCDEFGHIJKLMNOPQRSTUVWXY").unwrap();
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"KLMNOPQRST");
        assert_eq!(fs::read(&path).unwrap(), b"UVWXY");
        drop(log);
        // Reopening counts what is there.
        let mut log = RotatingLog::open(path.clone(), 10).unwrap();
        log.write(b"123456").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"123456");
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"UVWXY");
    }
}
