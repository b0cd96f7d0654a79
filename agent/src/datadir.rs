//! The agent's data directory: held by one agent process at a time, closed to other users.
//!
//! [`lock`] runs before anything else touches the directory (`baton-agent` and
//! `baton-agent reset` both take it; `rotate` does not, it works beside a running agent):
//! - **One agent.** A second agent on a live node's directory used to run unhindered, and
//!   when it stopped it removed the first one's pod networks. The lock is a POSIX record lock
//!   (`fcntl(F_SETLK)`) on `<data-dir>/agent.lock`, held for the life of the process and
//!   released by the kernel when it dies, however it dies. Not `flock(2)`: a flock belongs to
//!   the open file, which every process libcontainer clones off the agent shares until it
//!   execs, so a container init left waiting between create and start would hold the lock
//!   after the agent died. A record lock belongs to the process and is never inherited.
//!   `F_GETLK` names the holder, so the refusal says which pid to look at. The pid is also
//!   written into the file, for people.
//! - **Closed to other users.** The directory holds the device key, desired state (sealed
//!   secrets), container logs, secret volumes and every image layer, setuid binaries and
//!   device nodes included. Mode 0700 makes all of it unreachable by path for any user but
//!   root; containers never need it (their rootfs and volumes reach them through mounts, not
//!   through the host's path). [`tighten`] also closes what an older agent left open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "agent.lock";

/// The data directory's own mode, and that of every directory the agent makes in it.
pub const PRIVATE_DIR: u32 = 0o700;
/// The mode of every file the agent writes there (keys, state, logs).
pub const PRIVATE_FILE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {} is in use by another agent (pid {pid}); stop it first",
        dir.display()
    )]
    InUse { dir: PathBuf, pid: i32 },
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A whole-file lock request (or query) of `kind` for `fcntl`.
fn whole_file(kind: i32) -> nix::libc::flock {
    nix::libc::flock {
        l_type: kind as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0, // to the end, however long
        l_pid: 0,
    }
}

/// Creates `dir` (mode 0700) if needed, closes it to other users, takes its lock and then
/// tightens what is inside ([`tighten`]). Fails with [`DataDirError::InUse`] naming the
/// holder's pid if another process holds the lock.
pub fn lock(dir: &Path) -> Result<DataDirLock, DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR)).map_err(io_err(dir))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(&path)
        .map_err(io_err(&path))?;
    let fd = file.as_raw_fd();
    match fcntl(fd, FcntlArg::F_SETLK(&whole_file(nix::libc::F_WRLCK))) {
        Ok(_) => {}
        Err(Errno::EACCES | Errno::EAGAIN) => {
            return Err(DataDirError::InUse {
                dir: dir.to_owned(),
                pid: holder(&file, &path),
            })
        }
        Err(e) => return Err(io_err(&path)(e.into())),
    }
    // Only now, with the lock held: a refused agent must not touch the holder's file.
    file.set_len(0).map_err(io_err(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    tighten(dir);
    Ok(DataDirLock { _file: file, path })
}

/// The pid holding the lock on `file`: from `F_GETLK`, else (it let go meanwhile) the pid
/// its holder wrote; 0 when neither tells.
fn holder(file: &File, path: &Path) -> i32 {
    let mut fl = whole_file(nix::libc::F_WRLCK);
    let from_kernel = fcntl(file.as_raw_fd(), FcntlArg::F_GETLK(&mut fl))
        .ok()
        .filter(|_| i32::from(fl.l_type) != nix::libc::F_UNLCK && fl.l_pid > 0)
        .map(|_| fl.l_pid);
    from_kernel.unwrap_or_else(|| {
        fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Closes a data directory an older agent left open (0755 directories, 0644 files): the
/// directory and its subdirectories `runtime`, `images`, `net`, `pods`, each pod's directory
/// and its `logs` to 0700; the files directly in the data directory (identity, replay
/// state, desired state) and every container log to 0600. Best effort: what cannot be
/// changed is logged, the data directory's own 0700 is what closes it all.
pub fn tighten(dir: &Path) {
    let chmod = |p: &Path, mode: u32| {
        if let Err(e) = fs::set_permissions(p, fs::Permissions::from_mode(mode)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "cannot tighten the mode");
            }
        }
    };
    let entries = |p: &Path| -> Vec<(PathBuf, fs::FileType)> {
        fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (p, t) in entries(dir) {
        if t.is_file() {
            chmod(&p, PRIVATE_FILE);
        } else if t.is_dir() {
            chmod(&p, PRIVATE_DIR);
        }
    }
    for (pod, t) in entries(&dir.join("pods")) {
        if !t.is_dir() {
            continue;
        }
        chmod(&pod, PRIVATE_DIR);
        let logs = pod.join("logs");
        chmod(&logs, PRIVATE_DIR);
        for (log, t) in entries(&logs) {
            if t.is_file() {
                chmod(&log, PRIVATE_FILE);
            }
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700 (an existing one is left as it is).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn an_old_open_data_dir_is_closed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let logs = dir.join("pods/u1/logs");
        fs::create_dir_all(&logs).unwrap();
        fs::create_dir_all(dir.join("images/layers")).unwrap();
        fs::write(dir.join("desired.bin"), b"x").unwrap();
        fs::write(logs.join("c.log"), b"secret").unwrap();
        for p in [&dir, &dir.join("pods"), &dir.join("images"), &logs] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for f in [dir.join("desired.bin"), logs.join("c.log")] {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let held = lock(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("pods")), 0o700);
        assert_eq!(mode(&dir.join("images")), 0o700);
        assert_eq!(mode(&dir.join("pods/u1")), 0o700);
        assert_eq!(mode(&logs), 0o700);
        assert_eq!(mode(&dir.join("desired.bin")), 0o600);
        assert_eq!(mode(&logs.join("c.log")), 0o600);
        assert_eq!(mode(held.path()), 0o600);
        assert_eq!(
            fs::read_to_string(held.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    /// Record locks are per process, so the second taker must be another process (the
    /// e2e test `tests/tests/local_user.rs` runs a second agent).
    #[test]
    fn another_process_cannot_take_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let _held = lock(&dir).unwrap();
        // Python's fcntl.lockf is a POSIX record lock, like ours.
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n print('locked')\nexcept OSError:\n print('refused')\n",
            )
            .arg(dir.join(LOCK_FILE))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    }
}
