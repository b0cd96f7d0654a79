//! Secrets between domain and wire: the bytes a secret is sealed as, and which secrets a
//! node's wire-form pods need.

use std::collections::BTreeSet;

use baton_proto::{self as proto, BString, BVec};

use crate::model::api;

/// The postcard bytes of a secret's [`proto::SecretData`]: what gets sealed. The secrets'
/// half of the domain-to-wire conversion of [`crate::model::wire`].
pub fn encode_data(secret: &api::Secret) -> Result<Vec<u8>, proto::ProtoError> {
    let items = secret
        .data
        .iter()
        .map(|(k, v)| {
            Ok(proto::SecretItem {
                key: BString::new(k.as_str())?,
                value: BVec::from_vec(v.clone())?,
            })
        })
        .collect::<Result<Vec<_>, proto::ProtoError>>()?;
    let data = proto::SecretData {
        items: BVec::from_vec(items)?,
    };
    postcard::to_allocvec(&data).map_err(proto::ProtoError::Encode)
}

/// The names of the secrets `pods` (already in wire form) reference: env secret keys,
/// secret volumes and image pull secrets.
pub fn secret_names<'a>(pods: impl IntoIterator<Item = &'a proto::PodSpec>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for p in pods {
        for c in p.init_containers.iter().chain(p.containers.iter()) {
            for e in c.env.iter() {
                if let proto::EnvValue::SecretKey { secret, .. } = &e.value {
                    names.insert(secret.as_str().to_owned());
                }
            }
        }
        for v in p.volumes.iter() {
            if let proto::VolumeSource::Secret { secret_name } = &v.source {
                names.insert(secret_name.as_str().to_owned());
            }
        }
        names.extend(p.image_pull_secrets.iter().map(|n| n.as_str().to_owned()));
    }
    names
}
