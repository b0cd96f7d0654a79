//! A `baton` command that keeps printing (`logs -f`, `get -w`), read line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Lab;

/// `baton ARGS` in the hub as admin, its stdout piped: the child and its lines, on a
/// channel, as they come.
pub fn spawn_lines(lab: &Lab, args: &[&str]) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut cmd = lab.baton_cmd();
    cmd.args(args);
    spawn_cmd_lines(cmd)
}

/// [`spawn_lines`] for a command built by the caller (another token, say).
pub fn spawn_cmd_lines(mut cmd: Command) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, rx))
}

/// Reads `rx` until a line satisfies `done`, for at most `within`; every line read, in
/// order.
pub fn read_until(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let stop = done(&l);
                seen.push(l);
                if stop {
                    return Ok(seen);
                }
            }
            Err(_) => bail!("never saw {what}; saw {seen:?}"),
        }
    }
}
