//! Running `ip` and `iptables`, and the small idempotent steps built on them.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{io_err, NetError};

/// Runs a command, returning stdout; a non-zero exit becomes [`NetError::Command`] with the
/// command line and its stderr.
pub(super) fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let command = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            command: command(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: command(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

pub(super) fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args)
}

/// iptables with `-w`: agents and tests change rules concurrently, and without it a second
/// writer fails at once on the xtables lock.
pub(super) fn iptables(args: &[&str]) -> Result<String, NetError> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all)
}

/// Runs `iptables-restore -w --noflush` on `script`.
pub(super) fn iptables_restore(script: &str) -> Result<(), NetError> {
    let command = "iptables-restore -w --noflush".to_owned();
    let spawn_err = |source| NetError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetError::Command {
            command,
            status: out.status.to_string(),
            stderr: format!(
                "{}; input:\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    written.transpose().map_err(spawn_err)?;
    Ok(())
}

/// Whether `name` exists, in netns `ns` or the agent's own.
pub(super) fn link_exists(ns: Option<&str>, name: &str) -> Result<bool, NetError> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["link", "show", "dev", name]);
    match ip(&args) {
        Ok(_) => Ok(true),
        Err(NetError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `table` has `chain`. Read from the table's full listing rather than from the error of
/// listing one chain: iptables-nft 1.8.9 reports a missing chain as "incompatible".
pub(super) fn chain_exists(table: &str, chain: &str) -> Result<bool, NetError> {
    let rules = iptables(&["-t", table, "-S"])?;
    Ok(rules
        .lines()
        .any(|l| l.strip_prefix("-N ").map(str::trim) == Some(chain)))
}

pub(super) fn ensure_chain(table: &str, chain: &str) -> Result<(), NetError> {
    if !chain_exists(table, chain)? {
        if let Err(e) = iptables(&["-t", table, "-N", chain]) {
            if !chain_exists(table, chain)? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Appends `matches -j chain` to `parent` unless it is there. `matches` as `iptables -S`
/// prints them back (e.g. `-m addrtype --dst-type LOCAL`).
pub(super) fn ensure_jump(
    table: &str,
    parent: &str,
    matches: &[&str],
    chain: &str,
) -> Result<(), NetError> {
    let rules = iptables(&["-t", table, "-S", parent])?;
    let mut rule = matches.to_vec();
    rule.extend(["-j", chain]);
    let jump = format!("-A {parent} {}", rule.join(" "));
    if !rules.lines().any(|l| l.trim() == jump) {
        let mut append = vec!["-t", table, "-A", parent];
        append.extend(rule);
        iptables(&append)?;
    }
    Ok(())
}

/// Inserts `-j chain` as the first rule of `parent` unless it is there: for a chain that
/// must see packets before the node's forward chain accepts them.
pub(super) fn ensure_jump_first(table: &str, parent: &str, chain: &str) -> Result<(), NetError> {
    let rules = iptables(&["-t", table, "-S", parent])?;
    let jump = format!("-A {parent} -j {chain}");
    if !rules.lines().any(|l| l.trim() == jump) {
        iptables(&["-t", table, "-I", parent, "1", "-j", chain])?;
    }
    Ok(())
}

/// The chains of `table` whose names start with `prefix`.
pub(super) fn chains_with_prefix(table: &str, prefix: &str) -> Result<Vec<String>, NetError> {
    let rules = iptables(&["-t", table, "-S"])?;
    Ok(rules
        .lines()
        .filter_map(|l| l.strip_prefix("-N ").map(str::trim))
        .filter(|c| c.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Sets the boolean sysctl at `path` (under `/proc/sys`) to 1: IPv4 forwarding (pods reach
/// beyond the node only if the agent's namespace forwards), `route_localnet`. Written only
/// when off, so that a read-only `/proc/sys` with it already on is not an error.
pub(super) fn enable_sysctl(path: &str) -> Result<(), NetError> {
    let path = Path::new(path);
    let on = fs::read_to_string(path).map_err(io_err(path))?;
    if on.trim() != "1" {
        fs::write(path, "1").map_err(io_err(path))?;
    }
    Ok(())
}
