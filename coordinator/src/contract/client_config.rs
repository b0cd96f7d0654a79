//! The CLI's config file, a small kubeconfig: where the coordinator is, the token to
//! send, and the CA that signed the coordinator's TLS certificate.
//!
//! ```yaml
//! server: https://10.0.0.5:7474          # the API's URL
//! token: 3f9c...                          # an API token (`baton token create`)
//! certificate-authority: /etc/baton/ca.pem  # a PEM file, or the PEM text inline
//! ```
//!
//! YAML or JSON; every field is optional. A relative `certificate-authority` path is
//! relative to the config file. The CLI uses `--config FILE` (or `BATON_CONFIG`), else
//! `~/.baton/config`, else `/var/lib/baton/admin.conf` (the default data directory's
//! file written by `baton server`) if it can read it. `--server`/`BATON_SERVER` and
//! `--token`/`BATON_TOKEN` override the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The API when neither a flag nor the config names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7474";
/// The admin config in the default data directory.
pub const DEFAULT_ADMIN_CONF: &str = "/var/lib/baton/admin.conf";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot read the certificate authority {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no credentials: pass --token, set BATON_CONFIG, or use <data-dir>/admin.conf")]
    NoCredentials,
}

impl ClientConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        serde_yaml_ng::from_str::<Option<ClientConfig>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn to_yaml(&self) -> String {
        let mut out = String::from("# Baton CLI config (see `baton --help`): keep it private.\n");
        for (k, v) in [
            ("server", &self.server),
            ("token", &self.token),
            ("certificate-authority", &self.certificate_authority),
        ] {
            if let Some(v) = v {
                // JSON strings are valid YAML scalars, whatever they contain.
                let quoted = serde_json::Value::String(v.clone()).to_string();
                out.push_str(&format!("{k}: {quoted}\n"));
            }
        }
        out
    }
}

/// What flags and the environment gave.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<String>,
}

/// Where to connect and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub server: String,
    pub token: String,
    /// PEM of the CA(s) to trust instead of the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// The default config files, in order: `~/.baton/config`, then the default admin.conf.
pub fn default_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(home).join(".baton").join("config"));
    }
    v.push(PathBuf::from(DEFAULT_ADMIN_CONF));
    v
}

/// Applies the precedence: an explicit config must load; otherwise the first readable
/// default; then flags override the file's fields.
pub fn resolve(o: &Overrides, defaults: &[PathBuf]) -> Result<Resolved, ConfigError> {
    let loaded: Option<(PathBuf, ClientConfig)> = match &o.config {
        Some(p) => Some((p.clone(), ClientConfig::load(p)?)),
        None => {
            let mut found = None;
            for p in defaults {
                match ClientConfig::load(p) {
                    Ok(c) => {
                        found = Some((p.clone(), c));
                        break;
                    }
                    // Missing or not ours to read (admin.conf is root's): try the next.
                    Err(ConfigError::Read { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            found
        }
    };
    let (dir, file) = match loaded {
        Some((p, c)) => (p.parent().map(Path::to_owned), c),
        None => (None, ClientConfig::default()),
    };
    let token = o
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .or(file.token)
        .ok_or(ConfigError::NoCredentials)?;
    let server = o
        .server
        .clone()
        .or(file.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let ca_pem = match file.certificate_authority {
        None => None,
        Some(ca) if ca.trim_start().starts_with("-----BEGIN") => Some(ca.into_bytes()),
        Some(ca) => {
            let p = match &dir {
                Some(d) => d.join(&ca),
                None => PathBuf::from(&ca),
            };
            Some(std::fs::read(&p).map_err(|source| ConfigError::ReadCa { path: p, source })?)
        }
    };
    Ok(Resolved {
        server,
        token,
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parses_yaml_json_and_round_trips() {
        let p = Path::new("x");
        let c = ClientConfig::parse(
            "server: https://h:1\ntoken: abc\ncertificate-authority: ca.pem\n",
            p,
        )
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("https://h:1"));
        assert_eq!(c.certificate_authority.as_deref(), Some("ca.pem"));
        assert_eq!(ClientConfig::parse(&c.to_yaml(), p).unwrap(), c);
        let j = ClientConfig::parse(r#"{"server": "http://a", "token": "t"}"#, p).unwrap();
        assert_eq!(j.token.as_deref(), Some("t"));
        assert_eq!(ClientConfig::parse("", p).unwrap(), ClientConfig::default());
        let e = ClientConfig::parse("sever: x\n", p).unwrap_err();
        assert!(e.to_string().contains("sever"), "{e}");
    }

    #[test]
    fn precedence() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let home = write(
            d.path(),
            "home.conf",
            "server: http://home:1\ntoken: home-token\ncertificate-authority: ca.pem\n",
        );
        let admin = write(
            d.path(),
            "admin.conf",
            "server: http://admin:1\ntoken: admin-token\n",
        );
        let explicit = write(d.path(), "explicit.conf", "token: explicit-token\n");
        let missing = d.path().join("missing.conf");

        // The first readable default wins; a relative CA is read next to the file.
        let r = resolve(
            &Overrides::default(),
            &[missing.clone(), home.clone(), admin.clone()],
        )
        .unwrap();
        assert_eq!(r.server, "http://home:1");
        assert_eq!(r.token, "home-token");
        assert_eq!(
            r.ca_pem.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        let r = resolve(&Overrides::default(), &[missing.clone(), admin.clone()]).unwrap();
        assert_eq!(r.token, "admin-token");

        // --config beats the defaults; a file without a server gets the default one.
        let o = Overrides {
            config: Some(explicit.clone()),
            ..Default::default()
        };
        let r = resolve(&o, std::slice::from_ref(&home)).unwrap();
        assert_eq!(
            (r.server.as_str(), r.token.as_str()),
            (DEFAULT_SERVER, "explicit-token")
        );

        // An explicit config that does not exist is an error, not a fallback.
        let o = Overrides {
            config: Some(missing.clone()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&o, std::slice::from_ref(&home)),
            Err(ConfigError::Read { .. })
        ));

        // Flags override the file.
        let o = Overrides {
            config: None,
            server: Some("http://flag:2".into()),
            token: Some("flag-token".into()),
        };
        let r = resolve(&o, std::slice::from_ref(&home)).unwrap();
        assert_eq!(
            (r.server.as_str(), r.token.as_str()),
            ("http://flag:2", "flag-token")
        );

        // Nothing at all: a clear error.
        let e = resolve(&Overrides::default(), std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            e.to_string().starts_with("no credentials: pass --token"),
            "{e}"
        );
        // A token flag alone is enough.
        let o = Overrides {
            token: Some("t".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&o, &[missing]).unwrap().server, DEFAULT_SERVER);
    }
}
