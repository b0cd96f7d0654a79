//! An emulated ARM board: QEMU's `virt` machine booting a Pi-shaped SD card image
//! (`images/device/build.sh`) with a real Debian kernel, under TCG.
//!
//! QEMU cannot run a Pi's firmware, so [`Vm::power_on`] plays its part, as the firmware
//! does at every power-on: it reads the kernel, the initramfs and `cmdline.txt` from the
//! card's FAT boot partition and hands them to the kernel. That is what makes `baton
//! flash`'s `systemd.run=` hook run at first boot and not after it (firstrun.sh removes it
//! from `cmdline.txt`). QEMU runs with `-no-reboot`: a reboot of the guest ends it, and the
//! test powers the board on again, so every boot reads the card afresh.
//!
//! The serial console is appended to one log file across boots; waits look only at the
//! current boot's part. Networking is QEMU's user mode: the guest is 10.0.2.15 and reaches
//! the loopback of the network namespace QEMU runs in as 10.0.2.2; `hostfwd` ports forward
//! from that loopback to the guest.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{sh, wait_for, Netns, Proc};

/// The emulated board's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    /// `qemu-system-aarch64 -M virt -cpu cortex-a72`, like a Pi 4.
    Arm64,
    /// `qemu-system-arm -M virt -cpu cortex-a15`, a 32-bit ARMv7 board like a Pi 2.
    Armhf,
}

impl Board {
    /// The argument of `images/device/build.sh`.
    pub fn image_arch(self) -> &'static str {
        match self {
            Board::Arm64 => "arm64",
            Board::Armhf => "armhf",
        }
    }

    /// The kernel and initramfs on the boot partition, named as on Raspberry Pi OS.
    fn boot_files(self) -> (&'static str, &'static str) {
        match self {
            Board::Arm64 => ("kernel8.img", "initramfs8"),
            Board::Armhf => ("kernel7l.img", "initramfs7l"),
        }
    }

    fn qemu(self) -> Command {
        match self {
            Board::Arm64 => {
                let mut c = Command::new("qemu-system-aarch64");
                // cortex-a72 is the fastest CPU model under TCG (plain `max` is about 3x
                // slower, see FIELD-NOTES).
                c.args(["-M", "virt", "-cpu", "cortex-a72"]);
                c
            }
            Board::Armhf => {
                let mut c = Command::new("qemu-system-arm");
                // Debian's armmp-lpae kernel (LPAE: the 1 GiB from 0x40000000 is usable,
                // 240 MiB of it as highmem). highmem=off keeps the PCI windows below 4 GiB.
                c.args(["-M", "virt,highmem=off", "-cpu", "cortex-a15"]);
                c
            }
        }
    }
}

/// Builds (or finds cached) the board's card image; returns its path.
pub fn device_image(board: Board) -> Result<PathBuf> {
    let script = crate::repo_root().join("images/device/build.sh");
    let out = sh(Command::new("nice")
        .args(["-n", "10"])
        .arg(&script)
        .arg(board.image_arch()))
    .context("building the device image (images/device/build.sh)")?;
    let text = String::from_utf8(out.stdout)?;
    let path = text.lines().last().context("build.sh printed nothing")?;
    Ok(PathBuf::from(path))
}

/// Copies an image sparsely (a card image is mostly holes).
pub fn copy_image(from: &Path, to: &Path) -> Result<()> {
    sh(Command::new("cp").arg("--sparse=always").arg(from).arg(to)).map(|_| ())
}

/// The byte offset of the first MBR partition of `image` (the boot partition).
pub fn boot_offset(image: &Path) -> Result<u64> {
    partition_offset(image, 0)
}

/// The byte offset of MBR partition `index` (0-3) of `image`.
fn partition_offset(image: &Path, index: usize) -> Result<u64> {
    let mut mbr = [0u8; 512];
    fs::File::open(image)?.read_exact(&mut mbr)?;
    ensure!(mbr[510..512] == [0x55, 0xaa], "{}: no MBR", image.display());
    let entry = 446 + 16 * index;
    let lba = u32::from_le_bytes(mbr[entry + 8..entry + 12].try_into()?);
    ensure!(lba > 0, "{}: no partition {}", image.display(), index + 1);
    Ok(u64::from(lba) * 512)
}

/// Runs `commands` (debugfs requests: `mkdir`, `write HOST_FILE PATH`, `symlink LINK
/// TARGET`, ...) read-write on the card's ext4 root partition, which must not be in use:
/// files go into the root without a loop mount, as mkfs.ext4 -d made it. debugfs reports a
/// failed request only on stderr, so any line there fails.
pub fn edit_root(image: &Path, commands: &[String]) -> Result<()> {
    use std::io::Write as _;
    let off = partition_offset(image, 1)?;
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg(format!("{}?offset={off}", image.display()))
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("debugfs (e2fsprogs)")?;
    child
        .stdin
        .take()
        .context("debugfs stdin")?
        .write_all((commands.join("\n") + "\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    ensure!(
        out.status.success() && errors.is_empty(),
        "debugfs on {}: {}",
        image.display(),
        errors.join("; ")
    );
    Ok(())
}

/// Replays the journal of the card's root partition, as the kernel would at its next mount:
/// after a power cut the newest writes may be in the journal only, and debugfs neither
/// reads them nor replays them (its `journal_run` loses the `?offset=`), so what it reads
/// would be stale and what it writes would be undone by the replay at the next boot.
/// e2fsck on a loop device (never mounted) at the partition's offset.
pub fn replay_root_journal(image: &Path) -> Result<()> {
    let off = partition_offset(image, 1)?;
    let out = sh(Command::new("losetup")
        .args(["--find", "--show", "--offset", &off.to_string()])
        .arg(image))?;
    let dev = String::from_utf8(out.stdout)?.trim().to_owned();
    let fsck = Command::new("e2fsck").args(["-fy", &dev]).output();
    let detach = sh(Command::new("losetup").args(["-d", &dev]));
    let fsck = fsck.context("e2fsck")?;
    // 0: clean, 1: errors corrected (the journal replayed counts).
    ensure!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck -fy {dev} ({}): {}{}",
        image.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    detach.map(|_| ())
}

/// A debugfs request run read-only on the card's root partition: its stdout.
fn root_request(image: &Path, request: &str) -> Result<Vec<u8>> {
    let off = partition_offset(image, 1)?;
    let out = sh(Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={off}", image.display())))?;
    Ok(out.stdout)
}

/// A file of the card's root partition (the board off), e.g. the agent's `update.json`.
pub fn root_file(image: &Path, path: &str) -> Result<Vec<u8>> {
    // debugfs reports a missing file on stderr only, with an empty stdout.
    let out = root_request(image, &format!("cat {path}"))?;
    ensure!(
        !out.is_empty(),
        "{path}: missing or empty on {}",
        image.display()
    );
    Ok(out)
}

/// Where the symlink `path` of the card's root partition points. A target under 60 bytes
/// is stored in the inode (debugfs `stat` shows it), a longer one in a data block (`cat`).
pub fn root_link(image: &Path, path: &str) -> Result<String> {
    let stat = String::from_utf8(root_request(image, &format!("stat {path}"))?)?;
    ensure!(
        stat.contains("Type: symlink"),
        "{path} is not a symlink: {stat}"
    );
    if let Some(dest) = stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
    {
        return Ok(dest.trim_matches('"').to_owned());
    }
    Ok(String::from_utf8(root_file(image, path)?)?
        .trim_end_matches('\0')
        .to_owned())
}

/// A file of the image's boot partition, read with mtools.
pub fn boot_file(image: &Path, name: &str) -> Result<Vec<u8>> {
    let off = boot_offset(image)?;
    let out = sh(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(format!("::{name}")))?;
    Ok(out.stdout)
}

/// Whether the image's boot partition has `name`; fails on anything but a missing file.
pub fn boot_file_exists(image: &Path, name: &str) -> Result<bool> {
    let off = boot_offset(image)?;
    let out = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(format!("::{name}"))
        .output()
        .context("mdir")?;
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("not found"), "mdir ::{name}: {err}");
    Ok(false)
}

/// Writes `from` to the image's boot partition as `name`, as a card reader would.
pub fn put_boot_file(image: &Path, name: &str, from: &Path) -> Result<()> {
    let off = boot_offset(image)?;
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(from)
        .arg(format!("::{name}")))
    .map(|_| ())
}

pub struct Vm {
    pub board: Board,
    pub image: PathBuf,
    dir: PathBuf,
    netns: Option<String>,
    /// (host address in the namespace, its port, guest port).
    hostfwd: Vec<(String, u16, u16)>,
    proc: Option<Proc>,
    serial: PathBuf,
    /// Where the current boot's part of the serial log starts.
    boot_from: u64,
    /// When the current boot was powered on.
    pub powered_on: Option<Instant>,
    pub boots: u32,
}

impl Vm {
    /// A board for `image`; its files (serial log, the kernel files of each boot) go in
    /// `dir`. QEMU runs in `netns` if given.
    pub fn new(board: Board, image: &Path, dir: &Path, netns: Option<&Netns>) -> Result<Vm> {
        fs::create_dir_all(dir)?;
        Ok(Vm {
            board,
            image: image.to_owned(),
            dir: dir.to_owned(),
            netns: netns.map(|n| n.0.clone()),
            hostfwd: Vec::new(),
            proc: None,
            serial: dir.join("serial.log"),
            boot_from: 0,
            powered_on: None,
            boots: 0,
        })
    }

    /// Forwards `host` on the namespace's 127.0.0.1 to the guest's `guest` (TCP).
    pub fn forward(&mut self, host: u16, guest: u16) {
        self.forward_on("127.0.0.1", host, guest);
    }

    /// Forwards `addr:host` of the namespace (e.g. its bridge address, where other
    /// namespaces reach it) to the guest's `guest` (TCP).
    pub fn forward_on(&mut self, addr: &str, host: u16, guest: u16) {
        self.hostfwd.push((addr.to_owned(), host, guest));
    }

    /// Powers the board on: the firmware's part (kernel, initramfs, cmdline.txt from the
    /// boot partition), then QEMU.
    pub fn power_on(&mut self) -> Result<()> {
        ensure!(self.proc.is_none(), "the board is already on");
        let (kernel_name, initrd_name) = self.board.boot_files();
        let kernel = self.dir.join(kernel_name);
        let initrd = self.dir.join(initrd_name);
        fs::write(&kernel, boot_file(&self.image, kernel_name)?)?;
        fs::write(&initrd, boot_file(&self.image, initrd_name)?)?;
        let cmdline = String::from_utf8(boot_file(&self.image, "cmdline.txt")?)?;
        // The firmware passes the file's first line.
        let append = cmdline.lines().next().unwrap_or("").trim().to_owned();
        ensure!(!append.is_empty(), "cmdline.txt is empty");

        let mut netdev = String::from("user,id=n0");
        for (a, h, g) in &self.hostfwd {
            netdev.push_str(&format!(",hostfwd=tcp:{a}:{h}-:{g}"));
        }
        let mut qemu = self.board.qemu();
        qemu.args(["-smp", "2", "-m", "1024", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-chardev")
            .arg(format!(
                "file,id=s0,path={},append=on",
                self.serial.display()
            ))
            .args(["-serial", "chardev:s0"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(&append)
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=card,cache=writeback",
                self.image.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=card"])
            .args(["-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            // A hardware RNG, as a Pi has: the agent makes its key early in boot.
            .args(["-device", "virtio-rng-pci"]);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(qemu.get_program())
                    .args(qemu.get_args());
                c
            }
            None => qemu,
        };
        self.boots += 1;
        let log = self.dir.join(format!("qemu-{}.log", self.boots));
        mark_boot(&self.serial, self.boots, &append)?;
        self.boot_from = fs::metadata(&self.serial).map(|m| m.len()).unwrap_or(0);
        self.powered_on = Some(Instant::now());
        self.proc = Some(Proc::spawn("qemu", &mut cmd, log)?);
        Ok(())
    }

    /// The serial console since this boot's power-on.
    pub fn console(&self) -> String {
        let all = fs::read(&self.serial).unwrap_or_default();
        let from = (self.boot_from as usize).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// The whole serial log, every boot.
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    pub fn serial_path(&self) -> &Path {
        &self.serial
    }

    /// Waits until this boot's console shows `needle`; returns the time since power-on.
    /// Fails at once if QEMU ends first.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.console().contains(needle) {
                return Ok(self.since_power_on());
            }
            if !self.is_on() {
                bail!(
                    "QEMU ended before {needle:?} showed on the console: {}",
                    self.qemu_log()
                );
            }
            if start.elapsed() > timeout {
                bail!("{needle:?} did not show on the console within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits for QEMU to end by itself (the guest rebooted or powered off).
    pub fn wait_off(&mut self, timeout: Duration) -> Result<Duration> {
        wait_for("the board to reboot or power off", timeout, || {
            Ok((!self.is_on()).then_some(()))
        })?;
        self.proc.take();
        Ok(self.since_power_on())
    }

    /// Pulls the plug: SIGKILL to QEMU, no shutdown of any kind in the guest.
    pub fn power_cut(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn is_on(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    pub fn since_power_on(&self) -> Duration {
        self.powered_on.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// QEMU's own output (its errors), for a failure message.
    pub fn qemu_log(&self) -> String {
        fs::read_to_string(self.dir.join(format!("qemu-{}.log", self.boots))).unwrap_or_default()
    }

    /// The last `n` lines of the serial log, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let log = self.serial_log();
        let lines = without_progress(&log);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// This boot's lines about the network (the NIC, networkd, DHCP, wait-online) and the
    /// agent's start: what a board that never became Ready is read for first.
    pub fn network_lines(&self) -> String {
        const WORDS: [&str; 9] = [
            "networkd",
            "DHCP",
            "wait-online",
            "network-online",
            "virtio_net",
            "enp0s",
            "eth0",
            "udev",
            "baton-agent.service",
        ];
        let console = self.console();
        without_progress(&console)
            .into_iter()
            .filter(|l| WORDS.iter().any(|w| l.contains(w)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The log's lines without systemd's progress lines (`[ ***  ] Job ... running (1min 22s /
/// no limit)`, two a second while a job waits), but the last of each run of them: a tail of
/// only those says what is waiting and nothing else.
fn without_progress(log: &str) -> Vec<&str> {
    let progress = |l: &str| l.contains("] Job ") && l.contains(" running (");
    let lines: Vec<&str> = log.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(i, l)| !progress(l) || !lines.get(i + 1).is_some_and(|n| progress(n)))
        .map(|(_, l)| *l)
        .collect()
}

/// A line in the serial log between boots, so a reader of the log sees where each starts.
fn mark_boot(serial: &Path, boot: u32, append: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(serial)?;
    writeln!(f, "\n===== power-on {boot}: cmdline: {append} =====")?;
    Ok(())
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_cut();
    }
}

#[cfg(test)]
mod tests {
    use super::without_progress;

    #[test]
    fn progress_lines_collapse_to_the_last_of_each_run() {
        let log = "a\n[  *** ] Job x.service/start running (1min 1s / no limit)\n\
                   [ ***  ] Job x.service/start running (1min 2s / no limit)\nb\n\
                   [***   ] Job y.service/start running (3s / 1min 30s)\n";
        assert_eq!(
            without_progress(log),
            vec![
                "a",
                "[ ***  ] Job x.service/start running (1min 2s / no limit)",
                "b",
                "[***   ] Job y.service/start running (3s / 1min 30s)",
            ]
        );
    }
}
