//! Pure facts about Secrets that both the core (which withholds a pod until its secrets can
//! be sent) and `crate::security::secrets` (which seals them) need: which secrets a pod
//! references, and the bytes a secret is sealed as.

use std::collections::{BTreeMap, BTreeSet};

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

/// The secrets a pod references, each with the keys it needs by name (env
/// `secretKeyRef`s); volumes and `imagePullSecrets` need the secret only.
pub fn references(spec: &api::PodSpec) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in spec.init_containers.iter().chain(&spec.containers) {
        for e in &c.env {
            if let Some(from) = &e.value_from {
                out.entry(from.secret_key_ref.name.clone())
                    .or_default()
                    .insert(from.secret_key_ref.key.clone());
            }
        }
    }
    for v in &spec.volumes {
        if let api::VolumeSource::Secret { secret_name } = &v.source {
            out.entry(secret_name.clone()).or_default();
        }
    }
    for r in &spec.image_pull_secrets {
        out.entry(r.name.clone()).or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec(yaml: &str) -> api::PodSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn references_cover_env_volumes_and_pull_secrets() {
        let refs = references(&pod_spec(
            r#"
containers:
- name: c
  image: busybox
  env:
  - name: PW
    valueFrom: {secretKeyRef: {name: db, key: password}}
volumes:
- name: v
  secret: {secretName: files}
imagePullSecrets: [{name: regcred}]
"#,
        ));
        assert_eq!(
            refs.keys().cloned().collect::<Vec<_>>(),
            vec!["db", "files", "regcred"]
        );
        assert!(refs["db"].contains("password"));
    }
}
