//! Agent releases (`baton release ...`): the signed metadata a release travels with, and
//! what is listed, imported and deleted.

use base64::Engine as _;
use baton_proto::sign::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::payload::{json_bodies, ResponseBody};
use crate::model::release::ReleaseRecord;

/// `BINARY.release.json`, written by `baton release sign` (offline) and read by
/// `baton release import`: what the release key signed
/// (`baton_proto::release::signing_bytes`), with the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedRelease {
    /// Semantic version, e.g. `0.2.1`.
    pub version: String,
    /// Rust target triple, e.g. `aarch64-unknown-linux-musl`.
    pub target: String,
    /// The newest protocol version the binary speaks.
    pub protocol: u16,
    pub size: u64,
    /// Lowercase hex of the binary's SHA-256.
    pub sha256: String,
    /// Base64 of the release key's Ed25519 signature.
    pub signature: String,
}

/// What `baton release list` shows and `import` and `delete` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSummary {
    pub version: String,
    pub target: String,
    pub protocol: u16,
    pub size: u64,
    /// `sha256:<hex>`: the release's name in paths.
    pub digest: String,
    /// When it was imported (RFC 3339).
    pub imported_at: String,
}

/// `DELETE /api/v1/releases/DIGEST`: the release that was deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDeleted {
    pub deleted: ReleaseSummary,
}

json_bodies!(SignedRelease, ReleaseSummary, ReleaseDeleted);

/// Release metadata that does not have the shape the release key signs.
#[derive(Debug, thiserror::Error)]
#[error("invalid release {field}: {reason}")]
pub struct InvalidRelease {
    pub field: &'static str,
    pub reason: String,
}

impl SignedRelease {
    /// The wire release the key signed (`baton_proto::release::signing_bytes`), with each
    /// field's shape checked.
    pub fn to_wire(&self) -> Result<baton_proto::Release, InvalidRelease> {
        if !valid_version(&self.version) {
            return Err(InvalidRelease {
                field: "version",
                reason: format!(
                    "{:?} is not a semantic version (MAJOR.MINOR.PATCH)",
                    self.version
                ),
            });
        }
        if self.target.is_empty()
            || !self
                .target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(InvalidRelease {
                field: "target",
                reason: format!("{:?} is not a target triple", self.target),
            });
        }
        ReleaseRecord {
            version: self.version.clone(),
            target: self.target.clone(),
            protocol: self.protocol,
            size: self.size,
            sha256: self.sha256.to_ascii_lowercase(),
            signature: self.signature.clone(),
            imported_at: String::new(),
        }
        .to_wire()
        .map_err(|e| InvalidRelease {
            field: "metadata",
            reason: e.to_string(),
        })
    }
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre` or `+build` suffix.
pub fn valid_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b))
}

/// A release public key from its text: base64 of the 32-byte Ed25519 key (`release.pub`,
/// as `baton release keygen` writes it).
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

/// A release binary's bytes (`application/octet-stream`), whole or from a range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binary(pub Vec<u8>);

impl ResponseBody for Binary {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Binary(bytes.to_vec()))
    }
}
