//! Bounded container logs that outlive the agent.
//!
//! A container's stdout and stderr are the log file itself, opened `O_APPEND`. Nothing of the
//! agent sits between the container and its log, so a container keeps logging (and never gets
//! EPIPE or SIGPIPE) while the agent is down, crashed or being upgraded.
//!
//! The size bound is enforced by the agent from a periodic check ([`Rotator`]): a file past
//! `max_bytes` is *copy-truncated*: its newest `max_bytes` are copied to `<log>.1` (replacing
//! the previous one), then the file is truncated to zero. `O_APPEND` writers continue at the new
//! end, so nobody needs to reopen anything. When the container has exited (no writer is left),
//! [`finish`] splits what is there exactly at the bound, as a rotation at every `max_bytes`
//! would have.
//!
//! Trade-offs, chosen on purpose: between two checks a very chatty container can write past the
//! bound (by at most what it writes in one [`CHECK_EVERY`]); the few bytes written between the
//! copy and the truncate of a rotation are lost (logrotate's `copytruncate` has the same race);
//! and while the agent is gone nothing bounds the file. The earlier design (a pipe drained by an
//! agent thread) bounded the file exactly, but tied every container's output to the agent's
//! life: the container's next write after an agent crash got EPIPE.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::logs::times::{self, Mark, Times};

/// How often the rotator looks at every log's size.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Path of the one rotated file kept next to `log_path`.
pub(crate) fn rotated_path(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Logs hold whatever containers print, secrets included: the owner's (root's) only.
const LOG_MODE: u32 = 0o600;

/// Opens (creating, appending) the file a container writes its output to, mode 0600 (also
/// when an older agent made it 0644).
pub(crate) fn open_for_container(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(LOG_MODE))?;
    Ok(f)
}

/// Reads `len` bytes at `offset` of `path`.
fn read_range(path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Replaces `path` with `bytes` atomically, on purpose without fsync
/// ([`crate::durable::write_unsynced`]): a chatty container rotates often, the live log it
/// comes from is never synced either, and losing the newest output of containers that a
/// power cut killed anyway is an accepted loss; an SD card is not worth wearing out for it.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::durable::write_unsynced(path, bytes, LOG_MODE)
}

fn size(path: &Path) -> io::Result<Option<u64>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copy-truncates `path` if it is past `max_bytes` while writers may still append to it.
/// Returns whether it rotated. The line times ([`times`]) go with their bytes: the rotated
/// file gets the marks of what it keeps, the live file starts with none.
pub(crate) fn rotate_if_needed(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let max = max_bytes.max(1);
    let Some(len) = size(path)? else {
        return Ok(false);
    };
    if len <= max {
        return Ok(false);
    }
    let newest = read_range(path, len - max, max)?;
    let marks = Times::load(path)?.slice(len - max, len, times::now_nanos());
    let rotated = rotated_path(path);
    replace(&rotated, &newest)?;
    replace(&times::times_path(&rotated), &marks.encoded())?;
    // Marks first: a reader between the two sees unmarked bytes (then read as "now"), never
    // the old marks over new bytes.
    replace(&times::times_path(path), &[])?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Marks the growth of `path` since `last` (see [`times`]); returns the new last mark.
fn mark(path: &Path, last: Option<Mark>) -> io::Result<Option<Mark>> {
    let Some(len) = size(path)? else {
        return Ok(last);
    };
    match last {
        Some(l) if l.end == len => return Ok(last),
        // Shorter: rotated or replaced under us; its marks start again.
        Some(l) if l.end > len => return Ok(None),
        _ if len == 0 => return Ok(last),
        _ => {}
    }
    let m = Mark {
        end: len,
        nanos: times::now_nanos(),
    };
    times::append(path, last, m, LOG_MODE)?;
    Ok(Some(m))
}

/// Settles the log of an exited container (nobody writes to it any more): if it is past
/// `max_bytes`, the bytes after the last multiple of `max_bytes` stay in the file and the
/// `max_bytes` before them become `<log>.1`.
pub(crate) fn finish(path: &Path, max_bytes: u64) -> io::Result<()> {
    let max = max_bytes.max(1);
    let Some(len) = size(path)? else {
        return Ok(());
    };
    if len <= max {
        return Ok(());
    }
    let keep = match len % max {
        0 => max,
        r => r,
    };
    let start = len - keep;
    let older = read_range(path, start.saturating_sub(max), start.min(max))?;
    let newest = read_range(path, start, keep)?;
    let marks = Times::load(path)?;
    let now = times::now_nanos();
    let rotated = rotated_path(path);
    replace(&rotated, &older)?;
    replace(path, &newest)?;
    if marks.marks.is_empty() {
        // Never marked: no times rather than made-up ones (nor stale ones of `<log>.1`).
        return [rotated, path.to_owned()].iter().try_for_each(|p| {
            match fs::remove_file(times::times_path(p)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        });
    }
    replace(
        &times::times_path(&rotated),
        &marks.slice(start.saturating_sub(max), start, now).encoded(),
    )?;
    replace(
        &times::times_path(path),
        &marks.slice(start, len, now).encoded(),
    )
}

struct Entry {
    path: PathBuf,
    max_bytes: u64,
    /// The last line-time mark written for `path` by this agent.
    marked: Option<Mark>,
}

#[derive(Default)]
struct Logs {
    entries: HashMap<String, Entry>,
}

/// The periodic size check over every running container's log.
///
/// One thread for all containers. It holds only a weak reference, so it ends within one
/// [`CHECK_EVERY`] after the runtime that owns the rotator is dropped.
pub(crate) struct Rotator {
    logs: Mutex<Logs>,
}

impl Rotator {
    pub(crate) fn start() -> io::Result<Arc<Self>> {
        let me = Arc::new(Self {
            logs: Mutex::new(Logs::default()),
        });
        let weak: Weak<Self> = Arc::downgrade(&me);
        // Ends with the last runtime holding the rotator.
        std::thread::Builder::new()
            .name("log-rotator".into())
            .spawn(move || loop {
                std::thread::sleep(CHECK_EVERY);
                match weak.upgrade() {
                    Some(r) => r.check_all(),
                    None => return,
                }
            })?;
        Ok(me)
    }

    /// A poisoned lock only means a rotation panicked; the map is still consistent.
    fn lock(&self) -> MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_all(&self) {
        let mut logs = self.lock();
        for (name, e) in &mut logs.entries {
            match mark(&e.path, e.marked) {
                Ok(m) => e.marked = m,
                Err(err) => {
                    tracing::warn!(container = %name, error = %err, "marking log times failed")
                }
            }
            match rotate_if_needed(&e.path, e.max_bytes) {
                Ok(true) => e.marked = None,
                Ok(false) => {}
                Err(err) => tracing::warn!(container = %name, error = %err, "log rotation failed"),
            }
        }
    }

    /// Starts bounding `path` for container `name` (replacing an earlier registration).
    pub(crate) fn watch(&self, name: &str, path: PathBuf, max_bytes: u64) {
        // Go on from what an earlier agent marked (the next mark is a delta from it).
        let marked = times::last(&path).ok().flatten();
        self.lock().entries.insert(
            name.to_owned(),
            Entry {
                path,
                max_bytes,
                marked,
            },
        );
    }

    /// Stops bounding the log of `name` and settles it with [`finish`]: its container exited.
    pub(crate) fn finish(&self, name: &str) {
        let mut logs = self.lock();
        if let Some(e) = logs.entries.remove(name) {
            // Its last lines get their time before the split.
            if let Err(err) = mark(&e.path, e.marked) {
                tracing::warn!(container = %name, error = %err, "marking log times failed");
            }
            if let Err(err) = finish(&e.path, e.max_bytes) {
                tracing::warn!(container = %name, error = %err, "settling the log failed");
            }
        }
    }

    /// Forgets `name` without touching its file.
    pub(crate) fn forget(&self, name: &str) {
        self.lock().entries.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn copytruncate_keeps_the_newest_bytes_and_appenders_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.log");
        let mut w = open_for_container(&path).unwrap();
        w.write_all(b"12345678").unwrap();
        assert!(!rotate_if_needed(&path, 10).unwrap());
        w.write_all(b"abcdef").unwrap();
        assert!(rotate_if_needed(&path, 10).unwrap());
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"5678abcdef");
        assert_eq!(fs::read(&path).unwrap(), b"");
        // Both closed to other users.
        for p in [&path, &rotated_path(&path)] {
            assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // The O_APPEND writer goes on at the new end, with no hole.
        w.write_all(b"xyz").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"xyz");
        assert!(!rotate_if_needed(&dir.path().join("missing"), 10).unwrap());
    }

    #[test]
    fn finish_splits_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        fs::write(&path, b"ABCDEFGHIJKLMNOPQRSTUVWXY").unwrap();
        finish(&path, 10).unwrap();
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"KLMNOPQRST");
        assert_eq!(fs::read(&path).unwrap(), b"UVWXY");
        // Within the bound: left alone, the earlier rotated file too.
        finish(&path, 10).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"UVWXY");
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"KLMNOPQRST");
        // An exact multiple keeps a full file.
        fs::write(&path, b"0123456789abcdefghij").unwrap();
        finish(&path, 10).unwrap();
        assert_eq!(fs::read(rotated_path(&path)).unwrap(), b"0123456789");
        assert_eq!(fs::read(&path).unwrap(), b"abcdefghij");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_rotator_bounds_a_registered_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let r = Rotator::start().unwrap();
        r.watch("c", path.clone(), 100);
        let mut w = open_for_container(&path).unwrap();
        w.write_all(&[b'x'; 500]).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while fs::metadata(&path).unwrap().len() > 100 {
            assert!(std::time::Instant::now() < end, "not rotated");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(fs::read(rotated_path(&path)).unwrap().len(), 100);
        w.write_all(b"tail").unwrap();
        r.finish("c");
        assert_eq!(fs::read(&path).unwrap(), b"tail");
        // Every byte kept has its time: marked before the rotation, and before the split.
        let rot = Times::load(&rotated_path(&path)).unwrap();
        assert_eq!(rot.marks.last().map(|m| m.end), Some(100));
        let live = Times::load(&path).unwrap();
        assert_eq!(live.marks.last().map(|m| m.end), Some(4));
        let now = times::now_nanos();
        assert!(live
            .marks
            .iter()
            .chain(&rot.marks)
            .all(|m| m.nanos <= now && m.nanos > now - 20_000_000_000));
    }
}
