//! Hollow nodes, as Kubernetes' kubemark has them: what an agent's node loop tells the
//! coordinator, without containers, so that one process can stand in for thousands of
//! devices. The wire side is the agent's own ([`baton_agent::bus::Bus`]: topics, envelopes,
//! the last will, reconnects); the messages are the proto crate's. What a hollow node does
//! not do: pull images, start containers, probe, measure pressure or usage.
//!
//! [`Hollow`] is pure: inputs and the time in, the bodies to publish out, so its behaviour
//! is unit-tested without a broker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use baton_agent::link_profile::Settings;
use baton_proto::{
    BString, BVec, Body, Capacity, ContainerState, ContainerStatus, DesiredState, Heartbeat, Hello,
    Label, NodeStatus, PodStatus, Termination,
};

/// The label every simulated node carries, so a test or an operator can select or drain
/// them apart from real ones.
pub const SIM_LABEL: &str = "baton.io/simulated";

/// What a hollow node needs of a desired state: its generation, and per pod its name, uid
/// and container names.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub generation: u64,
    pub pods: Vec<WantedPod>,
}

#[derive(Debug, Clone)]
pub struct WantedPod {
    pub name: String,
    pub uid: String,
    pub containers: Vec<String>,
}

impl Wanted {
    pub fn of(d: &DesiredState) -> Self {
        Wanted {
            generation: d.generation,
            pods: d
                .pods
                .iter()
                .map(|p| WantedPod {
                    name: p.name.to_string(),
                    uid: p.uid.to_string(),
                    containers: p.containers.iter().map(|c| c.name.to_string()).collect(),
                })
                .collect(),
        }
    }
}

/// What a hollow node is told or asked.
#[derive(Debug)]
pub enum Input {
    /// The broker link is up (again): Hello, link profile, full status.
    Connected,
    /// A desired state, as [`Wanted::of`] reads it.
    Desired(Wanted),
    StatusRequest,
    /// Time passes: pods due become Running, a heartbeat goes out if one is due.
    Tick,
    /// A container of one of its running pods crashes and restarts (chaos).
    CrashOne,
}

struct SimPod {
    name: String,
    uid: String,
    ip: IpAddr,
    containers: Vec<String>,
    /// When it was first desired: it runs `start_delay` later.
    since: Instant,
    started_at_ms: Option<u64>,
    restarts: u32,
    last_termination: Option<Termination>,
}

/// One simulated agent.
pub struct Hollow {
    index: u32,
    settings: Settings,
    start_delay: Duration,
    allocatable: Capacity,
    generation: u64,
    pods: BTreeMap<String, SimPod>,
    next_ip: u8,
    /// The last heartbeat sent and when: an unchanged one goes out only every
    /// `heartbeat_max`, as the agent does.
    last_beat: Option<(Heartbeat, Instant)>,
    /// The last status sent: a tick sends a new one only when it differs.
    last_status: Option<NodeStatus>,
}

/// Unix milliseconds now (the agent reports its clock so).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hollow {
    pub fn new(index: u32, settings: Settings, start_delay: Duration) -> Self {
        Hollow {
            index,
            settings,
            start_delay,
            // A Pi 4's worth, and kubelet's pod limit.
            allocatable: Capacity {
                cpu_millis: 4000,
                memory_bytes: 4 << 30,
                pods: 110,
            },
            generation: 0,
            pods: BTreeMap::new(),
            next_ip: 2,
            last_beat: None,
            last_status: None,
        }
    }

    /// Node `index`'s pod range: a /24 each in 10.128.0.0/9 (32,768 nodes).
    pub fn pod_cidr(index: u32) -> String {
        let (a, b) = (128 + (index >> 8) % 128, index & 0xff);
        format!("10.{a}.{b}.0/24")
    }

    /// Node `index`'s address: one each in 172.16.0.0/12, outside every pod range, so its
    /// route is in the Service table as a real node's is.
    pub fn address(index: u32) -> Ipv4Addr {
        Ipv4Addr::from(0xac10_0000 | (index & 0x000f_ffff))
    }

    fn pod_ip(&mut self) -> IpAddr {
        let (a, b) = (128 + (self.index >> 8) % 128, self.index & 0xff);
        let ip = Ipv4Addr::new(10, a as u8, b as u8, self.next_ip);
        self.next_ip = self
            .next_ip
            .checked_add(1)
            .filter(|n| *n < 255)
            .unwrap_or(2);
        IpAddr::V4(ip)
    }

    pub fn hello(&self) -> Body {
        let label = |k: &str, v: &str| -> Option<Label> {
            Some(Label {
                key: BString::new(k).ok()?,
                value: BString::new(v).ok()?,
            })
        };
        Body::Hello(Hello {
            arch: "arm64".try_into().unwrap_or_default(),
            arch_variant: Default::default(),
            os: "linux".try_into().unwrap_or_default(),
            agent_version: baton_agent::build_info::VERSION
                .try_into()
                .unwrap_or_default(),
            allocatable: self.allocatable,
            labels: BVec::from_vec(label(SIM_LABEL, "true").into_iter().collect())
                .unwrap_or_default(),
            address: Some(IpAddr::V4(Self::address(self.index))),
            pod_cidr: BString::new(Self::pod_cidr(self.index)).unwrap_or_default(),
            applied_generation: self.generation,
            last_connect_error: None,
            taints: BVec::new(),
        })
    }

    pub fn status(&self) -> NodeStatus {
        let pods = self
            .pods
            .values()
            .map(|p| PodStatus {
                name: BString::new(p.name.as_str()).unwrap_or_default(),
                uid: BString::new(p.uid.as_str()).unwrap_or_default(),
                pod_ip: Some(p.ip),
                containers: BVec::from_vec(
                    p.containers
                        .iter()
                        .map(|c| ContainerStatus {
                            name: BString::new(c.as_str()).unwrap_or_default(),
                            state: match p.started_at_ms {
                                Some(ms) => ContainerState::Running { started_at_ms: ms },
                                None => ContainerState::Pending,
                            },
                            restart_count: p.restarts,
                            ready: p.started_at_ms.is_some(),
                            last_termination: p.last_termination.clone(),
                        })
                        .collect(),
                )
                .unwrap_or_default(),
                init_containers: BVec::new(),
                evicted: None,
            })
            .collect();
        NodeStatus {
            applied_generation: self.generation,
            pods: BVec::from_vec(pods).unwrap_or_default(),
        }
    }

    /// Pods whose containers all run.
    pub fn running(&self) -> usize {
        self.pods
            .values()
            .filter(|p| p.started_at_ms.is_some())
            .count()
    }

    /// What to publish after `input` at `now`, in order.
    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Body> {
        let mut out = Vec::new();
        match input {
            // As the agent: a new leader asks every node, and learns its link profile (how
            // long it may stay quiet) only from the answer's Link.
            Input::Connected | Input::StatusRequest => {
                out.push(self.hello());
                out.push(Body::Link(self.settings.wire()));
                self.push_status(&mut out, true);
            }
            Input::Desired(d) => {
                self.generation = d.generation;
                let wanted: BTreeMap<String, WantedPod> =
                    d.pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
                self.pods.retain(|uid, _| wanted.contains_key(uid));
                for (uid, spec) in wanted {
                    if self.pods.contains_key(&uid) {
                        continue;
                    }
                    let ip = self.pod_ip();
                    self.pods.insert(
                        uid.clone(),
                        SimPod {
                            name: spec.name,
                            uid,
                            ip,
                            containers: spec.containers,
                            since: now,
                            started_at_ms: None,
                            restarts: 0,
                            last_termination: None,
                        },
                    );
                }
                self.start_due(now);
                self.push_status(&mut out, false);
            }
            Input::Tick => {
                self.start_due(now);
                self.push_status(&mut out, false);
                self.push_heartbeat(&mut out, now);
            }
            Input::CrashOne => {
                if let Some(p) = self.pods.values_mut().find(|p| p.started_at_ms.is_some()) {
                    p.restarts += 1;
                    p.last_termination = Some(Termination {
                        exit_code: 1,
                        reason: BString::new("Error").unwrap_or_default(),
                        finished_at_ms: wall_ms(),
                    });
                    p.started_at_ms = Some(wall_ms());
                }
                self.push_status(&mut out, false);
            }
        }
        out
    }

    fn start_due(&mut self, now: Instant) {
        for p in self.pods.values_mut() {
            if p.started_at_ms.is_none() && now.duration_since(p.since) >= self.start_delay {
                p.started_at_ms = Some(wall_ms());
            }
        }
    }

    /// A Status when it changed since the last one sent (or always, if `force`).
    fn push_status(&mut self, out: &mut Vec<Body>, force: bool) {
        let status = self.status();
        if force || self.last_status.as_ref() != Some(&status) {
            self.last_status = Some(status.clone());
            out.push(Body::Status(status));
        }
    }

    /// A heartbeat when what it carries changed, or `heartbeat_max` after the last one.
    fn push_heartbeat(&mut self, out: &mut Vec<Body>, now: Instant) {
        let beat = Heartbeat {
            applied_generation: self.generation,
            status_digest: self.status().digest(),
            pressure: BVec::new(),
            apply_error: None,
        };
        let due = self.last_beat.as_ref().is_none_or(|(last, at)| {
            *last != beat || now.duration_since(*at) >= self.settings.heartbeat_max
        });
        if due {
            self.last_beat = Some((beat.clone(), now));
            out.push(Body::Heartbeat(beat));
        }
    }
}

#[cfg(test)]
mod tests;
