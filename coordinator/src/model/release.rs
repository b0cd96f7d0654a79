//! An imported agent release as the coordinator keeps it: the index row of one signed
//! binary (the bytes are a content-addressed file, see `crate::registry`).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use baton_proto::{BString, BVec, ProtoError, Release};

/// One row of `Table::Releases`, keyed by [`ReleaseRecord::digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRecord {
    /// Semantic version, e.g. `0.2.1`.
    pub version: String,
    /// Rust target triple, e.g. `aarch64-unknown-linux-musl`.
    pub target: String,
    /// The newest protocol version the binary speaks.
    pub protocol: u16,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// The release key's Ed25519 signature (base64) over `baton_proto::release::signing_bytes`.
    pub signature: String,
    /// When it was imported (RFC 3339).
    pub imported_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseRecordError {
    #[error("release field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

impl ReleaseRecord {
    /// `sha256:<hex>`, its key and its name in paths.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }

    /// The wire form a node checks against its pinned release key.
    pub fn to_wire(&self) -> Result<Release, ReleaseRecordError> {
        let sha: [u8; 32] = hex::decode(&self.sha256)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ReleaseRecordError::Field {
                field: "sha256",
                reason: "not 64 hex digits".into(),
            })?;
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.signature)
                .map_err(|e| ReleaseRecordError::Field {
                    field: "signature",
                    reason: e.to_string(),
                })?;
        Ok(Release {
            version: BString::new(self.version.clone())?,
            target: BString::new(self.target.clone())?,
            protocol: self.protocol,
            size: self.size,
            sha256: sha,
            signature: BVec::from_vec(sig)?,
        })
    }
}

/// The imported releases, as the rollout controller reads them. Implemented by
/// `crate::registry::Releases`, the owner of `Table::Releases`, and handed to the core.
pub trait ReleaseIndex: Send + Sync {
    fn releases(&self) -> Vec<ReleaseRecord>;
}

/// No releases: a core built without a registry (tests of other things).
pub struct NoReleases;

impl ReleaseIndex for NoReleases {
    fn releases(&self) -> Vec<ReleaseRecord> {
        Vec::new()
    }
}

/// Which version each rollout installs (version -> rollout name), kept by the core (the
/// owner of `Table::AgentUpdates`) and read by the release store, which refuses to delete
/// a release a rollout names.
#[derive(Debug, Clone, Default)]
pub struct RolloutVersions(Arc<RwLock<BTreeMap<String, String>>>);

impl RolloutVersions {
    pub fn set(&self, versions: BTreeMap<String, String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = versions;
    }

    /// The rollout that names `version`, if one does.
    pub fn naming(&self, version: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(version)
            .cloned()
    }
}
