//! ConfigMaps on their way to nodes: [`ConfigMapPart`] and what its parts carry.

use serde::{Deserialize, Serialize};

use crate::{
    BString, BVec, ProtoError, CONFIG_MAP_PART_BYTES, MAX_CONFIG_MAP_KEYS,
    MAX_CONFIG_MAP_WIRE_BYTES,
};

/// One part of a ConfigMap's content. The `bytes` of parts `0..count`, concatenated, are
/// the postcard encoding of [`ConfigMapData`]; `digest` (the first 8 bytes of its SHA-256,
/// [`config_map_digest`]) names that content, so an agent assembles only parts of one
/// version and checks the whole before it uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMapPart {
    pub name: BString<253>,
    pub digest: u64,
    pub index: u16,
    pub count: u16,
    pub bytes: BVec<u8, CONFIG_MAP_PART_BYTES>,
    /// The term of the leader that sent it ([`crate::DesiredState::term`]): a deposed
    /// leader's late part could otherwise bring back an older content, which the leader
    /// believes the node no longer needs sent.
    pub term: u64,
}

/// A ConfigMap's `data` and `binaryData` together, in key order (a node needs no more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMapData {
    pub items: BVec<ConfigMapItem, MAX_CONFIG_MAP_KEYS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMapItem {
    pub key: BString<253>,
    pub value: BVec<u8, MAX_CONFIG_MAP_WIRE_BYTES>,
}

impl ConfigMapData {
    /// The parts `name`'s content travels in (at least one, also when it is empty).
    pub fn parts(&self, name: &BString<253>) -> Result<Vec<ConfigMapPart>, ProtoError> {
        let encoded = postcard::to_allocvec(self).map_err(ProtoError::Encode)?;
        let digest = config_map_digest(&encoded);
        let chunks: Vec<&[u8]> = if encoded.is_empty() {
            vec![&[]]
        } else {
            encoded.chunks(CONFIG_MAP_PART_BYTES).collect()
        };
        let count = u16::try_from(chunks.len()).map_err(|_| ProtoError::TooMany {
            max: u16::MAX as usize,
            got: chunks.len(),
        })?;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(ConfigMapPart {
                    name: name.clone(),
                    digest,
                    index: i as u16,
                    count,
                    bytes: BVec::from_vec(c.to_vec())?,
                    term: 0,
                })
            })
            .collect()
    }

    /// The content `parts` (all of one digest, in index order) carry, checked against it.
    pub fn assemble(parts: &[ConfigMapPart]) -> Result<Self, ProtoError> {
        let mut encoded = Vec::new();
        for p in parts {
            encoded.extend_from_slice(&p.bytes);
        }
        let digest = parts.first().map(|p| p.digest).unwrap_or_default();
        if config_map_digest(&encoded) != digest {
            return Err(ProtoError::Decode(postcard::Error::DeserializeBadEncoding));
        }
        postcard::from_bytes(&encoded).map_err(ProtoError::Decode)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|i| i.key.as_str() == key)
            .map(|i| &i.value[..])
    }
}

/// The digest a [`ConfigMapPart`] names its content by: SHA-256 of `encoded` (the
/// [`ConfigMapData`] encoding), first 8 bytes, big-endian.
pub fn config_map_digest(encoded: &[u8]) -> u64 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(encoded);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first)
}
