//! Secrets: values as decoded bytes, base64 in JSON and YAML, never in `Debug`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// A Kubernetes `Secret` (`v1`). `data` holds the decoded bytes (`stringData` is merged
/// into it by the manifest parser); it serializes as base64, as in Kubernetes.
///
/// Its `Debug` shows key names and sizes only, so a value never lands in a log line.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(rename = "type", default)]
    pub type_: SecretType,
    #[serde(default, with = "base64_map")]
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Secret {
    /// Bytes of keys and values together, the size the secret is bounded by.
    pub fn size_bytes(&self) -> usize {
        self.data.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, usize> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type_", &self.type_)
            .field("data_sizes", &sizes)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretType {
    #[default]
    Opaque,
    /// Registry credentials for `imagePullSecrets`: one key, `.dockerconfigjson`.
    #[serde(rename = "kubernetes.io/dockerconfigjson")]
    DockerConfigJson,
}

impl SecretType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opaque => "Opaque",
            Self::DockerConfigJson => DOCKER_CONFIG_JSON_TYPE,
        }
    }
}

pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The key a `kubernetes.io/dockerconfigjson` secret must hold.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";

/// Standard base64 (RFC 4648, padded), as Kubernetes uses for `Secret.data`. Small and
/// local rather than a dependency: it is a dozen lines and only secrets use it.
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes padded standard base64; `None` on anything else (wrong length, stray
    /// characters, padding in the middle, non-zero trailing bits).
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.as_bytes();
        if s.len() % 4 != 0 {
            return None;
        }
        let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
        let mut out = Vec::with_capacity(s.len() / 4 * 3);
        let chunks = s.len() / 4;
        for (ci, chunk) in s.chunks(4).enumerate() {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && ci + 1 != chunks) {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                n = (n << 6) | value(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            let keep = 3 - pad;
            // Non-canonical encodings (bits set in the padding) are refused.
            if bytes[keep..].iter().any(|&b| b != 0) {
                return None;
            }
            out.extend_from_slice(&bytes[..keep]);
        }
        Some(out)
    }
}

pub(super) mod base64_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter()
            .map(|(k, v)| (k.as_str(), super::base64::encode(v)))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match super::base64::decode(&v) {
                Some(b) => Ok((k, b)),
                None => Err(serde::de::Error::custom(format!(
                    "data.{k}: invalid base64"
                ))),
            })
            .collect()
    }
}
