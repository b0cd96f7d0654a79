//! `baton rollout status|history|undo`: a deployment's rollout.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;

use super::client::Client;
use super::render::{history_table, progress_bar, revision_details};
use super::{named, CliError};
use crate::contract::body::UndoRequest;
use crate::contract::{routes, NoBody, ResourceKind};
use crate::model::api;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait for a rollout to finish, showing its progress; fails if it cannot finish.
    Status {
        /// `deployment/NAME` or `deployment NAME`
        resource: String,
        name: Option<String>,
        /// Give up after this long (e.g. 90s, 5m); 0 waits forever.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// List a deployment's revisions, or show one template with --revision.
    History {
        resource: String,
        name: Option<String>,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        resource: String,
        name: Option<String>,
        #[arg(long)]
        to_revision: Option<u64>,
    },
}

/// A rollout subcommand's argument must name a deployment.
fn deployment_name(resource: &str, name: Option<&str>, verb: &str) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, verb)?;
    if kind != ResourceKind::Deployment {
        return Err(CliError::Usage(format!(
            "error: no rollout for a {}: only deployments have rollouts",
            kind.as_str()
        )));
    }
    Ok(name)
}

pub(super) async fn rollout(client: &Client, action: &RolloutCommand) -> Result<String, CliError> {
    match action {
        RolloutCommand::Status {
            resource,
            name,
            timeout,
        } => {
            let name = deployment_name(resource, name.as_deref(), "rollout status")?;
            let timeout = timeout.filter(|t| !t.is_zero());
            watch_rollout(client, &name, timeout).await?;
            Ok(String::new())
        }
        RolloutCommand::History {
            resource,
            name,
            revision,
        } => {
            let name = deployment_name(resource, name.as_deref(), "rollout history")?;
            let history = routes::RolloutHistory { name: name.clone() };
            let revisions: Vec<api::Revision> = client.call(&history, &NoBody).await?.items;
            match revision {
                None => Ok(history_table(&name, &revisions)),
                Some(n) => revisions
                    .iter()
                    .find(|r| r.revision == *n)
                    .map(|r| revision_details(&name, r))
                    .ok_or_else(|| {
                        CliError::Usage(format!("error: unable to find the specified revision {n}"))
                    }),
            }
        }
        RolloutCommand::Undo {
            resource,
            name,
            to_revision,
        } => {
            let name = deployment_name(resource, name.as_deref(), "rollout undo")?;
            let undo = routes::RolloutUndo { name: name.clone() };
            let request = UndoRequest {
                to_revision: *to_revision,
            };
            let undone = client.call(&undo, &request).await?;
            if !undone.rolled_back {
                let rev = undone.revision;
                Ok(format!(
                    "deployment.apps/{name} skipped rollback (current template already matches revision {rev})\n"
                ))
            } else {
                Ok(format!("deployment.apps/{name} rolled back\n"))
            }
        }
    }
}

/// Polls the rollout until it is done, it fails, or `timeout` passes. On a terminal the
/// progress is one line redrawn in place; otherwise a line is printed only when the
/// state changes, so logs stay short.
async fn watch_rollout(
    client: &Client,
    name: &str,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let start = std::time::Instant::now();
    let mut last = String::new();
    let mut stdout = std::io::stdout();
    let clear = |stdout: &mut std::io::Stdout, drawn: bool| {
        if tty && drawn {
            let _ = write!(stdout, "\r\x1b[K");
        }
    };
    loop {
        let status = routes::RolloutStatus {
            name: name.to_owned(),
        };
        let p = client.call(&status, &NoBody).await?;
        if p.done {
            clear(&mut stdout, !last.is_empty());
            let _ = writeln!(stdout, "{}", p.message);
            return Ok(());
        }
        if let Some(why) = &p.failure {
            clear(&mut stdout, !last.is_empty());
            return Err(CliError::Rollout(format!(
                "error: deployment {name:?} rollout failed: {why}"
            )));
        }
        let line = if tty {
            progress_bar(&p)
        } else {
            p.message.clone()
        };
        if line != last {
            if tty {
                let _ = write!(stdout, "\r{line}\x1b[K");
            } else {
                let _ = writeln!(stdout, "{line}");
            }
            let _ = stdout.flush();
            last = line;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            clear(&mut stdout, !last.is_empty());
            return Err(CliError::Rollout(format!(
                "error: timed out waiting for deployment {name:?} to roll out: {}",
                p.message
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deployments_have_rollouts() {
        assert!(deployment_name("pod/x", None, "rollout status").is_err());
    }
}
