//! `baton-agent install` and `uninstall`: putting the agent onto a board that already runs
//! an OS, as a systemd service, and taking it off again (like k3s's install script, but in
//! the binary, so there is nothing else to download and every value is checked by the
//! agent's own parser before anything is written).
//!
//! Install writes, under a root (`/`, or an image or test directory):
//! - [`BINARY`]: a durable copy of the running executable, mode 0755 (skipped when the
//!   running executable is that file: a re-install from the installed binary);
//! - [`ENV_FILE`]: mode 0600, the agent's settings as `BATON_*` variables, the join token
//!   included (moved there from `--join-token-file`, whose file is then removed: it may sit
//!   on a FAT boot partition anyone with the card can read);
//! - [`UNIT_FILE`], the systemd unit (see [`files::unit`] for why each setting), and
//!   [`MODULES_FILE`];
//! - the data directory, mode 0700 (kept as it is when it exists: a second install keeps
//!   the identity).
//!
//! Then, with systemd running on this root: `daemon-reload`, `enable`, and a `restart`
//! (which starts a stopped unit, and puts a new binary to work) unless `--no-start`.
//! Without it (an image, a container, a test root), the unit is enabled the way `systemctl
//! enable` would (the `multi-user.target.wants` link) and [`Service::NotRunning`] says it
//! was not started.
//!
//! Uninstall stops and disables the unit, then (in `main.rs`) resets the data directory
//! as `baton-agent reset` does, then removes the files above and, unless `--keep-data`,
//! the data directory. It never removes a tree that still has something mounted in it: a
//! pod's rootfs or volume would take host files with it.

mod files;
mod systemd;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use files::{modules_load, parse_env, render_env, unit, MODULES};
pub use systemd::{Systemctl, SystemdCli};

/// Paths on the target system, relative to its root.
pub const BINARY: &str = "usr/local/bin/baton-agent";
pub const ENV_FILE: &str = "etc/baton-agent/agent.env";
pub const UNIT_FILE: &str = "etc/systemd/system/baton-agent.service";
pub const WANTS_LINK: &str = "etc/systemd/system/multi-user.target.wants/baton-agent.service";
pub const MODULES_FILE: &str = "etc/modules-load.d/baton-agent.conf";
pub const UNIT: &str = "baton-agent.service";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {message}")]
    EnvValue { name: String, message: String },
    #[error("invalid {}: {message}", path.display())]
    EnvFile { path: PathBuf, message: String },
    #[error("--root {}: not a directory", .0.display())]
    Root(PathBuf),
    #[error("the data directory must be an absolute path, not {}", .0.display())]
    DataDir(PathBuf),
    #[error("`systemctl {args}` failed: {message}")]
    Systemctl { args: String, message: String },
    #[error("{} still has something mounted under it ({}): not removed; stop what uses it (or reboot) and run uninstall again", dir.display(), mounts.join(", "))]
    Mounted { dir: PathBuf, mounts: Vec<String> },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `path` (absolute on the target) under `root`.
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// What to install.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The target's root: `/`, or an image or test directory.
    pub root: PathBuf,
    /// The agent's settings for [`ENV_FILE`], in order.
    pub env: Vec<(String, String)>,
    /// The agent's data directory on the target (absolute).
    pub data_dir: PathBuf,
    /// A token file to remove once [`ENV_FILE`] holds the token.
    pub token_file: Option<PathBuf>,
    /// Start (or restart) the unit, not only enable it.
    pub start: bool,
    /// The executable to install: `/proc/self/exe` (which opens the running image even if
    /// its path was replaced since).
    pub executable: PathBuf,
}

/// What happened to the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Copied {
        bytes: u64,
    },
    /// The running executable is the installed one.
    AlreadyThere,
}

/// What happened to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Enabled and (re)started.
    Started,
    /// Enabled; not started (`--no-start`).
    Enabled,
    /// systemd does not run on this root: enabled for its next boot, not started.
    NotRunning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binary: Binary,
    pub service: Service,
}

/// A binary installed by hand wins over any agent update: the launcher starts the installed
/// binary when there is no update state (the staged versions are removed by the next
/// update's prune).
fn forget_updates(data: &Path) -> Result<(), InstallError> {
    let layout = crate::update::layout::Layout::new(data);
    for f in [layout.state_file(), layout.current(), layout.previous()] {
        match fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&f)(e)),
            _ => {}
        }
    }
    let _ = crate::durable::sync_parent(&layout.state_file());
    Ok(())
}

/// Installs per `plan`; see the module docs. Everything is checked (the root, the data
/// directory's form, every environment value) before the first write.
pub fn install(plan: &Plan, systemctl: &dyn Systemctl) -> Result<Installed, InstallError> {
    let root = &plan.root;
    if !root.is_dir() {
        return Err(InstallError::Root(root.clone()));
    }
    if !plan.data_dir.is_absolute() {
        return Err(InstallError::DataDir(plan.data_dir.clone()));
    }
    let env = render_env(&plan.env)?;

    let binary = install_binary(&plan.executable, &root.join(BINARY))?;
    write(&root.join(ENV_FILE), env.as_bytes(), 0o600)?;
    write(&root.join(UNIT_FILE), unit().as_bytes(), 0o644)?;
    write(&root.join(MODULES_FILE), modules_load().as_bytes(), 0o644)?;
    let data = rooted(root, &plan.data_dir);
    // Its parents with the usual modes (a /var made 0700 in an image would break it).
    mkdir_parent(&data)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)
        .map_err(io(&data))?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).map_err(io(&data))?;
    forget_updates(&data)?;
    if let Some(f) = &plan.token_file {
        // Only now that the environment file, durably written, holds the token.
        match fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(f)(e)),
            _ => {
                let _ = crate::durable::sync_parent(f);
            }
        }
    }

    let service = if systemctl.running(root) {
        systemctl.run(&["daemon-reload"])?;
        systemctl.run(&["enable", UNIT])?;
        if plan.start {
            // During boot the start is queued, not waited for (see `Systemctl::booting`).
            if systemctl.booting() {
                systemctl.run(&["--no-block", "restart", UNIT])?;
            } else {
                systemctl.run(&["restart", UNIT])?;
            }
            Service::Started
        } else {
            Service::Enabled
        }
    } else {
        enable_offline(root)?;
        Service::NotRunning
    };
    Ok(Installed { binary, service })
}

/// Copies the running executable `exe` to `dst`, unless it is that very file.
fn install_binary(exe: &Path, dst: &Path) -> Result<Binary, InstallError> {
    let same = match (fs::metadata(exe), fs::metadata(dst)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        return Ok(Binary::AlreadyThere);
    }
    mkdir_parent(dst)?;
    let bytes = crate::durable::copy(exe, dst, 0o755).map_err(io(dst))?;
    Ok(Binary::Copied { bytes })
}

fn mkdir_parent(path: &Path) -> Result<(), InstallError> {
    match path.parent() {
        Some(d) => fs::create_dir_all(d).map_err(io(d)),
        None => Ok(()),
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    mkdir_parent(path)?;
    crate::durable::write(path, bytes, mode).map_err(io(path))?;
    // Exactly `mode`, whatever the umask (a unit readable by systemd's tools).
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// What `systemctl enable` does for `WantedBy=multi-user.target`, without systemd.
fn enable_offline(root: &Path) -> Result<(), InstallError> {
    let link = root.join(WANTS_LINK);
    mkdir_parent(&link)?;
    let target = Path::new("/").join(UNIT_FILE);
    if fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    match fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&link)(e)),
        _ => {}
    }
    std::os::unix::fs::symlink(&target, &link).map_err(io(&link))
}

/// Reads [`ENV_FILE`] under `root`; `None` if there is none.
pub fn read_env(root: &Path) -> Result<Option<Vec<(String, String)>>, InstallError> {
    let path = root.join(ENV_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_env(&text)
            .map(Some)
            .map_err(|message| InstallError::EnvFile { path, message }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Stops and disables the unit if systemd runs on `root`; `false` if it does not.
pub fn stop_service(root: &Path, systemctl: &dyn Systemctl) -> Result<bool, InstallError> {
    if !systemctl.running(root) {
        return Ok(false);
    }
    if root.join(UNIT_FILE).exists() {
        systemctl.run(&["disable", "--now", UNIT])?;
    }
    Ok(true)
}

/// Removes the unit, its enable link, the environment file (and its directory when empty),
/// the modules-load file and the binary; then `daemon-reload` if systemd runs. Returns what
/// was removed.
pub fn remove_files(root: &Path, systemctl: &dyn Systemctl) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    for rel in [WANTS_LINK, UNIT_FILE, ENV_FILE, MODULES_FILE, BINARY] {
        let p = root.join(rel);
        match fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    if let Some(dir) = root.join(ENV_FILE).parent() {
        // Only if empty: an admin's own files there stay.
        if fs::remove_dir(dir).is_ok() {
            removed.push(dir.to_owned());
        }
    }
    if systemctl.running(root) {
        systemctl.run(&["daemon-reload"])?;
    }
    Ok(removed)
}

/// The mount points at or under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Result<Vec<String>, InstallError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(info).map_err(io(info))?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `dir` and everything in it, unless something is mounted there (see the module
/// docs). `false` if there was nothing to remove.
pub fn remove_tree(dir: &Path) -> Result<bool, InstallError> {
    if !dir.exists() {
        return Ok(false);
    }
    let mounts = mounts_under(dir)?;
    if !mounts.is_empty() {
        return Err(InstallError::Mounted {
            dir: dir.to_owned(),
            mounts,
        });
    }
    fs::remove_dir_all(dir).map_err(io(dir))?;
    Ok(true)
}

/// Removes the agent's run directory once no node uses it (it is empty after a reset):
/// unmounts the tmpfs the agent put there, if any, then removes it and its lock file. A
/// run directory still in use (another node's bundles, or a shared `/run`) stays.
pub fn remove_run_dir(run_dir: &Path) -> Result<bool, InstallError> {
    let empty = match fs::read_dir(run_dir) {
        Ok(mut d) => d.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(run_dir)(e)),
    };
    if !empty {
        return Ok(false);
    }
    let canon = run_dir.canonicalize().map_err(io(run_dir))?;
    // Mounts may be stacked (agents of older versions raced); each umount takes one off.
    for _ in 0..16 {
        if !mounts_under(&canon)?.iter().any(|m| Path::new(m) == canon) {
            break;
        }
        nix::mount::umount2(&canon, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| io(&canon)(e.into()))?;
    }
    fs::remove_dir(run_dir).map_err(io(run_dir))?;
    let _ = fs::remove_file(run_dir.with_extension("lock"));
    Ok(true)
}

#[cfg(test)]
mod tests;
