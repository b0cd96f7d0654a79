//! Which agent build a card gets: the board's architecture (from `--arch`, or detected
//! from the boot partition's `config.txt` and kernels), where that build is, and a check
//! of the binary's ELF header and ARM build attributes against it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use object::elf;
use object::read::elf::{ElfFile, FileHeader, SectionHeader};
use object::{Endianness, FileKind};

use super::FlashError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Arch {
    /// 64-bit: Pi 3, 4, 5, Zero 2 W on a 64-bit OS.
    Arm64,
    /// ARMv7 hard float: Pi 2, 3, 4 on a 32-bit OS.
    Armv7,
    /// ARMv6 hard float: every 32-bit Pi, including Pi 1 and Zero (W).
    Armv6,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Armv7 => "armv7",
            Arch::Armv6 => "armv6",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s.trim().to_ascii_lowercase().as_str() {
            "arm64" | "aarch64" => Some(Arch::Arm64),
            "armv7" | "armhf" => Some(Arch::Armv7),
            "armv6" | "arm" => Some(Arch::Armv6),
            _ => None,
        }
    }

    /// The Rust target the agent is built for (`cross/`).
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64-unknown-linux-musl",
            Arch::Armv7 => "armv7-unknown-linux-musleabihf",
            Arch::Armv6 => "arm-unknown-linux-musleabihf",
        }
    }
}

/// What the boot partition says about the OS it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detected {
    /// `arm_64bit=1`, or only 64-bit kernels (`kernel8.img`, `kernel_2712.img`).
    Bits64,
    /// `arm_64bit=0`, or 32-bit kernels (`kernel.img`, `kernel7.img`, `kernel7l.img`).
    Bits32,
    /// No config.txt setting and no known kernel.
    Unknown,
}

pub(super) fn detect(config_txt: Option<&[u8]>, root: &BTreeSet<String>) -> Detected {
    if let Some(text) = config_txt {
        for line in String::from_utf8_lossy(text).lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            match line.replace(' ', "").as_str() {
                "arm_64bit=1" => return Detected::Bits64,
                "arm_64bit=0" => return Detected::Bits32,
                _ => {}
            }
        }
    }
    let has = |names: &[&str]| names.iter().any(|n| root.contains(*n));
    let k64 = has(&["kernel8.img", "kernel_2712.img"]);
    let k32 = has(&["kernel.img", "kernel7.img", "kernel7l.img"]);
    match (k64, k32) {
        (_, true) => Detected::Bits32,
        (true, false) => Detected::Bits64,
        (false, false) => Detected::Unknown,
    }
}

/// The architecture to flash, and a note for the user when it was a choice.
pub(super) fn choose(
    flag: Option<Arch>,
    detected: Detected,
    root: &BTreeSet<String>,
) -> Result<(Arch, Option<String>), FlashError> {
    let can_64 = detected == Detected::Bits64
        || root.contains("kernel8.img")
        || root.contains("kernel_2712.img");
    match (flag, detected) {
        (Some(Arch::Arm64), _) if !can_64 => Err(FlashError::Arch(
            "--arch arm64, but the boot partition has no 64-bit kernel (kernel8.img or kernel_2712.img) and no arm_64bit=1".into(),
        )),
        (Some(a), _) => Ok((a, None)),
        (None, Detected::Bits64) => Ok((Arch::Arm64, None)),
        (None, Detected::Bits32) => Ok((
            Arch::Armv6,
            Some(
                "a 32-bit image: flashing the armv6 agent, which runs on every 32-bit Pi; \
                 pass --arch armv7 for a Pi 2, 3 or 4"
                    .into(),
            ),
        )),
        (None, Detected::Unknown) => Err(FlashError::Arch(
            "unknown architecture: the boot partition has no arm_64bit setting in config.txt and no Raspberry Pi kernel \
             (kernel8.img, kernel_2712.img, kernel7l.img, kernel7.img, kernel.img); pass --arch arm64|armv7|armv6"
                .into(),
        )),
    }
}

/// The agent binary for `arch`: `--agent`, else `<agents-dir>/<triple>/baton-agent`.
pub(super) fn agent_path(agent: Option<&Path>, agents_dir: &Path, arch: Arch) -> PathBuf {
    match agent {
        Some(p) => p.to_owned(),
        None => agents_dir.join(arch.triple()).join("baton-agent"),
    }
}

/// Refuses a binary that is not a little-endian executable for `arch`, from its ELF
/// header alone (class and machine): `data` may be just the start of the file.
pub(super) fn check_header(data: &[u8], arch: Arch) -> Result<(), String> {
    let kind = FileKind::parse(data).map_err(|_| "not an ELF executable".to_owned())?;
    let (bits, machine) = match kind {
        FileKind::Elf64 => {
            let h = elf::FileHeader64::<Endianness>::parse(data)
                .map_err(|e| format!("a broken ELF file: {e}"))?;
            (
                64,
                header_machine(h, h.endian().map_err(|e| e.to_string())?)?,
            )
        }
        FileKind::Elf32 => {
            let h = elf::FileHeader32::<Endianness>::parse(data)
                .map_err(|e| format!("a broken ELF file: {e}"))?;
            (
                32,
                header_machine(h, h.endian().map_err(|e| e.to_string())?)?,
            )
        }
        _ => return Err("not an ELF executable".into()),
    };
    let name = |m: u16| match m {
        elf::EM_AARCH64 => "aarch64".to_owned(),
        elf::EM_ARM => "32-bit ARM".to_owned(),
        elf::EM_X86_64 => "x86_64".to_owned(),
        elf::EM_386 => "i386".to_owned(),
        elf::EM_RISCV => "RISC-V".to_owned(),
        m => format!("ELF machine {m}"),
    };
    let fits = match arch {
        Arch::Arm64 => bits == 64 && machine == elf::EM_AARCH64,
        Arch::Armv7 | Arch::Armv6 => bits == 32 && machine == elf::EM_ARM,
    };
    if !fits {
        return Err(format!(
            "a {bits}-bit {} binary, not {}",
            name(machine),
            arch.as_str()
        ));
    }
    Ok(())
}

/// [`check_header`], and for ARMv6 the whole binary's `Tag_CPU_arch` build attribute
/// (an ARMv7 binary would die of SIGILL on a Pi Zero).
pub(super) fn check_elf(data: &[u8], arch: Arch) -> Result<(), String> {
    check_header(data, arch)?;
    if arch != Arch::Armv6 {
        return Ok(());
    }
    let f = ElfFile::<elf::FileHeader32<Endianness>>::parse(data)
        .map_err(|e| format!("a broken ELF file: {e}"))?;
    // Tag_CPU_arch: 1-9 are v4..v6K, 10 is v7, 14 is v8 (ARM IHI 0045, "Tag_CPU_arch").
    match arm_cpu_arch(&f, data) {
        Some(v) if v >= 10 => Err(format!(
            "built for ARMv7 or later (Tag_CPU_arch {v}); an armv6 board (Pi 1, Zero) needs the arm-unknown-linux-musleabihf build"
        )),
        _ => Ok(()),
    }
}

fn header_machine<H: FileHeader<Endian = Endianness>>(
    h: &H,
    endian: Endianness,
) -> Result<u16, String> {
    if endian != Endianness::Little {
        return Err("a big-endian binary; Raspberry Pis run little-endian".into());
    }
    if h.e_type(endian) != elf::ET_EXEC && h.e_type(endian) != elf::ET_DYN {
        return Err("an ELF file that is not an executable".into());
    }
    Ok(h.e_machine(endian))
}

/// `Tag_CPU_arch` from the `aeabi` attributes of a 32-bit ARM binary, if it has them.
fn arm_cpu_arch(f: &ElfFile<'_, elf::FileHeader32<Endianness>>, data: &[u8]) -> Option<u64> {
    let endian = f.endian();
    let section = f
        .elf_section_table()
        .iter()
        .find(|s| s.sh_type(endian) == elf::SHT_ARM_ATTRIBUTES)?;
    let attrs = section.attributes(endian, data).ok()?;
    let mut subs = attrs.subsections().ok()?;
    while let Ok(Some(sub)) = subs.next() {
        if sub.vendor() != b"aeabi" {
            continue;
        }
        let mut subsubs = sub.subsubsections();
        while let Ok(Some(ss)) = subsubs.next() {
            // Tag_File (1): attributes of the whole file.
            if ss.tag() != 1 {
                continue;
            }
            let mut r = ss.attributes();
            while let Ok(Some(tag)) = r.read_tag() {
                match tag {
                    6 => return r.read_integer().ok(),
                    // Tag_CPU_raw_name, Tag_CPU_name, Tag_also_compatible_with,
                    // Tag_conformance: strings.
                    4 | 5 | 65 | 67 => {
                        r.read_string().ok()?;
                    }
                    // Tag_compatibility: a flag, then a vendor name.
                    32 => {
                        r.read_integer().ok()?;
                        r.read_string().ok()?;
                    }
                    // Otherwise: below 32 integers; above, odd tags are strings.
                    t if t > 32 && t % 2 == 1 => {
                        r.read_string().ok()?;
                    }
                    _ => {
                        r.read_integer().ok()?;
                    }
                }
            }
        }
    }
    None
}
