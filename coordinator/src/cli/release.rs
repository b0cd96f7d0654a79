//! `baton release keygen|sign|import|list|delete`: signed agent binaries the coordinator
//! delivers to its nodes (issue 13).
//!
//! `keygen` and `sign` are offline: they need no server, so the release key can live on
//! a machine that never talks to the fleet. `sign` writes `BINARY.release.json` (a
//! [`SignedRelease`]) beside the binary; `import` uploads the two together and the
//! coordinator refuses anything its configured release public key did not sign.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use baton_proto::sign::SigningKey;
use baton_proto::{BString, BVec, Release, PROTO_VERSION};
use clap::Subcommand;
use sha2::{Digest, Sha256};

use super::client::Client;
use super::render::{age, table};
use super::{structured, CliError, Output};
use crate::contract::releases::{valid_version, ReleaseSummary, SignedRelease};
use crate::contract::{routes, NoBody};
use crate::model::quantity;

/// The private key's file in `keygen --out DIR` (base64 of the 32-byte seed, mode 0600).
pub const KEY_FILE: &str = "release.key";
/// The public key's file (base64 of 32 bytes): `baton server --release-public-key-file`,
/// `baton-agent --release-public-key`, `baton flash --release-public-key`.
pub const PUB_FILE: &str = "release.pub";
/// What `sign` appends to the binary's name for its metadata.
pub const METADATA_SUFFIX: &str = ".release.json";
/// The file name `sign` reads the version and target from.
const NAME_PREFIX: &str = "baton-agent-";

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make a release key pair in DIR: release.key (keep it offline) and release.pub.
    Keygen {
        #[arg(long, env = "BATON_RELEASE_KEYGEN_OUT")]
        out: PathBuf,
    },
    /// Sign an agent binary (offline): writes BINARY.release.json beside it.
    // `--version` is the release's here, not baton's own.
    #[command(disable_version_flag = true)]
    Sign {
        /// The private key (release.key from `keygen`).
        #[arg(long, env = "BATON_RELEASE_KEY")]
        key: PathBuf,
        /// Default: from the file name, baton-agent-<version>-<target>.
        #[arg(
            long = "version",
            id = "release_version",
            env = "BATON_RELEASE_VERSION"
        )]
        version: Option<String>,
        /// Rust target triple. Default: from the file name.
        #[arg(long, env = "BATON_RELEASE_TARGET")]
        target: Option<String>,
        /// The newest protocol version the binary speaks. Default: this build's.
        #[arg(long, env = "BATON_RELEASE_PROTOCOL")]
        protocol: Option<u16>,
        #[arg(env = "BATON_RELEASE_BINARY")]
        binary: PathBuf,
    },
    /// Upload a signed binary (its .release.json beside it), or every signed binary of a
    /// directory (admin only).
    Import {
        #[arg(env = "BATON_RELEASE_IMPORT")]
        path: PathBuf,
    },
    /// List imported releases.
    List {
        #[arg(short = 'o', long = "output", env = "BATON_OUTPUT", value_enum)]
        output: Option<Output>,
    },
    /// Delete a release: VERSION (every target, or --target's) or sha256:<hex> (admin only).
    Delete {
        #[arg(env = "BATON_RELEASE_DELETE")]
        release: String,
        #[arg(long, env = "BATON_RELEASE_TARGET")]
        target: Option<String>,
    },
}

fn usage(msg: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("error: {msg}"))
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    fs::read(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Creates `path` with `bytes` and `mode`, synced. Never replaces a file (`create_new`):
/// for a key that is the point, and `sign` removes its old metadata first. (The CLI does not
/// reach the server's `store::durable`; nothing here needs an atomic replace.)
fn create(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: std::io::Error| usage(format!("cannot write {}: {e}", path.display()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(cannot)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(cannot)?;
    // The umask may have taken bits off a public file's mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(cannot)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The verbs that need no server, or `None` for those that do.
pub(super) fn offline(action: &ReleaseCommand) -> Result<Option<String>, CliError> {
    match action {
        ReleaseCommand::Keygen { out } => keygen(out).map(Some),
        ReleaseCommand::Sign {
            key,
            version,
            target,
            protocol,
            binary,
        } => sign(
            key,
            version.as_deref(),
            target.as_deref(),
            protocol.unwrap_or(PROTO_VERSION),
            binary,
        )
        .map(Some),
        _ => Ok(None),
    }
}

fn keygen(out: &Path) -> Result<String, CliError> {
    let (key, public) = (out.join(KEY_FILE), out.join(PUB_FILE));
    for p in [&key, &public] {
        if p.exists() {
            return Err(usage(format!(
                "{} exists: refusing to replace a release key (devices pinned its public half)",
                p.display()
            )));
        }
    }
    fs::create_dir_all(out).map_err(|e| usage(format!("cannot create {}: {e}", out.display())))?;
    let seed: [u8; 32] = rand::random();
    let signing = SigningKey::from_bytes(&seed);
    create(&key, format!("{}\n", b64(&seed)).as_bytes(), 0o600)?;
    create(
        &public,
        format!("{}\n", b64(signing.verifying_key().as_bytes())).as_bytes(),
        0o644,
    )?;
    Ok(format!(
        "release key written: {} (keep it offline) and {}\n",
        key.display(),
        public.display()
    ))
}

/// Reads a `release.key` file.
fn read_key(path: &Path) -> Result<SigningKey, CliError> {
    let text = fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read the release key {}: {e} (make one with `baton release keygen --out DIR`)",
            path.display()
        ))
    })?;
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            usage(format!(
                "{} is not a release key (base64 of a 32-byte seed, as `baton release keygen` writes release.key)",
                path.display()
            ))
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// `baton-agent-<version>-<target>` split: the first split whose target has the three or
/// four parts of a target triple, so that `0.3.0-rc.1` keeps its pre-release.
pub fn parse_file_name(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    rest.match_indices('-').find_map(|(i, _)| {
        let (version, target) = (&rest[..i], &rest[i + 1..]);
        let parts = target.split('-').count();
        (valid_version(version)
            && (3..=4).contains(&parts)
            && target.split('-').all(|p| !p.is_empty()))
        .then(|| (version.to_owned(), target.to_owned()))
    })
}

fn sign(
    key: &Path,
    version: Option<&str>,
    target: Option<&str>,
    protocol: u16,
    binary: &Path,
) -> Result<String, CliError> {
    let key = read_key(key)?;
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parsed = parse_file_name(&name);
    let (version, target) = match (version, target, parsed) {
        (Some(v), Some(t), _) => (v.to_owned(), t.to_owned()),
        (v, t, Some((pv, pt))) => (v.map_or(pv, str::to_owned), t.map_or(pt, str::to_owned)),
        _ => {
            return Err(usage(format!(
                "cannot tell the version and target from the file name {name:?}: name it {NAME_PREFIX}<version>-<target> (e.g. baton-agent-0.2.1-aarch64-unknown-linux-musl) or pass --version and --target"
            )))
        }
    };
    if !valid_version(&version) {
        return Err(usage(format!(
            "{version:?} is not a semantic version (MAJOR.MINOR.PATCH)"
        )));
    }
    let bytes = read(binary)?;
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    let field = |e: baton_proto::ProtoError| usage(format!("cannot sign: {e}"));
    let mut r = Release {
        version: BString::new(version.clone()).map_err(field)?,
        target: BString::new(target.clone()).map_err(field)?,
        protocol,
        size: bytes.len() as u64,
        sha256: sha,
        signature: BVec::new(),
    };
    baton_proto::release::sign(&mut r, &key).map_err(|e| usage(format!("cannot sign: {e}")))?;
    let meta = SignedRelease {
        version,
        target,
        protocol,
        size: r.size,
        sha256: hex::encode(sha),
        signature: b64(&r.signature),
    };
    let out = metadata_path(binary);
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| CliError::Protocol(e.to_string()))?;
    match fs::remove_file(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(usage(format!("cannot replace {}: {e}", out.display())))
        }
        _ => {}
    }
    create(&out, &json, 0o644)?;
    Ok(format!(
        "signed {} {} ({}, {}): {}\n",
        meta.version,
        meta.target,
        baton_proto::release::digest_string(&sha),
        quantity::format_memory(meta.size),
        out.display()
    ))
}

fn metadata_path(binary: &Path) -> PathBuf {
    let mut name = binary.as_os_str().to_owned();
    name.push(METADATA_SUFFIX);
    PathBuf::from(name)
}

/// The binaries `import PATH` uploads, each with its metadata file.
fn to_import(path: &Path) -> Result<Vec<(PathBuf, PathBuf)>, CliError> {
    let meta = fs::metadata(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        let text = path.to_string_lossy();
        let binary = match text.strip_suffix(METADATA_SUFFIX) {
            Some(b) => PathBuf::from(b),
            None => path.to_owned(),
        };
        let json = metadata_path(&binary);
        if !json.is_file() {
            return Err(usage(format!(
                "{} is not signed: {} not found (sign it with `baton release sign --key release.key {}`)",
                binary.display(),
                json.display(),
                binary.display()
            )));
        }
        return Ok(vec![(binary, json)]);
    }
    let mut found = Vec::new();
    let entries = fs::read_dir(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(bin) = name.strip_suffix(METADATA_SUFFIX) {
            let binary = path.join(bin);
            if binary.is_file() {
                found.push((binary, e.path()));
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(usage(format!(
            "no signed release in {}: expected BINARY and BINARY{METADATA_SUFFIX} pairs (`baton release sign`)",
            path.display()
        )));
    }
    Ok(found)
}

async fn import(client: &Client, path: &Path) -> Result<String, CliError> {
    let mut out = String::new();
    for (binary, json) in to_import(path)? {
        let meta: SignedRelease = serde_json::from_slice(&read(&json)?)
            .map_err(|e| usage(format!("{} is not release metadata: {e}", json.display())))?;
        let body = super::upload::upload_body(&binary).await.map_err(usage)?;
        let route = routes::ImportRelease {
            version: meta.version,
            target: meta.target,
            protocol: meta.protocol.to_string(),
            size: meta.size.to_string(),
            sha256: meta.sha256,
            signature: meta.signature,
        };
        let s = client.upload(&route, body).await?;
        out.push_str(&format!(
            "release/{} ({}) imported ({}, {})\n",
            s.version,
            s.target,
            s.digest,
            quantity::format_memory(s.size)
        ));
    }
    Ok(out)
}

/// `baton release list`'s table.
pub fn releases_table(list: &[ReleaseSummary], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.version.clone(),
                s.target.clone(),
                s.protocol.to_string(),
                quantity::format_memory(s.size),
                s.digest.clone(),
                age(&s.imported_at, now),
            ]
        })
        .collect();
    table(
        &["VERSION", "TARGET", "PROTOCOL", "SIZE", "DIGEST", "AGE"],
        &rows,
    )
}

/// `baton release ...` that talk to the coordinator.
pub(super) async fn release(client: &Client, action: &ReleaseCommand) -> Result<String, CliError> {
    match action {
        ReleaseCommand::Keygen { .. } | ReleaseCommand::Sign { .. } => {
            offline(action).map(Option::unwrap_or_default)
        }
        ReleaseCommand::Import { path } => import(client, path).await,
        ReleaseCommand::List { output } => {
            let list = client.call(&routes::ListReleases {}, &NoBody).await?;
            if let Some(text) = structured(&list, *output) {
                return text;
            }
            if list.items.is_empty() {
                eprintln!("No releases imported");
                return Ok(String::new());
            }
            Ok(releases_table(&list.items, SystemTime::now()))
        }
        ReleaseCommand::Delete { release, target } => {
            let digests: Vec<String> = if release.starts_with("sha256:") {
                vec![release.clone()]
            } else {
                let list = client.call(&routes::ListReleases {}, &NoBody).await?;
                let chosen: Vec<String> = list
                    .items
                    .iter()
                    .filter(|s| &s.version == release)
                    .filter(|s| target.as_ref().is_none_or(|t| &s.target == t))
                    .map(|s| s.digest.clone())
                    .collect();
                if chosen.is_empty() {
                    return Err(usage(match target {
                        Some(t) => {
                            format!("no release {release} for {t} (see `baton release list`)")
                        }
                        None => format!("no release {release} (see `baton release list`)"),
                    }));
                }
                chosen
            };
            let mut out = String::new();
            for digest in digests {
                let gone = client
                    .call(&routes::DeleteRelease { digest }, &NoBody)
                    .await?
                    .deleted;
                out.push_str(&format!(
                    "release/{} ({}) deleted ({})\n",
                    gone.version, gone.target, gone.digest
                ));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::releases::parse_public_key;

    #[test]
    fn file_names_give_version_and_target() {
        let p = |n: &str| parse_file_name(n);
        assert_eq!(
            p("baton-agent-0.2.1-x86_64-unknown-linux-gnu"),
            Some(("0.2.1".into(), "x86_64-unknown-linux-gnu".into()))
        );
        assert_eq!(
            p("baton-agent-0.3.0-rc.1-aarch64-unknown-linux-musl"),
            Some(("0.3.0-rc.1".into(), "aarch64-unknown-linux-musl".into()))
        );
        assert_eq!(
            p("baton-agent-1.0.0-armv7-unknown-linux-musleabihf"),
            Some(("1.0.0".into(), "armv7-unknown-linux-musleabihf".into()))
        );
        for bad in [
            "baton-agent",
            "baton-agent-x86_64-unknown-linux-gnu",
            "agent-0.2.1-x86_64-unknown-linux-gnu",
            "baton-agent-0.2-x86_64-unknown-linux-gnu",
            "baton-agent-0.2.1",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn keygen_then_sign_makes_metadata_the_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second keygen never replaces the key devices pinned.
        assert!(keygen(dir.path())
            .unwrap_err()
            .to_string()
            .contains("exists"));
        let bin = dir
            .path()
            .join("baton-agent-0.2.1-x86_64-unknown-linux-gnu");
        fs::write(&bin, b"an agent").unwrap();
        sign(&dir.path().join(KEY_FILE), None, None, 5, &bin).unwrap();
        let meta: SignedRelease =
            serde_json::from_slice(&fs::read(metadata_path(&bin)).unwrap()).unwrap();
        assert_eq!(
            (meta.version.as_str(), meta.target.as_str(), meta.size),
            ("0.2.1", "x86_64-unknown-linux-gnu", 8)
        );
        let public =
            parse_public_key(&fs::read_to_string(dir.path().join(PUB_FILE)).unwrap()).unwrap();
        let wire = meta.to_wire().unwrap();
        baton_proto::release::verify(&wire, &public).unwrap();

        let odd = dir.path().join("agent.bin");
        fs::write(&odd, b"x").unwrap();
        let err = sign(&dir.path().join(KEY_FILE), None, None, 5, &odd).unwrap_err();
        assert!(err.to_string().contains("--version and --target"), "{err}");
        let err = sign(&dir.path().join("nope.key"), None, None, 5, &bin).unwrap_err();
        assert!(err.to_string().contains("baton release keygen"), "{err}");
        assert!(to_import(&odd)
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        assert_eq!(to_import(dir.path()).unwrap().len(), 1);
    }
}
