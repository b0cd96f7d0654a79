//! What flash writes into the boot partition, as a [`Plan`] of steps computed from what
//! is already there ([`BootView`]) and the device's [`Settings`]; pure, so tests check it
//! without an image.
//!
//! Everything of Baton's goes under `baton/`: the agent binary, the join token, the
//! settings (`agent.env`) and `firstboot.sh`, which runs `baton-agent install` from the
//! boot partition (mounted at `/boot/firmware`). Two ways start it at first boot:
//! - cloud-init (Raspberry Pi OS Trixie and later): a `runcmd` entry in `user-data`;
//! - `firstrun.sh` (Bookworm and earlier), run by systemd through `systemd.run=` in
//!   `cmdline.txt`, as Raspberry Pi Imager does; it removes itself and its kernel
//!   arguments, and systemd reboots.
//!
//! The `baton/` files are written first and the hooks last (`cmdline.txt` the very last),
//! so a card pulled out halfway never starts a half-written installer.

use clap::ValueEnum;

use super::cloudinit;
use super::image::BootView;
use super::plan::{Plan, Step};
use super::settings::{sh_quote, Settings, Wifi};
use super::FlashError;

pub(super) const AGENT: &str = "baton/baton-agent";
pub(super) const TOKEN: &str = "baton/join-token";
pub(super) const ENV: &str = "baton/agent.env";
pub(super) const FIRSTBOOT: &str = "baton/firstboot.sh";
/// A `firstrun.sh` that was on the card before flash (Raspberry Pi Imager's): kept, and
/// run by ours.
pub(super) const PREVIOUS_FIRSTRUN: &str = "baton/firstrun.previous.sh";
pub(super) const FIRSTRUN: &str = "firstrun.sh";
pub(super) const CMDLINE: &str = "cmdline.txt";
pub(super) const USER_DATA: &str = "user-data";
pub(super) const META_DATA: &str = "meta-data";
pub(super) const NETWORK_CONFIG: &str = "network-config";
/// Where the device mounts the boot partition (Bookworm and later).
const BOOT: &str = "/boot/firmware";
/// The second line of every `firstrun.sh` flash writes: how a later flash knows the
/// script is its own and not Imager's.
const MARKER: &str = "# baton-flash firstrun.sh";
/// What flash appends to `cmdline.txt` (Raspberry Pi Imager's arguments).
pub(super) const CMDLINE_HOOK: [&str; 3] = [
    "systemd.run=/boot/firmware/firstrun.sh",
    "systemd.run_success_action=reboot",
    "systemd.unit=kernel-command-line.target",
];

/// How the device runs `firstboot.sh` at first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirstBoot {
    /// cloud-init if the boot partition has cloud-init files, else firstrun.
    Auto,
    /// cloud-init's `user-data`, `meta-data`, `network-config` (Trixie and later).
    CloudInit,
    /// `firstrun.sh` via `systemd.run=` in `cmdline.txt` (Bookworm and earlier).
    Firstrun,
}

impl FirstBoot {
    /// `Auto` resolved against the card.
    pub(super) fn resolve(self, view: &BootView) -> FirstBoot {
        match self {
            FirstBoot::Auto => {
                let cloud = [USER_DATA, META_DATA, NETWORK_CONFIG]
                    .iter()
                    .any(|f| view.root.contains(*f));
                if cloud {
                    FirstBoot::CloudInit
                } else {
                    FirstBoot::Firstrun
                }
            }
            other => other,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            FirstBoot::Auto => "auto",
            FirstBoot::CloudInit => "cloud-init",
            FirstBoot::Firstrun => "firstrun.sh",
        }
    }
}

/// The plan for one device. `token` may be a placeholder of the real token's length
/// until the token is minted ([`Plan::set`] on [`TOKEN`]).
pub(super) fn plan(
    view: &BootView,
    settings: &Settings,
    style: FirstBoot,
    agent: &[u8],
    token: &str,
) -> Result<Plan, FlashError> {
    let mut p = Plan::default();
    p.write(AGENT, agent);
    p.write(TOKEN, format!("{token}\n"));
    p.write(ENV, agent_env(settings));
    p.write(FIRSTBOOT, firstboot_sh());
    let ours = |name: &str| {
        view.text(name)
            .is_some_and(|t| String::from_utf8_lossy(t).contains(MARKER))
    };
    let has_previous = view.sizes.contains_key(PREVIOUS_FIRSTRUN);
    match style {
        FirstBoot::Firstrun | FirstBoot::Auto => {
            let cmdline = view.text(CMDLINE).ok_or_else(|| {
                FlashError::Image(
                    "the boot partition has no cmdline.txt: not a Raspberry Pi OS boot partition \
                     (firstrun.sh is started from it; for cloud-init images pass --first-boot cloud-init)"
                        .into(),
                )
            })?;
            if view.root.contains(FIRSTRUN) && !ours(FIRSTRUN) {
                p.steps.push(Step::Rename {
                    from: FIRSTRUN.into(),
                    to: PREVIOUS_FIRSTRUN.into(),
                });
            }
            if let Some(ud) = view.text(USER_DATA) {
                if let Some(cleaned) = cloudinit::user_data_without_ours(ud)? {
                    p.write(USER_DATA, cleaned);
                }
            }
            p.write(FIRSTRUN, firstrun_sh(settings));
            p.write(CMDLINE, cmdline_with_hook(cmdline)?);
        }
        FirstBoot::CloudInit => {
            p.write(
                META_DATA,
                cloudinit::meta_data(view.text(META_DATA), &settings.node)?,
            );
            if let Some(nc) =
                cloudinit::network_config(view.text(NETWORK_CONFIG), settings.wifi.as_ref())?
            {
                p.write(NETWORK_CONFIG, nc);
            }
            p.write(
                USER_DATA,
                cloudinit::user_data(view.text(USER_DATA), settings)?,
            );
            // A card flashed for firstrun.sh before: put back what was there.
            if ours(FIRSTRUN) {
                if has_previous {
                    p.steps.push(Step::Rename {
                        from: PREVIOUS_FIRSTRUN.into(),
                        to: FIRSTRUN.into(),
                    });
                } else {
                    if let Some(c) = view.text(CMDLINE) {
                        p.write(CMDLINE, cmdline_without_hook(c)?);
                    }
                    p.steps.push(Step::Remove(FIRSTRUN.into()));
                }
            }
        }
    }
    Ok(p)
}

/// `cmdline.txt`'s single line, without any `systemd.run` hook (ours or Imager's; a
/// replaced Imager `firstrun.sh` is run by ours).
fn cmdline_args(text: &[u8]) -> Result<Vec<String>, FlashError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| FlashError::Image("cmdline.txt is not text".into()))?;
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if line.is_empty() {
        return Err(FlashError::Image(
            "cmdline.txt is empty: not a Raspberry Pi OS boot partition".into(),
        ));
    }
    Ok(line
        .split_whitespace()
        .filter(|a| {
            !a.starts_with("systemd.run=")
                && !a.starts_with("systemd.run_success_action=")
                && !a.starts_with("systemd.run_failure_action=")
                && *a != "systemd.unit=kernel-command-line.target"
        })
        .map(str::to_owned)
        .collect())
}

/// `cmdline.txt` with the firstrun hook appended once: flashing again replaces it.
pub(super) fn cmdline_with_hook(text: &[u8]) -> Result<String, FlashError> {
    let mut args = cmdline_args(text)?;
    args.extend(CMDLINE_HOOK.iter().map(|a| a.to_string()));
    Ok(format!("{}\n", args.join(" ")))
}

pub(super) fn cmdline_without_hook(text: &[u8]) -> Result<String, FlashError> {
    Ok(format!("{}\n", cmdline_args(text)?.join(" ")))
}

/// `baton/agent.env`: the agent's settings as `BATON_*` variables (single-quoted shell
/// words, which systemd's EnvironmentFile reads too).
pub(super) fn agent_env(s: &Settings) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = format!(
        "# Written by `baton flash` for node {node}. baton/firstboot.sh passes these settings to\n\
         # `baton-agent install`, which keeps them in /etc/baton-agent/agent.env.\n\
         BATON_COORDINATOR={}\nBATON_COORDINATOR_API={}\nBATON_NODE_NAME={}\nBATON_LABELS={}\n",
        sh_quote(&s.mqtt),
        sh_quote(&s.api),
        sh_quote(&s.node),
        sh_quote(&labels.join(",")),
        node = s.node,
    );
    if !s.insecure_registries.is_empty() {
        out.push_str(&format!(
            "BATON_INSECURE_REGISTRIES={}\n",
            sh_quote(&s.insecure_registries.join(","))
        ));
    }
    if let Some(key) = &s.release_public_key {
        out.push_str(&format!("BATON_RELEASE_PUBLIC_KEY={}\n", sh_quote(key)));
    }
    out
}

/// `baton/firstboot.sh`: the same for every device; its values come from `agent.env`.
pub(super) fn firstboot_sh() -> String {
    r#"#!/bin/sh
# Written by `baton flash`: installs the Baton agent from the boot partition at first boot
# (run by cloud-init's runcmd or by firstrun.sh). Running it again is harmless.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
. "$dir/agent.env"
set -- install --coordinator "$BATON_COORDINATOR" --coordinator-api "$BATON_COORDINATOR_API" \
  --node-name "$BATON_NODE_NAME"
if [ -n "${BATON_LABELS:-}" ]; then set -- "$@" --labels "$BATON_LABELS"; fi
if [ -n "${BATON_INSECURE_REGISTRIES:-}" ]; then
  set -- "$@" --insecure-registry "$BATON_INSECURE_REGISTRIES"
fi
if [ -n "${BATON_RELEASE_PUBLIC_KEY:-}" ]; then
  set -- "$@" --release-public-key "$BATON_RELEASE_PUBLIC_KEY"
fi
agent="$dir/baton-agent"
[ -x "$agent" ] || [ ! -x /usr/local/bin/baton-agent ] || agent=/usr/local/bin/baton-agent
if [ -f "$dir/join-token" ]; then
  # install moves the token off this partition once it is in /etc/baton-agent.
  "$agent" "$@" --join-token-file "$dir/join-token"
elif [ -f /etc/baton-agent/agent.env ]; then
  # An earlier run moved the token into /etc/baton-agent/agent.env and lost power before
  # the end: installing again keeps the token it wrote there.
  "$agent" "$@"
else
  echo "baton firstboot: no join token in $dir and no installed agent: flash the card again" >&2
  exit 1
fi
# The agent now lives in /usr/local/bin: free the boot partition's copy.
if [ "$agent" = "$dir/baton-agent" ]; then rm -f "$dir/baton-agent"; fi
echo "baton firstboot: agent installed"
"#
    .to_owned()
}

/// `firstrun.sh`, for `systemd.run=`: Wi-Fi, SSH, the agent, then the hook removed.
pub(super) fn firstrun_sh(s: &Settings) -> String {
    let mut out = format!(
        "#!/bin/sh\n{MARKER} for node {node}: run once by systemd (systemd.run= in cmdline.txt);\n\
         # sets up Wi-Fi and SSH, installs the agent (baton/firstboot.sh), runs the firstrun.sh\n\
         # that was on the card before, removes itself and its kernel arguments, and systemd reboots.\n\
         set +e\nboot={BOOT}\nexec >>/var/log/baton-firstrun.log 2>&1\necho \"baton firstrun: $(date)\"\n",
        node = s.node,
    );
    if let Some(w) = &s.wifi {
        out.push_str(&wifi_sh(w));
    }
    if let Some(key) = &s.ssh_key {
        out.push_str(&ssh_sh(key));
    }
    out.push_str(&format!(
        r#"sh "$boot/baton/firstboot.sh" || echo "baton firstrun: firstboot.sh failed; run it again: sh $boot/baton/firstboot.sh"
if [ -f "$boot/{PREVIOUS_FIRSTRUN}" ]; then
  sh "$boot/{PREVIOUS_FIRSTRUN}"
  rm -f "$boot/{PREVIOUS_FIRSTRUN}"
fi
rm -f "$boot/{FIRSTRUN}"
sed -i 's| systemd\.run=/boot/firmware/firstrun\.sh||; s| systemd\.run_success_action=reboot||; s| systemd\.unit=kernel-command-line\.target||' "$boot/{CMDLINE}"
exit 0
"#
    ));
    out
}

fn printf_lines(lines: &[String], to: &str) -> String {
    let quoted: Vec<String> = lines.iter().map(|l| sh_quote(l)).collect();
    format!("  printf '%s\\n' {} >{to}\n", quoted.join(" "))
}

fn wifi_sh(w: &Wifi) -> String {
    let uuid = {
        let b: [u8; 16] = rand::random();
        let h = hex::encode(b);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    };
    let nm: Vec<String> = [
        "[connection]".to_owned(),
        "id=baton-wifi".to_owned(),
        format!("uuid={uuid}"),
        "type=wifi".to_owned(),
        "autoconnect=true".to_owned(),
        "[wifi]".to_owned(),
        "mode=infrastructure".to_owned(),
        format!("ssid={}", w.ssid),
        "[wifi-security]".to_owned(),
        "key-mgmt=wpa-psk".to_owned(),
        format!("psk={}", w.psk_hex),
        "[ipv4]".to_owned(),
        "method=auto".to_owned(),
        "[ipv6]".to_owned(),
        "method=auto".to_owned(),
    ]
    .into();
    let mut wpa = vec![
        "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev".to_owned(),
        "update_config=1".to_owned(),
    ];
    if let Some(c) = &w.country {
        wpa.push(format!("country={c}"));
    }
    wpa.extend([
        "network={".to_owned(),
        format!("\tssid=\"{}\"", w.ssid),
        format!("\tpsk={}", w.psk_hex),
        "}".to_owned(),
    ]);
    let nm_file = "/etc/NetworkManager/system-connections/baton-wifi.nmconnection";
    let mut out = String::from(
        "# Wi-Fi: a NetworkManager profile (Bookworm), else wpa_supplicant (Bullseye).\numask 077\n\
         if [ -d /etc/NetworkManager/system-connections ]; then\n",
    );
    out.push_str(&printf_lines(&nm, nm_file));
    out.push_str("else\n  mkdir -p /etc/wpa_supplicant\n");
    out.push_str(&printf_lines(
        &wpa,
        "/etc/wpa_supplicant/wpa_supplicant.conf",
    ));
    out.push_str("fi\numask 022\n");
    if let Some(c) = &w.country {
        let c = sh_quote(c);
        out.push_str(&format!(
            "if command -v raspi-config >/dev/null; then raspi-config nonint do_wifi_country {c}; \
             else iw reg set {c}; fi\n"
        ));
    }
    out.push_str("rfkill unblock wifi 2>/dev/null\n");
    out
}

fn ssh_sh(key: &str) -> String {
    format!(
        r#"# SSH: the key for the first user (uid 1000), else root; and the server enabled.
key={}
user=$(getent passwd 1000 | cut -d: -f1)
home=$(getent passwd 1000 | cut -d: -f6)
if [ -z "$user" ]; then user=root; home=/root; fi
mkdir -p "$home/.ssh"
grep -qxF "$key" "$home/.ssh/authorized_keys" 2>/dev/null || printf '%s\n' "$key" >>"$home/.ssh/authorized_keys"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
chown -R "$user:" "$home/.ssh"
systemctl enable ssh 2>/dev/null || systemctl enable sshd
"#,
        sh_quote(key)
    )
}
