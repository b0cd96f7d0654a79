//! `baton flash`: prepares a Raspberry Pi OS SD card, or an image file of one, for one
//! device (or, with `--batch`, one image per device), as a normal user.
//!
//! It writes into the card's FAT boot partition only, through `fatfs` over a window of
//! the image or device file: no loop mount, no root. What it writes and why is in
//! [`firstboot`]; the card's layout in [`image`]; which agent build in [`arch`].
//!
//! Every check comes before the first write, and a refusal leaves the target
//! byte-identical: a target that is not an image or block device, or is mounted; no MBR
//! or no FAT boot partition; an unknown architecture or an agent binary for another one;
//! a partition without room; bad settings; a join token that is unknown, used up,
//! expired or bound to another node. A token is minted only once everything else has
//! passed, and deleted again if the card then cannot be written.

mod arch;
mod batch;
mod cloudinit;
mod firstboot;
mod image;
mod plan;
mod settings;
mod target;
mod token;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use super::client::Client;
use super::CliError;
use crate::contract::tokens::JoinTokenInfo;
pub use arch::Arch;
pub use firstboot::FirstBoot;
use image::BootView;
use plan::{Plan, Step};
use settings::{Common, Settings};
use target::{Kind, Target};

/// The largest agent binary flash accepts (a static agent is 5-10 MB).
const MAX_AGENT_BYTES: u64 = 128 << 20;

#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The SD card (a whole block device: /dev/sdb, /dev/mmcblk0) or an image file (.img).
    #[arg(env = "BATON_FLASH_TARGET")]
    pub target: PathBuf,
    /// The device's node name.
    #[arg(
        long,
        env = "BATON_FLASH_NAME",
        required_unless_present = "batch",
        conflicts_with = "batch"
    )]
    pub name: Option<String>,
    /// Labels the node gets (k=v,...); they are bound to its join token.
    #[arg(
        long,
        env = "BATON_FLASH_LABELS",
        default_value = "",
        conflicts_with = "batch"
    )]
    pub labels: String,
    /// The board's architecture (default: detected from the image: arm_64bit=1 in
    /// config.txt or only 64-bit kernels is arm64; a 32-bit image gets armv6, which runs on
    /// every 32-bit Pi).
    #[arg(long, env = "BATON_FLASH_ARCH", value_enum)]
    pub arch: Option<Arch>,
    /// The agent binary to put on the card (default: <agents-dir>/<target triple>/baton-agent).
    #[arg(long, env = "BATON_FLASH_AGENT")]
    pub agent: Option<PathBuf>,
    /// Where the cross-built agents are, one folder per target triple.
    #[arg(long, env = "BATON_FLASH_AGENTS_DIR", default_value = "target/cross")]
    pub agents_dir: PathBuf,
    /// The MQTT broker as the device reaches it, e.g. mqtts://192.168.1.10:8883; a broker
    /// cluster's members comma-separated.
    #[arg(long, env = "BATON_FLASH_MQTT")]
    pub mqtt: String,
    /// The coordinator's enrollment API as the device reaches it, e.g. https://192.168.1.10:7475.
    #[arg(long, env = "BATON_FLASH_API")]
    pub api: String,
    /// Use this join token instead of minting one (checked first: known, unused, unexpired).
    #[arg(
        long,
        env = "BATON_FLASH_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "batch"
    )]
    pub join_token: Option<String>,
    /// How long a minted join token stays valid.
    #[arg(long, env = "BATON_FLASH_TOKEN_TTL", value_parser = humantime::parse_duration, default_value = "24h")]
    pub token_ttl: Duration,
    /// Wi-Fi network name.
    #[arg(long, env = "BATON_FLASH_WIFI_SSID")]
    pub wifi_ssid: Option<String>,
    /// Wi-Fi passphrase (only its derived WPA key is written to the card).
    #[arg(long, env = "BATON_FLASH_WIFI_PSK", hide_env_values = true)]
    pub wifi_psk: Option<String>,
    /// Wi-Fi country code (e.g. GB); Raspberry Pi OS keeps Wi-Fi off until it is set.
    #[arg(long, env = "BATON_FLASH_WIFI_COUNTRY")]
    pub wifi_country: Option<String>,
    /// An SSH public key file for the device's default user.
    #[arg(long, env = "BATON_FLASH_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,
    /// How the device installs the agent at first boot.
    #[arg(long, env = "BATON_FLASH_FIRST_BOOT", value_enum, default_value_t = FirstBoot::Auto)]
    pub first_boot: FirstBoot,
    /// Registries (HOST:PORT,...) the agent may pull from over plain HTTP.
    #[arg(long, env = "BATON_FLASH_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// The release public key (base64, the content of `release.pub`) the agent checks its
    /// updates against; without it the device pins the coordinator's at enrollment.
    #[arg(long, env = "BATON_FLASH_RELEASE_PUBLIC_KEY")]
    pub release_public_key: Option<String>,
    /// A CSV of devices (name,labels,arch): one image per device, copied from TARGET.
    #[arg(long, env = "BATON_FLASH_BATCH", requires = "out_dir")]
    pub batch: Option<PathBuf>,
    /// Where --batch writes its images (<name>.img).
    #[arg(long, env = "BATON_FLASH_OUT_DIR", requires = "batch")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error("{0}")]
    Target(String),
    #[error("{0}")]
    Image(String),
    #[error("{0}")]
    Arch(String),
    #[error("the agent binary {path} is {reason}")]
    Agent { path: String, reason: String },
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Io(io::Error),
    #[error("{what}: {error}")]
    Write { what: String, error: io::Error },
    /// Anything that stopped flash before its first write.
    #[error("refused to flash {target}: {reason} ({target} was not changed)")]
    Refused {
        target: String,
        reason: Box<FlashError>,
    },
    /// A failure after the first write.
    #[error("flashing {target} failed part way, flash it again: {reason}")]
    Partial {
        target: String,
        reason: Box<FlashError>,
    },
}

/// Runs `baton flash`; the report is what it prints.
pub(super) async fn flash(client: &Client, args: &FlashArgs) -> Result<String, CliError> {
    let started = Instant::now();
    let shown = args.target.display().to_string();
    let refused = |e: CliError| match e {
        CliError::Flash(f) => CliError::Flash(FlashError::Refused {
            target: shown.clone(),
            reason: Box::new(f),
        }),
        other => other,
    };
    let common = common(args).map_err(|e| refused(e.into()))?;
    let target = target::inspect(&args.target).map_err(|e| refused(e.into()))?;
    let mut out = match &args.batch {
        None => {
            let ready = prepare_one(client, args, &common, &target)
                .await
                .map_err(refused)?;
            write_one(client, &target, ready).await?
        }
        Some(csv) => {
            let ready =
                prepare_batch(args, &common, &target, csv).map_err(|e| refused(e.into()))?;
            write_batch(client, args, ready).await?
        }
    };
    out.push_str(&format!("done in {:.2?}\n", started.elapsed()));
    Ok(out)
}

fn common(args: &FlashArgs) -> Result<Common, FlashError> {
    Ok(Common {
        mqtt: settings::url_list("--mqtt", &args.mqtt, &["mqtt", "mqtts"])?,
        api: settings::url("--api", &args.api, &["http", "https"])?,
        insecure_registries: settings::registries(&args.insecure_registry)?,
        wifi: settings::wifi(
            args.wifi_ssid.as_deref(),
            args.wifi_psk.as_deref(),
            args.wifi_country.as_deref(),
        )?,
        ssh_key: args.ssh_key.as_deref().map(settings::ssh_key).transpose()?,
        release_public_key: args
            .release_public_key
            .as_deref()
            .map(settings::release_key)
            .transpose()?,
    })
}

/// The read pass over a target: its boot partition as it is.
fn read_target(path: &Path) -> Result<BootView, FlashError> {
    let file = File::open(path).map_err(|source| FlashError::Read {
        path: path.display().to_string(),
        error: source,
    })?;
    let partition = image::boot_partition(&file)?;
    image::read_view(&file, partition)
}

/// Agent binaries read and checked, one per architecture.
#[derive(Default)]
struct Agents(BTreeMap<Arch, Vec<u8>>);

impl Agents {
    fn get(&mut self, args: &FlashArgs, arch: Arch) -> Result<&[u8], FlashError> {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.0.entry(arch) {
            slot.insert(load_agent(args, arch)?);
        }
        Ok(&self.0[&arch])
    }
}

/// Reads the agent binary for `arch` and checks it is one.
fn load_agent(args: &FlashArgs, arch: Arch) -> Result<Vec<u8>, FlashError> {
    let path = arch::agent_path(args.agent.as_deref(), &args.agents_dir, arch);
    let shown = path.display().to_string();
    let size = fs::metadata(&path).map(|m| m.len()).map_err(|source| {
        if args.agent.is_none() && source.kind() == io::ErrorKind::NotFound {
            FlashError::Invalid(format!(
                "no {} agent at {shown}: build the ARM agents (cross/), or pass --agent PATH",
                arch.as_str()
            ))
        } else {
            FlashError::Read {
                path: shown.clone(),
                error: source,
            }
        }
    })?;
    // The header first: a wrong binary is named as such, whatever its size.
    let mut head = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|error| FlashError::Read {
            path: shown.clone(),
            error,
        })?;
    let refuse = |reason: String| FlashError::Agent {
        path: shown.clone(),
        reason: format!("{reason}: refusing to put it on an {} card", arch.as_str()),
    };
    arch::check_header(&head, arch).map_err(refuse)?;
    if size > MAX_AGENT_BYTES {
        return Err(refuse(format!(
            "{size} bytes, more than any agent build (a debug build? use the cross/ release build)"
        )));
    }
    let bytes = fs::read(&path).map_err(|error| FlashError::Read {
        path: shown.clone(),
        error,
    })?;
    arch::check_elf(&bytes, arch).map_err(refuse)?;
    Ok(bytes)
}

/// One device, checked and planned; its token is still a placeholder unless given.
#[derive(Debug)]
struct Ready {
    settings: Settings,
    arch: Arch,
    note: Option<String>,
    style: FirstBoot,
    view: BootView,
    plan: Plan,
    /// `--join-token`, checked.
    token: Option<(String, JoinTokenInfo)>,
    ttl: Duration,
}

fn plan_device(
    args: &FlashArgs,
    agents: &mut Agents,
    view: &BootView,
    settings: Settings,
    arch_flag: Option<Arch>,
) -> Result<Ready, FlashError> {
    let detected = arch::detect(view.text("config.txt"), &view.root);
    let (arch, note) = arch::choose(arch_flag, detected, &view.root)?;
    let agent = agents.get(args, arch)?;
    let style = args.first_boot.resolve(view);
    let plan = firstboot::plan(view, &settings, style, agent, &token::placeholder())?;
    image::check_space(view, &plan)?;
    Ok(Ready {
        settings,
        arch,
        note,
        style,
        view: view.clone(),
        plan,
        token: None,
        ttl: args.token_ttl,
    })
}

async fn prepare_one(
    client: &Client,
    args: &FlashArgs,
    common: &Common,
    target: &Target,
) -> Result<Ready, CliError> {
    let name = settings::node_name(args.name.as_deref().unwrap_or_default())?;
    let labels = settings::labels(&args.labels)?;
    let view = read_target(&target.path)?;
    let mut ready = plan_device(
        args,
        &mut Agents::default(),
        &view,
        common.device(&name, labels),
        args.arch,
    )?;
    if let Some(t) = &args.join_token {
        let info = token::check_existing(client, t, &name).await?;
        ready.token = Some((t.trim().to_owned(), info));
    }
    Ok(ready)
}

/// Opens the target for writing. A block device is opened exclusively (O_EXCL), which
/// the kernel refuses while anything has it mounted, and which keeps it from being
/// mounted while flash writes.
fn open_rw(target: &Target) -> Result<File, FlashError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if let Kind::BlockDevice(_) = target.kind {
        o.custom_flags(nix::fcntl::OFlag::O_EXCL.bits());
    }
    o.open(&target.path).map_err(|e| {
        let why = if e.raw_os_error() == Some(nix::libc::EBUSY) {
            "it is in use (mounted, or opened exclusively by another program)".to_owned()
        } else {
            e.to_string()
        };
        FlashError::Target(format!(
            "cannot open {} for writing: {why}",
            target.path.display()
        ))
    })
}

/// Mints the token unless one was given, then carries out the plan on `path`.
async fn write_device(
    client: &Client,
    target: &Target,
    mut ready: Ready,
) -> Result<(Ready, String), CliError> {
    let shown = target.path.display().to_string();
    let file = open_rw(target).map_err(|e| FlashError::Refused {
        target: shown.clone(),
        reason: Box::new(e),
    })?;
    let (secret, info, minted) = match ready.token.take() {
        Some((t, info)) => (t, info, false),
        None => {
            let s = &ready.settings;
            let (t, info) = token::mint(client, &s.node, &s.labels, ready.ttl).await?;
            (t, info, true)
        }
    };
    ready
        .plan
        .set(firstboot::TOKEN, format!("{secret}\n").into_bytes());
    if let Err(e) = image::apply(&file, &ready.view.partition, &ready.plan) {
        if minted {
            token::revoke(client, &info.id).await;
        }
        return Err(FlashError::Partial {
            target: shown,
            reason: Box::new(e),
        }
        .into());
    }
    let line = format!(
        "join token {}: {}, node {}, expires in {}\n",
        info.id,
        if info.uses_left == 1 {
            "single use".to_owned()
        } else {
            format!("{} uses left", info.uses_left)
        },
        info.node_name.as_deref().unwrap_or("<any>"),
        token::expires_in(&info)
    );
    Ok((ready, line))
}

async fn write_one(client: &Client, target: &Target, ready: Ready) -> Result<String, CliError> {
    let (ready, token_line) = write_device(client, target, ready).await?;
    let mut out = report(&target.path, &ready);
    out.push_str(&token_line);
    Ok(out)
}

fn size(n: usize) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// What was written, for the user.
fn report(path: &Path, r: &Ready) -> String {
    let mut out = format!(
        "flashed node {} ({}, first boot: {}) into {}, boot partition {} ({}):\n",
        r.settings.node,
        r.arch.as_str(),
        r.style.as_str(),
        path.display(),
        r.view.partition.number,
        r.view.fat,
    );
    for step in &r.plan.steps {
        match step {
            Step::Write { path, bytes } => {
                out.push_str(&format!("  {path:<28} {:>10}\n", size(bytes.len())))
            }
            other => out.push_str(&format!("  ({other})\n")),
        }
    }
    if let Some(n) = &r.note {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// A batch, checked: the devices in order and where each image goes.
struct BatchReady {
    devices: Vec<(Ready, PathBuf)>,
    source: PathBuf,
}

fn prepare_batch(
    args: &FlashArgs,
    common: &Common,
    target: &Target,
    csv: &Path,
) -> Result<BatchReady, FlashError> {
    if target.kind != Kind::File {
        return Err(FlashError::Target(
            "--batch copies TARGET once per device: TARGET must be an image file, not a device"
                .into(),
        ));
    }
    let devices = batch::read(csv)?;
    let out_dir = args.out_dir.as_deref().unwrap_or(Path::new("."));
    let view = read_target(&target.path)?;
    let mut agents = Agents::default();
    let mut ready = Vec::new();
    for d in devices {
        let out = out_dir.join(format!("{}.img", d.name));
        if out.exists() {
            return Err(FlashError::Invalid(format!(
                "{} exists: batch never overwrites an image (remove it or pick another --out-dir)",
                out.display()
            )));
        }
        let settings = common.device(&d.name, d.labels);
        let r = plan_device(args, &mut agents, &view, settings, d.arch.or(args.arch))
            .map_err(|e| FlashError::Invalid(format!("device {}: {e}", d.name)))?;
        ready.push((r, out));
    }
    Ok(BatchReady {
        devices: ready,
        source: target.path.clone(),
    })
}

async fn write_batch(
    client: &Client,
    args: &FlashArgs,
    batch: BatchReady,
) -> Result<String, CliError> {
    let out_dir = args.out_dir.as_deref().unwrap_or(Path::new("."));
    fs::create_dir_all(out_dir).map_err(|source| FlashError::Write {
        what: format!("creating {}", out_dir.display()),
        error: source,
    })?;
    let mut out = String::new();
    let mut done = Vec::new();
    for (ready, path) in batch.devices {
        let partial = path.with_extension("img.partial");
        let name = ready.settings.node.clone();
        let result = async {
            fs::copy(&batch.source, &partial).map_err(|source| FlashError::Write {
                what: format!(
                    "copying {} to {}",
                    batch.source.display(),
                    partial.display()
                ),
                error: source,
            })?;
            let target = Target {
                path: partial.clone(),
                kind: Kind::File,
            };
            let (ready, token_line) = write_device(client, &target, ready).await?;
            fs::rename(&partial, &path).map_err(|source| FlashError::Write {
                what: format!("renaming {} to {}", partial.display(), path.display()),
                error: source,
            })?;
            Ok::<_, CliError>((ready, token_line))
        }
        .await;
        match result {
            Ok((ready, token_line)) => {
                out.push_str(&report(&path, &ready));
                out.push_str(&token_line);
                done.push(name);
            }
            Err(e) => {
                let _ = fs::remove_file(&partial);
                let finished = if done.is_empty() {
                    "none".to_owned()
                } else {
                    done.join(", ")
                };
                return Err(CliError::Usage(format!(
                    "batch stopped at device {name}: {e} (images finished: {finished})"
                )));
            }
        }
    }
    out.push_str(&format!("{} images in {}\n", done.len(), out_dir.display()));
    Ok(out)
}
