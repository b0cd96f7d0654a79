//! Namespaces: the `Namespace` object, and the qualified names namespaced objects are
//! keyed by inside the coordinator.
//!
//! A namespaced object of namespace `ns` and name `n` is kept (in memory, in the store,
//! in the names derived from it and in what an agent is sent) as `ns_n`, and as plain `n`
//! in `default`. Kubernetes names never contain `_` (RFC 1123), so a qualified name
//! cannot collide with a name of `default`, and everything Baton stored before
//! namespaces existed is `default`'s unchanged: nothing to migrate, and an upgraded agent
//! sees its `default` pods under exactly the names it had. Derived names inherit the
//! prefix (a Deployment `a_web`'s pods are `a_web-<hash>-<suffix>`, a CronJob's Jobs
//! `a_nightly-<minute>`), so they stay in their namespace without further bookkeeping.
//! The API shows names unqualified with `metadata.namespace` (`core/namespaces.rs`).

use serde::{Deserialize, Serialize};

use super::*;

/// The namespace of objects that name none; it always exists and cannot be deleted.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Between a namespace and a name in a qualified name; never part of either.
pub const NAMESPACE_SEPARATOR: char = '_';

/// The key of object `name` in `namespace` (see the module docs).
pub fn qualify(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT_NAMESPACE || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}{NAMESPACE_SEPARATOR}{name}")
    }
}

/// A qualified name's namespace and name.
pub fn split_qualified(key: &str) -> (&str, &str) {
    match key.split_once(NAMESPACE_SEPARATOR) {
        Some((ns, name)) => (ns, name),
        None => (DEFAULT_NAMESPACE, key),
    }
}

/// The namespace a qualified name is in.
pub fn namespace_of(key: &str) -> &str {
    split_qualified(key).0
}

/// A Kubernetes `Namespace` (`v1`). Deleting one deletes everything in it; until its pods
/// have left their nodes it is `Terminating` and takes no new objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NamespaceStatus,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespacePhase {
    #[default]
    Active,
    Terminating,
}

impl NamespacePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespacePhase::Active => "Active",
            NamespacePhase::Terminating => "Terminating",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    #[serde(default)]
    pub phase: NamespacePhase,
}

impl Namespace {
    /// `default`, as the API shows it: it always exists and is never stored.
    pub fn default_namespace() -> Self {
        Namespace {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            metadata: ObjectMeta {
                name: DEFAULT_NAMESPACE.into(),
                ..Default::default()
            },
            status: NamespaceStatus::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_stay_as_they_are_and_others_are_prefixed() {
        assert_eq!(qualify("default", "web"), "web");
        assert_eq!(qualify("team-a", "web"), "team-a_web");
        assert_eq!(
            split_qualified("web-5d9f-abcde"),
            ("default", "web-5d9f-abcde")
        );
        assert_eq!(
            split_qualified("team-a_web-5d9f-abcde"),
            ("team-a", "web-5d9f-abcde")
        );
        assert_eq!(namespace_of(&qualify("b", "x")), "b");
        // Derived names keep the prefix.
        assert_eq!(namespace_of(&format!("{}-abc", qualify("b", "x"))), "b");
    }
}
