//! `baton agent upgrade` and `baton agent rollout status|pause|resume|abort`: rollouts of
//! the agent itself. `upgrade` builds an `AgentUpdate` manifest and applies it, so a
//! rollout started from flags is the same object as one applied from a file.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::client::Client;
use super::render::agent_update::rollout_status;
use super::{qualified, structured, CliError, Output};
use crate::contract::payload::Manifest;
use crate::contract::{routes, ApplyAction, NoBody};
use crate::model::api;
use crate::model::manifest::check_version;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Roll out an agent version over the fleet: a canary, then waves.
    Upgrade(UpgradeArgs),
    /// Show, pause, resume or abort an agent rollout.
    Rollout {
        #[command(subcommand)]
        action: AgentRolloutCommand,
    },
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The version to roll out (imported with `baton release import`).
    #[arg(long, env = "BATON_UPGRADE_TO")]
    pub to: String,
    /// The rollout's name (default `agent-<version>` with dashes).
    #[arg(long, env = "BATON_UPGRADE_NAME")]
    pub name: Option<String>,
    /// Only nodes with these labels: `k=v,k2=v2`.
    #[arg(long, env = "BATON_UPGRADE_SELECTOR", value_delimiter = ',')]
    pub selector: Vec<String>,
    /// Only nodes of this architecture (`arm64`, `amd64`, ...).
    #[arg(long, env = "BATON_UPGRADE_ARCH")]
    pub arch: Option<String>,
    /// How many nodes update first, alone (0: no canary).
    #[arg(long, env = "BATON_UPGRADE_CANARY", default_value_t = 1)]
    pub canary: u32,
    /// After a successful canary, wait for `baton agent rollout resume`.
    #[arg(long, env = "BATON_UPGRADE_CANARY_PAUSE", conflicts_with = "soak")]
    pub canary_pause: bool,
    /// After a successful canary, wait this long (e.g. 10m).
    #[arg(long, env = "BATON_UPGRADE_SOAK", value_parser = humantime::parse_duration)]
    pub soak: Option<Duration>,
    /// Nodes updating at once after the canary: N or P% (default 1).
    #[arg(long, env = "BATON_UPGRADE_MAX_UNAVAILABLE")]
    pub max_unavailable: Option<String>,
    /// Halt when more than this share of a wave fails, e.g. 20% (default 0%).
    #[arg(long, env = "BATON_UPGRADE_FAILURE_BUDGET")]
    pub failure_budget: Option<String>,
    /// How long a new agent stays on probation before it commits (default 60s).
    #[arg(long, env = "BATON_UPGRADE_HEALTH_WINDOW", value_parser = humantime::parse_duration)]
    pub health_window: Option<Duration>,
    /// A node offline (or silent after its order) this long is `unreachable` (default 10m).
    #[arg(long, env = "BATON_UPGRADE_DEADLINE", value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Also install a version older than the node's.
    #[arg(long, env = "BATON_UPGRADE_ALLOW_DOWNGRADE")]
    pub allow_downgrade: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentRolloutCommand {
    /// Each node's progress: NODE FROM TO PHASE REASON. Without a name, the rollout
    /// going on (else the newest).
    Status {
        name: Option<String>,
        /// `json` or `yaml`: the AgentUpdate object with its status.
        #[arg(short = 'o', long = "output", env = "BATON_OUTPUT", value_enum)]
        output: Option<Output>,
        /// Wait until the rollout is over; fails unless it completes.
        #[arg(long, env = "BATON_ROLLOUT_WAIT")]
        wait: bool,
        /// With --wait: give up after this long (e.g. 10m); default forever.
        #[arg(long, env = "BATON_ROLLOUT_TIMEOUT", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Option<Duration>,
    },
    /// Order no more nodes; updates in flight go on.
    Pause { name: String },
    /// Go on after a pause (and approve a finished canary).
    Resume { name: String },
    /// End the rollout; orders not acted on yet are withdrawn.
    Abort { name: String },
}

/// The default rollout name for a version: `agent-0-2-1`.
fn default_name(version: &str) -> String {
    let mut name: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.insert_str(0, "agent-");
    name
}

/// The manifest `upgrade` applies.
pub(super) fn upgrade_manifest(a: &UpgradeArgs) -> Result<String, CliError> {
    check_version(&a.to).map_err(|e| CliError::Usage(format!("error: --to: {e}")))?;
    let mut labels = Map::new();
    for kv in a.selector.iter().filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("error: --selector {kv:?}: expected key=value"))
        })?;
        labels.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
    }
    let mut selector = json!({ "matchLabels": labels });
    if let Some(arch) = &a.arch {
        selector["arch"] = json!(arch);
    }
    let mut canary = json!({ "nodes": a.canary });
    if a.canary_pause {
        canary["pause"] = json!(true);
    }
    if let Some(soak) = a.soak {
        canary["soakSeconds"] = json!(soak.as_secs());
    }
    let mut spec = json!({
        "version": a.to,
        "selector": selector,
        "canary": canary,
        "allowDowngrade": a.allow_downgrade,
    });
    if let Some(m) = &a.max_unavailable {
        let v = api::parse_int_or_percent(m).ok_or_else(|| {
            CliError::Usage(format!(
                "error: --max-unavailable {m:?}: expected a number or a percentage"
            ))
        })?;
        spec["maxUnavailable"] = match v {
            api::IntOrPercent::Int(n) => json!(n),
            p => json!(p.to_string()),
        };
    }
    if let Some(b) = &a.failure_budget {
        spec["failureBudget"] = json!(b);
    }
    if let Some(h) = a.health_window {
        spec["healthWindowSeconds"] = json!(h.as_secs());
    }
    if let Some(d) = a.deadline {
        spec["deadlineSeconds"] = json!(d.as_secs());
    }
    let name = a.name.clone().unwrap_or_else(|| default_name(&a.to));
    let doc = json!({
        "apiVersion": api::AGENT_UPDATE_API_VERSION,
        "kind": "AgentUpdate",
        "metadata": { "name": name },
        "spec": spec,
    });
    serde_yaml_ng::to_string(&doc).map_err(|e| CliError::Protocol(e.to_string()))
}

pub(super) async fn agent(client: &Client, command: &AgentCommand) -> Result<String, CliError> {
    match command {
        AgentCommand::Upgrade(a) => {
            let yaml = upgrade_manifest(a)?;
            let applied = client
                .call(&routes::Apply { namespace: None }, &Manifest(yaml))
                .await?;
            let mut out = String::new();
            for r in applied.results {
                let action = match r.action {
                    ApplyAction::Created => "created",
                    ApplyAction::Configured => "configured (a new rollout)",
                    ApplyAction::Unchanged => "unchanged (already rolling out)",
                };
                out.push_str(&format!("{}/{} {action}\n", qualified(r.kind), r.name));
            }
            Ok(out)
        }
        AgentCommand::Rollout { action } => {
            let (u, output) = match action {
                AgentRolloutCommand::Status {
                    name,
                    output,
                    wait,
                    timeout,
                } => {
                    let status = routes::AgentRolloutStatus { name: name.clone() };
                    let mut u = client.call(&status, &NoBody).await?;
                    if *wait {
                        let start = std::time::Instant::now();
                        while !u.status.phase.is_final() {
                            if timeout.is_some_and(|t| start.elapsed() >= t) {
                                return Err(CliError::Rollout(format!(
                                    "{}error: timed out waiting for agentupdate/{}",
                                    render(&u, *output)?,
                                    u.metadata.name
                                )));
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            u = client.call(&status, &NoBody).await?;
                        }
                        if u.status.phase != api::RolloutPhase::Complete {
                            return Err(CliError::Rollout(format!(
                                "{}error: agentupdate/{} is {:?}",
                                render(&u, *output)?,
                                u.metadata.name,
                                u.status.phase
                            )));
                        }
                    }
                    (u, *output)
                }
                AgentRolloutCommand::Pause { name } => (
                    client
                        .call(&routes::AgentRolloutPause { name: name.clone() }, &NoBody)
                        .await?,
                    None,
                ),
                AgentRolloutCommand::Resume { name } => (
                    client
                        .call(&routes::AgentRolloutResume { name: name.clone() }, &NoBody)
                        .await?,
                    None,
                ),
                AgentRolloutCommand::Abort { name } => (
                    client
                        .call(&routes::AgentRolloutAbort { name: name.clone() }, &NoBody)
                        .await?,
                    None,
                ),
            };
            render(&u, output)
        }
    }
}

fn render(u: &api::AgentUpdate, output: Option<Output>) -> Result<String, CliError> {
    structured(u, output).unwrap_or_else(|| Ok(rollout_status(u)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::parse_manifests;

    fn args(extra: &[&str]) -> UpgradeArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: UpgradeArgs,
        }
        let mut argv = vec!["p", "--to", "0.2.1"];
        argv.extend_from_slice(extra);
        <P as clap::Parser>::try_parse_from(argv).unwrap().a
    }

    fn parsed(a: &UpgradeArgs) -> api::AgentUpdate {
        let yaml = upgrade_manifest(a).unwrap();
        match parse_manifests(&yaml).unwrap().remove(0) {
            api::Object::AgentUpdate(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upgrade_flags_make_the_manifest_apply_would_take() {
        let u = parsed(&args(&[
            "--selector",
            "fleet=a,site=b",
            "--arch",
            "arm64",
            "--canary",
            "2",
            "--soak",
            "5m",
            "--max-unavailable",
            "25%",
            "--failure-budget",
            "20%",
            "--health-window",
            "30s",
            "--deadline",
            "2m",
            "--allow-downgrade",
        ]));
        assert_eq!(u.metadata.name, "agent-0-2-1");
        let s = &u.spec;
        assert_eq!(s.version, "0.2.1");
        assert_eq!(s.selector.match_labels.len(), 2);
        assert_eq!(s.selector.arch.as_deref(), Some("arm64"));
        assert_eq!(
            (s.canary.nodes, s.canary.pause, s.canary.soak_seconds),
            (2, false, 300)
        );
        assert_eq!(s.max_unavailable, api::IntOrPercent::Percent(25));
        assert_eq!(s.failure_budget_percent, 20);
        assert_eq!((s.health_window_seconds, s.deadline_seconds), (30, 120));
        assert!(s.allow_downgrade);
    }

    #[test]
    fn upgrade_defaults_and_refusals() {
        let u = parsed(&args(&[
            "--name",
            "night",
            "--canary-pause",
            "--max-unavailable",
            "3",
        ]));
        assert_eq!(u.metadata.name, "night");
        assert!(u.spec.canary.pause);
        assert_eq!(u.spec.max_unavailable, api::IntOrPercent::Int(3));
        assert_eq!(
            u.spec.health_window_seconds,
            api::DEFAULT_HEALTH_WINDOW_SECONDS
        );
        assert_eq!(u.spec.deadline_seconds, api::DEFAULT_DEADLINE_SECONDS);
        assert!(!u.spec.allow_downgrade);
        assert!(upgrade_manifest(&args(&["--selector", "novalue"])).is_err());
        assert!(upgrade_manifest(&args(&["--max-unavailable", "lots"])).is_err());
        let mut bad = args(&[]);
        bad.to = "latest".into();
        assert!(upgrade_manifest(&bad).is_err());
    }
}
