//! A `ConfigMap` (`v1`): `data` (text) and `binaryData` (base64), bounded by Kubernetes'
//! 1 MiB per object and by the keys an agent takes ([`MAX_CONFIG_MAP_KEYS`]), both checked
//! here so that `apply` refuses what could never be sent to a node.

use std::collections::BTreeMap;

use baton_proto::MAX_CONFIG_MAP_KEYS;

use super::input::{InConfigMap, InMeta};
use super::validate::{grouped, invalid, object_meta, secret_key, secret_name, Invalid};
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
    key_count(input.data.len(), input.binary_data.len())?;
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
                 binaryData; must have at most {MAX_CONFIG_MAP_BYTES} bytes (1 MiB)",
                cm.metadata.name
            ),
        );
    }
    Ok(cm)
}

/// Refuses more keys than an agent takes (`data` and `binaryData` together), naming the
/// map that goes over: the node would otherwise refuse the ConfigMap long after `apply`.
fn key_count(data: usize, binary: usize) -> Result<(), Invalid> {
    let max = grouped(MAX_CONFIG_MAP_KEYS);
    if data > MAX_CONFIG_MAP_KEYS {
        return invalid(
            "data",
            format!("{} keys, at most {max} (the agent's limit)", grouped(data)),
        );
    }
    if data + binary > MAX_CONFIG_MAP_KEYS {
        return invalid(
            "binaryData",
            format!(
                "{} keys, {} with data's {}; at most {max} in data and binaryData together \
                 (the agent's limit)",
                grouped(binary),
                grouped(data + binary),
                grouped(data)
            ),
        );
    }
    Ok(())
}
