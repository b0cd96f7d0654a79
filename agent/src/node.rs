//! The node loop: the agent's single owner of state, driven by one closed event enum.
//!
//! Inputs are bus events (desired state, status requests, connectivity), container exits
//! from the runtime, and results from pod workers. Each turn it asks the pure reconciler
//! what to do and hands the steps to workers. Nothing here blocks: runtime, image and
//! network calls happen in workers, which report back as events.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_proto::{
    BString, BVec, Body, Capacity, ContainerSpec, ContainerState, ContainerStatus, DesiredState,
    Heartbeat, Hello, Label, NodeName, NodeStatus, PodSpec, PodStatus, Termination,
};
use tokio::sync::mpsc;
use tracing::{error, info, instrument, warn};

use crate::bus::{Bus, BusEvent};
use crate::image::{ImageConfig, ImageStore, ImageStoreConfig, Platform};
use crate::network::{NetConfig, Network, PortForward};
use crate::pod::{self, ContainerRecord, Deps, PodRecord, StartFailure, StartedPod};
use crate::probe::{self, ContainerProbes, Verdict};
use crate::reconcile::{self, ContainerObs, CtrObs, Lifecycle, Millis, PodObs, Step};
use crate::runtime::{ContainerId, ExitEvent, ExitReason, RunSpec};
use crate::state::StateFile;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Network(#[from] crate::network::NetError),
    #[error(transparent)]
    Image(#[from] Box<crate::image::ImageError>),
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct AgentConfig {
    pub node: NodeName,
    pub coordinator: String,
    pub data_dir: PathBuf,
    /// Where OCI bundles go, on a tmpfs (see [`crate::runtime::tmpfs_bundles_dir`]).
    pub run_dir: PathBuf,
    pub labels: Vec<(String, String)>,
    pub allocatable: Capacity,
    pub address: Option<IpAddr>,
    pub pod_cidr: Option<String>,
    pub insecure_registries: Vec<String>,
    /// Docker `config.json`-style registry credentials and per-registry CAs.
    pub registry_config: Option<PathBuf>,
    /// A PEM CA bundle trusted for every registry.
    pub registry_ca: Option<PathBuf>,
    /// A registry tried first for every image (`--registry-mirror`).
    pub registry_mirror: Option<crate::image::RegistryMirror>,
    /// OCI archives and layouts imported into the image store at start.
    pub preload_images: Option<PathBuf>,
    /// Image store disk budget and free-space floor.
    pub image_limits: crate::image::DiskLimits,
    pub heartbeat_interval: Duration,
    pub cgroup_root: String,
    pub log_max_bytes: u64,
    pub pids_limit: i64,
    /// Stop every pod when the agent is asked to exit. Off by default: pods keep running and
    /// the next agent process adopts them.
    pub stop_pods_on_exit: bool,
    /// CA, client certificate and key for an `mqtts://` broker (see [`crate::mqtt_tls`]).
    pub mqtt_tls: Option<crate::mqtt_tls::MqttTls>,
    /// The enrolled identity: sign what we send, verify what we get (see
    /// [`crate::identity`]). `None` on fleets without enrollment.
    pub security: Option<crate::identity::AgentSecurity>,
}

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
        result: Box<Result<pod::Ran, String>>,
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

struct Ctr {
    name: String,
    /// An init container (run to completion before the main ones).
    init: bool,
    cspec: ContainerSpec,
    id: Option<ContainerId>,
    obs: ContainerObs,
    report: ContainerState,
    /// Consecutive restarts, for the backoff; reset by a long run.
    level: u32,
    restarts: u32,
    spec: Option<RunSpec>,
    image: Option<ImageConfig>,
    /// Counts runs, so that a probe result from an earlier run is ignored.
    run: u64,
    /// The probe schedule of the current run (`None` while not running).
    probes: Option<ContainerProbes>,
    last_termination: Option<Termination>,
    /// Why the agent is killing the current run (a failed liveness or startup probe).
    kill_reason: Option<&'static str>,
    /// An exit that arrived while the start of this run was still being reported: the
    /// reaper thread and the starting worker race, and a container that exits at once
    /// (`exit 3`) is often reaped first. Applied as soon as the start is recorded.
    early_exit: Option<(i32, bool)>,
}

impl Ctr {
    /// Records that the current run ended; a run long enough resets the restart backoff.
    fn apply_exit(&mut self, code: i32, oom: bool, now: Millis) {
        let ran_for = match self.obs {
            ContainerObs::Running { since } => now.saturating_sub(since),
            _ => 0,
        };
        if ran_for >= reconcile::BACKOFF_RESET_AFTER {
            self.level = 0;
        }
        self.obs = ContainerObs::Exited {
            code,
            oom,
            at: now,
            ran_for,
        };
        self.report = if oom {
            ContainerState::OomKilled
        } else {
            ContainerState::Exited { code }
        };
        self.probes = None;
        self.last_termination = Some(termination(code, oom, self.kill_reason.take()));
    }

    fn new(c: &ContainerSpec, init: bool) -> Self {
        Self {
            name: c.name.to_string(),
            init,
            cspec: c.clone(),
            id: None,
            obs: ContainerObs::Waiting,
            report: ContainerState::Pending,
            level: 0,
            restarts: 0,
            spec: None,
            image: None,
            run: 0,
            probes: None,
            last_termination: None,
            kill_reason: None,
            early_exit: None,
        }
    }

    fn status(&self) -> Option<ContainerStatus> {
        Some(ContainerStatus {
            name: BString::new(self.name.as_str()).ok()?,
            state: self.report.clone(),
            restart_count: self.restarts,
            ready: !self.init
                && matches!(self.report, ContainerState::Running { .. })
                && self.probes.as_ref().is_some_and(|p| p.ready()),
            last_termination: self.last_termination.clone(),
        })
    }
}

struct Pod {
    spec: PodSpec,
    lifecycle: Lifecycle,
    pod_ip: Option<IpAddr>,
    ctrs: Vec<Ctr>,
    _forwards: Vec<PortForward>,
    /// Workers (pull, start, run, remove) running for this pod. A stop waits for them all,
    /// so a worker can never create something after the stop has cleaned up.
    busy: u32,
    /// Every init container has succeeded once; kept in the pod's record.
    init_done: bool,
}

impl Pod {
    fn record(&self) -> PodRecord {
        PodRecord {
            init_done: self.init_done,
            containers: self
                .ctrs
                .iter()
                .map(|c| ContainerRecord {
                    name: c.name.clone(),
                    restarts: c.restarts,
                    last_termination: c.last_termination.clone(),
                })
                .collect(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Agent {
    cfg: AgentConfig,
    deps: Arc<Deps>,
    state_file: StateFile,
    desired: DesiredState,
    pods: BTreeMap<String, Pod>,
    /// Pods whose start failed: not retried before this time.
    cooldown: BTreeMap<String, (Millis, u32)>,
    tx: mpsc::Sender<Event>,
    epoch: Instant,
    status_dirty: bool,
    /// Hello is repeated with every heartbeat until a desired state arrives: a Hello sent
    /// before the coordinator subscribed (it restarted with its embedded broker) is lost.
    hello_pending: bool,
    /// Set while the agent has no broker connection (and from start until the first one).
    offline: bool,
    /// The first desired state after being offline is still to come.
    back_from_offline: bool,
    /// Pods to stop without a grace period (see [`Agent::note_evicted`]).
    force_stop: std::collections::BTreeSet<String>,
    /// The desired state's secrets, opened (`deps.secrets` reads the same set).
    secrets: crate::secrets::DeviceSecrets,
}

impl Agent {
    fn mono(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    fn hello(&self) -> Body {
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
            agent_version: env!("CARGO_PKG_VERSION").try_into().unwrap_or_default(),
            allocatable: self.cfg.allocatable,
            labels: BVec::from_vec(labels.into_iter().take(64).collect()).unwrap_or_default(),
            address: self.cfg.address,
            pod_cidr: BString::new(self.deps.network.config().pod_cidr.to_string())
                .unwrap_or_default(),
            applied_generation: self.desired.generation,
            // Filled in by the bus, which keeps the link's history.
            last_connect_error: None,
        })
    }

    fn status(&self) -> NodeStatus {
        let pods = self
            .pods
            .iter()
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
                })
            })
            .take(baton_proto::MAX_PODS_PER_NODE)
            .collect::<Vec<_>>();
        NodeStatus {
            applied_generation: self.desired.generation,
            pods: BVec::from_vec(pods).unwrap_or_default(),
        }
    }

    fn observed(&self) -> BTreeMap<String, PodObs> {
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

    /// One reconcile turn; returns when to run again for pending backoffs.
    fn reconcile(&mut self) -> Option<Millis> {
        // Images of assigned and of still-tracked (running, stopping) pods are never
        // garbage-collected; cheap when nothing changed.
        let in_use: std::collections::BTreeSet<String> = self
            .desired
            .pods
            .iter()
            .chain(self.pods.values().map(|p| &p.spec))
            .flat_map(|p| pod::all_containers(p).map(|c| c.image.to_string()))
            .collect();
        self.deps.images.set_in_use(&in_use);
        let now = self.mono();
        let plan = reconcile::plan(&self.desired, &self.observed(), now);
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

    /// Persists the pod's record (restart counts, terminations, init done); best effort.
    fn save_record(&self, uid: &str) {
        let Some(p) = self.pods.get(uid) else {
            return;
        };
        let dir = self.deps.pod_dir(uid);
        if p.lifecycle == Lifecycle::Stopping || !dir.exists() {
            return;
        }
        if let Err(e) = p.record().store(&self.deps.record_path(uid)) {
            warn!(%uid, error = %e, "cannot persist pod record");
        }
    }

    fn start_pod(&mut self, uid: String) {
        let Some(spec) = self
            .desired
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
                _forwards: Vec::new(),
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

    fn stop_pod(&mut self, uid: &str) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        if p.lifecycle != Lifecycle::Stopping {
            info!(pod = %p.spec.name, %uid, "stopping pod");
        }
        p.lifecycle = Lifecycle::Stopping;
        p._forwards.clear();
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

    /// Tracks a pod taken over from a previous agent process as Running. Restart counts and
    /// last terminations come from the pod's record. Its init containers are done (its main
    /// containers run). Probes start again as if the containers had just passed their
    /// startup probe and were ready: the previous process reported them so, and flapping
    /// readiness on every agent upgrade would stall rollouts for nothing.
    fn track_adopted(&mut self, p: crate::adopt::AdoptedPod) {
        let since = self.mono();
        let uid = p.spec.uid.to_string();
        let record = p.record;
        let restore = |c: &mut Ctr| {
            if let Some(r) = record.container(&c.name) {
                c.restarts = r.restarts;
                c.last_termination = r.last_termination.clone();
            }
        };
        let mut ctrs: Vec<Ctr> = p
            .spec
            .init_containers
            .iter()
            .map(|c| {
                let mut ctr = Ctr::new(c, true);
                ctr.obs = ContainerObs::Exited {
                    code: 0,
                    oom: false,
                    at: since,
                    ran_for: 0,
                };
                ctr.report = ContainerState::Exited { code: 0 };
                restore(&mut ctr);
                ctr
            })
            .collect();
        for c in p.containers {
            let Some(cspec) = p.spec.containers.iter().find(|s| s.name.as_str() == c.name) else {
                continue;
            };
            let mut ctr = Ctr::new(cspec, false);
            ctr.id = Some(c.id);
            ctr.obs = ContainerObs::Running { since };
            ctr.report = ContainerState::Running {
                started_at_ms: c.adopted.created_at_ms.unwrap_or_else(now_ms),
            };
            ctr.spec = Some(c.spec);
            ctr.image = Some(c.image);
            ctr.run = 1;
            ctr.probes = Some(ContainerProbes::adopted(cspec, since));
            restore(&mut ctr);
            ctrs.push(ctr);
        }
        self.pods.insert(
            uid,
            Pod {
                spec: p.spec,
                lifecycle: Lifecycle::Running,
                pod_ip: p.pod_ip,
                ctrs,
                _forwards: p.forwards,
                busy: 0,
                init_done: true,
            },
        );
        self.status_dirty = true;
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
                    tokio::spawn(pod::kill_container(self.deps.clone(), id, grace));
                }
            }
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
        self.save_record(uid);
    }

    fn handle(&mut self, ev: Event, bus: &Bus) -> Result<(), AgentError> {
        match ev {
            Event::Bus(BusEvent::Connected) => {
                let _ = bus.publish(self.hello());
                self.hello_pending = true;
                self.status_dirty = true;
                self.back_from_offline = std::mem::replace(&mut self.offline, false);
            }
            Event::Bus(BusEvent::Disconnected) => self.offline = true,
            Event::Bus(BusEvent::StatusRequest) => {
                // The coordinator may not know this node at all (its store was replaced).
                let _ = bus.publish(self.hello());
                self.status_dirty = true;
            }
            Event::Bus(BusEvent::Desired(d)) => {
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
                    self.state_file.store(&d)?;
                    self.secrets.update(&d.secrets);
                    self.desired = d;
                    self.status_dirty = true;
                }
            }
            Event::Pulling { uid, container } => {
                if let Some(c) = self
                    .pods
                    .get_mut(&uid)
                    .and_then(|p| p.ctrs.iter_mut().find(|c| c.name == container))
                {
                    if c.report == ContainerState::Pending {
                        c.report = ContainerState::Pulling;
                        self.status_dirty = true;
                    }
                }
            }
            Event::Pulled { uid, result } => match result {
                Ok(images) => {
                    let Some(p) = self.pods.get_mut(&uid) else {
                        return Ok(());
                    };
                    if p.lifecycle != Lifecycle::Starting {
                        p.busy = p.busy.saturating_sub(1);
                        self.stop_pod(&uid);
                        return Ok(());
                    }
                    for (c, img) in p.ctrs.iter_mut().zip(&images) {
                        c.image = Some(img.clone());
                        c.report = ContainerState::Pending;
                    }
                    let (deps, tx, spec) = (self.deps.clone(), self.tx.clone(), p.spec.clone());
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
                Err(f) => self.on_start_failed(&uid, f),
            },
            Event::Started { uid, result } => match *result {
                Ok(started) => {
                    let Some(p) = self.pods.get_mut(&uid) else {
                        return Ok(());
                    };
                    p.busy = p.busy.saturating_sub(1);
                    if p.lifecycle == Lifecycle::Stopping {
                        drop(started);
                        self.stop_pod(&uid);
                        return Ok(());
                    }
                    // Prepared: the reconciler now starts the containers, init ones first.
                    p.lifecycle = Lifecycle::Running;
                    p.pod_ip = started.pod_ip;
                    p._forwards = started.forwards;
                    for s in started.containers {
                        if let Some(c) = p.ctrs.iter_mut().find(|c| c.name == s.name) {
                            c.id = Some(s.id);
                            c.spec = Some(s.spec);
                        }
                    }
                    self.cooldown.remove(&uid);
                    self.status_dirty = true;
                }
                Err(f) => self.on_start_failed(&uid, f),
            },
            Event::Restarted {
                uid,
                container,
                result,
            } => {
                let now = self.mono();
                let Some(p) = self.pods.get_mut(&uid) else {
                    return Ok(());
                };
                p.busy = p.busy.saturating_sub(1);
                if p.lifecycle == Lifecycle::Stopping {
                    self.stop_pod(&uid);
                    return Ok(());
                }
                if let Ok(pod::Ran {
                    sandbox: Some(sandbox),
                    ..
                }) = result.as_ref()
                {
                    on_new_sandbox(p, &container, sandbox, &self.deps);
                }
                let Some(c) = p.ctrs.iter_mut().find(|c| c.name == container) else {
                    return Ok(());
                };
                match *result {
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
                            self.after_exit(&uid);
                            return Ok(());
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
            Event::WorkerDone { uid } => {
                if let Some(p) = self.pods.get_mut(&uid) {
                    p.busy = p.busy.saturating_sub(1);
                    if p.lifecycle == Lifecycle::Stopping {
                        self.stop_pod(&uid);
                    }
                }
            }
            Event::Probed {
                uid,
                container,
                run,
                kind,
                ok,
            } => self.on_probed(&uid, &container, run, kind, ok),
            Event::Stopped { uid } => {
                if let Some(p) = self.pods.get(&uid) {
                    info!(pod = %p.spec.name, %uid, "pod stopped");
                }
                self.pods.remove(&uid);
                self.force_stop.remove(&uid);
                self.status_dirty = true;
            }
            Event::Exit(ExitEvent { id, reason }) => {
                let now = self.mono();
                let mut exited_in = None;
                for (uid, p) in self.pods.iter_mut() {
                    let Some(c) = p.ctrs.iter_mut().find(|c| c.id.as_ref() == Some(&id)) else {
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
        }
        Ok(())
    }
}

/// The pod's network was made again before `started` ran (see [`Network::ensure_pod`]):
/// its address and hostPort forwards follow, and, if the network namespace is a new one,
/// the pod's other running containers, cut off in the old one, are killed (SIGTERM, the
/// grace period, SIGKILL) to be restarted into it, as kubelet does with a new sandbox.
fn on_new_sandbox(p: &mut Pod, started: &str, sandbox: &crate::network::Sandbox, deps: &Arc<Deps>) {
    let ip = Some(IpAddr::V4(sandbox.net.ip));
    warn!(pod = %p.spec.name, new_netns = sandbox.new_netns, ?ip, "pod sandbox made again");
    if p.pod_ip != ip {
        p._forwards.clear();
        match pod::start_forwards(&p.spec, ip) {
            Ok(f) => p._forwards = f,
            Err(e) => warn!(pod = %p.spec.name, reason = %e.reason, "hostPort forwards lost"),
        }
        p.pod_ip = ip;
    }
    if !sandbox.new_netns {
        return;
    }
    let grace = Duration::from_secs(u64::from(p.spec.termination_grace_secs.min(300)));
    for c in p.ctrs.iter().filter(|c| c.name != started) {
        if let (ContainerObs::Running { .. }, Some(id)) = (c.obs, c.id.clone()) {
            info!(pod = %p.spec.name, container = %c.name, "pod sandbox changed; restarting the container into it");
            tokio::spawn(pod::kill_container(deps.clone(), id, grace));
        }
    }
}

/// k8s's words for how a run ended: why the agent killed it, else `OOMKilled`, `Completed`
/// (exit 0) or `Error`.
fn termination(code: i32, oom: bool, killed_for: Option<&'static str>) -> Termination {
    let reason = match (killed_for, oom, code) {
        (Some(r), _, _) => r,
        (None, true, _) => "OOMKilled",
        (None, false, 0) => "Completed",
        (None, false, _) => "Error",
    };
    Termination {
        exit_code: code,
        reason: BString::new(reason).unwrap_or_default(),
        finished_at_ms: now_ms(),
    }
}

fn truncate(reason: &str) -> BString<1024> {
    let mut s: String = reason.chars().take(1000).collect();
    while s.len() > 1024 {
        s.pop();
    }
    BString::new(s).unwrap_or_default()
}

/// Removes everything this agent's data dir owns: containers, rootfs mounts, pod networks
/// and directories (`baton-agent reset`). A normal start adopts instead (see [`crate::adopt`]).
#[instrument(skip_all)]
pub fn clean_leftovers(deps: &Deps) {
    let ids = deps.runtime.list().unwrap_or_default();
    crate::adopt::remove_leftovers(deps, &ids, &std::collections::BTreeSet::new());
}

pub fn build_deps(
    cfg: &AgentConfig,
    exits: mpsc::UnboundedSender<ExitEvent>,
) -> Result<Deps, AgentError> {
    let dir = |p: PathBuf| -> Result<PathBuf, AgentError> {
        crate::datadir::create_private_dir(&p).map_err(|source| AgentError::DataDir {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    };
    let bundles = crate::runtime::tmpfs_bundles_dir(&cfg.run_dir, cfg.node.as_str())?;
    let runtime = crate::runtime::youki::YoukiRuntime::with_bundles_dir(
        dir(cfg.data_dir.join("runtime"))?,
        bundles,
        exits,
    )?;
    let registry_config = match &cfg.registry_config {
        Some(p) => crate::image::RegistryConfig::load(p).map_err(Box::new)?,
        None => Default::default(),
    };
    let registry_ca = match &cfg.registry_ca {
        Some(p) => vec![crate::image::load_ca(p).map_err(Box::new)?],
        None => Vec::new(),
    };
    let images = ImageStore::new(ImageStoreConfig {
        insecure_registries: cfg.insecure_registries.clone(),
        registry_config,
        registry_ca,
        limits: cfg.image_limits,
        mirror: cfg.registry_mirror.clone(),
        ..ImageStoreConfig::new(dir(cfg.data_dir.join("images"))?, Platform::host())
    })
    .map_err(Box::new)?;
    let net_cfg = NetConfig::derive(
        cfg.node.as_str(),
        dir(cfg.data_dir.join("net"))?,
        cfg.pod_cidr.as_deref(),
    )?;
    Ok(Deps {
        node: cfg.node.to_string(),
        pods_dir: dir(cfg.data_dir.join("pods"))?,
        cgroup_root: cfg.cgroup_root.clone(),
        log_max_bytes: cfg.log_max_bytes,
        pids_limit: cfg.pids_limit,
        runtime: Arc::new(runtime),
        images,
        network: Network::new(net_cfg),
        secrets: Arc::new(crate::volumes::NoSecrets),
    })
}

/// Imports `--preload-images` before any pod starts, so that their first reconcile finds
/// the images. A broken archive is logged and skipped: the agent still starts.
async fn preload_images(images: &ImageStore, dir: &std::path::Path) {
    match images.preload_dir(dir).await {
        Ok(r) => tracing::info!(
            dir = %dir.display(),
            imported = ?r.imported,
            failed = r.failed.len(),
            "preloaded images"
        ),
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot preload images"),
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    crate::datadir::create_private_dir(&cfg.data_dir).map_err(|source| AgentError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let secrets = crate::secrets::DeviceSecrets::new(cfg.node.as_str(), &cfg.data_dir);
    let mut deps = build_deps(&cfg, exit_tx)?;
    deps.secrets = Arc::new(secrets.clone());
    let deps = Arc::new(deps);
    deps.network.setup_node()?;
    if let Some(dir) = &cfg.preload_images {
        preload_images(&deps.images, dir).await;
    }

    let state_file = StateFile::new(&cfg.data_dir);
    let desired = match state_file.load() {
        Ok(d) => d,
        Err(e) => {
            // A corrupt file must not keep the node from ever starting: run nothing until
            // the coordinator says otherwise, and say so loudly.
            error!(error = %e, "ignoring unreadable desired state");
            DesiredState {
                generation: 0,
                pods: BVec::new(),
                secrets: BVec::new(),
            }
        }
    };
    info!(node = %cfg.node, generation = desired.generation, pods = desired.pods.len(), "agent starting");
    // Sealed in desired.bin, so secrets are back after a reboot without the network.
    secrets.update(&desired.secrets);
    // Containers outlive the agent: take over what still runs instead of restarting it.
    let adopted = crate::adopt::adopt_or_clean(&deps, &desired).await;

    let (tx, mut rx) = mpsc::channel(256);
    let (bus_tx, mut bus_rx) = mpsc::channel(64);
    let bus = Bus::start_secure(
        &cfg.coordinator,
        cfg.node.clone(),
        cfg.mqtt_tls.as_ref(),
        cfg.security.clone(),
        bus_tx,
    )?;
    let heartbeat_every = cfg.heartbeat_interval;
    let stop_on_exit = cfg.stop_pods_on_exit;
    let mut agent = Agent {
        cfg,
        deps,
        state_file,
        desired,
        pods: BTreeMap::new(),
        cooldown: BTreeMap::new(),
        tx,
        epoch: Instant::now(),
        status_dirty: true,
        hello_pending: false,
        offline: true,
        back_from_offline: false,
        force_stop: Default::default(),
        secrets,
    };
    for p in adopted {
        agent.track_adopted(p);
    }

    // Images are also collected before every pull; this catches a disk filled by others.
    let images = agent.deps.images.clone();
    let image_gc = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(300));
        loop {
            every.tick().await;
            if let Err(e) = images.gc().await {
                warn!(error = %e, "image garbage collection failed");
            }
        }
    });

    tokio::pin!(shutdown);
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut wake: Option<Millis> = None;
    loop {
        let sleep_for = wake
            .map(|w| Duration::from_millis(w.saturating_sub(agent.mono())))
            .unwrap_or(Duration::from_secs(3600));
        let ev = tokio::select! {
            _ = &mut shutdown => break,
            Some(e) = rx.recv() => Some(e),
            Some(e) = bus_rx.recv() => Some(Event::Bus(e)),
            Some(e) = exit_rx.recv() => Some(Event::Exit(e)),
            _ = heartbeat.tick() => {
                if agent.hello_pending {
                    let _ = bus.publish(agent.hello());
                }
                let status = agent.status();
                let _ = bus.publish(Body::Heartbeat(Heartbeat { applied_generation: agent.desired.generation, status_digest: status.digest() }));
                None
            }
            _ = tokio::time::sleep(sleep_for) => None,
        };
        if let Some(ev) = ev {
            if let Err(e) = agent.handle(ev, &bus) {
                error!(error = %e, "event handling failed");
            }
        }
        wake = agent.reconcile();
        if agent.status_dirty
            && bus.is_connected()
            && bus.publish(Body::Status(agent.status())).is_ok()
        {
            agent.status_dirty = false;
        }
    }

    if stop_on_exit {
        info!("stopping all pods before exit");
        agent.desired = DesiredState {
            generation: agent.desired.generation,
            pods: BVec::new(),
            secrets: agent.desired.secrets.clone(),
        };
        agent.reconcile();
        while !agent.pods.is_empty() {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(ev)) => {
                    if let Err(e) = agent.handle(ev, &bus) {
                        error!(error = %e, "event handling failed");
                    }
                    agent.reconcile();
                }
                _ => break,
            }
        }
    }
    image_gc.abort();
    info!("agent stopped");
    Ok(())
}
