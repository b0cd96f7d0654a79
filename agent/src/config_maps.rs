//! The device's ConfigMaps: assembled from [`ConfigMapPart`]s, persisted, and read by pods.
//!
//! The coordinator sends a node the ConfigMaps its pods reference, apart from the desired
//! state (one may be 1 MiB; a desired state is at most 256 KiB), each split into parts
//! named by the content's digest. Parts of one digest are collected until all have come,
//! then the whole is checked against the digest and replaces the held version. Each
//! complete version is persisted (`<data-dir>/configmaps/<name>`, with the one atomic
//! writer, [`crate::durable::write`]) before it is used, so pods restart from it after a
//! reboot without the network. A ConfigMap that no desired pod references any more is
//! dropped with the next desired state ([`DeviceConfigMaps::retain`]).
//!
//! Parts of an older or newer version that never completes are dropped when a part of
//! another digest of the same name arrives: only the latest version sent matters.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use baton_proto::{config_map_digest, ConfigMapData, ConfigMapPart, PodSpec};
use tracing::{info, warn};

use crate::volumes::ConfigMapSource;

/// The parts of one ConfigMap version in transit: its digest, and the parts by index.
type InTransit = (u64, BTreeMap<u16, ConfigMapPart>);

/// Held ConfigMaps and parts in transit. Cheap to clone: clones share state.
#[derive(Clone, Default)]
pub struct DeviceConfigMaps {
    /// Where complete versions are persisted; `None` keeps them in memory only (tests).
    dir: Option<PathBuf>,
    held: Arc<RwLock<BTreeMap<String, (u64, ConfigMapData)>>>,
    /// By name: the digest being assembled and its parts by index.
    partial: Arc<RwLock<BTreeMap<String, InTransit>>>,
}

impl std::fmt::Debug for DeviceConfigMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfigMaps")
            .field("dir", &self.dir)
            .field("held", &self.names())
            .finish()
    }
}

/// A name usable as a file name: the coordinator only sends DNS subdomain names, but a
/// file name from the wire is checked anyway.
fn file_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl DeviceConfigMaps {
    /// The ConfigMaps persisted under `dir` (made if missing); unreadable ones are skipped.
    pub fn open(dir: &Path) -> Self {
        let me = Self {
            dir: Some(dir.to_owned()),
            ..Self::default()
        };
        if let Err(e) = fs::create_dir_all(dir) {
            warn!(dir = %dir.display(), error = %e, "cannot make the configmap directory");
        }
        let mut held = BTreeMap::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !file_name_ok(&name) {
                continue;
            }
            let loaded = fs::read(entry.path()).ok().and_then(|bytes| {
                let data: ConfigMapData = postcard::from_bytes(&bytes).ok()?;
                Some((config_map_digest(&bytes), data))
            });
            match loaded {
                Some(v) => {
                    held.insert(name, v);
                }
                None => warn!(configmap = name, "unreadable persisted configmap; skipped"),
            }
        }
        *me.held.write().unwrap_or_else(PoisonError::into_inner) = held;
        me
    }

    /// Takes one part. Returns the name when it completed a new version (persisted and in
    /// use from now on).
    pub fn receive(&self, part: ConfigMapPart) -> Option<String> {
        let name = part.name.to_string();
        if !file_name_ok(&name) || part.count == 0 || part.index >= part.count {
            warn!(configmap = name, "malformed configmap part; dropped");
            return None;
        }
        if self.digest(&name) == Some(part.digest) {
            return None;
        }
        let parts = {
            let mut partial = self.partial.write().unwrap_or_else(PoisonError::into_inner);
            let slot = partial
                .entry(name.clone())
                .or_insert_with(|| (part.digest, BTreeMap::new()));
            if slot.0 != part.digest {
                *slot = (part.digest, BTreeMap::new());
            }
            let count = part.count;
            slot.1.insert(part.index, part);
            if slot.1.len() < count as usize {
                return None;
            }
            let parts: Vec<ConfigMapPart> = slot.1.values().cloned().collect();
            partial.remove(&name);
            parts
        };
        let data = match ConfigMapData::assemble(&parts) {
            Ok(d) => d,
            Err(e) => {
                warn!(configmap = name, error = %e, "configmap parts do not match their digest; dropped");
                return None;
            }
        };
        let digest = parts[0].digest;
        if let Some(dir) = &self.dir {
            let bytes = parts.iter().flat_map(|p| p.bytes.iter().copied());
            let bytes: Vec<u8> = bytes.collect();
            // Not secret: readable like the files it becomes.
            if let Err(e) = crate::durable::write(&dir.join(&name), &bytes, 0o644) {
                warn!(configmap = name, error = %e, "cannot persist configmap; used from memory");
            }
        }
        info!(configmap = name, digest, "configmap received");
        self.held
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), (digest, data));
        Some(name)
    }

    /// Holds `items` as ConfigMap `name` (tests, and the agent's own unit tests elsewhere).
    pub fn insert(&self, name: &str, items: &[(&str, &[u8])]) {
        let data = ConfigMapData {
            items: baton_proto::BVec::from_vec(
                items
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(baton_proto::ConfigMapItem {
                            key: baton_proto::BString::new(*k).ok()?,
                            value: baton_proto::BVec::from_vec(v.to_vec()).ok()?,
                        })
                    })
                    .collect(),
            )
            .unwrap_or_default(),
        };
        let Ok(name) = baton_proto::BString::new(name) else {
            return;
        };
        for p in data.parts(&name).unwrap_or_default() {
            self.receive(p);
        }
    }

    /// Forgets (and removes from disk) every ConfigMap not in `keep`.
    pub fn retain(&self, keep: &BTreeSet<String>) {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<String> = held
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            held.remove(&name);
            if let Some(dir) = &self.dir {
                let _ = fs::remove_file(dir.join(&name));
            }
        }
    }

    fn digest(&self, name: &str) -> Option<u64> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|(d, _)| *d)
    }

    /// Names of the ConfigMaps held.
    pub fn names(&self) -> Vec<String> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

impl ConfigMapSource for DeviceConfigMaps {
    fn config_map(&self, name: &str) -> Option<ConfigMapData> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|(_, d)| d.clone())
    }
}

/// The ConfigMaps `pod` references (env and volumes).
pub fn references(pod: &PodSpec) -> BTreeSet<String> {
    use baton_proto::{EnvValue, VolumeSource};
    let mut out = BTreeSet::new();
    for c in pod.init_containers.iter().chain(pod.containers.iter()) {
        for e in c.env.iter() {
            match &e.value {
                EnvValue::ConfigMapKey { config_map, .. }
                | EnvValue::ConfigMapAll { config_map, .. } => {
                    out.insert(config_map.to_string());
                }
                _ => {}
            }
        }
    }
    for v in pod.volumes.iter() {
        if let VolumeSource::ConfigMap { name, .. } = &v.source {
            out.insert(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, BVec, ConfigMapItem};

    fn data(items: &[(&str, &[u8])]) -> ConfigMapData {
        ConfigMapData {
            items: BVec::from_vec(
                items
                    .iter()
                    .map(|(k, v)| ConfigMapItem {
                        key: BString::new(*k).unwrap(),
                        value: BVec::from_vec(v.to_vec()).unwrap(),
                    })
                    .collect(),
            )
            .unwrap(),
        }
    }

    #[test]
    fn parts_assemble_in_any_order_persist_and_load_again() {
        let dir = tempfile::tempdir().unwrap();
        let cms = DeviceConfigMaps::open(dir.path());
        let big = data(&[("a", &vec![b'x'; 500 * 1024]), ("b", b"small")]);
        let mut parts = big.parts(&BString::new("app").unwrap()).unwrap();
        assert_eq!(parts.len(), 3);
        parts.reverse();
        let last = parts.pop().unwrap();
        for p in parts {
            assert_eq!(cms.receive(p), None, "incomplete");
        }
        assert_eq!(cms.config_map("app"), None);
        assert_eq!(cms.receive(last.clone()), Some("app".into()));
        assert_eq!(cms.config_map("app"), Some(big.clone()));
        // The same version again changes nothing.
        assert_eq!(cms.receive(last), None);
        // After a restart, from disk.
        let again = DeviceConfigMaps::open(dir.path());
        assert_eq!(again.config_map("app"), Some(big));
        again.retain(&BTreeSet::new());
        assert!(DeviceConfigMaps::open(dir.path()).names().is_empty());
    }

    #[test]
    fn a_newer_version_replaces_parts_in_transit_and_tampering_is_refused() {
        let cms = DeviceConfigMaps::default();
        let name = BString::new("c").unwrap();
        let v1 = data(&[("k", &vec![b'1'; 300 * 1024])])
            .parts(&name)
            .unwrap();
        let v2 = data(&[("k", b"2")]).parts(&name).unwrap();
        assert_eq!(cms.receive(v1[0].clone()), None);
        assert_eq!(cms.receive(v2[0].clone()), Some("c".into()));
        // v1's rest starts over and never completes without its first part.
        assert_eq!(cms.receive(v1[1].clone()), None);
        assert_eq!(cms.config_map("c").unwrap().get("k"), Some(&b"2"[..]));
        let mut bad = data(&[("k", b"3")]).parts(&name).unwrap();
        let mut bytes = bad[0].bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        bad[0].bytes = BVec::from_vec(bytes).unwrap();
        assert_eq!(cms.receive(bad[0].clone()), None);
        assert_eq!(cms.config_map("c").unwrap().get("k"), Some(&b"2"[..]));
    }
}
