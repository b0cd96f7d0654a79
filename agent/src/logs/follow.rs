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
//! With `--since`, lines start at the first one whose time ([`super::times`]) is at or
//! after it, in `<log>.1` or `<log>`, and `--tail` counts from there. With `--timestamps`,
//! each line gets its time in front; the times a session prints never go back.
//!
//! Known imprecision: when a container exits with its log past the bound, the rotator
//! settles it by replacing the file (a new inode), which a follower takes for a new
//! instance: it then repeats that file's bytes (at most one bound's worth). The bytes
//! between a rotation's copy and its truncate are lost to the file itself, so to `-f` too.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::times::{self, Mark, Times};

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
    // The line times go with their files; a log without any gets none.
    for (from, to) in [
        (rotated(log), rotated(&prev)),
        (log.to_owned(), prev.clone()),
    ] {
        match fs::rename(times::times_path(&from), times::times_path(&to)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::remove_file(times::times_path(&to)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            r => r?,
        }
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

/// Where the line holding byte `at` of `f` starts.
fn line_start(f: &mut File, at: u64) -> io::Result<u64> {
    let mut end = at;
    while end > 0 {
        let start = end.saturating_sub(SCAN_BLOCK);
        let block = read_at(f, start, end - start)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn mtime_nanos(f: &File) -> io::Result<i64> {
    Ok(times::nanos_of(f.metadata()?.modified()?))
}

/// The marks of a file nobody appends to any more (a rotated or previous log): bytes past
/// its last mark were written at the latest when the file was last modified.
fn closed_times(path: &Path, f: &File) -> io::Result<Times> {
    let mut t = Times::load(path)?;
    let len = f.metadata()?.len();
    if t.marks.last().map_or(0, |m| m.end) < len {
        let nanos = mtime_nanos(f)?;
        let nanos = t.marks.last().map_or(nanos, |m| m.nanos.max(nanos));
        t.marks.push(Mark { end: len, nanos });
    }
    Ok(t)
}

/// Where lines at or after `since` start in `f`: `None` when all of it is that recent.
fn since_start(f: &mut File, t: &Times, since: i64) -> io::Result<Option<u64>> {
    match t.cut(since) {
        None => Ok(None),
        Some(at) => Ok(Some(line_start(f, at)?)),
    }
}

/// A piece of a file still to be returned.
struct Segment {
    file: File,
    at: u64,
    end: u64,
    times: Times,
}

/// The file the container writes now.
struct Live {
    file: File,
    at: u64,
    ino: u64,
    times: Times,
}

/// Which file a piece came from.
#[derive(Clone, Copy)]
enum Src {
    Backlog,
    Live,
}

/// What to read beyond the plain log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Select {
    /// Only lines written at or after this (nanoseconds since the epoch).
    pub since: Option<i64>,
    /// Each line prefixed with its time.
    pub timestamps: bool,
}

/// One container's log, read chunk by chunk.
pub struct Follower {
    path: PathBuf,
    /// What is kept from before the live file (a rotated log), still to be returned.
    backlog: Option<Segment>,
    live: Option<Live>,
    follow: bool,
    mark: Vec<u8>,
    timestamps: bool,
    /// The next byte returned starts a line (gets a time with `timestamps`).
    at_line_start: bool,
    /// The last time printed: times never go back within a session.
    last_time: i64,
    /// The live file's marks were read again for this chunk already.
    reloaded: bool,
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
        Self::open_with(path, previous_instance, follow, tail, Select::default())
    }

    /// As [`Self::open`], only lines since `sel.since` (then the last `tail` of those).
    pub fn open_with(
        path: &Path,
        previous_instance: bool,
        follow: bool,
        tail: Option<u32>,
        sel: Select,
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
        // The live file's unmarked end counts as written when it was last modified.
        let live_times = closed_times(&path, &live)?;
        let rot_path = rotated(&path);
        let mut rot = match open(&rot_path)? {
            Some(f) => {
                let t = closed_times(&rot_path, &f)?;
                Some((f, t))
            }
            None => None,
        };
        let live_cut = match sel.since {
            Some(s) => since_start(&mut live, &live_times, s)?,
            None => None,
        };
        let rot_cut = match (sel.since, rot.as_mut()) {
            (Some(s), Some((f, t))) => since_start(f, t, s)?.unwrap_or(0),
            _ => 0,
        };
        let (live_at, backlog) = match (live_cut, tail) {
            // The window starts in the live file: nothing of the rotated one is that recent.
            (Some(cut), None) => (cut, None),
            (Some(cut), Some(n)) => match tail_start(&mut live, len, n)? {
                Ok(at) => (at.max(cut), None),
                Err(_) => (cut, None),
            },
            (None, None) => (0, rot.map(|(f, t)| (f, t, rot_cut))),
            (None, Some(n)) => match tail_start(&mut live, len, n)? {
                Ok(at) => (at, None),
                Err(more) => {
                    let from = match rot.as_mut() {
                        Some((r, _)) if more > 0 => {
                            let rlen = r.metadata()?.len();
                            Some(tail_start(r, rlen, more)?.unwrap_or(0).max(rot_cut))
                        }
                        _ => None,
                    };
                    (0, from.and_then(|at| rot.map(|(f, t)| (f, t, at))))
                }
            },
        };
        let backlog = match backlog {
            Some((f, times, at)) => {
                let end = f.metadata()?.len();
                Some(Segment {
                    file: f,
                    at,
                    end,
                    times,
                })
            }
            None => None,
        };
        Ok(Some(Self {
            path,
            backlog,
            live: Some(Live {
                file: live,
                at: live_at,
                ino,
                times: Times::default(),
            }),
            // The previous instance writes no more.
            follow: follow && !previous_instance,
            mark: Vec::new(),
            timestamps: sel.timestamps,
            at_line_start: true,
            last_time: i64::MIN,
            reloaded: false,
        }))
    }

    pub fn follows(&self) -> bool {
        self.follow
    }

    /// Up to `max` bytes that are there now; empty when there is nothing new (then, unless
    /// following, the log has ended).
    pub fn next_chunk(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let Some((data, src, at)) = self.read_raw(max as u64)? else {
            return Ok(Vec::new());
        };
        if !self.timestamps {
            self.remember(&data);
            return Ok(data);
        }
        self.reloaded = false;
        let (out, used) = self.stamp(&data, src, at, max)?;
        // What did not fit with its times is read again next time.
        let back = (data.len() - used) as u64;
        match src {
            Src::Backlog => {
                if let Some(seg) = &mut self.backlog {
                    seg.at -= back;
                }
            }
            Src::Live => {
                if let Some(l) = &mut self.live {
                    l.at -= back;
                }
            }
        }
        self.remember(&data[..used]);
        Ok(out)
    }

    /// The next bytes there are, where they came from and their offset in that file.
    fn read_raw(&mut self, max: u64) -> io::Result<Option<(Vec<u8>, Src, u64)>> {
        if let Some(seg) = &mut self.backlog {
            if seg.at < seg.end {
                let at = seg.at;
                let data = read_at(&mut seg.file, at, max.min(seg.end - at))?;
                if !data.is_empty() {
                    seg.at += data.len() as u64;
                    return Ok(Some((data, Src::Backlog, at)));
                }
            }
            self.backlog = None;
        }
        let Some(live) = &mut self.live else {
            return Ok(None);
        };
        let len = live.file.metadata()?.len();
        if len < live.at {
            // Copy-truncated under us: what we missed ends the rotated log.
            live.at = 0;
            live.times = Times::default();
            self.backlog = self.resync()?;
            return self.read_raw(max);
        }
        let at = live.at;
        let data = read_at(&mut live.file, at, max)?;
        live.at += data.len() as u64;
        if !data.is_empty() {
            return Ok(Some((data, Src::Live, at)));
        }
        if !self.follow {
            return Ok(None);
        }
        // Nothing new in this instance's file: has a new instance started?
        if let Ok(m) = fs::metadata(&self.path) {
            if m.ino() != live.ino {
                if let Some(f) = open(&self.path)? {
                    let ino = f.metadata()?.ino();
                    self.live = Some(Live {
                        file: f,
                        at: 0,
                        ino,
                        times: Times::default(),
                    });
                    self.mark.clear();
                    return self.read_raw(max);
                }
            }
        }
        Ok(None)
    }

    /// When the byte at `offset` of `src` was written.
    fn time_of(&mut self, src: Src, offset: u64) -> io::Result<i64> {
        let t = match src {
            Src::Backlog => match &self.backlog {
                Some(seg) => seg.times.time_of(offset),
                None => None,
            },
            Src::Live => match &mut self.live {
                Some(l) => match l.times.time_of(offset) {
                    Some(t) => Some(t),
                    None if !self.reloaded => {
                        // Marked since we last looked, or not yet (then: its mtime).
                        self.reloaded = true;
                        l.times = Times::load(&self.path)?;
                        match l.times.time_of(offset) {
                            Some(t) => Some(t),
                            None => Some(mtime_nanos(&l.file)?),
                        }
                    }
                    None => Some(mtime_nanos(&l.file)?),
                },
                None => None,
            },
        };
        Ok(t.unwrap_or_else(times::now_nanos))
    }

    /// `data` (read at `at` of `src`) with each line's time in front, at most `max` bytes
    /// of it, and how many bytes of `data` that took.
    fn stamp(
        &mut self,
        data: &[u8],
        src: Src,
        at: u64,
        max: usize,
    ) -> io::Result<(Vec<u8>, usize)> {
        let mut out = Vec::with_capacity(max.min(data.len() * 2));
        let mut used = 0;
        while used < data.len() {
            let rest = &data[used..];
            let piece_len = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let prefix = if self.at_line_start {
                let t = self.time_of(src, at + (used + piece_len - 1) as u64)?;
                self.last_time = self.last_time.max(t);
                let mut p = times::rfc3339(self.last_time);
                p.push(' ');
                p
            } else {
                String::new()
            };
            let room = max.saturating_sub(out.len() + prefix.len());
            let take = if piece_len <= room {
                piece_len
            } else if out.is_empty() && room > 0 {
                // A line longer than a chunk: its first part now, the rest without a time.
                room
            } else {
                break;
            };
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&rest[..take]);
            self.at_line_start = rest[take - 1] == b'\n';
            used += take;
        }
        Ok((out, used))
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
        let times = closed_times(&rotated(&self.path), &r)?;
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
        Ok(Some(Segment {
            file: r,
            at,
            end,
            times,
        }))
    }
}
