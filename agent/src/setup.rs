//! The `install` and `uninstall` subcommands of the `baton-agent` binary (a module of
//! `main.rs`, not of the library): turning flags into the settings file and back, and
//! checking them, before [`baton_agent::install`] writes anything.
//!
//! **What goes into agent.env.** Every agent flag given to `install`, on its command line
//! or as its `BATON_*` variable (a first-boot script sources a settings file and runs
//! `install` with nothing else), is written as that variable, so any run flag can be set at
//! install time; the data dir always is, as uninstall reads it back. The join token goes in
//! as `BATON_JOIN_TOKEN`: from `--join-token`, from `--join-token-file` (whose file is then
//! removed), or, on a re-install without either, from the agent.env already there.
//!
//! **Checks before any write**: the broker URL, the API URL and the token's form (a bad one
//! would only show on the device, as an agent retrying forever), the node name, labels, taints
//! and that the agent will have a way to start: a token, an identity in the data dir, or
//! `--insecure-unenrolled`. The paths a flag names are the target's, so files are not
//! looked for (with `--root` they are not on this system).

use std::ffi::OsString;

use baton_agent::install::{self as inst, Binary, Plan, Service, SystemdCli};
use clap::parser::ValueSource;

use super::*;

/// Variables that are the installer's own, or that [`install`] writes itself.
const NOT_COPIED: &[&str] = &[
    "BATON_INSTALL_ROOT",
    "BATON_INSTALL_NO_START",
    "BATON_JOIN_TOKEN",
    "BATON_JOIN_TOKEN_FILE",
    "BATON_AGENT_DATA_DIR",
];

/// The agent flags `m` (the `install` subcommand's matches) holds, as `BATON_*` variables:
/// those given on the command line or in the environment, not defaults.
fn given_env(m: &clap::ArgMatches) -> Result<Vec<(String, String)>> {
    let cmd = Cli::command();
    let sub = cmd.find_subcommand("install").context("install")?;
    let mut out = Vec::new();
    for arg in sub.get_arguments() {
        let Some(name) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let given = matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given || NOT_COPIED.contains(&name) {
            continue;
        }
        let values: Vec<String> = m
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{name}: not UTF-8"))
            })
            .collect::<Result<_>>()?;
        out.push((name.to_owned(), values.join(",")));
    }
    Ok(out)
}

pub(super) fn install(args: InstallArgs, m: &clap::ArgMatches) -> Result<()> {
    let a = &args.run;
    let root = &args.root;
    let data_dir = inst::rooted(root, &a.data_dir);
    // The token, and the file to remove once agent.env holds it.
    let (token, token_file) = match (&a.join_token, &a.join_token_file) {
        (Some(t), _) => (Some(t.trim().to_owned()), None),
        (None, Some(f)) => {
            let t = TokenSource::File(f.clone())
                .read()
                .context("--join-token-file")?;
            (Some(t), Some(f.clone()))
        }
        // A re-install keeps the token it wrote the first time.
        (None, None) => (
            inst::read_env(root)?
                .unwrap_or_default()
                .into_iter()
                .find(|(k, _)| k == "BATON_JOIN_TOKEN")
                .map(|(_, v)| v),
            None,
        ),
    };
    let coordinator = a
        .coordinator
        .as_deref()
        .context("--coordinator is required: the broker's URL, e.g. mqtts://10.0.0.1:8883")?;
    baton_agent::bus::parse_list(coordinator).context("--coordinator")?;
    if let Some(n) = &a.node_name {
        NodeName::new(n).context("--node-name")?;
    }
    flag_labels(a)?;
    baton_agent::node::taints::parse_register_taints(&a.register_with_taints)
        .context("--register-with-taints")?;
    let enrolled = data_dir.join(identity::IDENTITY_FILE).exists();
    match &token {
        Some(t) => {
            let api = a
                .coordinator_api
                .as_deref()
                .context("--coordinator-api is required with a join token: the coordinator's https:// API (or --enroll-listen address)")?;
            identity::check_enroll_args(api, t).context("cannot enroll")?;
        }
        None if enrolled || a.insecure_unenrolled => {}
        None => bail!(
            "no join token: give --join-token or --join-token-file (from `baton token create` on the coordinator); {} holds no identity yet",
            data_dir.display()
        ),
    }

    let mut env = given_env(m)?;
    env.push((
        "BATON_AGENT_DATA_DIR".into(),
        a.data_dir.display().to_string(),
    ));
    if let Some(t) = token {
        env.push(("BATON_JOIN_TOKEN".into(), t));
    }
    let plan = Plan {
        root: root.clone(),
        env,
        data_dir: a.data_dir.clone(),
        token_file,
        start: !args.no_start,
        executable: "/proc/self/exe".into(),
    };
    let done = inst::install(&plan, &SystemdCli)?;
    let at = |rel: &str| root.join(rel).display().to_string();
    match done.binary {
        Binary::Copied { bytes } => println!("installed {} ({bytes} bytes)", at(inst::BINARY)),
        Binary::AlreadyThere => println!("{} is this binary: kept", at(inst::BINARY)),
    }
    println!("wrote {} (mode 0600)", at(inst::ENV_FILE));
    println!("wrote {}", at(inst::UNIT_FILE));
    println!("wrote {}", at(inst::MODULES_FILE));
    println!("data dir {} (mode 0700)", data_dir.display());
    if let Some(f) = &plan.token_file {
        println!("moved the join token from {} into agent.env", f.display());
    }
    match done.service {
        Service::Started => {
            println!("started {} (logs: journalctl -u baton-agent -f)", inst::UNIT)
        }
        Service::Enabled => println!("enabled {}; not started (--no-start)", inst::UNIT),
        Service::NotRunning if args.no_start => println!(
            "systemd is not running on {}: {} is enabled for its next boot, not started",
            root.display(),
            inst::UNIT
        ),
        Service::NotRunning => bail!(
            "systemd is not running on {}: everything is written and {} is enabled for the next boot, but it was NOT started (pass --no-start when that is what you want)",
            root.display(),
            inst::UNIT
        ),
    }
    Ok(())
}

/// Whether a flag's variable means "off" (clap's reading of a boolean variable).
fn falsey(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "" | "0" | "n" | "no" | "f" | "false" | "off"
    )
}

/// The agent's flags from an agent.env, parsed by the agent's own parser (as the service
/// would see them), for the reset of an uninstall.
fn run_args_from_env(env: &[(String, String)]) -> Result<RunArgs> {
    let cmd = Cli::command();
    let reset = cmd.find_subcommand("reset").context("reset")?;
    let mut argv: Vec<OsString> = vec!["baton-agent".into(), "reset".into()];
    for arg in reset.get_arguments() {
        let (Some(name), Some(long)) = (arg.get_env().and_then(|e| e.to_str()), arg.get_long())
        else {
            continue;
        };
        let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) else {
            continue;
        };
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={v}").into());
        } else if !falsey(v) {
            argv.push(format!("--{long}").into());
        }
    }
    match Cli::try_parse_from(argv)
        .context("the settings in agent.env")?
        .command
    {
        Some(Command::Reset(a)) => Ok(*a),
        _ => bail!("the settings in agent.env are not the agent's"),
    }
}

pub(super) fn uninstall(args: UninstallArgs) -> Result<()> {
    let root = &args.root;
    if !root.is_dir() {
        bail!("--root {}: not a directory", root.display());
    }
    if inst::stop_service(root, &SystemdCli)? {
        println!("stopped and disabled {}", inst::UNIT);
    } else {
        println!(
            "systemd is not running on {}: no service to stop",
            root.display()
        );
    }
    let env = inst::read_env(root)?.unwrap_or_default();
    let mut run = run_args_from_env(&env)?;
    // Paths on the target, under --root; and nothing the reset does not need (the files a
    // registry or TLS flag names are the target's too).
    run.data_dir = inst::rooted(root, &run.data_dir);
    run.run_dir = inst::rooted(root, &run.run_dir);
    run.insecure_unenrolled = true;
    run.coordinator = None;
    (run.mqtt_ca, run.mqtt_cert, run.mqtt_key) = (None, None, None);
    (run.registry_config, run.registry_ca) = (None, None);
    (run.registry_mirror, run.preload_images) = (None, None);
    let data_dir = run.data_dir.clone();
    let run_dir = run.run_dir.clone();
    if data_dir.is_dir() {
        let lock = baton_agent::datadir::lock(&data_dir)?;
        // A damaged identity must not keep a device from being uninstalled: the reset then
        // goes by the node name of the flags (or the host name).
        match IdentityFile::load(&data_dir.join(identity::IDENTITY_FILE)) {
            Ok(Some(id)) => run.node_name = Some(id.node_name),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "unreadable identity; resetting by the flags' node name")
            }
        }
        // Only the node's name is wanted of the identity: a reset talks to no broker.
        let (cfg, _) = config(run, None)?;
        let rt = runtime().context("cannot start the async runtime")?;
        reset_node(&rt, &cfg)?;
        drop(lock);
    } else {
        println!("no data dir {}: no pods to remove", data_dir.display());
    }
    if inst::remove_run_dir(&run_dir)? {
        println!("removed {}", run_dir.display());
    }
    for p in inst::remove_files(root, &SystemdCli)? {
        println!("removed {}", p.display());
    }
    if args.keep_data {
        println!("kept {} (--keep-data)", data_dir.display());
    } else if inst::remove_tree(&data_dir)? {
        println!("removed {}", data_dir.display());
    }
    Ok(())
}
