//! cloud-init's NoCloud files on the boot partition (Raspberry Pi OS Trixie and later):
//! `user-data`, `meta-data` and `network-config`, built as YAML values and serialized
//! with serde, never by pasting strings.
//!
//! Files already on the card (Raspberry Pi Imager writes its own user, password and
//! Wi-Fi there) are merged into, not replaced: flash adds its `runcmd` entries and SSH
//! key and drops the entries an earlier flash added, so flashing twice does not run the
//! agent's installer twice. YAML comments in those files do not survive the merge.

use serde_yaml_ng::{Mapping, Value};

use super::settings::{Settings, Wifi};
use super::FlashError;

const HEADER: &str = "#cloud-config\n";
/// `baton/firstboot.sh` where the device mounts the boot partition.
const FIRSTBOOT_ON_DEVICE: &str = "/boot/firmware/baton/firstboot.sh";

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn seq(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|i| s(i)).collect())
}

/// The `runcmd` entries flash adds, in order; the last one installs the agent.
fn our_runcmd(settings: &Settings) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(country) = settings.wifi.as_ref().and_then(|w| w.country.as_deref()) {
        // Raspberry Pi OS keeps Wi-Fi blocked (rfkill) until a country is set.
        out.push(seq(&[
            "sh",
            "-c",
            &format!(
                "raspi-config nonint do_wifi_country {country} || {{ iw reg set {country}; rfkill unblock wifi; }}"
            ),
        ]));
    }
    if settings.ssh_key.is_some() {
        out.push(seq(&["systemctl", "enable", "--now", "ssh"]));
    }
    out.push(seq(&["sh", FIRSTBOOT_ON_DEVICE]));
    out
}

fn mentions_firstboot(v: &Value) -> bool {
    match v {
        Value::String(t) => t.contains(FIRSTBOOT_ON_DEVICE),
        Value::Sequence(items) => items.iter().any(mentions_firstboot),
        _ => false,
    }
}

/// An existing `#cloud-config` document as a mapping; anything else (a shell script,
/// MIME multi-part, broken YAML) is refused rather than overwritten.
fn parse(name: &str, bytes: &[u8], cloud_config: bool) -> Result<Mapping, FlashError> {
    let refuse = |why: String| {
        FlashError::Image(format!(
            "{name} on the boot partition {why}; baton flash will not overwrite it: fix or remove it, or pass --first-boot firstrun"
        ))
    };
    let text = std::str::from_utf8(bytes).map_err(|_| refuse("is not UTF-8 text".into()))?;
    if cloud_config && text.lines().next().map(str::trim_end) != Some("#cloud-config") {
        return Err(refuse(
            "is not a #cloud-config document (a script or MIME multi-part?)".into(),
        ));
    }
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(refuse("is not a YAML mapping".into())),
        Err(e) => Err(refuse(format!("is not valid YAML ({e})"))),
    }
}

fn render(doc: Mapping, header: &str) -> Result<String, FlashError> {
    let body = serde_yaml_ng::to_string(&Value::Mapping(doc))
        .map_err(|e| FlashError::Invalid(format!("cannot write YAML: {e}")))?;
    Ok(format!("{header}{body}"))
}

/// `runcmd` of `doc` without what an earlier flash added.
fn runcmd_without_ours(
    doc: &mut Mapping,
    ours: &[Value],
    name: &str,
) -> Result<Vec<Value>, FlashError> {
    let mut runcmd = match doc.remove("runcmd") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(v)) => v,
        Some(_) => {
            return Err(FlashError::Image(format!(
                "{name} on the boot partition has a runcmd that is not a list"
            )))
        }
    };
    runcmd.retain(|e| !mentions_firstboot(e) && !ours.contains(e));
    Ok(runcmd)
}

/// `user-data`: `runcmd` runs the installer (and sets the Wi-Fi country, enables SSH),
/// `ssh_authorized_keys` gives the default user the key.
pub(super) fn user_data(
    existing: Option<&[u8]>,
    settings: &Settings,
) -> Result<String, FlashError> {
    let mut doc = match existing {
        Some(b) => parse("user-data", b, true)?,
        None => Mapping::new(),
    };
    let ours = our_runcmd(settings);
    let mut runcmd = runcmd_without_ours(&mut doc, &ours, "user-data")?;
    runcmd.extend(ours);
    doc.insert(s("runcmd"), Value::Sequence(runcmd));
    if let Some(key) = &settings.ssh_key {
        let mut keys =
            match doc.remove("ssh_authorized_keys") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Sequence(v)) => v,
                Some(_) => return Err(FlashError::Image(
                    "user-data on the boot partition has ssh_authorized_keys that is not a list"
                        .into(),
                )),
            };
        if !keys.contains(&s(key)) {
            keys.push(s(key));
        }
        doc.insert(s("ssh_authorized_keys"), Value::Sequence(keys));
    }
    render(doc, HEADER)
}

/// An existing `user-data` without flash's entries (when a card flashed for cloud-init
/// is flashed again for firstrun.sh); `None` if there was nothing of ours.
pub(super) fn user_data_without_ours(existing: &[u8]) -> Result<Option<String>, FlashError> {
    let mut doc = parse("user-data", existing, true)?;
    let Some(Value::Sequence(before)) = doc.get("runcmd").cloned() else {
        return Ok(None);
    };
    if !before.iter().any(mentions_firstboot) {
        return Ok(None);
    }
    let runcmd: Vec<Value> = before
        .into_iter()
        .filter(|e| !mentions_firstboot(e))
        .collect();
    doc.insert(s("runcmd"), Value::Sequence(runcmd));
    render(doc, HEADER).map(Some)
}

/// `meta-data`: the instance id is the node name, so cloud-init treats each flashed
/// card as a new instance and runs `user-data` once on it.
pub(super) fn meta_data(existing: Option<&[u8]>, node: &str) -> Result<String, FlashError> {
    let mut doc = match existing {
        Some(b) => parse("meta-data", b, false)?,
        None => Mapping::new(),
    };
    doc.insert(s("instance-id"), s(node));
    render(doc, "")
}

/// `network-config` (netplan version 2): DHCP on the wired port unless the card already
/// says otherwise, and the Wi-Fi network when given. `None` when an existing file needs
/// no change.
pub(super) fn network_config(
    existing: Option<&[u8]>,
    wifi: Option<&Wifi>,
) -> Result<Option<String>, FlashError> {
    let mut doc = match existing {
        Some(_) if wifi.is_none() => return Ok(None),
        Some(b) => parse("network-config", b, false)?,
        None => Mapping::new(),
    };
    // NoCloud takes the netplan document either under `network:` or at the top level.
    let wrapped = existing.is_none() || doc.contains_key("network");
    let mut net =
        if wrapped {
            match doc.remove("network") {
                None | Some(Value::Null) => Mapping::new(),
                Some(Value::Mapping(m)) => m,
                Some(_) => return Err(FlashError::Image(
                    "network-config on the boot partition has a `network` that is not a mapping"
                        .into(),
                )),
            }
        } else {
            std::mem::take(&mut doc)
        };
    net.insert(s("version"), Value::Number(2.into()));
    if !net.contains_key("ethernets") && !net.contains_key("wifis") {
        let mut eth0 = Mapping::new();
        eth0.insert(s("dhcp4"), Value::Bool(true));
        eth0.insert(s("optional"), Value::Bool(true));
        let mut ethernets = Mapping::new();
        ethernets.insert(s("eth0"), Value::Mapping(eth0));
        net.insert(s("ethernets"), Value::Mapping(ethernets));
    }
    if let Some(w) = wifi {
        let mut ap = Mapping::new();
        // 64 hex digits: the PSK itself, which netplan passes on as such.
        ap.insert(s("password"), s(&w.psk_hex));
        let mut aps = Mapping::new();
        aps.insert(s(&w.ssid), Value::Mapping(ap));
        let mut wlan0 = Mapping::new();
        wlan0.insert(s("dhcp4"), Value::Bool(true));
        wlan0.insert(s("optional"), Value::Bool(true));
        if let Some(c) = &w.country {
            wlan0.insert(s("regulatory-domain"), s(c));
        }
        wlan0.insert(s("access-points"), Value::Mapping(aps));
        let mut wifis = match net.remove("wifis") {
            Some(Value::Mapping(m)) => m,
            _ => Mapping::new(),
        };
        wifis.insert(s("wlan0"), Value::Mapping(wlan0));
        net.insert(s("wifis"), Value::Mapping(wifis));
    }
    if wrapped {
        doc.insert(s("network"), Value::Mapping(net));
    } else {
        doc = net;
    }
    render(doc, "").map(Some)
}
