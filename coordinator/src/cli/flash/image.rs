//! The card's layout: the MBR (`mbrman`), its FAT boot partition, and the partition's
//! files read and written through `fatfs` over a bounded window of the image, so flashing
//! needs no loop mount and no root.
//!
//! Two passes. [`read_view`] opens the target read-only and learns everything the checks
//! need (the files flash reads, the sizes of the ones it replaces, the free clusters).
//! Only when every check has passed does [`apply`] open it for writing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use fatfs::{FatType, FileSystem, FsOptions};

use super::plan::{Plan, Step};
use super::FlashError;

/// The MBR's sector size. SD cards and Raspberry Pi OS images use 512-byte sectors.
const SECTOR: u64 = 512;
/// Partition type ids of FAT: FAT12, FAT16 (<32M), FAT16, FAT32 (CHS), FAT32 (LBA),
/// FAT16 (LBA). Raspberry Pi OS uses 0x0c.
const FAT_TYPES: &[u8] = &[0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e];
/// The protective MBR of a GPT disk.
const GPT_PROTECTIVE: u8 = 0xee;
/// The largest file flash reads into memory to edit (cmdline.txt, user-data, ...).
const MAX_TEXT: u64 = 1 << 20;
/// Files flash reads (lower case): to detect the architecture and first-boot style, and
/// to edit.
const TEXTS: &[&str] = &[
    "config.txt",
    "cmdline.txt",
    "user-data",
    "meta-data",
    "network-config",
    "firstrun.sh",
];

/// The FAT boot partition: its MBR slot (1-4 primary, 5+ logical) and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Partition {
    pub number: usize,
    pub start: u64,
    pub len: u64,
    pub type_id: u8,
}

/// What the read pass learned of the boot partition.
#[derive(Debug, Clone)]
pub(super) struct BootView {
    pub partition: Partition,
    pub fat: &'static str,
    pub cluster_size: u64,
    pub free_clusters: u64,
    /// Names in the root directory, lower case.
    pub root: BTreeSet<String>,
    /// Sizes of the files in the root and in `baton/`, by lower-case path.
    pub sizes: BTreeMap<String, u64>,
    /// Contents of [`TEXTS`] that exist.
    pub texts: BTreeMap<&'static str, Vec<u8>>,
}

impl BootView {
    pub fn text(&self, name: &str) -> Option<&[u8]> {
        self.texts.get(name).map(Vec::as_slice)
    }
}

/// A bounded window onto one partition of the image, for fatfs. Positional I/O
/// (`read_at`/`write_at`) keeps it independent of the file's own offset.
struct Window<'f> {
    file: &'f File,
    start: u64,
    len: u64,
    pos: u64,
    mode: Mode,
    /// Where fatfs wrote 512-byte runs of zeros (it zeroes a new directory's cluster that
    /// way): see [`fix_new_dir`].
    zero_runs: Rc<RefCell<Vec<u64>>>,
}

#[derive(Clone, Copy)]
enum Mode {
    ReadWrite,
    /// The read pass: the file is open read-only, and fatfs's bookkeeping writes at
    /// unmount (FSInfo after it counted the free clusters) are dropped here rather than
    /// failing noisily. `dirty_flag_at` is the offset of the FAT's volume status byte
    /// (BS_Reserved1): it reads with the dirty bit set, so fatfs counts the free clusters
    /// from the FAT itself instead of trusting FSInfo's free-cluster hint, which may be
    /// stale, and the space check is exact.
    ReadOnly {
        dirty_flag_at: Option<u64>,
    },
}

impl<'f> Window<'f> {
    fn new(file: &'f File, p: &Partition, mode: Mode) -> Self {
        Self {
            file,
            start: p.start,
            len: p.len,
            pos: 0,
            mode,
            zero_runs: Rc::default(),
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        if let Mode::ReadOnly {
            dirty_flag_at: Some(at),
        } = self.mode
        {
            if (self.pos..self.pos + n as u64).contains(&at) {
                buf[(at - self.pos) as usize] |= 1;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the boot partition",
            ));
        }
        let n = match self.mode {
            Mode::ReadWrite => self.file.write_at(&buf[..n], self.start + self.pos)?,
            Mode::ReadOnly { .. } => n,
        };
        if n == 512 && buf[..n].iter().all(|b| *b == 0) {
            self.zero_runs.borrow_mut().push(self.pos);
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match new {
            Some(n) if n <= self.len => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the boot partition",
            )),
        }
    }
}

fn mount<'f>(file: &'f File, p: &Partition, mode: Mode) -> io::Result<FileSystem<Window<'f>>> {
    FileSystem::new(Window::new(file, p, mode), FsOptions::new())
}

/// One directory entry's bytes: the 8.3 name, then the attributes.
const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;

/// Repairs the `.` and `..` entries of a directory fatfs 0.3.6 just made in the root.
///
/// fatfs 0.3.6 (the last release) writes a long-name entry before each of them and
/// points `..` at the root's cluster instead of 0 (rafalh/rust-fatfs#117 and #99, fixed
/// upstream but unreleased). fsck.fat, which Raspberry Pi OS runs on the boot partition
/// at boot, would then "repair" the directory by renaming `.` and `..` into FSCK files.
/// The new cluster starts `[LFN(.), ., LFN(..), ..]`; it becomes `[., .., end]`, with
/// `..` pointing at 0 (the root). Any other layout is left alone if it is already right
/// and refused otherwise; the fsck.fat test in `tests.rs` guards this.
fn fix_new_dir(file: &File, p: &Partition, cluster_at: u64) -> io::Result<()> {
    let at = p.start + cluster_at;
    let mut raw = [0u8; 4 * ENTRY];
    file.read_at(&mut raw, at)?;
    let entry = |i: usize| &raw[i * ENTRY..(i + 1) * ENTRY];
    let is = |e: &[u8], name: &[u8; 11]| e[..11] == name[..] && e[11] & ATTR_DIR != 0;
    let (dot, dotdot) = (b".          ", b"..         ");
    if is(entry(0), dot) && is(entry(1), dotdot) {
        return Ok(());
    }
    let expected = entry(0)[11] == ATTR_LFN
        && is(entry(1), dot)
        && entry(2)[11] == ATTR_LFN
        && is(entry(3), dotdot);
    if !expected {
        return Err(io::Error::other(
            "the new baton directory does not start with fatfs's known entries; not repairing it",
        ));
    }
    let mut fixed = [0u8; 4 * ENTRY];
    fixed[..ENTRY].copy_from_slice(entry(1));
    fixed[ENTRY..2 * ENTRY].copy_from_slice(entry(3));
    // `..` of a directory in the root: cluster 0 (high word at 20, low word at 26).
    fixed[ENTRY + 20..ENTRY + 22].fill(0);
    fixed[ENTRY + 26..ENTRY + 28].fill(0);
    file.write_all_at(&fixed, at)
}

fn fat_name(t: FatType) -> &'static str {
    match t {
        FatType::Fat12 => "FAT12",
        FatType::Fat16 => "FAT16",
        FatType::Fat32 => "FAT32",
    }
}

/// The first FAT partition of the MBR: by type id (0x0c, 0x0b, 0x0e, ...) first, else
/// the first partition whose content is a FAT file system.
pub(super) fn boot_partition(file: &File) -> Result<Partition, FlashError> {
    let mut reader = file;
    let size = reader.seek(SeekFrom::End(0)).map_err(FlashError::Io)?;
    let mbr = mbrman::MBR::read_from(&mut reader, SECTOR as u32).map_err(|e| {
        FlashError::Image(format!(
            "no MBR partition table ({e}): not a Raspberry Pi OS image or SD card"
        ))
    })?;
    let mut parts = Vec::new();
    for (number, e) in mbr.iter().filter(|(_, e)| e.is_used() && !e.is_extended()) {
        if e.sys == GPT_PROTECTIVE {
            return Err(FlashError::Image(
                "a GPT disk: Raspberry Pi OS images and cards use an MBR partition table".into(),
            ));
        }
        let p = Partition {
            number,
            start: u64::from(e.starting_lba) * SECTOR,
            len: u64::from(e.sectors) * SECTOR,
            type_id: e.sys,
        };
        if p.start + p.len > size {
            return Err(FlashError::Image(format!(
                "partition {number} ends at byte {} but the image has {size} bytes: a truncated image?",
                p.start + p.len
            )));
        }
        parts.push(p);
    }
    let is_fat = |p: &Partition| {
        mount(
            file,
            p,
            Mode::ReadOnly {
                dirty_flag_at: None,
            },
        )
        .is_ok()
    };
    let by_type = parts
        .iter()
        .find(|p| FAT_TYPES.contains(&p.type_id) && is_fat(p));
    if let Some(p) = by_type.or_else(|| parts.iter().find(|p| is_fat(p))) {
        return Ok(*p);
    }
    let seen: Vec<String> = parts
        .iter()
        .map(|p| format!("{} (type 0x{:02x})", p.number, p.type_id))
        .collect();
    Err(FlashError::Image(format!(
        "no FAT boot partition (partitions: {})",
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )))
}

/// The read pass over the boot partition.
pub(super) fn read_view(file: &File, partition: Partition) -> Result<BootView, FlashError> {
    let fat_err = |e: io::Error| {
        FlashError::Image(format!(
            "cannot read the FAT file system of partition {}: {e}",
            partition.number
        ))
    };
    let fat_type = mount(
        file,
        &partition,
        Mode::ReadOnly {
            dirty_flag_at: None,
        },
    )
    .map_err(fat_err)?
    .fat_type();
    let dirty_flag_at = Some(if fat_type == FatType::Fat32 {
        0x41
    } else {
        0x25
    });
    let fs = mount(file, &partition, Mode::ReadOnly { dirty_flag_at }).map_err(fat_err)?;
    let stats = fs.stats().map_err(fat_err)?;
    let mut root = BTreeSet::new();
    let mut sizes = BTreeMap::new();
    let mut texts = BTreeMap::new();
    let mut baton_dir = false;
    for e in fs.root_dir().iter() {
        let e = e.map_err(fat_err)?;
        let name = e.file_name().to_lowercase();
        if e.is_dir() && name == "baton" {
            baton_dir = true;
        }
        if e.is_file() {
            sizes.insert(name.clone(), e.len());
            if let Some(t) = TEXTS.iter().find(|t| **t == name) {
                if e.len() > MAX_TEXT {
                    return Err(FlashError::Image(format!(
                        "{name} on the boot partition is over {MAX_TEXT} bytes: not a Raspberry Pi OS file"
                    )));
                }
                let mut bytes = Vec::new();
                e.to_file().read_to_end(&mut bytes).map_err(fat_err)?;
                texts.insert(*t, bytes);
            }
        }
        root.insert(name);
    }
    if baton_dir {
        for e in fs.root_dir().open_dir("baton").map_err(fat_err)?.iter() {
            let e = e.map_err(fat_err)?;
            if e.is_file() {
                sizes.insert(format!("baton/{}", e.file_name().to_lowercase()), e.len());
            }
        }
    }
    Ok(BootView {
        partition,
        fat: fat_name(fat_type),
        cluster_size: u64::from(stats.cluster_size()),
        free_clusters: u64::from(stats.free_clusters()),
        root,
        sizes,
        texts,
    })
}

/// Refuses a plan the partition has no room for. Counted in clusters: what the new files
/// take, less what the files they replace free; plus the `baton` directory and one
/// cluster for the root directory to grow by.
pub(super) fn check_space(view: &BootView, plan: &Plan) -> Result<(), FlashError> {
    let clusters = |bytes: u64| bytes.div_ceil(view.cluster_size);
    let mut need: u64 = 1;
    let mut freed: u64 = 0;
    if !view.root.contains("baton") {
        need += 1;
    }
    for step in &plan.steps {
        match step {
            Step::Write { path, bytes } => {
                need += clusters(bytes.len() as u64);
                freed += view
                    .sizes
                    .get(&path.to_lowercase())
                    .map_or(0, |s| clusters(*s));
            }
            Step::Remove(path) => {
                freed += view
                    .sizes
                    .get(&path.to_lowercase())
                    .map_or(0, |s| clusters(*s));
            }
            Step::Rename { .. } => {}
        }
    }
    let need = need.saturating_sub(freed);
    if need > view.free_clusters {
        let mib = |c: u64| (c * view.cluster_size) as f64 / (1024.0 * 1024.0);
        return Err(FlashError::Image(format!(
            "the boot partition is too small: the agent and its files need {:.1} MiB more, {:.1} MiB are free",
            mib(need),
            mib(view.free_clusters)
        )));
    }
    Ok(())
}

/// Carries out `plan` on the boot partition of `file` (open for writing), in order, and
/// syncs the file. The checks have all passed by now.
pub(super) fn apply(file: &File, partition: &Partition, plan: &Plan) -> Result<(), FlashError> {
    let window = Window::new(file, partition, Mode::ReadWrite);
    let zero_runs = window.zero_runs.clone();
    let fs = FileSystem::new(window, FsOptions::new()).map_err(FlashError::Io)?;
    {
        let root = fs.root_dir();
        if root.open_dir("baton").is_err() {
            zero_runs.borrow_mut().clear();
            root.create_dir("baton").map_err(FlashError::Io)?;
            // fatfs zeroes the new directory's cluster first, from its start.
            let cluster_at = zero_runs.borrow().first().copied();
            let cluster_at = cluster_at.ok_or_else(|| {
                FlashError::Io(io::Error::other("cannot find the new baton directory"))
            })?;
            fix_new_dir(file, partition, cluster_at).map_err(FlashError::Io)?;
        }
        for step in &plan.steps {
            let context = |e: io::Error| FlashError::Write {
                what: step.to_string(),
                error: e,
            };
            match step {
                Step::Write { path, bytes } => {
                    let mut f = root.create_file(path).map_err(context)?;
                    f.truncate().map_err(context)?;
                    f.write_all(bytes).map_err(context)?;
                    f.flush().map_err(context)?;
                }
                Step::Rename { from, to } => {
                    if root.open_file(to).is_ok() {
                        root.remove(to).map_err(context)?;
                    }
                    root.rename(from, &root, to).map_err(context)?;
                }
                Step::Remove(path) => {
                    if root.open_file(path).is_ok() {
                        root.remove(path).map_err(context)?;
                    }
                }
            }
        }
    }
    fs.unmount().map_err(FlashError::Io)?;
    file.sync_all().map_err(FlashError::Io)
}
