//! What one device gets, checked: every value that ends up in a shell script, an env file
//! or a YAML document on the card is validated here against a small safe character set,
//! so the generators can quote it without surprises, and bad input is refused before
//! anything is opened for writing.

use std::collections::BTreeMap;
use std::path::Path;

use baton_proto::NodeName;

use super::FlashError;

/// The settings written for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// The broker as the device sees it (`mqtt://` or `mqtts://`).
    pub mqtt: String,
    /// The coordinator's API as the device sees it (`http://` or `https://`).
    pub api: String,
    pub insecure_registries: Vec<String>,
    pub wifi: Option<Wifi>,
    /// One OpenSSH public key line.
    pub ssh_key: Option<String>,
    /// The release public key the agent pins (base64 of 32 bytes, checked).
    pub release_public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wifi {
    pub ssid: String,
    /// The WPA PSK as 64 hex digits: the passphrase never reaches the card.
    pub psk_hex: String,
    /// ISO 3166 alpha-2, upper case (the regulatory domain; Raspberry Pi OS keeps Wi-Fi
    /// blocked until it is set).
    pub country: Option<String>,
}

/// The device-independent flags, checked once for a whole batch.
#[derive(Debug, Clone)]
pub(super) struct Common {
    pub mqtt: String,
    pub api: String,
    pub insecure_registries: Vec<String>,
    pub wifi: Option<Wifi>,
    pub ssh_key: Option<String>,
    pub release_public_key: Option<String>,
}

impl Common {
    pub fn device(&self, node: &str, labels: BTreeMap<String, String>) -> Settings {
        Settings {
            node: node.to_owned(),
            labels,
            mqtt: self.mqtt.clone(),
            api: self.api.clone(),
            insecure_registries: self.insecure_registries.clone(),
            wifi: self.wifi.clone(),
            ssh_key: self.ssh_key.clone(),
            release_public_key: self.release_public_key.clone(),
        }
    }
}

/// `--release-public-key`: base64 of a 32-byte Ed25519 key, as `release.pub` holds it.
pub(super) fn release_key(s: &str) -> Result<String, FlashError> {
    crate::contract::releases::parse_public_key(s)
        .map(|_| s.trim().to_owned())
        .ok_or_else(|| {
            invalid(
                "--release-public-key",
                s,
                "base64 of a 32-byte Ed25519 public key (release.pub of `baton release keygen`)",
            )
        })
}

fn invalid(what: &str, value: &str, allowed: &str) -> FlashError {
    FlashError::Invalid(format!(
        "{what} {:?} is not allowed: use {allowed}",
        value.chars().take(80).collect::<String>()
    ))
}

/// A node name, as the coordinator accepts it (`baton_proto::NodeName`).
pub(super) fn node_name(s: &str) -> Result<String, FlashError> {
    NodeName::new(s)
        .map(|n| n.as_str().to_owned())
        .map_err(|_| invalid("node name", s, "1-63 characters from A-Z a-z 0-9 . _ -"))
}

fn label_part_ok(s: &str, max: usize) -> bool {
    s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// `k=v` items separated by `,` or `;` (the CSV form); the coordinator's label rules.
pub(super) fn labels(s: &str) -> Result<BTreeMap<String, String>, FlashError> {
    let mut out = BTreeMap::new();
    for item in s.split([',', ';']).map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| FlashError::Invalid(format!("label {item:?} is not KEY=VALUE")))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !label_part_ok(k, 253) || !label_part_ok(v, 63) {
            return Err(invalid(
                "label",
                item,
                "KEY=VALUE from A-Z a-z 0-9 - _ . / (key up to 253, value up to 63 characters)",
            ));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    if out.len() > 64 {
        return Err(FlashError::Invalid("more than 64 labels".into()));
    }
    Ok(out)
}

/// A coordinator URL with one of `schemes`, from URL characters that need no escaping in
/// a single-quoted shell word or a YAML scalar.
pub(super) fn url(flag: &str, s: &str, schemes: &[&str]) -> Result<String, FlashError> {
    let parsed = reqwest::Url::parse(s)
        .map_err(|e| FlashError::Invalid(format!("{flag} {s:?} is not a URL: {e}")))?;
    if !schemes.contains(&parsed.scheme()) || parsed.host_str().is_none() {
        return Err(FlashError::Invalid(format!(
            "{flag} {s:?} must be {}://HOST[:PORT], as the device reaches the coordinator",
            schemes.join("|")
        )));
    }
    // The agent enrolls over https, or plain http to its own loopback only (a Pi that is
    // its own coordinator); anything else it would refuse on the device, after the flash.
    let host = parsed.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() == "http" && !loopback {
        return Err(FlashError::Invalid(format!(
            "{flag} {s:?}: the agent enrolls over https:// (plain http only to its own loopback); \
             use the coordinator's TLS API or --enroll-listen address"
        )));
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~:/[]%@+=,".contains(&b));
    if !ok || s.len() > 256 {
        return Err(invalid(
            flag,
            s,
            "a URL from A-Z a-z 0-9 - . _ ~ : / [ ] % @ + = ,",
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// [`url`] for each address of a comma-separated list (a broker cluster's members); an
/// entry that fails is named by position.
pub(super) fn url_list(flag: &str, s: &str, schemes: &[&str]) -> Result<String, FlashError> {
    let entries: Vec<&str> = s.split(',').collect();
    if let [one] = entries[..] {
        return url(flag, one, schemes);
    }
    let n = entries.len();
    let mut out = Vec::with_capacity(n);
    for (i, e) in entries.into_iter().enumerate() {
        let at = format!("{flag} (entry {} of {n})", i + 1);
        if e.trim().is_empty() {
            return Err(FlashError::Invalid(format!(
                "{at} is empty (a stray comma?)"
            )));
        }
        out.push(url(&at, e.trim(), schemes)?);
    }
    Ok(out.join(","))
}

/// `HOST:PORT` registries the agent may pull from over plain HTTP.
pub(super) fn registries(items: &[String]) -> Result<Vec<String>, FlashError> {
    let mut out = Vec::new();
    for r in items.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        let ok = r.len() <= 255
            && r.contains(':')
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
        if !ok {
            return Err(invalid("--insecure-registry", r, "HOST:PORT"));
        }
        out.push(r.to_owned());
    }
    Ok(out)
}

/// SSID characters that are safe in a quoted shell word, a NetworkManager keyfile, a
/// wpa_supplicant string and YAML alike.
fn ssid_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" -._+@:!#%,()=[]~/".contains(&b))
}

pub(super) fn wifi(
    ssid: Option<&str>,
    psk: Option<&str>,
    country: Option<&str>,
) -> Result<Option<Wifi>, FlashError> {
    let (ssid, psk) = match (ssid, psk) {
        (None, None) => {
            if country.is_some() {
                return Err(FlashError::Invalid(
                    "--wifi-country needs --wifi-ssid and --wifi-psk".into(),
                ));
            }
            return Ok(None);
        }
        (Some(s), Some(p)) => (s, p),
        _ => {
            return Err(FlashError::Invalid(
                "--wifi-ssid and --wifi-psk go together".into(),
            ))
        }
    };
    if !ssid_ok(ssid) {
        return Err(invalid(
            "--wifi-ssid",
            ssid,
            "1-32 characters from A-Z a-z 0-9 space - . _ + @ : ! # % , ( ) = [ ] ~ /",
        ));
    }
    let is_hex = psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit());
    let psk_hex = if is_hex {
        psk.to_ascii_lowercase()
    } else {
        // WPA2-Personal: 8-63 printable ASCII characters (IEEE 802.11i, H.4.1).
        if !(8..=63).contains(&psk.len()) || !psk.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(FlashError::Invalid(
                "--wifi-psk must be 8-63 printable ASCII characters, or the 64 hex digits of the PSK"
                    .into(),
            ));
        }
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(psk.as_bytes(), ssid.as_bytes(), 4096, &mut out);
        hex::encode(out)
    };
    let country = match country {
        None => None,
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(c.to_ascii_uppercase())
        }
        Some(c) => {
            return Err(invalid(
                "--wifi-country",
                c,
                "a two-letter country code, e.g. GB",
            ))
        }
    };
    Ok(Some(Wifi {
        ssid: ssid.to_owned(),
        psk_hex,
        country,
    }))
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One OpenSSH public key from `path` (its first non-comment line).
pub(super) fn ssh_key(path: &Path) -> Result<String, FlashError> {
    let text = std::fs::read_to_string(path).map_err(|source| FlashError::Read {
        path: path.display().to_string(),
        error: source,
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let mut parts = line.split_whitespace();
    let (kind, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let comment: Vec<&str> = parts.collect();
    let b64 = |s: &str| {
        s.len() >= 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    };
    if !SSH_KEY_TYPES.contains(&kind) || !b64(key) {
        return Err(FlashError::Invalid(format!(
            "--ssh-key {}: not an OpenSSH public key (expected e.g. \"ssh-ed25519 AAAA... user@host\"; give the .pub file)",
            path.display()
        )));
    }
    let comment = comment.join(" ");
    if !comment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" -._@+:=/".contains(&b))
    {
        return Err(invalid(
            "the --ssh-key comment",
            &comment,
            "A-Z a-z 0-9 space - . _ @ + : = / (edit the comment after the key)",
        ));
    }
    Ok(if comment.is_empty() {
        format!("{kind} {key}")
    } else {
        format!("{kind} {key} {comment}")
    })
}

/// A value as one single-quoted POSIX shell word. Everything passed here was validated
/// above; the quoting still holds for any string.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
