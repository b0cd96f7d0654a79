//! `baton broker mosquitto-config`: everything Mosquitto needs to be a Baton fleet's
//! broker, issued by the coordinator's own CA.
//!
//! Run on the coordinator's host against its data directory (the CA key never leaves
//! it; made there if this runs before the first `baton server`). It writes into `--out`:
//! `ca.crt` (the coordinator's CA: devices and the coordinator present certificates from
//! it), `server.crt`/`server.key` (the broker's certificate for `--san` names, plus
//! loopback), `coordinator.crt`/`coordinator.key` (CN `baton:coordinator`, for a
//! coordinator that does not issue its own, see `--broker-cert`), `acl`
//! (deploy/mosquitto/acl) and `mosquitto.conf` (deploy/mosquitto/mosquitto.conf with these
//! paths). `mosquitto -c <out>/mosquitto.conf` then serves the fleet.
//!
//! Mosquitto started as root drops to the `mosquitto` user before it reads certificates,
//! so when that group exists the directory and the keys are group-readable by it (0750,
//! 0640) and nothing is readable by other users. Every key is PKCS#8 v1 PEM, which
//! OpenSSL 3.0 reads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::security::pki::{Pki, PkiError, COORDINATOR_CN};

/// The shipped ACL and config template, with the install paths replaced.
const ACL: &str = include_str!("../../../deploy/mosquitto/acl");
const CONF: &str = include_str!("../../../deploy/mosquitto/mosquitto.conf");
/// The directory deploy/mosquitto/mosquitto.conf names.
const TEMPLATE_DIR: &str = "/etc/baton/mqtt";

#[derive(Debug, thiserror::Error)]
pub enum BrokerConfigError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("give at least one --san: the host name or address agents dial")]
    NoSan,
    #[error("the output directory {0} has a character Mosquitto's config cannot hold")]
    BadPath(PathBuf),
}

/// What `baton broker mosquitto-config` is asked for.
#[derive(Debug, Clone)]
pub struct MosquittoConfig {
    pub data_dir: PathBuf,
    pub out: PathBuf,
    /// Names or addresses in the broker's certificate (loopback is always added).
    pub sans: Vec<String>,
    pub port: u16,
}

/// The files written, for the caller to print.
pub fn write(cfg: &MosquittoConfig) -> Result<Vec<PathBuf>, BrokerConfigError> {
    if cfg.sans.is_empty() {
        return Err(BrokerConfigError::NoSan);
    }
    let out_text = cfg.out.to_string_lossy();
    if out_text.contains(['\n', ' ', '#']) {
        return Err(BrokerConfigError::BadPath(cfg.out.clone()));
    }
    let pki = Pki::load_or_create(&cfg.data_dir.join("pki"))?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BrokerConfigError::Io { path, source }
    };
    std::fs::create_dir_all(&cfg.out).map_err(io(&cfg.out))?;
    let gid = group_id("mosquitto");
    let mut sans = cfg.sans.clone();
    for lo in ["127.0.0.1", "::1", "localhost"] {
        if !sans.iter().any(|s| s == lo) {
            sans.push(lo.to_owned());
        }
    }
    let (server_crt, server_key) = pki.issue_server("baton MQTT broker", &sans)?;
    let (coord_crt, coord_key) = pki.issue_client(COORDINATOR_CN)?;
    let conf = CONF
        .replace(TEMPLATE_DIR, out_text.trim_end_matches('/'))
        .replace("listener 8883\n", &format!("listener {}\n", cfg.port));
    let files: [(&str, &str, bool); 7] = [
        ("ca.crt", pki.ca_pem(), false),
        ("server.crt", &server_crt, false),
        ("server.key", &server_key, true),
        ("coordinator.crt", &coord_crt, false),
        ("coordinator.key", &coord_key, true),
        ("acl", ACL, false),
        ("mosquitto.conf", &conf, false),
    ];
    let mut written = Vec::new();
    for (name, text, secret) in files {
        let path = cfg.out.join(name);
        crate::store::durable::write_private(&path, text.as_bytes()).map_err(io(&path))?;
        // Keys: the owner and Mosquitto's group; the rest: anyone may read.
        let mode = match (secret, gid) {
            (true, Some(_)) => 0o640,
            (true, None) => 0o600,
            (false, _) => 0o644,
        };
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io(&path))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io(&path))?;
        written.push(path);
    }
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&cfg.out, None, Some(gid)).map_err(io(&cfg.out))?;
        std::fs::set_permissions(&cfg.out, std::fs::Permissions::from_mode(0o750))
            .map_err(io(&cfg.out))?;
    }
    Ok(written)
}

/// The id of a group in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_config_with_its_own_paths_and_keys_openssl_reads() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mqtt");
        let files = write(&MosquittoConfig {
            data_dir: dir.path().join("data"),
            out: out.clone(),
            sans: vec!["10.0.0.1".into(), "broker.lan".into()],
            port: 8883,
        })
        .unwrap();
        assert_eq!(files.len(), 7);
        let conf = std::fs::read_to_string(out.join("mosquitto.conf")).unwrap();
        assert!(!conf.contains(TEMPLATE_DIR), "{conf}");
        assert!(conf.contains(&format!("certfile {}/server.crt", out.display())));
        assert!(conf.contains(&format!("acl_file {}/acl", out.display())));
        // The CA is the coordinator's: what join tokens pin.
        let ca = std::fs::read_to_string(out.join("ca.crt")).unwrap();
        let pki = Pki::load_or_create(&dir.path().join("data").join("pki")).unwrap();
        assert_eq!(ca, pki.ca_pem());
        for key in ["server.key", "coordinator.key"] {
            let st = std::process::Command::new("openssl")
                .args(["pkey", "-noout", "-in"])
                .arg(out.join(key))
                .output()
                .unwrap();
            assert!(st.status.success(), "{key}: {:?}", st);
            let mode = std::fs::metadata(out.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o007, 0, "{key} is readable by others");
        }
        // The server certificate verifies against the CA for the SAN, by OpenSSL too.
        let st = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(out.join("ca.crt"))
            .args(["-verify_ip", "10.0.0.1"])
            .arg(out.join("server.crt"))
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let no_san = MosquittoConfig {
            data_dir: dir.path().join("data"),
            out,
            sans: vec![],
            port: 8883,
        };
        assert!(matches!(write(&no_san), Err(BrokerConfigError::NoSan)));
    }
}
