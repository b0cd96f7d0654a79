//! The image store's API (`baton image ...`): what is listed, imported and deleted.

use serde::{Deserialize, Serialize};

use super::payload::json_bodies;

/// What `baton image list` shows and `import` and `delete` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    /// `repository:tag`.
    pub name: String,
    /// Digest of the top manifest (an index for multi-platform images).
    pub digest: String,
    /// `os/arch[/variant]` of each image, sorted.
    pub platforms: Vec<String>,
    /// Bytes of every manifest and blob, each counted once.
    pub size: u64,
    pub creation_timestamp: String,
}

/// `DELETE /api/v1/images/NAME`: the image that was deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDeleted {
    pub deleted: ImageSummary,
}

json_bodies!(ImageSummary, ImageDeleted);
