//! The node loop: the agent's single owner of state, driven by one closed event enum.
//!
//! Inputs are bus events (desired state, status requests, connectivity), container exits
//! from the runtime, and results from pod workers. Each turn it asks the pure reconciler
//! what to do and hands the steps to workers. Nothing here blocks: runtime, image and
//! network calls happen in workers, which report back as events.
//!
//! The loop never sees MQTT: it is given a [`Publish`] to send through and a channel of
//! [`BusEvent`]s, so the caller (`main.rs`) starts the real [`Bus`] and the unit tests
//! (`node/tests.rs`) drive the same handlers with a recorder and the fake runtime.
//!
//! - `events.rs`: the [`Event`] enum and one handler per event;
//! - `workers.rs`: the reconciler's steps, carried out in worker tasks;
//! - `report.rs`: what is told to the coordinator and to the reconciler;
//! - `pods.rs`: what the loop knows of each pod and container;
//! - `hostports.rs`: the node's hostPort DNAT rules, following the pods.

mod cron;
mod events;
mod hostports;
mod pods;
mod pressure;
mod report;
mod services;
pub mod taints;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::{BVec, Body, Capacity, ContainerState, DesiredState, NodeName, PodSpec};
use tokio::sync::mpsc;
use tracing::{error, info, instrument, warn};

pub use events::Event;

use crate::bus::{Bus, BusError, BusEvent};
use crate::image::{ImageStore, ImageStoreConfig, Platform};
use crate::network::{NetConfig, Network};
use crate::pod::Deps;
use crate::probe::ContainerProbes;
use crate::reconcile::{ContainerObs, Lifecycle, Millis};
use crate::runtime::ExitEvent;
use crate::state::StateFile;
use pods::{now_ms, Ctr, Pod};

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
    pub data_dir: PathBuf,
    /// Where OCI bundles go, on a tmpfs (see [`crate::runtime::tmpfs_bundles_dir`]).
    pub run_dir: PathBuf,
    pub labels: Vec<(String, String)>,
    /// `--register-with-taints`, sent in every Hello (the coordinator takes them once).
    pub register_taints: Vec<baton_proto::NodeTaint>,
    pub allocatable: Capacity,
    pub address: Option<IpAddr>,
    pub pod_cidr: Option<String>,
    /// The node's upstream resolvers (kubelet's `--resolv-conf`).
    pub resolv_conf: PathBuf,
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
    /// The link profile: heartbeat cadence, keepalive, status batching.
    pub link: crate::link_profile::Settings,
    pub cgroup_root: String,
    pub log_max_bytes: u64,
    pub pids_limit: i64,
    /// kubelet's `--eviction-hard`: the levels under which the node is under pressure.
    pub eviction_hard: crate::pressure::Thresholds,
    /// kubelet's `--eviction-soft`: levels that allow eviction only after their grace period.
    pub eviction_soft: crate::pressure::Thresholds,
    pub eviction_soft_grace: crate::pressure::debounce::GracePeriods,
    /// kubelet's `--eviction-pressure-transition-period`: how long a condition stays
    /// reported after its last threshold stopped being met.
    pub pressure_transition: Duration,
    /// Evict pods when reclaiming leaves the disk under pressure (kubelet always does; off
    /// for a node whose pods must never be stopped by it).
    pub pod_eviction: bool,
    /// Stop every pod when the agent is asked to exit. Off by default: pods keep running and
    /// the next agent process adopts them.
    pub stop_pods_on_exit: bool,
    /// `--release-public-key`: wins over the key pinned at enrollment
    /// (`crate::identity::release_key::load`).
    pub release_public_key: Option<String>,
}

/// Where the node loop sends what it tells the coordinator: the MQTT [`Bus`] in the agent,
/// a recorder in the unit tests.
pub trait Publish {
    /// Sends `body`, or drops it and says why: the protocol is level-triggered, so nothing
    /// is queued while offline (see [`crate::bus`]).
    fn publish(&self, body: Body) -> Result<(), BusError>;
    fn is_connected(&self) -> bool;
    /// The time, Unix milliseconds, if this node may trust it (node-scheduled CronJobs
    /// fire only then).
    fn trusted_now_ms(&self) -> Option<u64> {
        crate::identity::local_trusted_ms()
    }
}

impl Publish for Bus {
    fn publish(&self, body: Body) -> Result<(), BusError> {
        Bus::publish(self, body)
    }

    fn is_connected(&self) -> bool {
        Bus::is_connected(self)
    }

    fn trusted_now_ms(&self) -> Option<u64> {
        Bus::trusted_now_ms(self)
    }
}

struct Agent {
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
    /// When the pending status changes go out (the profile's batch), once they are due.
    status_due: Option<Millis>,
    /// The last heartbeat sent on this connection, and when: an unchanged one waits for
    /// the profile's `heartbeat_max`.
    last_beat: Option<(baton_proto::Heartbeat, Millis)>,
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
    /// The ConfigMaps the desired pods reference (`deps.config_maps` reads the same set).
    config_maps: crate::config_maps::DeviceConfigMaps,
    /// Room kept for desired state and pod records on a full disk.
    reserve: crate::reserve::Reserve,
    /// Why the last desired state could not be applied whole (with its cause), until one
    /// is; reported so that `describe node` says why the applied generation lags.
    apply_error: Option<String>,
    /// The conditions under pressure at the last heartbeat (held through the transition
    /// period).
    pressure: Vec<crate::pressure::Pressure>,
    /// Soft thresholds' and the transition period's memory.
    debounce: crate::pressure::debounce::Debounce,
    /// The reclaim started under the current disk pressure; set once it is done.
    reclaim: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// An image collection for ImageDiskPressure is running (one at a time).
    image_gc: Arc<std::sync::atomic::AtomicBool>,
    /// Pods evicted under node pressure, with the reason: stopped, reported `Evicted` and
    /// not started again while their desired state lists them.
    evicted: BTreeMap<String, String>,
    /// The update task (see [`crate::update`]): told of orders and of the node's health.
    updates: Option<mpsc::Sender<crate::update::UpdateEvent>>,
    /// A desired state came since this process started (probation needs one).
    got_desired: bool,
    /// Where the hostPort rules of the pods go after each turn; `None` in unit tests, which
    /// must not touch the host's iptables.
    host_ports: Option<tokio::sync::watch::Sender<Vec<crate::network::HostPortRule>>>,
    /// Where accepted Service tables go (`services`); `None` in unit tests.
    services: Option<tokio::sync::watch::Sender<baton_proto::ServiceTable>>,
    /// Usage samples and reports (`crate::usage`).
    usage: crate::usage::UsageState,
    /// Node-scheduled CronJobs: their runs and reports (`cron.rs`).
    cron: cron::CronState,
}

impl Agent {
    fn new(
        cfg: AgentConfig,
        deps: Arc<Deps>,
        desired: DesiredState,
        secrets: crate::secrets::DeviceSecrets,
        tx: mpsc::Sender<Event>,
    ) -> Self {
        let cfg_data_dir = cfg.data_dir.clone();
        Agent {
            state_file: StateFile::new(&cfg.data_dir),
            cfg,
            deps,
            desired,
            pods: BTreeMap::new(),
            cooldown: BTreeMap::new(),
            tx,
            epoch: Instant::now(),
            status_dirty: true,
            status_due: None,
            last_beat: None,
            hello_pending: false,
            offline: true,
            back_from_offline: false,
            force_stop: Default::default(),
            secrets,
            config_maps: Default::default(),
            reserve: crate::reserve::Reserve::new(
                &cfg_data_dir,
                crate::reserve::DEFAULT_RESERVE_BYTES,
            ),
            apply_error: None,
            pressure: Vec::new(),
            debounce: Default::default(),
            reclaim: None,
            image_gc: Arc::default(),
            evicted: BTreeMap::new(),
            updates: None,
            got_desired: false,
            host_ports: None,
            services: None,
            usage: Default::default(),
            cron: cron::CronState::load(&cfg_data_dir),
        }
    }

    fn mono(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// One turn of the loop: handle `ev` (if any), reconcile, and send the status if it
    /// changed. Returns when to run again for pending backoffs and probes.
    fn turn(&mut self, ev: Option<Event>, bus: &dyn Publish) -> Option<Millis> {
        if let Some(ev) = ev {
            if let Err(e) = self.handle(ev, bus) {
                error!(error = %e, "event handling failed");
            }
        }
        let cron_due = self.cron_turn(bus);
        let wake = self.reconcile();
        let status_due = self.publish_status(bus);
        self.publish_host_ports();
        [wake, status_due, cron_due].into_iter().flatten().min()
    }

    /// Hands the hostPort rules of the pods to their writer, if they changed.
    fn publish_host_ports(&self) {
        if let Some(tx) = &self.host_ports {
            let rules = hostports::rules(&self.pods);
            tx.send_if_modified(|cur| {
                let changed = *cur != rules;
                *cur = rules;
                changed
            });
        }
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
        let path = self.deps.record_path(uid);
        let record = p.record();
        if let Err(e) = self.reserve.write(|| record.store(&path)) {
            warn!(%uid, error = %e, "cannot persist pod record");
        }
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
                _ports: p.ports,
                busy: 0,
                init_done: true,
            },
        );
        self.status_dirty = true;
    }
}

/// The node, ready to run: its data dir, runtime, image store and node network are set
/// up, the desired state is loaded and the pods a previous agent left running are adopted.
/// Nothing has been said on the bus yet.
pub struct Node {
    agent: Agent,
    events: mpsc::Receiver<Event>,
    exits: mpsc::UnboundedReceiver<ExitEvent>,
    /// Set by the update task when the agent exits for an update.
    update_exit: Option<tokio::sync::watch::Receiver<bool>>,
    /// The highest leader's term persisted (see [`Node::leader_term`]).
    leader_term: u64,
}

impl Node {
    /// The container runtime, for `baton exec` sessions (served beside the loop).
    pub fn runtime(&self) -> Arc<dyn crate::runtime::Runtime> {
        self.agent.deps.runtime.clone()
    }

    /// The highest leader's term on disk, for the bus to start from (`crate::term`): the
    /// desired state's and the Service table's, each persisted with its message.
    pub fn leader_term(&self) -> u64 {
        self.leader_term
    }

    pub async fn prepare(cfg: AgentConfig) -> Result<Self, AgentError> {
        crate::datadir::create_private_dir(&cfg.data_dir).map_err(|source| {
            AgentError::DataDir {
                path: cfg.data_dir.clone(),
                source,
            }
        })?;
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let secrets = crate::secrets::DeviceSecrets::new(cfg.node.as_str(), &cfg.data_dir);
        let mut deps = build_deps(&cfg, exit_tx)?;
        deps.secrets = Arc::new(secrets.clone());
        // Persisted, so pods that use them start after a reboot without the network.
        let config_maps =
            crate::config_maps::DeviceConfigMaps::open(&cfg.data_dir.join("configmaps"));
        deps.config_maps = Arc::new(config_maps.clone());
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
                    term: 0,
                    crons: Default::default(),
                }
            }
        };
        info!(node = %cfg.node, generation = desired.generation, pods = desired.pods.len(), "agent starting");
        // Sealed in desired.bin, so secrets are back after a reboot without the network.
        secrets.update(&desired.secrets);
        let (tx, events) = mpsc::channel(256);
        let mut pods: Vec<PodSpec> = desired.pods.to_vec();
        let mut agent = Agent::new(cfg, deps.clone(), desired, secrets, tx);
        // Containers outlive the agent: take over what still runs instead of restarting it,
        // CronJob runs included (taken back into their history, not fired again).
        let found = crate::adopt::leftovers(&deps);
        let running: BTreeMap<String, Option<u64>> = found
            .iter()
            .filter(|(_, a)| a.running)
            .map(|(id, a)| (id.as_str().to_owned(), a.created_at_ms))
            .collect();
        let crons = &agent.desired.crons;
        pods.extend(agent.cron.runs.resume(crons, &running, now_ms()));
        let adopted = crate::adopt::adopt_or_clean(&deps, &pods, found).await;
        drop(pods);
        agent.config_maps = config_maps;
        if let Err(e) = agent.reserve.refill() {
            warn!(error = %e, "starting without a disk reserve");
        }
        for p in adopted {
            agent.track_adopted(p);
        }
        // The adopted pods' rules, the same as the previous agent left: written before the
        // loop ever runs, so that no turn can publish a smaller set first.
        let rules = hostports::rules(&agent.pods);
        hostports::first_sync(&agent.deps, &rules)?;
        agent.host_ports = Some(hostports::spawn_writer(agent.deps.clone(), rules));
        // Likewise the last Service table: the same rules back, never an empty set.
        let table = services::load(&agent.cfg.data_dir);
        let leader_term = agent.desired.term.max(table.term);
        let addr = agent.cfg.address;
        services::first_sync(&agent.deps, &table, addr)?;
        let tx = services::spawn_writer(agent.deps.clone(), table, addr);
        // Cluster DNS answers from the same table, on the bridge `setup_node` brought up.
        crate::dns::server::spawn(
            tx.subscribe(),
            &agent.deps.resolv_conf,
            agent.deps.network.gateway(),
        );
        agent.services = Some(tx);
        Ok(Node {
            agent,
            events,
            exits,
            update_exit: None,
            leader_term,
        })
    }

    /// Tells the update task of update orders and of the node's health. An exit for an
    /// update keeps the pods even with `--stop-pods-on-exit`: the next agent adopts them.
    pub fn with_updates(mut self, update: crate::update::Handle) -> Self {
        self.agent.updates = Some(update.events);
        self.update_exit = Some(update.exit);
        self
    }

    /// Runs the node loop until `shutdown` resolves: `bus_events` come from the broker link
    /// and what the node tells the coordinator goes out through `bus`.
    pub async fn run(
        self,
        bus: &dyn Publish,
        mut bus_events: mpsc::Receiver<BusEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let Node {
            mut agent,
            events: mut rx,
            exits: mut exit_rx,
            update_exit,
            ..
        } = self;
        let heartbeat_every = agent.cfg.link.heartbeat_every;
        let stop_on_exit = agent.cfg.stop_pods_on_exit;

        // Images are also collected before every pull; this catches a disk filled by others.
        let images = agent.deps.images.clone();
        let image_gc = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(300));
            loop {
                every.tick().await;
                // Every 5 min, so an idle link does not carry a pooled registry
                // connection's keepalives.
                images.close_idle_connections();
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
                Some(e) = bus_events.recv() => Some(Event::Bus(e)),
                Some(e) = exit_rx.recv() => Some(Event::Exit(e)),
                _ = heartbeat.tick() => {
                    agent.heartbeat(bus);
                    None
                }
                _ = tokio::time::sleep(sleep_for) => None,
            };
            wake = agent.turn(ev, bus);
        }

        let for_update = update_exit.is_some_and(|e| *e.borrow());
        if stop_on_exit && !for_update {
            info!("stopping all pods before exit");
            agent.desired = DesiredState {
                generation: agent.desired.generation,
                pods: BVec::new(),
                secrets: agent.desired.secrets.clone(),
                term: agent.desired.term,
                crons: Default::default(),
            };
            agent.reconcile();
            while !agent.pods.is_empty() {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Some(ev)) => {
                        if let Err(e) = agent.handle(ev, bus) {
                            error!(error = %e, "event handling failed");
                        }
                        agent.reconcile();
                    }
                    _ => break,
                }
            }
            // The writer may not get to run again before the process ends: write here too
            // (after the writer's newest set, so that a write of it still under way is not
            // the last).
            agent.publish_host_ports();
            if let Err(e) = agent
                .deps
                .network
                .sync_host_ports(&hostports::rules(&agent.pods))
            {
                error!(error = %e, "cannot remove the stopped pods' hostPort rules");
            }
        }
        image_gc.abort();
        info!("agent stopped");
        Ok(())
    }
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
    // libcontainer's state of the running containers sits beside the bundles, on the tmpfs
    // (as runc's /run/runc): it describes processes of this boot only. On the data disk a
    // power cut left a truncated state.json the agent could not load, delete or replace
    // (the emulated Pi), and every kill rewrote it on the SD card.
    let state = cfg.run_dir.join(cfg.node.as_str()).join("runtime");
    let runtime =
        crate::runtime::youki::YoukiRuntime::with_bundles_dir(dir(state.clone())?, bundles, exits)?;
    crate::runtime::move_old_state(&cfg.data_dir.join("runtime"), &state);
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
        config_maps: Arc::new(crate::volumes::NoSecrets),
        resolv_conf: cfg.resolv_conf.clone(),
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
