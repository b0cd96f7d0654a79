//! Node taints, and the ones that follow a node's pressure conditions (Kubernetes'
//! TaintNodesByCondition): DiskPressure taints the node `node.kubernetes.io/disk-pressure:
//! NoSchedule`, and so on, so the scheduler needs no rule per condition: it honours taints,
//! whoever set them. Pods carry no tolerations yet, so every `NoSchedule` or `NoExecute`
//! taint keeps new pods off the node. Pure.

use crate::model::api::{NodeCondition, Taint, TaintEffect};

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
            });
        }
    }
    out
}

/// The first taint of the node that keeps a new pod off it.
pub fn untolerated(taints: &[Taint]) -> Option<&Taint> {
    taints
        .iter()
        .find(|t| matches!(t.effect, TaintEffect::NoSchedule | TaintEffect::NoExecute))
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
            untolerated(std::slice::from_ref(&user)),
            None,
            "PreferNoSchedule only prefers"
        );
        assert_eq!(
            untolerated(&got).map(|t| t.key.as_str()),
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
}
