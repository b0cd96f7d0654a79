//! Hostile layers for the property test (`unpack/tests.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/layer_unpack.rs`): arbitrary tar entries (names, hard and symbolic
//! links, whiteouts, modes, devices, xattrs, sizes) are unpacked into a layer directory of a
//! store-like sandbox, and [`check`] fails if anything outside that directory was created,
//! changed or removed, if a failed unpack left anything behind, or if the meter charged less
//! than the layer takes on disk.
//!
//! The sandbox: `<top>/g/g/.../g/` ([`GUARD_DEPTH`] levels) holding `outside/` (a file, a
//! directory, a fifo) and `store/layers/sha256/` with a sibling layer; the layer is unpacked
//! to `store/layers/sha256/<new>`. Link targets are drawn from names inside the sandbox only
//! (relative ones climb at most [`MAX_UP`] levels per hop), so even a broken unpacker could
//! not reach above `<top>`: a bug shows as a difference, never as damage to the machine.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::gc::du;
use super::unpack::{unpack_layer, Tally};

/// Guard directories above the sandbox: more than any chain of [`MAX_ENTRIES`] symlinks of
/// [`MAX_UP`] `..` each can climb.
pub const GUARD_DEPTH: usize = 64;
pub const MAX_ENTRIES: usize = 12;
pub const MAX_UP: usize = 4;

/// Path components entries and link targets are made of.
pub const PARTS: &[&str] = &[
    "a",
    "b",
    ".",
    "..",
    "",
    ".wh.a",
    ".wh.b",
    ".wh..",
    ".wh...",
    ".wh.",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    "victim",
    "outside",
    "other",
    "layers",
    "sha256",
];

/// Absolute link targets, relative to the sandbox (made absolute when the tar is built).
pub const ABSOLUTE: &[&str] = &[
    "outside",
    "outside/victim",
    "outside/dir",
    "store/layers/sha256",
    "store/layers/sha256/other",
    "store/layers/sha256/other/bin",
];

/// tar type flags tried: regular (both spellings), hard link, symlink, char, block, dir,
/// fifo, contiguous, and two a POSIX reader treats as regular files.
pub const KINDS: &[u8] = &[
    b'0', 0, b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'V', b'Z',
];

/// One tar entry, as raw as a hostile registry could send it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Indices into [`PARTS`], joined with `/`.
    pub path: Vec<u8>,
    pub leading_slash: bool,
    pub trailing_slash: bool,
    /// Index into [`KINDS`].
    pub kind: u8,
    /// Link target: `Some(i)` is [`ABSOLUTE`]`[i]`; `None` uses `link_parts`.
    pub link_abs: Option<u8>,
    pub link_parts: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub major: u32,
    pub minor: u32,
    /// Bytes of data (a repeated pattern).
    pub size: u32,
    /// A pax xattr on the entry: 0 none, 1 `user.x`, 2 `trusted.overlay.redirect`,
    /// 3 `security.capability`.
    pub xattr: u8,
}

/// Decodes fuzzer bytes into entries (every input is valid).
pub fn decode(data: &[u8]) -> (Vec<Entry>, Option<u64>, bool) {
    let mut it = data.iter().copied();
    let mut next = move || it.next();
    let flags = next().unwrap_or(0);
    let limit = (flags & 1 == 1).then(|| u64::from(next().unwrap_or(0)) * 1024);
    let gzip = flags & 2 == 2;
    let mut entries = Vec::new();
    while entries.len() < MAX_ENTRIES {
        let Some(head) = next() else { break };
        let n_parts = 1 + (head & 3) as usize;
        let path = (0..n_parts)
            .map(|_| next().unwrap_or(0) % PARTS.len() as u8)
            .collect();
        let kind = next().unwrap_or(0) % KINDS.len() as u8;
        let link = next().unwrap_or(0);
        let link_abs = (link & 0x80 != 0).then_some((link & 0x7f) % ABSOLUTE.len() as u8);
        let link_parts = (0..1 + (link & 3) as usize)
            .map(|_| next().unwrap_or(0) % PARTS.len() as u8)
            .collect();
        let m = next().unwrap_or(0);
        let mode = [0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o7777, 0o600][(m & 7) as usize];
        let dev = next().unwrap_or(0);
        let size = match next().unwrap_or(0) {
            s @ 0..=200 => u32::from(s),
            s => u32::from(s) * 256,
        };
        entries.push(Entry {
            path,
            leading_slash: head & 4 != 0,
            trailing_slash: head & 8 != 0,
            kind,
            link_abs,
            link_parts,
            mode,
            uid: u32::from(m >> 3 & 3) * 1000,
            gid: u32::from(m >> 5 & 3) * 1000,
            major: u32::from(dev >> 4),
            minor: u32::from(dev & 15),
            size,
            xattr: (head >> 4) & 3,
        });
    }
    (entries, limit, gzip)
}

struct Sandbox {
    top: PathBuf,
    base: PathBuf,
    layers: PathBuf,
    before: Snapshot,
}

type Snapshot = BTreeMap<PathBuf, String>;

/// One sandbox per process (fuzzing runs many inputs), made on first use; unpacks are
/// serialised on it.
static SANDBOX: Mutex<Option<Sandbox>> = Mutex::new(None);

fn make_sandbox() -> Sandbox {
    let top = std::env::temp_dir().join(format!("baton-hostile-{}", std::process::id()));
    let _ = fs::remove_dir_all(&top);
    let mut base = top.clone();
    for _ in 0..GUARD_DEPTH {
        base.push("g");
    }
    let outside = base.join("outside");
    fs::create_dir_all(outside.join("dir")).expect("sandbox");
    fs::write(outside.join("victim"), b"keep").expect("sandbox");
    fs::write(outside.join("dir/file"), b"keep").expect("sandbox");
    nix::unistd::mkfifo(
        &outside.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("sandbox");
    let layers = base.join("store/layers/sha256");
    fs::create_dir_all(layers.join("other")).expect("sandbox");
    fs::write(layers.join("other/bin"), b"keep").expect("sandbox");
    let before = snapshot(&top, &layers);
    Sandbox {
        top,
        base,
        layers,
        before,
    }
}

/// Everything under `top` but the new layer (and its temporary siblings), with what a
/// layer could change: type, mode, owner, size, content, link target, device, xattrs, and
/// the link count of non-directories (a hard link to an outside file raises it).
fn snapshot(top: &Path, layers: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.parent() == Some(layers)
            && p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"new"))
        {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&p) else {
            out.insert(p, "vanished".into());
            continue;
        };
        let ft = m.file_type();
        let mut desc = format!(
            "{:?} mode {:o} owner {}:{} rdev {}",
            if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "other"
            },
            m.mode(),
            m.uid(),
            m.gid(),
            m.rdev()
        );
        if !ft.is_dir() {
            desc.push_str(&format!(" nlink {} size {}", m.nlink(), m.len()));
        }
        if ft.is_file() {
            let h = fs::read(&p).map(|b| hex::encode(Sha256::digest(b)));
            desc.push_str(&format!(" sha {h:?}"));
        }
        if ft.is_symlink() {
            desc.push_str(&format!(" -> {:?}", fs::read_link(&p).ok()));
        }
        if let Ok(names) = xattr::list(&p) {
            for n in names {
                let v = xattr::get(&p, &n).ok().flatten();
                desc.push_str(&format!(" xattr {n:?}={v:?}"));
            }
        }
        if ft.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                for e in rd.flatten() {
                    stack.push(e.path());
                }
            }
        }
        out.insert(p, desc);
    }
    out
}

fn header(name: &[u8], kind: u8, link: &[u8], e: &Entry, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let mut field = |off: usize, len: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = len - 1);
        let b = s.as_bytes();
        let b = &b[b.len().saturating_sub(len)..];
        h[off..off + b.len()].copy_from_slice(b);
    };
    field(100, 8, u64::from(e.mode));
    field(108, 8, u64::from(e.uid));
    field(116, 8, u64::from(e.gid));
    field(124, 12, size);
    field(136, 12, 1_700_000_000);
    field(329, 8, u64::from(e.major));
    field(337, 8, u64::from(e.minor));
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn push_record(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// The tar bytes of `entries`, with link targets resolved against `base`.
pub fn build_tar(entries: &[Entry], base: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut name: Vec<u8> = Vec::new();
        if e.leading_slash {
            name.push(b'/');
        }
        let parts: Vec<&str> = e
            .path
            .iter()
            .map(|&i| PARTS[i as usize % PARTS.len()])
            .collect();
        name.extend_from_slice(parts.join("/").as_bytes());
        if e.trailing_slash {
            name.push(b'/');
        }
        let link: Vec<u8> = match e.link_abs {
            Some(i) => base
                .join(ABSOLUTE[i as usize % ABSOLUTE.len()])
                .as_os_str()
                .as_bytes()
                .to_vec(),
            None => {
                let mut ups = 0;
                let parts: Vec<&str> = e
                    .link_parts
                    .iter()
                    .map(|&i| PARTS[i as usize % PARTS.len()])
                    .filter(|p| {
                        *p != ".." || {
                            ups += 1;
                            ups <= MAX_UP
                        }
                    })
                    .collect();
                parts.join("/").into_bytes()
            }
        };
        let mut pax = Vec::new();
        let mut record = |k: &str, v: &[u8]| {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while format!("{len} ").len() + body_len - 1 != len {
                len = format!("{len} ").len() + body_len - 1;
            }
            pax.extend_from_slice(format!("{len} {k}=").as_bytes());
            pax.extend_from_slice(v);
            pax.push(b'\n');
        };
        match e.xattr {
            1 => record("SCHILY.xattr.user.x", b"v"),
            2 => record("SCHILY.xattr.trusted.overlay.redirect", b"/outside"),
            3 => record("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
            _ => {}
        }
        if link.len() > 100 {
            record("linkpath", &link);
        }
        if name.len() > 100 {
            record("path", &name);
        }
        if !pax.is_empty() {
            out.extend_from_slice(&header(b"pax", b'x', b"", e, pax.len() as u64));
            push_record(&mut out, &pax);
        }
        let kind = KINDS[e.kind as usize % KINDS.len()];
        out.extend_from_slice(&header(&name, kind, &link, e, u64::from(e.size)));
        let data: Vec<u8> = (0..e.size).map(|i| (i % 251) as u8).collect();
        push_record(&mut out, &data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Removes the sandbox (the property test calls it when done; a fuzzing process leaves it).
pub fn cleanup() {
    let mut sb = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sb) = sb.take() {
        let _ = fs::remove_dir_all(&sb.top);
    }
}

/// Unpacks `entries` (gzipped if `gzip`, under a meter with `limit`) and checks the
/// invariants; `Err` says which broke.
pub fn check(entries: &[Entry], limit: Option<u64>, gzip: bool) -> Result<(), String> {
    let mut guard = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let sb = guard.get_or_insert_with(make_sandbox);
    let tar = build_tar(entries, &sb.base);
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let blob_bytes = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).map_err(|e| e.to_string())?;
        gz.finish().map_err(|e| e.to_string())?
    } else {
        tar
    };
    let blob = sb.top.join("blob");
    fs::write(&blob, &blob_bytes).map_err(|e| e.to_string())?;
    let dest = sb.layers.join("new");
    let tally = Tally {
        limit,
        ..Tally::default()
    };
    let result = unpack_layer(&blob, &dest, "sha256:fuzz", &diff_id, &tally);
    let mut problems = Vec::new();
    if let (Ok(()), Some(limit)) = (&result, limit) {
        if tally.charged.get() > limit {
            problems.push(format!(
                "charged {} over the limit {limit}",
                tally.charged.get()
            ));
        }
    }
    match &result {
        Ok(()) => match du(&dest) {
            Ok(used) if used > tally.charged.get() => problems.push(format!(
                "the layer takes {used} B but only {} B were charged",
                tally.charged.get()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("cannot measure the layer: {e}")),
        },
        // Refused, over the limit, or an io error a broken tar causes (a hard link to
        // nothing): all fine, as long as nothing stays.
        Err(_) => {
            if dest.exists() {
                problems.push("a failed layer is in place".into());
            }
        }
    }
    let leftovers: Vec<_> = fs::read_dir(&sb.layers)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    if !leftovers.is_empty() {
        problems.push(format!("temporary directories left: {leftovers:?}"));
    }
    let _ = fs::remove_dir_all(&dest);
    let _ = fs::remove_file(&blob);
    let after = snapshot(&sb.top, &sb.layers);
    if after != sb.before {
        for (p, d) in &sb.before {
            match after.get(p) {
                None => problems.push(format!("removed: {} ({d})", p.display())),
                Some(a) if a != d => problems.push(format!("changed: {}: {d} -> {a}", p.display())),
                _ => {}
            }
        }
        for (p, a) in &after {
            if !sb.before.contains_key(p) {
                problems.push(format!("created: {} ({a})", p.display()));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{result:?}: {}", problems.join("; ")))
    }
}
