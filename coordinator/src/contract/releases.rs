//! Agent releases (`baton release ...`): the signed metadata a release travels with, and
//! what is listed, imported and deleted.

use serde::{Deserialize, Serialize};

use super::payload::{json_bodies, ResponseBody};

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

/// A release binary's bytes (`application/octet-stream`), whole or from a range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binary(pub Vec<u8>);

impl ResponseBody for Binary {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Binary(bytes.to_vec()))
    }
}
