//! When each line of a container's log was written (`baton logs --since/--timestamps`), kept
//! beside the log in `<log>.times` at a few bytes per line.
//!
//! The container writes its log itself (see `crate::runtime` `logs`), so nothing can put a
//! time on each line as it is written, the way CRI's `time stream tag line` format does,
//! without putting a process back between the container and its log. Instead the rotator,
//! which looks at every log's size every `CHECK_EVERY` (250 ms) anyway, appends a mark
//! "the log reached byte E at time T" when the log grew. A line's time is that of the first
//! mark at or past its end: at most one check late, and never early. Written while the agent
//! is down, lines get the time of the agent's first check after it is back.
//!
//! Cost, for the SD card: a mark is the growth and the time since the previous mark as two
//! LEB128 numbers (bytes; milliseconds), so a line a second of 20-200 bytes costs 3 bytes
//! where CRI's prefix costs 36-41 per line; a chatty container costs at most 4 marks a
//! second, however many lines. Marks are plain appends into the page cache, never synced,
//! like the log itself. An absolute mark (a 0 byte, then the end and the time as 8-byte
//! little-endian numbers) starts each file, and is written whenever a delta does not fit
//! (the clock went back).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `<file>.times`: the marks of any log file (`<log>`, `<log>.1`, `<log>.previous.log`, ...).
pub fn times_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".times");
    PathBuf::from(s)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    nanos_of(SystemTime::now())
}

pub fn nanos_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// "The file had reached byte `end` at `nanos`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub end: u64,
    pub nanos: i64,
}

/// The marks of one file, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Times {
    pub marks: Vec<Mark>,
}

fn put_leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn get_leb(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes `m`, as a delta from `prev` when there is one and it fits.
pub fn encode(prev: Option<Mark>, m: Mark, out: &mut Vec<u8>) {
    if let Some(p) = prev {
        let grew = m.end.checked_sub(p.end).filter(|&g| g > 0);
        let ms = m.nanos.checked_sub(p.nanos).filter(|&d| d >= 0);
        if let (Some(grew), Some(ns)) = (grew, ms) {
            put_leb(out, grew);
            put_leb(out, (ns / 1_000_000) as u64);
            return;
        }
    }
    out.push(0);
    out.extend_from_slice(&m.end.to_le_bytes());
    out.extend_from_slice(&m.nanos.to_le_bytes());
}

impl Times {
    /// Decodes what [`encode`] wrote; a torn last mark (a crash mid-append) is dropped.
    pub fn decode(b: &[u8]) -> Self {
        let mut marks: Vec<Mark> = Vec::new();
        let mut at = 0;
        while at < b.len() {
            if b[at] == 0 {
                let Some(raw) = b.get(at + 1..at + 17) else {
                    break;
                };
                let end = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
                let nanos = i64::from_le_bytes(raw[8..].try_into().unwrap_or_default());
                at += 17;
                marks.push(Mark { end, nanos });
                continue;
            }
            let Some(p) = marks.last().copied() else {
                break;
            };
            let (Some(grew), Some(ms)) = (get_leb(b, &mut at), get_leb(b, &mut at)) else {
                break;
            };
            let nanos = i64::try_from(ms)
                .ok()
                .and_then(|ms| ms.checked_mul(1_000_000))
                .and_then(|d| p.nanos.checked_add(d))
                .unwrap_or(i64::MAX);
            marks.push(Mark {
                end: p.end.saturating_add(grew),
                nanos,
            });
        }
        Self { marks }
    }

    /// The marks of `log` (none if it has no `.times`).
    pub fn load(log: &Path) -> io::Result<Self> {
        match fs::read(times_path(log)) {
            Ok(b) => Ok(Self::decode(&b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = None;
        for &m in &self.marks {
            encode(prev, m, &mut out);
            prev = Some(m);
        }
        out
    }

    /// When the byte at `offset` was written: the first mark past it. `None`: not marked
    /// yet (written since the last check, or while no agent was there).
    pub fn time_of(&self, offset: u64) -> Option<i64> {
        let i = self.marks.partition_point(|m| m.end <= offset);
        self.marks.get(i).map(|m| m.nanos)
    }

    /// Where the lines written at or after `since` can start: `None` when every marked
    /// byte is that recent (the file before this one may hold some too); otherwise the
    /// end of the last mark older than `since` (lines there may begin a little before it).
    pub fn cut(&self, since: i64) -> Option<u64> {
        let i = self.marks.partition_point(|m| m.nanos < since);
        (i > 0).then(|| self.marks[i - 1].end)
    }

    /// The marks of bytes `from..to` of this file, renumbered from `from`, as they are once
    /// those bytes are a file of their own; bytes past the last mark get `now`.
    pub fn slice(&self, from: u64, to: u64, now: i64) -> Self {
        let mut marks = Vec::new();
        for m in &self.marks {
            if m.end <= from {
                continue;
            }
            marks.push(Mark {
                end: m.end.min(to) - from,
                nanos: m.nanos,
            });
            if m.end >= to {
                return Self { marks };
            }
        }
        if to > from {
            let nanos = marks.last().map_or(now, |m: &Mark| m.nanos.max(now));
            marks.push(Mark {
                end: to - from,
                nanos,
            });
        }
        Self { marks }
    }
}

/// Appends one mark to `<log>.times`, owner-only like the log.
pub fn append(log: &Path, prev: Option<Mark>, m: Mark, mode: u32) -> io::Result<()> {
    let mut buf = Vec::with_capacity(17);
    encode(prev, m, &mut buf);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(times_path(log))?
        .write_all(&buf)
}

/// The last mark of `<log>.times`, read when an agent starts watching a log (it may have
/// been marked by the agent before this one).
pub fn last(log: &Path) -> io::Result<Option<Mark>> {
    let mut b = Vec::new();
    match File::open(times_path(log)) {
        Ok(mut f) => f.read_to_end(&mut b)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Times::decode(&b).marks.last().copied())
}

/// Renders `nanos` as RFC 3339 with nanoseconds in UTC, as `--timestamps` prints it.
pub fn rfc3339(nanos: i64) -> String {
    let t = if nanos >= 0 {
        UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_nanos(t).to_string()
}
