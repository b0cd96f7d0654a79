//! Node taints, and the ones that follow a node's pressure conditions (Kubernetes'
//! TaintNodesByCondition): DiskPressure taints the node `node.kubernetes.io/disk-pressure:
//! NoSchedule`, and so on, so the scheduler needs no rule per condition: it honours taints,
//! whoever set them, unless the pod tolerates them (Kubernetes' matching rules,
//! [`tolerates`]). `NoExecute` also evicts the pods on the node that do not tolerate it, at
//! once or after their `tolerationSeconds` ([`no_execute`]). Pure.

use std::time::{Duration, SystemTime};

use crate::model::api::{NodeCondition, Taint, TaintEffect, Toleration, TolerationOperator};

pub const DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";

/// The taint key a condition type sets, if any.
fn taint_key(condition: &str) -> Option<&'static str> {
    match condition {
        "DiskPressure" | "ImageDiskPressure" => Some(DISK_PRESSURE),
        "MemoryPressure" => Some(MEMORY_PRESSURE),
        "PIDPressure" => Some(PID_PRESSURE),
        _ => None,
    }
}

/// `taints` with the condition taints made to match `conditions`: the other taints kept as
/// they are, in order, then one `NoSchedule` taint per key a true condition sets.
pub fn with_condition_taints(taints: &[Taint], conditions: &[NodeCondition]) -> Vec<Taint> {
    let managed = [DISK_PRESSURE, MEMORY_PRESSURE, PID_PRESSURE];
    let mut out: Vec<Taint> = taints
        .iter()
        .filter(|t| !managed.contains(&t.key.as_str()))
        .cloned()
        .collect();
    for key in managed {
        if conditions.iter().any(|c| taint_key(&c.type_) == Some(key)) {
            out.push(Taint {
                key: key.into(),
                value: String::new(),
                effect: TaintEffect::NoSchedule,
                time_added: None,
            });
        }
    }
    out
}

/// Whether `t` tolerates `taint`, by Kubernetes' rules: an empty key with `Exists`
/// matches every taint; otherwise the keys match, and the values with `Equal`; an empty
/// effect matches every effect.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.is_some_and(|e| e != taint.effect) {
        return false;
    }
    match t.operator {
        TolerationOperator::Exists => t.key.is_empty() || t.key == taint.key,
        TolerationOperator::Equal => t.key == taint.key && t.value == taint.value,
    }
}

/// The first taint of the node that keeps a new pod with `tolerations` off it.
pub fn untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        matches!(
            taint.effect,
            TaintEffect::NoSchedule | TaintEffect::NoExecute
        ) && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// What a node's `NoExecute` taints mean for a pod on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoExecute {
    /// No `NoExecute` taint, or every one tolerated for ever.
    Stay,
    /// Evict now, because of this taint.
    Evict(Taint),
    /// Evict at this time, when the shortest `tolerationSeconds` runs out.
    EvictAt(SystemTime, Taint),
}

/// Kubernetes' taint manager for one pod: an untolerated `NoExecute` taint evicts at once;
/// tolerated ones with `tolerationSeconds` evict that long after the taint was added
/// (`timeAdded`; `now` when unknown), the earliest deadline winning.
pub fn no_execute(taints: &[Taint], tolerations: &[Toleration], now: SystemTime) -> NoExecute {
    let mut earliest: Option<(SystemTime, &Taint)> = None;
    for taint in taints.iter().filter(|t| t.effect == TaintEffect::NoExecute) {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return NoExecute::Evict(taint.clone());
        }
        // Any toleration without a limit keeps the pod for ever.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0);
        let added = taint
            .time_added
            .as_deref()
            .and_then(|a| humantime::parse_rfc3339_weak(a).ok())
            .unwrap_or(now);
        let at = added + Duration::from_secs(secs);
        if earliest.is_none_or(|(e, _)| at < e) {
            earliest = Some((at, taint));
        }
    }
    match earliest {
        Some((at, taint)) if at <= now => NoExecute::Evict(taint.clone()),
        Some((at, taint)) => NoExecute::EvictAt(at, taint.clone()),
        None => NoExecute::Stay,
    }
}

/// The conditions `reported` now, each keeping the transition time it had in `old` if it
/// was already true (a condition that stays true has not transitioned).
pub fn merge_conditions(old: &[NodeCondition], reported: Vec<NodeCondition>) -> Vec<NodeCondition> {
    reported
        .into_iter()
        .map(|mut c| {
            if let Some(o) = old.iter().find(|o| o.type_ == c.type_) {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(t: &str, at: &str) -> NodeCondition {
        NodeCondition {
            type_: t.into(),
            reason: format!("KubeletHas{t}"),
            message: "m".into(),
            last_transition_time: at.into(),
        }
    }

    fn taint(key: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: String::new(),
            effect,
            time_added: None,
        }
    }

    #[test]
    fn pressure_conditions_set_and_clear_their_taints_and_keep_others() {
        let user = taint("dedicated", TaintEffect::PreferNoSchedule);
        let got = with_condition_taints(
            std::slice::from_ref(&user),
            &[
                cond("DiskPressure", "t"),
                cond("ImageDiskPressure", "t"),
                cond("PIDPressure", "t"),
            ],
        );
        let shown: Vec<String> = got.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            [
                "dedicated:PreferNoSchedule",
                "node.kubernetes.io/disk-pressure:NoSchedule",
                "node.kubernetes.io/pid-pressure:NoSchedule"
            ]
        );
        assert_eq!(
            with_condition_taints(&got, &[]),
            std::slice::from_ref(&user)
        );
        assert_eq!(
            untolerated(std::slice::from_ref(&user), &[]),
            None,
            "PreferNoSchedule only prefers"
        );
        assert_eq!(
            untolerated(&got, &[]).map(|t| t.key.as_str()),
            Some(DISK_PRESSURE)
        );
    }

    #[test]
    fn a_condition_that_stays_true_keeps_its_transition_time() {
        let old = [cond("DiskPressure", "t1")];
        let got = merge_conditions(
            &old,
            vec![cond("DiskPressure", "t2"), cond("PIDPressure", "t2")],
        );
        assert_eq!(got[0].last_transition_time, "t1");
        assert_eq!(got[1].last_transition_time, "t2");
        assert!(merge_conditions(&old, vec![]).is_empty());
    }

    fn tol(
        key: &str,
        op: TolerationOperator,
        value: &str,
        effect: Option<TaintEffect>,
    ) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_match_as_in_kubernetes() {
        use TaintEffect::*;
        use TolerationOperator::*;
        let mut gpu = taint("gpu", NoSchedule);
        gpu.value = "true".into();
        // Equal: key and value; an empty effect matches every effect.
        assert!(tolerates(&tol("gpu", Equal, "true", None), &gpu));
        assert!(tolerates(
            &tol("gpu", Equal, "true", Some(NoSchedule)),
            &gpu
        ));
        assert!(!tolerates(&tol("gpu", Equal, "false", None), &gpu));
        assert!(!tolerates(
            &tol("gpu", Equal, "true", Some(NoExecute)),
            &gpu
        ));
        // Exists: any value; an empty key with Exists tolerates everything.
        assert!(tolerates(&tol("gpu", Exists, "", None), &gpu));
        assert!(!tolerates(&tol("cpu", Exists, "", None), &gpu));
        assert!(tolerates(&tol("", Exists, "", None), &gpu));
        assert!(tolerates(&tol("", Exists, "", Some(NoSchedule)), &gpu));
        assert!(!tolerates(&tol("", Exists, "", Some(NoExecute)), &gpu));
        // The scheduler's view: a pressure taint is tolerated like any other.
        let pressure = [taint(DISK_PRESSURE, NoSchedule)];
        assert!(untolerated(&pressure, &[]).is_some());
        assert!(untolerated(&pressure, &[tol(DISK_PRESSURE, Exists, "", None)]).is_none());
    }

    #[test]
    fn no_execute_evicts_at_once_or_after_the_shortest_toleration() {
        use TolerationOperator::*;
        let t0 = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let mut down = taint("maintenance", TaintEffect::NoExecute);
        down.time_added = Some("2026-01-01T00:00:00Z".into());
        let taints = [taint("x", TaintEffect::NoSchedule), down.clone()];
        assert_eq!(no_execute(&taints, &[], t0), NoExecute::Evict(down.clone()));
        let forever = tol("maintenance", Exists, "", None);
        assert_eq!(no_execute(&taints, &[forever], t0), NoExecute::Stay);
        let mut short = tol("maintenance", Exists, "", Some(TaintEffect::NoExecute));
        short.toleration_seconds = Some(30);
        let mut long = short.clone();
        long.toleration_seconds = Some(300);
        let both = [long, short];
        assert_eq!(
            no_execute(&taints, &both, t0),
            NoExecute::EvictAt(t0 + Duration::from_secs(30), down.clone())
        );
        assert_eq!(
            no_execute(&taints, &both, t0 + Duration::from_secs(30)),
            NoExecute::Evict(down)
        );
        assert_eq!(
            no_execute(&taints[..1], &[], t0),
            NoExecute::Stay,
            "NoSchedule never evicts"
        );
    }
}
