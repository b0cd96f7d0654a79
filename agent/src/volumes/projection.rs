//! Projected files (ConfigMap volumes): which files a volume holds, and how a new version
//! replaces the old one under a running container.
//!
//! [`project`] is pure: a ConfigMap's keys plus the volume's `items` and `defaultMode` in,
//! the files out, with Kubernetes' rules (every key when `items` is empty, a missing key
//! an error unless the volume is `optional`, paths relative and never through `..`).
//!
//! [`AtomicDir::write`] is kubelet's AtomicWriter layout, so a container that reads while
//! the content changes sees the old version or the new one, never a mix or a gap:
//!
//! ```text
//! <dir>/..2026_12_06_21_55_58.123456789/   one complete version
//! <dir>/..data -> ..2026_12_06_21_55_58.123456789
//! <dir>/<key>  -> ..data/<key>             one symlink per top-level name
//! ```
//!
//! A new version is written whole into a new timestamped directory, then `..data_tmp` is
//! pointed at it and renamed over `..data`: rename(2) replaces a directory entry
//! atomically, and every path a container opens resolves through `..data` in one lookup.
//! A replaced version is kept for [`REPLACED_GRACE`] (its mtime is set when it is replaced),
//! not removed at once, so a reader that resolved `..data` just before the swap and was
//! then descheduled still finds its file: kubelet removes it at once and lives with that
//! race, which a loaded 2-core board does hit. The directory is bind-mounted into the container, so the
//! rename is seen there without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The link that names the current version.
pub const DATA_LINK: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// How long a replaced version stays for readers that resolved `..data` before the swap.
pub const REPLACED_GRACE: Duration = Duration::from_secs(10);
/// Kubernetes' `defaultMode` (0644).
pub const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectionError {
    #[error("configmap references non-existent config key: {0}")]
    MissingKey(String),
    #[error("invalid path {0:?}: it must be relative, not contain '..' and not start with '..'")]
    BadPath(String),
    #[error("mode {mode:#o} of {path:?} is not a file mode (0000 to 0777)")]
    BadMode { path: String, mode: u32 },
    #[error("two items project to {0:?}")]
    Duplicate(String),
    #[error("i/o error on {path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProjectionError + '_ {
    move |e| ProjectionError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One `items` entry of a `configMap` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    pub mode: Option<u32>,
}

/// A file of a projected volume: its path relative to the volume, content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// The files a volume holds for `data` (a ConfigMap's `data` and `binaryData` together),
/// in path order. With no `items`, every key is a file of its name; with `items`, only
/// those, at their paths. A missing key fails unless `optional` (then it is left out).
pub fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    default_mode: u32,
    optional: bool,
) -> Result<Vec<ProjectedFile>, ProjectionError> {
    let check_mode = |path: &str, mode: u32| {
        if mode > 0o777 {
            Err(ProjectionError::BadMode {
                path: path.to_owned(),
                mode,
            })
        } else {
            Ok(mode)
        }
    };
    let default_mode = check_mode("defaultMode", default_mode)?;
    let mut out = BTreeMap::new();
    if items.is_empty() {
        for (k, v) in data {
            check_path(k)?;
            out.insert(k.clone(), (v.clone(), default_mode));
        }
    } else {
        for item in items {
            check_path(&item.path)?;
            let Some(v) = data.get(&item.key) else {
                if optional {
                    continue;
                }
                return Err(ProjectionError::MissingKey(item.key.clone()));
            };
            let mode = check_mode(&item.path, item.mode.unwrap_or(default_mode))?;
            if out.insert(item.path.clone(), (v.clone(), mode)).is_some() {
                return Err(ProjectionError::Duplicate(item.path.clone()));
            }
        }
    }
    // A file cannot also be a directory of another item (`a` and `a/b`).
    for p in out.keys() {
        let mut prefix = p.clone();
        prefix.push('/');
        if out.keys().any(|q| q.starts_with(&prefix)) {
            return Err(ProjectionError::Duplicate(p.clone()));
        }
    }
    Ok(out
        .into_iter()
        .map(|(path, (bytes, mode))| ProjectedFile { path, bytes, mode })
        .collect())
}

/// Kubernetes' rule for `items[].path`: relative, no `..` element, not starting with `..`
/// (the writer's own names all do).
fn check_path(p: &str) -> Result<(), ProjectionError> {
    let bad = || ProjectionError::BadPath(p.to_owned());
    if p.is_empty() || p.starts_with("..") || p.len() > 4096 {
        return Err(bad());
    }
    for c in Path::new(p).components() {
        if !matches!(c, Component::Normal(_)) {
            return Err(bad());
        }
    }
    Ok(())
}

/// The directory of one projected volume, written as described in the module docs.
#[derive(Debug, Clone)]
pub struct AtomicDir {
    dir: PathBuf,
    grace: Duration,
}

impl AtomicDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            grace: REPLACED_GRACE,
        }
    }

    /// Another grace than [`REPLACED_GRACE`] for replaced versions (tests).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Makes the directory hold exactly `files`. Returns `false` (and touches nothing)
    /// when it already does.
    pub fn write(&self, files: &[ProjectedFile]) -> Result<bool, ProjectionError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let current = self.current_version();
        if let Some(cur) = &current {
            if same_content(&self.dir.join(cur), files) {
                return Ok(false);
            }
        }
        let version = self.new_version_name(current.as_deref());
        let vdir = self.dir.join(&version);
        fs::create_dir(&vdir).map_err(io(&vdir))?;
        fs::set_permissions(&vdir, fs::Permissions::from_mode(0o755)).map_err(io(&vdir))?;
        for f in files {
            let path = vdir.join(&f.path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            fs::write(&path, &f.bytes).map_err(io(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(f.mode)).map_err(io(&path))?;
        }
        // The swap: one rename replaces `..data`.
        let tmp = self.dir.join(DATA_TMP);
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        symlink(&version, &tmp).map_err(io(&tmp))?;
        let data = self.dir.join(DATA_LINK);
        fs::rename(&tmp, &data).map_err(io(&data))?;
        // The replaced version's grace starts now.
        if let Some(cur) = &current {
            let old = self.dir.join(cur);
            if let Ok(f) = fs::File::open(&old) {
                f.set_modified(SystemTime::now()).map_err(io(&old))?;
            }
        }
        // Top-level names: new ones linked after the swap, gone ones unlinked.
        let top: BTreeSet<&str> = files
            .iter()
            .filter_map(|f| f.path.split('/').next())
            .collect();
        for name in &top {
            let link = self.dir.join(name);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA_LINK).join(name), &link).map_err(io(&link))?;
            }
        }
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with("..") {
                if name != DATA_LINK && name != version && self.grace_over(&path) {
                    remove_any(&path)?;
                }
            } else if !top.contains(name.as_str()) {
                remove_any(&path)?;
            }
        }
        Ok(true)
    }

    /// Whether a replaced version (or a leftover) has outlived its grace. A clock that went
    /// back keeps it until the clock passes it again.
    fn grace_over(&self, path: &Path) -> bool {
        let Ok(modified) = fs::symlink_metadata(path).and_then(|m| m.modified()) else {
            return true;
        };
        SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= self.grace)
    }

    /// The version `..data` names, if any.
    fn current_version(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join(DATA_LINK)).ok()?;
        Some(target.to_string_lossy().into_owned())
    }

    /// `..<UTC time to the nanosecond>`, after `current` even if the clock did not move.
    fn new_version_name(&self, current: Option<&str>) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut nanos = now.as_nanos();
        loop {
            let name = version_name(nanos);
            let taken = Some(name.as_str()) == current || self.dir.join(&name).exists();
            if !taken {
                return name;
            }
            nanos += 1;
        }
    }
}

fn version_name(nanos: u128) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let frac = (nanos % 1_000_000_000) as u32;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.{frac:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether the version directory `vdir` holds exactly `files` (content and mode).
fn same_content(vdir: &Path, files: &[ProjectedFile]) -> bool {
    let mut found = BTreeSet::new();
    if !collect_files(vdir, vdir, &mut found) || found.len() != files.len() {
        return false;
    }
    files.iter().all(|f| {
        let p = vdir.join(&f.path);
        found.contains(&f.path)
            && fs::read(&p).is_ok_and(|b| b == f.bytes)
            && fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == f.mode)
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                if !collect_files(root, &path, out) {
                    return false;
                }
            }
            Ok(_) => {
                let Ok(rel) = path.strip_prefix(root) else {
                    return false;
                };
                out.insert(rel.to_string_lossy().into_owned());
            }
            Err(_) => return false,
        }
    }
    true
}

fn remove_any(path: &Path) -> Result<(), ProjectionError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io(path))
    } else {
        fs::remove_file(path).map_err(io(path))
    }
}

#[cfg(test)]
mod tests;
