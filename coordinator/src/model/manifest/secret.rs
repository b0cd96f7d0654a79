//! A `Secret` (`v1`): `data` and `stringData` merged, bounded by what one sealed secret
//! carries to a node.

use std::collections::BTreeMap;

use super::input::{InMeta, InSecret};
use super::validate::{invalid, object_meta, secret_key, secret_name, Invalid};
use super::{MAX_NAME_LEN, MAX_SECRET_KEYS};
use crate::model::api;

/// Bytes a sealed secret adds to its content: the X25519 key (32), the AEAD tag (16), and
/// postcard's length prefixes (a count, and two varints of at most 3 bytes per item).
pub fn sealed_overhead(items: usize) -> usize {
    32 + 16 + 2 + items * 6
}

pub(super) fn secret(input: InSecret) -> Result<api::Secret, Invalid> {
    let meta = input.metadata;
    let Some(name) = meta.name.clone() else {
        return invalid("metadata.name", "required");
    };
    secret_name("metadata.name", &name)?;
    let metadata = object_meta(
        InMeta {
            name: Some("x".into()),
            ..meta
        },
        MAX_NAME_LEN,
    )
    .map(|m| api::ObjectMeta { name, ..m })?;
    let type_ = match input.type_.as_deref() {
        None | Some("Opaque") => api::SecretType::Opaque,
        Some(api::DOCKER_CONFIG_JSON_TYPE) => api::SecretType::DockerConfigJson,
        Some(other) => {
            return invalid(
                "type",
                format!(
                    "{other:?} is not supported by Baton; supported: Opaque, {}",
                    api::DOCKER_CONFIG_JSON_TYPE
                ),
            )
        }
    };
    let mut data = BTreeMap::new();
    for (k, v) in input.data {
        let p = format!("data.{k}");
        secret_key(&p, &k)?;
        let bytes = api::base64::decode(v.trim())
            .ok_or_else(|| (p.clone(), "invalid base64".to_owned()))?;
        data.insert(k, bytes);
    }
    // As in Kubernetes, `stringData` is merged into `data` and wins on a shared key.
    for (k, v) in input.string_data {
        secret_key(&format!("stringData.{k}"), &k)?;
        data.insert(k, v.into_bytes());
    }
    if data.len() > MAX_SECRET_KEYS {
        return invalid(
            "data",
            format!(
                "at most {MAX_SECRET_KEYS} keys are supported, got {}",
                data.len()
            ),
        );
    }
    let secret = api::Secret {
        api_version: "v1".into(),
        kind: "Secret".into(),
        metadata,
        type_,
        data,
    };
    let size = secret.size_bytes() + sealed_overhead(secret.data.len());
    if size > baton_proto::MAX_SEALED_BYTES {
        return invalid(
            "data",
            format!(
                "the secret is {size} bytes (keys, values and encryption overhead); at most {} \
                 are supported",
                baton_proto::MAX_SEALED_BYTES
            ),
        );
    }
    if type_ == api::SecretType::DockerConfigJson {
        let key = api::DOCKER_CONFIG_JSON_KEY;
        let Some(json) = secret.data.get(key) else {
            return invalid(
                format!("data[{key}]"),
                format!("required for type {}", api::DOCKER_CONFIG_JSON_TYPE),
            );
        };
        match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return invalid(format!("data[{key}]"), "must be a JSON object"),
            Err(e) => return invalid(format!("data[{key}]"), format!("invalid JSON: {e}")),
        }
    }
    Ok(secret)
}
