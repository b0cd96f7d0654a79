//! ConfigMaps: configuration that is not secret, shown and stored in the clear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// The most bytes one ConfigMap holds (keys and values of `data` and `binaryData`
/// together), Kubernetes' 1 MiB.
pub const MAX_CONFIG_MAP_BYTES: usize = 1024 * 1024;

/// A Kubernetes `ConfigMap` (`v1`). `binaryData` holds decoded bytes and serializes as
/// base64, as in Kubernetes; a key is in `data` or in `binaryData`, never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "super::secret::base64_map"
    )]
    pub binary_data: BTreeMap<String, Vec<u8>>,
    /// Once set, `data` and `binaryData` cannot change (delete and re-create instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
}

impl ConfigMap {
    /// Bytes of keys and values of `data` and `binaryData` together, the size the object
    /// is bounded by.
    pub fn size_bytes(&self) -> usize {
        let text: usize = self.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        let binary: usize = self
            .binary_data
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        text + binary
    }

    /// Keys of `data` and `binaryData` together (`DATA` in `get configmaps`).
    pub fn key_count(&self) -> usize {
        self.data.len() + self.binary_data.len()
    }
}
