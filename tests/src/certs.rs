//! A throwaway PKI for the mTLS tests, made with the `openssl` command in a temp dir: an
//! Ed25519 CA, an ECDSA P-256 broker certificate with IP SANs, and Ed25519 client
//! certificates whose CN is the node name (as enrollment issues them) or the coordinator's
//! MQTT identity. Two algorithms on purpose: both must work on both brokers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::sh;

/// The coordinator's MQTT username under Mosquitto's `use_identity_as_username`; the
/// shipped ACL (deploy/mosquitto/acl) grants it every node's up/ reads and down/ writes.
pub const COORDINATOR_CN: &str = "baton:coordinator";
/// The broker's DNS name in the lab's certificates (besides its IP addresses). The tests
/// dial the IP address: OpenSSL-based clients (`mosquitto_sub`) then send it as TLS SNI,
/// which both brokers accept (the embedded one since its TLS front, see
/// `coordinator/src/edge/mqtt_front.rs`).
pub const BROKER_NAME: &str = "baton-broker.lab";
/// A test-only identity that may read every node's up/ topics, to see what gets through.
pub const OBSERVER_CN: &str = "baton:observer";

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The subject's CN: the client id the embedded broker's TLS front allows.
    pub cn: String,
}

/// A CA able to issue certificates into its directory.
pub struct Pki {
    dir: PathBuf,
    name: String,
    pub ca: PathBuf,
}

impl Pki {
    /// A new self-signed Ed25519 CA `<dir>/<name>.crt`.
    pub fn new(dir: &Path, name: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let key = dir.join(format!("{name}.key"));
        let ca = dir.join(format!("{name}.crt"));
        genkey(&key, false)?;
        sh(Command::new("openssl")
            .args(["req", "-x509", "-new", "-days", "2", "-key"])
            .arg(&key)
            .args(["-subj", &format!("/CN={name}"), "-out"])
            .arg(&ca)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]))?;
        Ok(Pki {
            dir: dir.to_owned(),
            name: name.to_owned(),
            ca,
        })
    }

    /// A broker certificate (ECDSA P-256) valid for these IP addresses and
    /// [`BROKER_NAME`].
    pub fn server(&self, file: &str, ips: &[&str]) -> Result<CertPair> {
        let mut san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        san.push(format!("DNS:{BROKER_NAME}"));
        self.issue(
            file,
            "baton-broker",
            true,
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
    }

    /// A client certificate (Ed25519) with this CN.
    pub fn client(&self, file: &str, cn: &str) -> Result<CertPair> {
        self.issue(file, cn, false, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, file: &str, cn: &str, ecdsa: bool, ext: &str) -> Result<CertPair> {
        let key = self.dir.join(format!("{file}.key"));
        let cert = self.dir.join(format!("{file}.crt"));
        let csr = self.dir.join(format!("{file}.csr"));
        let extfile = self.dir.join(format!("{file}.ext"));
        std::fs::write(&extfile, ext)?;
        genkey(&key, ecdsa)?;
        sh(Command::new("openssl")
            .args(["req", "-new", "-key"])
            .arg(&key)
            .args(["-subj", &format!("/CN={cn}"), "-out"])
            .arg(&csr))?;
        sh(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(self.dir.join(format!("{}.key", self.name)))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&extfile)
            .arg("-out")
            .arg(&cert))?;
        Ok(CertPair {
            cert,
            key,
            cn: cn.to_owned(),
        })
    }
}

fn genkey(path: &Path, ecdsa: bool) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.arg("genpkey");
    if ecdsa {
        cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    } else {
        cmd.args(["-algorithm", "ed25519"]);
    }
    sh(cmd.arg("-out").arg(path)).map(|_| ())
}
