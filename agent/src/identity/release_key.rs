//! The release public key this device trusts for agent updates (issue 13).
//!
//! A release is run only if this key signed it, so neither a coordinator nor a broker that
//! is taken over can make the device run another binary: the coordinator only delivers.
//! The key comes from `--release-public-key` (env `BATON_RELEASE_PUBLIC_KEY`, written into
//! agent.env by `baton-agent install` and `baton flash`), which wins, or else from the
//! file pinned at enrollment, `<data-dir>/release.pub` (the coordinator hands its
//! configured key to enrolling devices; the file is written before the identity, so a
//! device that has an identity from a coordinator with a key has the key too). Both are
//! base64 of the 32-byte Ed25519 public key, as `baton release keygen` writes `release.pub`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use baton_proto::sign::VerifyingKey;

/// The pinned key's file in the data directory.
pub const RELEASE_KEY_FILE: &str = "release.pub";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseKeyError {
    #[error("invalid release public key from {from}: expected base64 of a 32-byte Ed25519 public key (release.pub from `baton release keygen`)")]
    Invalid { from: String },
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses base64 of the 32-byte key; `from` says where it came from, for the error.
pub fn parse(text: &str, from: &str) -> Result<VerifyingKey, ReleaseKeyError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| ReleaseKeyError::Invalid { from: from.into() })
}

/// Checks `--release-public-key` as it is parsed (clap's value parser), so a bad key is
/// refused by `install` before anything is written, not found later on the device.
pub fn check_flag(text: &str) -> Result<String, ReleaseKeyError> {
    parse(text, "--release-public-key").map(|_| text.trim().to_owned())
}

/// The release key to check updates against: `flag` if given, else the key pinned in
/// `data_dir`, else none (the device then refuses every update).
pub fn load(data_dir: &Path, flag: Option<&str>) -> Result<Option<VerifyingKey>, ReleaseKeyError> {
    if let Some(text) = flag {
        return parse(text, "--release-public-key").map(Some);
    }
    let path = data_dir.join(RELEASE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReleaseKeyError::Io { path, source }),
    }
}

/// Pins `text` (base64, as the enrollment answer carries it) in `data_dir`, durably.
pub fn pin(data_dir: &Path, text: &str) -> Result<VerifyingKey, ReleaseKeyError> {
    let key = parse(text, "the enrollment answer")?;
    let path = data_dir.join(RELEASE_KEY_FILE);
    let line = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
    );
    // Public, but only the agent (root) needs to read it.
    crate::durable::write(&path, line.as_bytes(), crate::datadir::PRIVATE_FILE)
        .map_err(|source| ReleaseKeyError::Io { path, source })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(k: &VerifyingKey) -> String {
        base64::engine::general_purpose::STANDARD.encode(k.as_bytes())
    }

    #[test]
    fn the_flag_wins_over_the_pinned_key_and_nothing_means_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), None).unwrap().is_none());
        let pinned = baton_proto::sign::SigningKey::from_bytes(&[1; 32]).verifying_key();
        let flag = baton_proto::sign::SigningKey::from_bytes(&[2; 32]).verifying_key();
        assert_eq!(pin(dir.path(), &b64(&pinned)).unwrap(), pinned);
        assert_eq!(load(dir.path(), None).unwrap(), Some(pinned));
        assert_eq!(load(dir.path(), Some(&b64(&flag))).unwrap(), Some(flag));
        // A bad flag is an error, never a silent fallback to the pinned key.
        let err = load(dir.path(), Some("not-a-key")).unwrap_err();
        assert!(err.to_string().contains("--release-public-key"), "{err}");
        assert!(check_flag(&b64(&flag)).is_ok());
        assert!(check_flag("AAAA").is_err());
        assert!(pin(dir.path(), "short").is_err());
        assert_eq!(load(dir.path(), None).unwrap(), Some(pinned));
        // A damaged file says so.
        std::fs::write(dir.path().join(RELEASE_KEY_FILE), "garbage").unwrap();
        assert!(load(dir.path(), None)
            .unwrap_err()
            .to_string()
            .contains(RELEASE_KEY_FILE));
    }
}
