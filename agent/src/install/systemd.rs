//! Talking to systemd: through `systemctl`, behind a small trait so that install and
//! uninstall can be checked against a recording double (this machine, like a container or
//! an image being prepared, has no systemd; the ARM VM's tests exercise the real one).

use std::path::Path;
use std::process::Command;

use super::InstallError;

pub trait Systemctl {
    /// Whether systemd manages the system at `root`: only the running system's root, and
    /// only when systemd booted it (`/run/systemd/system`, as `sd_booted()` checks).
    fn running(&self, root: &Path) -> bool;
    /// Runs `systemctl ARGS`.
    fn run(&self, args: &[&str]) -> Result<(), InstallError>;
    /// Whether the system is still booting. A first-boot script (firstrun.sh under
    /// `systemd.run=`, cloud-init's runcmd) is itself a boot job: a blocking start of a unit
    /// ordered after `network-online.target` could wait on a target that boot never reaches.
    fn booting(&self) -> bool {
        false
    }
}

/// The real `systemctl`.
pub struct SystemdCli;

impl Systemctl for SystemdCli {
    fn running(&self, root: &Path) -> bool {
        let live = root.canonicalize().is_ok_and(|r| r == Path::new("/"));
        live && Path::new("/run/systemd/system").is_dir()
    }

    fn run(&self, args: &[&str]) -> Result<(), InstallError> {
        let failed = |message: String| InstallError::Systemctl {
            args: args.join(" "),
            message,
        };
        let out = Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| failed(e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(failed(format!("{} ({})", err.trim(), out.status)))
    }

    fn booting(&self) -> bool {
        // Prints the state and exits non-zero for every state but `running`, so read stdout.
        Command::new("systemctl")
            .arg("is-system-running")
            .output()
            .is_ok_and(|o| matches!(o.stdout.trim_ascii(), b"initializing" | b"starting"))
    }
}
