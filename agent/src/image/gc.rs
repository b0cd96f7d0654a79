//! Disk budget and garbage collection of the image store.
//!
//! What the store uses is measured, not estimated: the allocated size (`st_blocks`) of every
//! blob, partial download, unpacked layer (hard links counted once) and ref file. A layer is
//! immutable once in place, so its size is measured once per process and cached.
//!
//! What may be removed is decided under one mutex ([`Keep`]) that also guards what must stay:
//! the references the node loop says are in use (assigned or running pods), the ref keys and
//! digests of pulls in flight, and the layers under mounted root filesystems. A pull registers
//! its digests *before* it looks at the disk, and the collector checks them again, under the
//! same lock, right before it removes each item; so a pull never finds a layer present that
//! the collector then takes away. Layer directories are renamed away under the lock (cheap)
//! and deleted after it is released (slow on an SD card).
//!
//! Order when space is needed: first orphans (blobs, partial downloads and layers no ref
//! points to, e.g. leftovers of a failed pull), then unused images, least recently used
//! first (a ref file's mtime is its last use: set by every pull and every local hit). A
//! layer or blob shared with an image that stays, stays.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::SystemTime;

use oci_client::manifest::OciImageManifest;
use tracing::{debug, info, warn};

use super::layout::{digest_hex, Layout};
use super::local::RefRecord;
use super::ImageError;
use crate::durable::temp_sibling;

/// A size limit: bytes, or a share of the filesystem that holds the image store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskSize {
    Bytes(u64),
    Percent(f64),
}

impl DiskSize {
    /// The limit in bytes on a filesystem of `fs_total` bytes.
    pub fn resolve(&self, fs_total: u64) -> u64 {
        match *self {
            DiskSize::Bytes(b) => b,
            DiskSize::Percent(p) => ((fs_total as f64) * p / 100.0) as u64,
        }
    }
}

impl FromStr for DiskSize {
    type Err = String;

    /// `20%`, `2Gi`, `500M`, `64Ki`, `1k`, `123` (bytes). Binary suffixes are powers of 1024,
    /// decimal ones powers of 1000, as in Kubernetes quantities.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad percentage {s:?}"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("percentage {s:?} is not between 0 and 100"));
            }
            return Ok(DiskSize::Percent(v));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let mult: u64 = match unit.trim() {
            "" => 1,
            "k" | "K" => 1000,
            "M" => 1000u64.pow(2),
            "G" => 1000u64.pow(3),
            "T" => 1000u64.pow(4),
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use Ki, Mi, Gi, k, M, G or %)"
                ))
            }
        };
        let v: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!("bad size {s:?}"));
        }
        Ok(DiskSize::Bytes((v * mult as f64) as u64))
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskSize::Bytes(b) => write!(f, "{}", human(*b)),
            DiskSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The store's disk limits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiskLimits {
    /// Most the store may use; `None` for no budget (only the free-disk floor applies).
    pub budget: Option<DiskSize>,
    /// Free space to leave on the filesystem; `None` for the default, the smaller of 5% and
    /// 256 MiB.
    pub min_free: Option<DiskSize>,
}

impl DiskLimits {
    fn budget_bytes(&self, fs: FsStat) -> Option<u64> {
        self.budget.map(|b| b.resolve(fs.total))
    }

    fn floor_bytes(&self, fs: FsStat) -> u64 {
        match self.min_free {
            Some(m) => m.resolve(fs.total),
            None => (fs.total / 20).min(256 << 20),
        }
    }
}

/// Sizes in messages: exact bytes are noise to an operator.
pub(crate) fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FsStat {
    pub total: u64,
    pub avail: u64,
}

pub(crate) fn fs_stat(path: &Path) -> Result<FsStat, ImageError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| ImageError::io(format!("statvfs {}", path.display()))(io::Error::from(e)))?;
    let frag = st.fragment_size() as u64;
    Ok(FsStat {
        total: (st.blocks() as u64).saturating_mul(frag),
        avail: (st.blocks_available() as u64).saturating_mul(frag),
    })
}

/// What the collector must leave alone. One mutex for all of it: see the module doc.
#[derive(Default)]
pub(crate) struct KeepState {
    /// Ref keys (`reference|platform`) of images that assigned or running pods use.
    pub in_use: HashSet<String>,
    /// Ref keys of pulls in flight.
    pub keys: HashMap<String, usize>,
    /// Digests of pulls in flight and of layers under mounted root filesystems.
    pub digests: HashMap<String, usize>,
    /// Layers pinned per mounted container directory.
    pub mounts: HashMap<PathBuf, Vec<String>>,
}

impl KeepState {
    fn add_digest(&mut self, d: &str) {
        *self.digests.entry(d.to_owned()).or_default() += 1;
    }

    fn drop_digest(&mut self, d: &str) {
        if let Some(n) = self.digests.get_mut(d) {
            *n -= 1;
            if *n == 0 {
                self.digests.remove(d);
            }
        }
    }

    pub fn pin_mount(&mut self, dir: &Path, layers: &[String]) {
        if self.mounts.contains_key(dir) {
            return;
        }
        for l in layers {
            self.add_digest(l);
        }
        self.mounts.insert(dir.to_path_buf(), layers.to_vec());
    }

    pub fn unpin_mount(&mut self, dir: &Path) {
        if let Some(layers) = self.mounts.remove(dir) {
            for l in &layers {
                self.drop_digest(l);
            }
        }
    }

    fn protected(&self, digest: &str) -> bool {
        self.digests.contains_key(digest)
    }
}

pub(crate) struct Keep {
    pub state: Mutex<KeepState>,
}

impl Keep {
    pub fn new() -> Self {
        Keep {
            state: Mutex::new(KeepState::default()),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, KeepState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Registration of a pull in flight; released on drop (also when the pull future is
/// dropped half way).
pub(crate) struct PullGuard<'a> {
    keep: &'a Keep,
    key: String,
    digests: Vec<String>,
}

impl<'a> PullGuard<'a> {
    pub fn new(keep: &'a Keep, key: &str) -> Self {
        *keep.lock().keys.entry(key.to_owned()).or_default() += 1;
        PullGuard {
            keep,
            key: key.to_owned(),
            digests: Vec::new(),
        }
    }

    pub fn protect(&mut self, digests: impl IntoIterator<Item = String>) {
        let mut st = self.keep.lock();
        for d in digests {
            st.add_digest(&d);
            self.digests.push(d);
        }
    }
}

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.keep.lock();
        for d in &self.digests {
            st.drop_digest(d);
        }
        if let Some(n) = st.keys.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.keys.remove(&self.key);
            }
        }
    }
}

/// What a collection did and where the store stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// References whose images were removed, least recently used first.
    pub removed_images: Vec<String>,
    /// Bytes freed, as measured before removal.
    pub freed_bytes: u64,
    /// Bytes the store uses afterwards.
    pub usage: u64,
    pub budget: Option<u64>,
    pub free: u64,
    pub min_free: u64,
    /// Whether the limits hold with the requested room to spare.
    pub fits: bool,
}

/// The store's measured disk use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Manifests, configs and layer blobs kept.
    pub blobs: u64,
    /// Partial downloads.
    pub partials: u64,
    /// Unpacked layers.
    pub layers: u64,
    /// Ref files.
    pub refs: u64,
}

impl DiskUsage {
    pub fn total(&self) -> u64 {
        self.blobs + self.partials + self.layers + self.refs
    }
}

struct RefInfo {
    path: PathBuf,
    key: String,
    reference: String,
    used: SystemTime,
    digests: Vec<String>,
}

enum ItemKind {
    Blob,
    Partial,
    Layer,
}

struct Item {
    kind: ItemKind,
    digest: String,
    path: PathBuf,
    bytes: u64,
}

/// Measured items of the store.
struct Scan {
    items: Vec<Item>,
    usage: DiskUsage,
}

/// The collector and meter; cheap to build, borrows the store's parts.
pub(crate) struct Gc<'a> {
    pub layout: &'a Layout,
    pub keep: &'a Keep,
    pub limits: DiskLimits,
    pub sizes: &'a Mutex<HashMap<String, u64>>,
}

impl Gc<'_> {
    fn scan(&self) -> Result<Scan, ImageError> {
        let mut items = Vec::new();
        let mut usage = DiskUsage::default();
        for entry in read_dir(self.layout.blobs_dir())? {
            let (name, path) = entry;
            if name.contains(".tmp-") {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let bytes = allocated(&meta);
            let (kind, hex) = match name.strip_suffix(".partial") {
                Some(hex) => {
                    usage.partials += bytes;
                    (ItemKind::Partial, hex)
                }
                None => {
                    usage.blobs += bytes;
                    (ItemKind::Blob, name.as_str())
                }
            };
            items.push(Item {
                kind,
                digest: format!("sha256:{hex}"),
                path,
                bytes,
            });
        }
        let mut seen = HashSet::new();
        for (name, path) in read_dir(self.layout.layers_dir())? {
            if name.contains(".tmp-") {
                continue;
            }
            let cached = self
                .sizes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .copied();
            let bytes = match cached {
                Some(b) => b,
                None => {
                    let b =
                        du(&path).map_err(ImageError::io(format!("measure {}", path.display())))?;
                    self.sizes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.clone(), b);
                    b
                }
            };
            seen.insert(name.clone());
            usage.layers += bytes;
            items.push(Item {
                kind: ItemKind::Layer,
                digest: format!("sha256:{name}"),
                path,
                bytes,
            });
        }
        // Forget sizes of layers that are gone.
        self.sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| seen.contains(k));
        for (_, path) in read_dir(self.layout.refs_dir())? {
            if let Ok(meta) = fs::symlink_metadata(&path) {
                usage.refs += allocated(&meta);
            }
        }
        Ok(Scan { items, usage })
    }

    pub fn usage(&self) -> Result<DiskUsage, ImageError> {
        Ok(self.scan()?.usage)
    }

    fn refs(&self) -> Result<Vec<RefInfo>, ImageError> {
        let mut out = Vec::new();
        for (name, path) in read_dir(self.layout.refs_dir())? {
            if !name.ends_with(".json") || name.contains(".tmp-") {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let record: Option<RefRecord> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(record) = record else {
                // Unreadable: it points to nothing, so it keeps nothing.
                out.push(RefInfo {
                    path,
                    key: String::new(),
                    reference: name,
                    used: SystemTime::UNIX_EPOCH,
                    digests: Vec::new(),
                });
                continue;
            };
            let mut digests = vec![record.manifest_digest.clone(), record.config_digest.clone()];
            let manifest: Option<OciImageManifest> = digest_hex(&record.manifest_digest)
                .ok()
                .and_then(|hex| fs::read(self.layout.blob(hex)).ok())
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(m) = manifest {
                digests.extend(m.layers.into_iter().map(|l| l.digest));
            }
            out.push(RefInfo {
                path,
                key: format!("{}|{}", record.reference, record.platform),
                reference: record.reference,
                used,
                digests,
            });
        }
        Ok(out)
    }

    /// Frees space until the store has `need` bytes of room under its limits, removing
    /// orphans, then unused images least recently used first. Never removes what is in use,
    /// in flight or mounted. `fits` in the report says whether the room was made.
    pub fn collect(&self, need: u64) -> Result<GcReport, ImageError> {
        let mut report = GcReport::default();
        let mut scan = self.scan()?;
        let mut fs = fs_stat(self.layout.root())?;
        if !self.fits(&scan, fs, need) {
            let mut refs = self.refs()?;
            // Phase 1: orphans.
            let referenced = referenced_set(&refs);
            for item in &scan.items {
                if !referenced.contains(&item.digest) && self.remove_item(item)? {
                    report.freed_bytes += item.bytes;
                }
            }
            scan = self.scan()?;
            fs = fs_stat(self.layout.root())?;
            // Phase 2: unused images, least recently used first.
            refs.sort_by_key(|r| r.used);
            let mut i = 0;
            while !self.fits(&scan, fs, need) && i < refs.len() {
                let victim = &refs[i];
                if !self.remove_ref(victim)? {
                    i += 1;
                    continue;
                }
                let victim = refs.remove(i);
                info!(image = %victim.reference, "removing unused image to free disk space");
                report.removed_images.push(victim.reference.clone());
                let still = referenced_set(&refs);
                for d in &victim.digests {
                    if still.contains(d) {
                        continue;
                    }
                    for item in scan.items.iter().filter(|it| &it.digest == d) {
                        if self.remove_item(item)? {
                            report.freed_bytes += item.bytes;
                        }
                    }
                }
                scan = self.scan()?;
                fs = fs_stat(self.layout.root())?;
            }
        }
        report.usage = scan.usage.total();
        report.budget = self.limits.budget_bytes(fs);
        report.free = fs.avail;
        report.min_free = self.limits.floor_bytes(fs);
        report.fits = self.fits(&scan, fs, need);
        if report.freed_bytes > 0 {
            info!(
                freed = report.freed_bytes,
                usage = report.usage,
                images = report.removed_images.len(),
                "image garbage collection"
            );
        }
        Ok(report)
    }

    fn fits(&self, scan: &Scan, fs: FsStat, need: u64) -> bool {
        let under_budget = self
            .limits
            .budget_bytes(fs)
            .is_none_or(|b| scan.usage.total().saturating_add(need) <= b);
        under_budget && fs.avail >= need.saturating_add(self.limits.floor_bytes(fs))
    }

    /// Removes a ref file unless it is in use or being pulled; true if removed.
    fn remove_ref(&self, r: &RefInfo) -> Result<bool, ImageError> {
        let st = self.keep.lock();
        if st.in_use.contains(&r.key) || st.keys.contains_key(&r.key) {
            return Ok(false);
        }
        match fs::remove_file(&r.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(ImageError::io(format!("remove {}", r.path.display()))(e)),
        }
    }

    /// Removes an item unless it is protected; true if removed.
    fn remove_item(&self, item: &Item) -> Result<bool, ImageError> {
        let doomed = {
            let st = self.keep.lock();
            if st.protected(&item.digest) {
                debug!(digest = %item.digest, "kept: in flight or mounted");
                return Ok(false);
            }
            match item.kind {
                ItemKind::Blob | ItemKind::Partial => {
                    return match fs::remove_file(&item.path) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                        Err(e) => Err(ImageError::io(format!("remove {}", item.path.display()))(e)),
                    };
                }
                ItemKind::Layer => {
                    let tmp = temp_sibling(&item.path);
                    match fs::rename(&item.path, &tmp) {
                        Ok(()) => tmp,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                        Err(e) => {
                            return Err(ImageError::io(format!("rename {}", item.path.display()))(
                                e,
                            ))
                        }
                    }
                }
            }
        };
        if let Err(e) = fs::remove_dir_all(&doomed) {
            // Swept at the next start.
            warn!(path = %doomed.display(), error = %e, "cannot remove layer");
        }
        Ok(true)
    }
}

fn referenced_set(refs: &[RefInfo]) -> HashSet<String> {
    refs.iter()
        .flat_map(|r| r.digests.iter().cloned())
        .collect()
}

fn read_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io(format!("list {}", dir.display())))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(ImageError::io(format!("list {}", dir.display())))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    Ok(out)
}

fn allocated(meta: &fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// Allocated bytes under `root`, hard links counted once, symlinks never followed.
pub(crate) fn du(root: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += allocated(&meta);
        if meta.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(total)
}

/// The set of ref keys for `references`, skipping unparseable ones.
pub(crate) fn keys_of(
    references: &BTreeSet<String>,
    key: impl Fn(&str) -> Option<String>,
) -> HashSet<String> {
    references.iter().filter_map(|r| key(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("2Gi".parse(), Ok(DiskSize::Bytes(2 << 30)));
        assert_eq!("500M".parse(), Ok(DiskSize::Bytes(500_000_000)));
        assert_eq!("1234".parse(), Ok(DiskSize::Bytes(1234)));
        assert_eq!("64Ki".parse(), Ok(DiskSize::Bytes(65536)));
        assert_eq!("1.5Gi".parse(), Ok(DiskSize::Bytes(3 << 29)));
        assert_eq!("20%".parse(), Ok(DiskSize::Percent(20.0)));
        assert!("120%".parse::<DiskSize>().is_err());
        assert!("12 parsecs".parse::<DiskSize>().is_err());
        assert!("".parse::<DiskSize>().is_err());
        assert_eq!(DiskSize::Percent(20.0).resolve(1000), 200);
    }

    #[test]
    fn default_floor_is_the_smaller_of_5_percent_and_256_mib() {
        let l = DiskLimits::default();
        let small = FsStat {
            total: 1 << 30,
            avail: 0,
        };
        assert_eq!(l.floor_bytes(small), (1u64 << 30) / 20);
        let big = FsStat {
            total: 100 << 30,
            avail: 0,
        };
        assert_eq!(l.floor_bytes(big), 256 << 20);
    }

    #[test]
    fn du_counts_hardlinks_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 64 * 1024];
        fs::write(dir.path().join("a"), &data).unwrap();
        let one = du(dir.path()).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(du(dir.path()).unwrap(), one);
        fs::write(dir.path().join("c"), &data).unwrap();
        assert!(du(dir.path()).unwrap() >= one + 64 * 1024);
    }

    #[test]
    fn keep_counts_pins() {
        let keep = Keep::new();
        {
            let mut g = PullGuard::new(&keep, "k");
            g.protect(["sha256:a".to_owned()]);
            keep.lock()
                .pin_mount(Path::new("/c1"), &["sha256:a".to_owned()]);
            assert!(keep.lock().protected("sha256:a"));
        }
        assert!(keep.lock().protected("sha256:a"), "mount pin lost");
        assert!(keep.lock().keys.is_empty());
        keep.lock().unpin_mount(Path::new("/c1"));
        assert!(!keep.lock().protected("sha256:a"));
    }
}
