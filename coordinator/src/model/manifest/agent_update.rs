//! An `AgentUpdate` (`baton.io/v1alpha1`): a rollout of an agent version
//! (`crate::decide::agent_update`).

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::input::InMeta;
use super::validate::{invalid, object_meta, Invalid};
use super::MAX_NAME_LEN;
use crate::model::api::{self, IntOrPercent};

/// The longest version the wire carries (`baton_proto::Release::version`).
const MAX_VERSION_LEN: usize = 32;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InAgentUpdate {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    pub(super) spec: InAgentUpdateSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InAgentUpdateSpec {
    version: Option<String>,
    #[serde(default)]
    selector: InUpdateSelector,
    canary: Option<InCanary>,
    /// IntOrString, checked by hand.
    max_unavailable: Option<Value>,
    /// `20%` (or 20).
    failure_budget: Option<Value>,
    health_window_seconds: Option<i64>,
    deadline_seconds: Option<i64>,
    #[serde(default)]
    allow_downgrade: bool,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InUpdateSelector {
    #[serde(default)]
    match_labels: std::collections::BTreeMap<String, String>,
    arch: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InCanary {
    nodes: Option<i64>,
    #[serde(default)]
    pause: bool,
    soak_seconds: Option<i64>,
}

/// A version as Baton's builds spell it: `MAJOR.MINOR.PATCH`, an optional `-pre`.
pub fn check_version(v: &str) -> Result<(), String> {
    let core = v.split_once('-').map_or(v, |(c, _)| c);
    let parts: Vec<&str> = core.split('.').collect();
    let ok = v.len() <= MAX_VERSION_LEN
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a version like 0.2.1 (at most {MAX_VERSION_LEN} characters)"
        ))
    }
}

fn int_or_percent(path: &str, v: &Value) -> Result<IntOrPercent, Invalid> {
    let parsed = match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(IntOrPercent::Int),
        Value::String(s) => api::parse_int_or_percent(s),
        _ => None,
    };
    parsed.ok_or_else(|| {
        (
            path.to_owned(),
            "expected a number or a percentage such as \"25%\"".to_owned(),
        )
    })
}

fn seconds(path: &str, v: Option<i64>, default: u64) -> Result<u64, Invalid> {
    match v {
        None => Ok(default),
        // A year: anything longer is a typo.
        Some(n) if (0..=31_536_000).contains(&n) => Ok(n as u64),
        Some(n) => invalid(path, format!("must be between 0 and 31536000, got {n}")),
    }
}

pub(super) fn agent_update(input: InAgentUpdate) -> Result<api::AgentUpdate, Invalid> {
    let metadata = object_meta(input.metadata, MAX_NAME_LEN)?;
    let s = input.spec;
    let Some(version) = s.version else {
        return invalid("spec.version", "required");
    };
    check_version(&version).map_err(|m| ("spec.version".to_owned(), m))?;
    if let Some(arch) = &s.selector.arch {
        if arch.is_empty() {
            return invalid("spec.selector.arch", "must not be empty");
        }
    }
    let canary = match s.canary {
        None => api::Canary::default(),
        Some(c) => {
            let nodes = match c.nodes {
                None => 1,
                Some(n) if (0..=1000).contains(&n) => n as u32,
                Some(n) => {
                    return invalid(
                        "spec.canary.nodes",
                        format!("must be between 0 and 1000, got {n}"),
                    )
                }
            };
            if c.pause && c.soak_seconds.is_some() {
                return invalid(
                    "spec.canary",
                    "pause and soakSeconds exclude each other: approve by hand or wait",
                );
            }
            api::Canary {
                nodes,
                pause: c.pause,
                soak_seconds: seconds("spec.canary.soakSeconds", c.soak_seconds, 0)?,
            }
        }
    };
    let max_unavailable = match &s.max_unavailable {
        None => IntOrPercent::Int(1),
        Some(v) => int_or_percent("spec.maxUnavailable", v)?,
    };
    if max_unavailable.is_zero() {
        return invalid("spec.maxUnavailable", "must be at least 1 (or 1%)");
    }
    let failure_budget_percent = match &s.failure_budget {
        None => 0,
        Some(v) => match int_or_percent("spec.failureBudget", v)? {
            IntOrPercent::Percent(p) => p,
            IntOrPercent::Int(p) if p <= 100 => p,
            IntOrPercent::Int(p) => {
                return invalid(
                    "spec.failureBudget",
                    format!("a share of a wave: 0% to 100%, got {p}"),
                )
            }
        },
    };
    let health_window_seconds = seconds(
        "spec.healthWindowSeconds",
        s.health_window_seconds,
        api::DEFAULT_HEALTH_WINDOW_SECONDS.into(),
    )? as u32;
    let deadline_seconds = seconds(
        "spec.deadlineSeconds",
        s.deadline_seconds,
        api::DEFAULT_DEADLINE_SECONDS,
    )?;
    if deadline_seconds == 0 {
        return invalid("spec.deadlineSeconds", "must be at least 1");
    }
    Ok(api::AgentUpdate {
        api_version: api::AGENT_UPDATE_API_VERSION.into(),
        kind: "AgentUpdate".into(),
        metadata,
        spec: api::AgentUpdateSpec {
            version,
            selector: api::NodeSelector {
                match_labels: s.selector.match_labels,
                arch: s.selector.arch,
            },
            canary,
            max_unavailable,
            failure_budget_percent,
            health_window_seconds,
            deadline_seconds,
            allow_downgrade: s.allow_downgrade,
        },
        status: api::AgentUpdateStatus::default(),
    })
}
