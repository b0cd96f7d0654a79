//! The node loop driven event by event, as `Node::run` drives it: a recorder stands in for
//! the bus, the fake runtime for youki, and the workers are the real ones (a preloaded
//! image in a temporary store, overlay rootfs mounts, host-network pods). Needs root for
//! the mounts, like the agent's other tests.

use std::cell::{Cell, RefCell};
use std::path::Path;

use baton_proto::{
    BString, ContainerSpec, ContainerState, DesiredState, NodeStatus, PodSpec, PullPolicy,
    RestartPolicy,
};
use sha2::{Digest, Sha256};

use super::*;
use crate::runtime::fake::Call;
use crate::runtime::{ContainerId, ExitReason, FakeRuntime, RunSpec};

const NODE: &str = "node-loop-unit";
/// A registry address nothing listens on: the image is preloaded.
const IMAGE: &str = "127.0.0.1:9/test/app:1";

/// A [`Publish`] that keeps what the node sends, and drops it while "disconnected" as the
/// real bus does.
struct Recorder {
    connected: Cell<bool>,
    sent: RefCell<Vec<Body>>,
    /// The trusted time the node is given (Unix ms; `None`: not trusted).
    clock: Cell<Option<u64>>,
}

impl Publish for Recorder {
    fn publish(&self, body: Body) -> Result<(), BusError> {
        if !self.connected.get() {
            return Err(BusError::Disconnected);
        }
        self.sent.borrow_mut().push(body);
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.connected.get()
    }

    fn trusted_now_ms(&self) -> Option<u64> {
        self.clock.get()
    }
}

impl Recorder {
    /// What was sent since the last call.
    fn take(&self) -> Vec<Body> {
        std::mem::take(&mut *self.sent.borrow_mut())
    }
}

fn kinds(sent: &[Body]) -> Vec<&'static str> {
    sent.iter()
        .map(|b| match b {
            Body::Hello(_) => "Hello",
            Body::Link(_) => "Link",
            Body::Heartbeat(_) => "Heartbeat",
            Body::Status(_) => "Status",
            Body::Usage(_) => "Usage",
            _ => "other",
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI layout in `dir` holding one image named [`IMAGE`] for this host's platform:
/// one layer, `Cmd ["/app"]`.
fn write_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes).unwrap();
        (d, bytes.len())
    };
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(2);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    layer.append_data(&mut h, "app", &b"#!"[..]).unwrap();
    let (ld, ls) = put(&layer.into_inner().unwrap());
    let p = Platform::host();
    let mut config = serde_json::json!({"architecture": p.arch, "os": p.os,
        "config": {"Cmd": ["/app"]}, "rootfs": {"type": "layers", "diff_ids": [ld]}});
    if let Some(v) = &p.variant {
        config["variant"] = v.as_str().into();
    }
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]});
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
         "annotations": {"org.opencontainers.image.ref.name": IMAGE}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn container(name: &str, image: &str, policy: PullPolicy) -> ContainerSpec {
    ContainerSpec {
        name: BString::new(name).unwrap(),
        image: BString::new(image).unwrap(),
        image_pull_policy: policy,
        command: BVec::new(),
        args: BVec::new(),
        env: BVec::new(),
        working_dir: None,
        ports: BVec::new(),
        resources: Default::default(),
        liveness_probe: None,
        readiness_probe: None,
        security: Default::default(),
        volume_mounts: BVec::new(),
        startup_probe: None,
    }
}

/// A host-network pod (no pod network to make) with one container `app`.
fn pod(uid: &str, grace_secs: u32) -> PodSpec {
    pod_of(
        uid,
        grace_secs,
        container("app", IMAGE, PullPolicy::IfNotPresent),
    )
}

fn pod_of(uid: &str, grace_secs: u32, c: ContainerSpec) -> PodSpec {
    PodSpec {
        name: BString::new(format!("pod-{uid}")).unwrap(),
        uid: BString::new(uid).unwrap(),
        host_network: true,
        restart_policy: RestartPolicy::Always,
        termination_grace_secs: grace_secs,
        containers: BVec::from_vec(vec![c]).unwrap(),
        init_containers: BVec::new(),
        volumes: BVec::new(),
        image_pull_secrets: BVec::new(),
        priority: 0,
        dns: None,
    }
}

fn desired(generation: u64, pods: Vec<PodSpec>) -> DesiredState {
    DesiredState {
        generation,
        pods: BVec::from_vec(pods).unwrap(),
        secrets: BVec::new(),
        term: 0,
        crons: Default::default(),
    }
}

fn id(s: &str) -> ContainerId {
    ContainerId::new(s).unwrap()
}

/// The node loop with everything it talks to, driven one event at a time.
struct Harness {
    agent: Agent,
    events: mpsc::Receiver<Event>,
    exits: mpsc::UnboundedReceiver<ExitEvent>,
    bus: Recorder,
    rt: Arc<FakeRuntime>,
    tmp: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let pods_dir = data.join("pods");
        std::fs::create_dir_all(&pods_dir).unwrap();
        let layout = tmp.path().join("layout");
        write_layout(&layout);
        let images =
            ImageStore::new(ImageStoreConfig::new(data.join("images"), Platform::host())).unwrap();
        assert_eq!(images.preload(&layout).await.unwrap(), [IMAGE]);
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let rt = Arc::new(FakeRuntime::new(exit_tx));
        let secrets = crate::secrets::DeviceSecrets::new(NODE, &data);
        let deps = Deps {
            node: NODE.into(),
            pods_dir,
            cgroup_root: "baton".into(),
            log_max_bytes: 1 << 20,
            pids_limit: 64,
            runtime: rt.clone(),
            images,
            network: Network::new(NetConfig::derive(NODE, data.join("net"), None).unwrap()),
            secrets: Arc::new(secrets.clone()),
            config_maps: Arc::new(crate::volumes::NoSecrets),
            resolv_conf: "/etc/resolv.conf".into(),
        };
        let cfg = AgentConfig {
            node: NodeName::new(NODE).unwrap(),
            data_dir: data.clone(),
            run_dir: tmp.path().join("run"),
            register_taints: Vec::new(),
            labels: vec![("zone".into(), "lab".into())],
            allocatable: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                pods: 10,
            },
            address: None,
            pod_cidr: None,
            resolv_conf: "/etc/resolv.conf".into(),
            insecure_registries: Vec::new(),
            registry_config: None,
            registry_ca: None,
            registry_mirror: None,
            preload_images: None,
            image_limits: Default::default(),
            // Every heartbeat goes out (each unit test looks at one), status at once.
            link: crate::link_profile::Settings {
                heartbeat_every: Duration::from_secs(5),
                heartbeat_max: Duration::ZERO,
                keepalive: Duration::from_secs(10),
                tcp_liveness: None,
                status_batch: Duration::ZERO,
                usage_every: Duration::from_secs(30),
            },
            cgroup_root: "baton".into(),
            log_max_bytes: 1 << 20,
            pids_limit: 64,
            eviction_hard: crate::pressure::Thresholds::parse(
                crate::pressure::DEFAULT_EVICTION_HARD,
            )
            .unwrap(),
            eviction_soft: Default::default(),
            eviction_soft_grace: Default::default(),
            pressure_transition: Duration::ZERO,
            pod_eviction: true,
            stop_pods_on_exit: false,
            release_public_key: None,
        };
        let (tx, events) = mpsc::channel(256);
        let agent = Agent::new(cfg, Arc::new(deps), desired(0, vec![]), secrets, tx);
        Harness {
            agent,
            events,
            exits,
            bus: Recorder {
                connected: Cell::new(false),
                sent: RefCell::new(Vec::new()),
                clock: Cell::new(crate::identity::local_trusted_ms()),
            },
            rt,
            tmp,
        }
    }

    /// One turn of the loop on `ev`, as `Node::run` takes it.
    fn turn(&mut self, ev: Event) -> Option<Millis> {
        self.agent.turn(Some(ev), &self.bus)
    }

    fn bus_event(&mut self, ev: BusEvent) -> Option<Millis> {
        if matches!(ev, BusEvent::Connected) {
            self.bus.connected.set(true);
        }
        if matches!(ev, BusEvent::Disconnected) {
            self.bus.connected.set(false);
        }
        self.turn(Event::Bus(ev))
    }

    /// Connected, with nothing sent yet.
    fn connect(&mut self) {
        self.bus_event(BusEvent::Connected);
        self.bus.take();
    }

    /// The next worker result or container exit, unhandled.
    async fn next(&mut self) -> Event {
        let next = async {
            tokio::select! {
                Some(e) = self.events.recv() => e,
                Some(e) = self.exits.recv() => Event::Exit(e),
            }
        };
        tokio::time::timeout(Duration::from_secs(20), next)
            .await
            .expect("no worker reported within 20 s")
    }

    /// Runs the loop on worker results until `done` holds.
    async fn until(&mut self, done: impl Fn(&Agent) -> bool) {
        while !done(&self.agent) {
            let ev = self.next().await;
            self.turn(ev);
        }
    }

    /// Pod `uid` of `d`, applied and run until its container runs.
    async fn run_pod(&mut self, d: DesiredState, uid: &str) {
        self.bus_event(BusEvent::Desired(d));
        self.until(|a| {
            a.pods.get(uid).is_some_and(|p| {
                p.ctrs
                    .iter()
                    .all(|c| matches!(c.obs, ContainerObs::Running { .. }))
            })
        })
        .await;
    }

    fn ctr(&self, uid: &str, name: &str) -> &Ctr {
        self.agent.pods[uid]
            .ctrs
            .iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    /// Moves the node loop's clock `d` ahead.
    fn advance(&mut self, d: Duration) {
        self.agent.epoch = self.agent.epoch.checked_sub(d).unwrap();
    }

    fn runs(&self) -> usize {
        self.rt
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Run(_)))
            .count()
    }

    /// The last full status sent, if any.
    fn last_status(sent: &[Body]) -> Option<&NodeStatus> {
        sent.iter().rev().find_map(|b| match b {
            Body::Status(s) => Some(s),
            _ => None,
        })
    }
}

/// Leaves no overlay mount behind, whatever the test did.
impl Drop for Harness {
    fn drop(&mut self) {
        let pods = self.tmp.path().join("data/pods");
        for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
            let ctrs = pod.path().join("containers");
            for c in std::fs::read_dir(ctrs).into_iter().flatten().flatten() {
                let _ = self.agent.deps.images.unmount_rootfs(&c.path());
            }
        }
    }
}

/// (Re)connecting: a Hello and a full Status at once, the Hello again with every heartbeat
/// until a desired state shows the coordinator heard it, then heartbeats alone.
#[tokio::test]
async fn a_connect_sends_hello_and_status_and_hello_repeats_until_a_desired_state() {
    let mut h = Harness::new().await;
    h.bus_event(BusEvent::Connected);
    let sent = h.bus.take();
    assert_eq!(kinds(&sent), ["Hello", "Link", "Status"]);
    let Body::Hello(hello) = &sent[0] else {
        unreachable!()
    };
    assert_eq!(hello.applied_generation, 0);
    assert_eq!(hello.labels[0].key.as_str(), "zone");

    // The first heartbeat also carries the first usage sample (after every Hello: the
    // coordinator keeps usage in memory only).
    h.agent.heartbeat(&h.bus);
    assert_eq!(
        kinds(&h.bus.take()),
        ["Hello", "Link", "Usage", "Heartbeat"]
    );

    h.bus_event(BusEvent::Desired(desired(4, vec![])));
    let sent = h.bus.take();
    assert_eq!(kinds(&sent), ["Status"]);
    assert_eq!(Harness::last_status(&sent).unwrap().applied_generation, 4);
    h.agent.heartbeat(&h.bus);
    let sent = h.bus.take();
    let [Body::Heartbeat(beat)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(beat.applied_generation, 4);
    assert_eq!(beat.status_digest, h.agent.status().digest());

    // A StatusRequest (the coordinator may have lost this node): Hello and Status again.
    h.bus_event(BusEvent::StatusRequest);
    assert_eq!(kinds(&h.bus.take()), ["Hello", "Link", "Status"]);
}

/// A link profile's quiet heartbeats: the first of a connection goes out, then one only
/// when what it carries changed, or after `heartbeat_max`. The Hello is followed by the
/// profile, so that the coordinator times the node by it.
#[tokio::test]
async fn heartbeats_go_out_only_when_they_change_or_after_the_profiles_max() {
    let mut h = Harness::new().await;
    h.agent.cfg.link.heartbeat_max = Duration::from_secs(3600);
    h.agent.cfg.link.keepalive = Duration::from_secs(180);
    h.bus_event(BusEvent::Connected);
    let sent = h.bus.take();
    let [Body::Hello(_), Body::Link(link), Body::Status(_)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!((link.keepalive_secs, link.heartbeat_max_secs), (180, 3600));
    h.bus_event(BusEvent::Desired(desired(2, vec![])));
    h.bus.take();
    h.agent.heartbeat(&h.bus);
    assert_eq!(kinds(&h.bus.take()), ["Usage", "Heartbeat"]);
    h.agent.heartbeat(&h.bus);
    h.agent.heartbeat(&h.bus);
    assert!(
        h.bus.take().is_empty(),
        "an unchanged heartbeat (or usage before the profile's usage_every) went out"
    );

    // A change (here the applied generation) goes out at the next heartbeat.
    h.bus_event(BusEvent::Desired(desired(3, vec![])));
    h.bus.take();
    h.agent.heartbeat(&h.bus);
    let sent = h.bus.take();
    let [Body::Heartbeat(beat)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(beat.applied_generation, 3);
    h.agent.heartbeat(&h.bus);
    assert!(h.bus.take().is_empty());

    // A new connection starts over: the coordinator may have forgotten the node.
    h.bus_event(BusEvent::Disconnected);
    h.bus_event(BusEvent::Connected);
    h.bus_event(BusEvent::Desired(desired(3, vec![])));
    h.bus.take();
    h.agent.heartbeat(&h.bus);
    assert_eq!(kinds(&h.bus.take()), ["Usage", "Heartbeat"]);

    // Past `heartbeat_max`, an unchanged one goes out.
    h.agent.cfg.link.heartbeat_max = Duration::from_millis(1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    h.agent.heartbeat(&h.bus);
    assert_eq!(kinds(&h.bus.take()), ["Heartbeat"]);
}

/// A profile's status batch: changes wait for it, and the turn says when it is due.
#[tokio::test]
async fn status_changes_wait_for_the_profiles_batch() {
    let mut h = Harness::new().await;
    h.agent.cfg.link.status_batch = Duration::from_millis(300);
    h.bus_event(BusEvent::Connected);
    assert_eq!(kinds(&h.bus.take()), ["Hello", "Link"]);
    let before = h.agent.mono();
    let wake = h.bus_event(BusEvent::Desired(desired(2, vec![])));
    assert!(
        h.bus.take().is_empty(),
        "the status did not wait for the batch"
    );
    let wake = wake.expect("a wake for the batch");
    assert!(
        wake >= before + 300 && wake <= h.agent.mono() + 300,
        "{wake}"
    );
    tokio::time::sleep(Duration::from_millis(wake - h.agent.mono() + 5)).await;
    h.agent.turn(None, &h.bus);
    let sent = h.bus.take();
    assert_eq!(kinds(&sent), ["Status"]);
    assert_eq!(Harness::last_status(&sent).unwrap().applied_generation, 2);
}

/// Offline, nothing goes out and nothing is queued; the status that changed meanwhile goes
/// out whole on reconnect, after the Hello, which carries the applied generation.
#[tokio::test]
async fn while_offline_nothing_is_sent_and_a_reconnect_resends_hello_and_status() {
    let mut h = Harness::new().await;
    h.connect();
    h.bus_event(BusEvent::Desired(desired(2, vec![])));
    h.bus.take();
    h.bus_event(BusEvent::Disconnected);
    assert!(h.agent.offline);
    h.bus_event(BusEvent::Desired(desired(3, vec![])));
    h.agent.heartbeat(&h.bus);
    assert!(h.bus.take().is_empty());
    assert!(h.agent.status_dirty, "the status waits for the link");

    h.bus_event(BusEvent::Connected);
    let sent = h.bus.take();
    assert_eq!(kinds(&sent), ["Hello", "Link", "Status"]);
    let Body::Hello(hello) = &sent[0] else {
        unreachable!()
    };
    assert_eq!(hello.applied_generation, 3);
    assert!(h.agent.back_from_offline && h.agent.hello_pending);
}

/// The first desired state after an outage stops the pods taken away meanwhile at once
/// (no grace period): here a pod with 30 s of grace is gone well within that.
#[tokio::test]
async fn pods_removed_while_offline_are_stopped_without_their_grace_period() {
    let mut h = Harness::new().await;
    h.connect();
    h.run_pod(desired(1, vec![pod("u1", 30)]), "u1").await;
    h.bus_event(BusEvent::Disconnected);
    h.bus_event(BusEvent::Connected);
    let started = Instant::now();
    h.bus_event(BusEvent::Desired(desired(2, vec![])));
    assert!(h.agent.force_stop.is_empty(), "taken by the stop");
    assert_eq!(h.agent.pods["u1"].lifecycle, Lifecycle::Stopping);
    h.until(|a| a.pods.is_empty()).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let calls = h.rt.calls();
    assert!(calls.contains(&Call::Kill(id("u1-app"), 15)), "{calls:?}");
    assert!(calls.contains(&Call::Kill(id("u1-app"), 9)), "{calls:?}");
    assert!(!h.tmp.path().join("data/pods/u1").exists());
}

/// A new desired state is persisted before anything runs, then its pod goes through the
/// workers: pulled (here from the store), prepared, and its container run by the runtime
/// with the image's command; every change is reported.
#[tokio::test]
async fn a_new_desired_state_is_persisted_and_its_pod_started_through_the_workers() {
    let mut h = Harness::new().await;
    h.connect();
    let d = desired(7, vec![pod("u1", 0)]);
    h.bus_event(BusEvent::Desired(d.clone()));
    assert_eq!(h.agent.state_file.load().unwrap(), d);
    assert_eq!(h.agent.pods["u1"].lifecycle, Lifecycle::Starting);
    let sent = h.bus.take();
    let status = Harness::last_status(&sent).unwrap();
    assert_eq!(status.applied_generation, 7);
    assert_eq!(status.pods[0].containers[0].state, ContainerState::Pending);

    h.until(|a| a.pods["u1"].lifecycle == Lifecycle::Running)
        .await;
    h.until(|a| matches!(a.pods["u1"].ctrs[0].obs, ContainerObs::Running { .. }))
        .await;
    let runs: Vec<RunSpec> =
        h.rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Run(s) => Some(s),
                _ => None,
            })
            .collect();
    let [run] = &runs[..] else { panic!("{runs:?}") };
    assert_eq!(run.id, id("u1-app"));
    assert_eq!(run.args, ["/app"]);
    assert_eq!(
        run.rootfs,
        h.tmp.path().join("data/pods/u1/containers/app/rootfs")
    );
    assert!(
        run.rootfs.join("app").is_file(),
        "the image's layer is mounted"
    );
    let sent = h.bus.take();
    let c = &Harness::last_status(&sent).unwrap().pods[0].containers[0];
    assert!(matches!(c.state, ContainerState::Running { .. }), "{c:?}");
    assert_eq!(c.restart_count, 0);
}

/// A desired state with an older generation than the applied one is not ignored: the
/// coordinator is the truth (its store may have been replaced), and whatever differs from
/// what runs is applied. Only the same state again (the retained message after a
/// reconnect) changes nothing and sends nothing.
#[tokio::test]
async fn an_older_generation_is_applied_and_only_a_repeat_is_ignored() {
    let mut h = Harness::new().await;
    h.connect();
    h.bus_event(BusEvent::Desired(desired(5, vec![])));
    h.bus.take();

    let older = desired(3, vec![]);
    h.bus_event(BusEvent::Desired(older.clone()));
    assert_eq!(h.agent.desired, older);
    assert_eq!(h.agent.state_file.load().unwrap(), older);
    let sent = h.bus.take();
    assert_eq!(Harness::last_status(&sent).unwrap().applied_generation, 3);

    h.bus_event(BusEvent::Desired(older.clone()));
    assert!(h.bus.take().is_empty(), "nothing changed, nothing to say");
    assert!(!h.agent.status_dirty);
}

/// A new leader's term is persisted with the desired state, once: the same state of the
/// same term again writes nothing (the file, removed here, stays away), a new term with
/// the same pods is written (the agent resumes from it after a restart).
#[tokio::test]
async fn a_new_leaders_term_is_persisted_once_with_the_desired_state() {
    let mut h = Harness::new().await;
    h.connect();
    let first = DesiredState {
        term: 4,
        ..desired(5, vec![])
    };
    h.bus_event(BusEvent::Desired(first.clone()));
    assert_eq!(h.agent.state_file.load().unwrap().term, 4);
    std::fs::remove_file(h.agent.state_file.path()).unwrap();
    h.bus_event(BusEvent::Desired(first.clone()));
    assert!(
        !h.agent.state_file.path().exists(),
        "the same state of the same term was written again"
    );
    let next = DesiredState { term: 9, ..first };
    h.bus_event(BusEvent::Desired(next.clone()));
    assert_eq!(h.agent.state_file.load().unwrap(), next);
    assert_eq!(h.agent.desired.term, 9);
}

/// A container that exits again after its first restart waits out its backoff (10 s, plus
/// up to a tenth of jitter). An exit reported meanwhile restarts nothing early: it is
/// recorded like any exit (the status shows it, the backoff counts from it), and the
/// restart comes once the backoff is over.
#[tokio::test]
async fn an_exit_during_the_restart_backoff_restarts_nothing_early() {
    let mut h = Harness::new().await;
    h.connect();
    h.run_pod(desired(1, vec![pod("u1", 0)]), "u1").await;
    let app = id("u1-app");

    // The first exit restarts at once.
    h.rt.exit(&app, ExitReason::Exited(1));
    let ev = h.next().await;
    h.turn(ev);
    assert_eq!(h.ctr("u1", "app").restarts, 1);
    h.until(|a| matches!(a.pods["u1"].ctrs[0].obs, ContainerObs::Running { .. }))
        .await;
    assert_eq!(h.runs(), 2);

    // The second waits: level 1, 10 s.
    h.rt.exit(&app, ExitReason::Exited(2));
    let ev = h.next().await;
    let wake = h.turn(ev).expect("a wake-up for the backoff");
    let ContainerObs::Exited { at, .. } = h.ctr("u1", "app").obs else {
        panic!()
    };
    assert!((at + 10_000..=at + 11_000).contains(&wake), "{at} {wake}");

    h.advance(Duration::from_secs(5));
    h.rt.exit(&app, ExitReason::Signaled(9));
    let ev = h.next().await;
    let later = h.turn(ev).expect("still waiting");
    assert!(later > wake, "the backoff counts from the latest exit");
    let c = h.ctr("u1", "app");
    assert_eq!(c.report, ContainerState::Exited { code: 137 });
    assert_eq!(c.last_termination.as_ref().unwrap().exit_code, 137);
    assert_eq!(
        (c.restarts, h.runs()),
        (1, 2),
        "no restart during the backoff"
    );

    h.advance(Duration::from_secs(12));
    h.agent.turn(None, &h.bus);
    assert_eq!(h.ctr("u1", "app").restarts, 2);
    h.until(|a| matches!(a.pods["u1"].ctrs[0].obs, ContainerObs::Running { .. }))
        .await;
    assert_eq!(h.runs(), 3);
}

/// The reaper and the starting worker race: an exit reaped before the (re)start is
/// recorded is kept and applied right after it, so the container shows as exited, not as
/// running forever.
#[tokio::test]
async fn an_exit_reaped_before_the_start_is_recorded_is_applied_after_it() {
    let mut h = Harness::new().await;
    h.connect();
    h.bus_event(BusEvent::Desired(desired(1, vec![pod("u1", 0)])));
    h.until(|a| a.pods["u1"].lifecycle == Lifecycle::Running)
        .await;
    assert_eq!(h.ctr("u1", "app").obs, ContainerObs::Creating);
    // The worker has run the container; its report waits while the exit comes first.
    let started = h.next().await;
    assert!(matches!(started, Event::Restarted { .. }));
    h.rt.exit(&id("u1-app"), ExitReason::Exited(3));
    let exit = h.next().await;
    h.turn(exit);
    assert_eq!(h.ctr("u1", "app").early_exit, Some((3, false)));
    assert_eq!(h.ctr("u1", "app").obs, ContainerObs::Creating);

    h.turn(started);
    let c = h.ctr("u1", "app");
    assert_eq!(c.early_exit, None);
    assert_eq!(c.report, ContainerState::Exited { code: 3 });
    assert_eq!(
        c.last_termination.as_ref().unwrap().reason.as_str(),
        "Error"
    );
    // The exit is an ordinary one: the first restart comes at once.
    assert_eq!(c.restarts, 1);
}

/// A pod whose image cannot be had fails with the worker's reason in the status, is torn
/// down, and is not started again before its cooldown.
#[tokio::test]
async fn a_pull_failure_is_reported_with_its_reason_and_retried_after_a_cooldown() {
    let mut h = Harness::new().await;
    h.connect();
    let missing = "127.0.0.1:9/test/missing:1";
    let p = pod_of("u2", 0, container("app", missing, PullPolicy::Never));
    h.bus_event(BusEvent::Desired(desired(1, vec![p])));
    h.until(|a| a.cooldown.contains_key("u2")).await;
    let reason = format!(
        "ImagePullFailed: image \"{missing}\" is not present on this node and the pull policy is Never"
    );
    let c = h.ctr("u2", "app");
    assert_eq!(
        c.report,
        ContainerState::Failed {
            reason: BString::new(reason.as_str()).unwrap()
        }
    );
    h.until(|a| a.pods.is_empty()).await;
    let sent = h.bus.take();
    let failed = sent
        .iter()
        .filter_map(|b| match b {
            Body::Status(s) => s.pods.first().map(|p| p.containers[0].state.clone()),
            _ => None,
        })
        .any(|s| matches!(s, ContainerState::Failed { reason: r } if r.as_str() == reason));
    assert!(failed, "{sent:?}");
    // Within the cooldown the reconciler's StartPod is held back.
    let wake = h
        .agent
        .turn(None, &h.bus)
        .expect("a wake-up for the cooldown");
    assert!(h.agent.pods.is_empty());
    assert_eq!(wake, h.agent.cooldown["u2"].0);
    assert_eq!(h.runs(), 0);
}

/// A desired state that cannot be persisted (here `desired.bin` is made a directory, as a
/// broken disk would refuse the write) still has its stops applied at once, while its new
/// pods wait and the applied generation stays the old one, with the cause kept for the
/// coordinator; once the write works again the whole state is applied.
#[tokio::test]
async fn stops_are_applied_even_when_the_desired_state_cannot_be_persisted() {
    let mut h = Harness::new().await;
    h.connect();
    h.run_pod(desired(1, vec![pod("u1", 0), pod("u2", 0)]), "u1")
        .await;
    h.until(|a| {
        a.pods
            .get("u2")
            .is_some_and(|p| p.lifecycle == Lifecycle::Running)
    })
    .await;
    let file = h.agent.state_file.path().to_path_buf();
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();

    let next = desired(2, vec![pod("u1", 0), pod("u3", 0)]);
    h.bus_event(BusEvent::Desired(next.clone()));
    assert_eq!(h.agent.pods["u2"].lifecycle, Lifecycle::Stopping);
    assert!(
        !h.agent.pods.contains_key("u3"),
        "a new pod waits for the disk"
    );
    assert_eq!(h.agent.desired.generation, 1);
    let err = h.agent.apply_error.clone().unwrap();
    assert!(
        err.contains("generation 2") && err.contains("desired.bin"),
        "{err}"
    );
    h.until(|a| !a.pods.contains_key("u2")).await;
    assert_eq!(h.agent.status().applied_generation, 1);

    // The coordinator repeats it (the heartbeat's generation lags): same answer, no error.
    h.bus_event(BusEvent::Desired(next.clone()));
    assert!(!h.agent.pods.contains_key("u3"));

    std::fs::remove_dir(&file).unwrap();
    h.bus_event(BusEvent::Desired(next.clone()));
    assert_eq!(h.agent.desired, next);
    assert_eq!(h.agent.apply_error, None);
    assert_eq!(h.agent.state_file.load().unwrap(), next);
    assert!(h.agent.pods.contains_key("u3"));
}

/// Update orders go to the update task as they come, and the task hears what probation
/// looks at: the connection, a desired state, and how many of its pods are ready.
#[tokio::test]
async fn update_orders_and_the_nodes_health_reach_the_update_task() {
    use crate::update::UpdateEvent;
    let mut h = Harness::new().await;
    let (tx, mut rx) = mpsc::channel(16);
    h.agent.updates = Some(tx);
    h.bus_event(BusEvent::Connected);
    h.bus_event(BusEvent::AgentUpdate(None));
    h.bus_event(BusEvent::Desired(desired(2, vec![pod("p1", 0)])));
    let mut got = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        got.push(ev);
    }
    let [UpdateEvent::Health(a), UpdateEvent::Order(None), UpdateEvent::Health(b)] = &got[..]
    else {
        panic!("{got:?}")
    };
    assert!(a.connected && !a.desired, "{a:?}");
    assert_eq!(
        (b.connected, b.desired, b.ready, b.total),
        (true, true, 0, 1)
    );
    h.bus_event(BusEvent::Disconnected);
    let Ok(UpdateEvent::Health(c)) = rx.try_recv() else {
        panic!("no health after the disconnect")
    };
    assert!(!c.connected && c.desired);
}

/// CronJob `tick` (uid `cu`, Forbid, `restartPolicy: Never`) running `template`, first at
/// `first` (Unix seconds), then after each of `deltas`.
fn tick_cron(mut template: PodSpec, first: u64, deltas: Vec<u32>) -> baton_proto::NodeCron {
    template.restart_policy = RestartPolicy::Never;
    baton_proto::NodeCron {
        name: BString::new("tick").unwrap(),
        uid: BString::new("cu").unwrap(),
        pod: template,
        policy: baton_proto::CronPolicy::Forbid,
        starting_deadline_secs: None,
        backoff_limit: 0,
        successful_history: 3,
        failed_history: 1,
        first,
        deltas: BVec::from_vec(deltas).unwrap(),
    }
}

/// A node-scheduled CronJob: nothing fires on an untrusted clock (and the node says so);
/// on a trusted one its due instant starts one run, whose pod the reconciler runs, which
/// is reported as a run and its pod in the node's status.
#[tokio::test]
async fn a_cron_job_fires_on_the_trusted_clock_only() {
    const T0: u64 = 1_800_000_000;
    let mut h = Harness::new().await;
    h.connect();
    let cron = tick_cron(pod("tick", 0), T0 + 60, vec![60; 9]);
    let mut d = desired(3, vec![]);
    d.crons = baton_proto::BVec::from_vec(vec![cron]).unwrap();
    h.bus.clock.set(None);
    h.bus_event(BusEvent::Desired(d));
    assert!(h.agent.pods.is_empty(), "no run on an untrusted clock");
    let reports: Vec<baton_proto::CronReport> = h
        .bus
        .take()
        .into_iter()
        .filter_map(|b| match b {
            Body::CronRuns(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(
        reports
            .iter()
            .any(|r| r.clock_untrusted && r.runs.is_empty()),
        "{reports:?}"
    );

    // Trusted, past the second instant: one run, for the latest.
    h.bus.clock.set(Some((T0 + 125) * 1000));
    let wake = h.agent.turn(None, &h.bus);
    let minute = ((T0 + 120) / 60) as u32;
    let uid = format!("cu-{minute}");
    assert_eq!(h.agent.pods.keys().collect::<Vec<_>>(), [&uid]);
    assert_eq!(
        h.agent.pods[&uid].spec.name.as_str(),
        format!("tick-{minute}")
    );
    let mono = h.agent.mono();
    assert!(
        wake.is_some_and(|w| w <= mono + 55_000),
        "wakes for the next instant, 55 s on: {wake:?}"
    );
    let sent = h.bus.take();
    let runs: Vec<&baton_proto::CronRun> = sent
        .iter()
        .filter_map(|b| match b {
            Body::CronRuns(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| r.runs.iter())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (runs[0].minute, &runs[0].outcome),
        (minute, &baton_proto::CronOutcome::Active)
    );
    // Its pod is in the node's status as any pod, under the run's name and uid.
    let status = Harness::last_status(&sent).unwrap();
    let listed: Vec<(&str, &str)> = status
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.uid.as_str()))
        .collect();
    assert_eq!(listed, [(format!("tick-{minute}").as_str(), uid.as_str())]);
    // Forbid, and fired once: the same instant again starts nothing more.
    h.agent.turn(None, &h.bus);
    assert_eq!(h.agent.pods.len(), 1);

    // Evicted under disk pressure: the run fails with the reason and its pod goes; a new
    // desired state (which forgets evictions of pods it does not list) does not bring it
    // back, and Forbid lets the next instant fire.
    h.agent.evicted.insert(
        uid.clone(),
        "The node was low on resource: ephemeral-storage.".into(),
    );
    h.agent.force_stop.insert(uid.clone());
    h.bus.take();
    for _ in 0..5 {
        h.agent.turn(None, &h.bus);
    }
    let ended: Vec<baton_proto::CronRun> = h
        .bus
        .take()
        .into_iter()
        .filter_map(|b| match b {
            Body::CronRuns(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| r.runs.iter().cloned().collect::<Vec<_>>())
        .collect();
    assert!(
        ended.iter().any(|r| r.minute == minute
            && matches!(&r.outcome, baton_proto::CronOutcome::Failed(w) if w.as_str().starts_with("Evicted: The node was low"))),
        "{ended:?}"
    );
    let gone = uid.clone();
    h.until(move |a| !a.pods.contains_key(&gone)).await;
    let mut d = desired(4, vec![]);
    d.crons = h.agent.desired.crons.clone();
    h.bus_event(BusEvent::Desired(d));
    assert!(
        !h.agent.pods.contains_key(&uid),
        "the evicted run came back"
    );
    h.bus.clock.set(Some((T0 + 185) * 1000));
    h.agent.turn(None, &h.bus);
    let next = format!("cu-{}", minute + 1);
    assert_eq!(h.agent.pods.keys().collect::<Vec<_>>(), [&next]);
}

/// An ended run's pod stays, done (never started again), in the node's status and with
/// its directory (its logs), while the history keeps the run; the run the history drops
/// has its pod removed.
#[tokio::test]
async fn an_ended_runs_pod_is_kept_while_its_history_keeps_it() {
    const T0: u64 = 1_800_000_000;
    let mut h = Harness::new().await;
    h.connect();
    let mut cron = tick_cron(pod("tick", 0), T0 + 60, vec![60; 9]);
    cron.successful_history = 1;
    let mut d = desired(3, vec![]);
    d.crons = baton_proto::BVec::from_vec(vec![cron]).unwrap();
    h.bus.clock.set(Some((T0 + 65) * 1000));
    h.bus_event(BusEvent::Desired(d));
    let first = format!("cu-{}", (T0 + 60) / 60);
    let running = |uid: String| {
        move |a: &Agent| {
            a.pods.get(&uid).is_some_and(|p| {
                p.ctrs
                    .iter()
                    .all(|c| matches!(c.obs, ContainerObs::Running { .. }))
            })
        }
    };
    h.until(running(first.clone())).await;
    h.rt.exit(&id(&format!("{first}-app")), ExitReason::Exited(0));
    let ended = |a: &Agent| a.cron.runs.active().next().is_none();
    h.until(ended).await;
    let started = h.runs();
    h.bus.take();
    for _ in 0..3 {
        h.agent.turn(None, &h.bus);
    }
    assert_eq!(h.runs(), started, "an ended run's pod runs nothing again");
    let p = &h.agent.pods[&first];
    assert_eq!(p.lifecycle, Lifecycle::Running);
    assert!(h.agent.deps.pod_dir(&first).exists(), "its logs stay");
    h.agent.status_dirty = true;
    h.agent.turn(None, &h.bus);
    let sent = h.bus.take();
    let status = Harness::last_status(&sent).expect("a status");
    let ps = status
        .pods
        .iter()
        .find(|p| p.uid.as_str() == first)
        .unwrap();
    assert_eq!(ps.containers[0].state, ContainerState::Exited { code: 0 });

    // The next run ends too: the history keeps one, so the first run's pod goes.
    h.bus.clock.set(Some((T0 + 125) * 1000));
    h.agent.turn(None, &h.bus);
    let second = format!("cu-{}", (T0 + 120) / 60);
    h.until(running(second.clone())).await;
    h.rt.exit(&id(&format!("{second}-app")), ExitReason::Exited(0));
    let gone = first.clone();
    h.until(move |a| !a.pods.contains_key(&gone)).await;
    assert!(
        h.agent.pods.contains_key(&second),
        "the kept run's pod stays"
    );
    assert!(!h.agent.deps.pod_dir(&first).exists());
}

/// A node-fired CronJob's ConfigMap stays on the device between runs: a new desired state
/// keeps what its CronJobs reference, not only what its pods do, and drops the rest.
#[tokio::test]
async fn a_cron_jobs_config_map_is_kept_between_runs() {
    let mut h = Harness::new().await;
    h.connect();
    h.agent.config_maps.insert("conf", &[("a", b"1")]);
    h.agent.config_maps.insert("stale", &[("a", b"1")]);
    let mut template = pod("tick", 0);
    template.volumes = BVec::from_vec(vec![baton_proto::Volume {
        name: BString::new("v").unwrap(),
        source: baton_proto::VolumeSource::ConfigMap {
            name: BString::new("conf").unwrap(),
            items: BVec::new(),
            default_mode: 0o644,
            optional: false,
        },
    }])
    .unwrap();
    let cron = tick_cron(template, 1_800_000_060, vec![]);
    let mut d = desired(3, vec![]);
    d.crons = BVec::from_vec(vec![cron]).unwrap();
    h.bus_event(BusEvent::Desired(d));
    assert_eq!(h.agent.config_maps.names(), ["conf"]);
}
