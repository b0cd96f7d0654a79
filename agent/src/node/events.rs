//! The node loop's closed event enum and what each event does to the node's state.
//!
//! [`Agent::handle`] only dispatches; each event has its handler below. Handlers never
//! block: what takes time goes to a worker (see `workers.rs`), which reports back here.

use std::time::Duration;

use baton_proto::{ContainerState, DesiredState};
use tracing::{info, warn};

use super::pods::now_ms;
use super::pods::truncate;
use super::workers::{kill, on_new_sandbox};
use super::{Agent, AgentError, Publish};
use crate::bus::BusEvent;
use crate::image::ImageConfig;
use crate::pod::{self, StartFailure, StartedPod, WorkerError};
use crate::probe::{self, ContainerProbes, Verdict};
use crate::reconcile::{self, ContainerObs, Lifecycle};
use crate::runtime::{ContainerId, ExitEvent, ExitReason};

pub enum Event {
    Bus(BusEvent),
    Exit(ExitEvent),
    Pulling {
        uid: String,
        container: String,
    },
    Pulled {
        uid: String,
        result: Result<Vec<ImageConfig>, StartFailure>,
    },
    Started {
        uid: String,
        result: Box<Result<StartedPod, StartFailure>>,
    },
    Stopped {
        uid: String,
    },
    /// A container was started (first run or restart).
    Restarted {
        uid: String,
        container: String,
        result: Box<Result<pod::Ran, WorkerError>>,
    },
    /// A worker that needs no answer (e.g. removing a finished init container) is done.
    WorkerDone {
        uid: String,
    },
    /// A probe of run `run` of a container came back.
    Probed {
        uid: String,
        container: String,
        run: u64,
        kind: probe::Kind,
        ok: bool,
    },
}

/// `e` and its causes, `: `-separated, as one line for the coordinator.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

impl Agent {
    pub(super) fn handle(&mut self, ev: Event, bus: &dyn Publish) -> Result<(), AgentError> {
        match ev {
            Event::Bus(BusEvent::Connected) => {
                self.on_connected(bus);
                self.tell_update_health();
            }
            Event::Bus(BusEvent::Disconnected) => {
                self.offline = true;
                self.tell_update_health();
            }
            Event::Bus(BusEvent::StatusRequest) => self.on_status_request(bus),
            Event::Bus(BusEvent::Desired(d)) => {
                self.got_desired = true;
                self.on_desired(d)?;
                self.tell_update_health();
            }
            Event::Bus(BusEvent::AgentUpdate(order)) => self.on_agent_update(order),
            Event::Bus(BusEvent::ConfigMapPart(part)) => self.on_config_map_part(part),
            Event::Bus(BusEvent::ServiceTable(table)) => self.on_service_table(table),
            Event::Pulling { uid, container } => self.on_pulling(&uid, &container),
            Event::Pulled { uid, result } => match result {
                Ok(images) => self.on_pulled(uid, images),
                Err(f) => self.on_start_failed(&uid, f),
            },
            Event::Started { uid, result } => match *result {
                Ok(started) => self.on_started(&uid, started),
                Err(f) => self.on_start_failed(&uid, f),
            },
            Event::Restarted {
                uid,
                container,
                result,
            } => self.on_restarted(&uid, &container, *result),
            Event::WorkerDone { uid } => self.on_worker_done(&uid),
            Event::Probed {
                uid,
                container,
                run,
                kind,
                ok,
            } => self.on_probed(&uid, &container, run, kind, ok),
            Event::Stopped { uid } => self.on_stopped(&uid),
            Event::Exit(ExitEvent { id, reason }) => self.on_exit(&id, reason),
        }
        Ok(())
    }

    /// A Service table: checked, persisted and handed to the rule writer.
    fn on_service_table(&mut self, table: baton_proto::ServiceTable) {
        let Some(table) = super::services::accept(&self.cfg.data_dir, table) else {
            return;
        };
        info!(
            services = table.services.len(),
            digest = table.digest,
            "service table received"
        );
        if let Some(tx) = &self.services {
            tx.send_if_modified(|cur| {
                let changed = cur.digest != table.digest;
                *cur = table;
                changed
            });
        }
    }

    /// A ConfigMap that is complete now: the `configMap` volumes of running pods that use
    /// it are rewritten in this turn (an atomic swap their containers see without a
    /// restart), and pods waiting for it are tried again at once.
    fn on_config_map_part(&mut self, part: baton_proto::ConfigMapPart) {
        let Some(name) = self.config_maps.receive(part) else {
            return;
        };
        // Active CronJob runs are pods of this node too (`runnable`).
        let runs = self.run_pods();
        for pod in self.desired.pods.iter().chain(&runs) {
            if !crate::config_maps::references(pod).contains(&name) {
                continue;
            }
            let uid = pod.uid.as_str();
            if self.cooldown.remove(uid).is_some() {
                info!(pod = %pod.name, configmap = name, "configmap arrived; starting the pod again");
            }
            let dir = self.deps.pod_dir(uid);
            match crate::volumes::refresh_config_maps(&dir, &pod.volumes, &self.config_maps) {
                Ok(0) => {}
                Ok(n) => {
                    info!(pod = %pod.name, configmap = name, volumes = n, "configmap volumes updated")
                }
                Err(e) => {
                    warn!(pod = %pod.name, configmap = name, error = %chain(&e), "cannot update configmap volume")
                }
            }
        }
        self.status_dirty = true;
    }

    /// Update orders go to the update task; without one (tests, `reset`) they are dropped.
    fn on_agent_update(&mut self, order: Option<baton_proto::AgentUpdate>) {
        match &self.updates {
            Some(tx) => {
                if tx
                    .try_send(crate::update::UpdateEvent::Order(order))
                    .is_err()
                {
                    warn!("the update task is busy: the order is taken again at the next connect");
                }
            }
            None => warn!("agent update order ignored: no update task"),
        }
    }

    fn on_connected(&mut self, bus: &dyn Publish) {
        self.say_hello(bus);
        self.last_beat = None;
        self.hello_pending = true;
        self.status_dirty = true;
        self.cron_connected();
        self.back_from_offline = std::mem::replace(&mut self.offline, false);
    }

    fn on_status_request(&mut self, bus: &dyn Publish) {
        // The coordinator may not know this node at all (its store was replaced).
        self.say_hello(bus);
        self.status_dirty = true;
    }

    fn on_desired(&mut self, d: DesiredState) -> Result<(), AgentError> {
        self.hello_pending = false;
        // Only the first desired state after an outage tells what was taken away
        // meanwhile; an unchanged one means nothing was, and a later change is an
        // ordinary one that keeps its grace period.
        let back = std::mem::take(&mut self.back_from_offline);
        let changed = d.generation != self.desired.generation || d != self.desired;
        if back && !changed {
            info!(
                generation = d.generation,
                "back online; the desired state did not change meanwhile"
            );
        }
        if changed {
            info!(
                generation = d.generation,
                pods = d.pods.len(),
                "new desired state"
            );
            if back {
                self.note_evicted(&d);
            }
            // Persist before acting, so a crash right now restarts from it.
            if let Err(e) = self.state_file.store_with(&d, Some(&self.reserve)) {
                self.apply_unpersisted(&d, &e);
                return Ok(());
            }
            self.apply_error = None;
            // An evicted pod is forgotten once the coordinator has taken it away.
            self.evicted
                .retain(|uid, _| d.pods.iter().any(|p| p.uid.as_str() == uid));
            self.secrets.update(&d.secrets);
            // The CronJobs this node fires need theirs too, also between runs.
            let referenced = d
                .pods
                .iter()
                .chain(d.crons.iter().map(|c| &c.pod))
                .flat_map(crate::config_maps::references)
                .collect();
            self.config_maps.retain(&referenced);
            self.desired = d;
            self.status_dirty = true;
        }
        Ok(())
    }

    /// `next` could not be persisted (a full or failing disk): its stops are applied anyway,
    /// since stopping frees what the node is short of and is always safe, but nothing new
    /// starts and the applied generation stays the old one, so the coordinator repeats
    /// `next` with every heartbeat until it is on disk (docs/reliability.md, "Full disk").
    fn apply_unpersisted(&mut self, next: &DesiredState, e: &crate::state::StateError) {
        let reason = format!("generation {} not applied: {}", next.generation, chain(e));
        if self.apply_error.as_deref() != Some(reason.as_str()) {
            warn!(error = %reason, "applying only the stops of a desired state that cannot be persisted");
            self.apply_error = Some(reason);
            self.status_dirty = true;
        }
        let subset = crate::state::stops_only(&self.desired, next);
        if subset != self.desired {
            self.desired = subset;
            self.status_dirty = true;
        }
    }

    /// The first desired state after an outage drops the pods the coordinator took away
    /// while this node was unreachable: it evicted them and runs their replacements on
    /// other nodes (or a user deleted them). They have been gone from the fleet's point of
    /// view for the whole outage, so no grace period is owed, and every second they keep
    /// running is a copy beyond `replicas + maxSurge`: stop them at once (SIGKILL), so the
    /// excess ends within a heartbeat of the node's return (issue 4; chaos scenario 4).
    /// Pods removed while connected keep their full grace period.
    fn note_evicted(&mut self, next: &DesiredState) {
        let kept: std::collections::BTreeSet<&str> =
            next.pods.iter().map(|p| p.uid.as_str()).collect();
        for p in self.desired.pods.iter() {
            if !kept.contains(p.uid.as_str()) {
                info!(pod = %p.name, uid = %p.uid, "removed while this node was away: stopping it without a grace period");
                self.force_stop.insert(p.uid.to_string());
            }
        }
    }

    fn on_pulling(&mut self, uid: &str, container: &str) {
        if let Some(c) = self
            .pods
            .get_mut(uid)
            .and_then(|p| p.ctrs.iter_mut().find(|c| c.name == container))
        {
            if c.report == ContainerState::Pending {
                c.report = ContainerState::Pulling;
                self.status_dirty = true;
            }
        }
    }

    fn on_pulled(&mut self, uid: String, images: Vec<ImageConfig>) {
        let Some(p) = self.pods.get_mut(&uid) else {
            return;
        };
        if p.lifecycle != Lifecycle::Starting {
            p.busy = p.busy.saturating_sub(1);
            self.stop_pod(&uid);
            return;
        }
        for (c, img) in p.ctrs.iter_mut().zip(&images) {
            c.image = Some(img.clone());
            c.report = ContainerState::Pending;
        }
        let spec = p.spec.clone();
        self.prepare_pod(uid, spec, images);
    }

    fn on_started(&mut self, uid: &str, started: StartedPod) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        p.busy = p.busy.saturating_sub(1);
        if p.lifecycle == Lifecycle::Stopping {
            drop(started);
            self.stop_pod(uid);
            return;
        }
        // Prepared: the reconciler now starts the containers, init ones first.
        p.lifecycle = Lifecycle::Running;
        p.pod_ip = started.pod_ip;
        p._ports = started.ports;
        for s in started.containers {
            if let Some(c) = p.ctrs.iter_mut().find(|c| c.name == s.name) {
                c.id = Some(s.id);
                c.spec = Some(s.spec);
            }
        }
        self.cooldown.remove(uid);
        self.status_dirty = true;
    }

    fn on_start_failed(&mut self, uid: &str, f: StartFailure) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        p.busy = p.busy.saturating_sub(1);
        warn!(pod = %p.spec.name, reason = %f.reason, "pod failed to start");
        for c in p.ctrs.iter_mut() {
            if f.container.is_none() || f.container.as_deref() == Some(c.name.as_str()) {
                c.report = ContainerState::Failed {
                    reason: truncate(&f.reason),
                };
            }
        }
        // Tear down what was made, and retry with backoff once it is gone.
        let attempts = self.cooldown.get(uid).map_or(0, |(_, n)| *n) + 1;
        let until = self.mono() + reconcile::backoff(attempts).max(2_000);
        self.cooldown.insert(uid.to_owned(), (until, attempts));
        self.stop_pod(uid);
        self.status_dirty = true;
    }

    fn on_restarted(&mut self, uid: &str, container: &str, result: Result<pod::Ran, WorkerError>) {
        let now = self.mono();
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        p.busy = p.busy.saturating_sub(1);
        if p.lifecycle == Lifecycle::Stopping {
            self.stop_pod(uid);
            return;
        }
        if let Ok(pod::Ran {
            sandbox: Some(sandbox),
            ..
        }) = &result
        {
            on_new_sandbox(p, container, sandbox, &self.deps);
        }
        let Some(c) = p.ctrs.iter_mut().find(|c| c.name == container) else {
            return;
        };
        match result {
            Ok(ran) => {
                c.spec = Some(ran.spec);
                c.obs = ContainerObs::Running { since: now };
                c.report = ContainerState::Running {
                    started_at_ms: now_ms(),
                };
                c.run += 1;
                c.kill_reason = None;
                // Init containers are not probed (as in k8s).
                c.probes = (!c.init).then(|| ContainerProbes::new(&c.cspec, now));
                if let Some((code, oom)) = c.early_exit.take() {
                    info!(pod = %p.spec.name, container = %c.name, code, oom, "container exited");
                    c.apply_exit(code, oom, now);
                    self.status_dirty = true;
                    self.after_exit(uid);
                    return;
                }
            }
            Err(reason) => {
                c.early_exit = None;
                c.obs = ContainerObs::Exited {
                    code: -1,
                    oom: false,
                    at: now,
                    ran_for: 0,
                };
                c.report = ContainerState::Failed {
                    reason: truncate(&reason),
                };
            }
        }
        self.status_dirty = true;
    }

    fn on_worker_done(&mut self, uid: &str) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.busy = p.busy.saturating_sub(1);
            if p.lifecycle == Lifecycle::Stopping {
                self.stop_pod(uid);
            }
        }
    }

    /// A probe came back: readiness changes are reported, a failed liveness or startup probe
    /// kills the container (SIGTERM, the pod's grace period, SIGKILL); it is then restarted
    /// like any exited container, per the restart policy and backoff.
    fn on_probed(&mut self, uid: &str, name: &str, run: u64, kind: probe::Kind, ok: bool) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        let grace = Duration::from_secs(u64::from(p.spec.termination_grace_secs.min(300)));
        let pod_name = p.spec.name.clone();
        let Some(c) = p.ctrs.iter_mut().find(|c| c.name == name && c.run == run) else {
            return;
        };
        let Some(probes) = c.probes.as_mut() else {
            return;
        };
        match probes.record(kind, ok) {
            Verdict::Nothing => {}
            Verdict::Ready(ready) => {
                info!(pod = %pod_name, container = name, ready, "readiness changed");
                self.status_dirty = true;
            }
            Verdict::Kill { reason } => {
                warn!(pod = %pod_name, container = name, reason, "probe failed; killing the container");
                c.kill_reason = Some(reason);
                self.status_dirty = true;
                if let Some(id) = c.id.clone() {
                    kill(&self.deps, id, grace);
                }
            }
        }
    }

    fn on_stopped(&mut self, uid: &str) {
        if let Some(p) = self.pods.get(uid) {
            info!(pod = %p.spec.name, %uid, "pod stopped");
        }
        self.pods.remove(uid);
        self.force_stop.remove(uid);
        self.status_dirty = true;
    }

    fn on_exit(&mut self, id: &ContainerId, reason: ExitReason) {
        let now = self.mono();
        let mut exited_in = None;
        for (uid, p) in self.pods.iter_mut() {
            let Some(c) = p.ctrs.iter_mut().find(|c| c.id.as_ref() == Some(id)) else {
                continue;
            };
            if p.lifecycle == Lifecycle::Stopping {
                break;
            }
            let (code, oom) = match reason {
                ExitReason::Exited(code) => (code, false),
                ExitReason::Signaled(sig) => (128 + sig, false),
                ExitReason::OomKilled => (137, true),
            };
            if matches!(c.obs, ContainerObs::Creating) {
                // Reaped before its start was recorded: apply it right after.
                c.early_exit = Some((code, oom));
                break;
            }
            info!(pod = %p.spec.name, container = %c.name, code, oom, "container exited");
            c.apply_exit(code, oom, now);
            exited_in = Some(uid.clone());
            self.status_dirty = true;
            break;
        }
        if let Some(uid) = exited_in {
            self.after_exit(&uid);
        }
    }

    /// After a container of pod `uid` exited: persist the record, and once every init
    /// container has succeeded, mark the pod's init done and remove them.
    fn after_exit(&mut self, uid: &str) {
        if let Some(p) = self.pods.get_mut(uid) {
            let all_init_ok = p.ctrs.iter().filter(|c| c.init).all(|c| {
                matches!(
                    c.obs,
                    ContainerObs::Exited {
                        code: 0,
                        oom: false,
                        ..
                    }
                )
            });
            if !p.init_done && all_init_ok && p.ctrs.iter().any(|c| c.init) {
                p.init_done = true;
                info!(pod = %p.spec.name, "init containers done");
                self.remove_init_containers(uid);
            }
        }
        self.save_record(uid);
    }
}
