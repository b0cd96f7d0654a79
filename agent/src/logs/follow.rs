//! Reading one container's log as `baton logs` wants it: the last N lines of what is kept
//! (the rotated `<log>.1`, then `<log>`), then, when following, whatever is written next,
//! across copy-truncate rotations and container restarts.
//!
//! The reader holds at most one chunk and a short tail of what it returned: it reads the
//! files only when asked for the next chunk, which the session asks only when it has
//! credit (see [`super`]). So a slow requester costs the agent no memory, only an open
//! file.
//!
//! How the two changes a live log sees are told apart:
//! - a restart moves `<log>` to `<log>` of the previous instance ([`keep_previous`]) and
//!   the new instance opens a new file: the inode at the path changes. What the old
//!   instance wrote last is still read from the open handle, then the new file from 0;
//! - a rotation copy-truncates (`crate::runtime` `logs`): same inode, shorter than where we
//!   are. The bytes we missed are the end of `<log>.1`; they are found after the last bytes
//!   we returned ([`MARK`] of them), searched in the last [`RESYNC_WINDOW`] of `<log>.1`.
//!
//! Known imprecision: when a container exits with its log past the bound, the rotator
//! settles it by replacing the file (a new inode), which a follower takes for a new
//! instance: it then repeats that file's bytes (at most one bound's worth). The bytes
//! between a rotation's copy and its truncate are lost to the file itself, so to `-f` too.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How many of the last bytes returned are kept to find our place after a rotation.
const MARK: usize = 64;
/// How much of the end of `<log>.1` is searched for that place.
const RESYNC_WINDOW: u64 = 256 * 1024;
/// Block size of the backward scan for `--tail`.
const SCAN_BLOCK: u64 = 8 * 1024;

/// `<log>.1`.
pub fn rotated(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Where the previous instance's log is kept: `<name>.previous.log` beside `<name>.log`.
pub fn previous(log: &Path) -> PathBuf {
    let stem = log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    log.with_file_name(format!("{stem}.previous.log"))
}

/// Before a container starts again: its log (and rotated log) become the previous
/// instance's, for `baton logs --previous`, and the new instance starts an empty log as
/// Kubernetes does. A previous rotated log without a current one is removed, so the pair
/// always belongs to one instance.
pub fn keep_previous(log: &Path) -> io::Result<()> {
    if !log.exists() {
        return Ok(());
    }
    let prev = previous(log);
    match fs::rename(rotated(log), rotated(&prev)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::remove_file(rotated(&prev)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
        Err(e) => return Err(e),
    }
    fs::rename(log, &prev)
}

/// Reads `len` bytes at `at` of `f` (fewer at its end).
fn read_at(f: &mut File, at: u64, len: u64) -> io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

fn open(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the last `lines` lines of `f` (of length `len`) start, or `None` if `f` has
/// fewer: then `Some(n)` lines are still wanted from before it.
fn tail_start(f: &mut File, len: u64, lines: u32) -> io::Result<Result<u64, u32>> {
    if lines == 0 {
        return Ok(Ok(len));
    }
    // A final line without its newline counts as a line; a trailing newline does not
    // start one.
    let mut want = lines;
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(SCAN_BLOCK);
        let block = read_at(f, start, end - start)?;
        for (i, &b) in block.iter().enumerate().rev() {
            let at = start + i as u64;
            if b == b'\n' && at + 1 != len {
                want -= 1;
                if want == 0 {
                    return Ok(Ok(at + 1));
                }
            }
        }
        end = start;
    }
    // The whole file is fewer lines than wanted: the rest come from before it.
    Ok(Err(want.saturating_sub(u32::from(len > 0))))
}

/// A piece of a file still to be returned.
struct Segment {
    file: File,
    at: u64,
    end: u64,
}

/// One container's log, read chunk by chunk.
pub struct Follower {
    path: PathBuf,
    /// What is kept from before the live file (a rotated log), still to be returned.
    backlog: Option<Segment>,
    /// The live file, where we are in it and its inode.
    live: Option<(File, u64, u64)>,
    follow: bool,
    mark: Vec<u8>,
}

impl Follower {
    /// The log at `path` (the current instance's, or with `previous` the last terminated
    /// one's), from its last `tail` lines. `Ok(None)`: there is no such log.
    pub fn open(
        path: &Path,
        previous_instance: bool,
        follow: bool,
        tail: Option<u32>,
    ) -> io::Result<Option<Self>> {
        let path = if previous_instance {
            previous(path)
        } else {
            path.to_owned()
        };
        let Some(mut live) = open(&path)? else {
            return Ok(None);
        };
        let ino = live.metadata()?.ino();
        let len = live.metadata()?.len();
        let mut rot = open(&rotated(&path))?;
        let (live_at, backlog) = match tail {
            None => (0, rot.map(|f| (f, 0))),
            Some(n) => match tail_start(&mut live, len, n)? {
                Ok(at) => (at, None),
                Err(more) => {
                    let from = match rot.as_mut() {
                        Some(r) if more > 0 => {
                            let rlen = r.metadata()?.len();
                            Some(tail_start(r, rlen, more)?.unwrap_or(0))
                        }
                        _ => None,
                    };
                    (0, from.and_then(|at| rot.map(|f| (f, at))))
                }
            },
        };
        let backlog = match backlog {
            Some((f, at)) => {
                let end = f.metadata()?.len();
                Some(Segment { file: f, at, end })
            }
            None => None,
        };
        Ok(Some(Self {
            path,
            backlog,
            live: Some((live, live_at, ino)),
            // The previous instance writes no more.
            follow: follow && !previous_instance,
            mark: Vec::new(),
        }))
    }

    pub fn follows(&self) -> bool {
        self.follow
    }

    /// Up to `max` bytes that are there now; empty when there is nothing new (then, unless
    /// following, the log has ended).
    pub fn next_chunk(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let max = max as u64;
        if let Some(seg) = &mut self.backlog {
            let data = read_at(&mut seg.file, seg.at, max.min(seg.end - seg.at))?;
            seg.at += data.len() as u64;
            if seg.at >= seg.end || data.is_empty() {
                self.backlog = None;
            }
            if !data.is_empty() {
                self.remember(&data);
                return Ok(data);
            }
        }
        let Some((f, at, ino)) = &mut self.live else {
            return Ok(Vec::new());
        };
        let len = f.metadata()?.len();
        if len < *at {
            // Copy-truncated under us: what we missed ends the rotated log.
            let missed = self.resync()?;
            if let Some((_, at, _)) = &mut self.live {
                *at = 0;
            }
            self.backlog = missed;
            return self.next_chunk(max as usize);
        }
        let data = read_at(f, *at, max)?;
        *at += data.len() as u64;
        if !data.is_empty() || !self.follow {
            self.remember(&data);
            return Ok(data);
        }
        // Nothing new in this instance's file: has a new instance started?
        if let Ok(m) = fs::metadata(&self.path) {
            if m.ino() != *ino {
                if let Some(f) = open(&self.path)? {
                    let ino = f.metadata()?.ino();
                    self.live = Some((f, 0, ino));
                    self.mark.clear();
                    return self.next_chunk(max as usize);
                }
            }
        }
        Ok(Vec::new())
    }

    fn remember(&mut self, data: &[u8]) {
        self.mark.extend_from_slice(data);
        let extra = self.mark.len().saturating_sub(MARK);
        self.mark.drain(..extra);
    }

    /// The part of `<log>.1` after the last bytes we returned (all of the searched window
    /// if they are not found there).
    fn resync(&mut self) -> io::Result<Option<Segment>> {
        let Some(mut r) = open(&rotated(&self.path))? else {
            return Ok(None);
        };
        let end = r.metadata()?.len();
        let start = end.saturating_sub(RESYNC_WINDOW);
        let window = read_at(&mut r, start, end - start)?;
        let mark = self.mark.as_slice();
        let n = mark.len();
        let found = (n > 0)
            .then(|| window.windows(n).rposition(|w| w == mark))
            .flatten()
            .map(|i| i + n)
            // The rotated log may begin inside the mark: the longest end of the mark that
            // begins the window.
            .or_else(|| (1..n).rev().find(|&k| window.starts_with(&mark[n - k..])));
        let at = start + found.unwrap_or(0) as u64;
        Ok(Some(Segment { file: r, at, end }))
    }
}
