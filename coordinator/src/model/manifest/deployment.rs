//! A `Deployment` (`apps/v1`): its spec, selector, template and rollout strategy.

use serde_yaml_ng::Value;

use super::input::{InDeployment, InSelector, InStrategy, InTemplate};
use super::pod::pod_spec;
use super::validate::{annotations, invalid, labels, object_meta, Invalid};
use super::{MAX_DEPLOYMENT_NAME_LEN, MAX_REPLICAS};
use crate::model::api::{self, RestartPolicy, POD_TEMPLATE_HASH_LABEL};

pub(super) fn deployment(input: InDeployment) -> Result<api::Deployment, Invalid> {
    let metadata = object_meta(input.metadata, MAX_DEPLOYMENT_NAME_LEN)?;
    let spec = input.spec;
    let replicas = spec.replicas.unwrap_or(1);
    if !(0..=MAX_REPLICAS).contains(&replicas) {
        return invalid(
            "spec.replicas",
            format!("must be between 0 and {MAX_REPLICAS}, got {replicas}"),
        );
    }
    let (selector, template) = selected_template(spec.selector, spec.template)?;
    let strategy = strategy(spec.strategy.unwrap_or_default())?;
    let revision_history_limit = revision_history_limit(spec.revision_history_limit)?;
    if template.spec.restart_policy != RestartPolicy::Always {
        return invalid(
            "spec.template.spec.restartPolicy",
            format!(
                "must be Always for a Deployment, got {:?}",
                template.spec.restart_policy
            ),
        );
    }
    Ok(api::Deployment {
        api_version: "apps/v1".to_string(),
        kind: "Deployment".to_string(),
        metadata,
        spec: api::DeploymentSpec {
            replicas: replicas as u32, // within 0..=MAX_REPLICAS, checked above
            selector,
            template,
            strategy,
            revision_history_limit,
        },
        status: api::DeploymentStatus::default(),
    })
}

/// A controller's `selector` and pod `template`, checked together: the selector must be
/// given and match the template's labels, and neither may use the label Baton sets.
pub(super) fn selected_template(
    selector: Option<InSelector>,
    template: InTemplate,
) -> Result<(api::LabelSelector, api::PodTemplateSpec), Invalid> {
    let Some(selector) = selector else {
        return invalid("spec.selector", "required");
    };
    if selector.match_labels.is_empty() {
        return invalid("spec.selector.matchLabels", "must not be empty");
    }
    labels("spec.selector.matchLabels", &selector.match_labels)?;
    let template_meta = template.metadata;
    labels("spec.template.metadata.labels", &template_meta.labels)?;
    annotations(
        "spec.template.metadata.annotations",
        &template_meta.annotations,
    )?;
    for (path, map) in [
        ("spec.selector.matchLabels", &selector.match_labels),
        ("spec.template.metadata.labels", &template_meta.labels),
    ] {
        if map.contains_key(POD_TEMPLATE_HASH_LABEL) {
            return invalid(
                format!("{path}.{POD_TEMPLATE_HASH_LABEL}"),
                "label is reserved: Baton sets it on the pods it creates",
            );
        }
    }
    if selector
        .match_labels
        .iter()
        .any(|(k, v)| template_meta.labels.get(k) != Some(v))
    {
        return invalid(
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        );
    }
    let pod_spec = pod_spec("spec.template.spec", template.spec)?;
    Ok((
        api::LabelSelector {
            match_labels: selector.match_labels,
        },
        api::PodTemplateSpec {
            metadata: api::TemplateMeta {
                labels: template_meta.labels,
                annotations: template_meta.annotations,
            },
            spec: pod_spec,
        },
    ))
}

pub(super) fn revision_history_limit(n: Option<i64>) -> Result<u32, Invalid> {
    match n {
        None => Ok(api::DEFAULT_REVISION_HISTORY_LIMIT),
        Some(n) => u32::try_from(n).map_err(|_| {
            (
                "spec.revisionHistoryLimit".to_string(),
                format!("must be between 0 and {}, got {n}", u32::MAX),
            )
        }),
    }
}

/// A Deployment strategy with Kubernetes' defaults and validation rules.
fn strategy(s: InStrategy) -> Result<api::DeploymentStrategy, Invalid> {
    let path = "spec.strategy.rollingUpdate";
    match s.type_.unwrap_or_default() {
        api::StrategyType::Recreate => {
            if s.rolling_update.is_some() {
                return invalid(
                    path,
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
            Ok(api::DeploymentStrategy {
                type_: api::StrategyType::Recreate,
                rolling_update: None,
            })
        }
        api::StrategyType::RollingUpdate => {
            let ru = s.rolling_update.unwrap_or_default();
            let default = api::RollingUpdate::default();
            let max_surge = int_or_percent(&format!("{path}.maxSurge"), ru.max_surge)?
                .unwrap_or(default.max_surge);
            let max_unavailable =
                int_or_percent(&format!("{path}.maxUnavailable"), ru.max_unavailable)?
                    .unwrap_or(default.max_unavailable);
            if matches!(max_unavailable, api::IntOrPercent::Percent(p) if p > 100) {
                return invalid(
                    format!("{path}.maxUnavailable"),
                    "must not be greater than 100%",
                );
            }
            if max_surge.is_zero() && max_unavailable.is_zero() {
                return invalid(
                    format!("{path}.maxUnavailable"),
                    "may not be 0 when `maxSurge` is 0",
                );
            }
            Ok(api::DeploymentStrategy {
                type_: api::StrategyType::RollingUpdate,
                rolling_update: Some(api::RollingUpdate {
                    max_surge,
                    max_unavailable,
                }),
            })
        }
    }
}

/// Kubernetes' IntOrString for `maxSurge`/`maxUnavailable`: a non-negative integer or a
/// percentage string such as `25%`.
pub(super) fn int_or_percent(
    path: &str,
    v: Option<Value>,
) -> Result<Option<api::IntOrPercent>, Invalid> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if i < 0 => {
                invalid(path, format!("must be greater than or equal to 0, got {i}"))
            }
            Some(i) => u32::try_from(i)
                .map(|i| Some(api::IntOrPercent::Int(i)))
                .or_else(|_| invalid(path, format!("must be at most {}, got {i}", u32::MAX))),
            None => invalid(path, format!("must be an integer or a percentage, got {n}")),
        },
        Some(Value::String(text)) => match api::IntOrPercent::parse_percent(&text) {
            Some(p) => Ok(Some(p)),
            None => invalid(
                path,
                format!(
                    "{text:?}: a valid percent string must be a numeric string followed by an \
                     ending '%' (e.g. '1%' or '93%')"
                ),
            ),
        },
        Some(other) => invalid(
            path,
            format!("must be an integer or a percentage, got {other:?}"),
        ),
    }
}
