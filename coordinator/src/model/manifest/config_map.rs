//! A `ConfigMap` (`v1`): `data` (text) and `binaryData` (base64), bounded by Kubernetes'
//! 1 MiB per object.

use std::collections::BTreeMap;

use super::input::{InConfigMap, InMeta};
use super::validate::{invalid, object_meta, secret_key, secret_name, Invalid};
use super::MAX_NAME_LEN;
use crate::model::api::{self, MAX_CONFIG_MAP_BYTES};

pub(super) fn config_map(input: InConfigMap) -> Result<api::ConfigMap, Invalid> {
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
    for k in input.data.keys() {
        secret_key(&format!("data.{k}"), k)?;
    }
    let mut binary_data = BTreeMap::new();
    for (k, v) in input.binary_data {
        let p = format!("binaryData.{k}");
        secret_key(&p, &k)?;
        if input.data.contains_key(&k) {
            return invalid(&p, format!("duplicate of key {k:?} in data"));
        }
        // YAML block scalars may wrap long base64 over lines.
        let compact: String = v.split_whitespace().collect();
        let bytes = api::base64::decode(&compact).ok_or_else(|| (p, "invalid base64".into()))?;
        binary_data.insert(k, bytes);
    }
    let cm = api::ConfigMap {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        metadata,
        data: input.data,
        binary_data,
        immutable: input.immutable.unwrap_or(false),
    };
    let size = cm.size_bytes();
    if size > MAX_CONFIG_MAP_BYTES {
        return invalid(
            "data",
            format!(
                "ConfigMap {:?} is too long: {size} bytes of keys and values in data and \
                 binaryData; at most {MAX_CONFIG_MAP_BYTES} (1 MiB) are allowed",
                cm.metadata.name
            ),
        );
    }
    Ok(cm)
}
