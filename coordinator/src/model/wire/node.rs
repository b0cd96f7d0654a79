//! Up from the agent: its Hello, as the Node the API shows, and the conditions and apply
//! error of its heartbeats.

use baton_proto as proto;

use crate::model::api;

/// A node as it introduced itself. Its pod capacity is capped at what one desired-state
/// message can carry ([`proto::MAX_PODS_PER_NODE`]).
pub fn node_from_hello(name: &proto::NodeName, h: &proto::Hello) -> api::Node {
    let max_pods = u16::try_from(proto::MAX_PODS_PER_NODE).unwrap_or(u16::MAX);
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: name.to_string(),
            labels: h
                .labels
                .iter()
                .map(|l| (l.key.to_string(), l.value.to_string()))
                .collect(),
            ..Default::default()
        },
        spec: api::NodeSpec {
            taints: registered_taints(h),
            ..Default::default()
        },
        status: api::NodeStatus {
            ready: true,
            arch: h.arch.to_string(),
            arch_variant: h.arch_variant.to_string(),
            os: h.os.to_string(),
            agent_version: h.agent_version.to_string(),
            protocol_version: 0,
            allocatable: api::NodeCapacity {
                cpu_millis: h.allocatable.cpu_millis,
                memory_bytes: h.allocatable.memory_bytes,
                pods: h.allocatable.pods.min(max_pods),
            },
            address: h.address.map(|a| a.to_string()),
            pod_cidr: h.pod_cidr.to_string(),
            pod_cidr_held: false,
            pod_cidr_refused: None,
            last_heartbeat: api::now_rfc3339(),
            applied_generation: h.applied_generation,
            desired_generation: 0,
            last_connect_error: h.last_connect_error.as_ref().map(|m| api::ConnectError {
                message: printable(m),
                reported_at: api::now_rfc3339(),
            }),
            conditions: Vec::new(),
            apply_error: None,
            last_update: None,
            leader_term: 0,
        },
    }
}

/// The taints the node registers with (`--register-with-taints`), `NoExecute` ones stamped
/// now; the core takes them only for a node it has not seen before.
fn registered_taints(h: &proto::Hello) -> Vec<api::Taint> {
    let now = api::now_rfc3339();
    let mut out: Vec<api::Taint> = Vec::new();
    for t in &h.taints {
        let effect = match t.effect {
            proto::TaintEffect::NoSchedule => api::TaintEffect::NoSchedule,
            proto::TaintEffect::PreferNoSchedule => api::TaintEffect::PreferNoSchedule,
            proto::TaintEffect::NoExecute => api::TaintEffect::NoExecute,
        };
        let key = printable(&t.key);
        // One taint per key and effect, as `baton taint` keeps them.
        out.retain(|o| !(o.key == key && o.effect == effect));
        out.push(api::Taint {
            key,
            value: printable(&t.value),
            effect,
            time_added: (effect == api::TaintEffect::NoExecute).then(|| now.clone()),
        });
    }
    out
}

/// Text from the device, shown on a terminal: no control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// The pressure conditions a heartbeat reports, as kubelet names them, true since `now`.
pub fn node_conditions(hb: &proto::Heartbeat, now: &str) -> Vec<api::NodeCondition> {
    hb.pressure
        .iter()
        .map(|p| {
            let type_ = match p.kind {
                proto::PressureKind::Disk => "DiskPressure",
                proto::PressureKind::ImageDisk => "ImageDiskPressure",
                proto::PressureKind::Memory => "MemoryPressure",
                proto::PressureKind::Pid => "PIDPressure",
            };
            let reason = match p.kind {
                proto::PressureKind::Disk | proto::PressureKind::ImageDisk => {
                    "KubeletHasDiskPressure"
                }
                proto::PressureKind::Memory => "KubeletHasInsufficientMemory",
                proto::PressureKind::Pid => "KubeletHasInsufficientPID",
            };
            api::NodeCondition {
                type_: type_.into(),
                reason: reason.into(),
                message: printable(&p.message),
                last_transition_time: now.into(),
            }
        })
        .collect()
}

/// The heartbeat's apply error, printable.
pub fn apply_error(hb: &proto::Heartbeat) -> Option<String> {
    hb.apply_error.as_deref().map(printable)
}
