//! A `DaemonSet` (`apps/v1`): selector, template and update strategy.

use super::deployment::{int_or_percent, revision_history_limit, selected_template};
use super::input::{InDaemonSet, InDaemonSetStrategy};
use super::validate::{invalid, object_meta, Invalid};
use super::MAX_DAEMON_SET_NAME_LEN;
use crate::model::api::{self, RestartPolicy};

pub(super) fn daemon_set(input: InDaemonSet) -> Result<api::DaemonSet, Invalid> {
    let metadata = object_meta(input.metadata, MAX_DAEMON_SET_NAME_LEN)?;
    let spec = input.spec;
    let (selector, template) = selected_template(spec.selector, spec.template)?;
    let update_strategy = update_strategy(spec.update_strategy.unwrap_or_default())?;
    let revision_history_limit = revision_history_limit(spec.revision_history_limit)?;
    if template.spec.restart_policy != RestartPolicy::Always {
        return invalid(
            "spec.template.spec.restartPolicy",
            format!(
                "must be Always for a DaemonSet, got {:?}",
                template.spec.restart_policy
            ),
        );
    }
    if template.spec.node_name.is_some() {
        return invalid(
            "spec.template.spec.nodeName",
            "a DaemonSet places its pods itself",
        );
    }
    Ok(api::DaemonSet {
        api_version: "apps/v1".to_string(),
        kind: "DaemonSet".to_string(),
        metadata,
        spec: api::DaemonSetSpec {
            selector,
            template,
            update_strategy,
            revision_history_limit,
        },
        status: api::DaemonSetStatus::default(),
    })
}

/// Kubernetes' DaemonSet defaults (maxUnavailable 1, maxSurge 0) and rules: exactly one
/// of the two may be zero at most, and `rollingUpdate` only with `RollingUpdate`.
fn update_strategy(s: InDaemonSetStrategy) -> Result<api::DaemonSetUpdateStrategy, Invalid> {
    let path = "spec.updateStrategy.rollingUpdate";
    match s.type_.unwrap_or_default() {
        api::DaemonSetStrategyType::OnDelete => {
            if s.rolling_update.is_some() {
                return invalid(
                    path,
                    "may not be specified when strategy `type` is 'OnDelete'",
                );
            }
            Ok(api::DaemonSetUpdateStrategy {
                type_: api::DaemonSetStrategyType::OnDelete,
                rolling_update: None,
            })
        }
        api::DaemonSetStrategyType::RollingUpdate => {
            let ru = s.rolling_update.unwrap_or_default();
            let max_surge = int_or_percent(&format!("{path}.maxSurge"), ru.max_surge)?
                .unwrap_or(api::IntOrPercent::Int(0));
            let max_unavailable =
                int_or_percent(&format!("{path}.maxUnavailable"), ru.max_unavailable)?
                    .unwrap_or(api::IntOrPercent::Int(1));
            for (field, v) in [("maxSurge", max_surge), ("maxUnavailable", max_unavailable)] {
                if matches!(v, api::IntOrPercent::Percent(p) if p > 100) {
                    return invalid(format!("{path}.{field}"), "must not be greater than 100%");
                }
            }
            if max_surge.is_zero() == max_unavailable.is_zero() {
                return invalid(
                    format!("{path}.maxUnavailable"),
                    "exactly one of `maxSurge` and `maxUnavailable` must be 0 for a DaemonSet",
                );
            }
            Ok(api::DaemonSetUpdateStrategy {
                type_: api::DaemonSetStrategyType::RollingUpdate,
                rolling_update: Some(api::RollingUpdate {
                    max_surge,
                    max_unavailable,
                }),
            })
        }
    }
}
