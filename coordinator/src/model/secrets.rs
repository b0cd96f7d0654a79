//! Which secrets a pod references: what the core withholds a pod for until its secrets
//! can be sent. (The bytes a secret is sealed as are wire: `crate::model::wire`.)

use std::collections::{BTreeMap, BTreeSet};

use crate::model::api;

/// The secrets a pod references, each with the keys it needs by name (env
/// `secretKeyRef`s); volumes and `imagePullSecrets` need the secret only.
pub fn references(spec: &api::PodSpec) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in spec.init_containers.iter().chain(&spec.containers) {
        for e in &c.env {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                out.entry(r.name.clone()).or_default().insert(r.key.clone());
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

/// The ConfigMaps a pod references (env `configMapKeyRef`, `envFrom`, `configMap`
/// volumes): what its node is sent alongside its desired state.
pub fn config_map_references(spec: &api::PodSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in spec.init_containers.iter().chain(&spec.containers) {
        for e in &c.env {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.config_map_key_ref.as_ref())
            {
                out.insert(r.name.clone());
            }
        }
        for f in &c.env_from {
            out.insert(f.config_map_ref.name.clone());
        }
    }
    for v in &spec.volumes {
        if let api::VolumeSource::ConfigMap { name, .. } = &v.source {
            out.insert(name.clone());
        }
    }
    out
}

/// Rewrites every Secret and ConfigMap name `spec` references with `f`: how a pod's
/// references are kept to its own namespace (qualified on apply, shown unqualified).
pub fn map_references(spec: &mut api::PodSpec, f: impl Fn(&str) -> String) {
    for c in spec.init_containers.iter_mut().chain(&mut spec.containers) {
        for e in &mut c.env {
            if let Some(from) = e.value_from.as_mut() {
                if let Some(r) = from.secret_key_ref.as_mut() {
                    r.name = f(&r.name);
                }
                if let Some(r) = from.config_map_key_ref.as_mut() {
                    r.name = f(&r.name);
                }
            }
        }
        for e in &mut c.env_from {
            e.config_map_ref.name = f(&e.config_map_ref.name);
        }
    }
    for v in &mut spec.volumes {
        match &mut v.source {
            api::VolumeSource::Secret { secret_name } => *secret_name = f(secret_name),
            api::VolumeSource::ConfigMap { name, .. } => *name = f(name),
            _ => {}
        }
    }
    for r in &mut spec.image_pull_secrets {
        r.name = f(&r.name);
    }
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
