//! What the node loop tells: the coordinator (Hello, Heartbeat, Status, through a
//! [`Publish`]) and the reconciler (what it observes of each pod).

use std::collections::BTreeMap;

use baton_proto::{BString, BVec, Body, Heartbeat, Hello, Label, NodeStatus, PodStatus};

use super::pods::Ctr;
use super::{Agent, Publish};
use crate::image::Platform;
use crate::probe::Millis;
use crate::reconcile::{CtrObs, PodObs};

impl Agent {
    pub(super) fn hello(&self) -> Body {
        let labels = self
            .cfg
            .labels
            .iter()
            .filter_map(|(k, v)| {
                Some(Label {
                    key: BString::new(k.as_str()).ok()?,
                    value: BString::new(v.as_str()).ok()?,
                })
            })
            .chain(Some(Label {
                key: BString::new(baton_proto::release::LABEL_AGENT_TARGET).unwrap_or_default(),
                value: BString::new(crate::build_info::TARGET).unwrap_or_default(),
            }))
            .collect::<Vec<_>>();
        let p = Platform::host();
        Body::Hello(Hello {
            arch: p.arch.as_str().try_into().unwrap_or_default(),
            arch_variant: p
                .variant
                .as_deref()
                .unwrap_or("")
                .try_into()
                .unwrap_or_default(),
            os: p.os.as_str().try_into().unwrap_or_default(),
            agent_version: crate::build_info::VERSION.try_into().unwrap_or_default(),
            allocatable: self.cfg.allocatable,
            labels: BVec::from_vec(labels.into_iter().take(64).collect()).unwrap_or_default(),
            address: self.cfg.address,
            pod_cidr: BString::new(self.deps.network.config().pod_cidr.to_string())
                .unwrap_or_default(),
            applied_generation: self.desired.generation,
            // Filled in by the bus, which keeps the link's history.
            last_connect_error: None,
            taints: BVec::from_vec(self.cfg.register_taints.clone()).unwrap_or_default(),
        })
    }

    /// The Hello, then the link profile, so that the coordinator times this node by it.
    pub(super) fn say_hello(&mut self, bus: &dyn Publish) {
        let _ = bus.publish(self.hello());
        let _ = bus.publish(Body::Link(self.cfg.link.wire()));
        self.usage.resend = true;
    }

    /// Samples usage once per the profile's `usage_every` and sends it when it moved, or
    /// after a Hello (see [`crate::usage`]).
    pub(super) fn report_usage(&mut self, bus: &dyn Publish) {
        let now = self.mono();
        let every = self.cfg.link.usage_every.as_millis() as Millis;
        let due = self
            .usage
            .sampled
            .is_none_or(|at| now.saturating_sub(at) >= every);
        if due {
            self.sample_usage(now);
        }
        let Some(last) = &self.usage.last else { return };
        let moved = due
            && self
                .usage
                .sent
                .as_ref()
                .is_none_or(|sent| crate::usage::moved(sent, last));
        if (moved || self.usage.resend)
            && bus.is_connected()
            && bus.publish(Body::Usage(last.clone())).is_ok()
        {
            self.usage.sent = Some(last.clone());
            self.usage.resend = false;
        }
    }

    fn sample_usage(&mut self, now: Millis) {
        let node_cgroup = std::path::Path::new(&self.cfg.cgroup_root).join(self.cfg.node.as_str());
        let rt = &self.deps.runtime;
        let pods = self
            .pods
            .keys()
            .map(|uid| {
                let rel = node_cgroup.join(uid);
                (
                    uid.clone(),
                    rt.cpu_usage_ns(&rel),
                    rt.memory_working_set(&rel),
                )
            })
            .collect();
        let reading = crate::usage::Reading {
            node_cpu: crate::usage::node_cpu(),
            memory: crate::pressure::measure::memory(),
            disk: crate::pressure::measure::statfs(&self.cfg.data_dir)
                .map(|f| (f.avail_bytes, f.total_bytes)),
            temperature: crate::usage::temperature(std::path::Path::new("/sys/class/thermal")),
            pods,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let (usage, counters) = crate::usage::rates(
            self.usage.counters.as_ref(),
            reading,
            std::time::Instant::now(),
            cpus,
        );
        self.usage.counters = Some(counters);
        self.usage.sampled = Some(now);
        self.usage.last = Some(usage);
    }

    /// Tells the update task what probation looks at: connected, a desired state
    /// received, and how many of its pods are healthy (every container ready, or run to
    /// completion: `update::probation::pod_healthy`).
    pub(super) fn tell_update_health(&self) {
        let Some(tx) = &self.updates else { return };
        let ready = self
            .desired
            .pods
            .iter()
            .filter(|p| {
                self.pods.get(p.uid.as_str()).is_some_and(|pod| {
                    crate::update::probation::pod_healthy(
                        pod.spec.restart_policy,
                        pod.ctrs
                            .iter()
                            .filter(|c| !c.init)
                            .map(|c| (&c.report, c.status().is_some_and(|s| s.ready))),
                    )
                })
            })
            .count();
        let _ = tx.try_send(crate::update::UpdateEvent::Health(crate::update::Health {
            connected: !self.offline,
            desired: self.got_desired,
            ready,
            total: self.desired.pods.len(),
        }));
    }

    pub(super) fn status(&self) -> NodeStatus {
        let pods = self
            .pods
            .iter()
            // CronJob runs' pods too: the coordinator keeps them as its pods of this node
            // (`Body::CronRuns` says how each run ended).
            .filter_map(|(uid, p)| {
                let of = |init: bool| {
                    p.ctrs
                        .iter()
                        .filter(|c| c.init == init)
                        .filter_map(Ctr::status)
                        .collect::<Vec<_>>()
                };
                Some(PodStatus {
                    name: p.spec.name.clone(),
                    uid: BString::new(uid.as_str()).ok()?,
                    pod_ip: p.pod_ip,
                    containers: BVec::from_vec(of(false)).ok()?,
                    init_containers: BVec::from_vec(of(true)).ok()?,
                    evicted: self.evicted.get(uid).map(|r| bounded(r)),
                })
            })
            // Evicted pods already gone still say so while the desired state lists them.
            .chain(
                self.desired
                    .pods
                    .iter()
                    .filter(|p| !self.pods.contains_key(p.uid.as_str()))
                    .filter_map(|p| {
                        Some(PodStatus {
                            name: p.name.clone(),
                            uid: p.uid.clone(),
                            pod_ip: None,
                            containers: BVec::new(),
                            init_containers: BVec::new(),
                            evicted: Some(bounded(self.evicted.get(p.uid.as_str())?)),
                        })
                    }),
            )
            .take(baton_proto::MAX_PODS_PER_NODE)
            .collect::<Vec<_>>();
        NodeStatus {
            applied_generation: self.desired.generation,
            pods: BVec::from_vec(pods).unwrap_or_default(),
        }
    }

    /// The heartbeat: the Hello again while no desired state has come since the last
    /// connect, then the applied generation, the status digest, the conditions under
    /// pressure (measured now) and why the last desired state was not applied, if it was not.
    /// It goes out only when that changed since the last one of this connection, or after
    /// the link profile's `heartbeat_max` (see [`crate::link_profile`]).
    pub(super) fn heartbeat(&mut self, bus: &dyn Publish) {
        self.tell_update_health();
        self.measure_pressure();
        if self.hello_pending {
            self.say_hello(bus);
        }
        let status = self.status();
        let pressure = self
            .pressure
            .iter()
            .map(|p| baton_proto::Pressure {
                kind: p.kind,
                message: bounded(&p.message),
            })
            .collect();
        self.report_usage(bus);
        let beat = Heartbeat {
            applied_generation: self.desired.generation,
            status_digest: status.digest(),
            pressure: BVec::from_vec(pressure).unwrap_or_default(),
            apply_error: self.apply_error.as_deref().map(bounded),
        };
        let now = self.mono();
        let max = self.cfg.link.heartbeat_max.as_millis() as Millis;
        let due = self
            .last_beat
            .as_ref()
            .is_none_or(|(last, at)| *last != beat || now.saturating_sub(*at) >= max);
        if due && bus.publish(Body::Heartbeat(beat.clone())).is_ok() {
            self.last_beat = Some((beat, now));
        }
    }

    /// Sends the full status if it changed since the last one that went out, once the
    /// profile's batch has gathered what changed with it. Returns when the batch is due.
    pub(super) fn publish_status(&mut self, bus: &dyn Publish) -> Option<Millis> {
        if !self.status_dirty || !bus.is_connected() {
            return None;
        }
        let batch = self.cfg.link.status_batch.as_millis() as Millis;
        if batch > 0 {
            let now = self.mono();
            let due = *self.status_due.get_or_insert(now + batch);
            if now < due {
                return Some(due);
            }
        }
        if bus.publish(Body::Status(self.status())).is_ok() {
            self.status_dirty = false;
            self.status_due = None;
        }
        None
    }

    pub(super) fn observed(&self) -> BTreeMap<String, PodObs> {
        self.pods
            .iter()
            .map(|(uid, p)| {
                let of = |init: bool| {
                    p.ctrs
                        .iter()
                        .filter(|c| c.init == init)
                        .map(|c| CtrObs {
                            name: c.name.clone(),
                            state: c.obs,
                            level: c.level,
                        })
                        .collect()
                };
                (
                    uid.clone(),
                    PodObs {
                        lifecycle: p.lifecycle,
                        restart_policy: p.spec.restart_policy,
                        init_containers: of(true),
                        init_done: p.init_done,
                        containers: of(false),
                    },
                )
            })
            .collect()
    }
}

/// `s` cut to fit a bounded wire string, at a character boundary.
fn bounded<const N: usize>(s: &str) -> BString<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    BString::new(&s[..end]).unwrap_or_default()
}
