//! The update side of the `baton-agent` binary (a module of `main.rs`, not of the
//! library): `baton-agent launch`, and the update task's settings from the flags.

use anyhow::{Context, Result};
use baton_agent::identity;

use crate::{absolute_dirs, init_logging, LaunchArgs, RunArgs};

/// `baton-agent launch`: records an exit, or execs the agent the update state names.
pub(crate) fn launch(mut args: LaunchArgs) -> Result<()> {
    use baton_agent::update::launcher;
    init_logging(&args.run.log_format);
    absolute_dirs(&mut args.run)?;
    if args.record_exit {
        return launcher::record_exit(&args.run.data_dir).context("cannot record the exit");
    }
    let installed = std::env::current_exe().context("cannot find this binary")?;
    // The agent gets exactly our arguments, less the subcommand.
    let mut argv: Vec<_> = std::env::args_os().skip(1).collect();
    if let Some(i) = argv.iter().position(|a| a == "launch") {
        argv.remove(i);
    }
    let e = launcher::launch(&args.run.data_dir, &installed, argv);
    Err(e).context("cannot start the agent")
}

/// What the update task needs from the flags: where to download releases from (the
/// coordinator's API, else the registry mirror, with its token and CA) and the pinned key.
pub(crate) fn update_config(a: &RunArgs) -> baton_agent::update::UpdateConfig {
    let identity = a.data_dir.join(identity::IDENTITY_FILE);
    // Else where the node enrolled: that listener serves it its releases on its signature.
    let api = a
        .coordinator_api
        .clone()
        .or_else(|| a.registry_mirror.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| identity::enrolled_at(&identity));
    baton_agent::update::UpdateConfig {
        data_dir: a.data_dir.clone(),
        source: api.map(|api| baton_agent::update::download::Source {
            api,
            token_file: a.registry_mirror_token_file.clone(),
            ca: a.registry_mirror_ca.clone(),
            identity: Some(identity),
        }),
        // The flag wins over the key pinned at enrollment (read after enrolling).
        release_key: match baton_agent::identity::release_key::load(
            &a.data_dir,
            a.release_public_key.as_deref(),
        ) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the release public key: agent updates will be refused");
                None
            }
        },
        launched: std::env::var_os(baton_agent::update::launcher::LAUNCHER_ENV).is_some(),
    }
}
