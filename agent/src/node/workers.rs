//! Carrying out the reconciler's steps: every runtime, image and network call runs in a
//! worker task of its own, which reports back to the node loop as an [`Event`]. This is
//! the only part of the node loop that starts tasks.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::PodSpec;
use tracing::{info, warn};

use super::pods::{Ctr, Pod};
use super::{Agent, Event};
use crate::image::ImageConfig;
use crate::pod::{self, Deps};
use crate::probe;
use crate::reconcile::{self, ContainerObs, Lifecycle, Millis, Step};
use crate::runtime::ContainerId;

impl Agent {
    /// One reconcile turn; returns when to run again for pending backoffs.
    pub(super) fn reconcile(&mut self) -> Option<Millis> {
        // Images of assigned and of still-tracked (running, stopping) pods are never
        // garbage-collected; cheap when nothing changed.
        // A CronJob's image too, between its runs: the node may be offline at the next.
        let in_use: std::collections::BTreeSet<String> = self
            .desired
            .pods
            .iter()
            .chain(self.desired.crons.iter().map(|c| &c.pod))
            .chain(self.pods.values().map(|p| &p.spec))
            .flat_map(|p| pod::all_containers(p).map(|c| c.image.to_string()))
            .collect();
        self.deps.images.set_in_use(&in_use);
        let now = self.mono();
        let plan = reconcile::plan(&self.runnable(), &self.observed(), now);
        let mut wake = plan.wake_at;
        for step in plan.steps {
            match step {
                Step::StartPod { uid } => {
                    if let Some((until, _)) = self.cooldown.get(&uid) {
                        if *until > now {
                            wake = Some(wake.map_or(*until, |w| w.min(*until)));
                            continue;
                        }
                    }
                    self.start_pod(uid);
                }
                Step::StopPod { uid } => self.stop_pod(&uid),
                Step::StartContainer { uid, container } => {
                    self.run_container(&uid, &container, false)
                }
                Step::RestartContainer { uid, container } => {
                    self.run_container(&uid, &container, true)
                }
            }
        }
        if let Some(p) = self.send_probes(now) {
            wake = Some(wake.map_or(p, |w| w.min(p)));
        }
        wake
    }

    /// Sends the probes that are due; returns when the next one is.
    fn send_probes(&mut self, now: Millis) -> Option<Millis> {
        let mut wake: Option<Millis> = None;
        for (uid, p) in self.pods.iter_mut() {
            if p.lifecycle != Lifecycle::Running {
                continue;
            }
            for c in p.ctrs.iter_mut() {
                let (Some(probes), Some(id)) = (c.probes.as_mut(), c.id.as_ref()) else {
                    continue;
                };
                for kind in probes.due(now) {
                    let Some(spec) = probe::probe_of(&c.cspec, kind).cloned() else {
                        continue;
                    };
                    let target = probe::Target {
                        runtime: self.deps.runtime.clone(),
                        id: id.clone(),
                        pod_ip: p.pod_ip,
                    };
                    let (tx, uid, container, run) =
                        (self.tx.clone(), uid.clone(), c.name.clone(), c.run);
                    tokio::spawn(async move {
                        let result = probe::run(&spec, &target).await;
                        if let Err(reason) = &result {
                            tracing::debug!(%uid, %container, ?kind, %reason, "probe failed");
                        }
                        let _ = tx
                            .send(Event::Probed {
                                uid,
                                container,
                                run,
                                kind,
                                ok: result.is_ok(),
                            })
                            .await;
                    });
                }
                if let Some(w) = probes.next_wake() {
                    wake = Some(wake.map_or(w, |x| x.min(w)));
                }
            }
        }
        wake
    }

    fn start_pod(&mut self, uid: String) {
        let Some(spec) = self
            .runnable()
            .pods
            .iter()
            .find(|p| p.uid.as_str() == uid)
            .cloned()
        else {
            return;
        };
        let ctrs = spec
            .init_containers
            .iter()
            .map(|c| Ctr::new(c, true))
            .chain(spec.containers.iter().map(|c| Ctr::new(c, false)))
            .collect();
        info!(pod = %spec.name, %uid, "starting pod");
        self.pods.insert(
            uid.clone(),
            Pod {
                spec: spec.clone(),
                lifecycle: Lifecycle::Starting,
                pod_ip: None,
                ctrs,
                _ports: Vec::new(),
                busy: 1,
                init_done: false,
            },
        );
        self.status_dirty = true;
        let deps = self.deps.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let progress = tx.clone();
            let u = uid.clone();
            let result = pod::pull(&deps, &spec, |c| {
                let _ = progress.try_send(Event::Pulling {
                    uid: u.clone(),
                    container: c.to_owned(),
                });
            })
            .await;
            let _ = tx.send(Event::Pulled { uid, result }).await;
        });
    }

    /// Prepares a pulled pod (network, volumes, run specs) in a worker.
    pub(super) fn prepare_pod(&self, uid: String, spec: PodSpec, images: Vec<ImageConfig>) {
        let (deps, tx) = (self.deps.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = pod::start(deps, spec, images).await;
            let _ = tx
                .send(Event::Started {
                    uid,
                    result: Box::new(result),
                })
                .await;
        });
    }

    pub(super) fn stop_pod(&mut self, uid: &str) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        if p.lifecycle != Lifecycle::Stopping {
            info!(pod = %p.spec.name, %uid, "stopping pod");
        }
        p.lifecycle = Lifecycle::Stopping;
        p._ports.clear();
        if p.busy > 0 {
            return; // resumed when the last worker reports back
        }
        p.busy = 1;
        let containers = pod::all_containers(&p.spec)
            .map(|c| c.name.to_string())
            .collect();
        let grace = if self.force_stop.remove(uid) {
            Duration::ZERO
        } else {
            Duration::from_secs(u64::from(p.spec.termination_grace_secs.min(300)))
        };
        let (deps, tx, uid) = (self.deps.clone(), self.tx.clone(), uid.to_owned());
        tokio::spawn(async move {
            pod::stop(deps, uid.clone(), containers, grace).await;
            let _ = tx.send(Event::Stopped { uid }).await;
        });
    }

    /// Runs a container of a prepared pod: its first run, or a restart (counted, and one
    /// level further into the backoff).
    fn run_container(&mut self, uid: &str, name: &str, restart: bool) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        let Some(c) = p.ctrs.iter_mut().find(|c| c.name == name) else {
            return;
        };
        let (Some(spec), Some(img)) = (c.spec.clone(), c.image.clone()) else {
            return;
        };
        c.obs = ContainerObs::Creating;
        c.early_exit = None;
        if restart {
            info!(pod = %p.spec.name, container = name, restarts = c.restarts + 1, "restarting container");
            c.restarts += 1;
            c.level += 1;
        } else {
            info!(pod = %p.spec.name, container = name, init = c.init, "starting container");
        }
        p.busy += 1;
        if restart {
            self.save_record(uid);
        }
        let dir = self.deps.container_dir(uid, name);
        let (deps, tx, uid, name) = (
            self.deps.clone(),
            self.tx.clone(),
            uid.to_owned(),
            name.to_owned(),
        );
        tokio::spawn(async move {
            let result = pod::run_container(&deps, &uid, spec, img, dir).await;
            let _ = tx
                .send(Event::Restarted {
                    uid,
                    container: name,
                    result: Box::new(result),
                })
                .await;
        });
    }

    /// Removes the finished init containers of pod `uid` (their runtime state and rootfs),
    /// one worker each.
    pub(super) fn remove_init_containers(&mut self, uid: &str) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        for c in p.ctrs.iter().filter(|c| c.init) {
            p.busy += 1;
            let (deps, tx, uid, name) = (
                self.deps.clone(),
                self.tx.clone(),
                uid.to_owned(),
                c.name.clone(),
            );
            tokio::spawn(async move {
                pod::remove_container(deps, uid.clone(), name).await;
                let _ = tx.send(Event::WorkerDone { uid }).await;
            });
        }
    }
}

/// Kills one container (SIGTERM, `grace`, SIGKILL) in a worker; its exit comes back from
/// the runtime like any other.
pub(super) fn kill(deps: &Arc<Deps>, id: ContainerId, grace: Duration) {
    tokio::spawn(pod::kill_container(deps.clone(), id, grace));
}

/// The pod's network was made again before `started` ran (see
/// [`crate::network::Network::ensure_pod`]): its address (and so its hostPort rules) follows, and,
/// if the network namespace is a new one, the pod's other running containers, cut off in
/// the old one, are killed (SIGTERM, the grace period, SIGKILL) to be restarted into it, as
/// kubelet does with a new sandbox.
pub(super) fn on_new_sandbox(
    p: &mut Pod,
    started: &str,
    sandbox: &crate::network::Sandbox,
    deps: &Arc<Deps>,
) {
    let ip = Some(IpAddr::V4(sandbox.net.ip));
    warn!(pod = %p.spec.name, new_netns = sandbox.new_netns, ?ip, "pod sandbox made again");
    p.pod_ip = ip;
    if !sandbox.new_netns {
        return;
    }
    let grace = Duration::from_secs(u64::from(p.spec.termination_grace_secs.min(300)));
    for c in p.ctrs.iter().filter(|c| c.name != started) {
        if let (ContainerObs::Running { .. }, Some(id)) = (c.obs, c.id.clone()) {
            info!(pod = %p.spec.name, container = %c.name, "pod sandbox changed; restarting the container into it");
            kill(deps, id, grace);
        }
    }
}
