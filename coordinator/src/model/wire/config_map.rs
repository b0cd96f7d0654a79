//! ConfigMaps down to nodes: which ones a node's pods use, and the content they are sent
//! as ([`baton_proto::ConfigMapData`], split into parts by the proto crate).

use std::collections::BTreeSet;

use baton_proto as proto;
use baton_proto::BVec;

use super::{bstr, WireError};
use crate::model::api;

/// The ConfigMaps a node's pods (as sent) reference.
pub fn config_map_names<'a>(
    pods: impl IntoIterator<Item = &'a proto::PodSpec>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for p in pods {
        for c in p.init_containers.iter().chain(p.containers.iter()) {
            for e in c.env.iter() {
                match &e.value {
                    proto::EnvValue::ConfigMapKey { config_map, .. }
                    | proto::EnvValue::ConfigMapAll { config_map, .. } => {
                        names.insert(config_map.as_str().to_owned());
                    }
                    _ => {}
                }
            }
        }
        for v in p.volumes.iter() {
            if let proto::VolumeSource::ConfigMap { name, .. } = &v.source {
                names.insert(name.as_str().to_owned());
            }
        }
    }
    names
}

/// A ConfigMap's `data` and `binaryData` together, in key order.
pub fn config_map_data(cm: &api::ConfigMap) -> Result<proto::ConfigMapData, WireError> {
    let name = &cm.metadata.name;
    let text = cm.data.iter().map(|(k, v)| (k, v.as_bytes()));
    let binary = cm.binary_data.iter().map(|(k, v)| (k, v.as_slice()));
    let mut all: Vec<(&String, &[u8])> = text.chain(binary).collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let items = all
        .into_iter()
        .map(|(k, v)| {
            Ok(proto::ConfigMapItem {
                key: bstr(name, "data", k)?,
                value: BVec::from_vec(v.to_vec())
                    .map_err(|e| super::field_err(name, format!("data.{k}"), e))?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(proto::ConfigMapData {
        items: BVec::from_vec(items).map_err(|e| super::field_err(name, "data", e))?,
    })
}
