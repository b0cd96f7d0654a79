//! ConfigMaps in the core: apply (with `immutable` kept), and the events of a change.
//!
//! The object is stored as applied. Pods do not consume ConfigMaps yet (env and volumes
//! arrive with the wire change of issue 18), so nothing is sent to nodes on a change.

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::model::api;

use super::{new_uid, ApiError, Core, Tab};

impl Core {
    /// Refuses a change to the content of an immutable ConfigMap, as Kubernetes does.
    pub(super) fn check_config_map(&self, c: &api::ConfigMap) -> Result<(), ApiError> {
        let Some(old) = self.config_maps.get(&c.metadata.name) else {
            return Ok(());
        };
        if old.immutable && (old.data != c.data || old.binary_data != c.binary_data || !c.immutable)
        {
            return Err(ApiError::Conflict(format!(
                "configmap {:?} is immutable: its data cannot be changed; delete it and apply \
                 again",
                c.metadata.name
            )));
        }
        Ok(())
    }

    /// Stores a ConfigMap as given (its content replaces the old one).
    pub(super) fn apply_config_map(&mut self, mut c: api::ConfigMap) -> Applied {
        let name = c.metadata.name.clone();
        let action = match self.config_maps.get(&name) {
            None => {
                c.metadata.uid = new_uid();
                c.metadata.creation_timestamp = api::now_rfc3339();
                c.metadata.generation = 1;
                ApplyAction::Created
            }
            Some(old) => {
                if old.data == c.data
                    && old.binary_data == c.binary_data
                    && old.immutable == c.immutable
                    && old.metadata.labels == c.metadata.labels
                    && old.metadata.annotations == c.metadata.annotations
                {
                    return Applied {
                        kind: ResourceKind::ConfigMap,
                        name,
                        action: ApplyAction::Unchanged,
                    };
                }
                c.metadata.uid = old.metadata.uid.clone();
                c.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                c.metadata.generation = old.metadata.generation + 1;
                ApplyAction::Configured
            }
        };
        self.config_maps.insert(name.clone(), c);
        self.touch(Tab::ConfigMap, &name);
        Applied {
            kind: ResourceKind::ConfigMap,
            name,
            action,
        }
    }
}
