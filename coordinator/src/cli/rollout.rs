//! `baton rollout status|history|undo`: a deployment's or a daemonset's rollout.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;

use super::client::Client;
use super::render::{history_table, progress_bar, revision_details};
use super::{named, qualified, CliError};
use crate::contract::body::{RolloutProgress, UndoRequest};
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

/// A rollout subcommand's argument must name a deployment or a daemonset.
fn rollout_target(
    resource: &str,
    name: Option<&str>,
    verb: &str,
) -> Result<(ResourceKind, String), CliError> {
    let (kind, name) = named(resource, name, verb)?;
    if !matches!(kind, ResourceKind::Deployment | ResourceKind::DaemonSet) {
        return Err(CliError::Usage(format!(
            "error: no rollout for a {}: only deployments and daemonsets have rollouts",
            kind.as_str()
        )));
    }
    Ok((kind, name))
}

async fn history(
    client: &Client,
    kind: ResourceKind,
    name: &str,
) -> Result<Vec<api::Revision>, CliError> {
    let name = name.to_owned();
    Ok(match kind {
        ResourceKind::DaemonSet => {
            let namespace = client.namespace().to_owned();
            let route = routes::DaemonSetRolloutHistoryNamespaced { namespace, name };
            client.call(&route, &NoBody).await?.items
        }
        _ => {
            let namespace = client.namespace().to_owned();
            let route = routes::RolloutHistoryNamespaced { namespace, name };
            client.call(&route, &NoBody).await?.items
        }
    })
}

async fn progress(
    client: &Client,
    kind: ResourceKind,
    name: &str,
) -> Result<RolloutProgress, CliError> {
    let name = name.to_owned();
    match kind {
        ResourceKind::DaemonSet => {
            let namespace = client.namespace().to_owned();
            let route = routes::DaemonSetRolloutStatusNamespaced { namespace, name };
            client.call(&route, &NoBody).await
        }
        _ => {
            let namespace = client.namespace().to_owned();
            let route = routes::RolloutStatusNamespaced { namespace, name };
            client.call(&route, &NoBody).await
        }
    }
}

pub(super) async fn rollout(client: &Client, action: &RolloutCommand) -> Result<String, CliError> {
    match action {
        RolloutCommand::Status {
            resource,
            name,
            timeout,
        } => {
            let (kind, name) = rollout_target(resource, name.as_deref(), "rollout status")?;
            let timeout = timeout.filter(|t| !t.is_zero());
            watch_rollout(client, kind, &name, timeout).await?;
            Ok(String::new())
        }
        RolloutCommand::History {
            resource,
            name,
            revision,
        } => {
            let (kind, name) = rollout_target(resource, name.as_deref(), "rollout history")?;
            let revisions = history(client, kind, &name).await?;
            let what = format!("{}/{name}", qualified(kind));
            match revision {
                None => Ok(history_table(&what, &revisions)),
                Some(n) => revisions
                    .iter()
                    .find(|r| r.revision == *n)
                    .map(|r| revision_details(&what, r))
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
            let (kind, name) = rollout_target(resource, name.as_deref(), "rollout undo")?;
            let request = UndoRequest {
                to_revision: *to_revision,
            };
            let undone = match kind {
                ResourceKind::DaemonSet => {
                    let undo = routes::DaemonSetRolloutUndoNamespaced {
                        namespace: client.namespace().to_owned(),
                        name: name.clone(),
                    };
                    client.call(&undo, &request).await?
                }
                _ => {
                    let undo = routes::RolloutUndoNamespaced {
                        namespace: client.namespace().to_owned(),
                        name: name.clone(),
                    };
                    client.call(&undo, &request).await?
                }
            };
            let what = format!("{}/{name}", qualified(kind));
            if !undone.rolled_back {
                let rev = undone.revision;
                Ok(format!(
                    "{what} skipped rollback (current template already matches revision {rev})\n"
                ))
            } else {
                Ok(format!("{what} rolled back\n"))
            }
        }
    }
}

/// Polls the rollout until it is done, it fails, or `timeout` passes. On a terminal the
/// progress is one line redrawn in place; otherwise a line is printed only when the
/// state changes, so logs stay short.
async fn watch_rollout(
    client: &Client,
    kind: ResourceKind,
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
        let p = progress(client, kind, name).await?;
        if p.done {
            clear(&mut stdout, !last.is_empty());
            let _ = writeln!(stdout, "{}", p.message);
            return Ok(());
        }
        if let Some(why) = &p.failure {
            clear(&mut stdout, !last.is_empty());
            return Err(CliError::Rollout(format!(
                "error: {} {name:?} rollout failed: {why}",
                kind.as_str()
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
                "error: timed out waiting for {} {name:?} to roll out: {}",
                kind.as_str(),
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
    fn only_deployments_and_daemonsets_have_rollouts() {
        assert!(rollout_target("pod/x", None, "rollout status").is_err());
        assert_eq!(
            rollout_target("ds/x", None, "rollout status").unwrap(),
            (ResourceKind::DaemonSet, "x".to_owned())
        );
    }
}
