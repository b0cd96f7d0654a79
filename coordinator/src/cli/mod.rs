//! `baton`'s client verbs: a kubectl-like client of the HTTP API, one file a verb
//! family, with its flags (clap) and the dispatch ([`run`]).
//!
//! Every flag can also be set from the environment (`BATON_*`), which is how systemd
//! units and containers configure it. Output follows kubectl's habits (`get` tables,
//! `-o wide|json|yaml`, `describe` with an Events section, `deployment.apps/web created`)
//! so that muscle memory carries over. The renderers (`render`) are pure functions of
//! the API's replies and the current time.
//!
//! `baton server` and `baton broker` run on the coordinator's host, not over the API:
//! their flags are the server room's (`server::args`), and the binary (`main.rs`) puts
//! them and these verbs under one parser. The client verbs reach the coordinator only
//! through `client::Client`, over HTTP.

mod agent;
mod apply;
mod client;
mod cordon;
mod delete;
mod describe;
mod exec;
mod flash;
mod get;
mod image;
mod logs;
mod node;
mod release;
mod render;
mod rollout;
mod scope;
mod security;
mod token;
mod top;
mod upload;
mod watch;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::contract::client_config::ConfigError;
use crate::contract::ResourceKind;

pub use agent::{AgentCommand, AgentRolloutCommand, UpgradeArgs};
use client::Client;
pub use flash::{FlashArgs, FlashError};
pub use image::ImageCommand;
pub use node::NodeCommand;
pub use release::ReleaseCommand;
pub use rollout::RolloutCommand;
pub use security::SecurityCommand;
pub use token::TokenCommand;

/// Where the client finds the coordinator: flags every client verb takes.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The coordinator's API (overrides the config file's `server`; default
    /// http://127.0.0.1:7474).
    #[arg(long, global = true, env = "BATON_SERVER")]
    pub server: Option<String>,
    /// An API token (overrides the config file's `token`).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CLI config (server, token, certificate-authority); default ~/.baton/config,
    /// else /var/lib/baton/admin.conf if readable.
    #[arg(long, global = true, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// The namespace of the objects a verb names or lists (default: `default`); `apply`
    /// puts objects naming none there, and refuses objects naming another.
    #[arg(short = 'n', long, global = true, env = "BATON_NAMESPACE")]
    pub namespace: Option<String>,
    /// List across every namespace (`get`, `describe` of a kind, `get events`), with a
    /// NAMESPACE column first.
    #[arg(short = 'A', long, global = true, env = "BATON_ALL_NAMESPACES")]
    pub all_namespaces: bool,
}

/// The client verbs. The binary flattens them into `baton`'s subcommands, after
/// `server` and before `broker`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from a manifest (`-f -` reads stdin).
    Apply {
        #[arg(short = 'f', long = "filename", env = "BATON_APPLY_FILE")]
        file: String,
    },
    /// List nodes, deployments, pods, ... or events, or show one.
    Get {
        /// nodes|deployments|pods|events (also node/no, deployment/deploy, pod/po, ev, or TYPE/NAME)
        resource: String,
        name: Option<String>,
        #[arg(short = 'o', long = "output", env = "BATON_OUTPUT", value_enum)]
        output: Option<Output>,
        /// After listing, keep printing a row for every change until interrupted.
        #[arg(short = 'w', long, env = "BATON_WATCH")]
        watch: bool,
    },
    /// Delete a deployment (with its pods) or a pod.
    Delete {
        resource: String,
        name: Option<String>,
    },
    /// Set a deployment's replica count.
    Scale {
        /// `deployment NAME` or `deployment/NAME`
        resource: String,
        name: Option<String>,
        #[arg(long)]
        replicas: u32,
    },
    /// Mark a node unschedulable: no new pod goes there; its pods stay.
    Cordon { node: String },
    /// Mark a node schedulable again.
    Uncordon { node: String },
    /// Cordon a node, then delete its pods gracefully so their Deployments replace them
    /// elsewhere, and wait until none is left.
    Drain {
        node: String,
        /// Also delete pods that no controller replaces (bare pods).
        #[arg(long, env = "BATON_DRAIN_FORCE")]
        force: bool,
        /// How long to wait for the pods to go.
        #[arg(long, env = "BATON_DRAIN_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Add or remove node taints: `taint node NAME KEY[=VALUE]:EFFECT ...`, and
    /// `KEY[:EFFECT]-` to remove. Effects: NoSchedule, PreferNoSchedule, NoExecute.
    Taint {
        /// `node`
        resource: String,
        node: String,
        #[arg(required = true, allow_hyphen_values = true)]
        taints: Vec<String>,
    },
    /// Set or remove node labels: `label node NAME KEY=VALUE ... KEY- ...`, as kubectl.
    /// They outlive the agent's own `--labels`.
    Label {
        /// `node`
        resource: String,
        node: String,
        #[arg(required = true, allow_hyphen_values = true)]
        labels: Vec<String>,
        /// Change a label that already has another value.
        #[arg(long, env = "BATON_LABEL_OVERWRITE")]
        overwrite: bool,
    },
    /// Print a container's log, as the node keeps it (`-f` follows it).
    Logs(logs::LogsArgs),
    /// Run a command in a pod's container: `exec POD [-c C] [-i] [-t] -- CMD ARGS...`.
    /// Admin. The command's exit status is this one's.
    Exec(exec::ExecArgs),
    /// What nodes or pods use (CPU, memory; for nodes also temperature and disk), from
    /// the agents' last usage reports.
    Top {
        /// nodes|pods
        #[arg(env = "BATON_TOP")]
        resource: String,
    },
    /// Show one object in detail, with its events.
    Describe {
        resource: String,
        name: Option<String>,
    },
    /// Manage a deployment's rollout: status, history, undo.
    Rollout {
        #[command(subcommand)]
        action: RolloutCommand,
    },
    /// Manage API tokens and join tokens (admin only).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Manage node identities: revoke, rotate (the device key), identity (show it).
    Node {
        #[command(subcommand)]
        action: NodeCommand,
    },
    /// Security counters: refused messages per reason and node.
    Security {
        #[command(subcommand)]
        action: SecurityCommand,
    },
    /// Manage images the coordinator serves to its agents (air-gapped sites).
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// Update the agents themselves: `upgrade --to VERSION`, `rollout status|pause|resume|abort`.
    Agent {
        #[command(subcommand)]
        action: AgentCommand,
    },
    /// Agent releases: make the release key, sign (offline), import, list, delete.
    Release {
        #[command(subcommand)]
        action: ReleaseCommand,
    },
    /// Prepare a Raspberry Pi OS SD card or image for a device: the agent, a join token
    /// and a first-boot installer, written into its FAT boot partition (no root needed).
    Flash(Box<FlashArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

/// A reply as `-o json|yaml` prints it: through [`serde_json::Value`], whose keys are
/// sorted, so the output does not follow the order of a struct's fields.
fn to_value(reply: &impl serde::Serialize) -> Result<serde_json::Value, CliError> {
    serde_json::to_value(reply).map_err(|e| CliError::Protocol(e.to_string()))
}

/// `reply` as `-o json` or `-o yaml` prints it; `None` for the table outputs.
fn structured(
    reply: &impl serde::Serialize,
    output: Option<Output>,
) -> Option<Result<String, CliError>> {
    let text = |v: serde_json::Value| match output {
        Some(Output::Json) => serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        _ => serde_yaml_ng::to_string(&v).map_err(|e| e.to_string()),
    };
    match output {
        Some(Output::Json | Output::Yaml) => {
            Some(to_value(reply).and_then(|v| text(v).map_err(CliError::Protocol)))
        }
        Some(Output::Wide) | None => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the coordinator at {server}: is `baton server` running? ({reason})")]
    Unreachable { server: String, reason: String },
    #[error("cannot verify the TLS certificate of {server} ({reason}): set certificate-authority in the CLI config to the CA that signed it")]
    Tls { server: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid certificate-authority: {0}")]
    Ca(String),
    #[error("Error from server ({status}): {message}")]
    Server { status: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
    /// A rollout that cannot finish, or did not within `--timeout`.
    #[error("{0}")]
    Rollout(String),
    #[error(transparent)]
    Flash(#[from] FlashError),
    #[error("error: {0}")]
    Exec(String),
    /// `baton exec`'s command exited with this status: it becomes `baton`'s, and
    /// nothing is printed.
    #[error("command terminated with exit code {0}")]
    Exited(i32),
    /// Whoever read a streamed answer (`logs -f | head`, `get -w | grep -m1`) went away:
    /// the command ends quietly and successfully, as `head` expects of the writer.
    #[error("the reader of the output went away")]
    ReaderGone,
    #[error("cannot write to stdout: {0}")]
    Stdout(String),
}

/// A failed write of a streamed answer to stdout.
pub(crate) fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::ReaderGone
    } else {
        CliError::Stdout(e.to_string())
    }
}

/// A resource argument: `pods`, `pod NAME` or `pod/NAME`.
fn target(resource: &str, name: Option<&str>) -> Result<(ResourceKind, Option<String>), CliError> {
    let (kind, inline) = match resource.split_once('/') {
        Some((k, n)) => (k, Some(n.to_owned())),
        None => (resource, None),
    };
    let kind = ResourceKind::parse(kind).ok_or_else(|| {
        CliError::Usage(format!("error: the server doesn't have a resource type {kind:?} (use nodes, deployments or pods)"))
    })?;
    let name = match (inline, name) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "error: give the name either as TYPE/NAME or as TYPE NAME, not both".into(),
            ))
        }
        (Some(n), None) => Some(n),
        (None, n) => n.map(str::to_owned),
    };
    if name.as_deref() == Some("") {
        return Err(CliError::Usage("error: empty resource name".into()));
    }
    Ok((kind, name))
}

fn named(
    resource: &str,
    name: Option<&str>,
    verb: &str,
) -> Result<(ResourceKind, String), CliError> {
    match target(resource, name)? {
        (k, Some(n)) => Ok((k, n)),
        (_, None) => Err(CliError::Usage(format!(
            "error: resource name may not be empty for {verb}"
        ))),
    }
}

/// kubectl's name for a kind in messages: `deployment.apps/web`.
fn qualified(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Deployment => "deployment.apps",
        ResourceKind::DaemonSet => "daemonset.apps",
        ResourceKind::Job => "job.batch",
        ResourceKind::CronJob => "cronjob.batch",
        ResourceKind::Pod => "pod",
        ResourceKind::Node => "node",
        ResourceKind::Secret => "secret",
        ResourceKind::AgentUpdate => "agentupdate.baton.io",
        ResourceKind::ConfigMap => "configmap",
        ResourceKind::Service => "service",
        ResourceKind::Endpoints => "endpoints",
        ResourceKind::Namespace => "namespace",
    }
}

/// Runs a client verb, printing to stdout.
pub async fn run(args: &ClientArgs, command: &Command) -> Result<(), CliError> {
    // `release keygen|sign` run offline: the release key's machine needs no server.
    if let Command::Release { action } = command {
        if let Some(out) = release::offline(action)? {
            print!("{out}");
            return Ok(());
        }
    }
    let client = Client::new(args)?;
    let out = match command {
        Command::Apply { file } => apply::apply(&client, file).await?,
        Command::Get {
            resource,
            name,
            output,
            watch,
        } => {
            let wide = *output == Some(Output::Wide);
            let events = matches!(resource.as_str(), "events" | "event" | "ev");
            match (events, *watch) {
                (true, true) => watch::watch(&client, None, None, wide).await?,
                (true, false) => watch::list_events(&client, wide).await?,
                (false, true) => {
                    if matches!(output, Some(Output::Json | Output::Yaml)) {
                        return Err(CliError::Usage(
                            "error: --watch prints table rows; -o json|yaml is not supported with it"
                                .into(),
                        ));
                    }
                    let (kind, name) = target(resource, name.as_deref())?;
                    watch::watch(&client, Some(kind), name.as_deref(), wide).await?
                }
                (false, false) => get::get(&client, resource, name.as_deref(), *output).await?,
            }
        }
        Command::Top { resource } => top::top(&client, resource).await?,
        Command::Delete { resource, name } => {
            delete::delete(&client, resource, name.as_deref()).await?
        }
        Command::Scale {
            resource,
            name,
            replicas,
        } => delete::scale(&client, resource, name.as_deref(), *replicas).await?,
        Command::Rollout { action } => rollout::rollout(&client, action).await?,
        Command::Cordon { node } => cordon::cordon(&client, node, true).await?,
        Command::Uncordon { node } => cordon::cordon(&client, node, false).await?,
        Command::Drain {
            node,
            force,
            timeout,
        } => cordon::drain(&client, node, *force, *timeout).await?,
        Command::Taint {
            resource,
            node,
            taints,
        } => cordon::taint(&client, resource, node, taints).await?,
        Command::Label {
            resource,
            node,
            labels,
            overwrite,
        } => cordon::label(&client, resource, node, labels, *overwrite).await?,
        Command::Token { action } => token::token(&client, action).await?,
        Command::Node { action } => node::node_command(&client, action).await?,
        Command::Security { action } => security::security_command(&client, action).await?,
        Command::Image { action } => image::image(&client, action).await?,
        Command::Release { action } => release::release(&client, action).await?,
        Command::Flash(args) => flash::flash(&client, args).await?,
        Command::Agent { action } => agent::agent(&client, action).await?,
        Command::Describe { resource, name } => {
            describe::describe(&client, resource, name.as_deref()).await?
        }
        // Streams to stdout itself, as it arrives.
        Command::Logs(a) => logs::logs(&client, a).await?,
        Command::Exec(a) => exec::exec(&client, a).await?,
    };
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    /// `baton` as the binary parses it, less `server` and `broker`.
    #[derive(Debug, Parser)]
    #[command(name = "baton")]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn resource_arguments() {
        assert_eq!(target("po", None).unwrap(), (ResourceKind::Pod, None));
        assert_eq!(
            target("deployment/web", None).unwrap(),
            (ResourceKind::Deployment, Some("web".into()))
        );
        assert_eq!(
            target("no", Some("pi-1")).unwrap(),
            (ResourceKind::Node, Some("pi-1".into()))
        );
        assert!(target("ingresses", None).is_err());
        assert_eq!(target("svc", None).unwrap(), (ResourceKind::Service, None));
        assert!(target("pod/a", Some("b")).is_err());
        assert!(named("deploy", None, "scale").is_err());
    }

    #[test]
    fn flags_come_from_the_environment_too() {
        let cli = Cli::try_parse_from([
            "baton",
            "--server",
            "http://127.0.0.1:9",
            "get",
            "po",
            "-o",
            "wide",
        ])
        .unwrap();
        assert_eq!(cli.client.server.as_deref(), Some("http://127.0.0.1:9"));
        assert!(matches!(
            cli.command,
            Command::Get {
                output: Some(Output::Wide),
                ..
            }
        ));
        assert!(
            Cli::try_parse_from(["baton", "scale", "deployment/web", "--replicas", "3"]).is_ok()
        );
    }

    #[test]
    fn agent_arguments() {
        let cli = Cli::try_parse_from([
            "baton", "agent", "upgrade", "--to", "0.2.1", "--canary", "2", "--soak", "5m",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Agent {
                action: AgentCommand::Upgrade(UpgradeArgs { canary: 2, soak: Some(s), .. })
            } if s == Duration::from_secs(300)
        ));
        assert!(
            Cli::try_parse_from([
                "baton",
                "agent",
                "upgrade",
                "--to",
                "0.2.1",
                "--canary-pause",
                "--soak",
                "1m",
            ])
            .is_err(),
            "a canary pauses or soaks, not both"
        );
        let cli = Cli::try_parse_from(["baton", "agent", "rollout", "status", "up", "-o", "json"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Agent {
                action: AgentCommand::Rollout {
                    action: AgentRolloutCommand::Status {
                        name: Some(_),
                        output: Some(Output::Json),
                        wait: false,
                        timeout: None,
                    }
                }
            }
        ));
        assert!(Cli::try_parse_from([
            "baton",
            "agent",
            "rollout",
            "status",
            "--wait",
            "--timeout",
            "5m"
        ])
        .is_ok());
        assert!(
            Cli::try_parse_from(["baton", "agent", "rollout", "status", "--timeout", "5m"])
                .is_err(),
            "--timeout goes with --wait"
        );
        for verb in ["pause", "resume", "abort"] {
            assert!(Cli::try_parse_from(["baton", "agent", "rollout", verb, "up"]).is_ok());
            assert!(Cli::try_parse_from(["baton", "agent", "rollout", verb]).is_err());
        }
    }

    #[test]
    fn rollout_arguments() {
        let cli = Cli::try_parse_from([
            "baton",
            "rollout",
            "status",
            "deployment/web",
            "--timeout",
            "90s",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Rollout {
                action: RolloutCommand::Status {
                    timeout: Some(t),
                    ..
                }
            } if t == Duration::from_secs(90)
        ));
        assert!(Cli::try_parse_from([
            "baton",
            "rollout",
            "undo",
            "deployment",
            "web",
            "--to-revision",
            "1"
        ])
        .is_ok());
    }
}
