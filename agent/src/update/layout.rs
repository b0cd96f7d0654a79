//! Where agent binaries live on the device, under `<data-dir>/agent/`:
//!
//! ```text
//! agent/
//!   update.json              the update state (state.rs)
//!   downloads/<sha>.part     a download in progress, kept across restarts (resumed)
//!   versions/<v>-<sha12>/baton-agent   verified binaries, mode 0755 only once verified
//!   current -> versions/…/baton-agent  what runs (a symlink, replaced by rename)
//!   previous -> …            what ran before: the rollback target
//! ```
//!
//! The installed binary (`/usr/local/bin/baton-agent`, the launcher) is never in here and
//! never replaced by an update: it is the last fallback when nothing here verifies.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::state::{Phase, UpdateState};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(Box<super::state::StateError>),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_owned();
    move |source| LayoutError::Io { what, path, source }
}

/// The paths of one data dir's agent binaries.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            root: data_dir.join("agent"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("update.json")
    }

    pub fn part_file(&self, sha256_hex: &str) -> PathBuf {
        self.root
            .join("downloads")
            .join(format!("{sha256_hex}.part"))
    }

    pub fn version_binary(&self, version: &str, sha256_hex: &str) -> PathBuf {
        let short = &sha256_hex[..sha256_hex.len().min(12)];
        self.root
            .join("versions")
            .join(format!("{version}-{short}"))
            .join("baton-agent")
    }

    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn previous(&self) -> PathBuf {
        self.root.join("previous")
    }

    /// Moves a downloaded and verified `part` file into its version directory and only then
    /// makes it executable: nothing that failed verification is ever executable.
    pub fn stage(
        &self,
        part: &Path,
        version: &str,
        sha256_hex: &str,
    ) -> Result<PathBuf, LayoutError> {
        use std::os::unix::fs::PermissionsExt;
        let dest = self.version_binary(version, sha256_hex);
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let f = std::fs::File::open(part).map_err(io("open", part))?;
        f.sync_all().map_err(io("sync", part))?;
        crate::durable::rename(part, &dest).map_err(io("stage", &dest))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &dest))?;
        std::fs::File::open(&dest)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &dest))?;
        Ok(dest)
    }

    /// Points the symlink `link` at `target`, atomically (a new link renamed over it) and
    /// durably (directory fsynced).
    pub fn point(&self, link: &Path, target: &Path) -> Result<(), LayoutError> {
        if std::fs::read_link(link).is_ok_and(|t| t == target) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let tmp = crate::durable::temp_sibling(link);
        std::os::unix::fs::symlink(target, &tmp).map_err(io("link", &tmp))?;
        crate::durable::rename(&tmp, link).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("replace", link)(e)
        })
    }

    /// Switches to `s.to` (staged and verified): records the switch, re-points `previous`
    /// and `current`, and enters probation, each step durable. A kill or power cut between
    /// any two steps leaves a state the launcher finishes from (`Switching`: it completes
    /// the switch; nothing written: the old agent runs on).
    pub fn switch(&self, s: &mut UpdateState) -> Result<(), LayoutError> {
        self.switch_until(s, usize::MAX)
    }

    /// The first `steps` steps of [`Layout::switch`]: the tests stop it at each one.
    pub(crate) fn switch_until(
        &self,
        s: &mut UpdateState,
        steps: usize,
    ) -> Result<(), LayoutError> {
        let state = self.state_file();
        let store = |s: &UpdateState| s.store(&state).map_err(|e| LayoutError::State(Box::new(e)));
        s.phase = Phase::Switching;
        for step in 0..steps.min(4) {
            match step {
                0 => store(s)?,
                1 => self.point(&self.previous(), &s.from.path)?,
                2 => self.point(&self.current(), &s.to.path)?,
                _ => {
                    s.phase = Phase::Probation;
                    store(s)?
                }
            }
        }
        Ok(())
    }

    /// Removes version directories other than those of `keep`, and downloads left over.
    pub fn prune(&self, keep: &[&Path]) {
        let versions = self.root.join("versions");
        let Ok(entries) = std::fs::read_dir(&versions) else {
            return;
        };
        for e in entries.flatten() {
            let dir = e.path();
            if !keep.iter().any(|k| k.starts_with(&dir)) {
                if let Err(err) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot remove an old agent version");
                }
            }
        }
    }
}

/// The sha256 of a file, as lowercase hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether `path` exists and has the digest `sha256_hex`: the launcher's check before an exec.
pub fn verifies(path: &Path, sha256_hex: &str) -> bool {
    file_sha256(path).is_ok_and(|d| d == sha256_hex)
}
