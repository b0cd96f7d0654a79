//! Version skew: the previous release's agent, built from this repository's own history
//! (tests/skew/build-previous.sh: a `git worktree` at tag `v0.1.0`, cached by commit), and
//! what a test reads of each node's version.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::{repo_root, sh, Lab};

/// The version the previous release's agent reports.
pub const PREVIOUS_VERSION: &str = "0.1.0";

/// The previous release's `baton-agent` (Baton 0.1.0, protocol v4). Built once per machine
/// by the script (scripts/test.sh starts it early, in the background); a test that finds
/// it missing builds it here, which takes minutes.
pub fn previous_agent() -> Result<PathBuf> {
    let out = sh(&mut Command::new(
        repo_root().join("tests/skew/build-previous.sh"),
    ))?;
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    ensure!(
        path.is_file(),
        "build-previous.sh printed {}",
        path.display()
    );
    Ok(path)
}

/// The row of `baton get nodes` for `node`, split into its columns (NAME STATUS ARCH AGE
/// VERSION).
pub fn nodes_row(lab: &Lab, node: &str) -> Result<Vec<String>> {
    let out = lab.baton(&["get", "nodes"])?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header.get(4) == Some(&"VERSION"),
        "get nodes has no VERSION column:\n{table}"
    );
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.first().is_some_and(|n| n == node))
        .with_context(|| format!("{node} not in get nodes:\n{table}"))
}

/// The VERSION column of `baton get nodes` for `node`.
pub fn node_version(lab: &Lab, node: &str) -> Result<String> {
    nodes_row(lab, node)?
        .get(4)
        .cloned()
        .context("a row without VERSION")
}
