//! Executes the reconciler's steps: bringing one pod up or down. Each step runs as its own
//! task and reports back to the node loop as an event; the node loop alone owns state.
//!
//! The order matters and mirrors kubelet: pull every image first (a pod whose image is
//! missing never holds a network namespace), then the network and volumes, and resolve every
//! container's run spec (secrets included: a missing one fails the pod before anything
//! runs). The containers themselves are then run one step at a time as the reconciler asks
//! ([`run_container`]): init containers in order, then the main ones.
//!
//! All containers of a pod join the pod's one network namespace (`/run/netns/<pod>`), so
//! they share its address and reach each other on `localhost`; they all get the pod's name
//! as hostname (and `HOSTNAME`), without the prefix of a namespace other than `default`.
//!
//! What must survive an agent restart about a pod's containers (restart counts, last
//! terminations, whether its init containers are done) is kept in `<pod_dir>/record.bin`
//! ([`PodRecord`]), written atomically like the desired state.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{
    ContainerSpec, EnvValue, PodSpec, Protocol, SeccompProfile, SecurityContext, Termination,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::image::{ImageConfig, ImageStore};
use crate::network::{HostPortRule, Network, PodNet, PortReservation, Sandbox, L4};
use crate::runtime::{ContainerId, RunSpec, Runtime, Seccomp, Security};
use crate::volumes::{self, ConfigMapSource, PodVolumes, SecretSource};

/// Everything a pod worker needs, shared by all of them.
pub struct Deps {
    pub node: String,
    pub pods_dir: PathBuf,
    pub cgroup_root: String,
    pub log_max_bytes: u64,
    pub pids_limit: i64,
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageStore,
    pub network: Network,
    /// Plaintext of the secrets pods reference (env and secret volumes).
    pub secrets: Arc<dyn SecretSource>,
    /// The ConfigMaps pods reference (env and `configMap` volumes).
    pub config_maps: Arc<dyn ConfigMapSource>,
    /// The node's resolver configuration (`--resolv-conf`): the DNS server's upstreams, and
    /// the file `hostNetwork` pods get.
    pub resolv_conf: PathBuf,
}

/// A container of a prepared pod, ready to run: init containers first, in order.
pub struct Started {
    pub name: String,
    pub id: ContainerId,
    pub spec: RunSpec,
}

/// A pod whose network and volumes are ready; no container runs yet.
pub struct StartedPod {
    pub pod_ip: Option<IpAddr>,
    /// Init containers, then main containers, in spec order.
    pub containers: Vec<Started>,
    /// Its hostPorts, held while this agent runs (the DNAT rules are the node loop's).
    pub ports: Vec<PortReservation>,
}

/// Why a pod could not start; the reason's text is what `baton get pods` shows.
#[derive(Debug, Clone)]
pub struct StartFailure {
    pub container: Option<String>,
    pub reason: WorkerError,
}

/// Why a pod worker failed, as kubelet names it: the variant is the reason word, and the
/// text (`Reason: what went wrong`) is what the container's status carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("ImagePullFailed: {0}")]
    ImagePull(String),
    #[error("NetworkSetupFailed: {0}")]
    NetworkSetup(String),
    /// The pod's configuration cannot be met: a missing secret or key, a bad volume.
    #[error("CreateContainerConfigError: {0}")]
    CreateContainerConfig(String),
    #[error("CreateContainerError: {0}")]
    CreateContainer(String),
    #[error("HostPortFailed: {0}")]
    HostPort(String),
    /// The worker task itself failed (a panic): a bug, not a reason kubelet has a word for.
    /// Only where panics unwind (x86_64 and test builds); the device build aborts (crash.rs).
    #[error("worker panicked: {0}")]
    Panicked(String),
}

impl Deps {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// A container's log (its stdout and stderr); the rotated one is next to it.
    pub fn log_path(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid)
            .join("logs")
            .join(format!("{container}.log"))
    }

    pub fn container_dir(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(container)
    }

    pub fn container_id(uid: &str, container: &str) -> Result<ContainerId, String> {
        ContainerId::new(&format!("{uid}-{container}")).map_err(|e| e.to_string())
    }

    pub fn record_path(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("record.bin")
    }
}

/// Init containers, then main containers: the order the node tracks them in.
pub fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &ContainerSpec> {
    pod.init_containers.iter().chain(pod.containers.iter())
}

/// What must outlive the agent process about a pod's containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub init_done: bool,
    pub containers: Vec<ContainerRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub restarts: u32,
    pub last_termination: Option<Termination>,
}

impl PodRecord {
    /// The record at `path`; an empty one if it is missing or unreadable (a record only
    /// makes statuses nicer, it never decides what runs).
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default()
    }

    /// Durably ([`crate::durable::write`]): the old or the new record, never a torn one.
    /// Durable although the record never decides what runs: it is written only when a
    /// container exits, and a restart count or termination lost to a power cut would be
    /// reported wrong for the pod's life. (The node skips it once the pod directory is gone.)
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let bytes = postcard::to_allocvec(self).map_err(std::io::Error::other)?;
        crate::durable::write(path, &bytes, crate::datadir::PRIVATE_FILE)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// The runtime's view of a k8s security context.
pub fn security(s: &SecurityContext) -> Security {
    Security {
        privileged: s.privileged,
        capabilities_add: s.capabilities_add.iter().map(|c| c.to_string()).collect(),
        capabilities_drop: s.capabilities_drop.iter().map(|c| c.to_string()).collect(),
        run_as_user: s.run_as_user,
        run_as_group: s.run_as_group,
        read_only_root_filesystem: s.read_only_root_filesystem,
        seccomp: match s.seccomp {
            SeccompProfile::Default => Seccomp::Default,
            SeccompProfile::RuntimeDefault => Seccomp::RuntimeDefault,
            SeccompProfile::Unconfined => Seccomp::Unconfined,
        },
    }
}

/// Resolves the process like Kubernetes: `command` replaces the image entrypoint and
/// drops its cmd; `args` alone replace the cmd.
pub fn argv(c: &ContainerSpec, img: &ImageConfig) -> Vec<String> {
    let command: Vec<String> = c.command.iter().map(|s| s.to_string()).collect();
    let args: Vec<String> = c.args.iter().map(|s| s.to_string()).collect();
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => img.entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => img
            .entrypoint
            .iter()
            .chain(img.cmd.iter())
            .cloned()
            .collect(),
    }
}

/// Image env first, then the pod's, a later name replacing an earlier one. A `secretKeyRef`
/// or a non-optional ConfigMap reference that does not resolve fails with k8s's
/// `CreateContainerConfigError` reason. ConfigMaps are read now, at container start: a
/// change reaches the environment at the next start only, as in Kubernetes.
pub fn environment(
    c: &ContainerSpec,
    img: &ImageConfig,
    hostname: &str,
    secrets: &dyn SecretSource,
    config_maps: &dyn ConfigMapSource,
) -> Result<Vec<String>, WorkerError> {
    let config_err = |e: volumes::VolumeError| WorkerError::CreateContainerConfig(error_chain(&e));
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for kv in &img.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    set("HOSTNAME", hostname);
    for e in c.env.iter() {
        match &e.value {
            EnvValue::Literal(v) => set(&e.name, v),
            EnvValue::SecretKey { secret, key } => {
                let v = volumes::secret_env(secrets, secret, key)
                    .map_err(|e| WorkerError::CreateContainerConfig(error_chain(&e)))?;
                set(&e.name, &v);
            }
            EnvValue::ConfigMapKey {
                config_map,
                key,
                optional,
            } => {
                if let Some(v) = volumes::config_map_env(config_maps, config_map, key, *optional)
                    .map_err(config_err)?
                {
                    set(&e.name, &v);
                }
            }
            EnvValue::ConfigMapAll {
                config_map,
                optional,
            } => match config_maps.config_map(config_map) {
                Some(data) => {
                    for item in data.items.iter() {
                        // kubelet skips keys that are not valid variable names.
                        let name = format!("{}{}", e.name, item.key);
                        if env_name_ok(&name) {
                            set(
                                &name,
                                &String::from_utf8_lossy(&item.value).replace('\0', ""),
                            );
                        }
                    }
                }
                None if *optional => {}
                None => {
                    return Err(config_err(volumes::VolumeError::ConfigMapNotFound(
                        config_map.to_string(),
                    )))
                }
            },
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A variable name as the coordinator accepts them: printable ASCII without '='.
fn env_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WorkerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WorkerError::Panicked(e.to_string()))
}

/// Pulls every image of the pod, reporting each container as it starts pulling.
pub async fn pull(
    deps: &Deps,
    pod: &PodSpec,
    mut on_pulling: impl FnMut(&str),
) -> Result<Vec<ImageConfig>, StartFailure> {
    let mut out = Vec::new();
    for c in all_containers(pod) {
        on_pulling(&c.name);
        let creds = crate::secrets::pull_credentials(
            deps.secrets.as_ref(),
            &pod.image_pull_secrets,
            &c.image,
        );
        let img = deps
            .images
            .ensure_with(&c.image, c.image_pull_policy, creds.as_ref())
            .await
            .map_err(|e| StartFailure {
                container: Some(c.name.to_string()),
                reason: WorkerError::ImagePull(error_chain(&e)),
            })?;
        out.push(img);
    }
    Ok(out)
}

/// Network, volumes and run specs for a pod whose images are present. On failure, whatever
/// was created is left for [`stop`], which tolerates partial pods.
pub async fn start(
    deps: Arc<Deps>,
    pod: PodSpec,
    images: Vec<ImageConfig>,
) -> Result<StartedPod, StartFailure> {
    let uid = pod.uid.to_string();
    let fail = |container: Option<&str>, reason: WorkerError| StartFailure {
        container: container.map(str::to_owned),
        reason,
    };

    let netns = if pod.host_network {
        None
    } else {
        let d = deps.clone();
        let u = uid.clone();
        let net = blocking(move || d.network.create_pod(&u))
            .await
            .map_err(|e| fail(None, e))?
            .map_err(|e| fail(None, WorkerError::NetworkSetup(error_chain(&e))))?;
        Some(net)
    };
    let pod_ip = netns.as_ref().map(|n| IpAddr::V4(n.ip));

    let (d, p, dir) = (deps.clone(), pod.clone(), deps.pod_dir(&uid));
    let readers = volumes::Readers::of(&pod);
    let vols = blocking(move || {
        volumes::prepare(
            &dir,
            &p.volumes,
            &readers,
            d.secrets.as_ref(),
            d.config_maps.as_ref(),
        )
    })
    .await
    .map_err(|e| fail(None, e))?
    .map_err(|e| fail(None, WorkerError::CreateContainerConfig(error_chain(&e))))?;

    // resolv.conf and hosts before any container: every one of them mounts them.
    let (d, name, dir) = (deps.clone(), pod.name.to_string(), deps.pod_dir(&uid));
    let (ip4, dns) = (netns.as_ref().map(|n| n.ip), pod.dns.clone());
    blocking(move || {
        let gw = d.network.gateway();
        let host = hostname(&name);
        crate::dns::files::write(&dir, &name, &host, ip4, dns.as_ref(), gw, &d.resolv_conf)
    })
    .await
    .map_err(|e| fail(None, e))?
    .map_err(|e| fail(None, WorkerError::CreateContainerConfig(error_chain(&e))))?;

    let mut started = Vec::new();
    for (c, img) in all_containers(&pod).zip(&images) {
        let name = c.name.to_string();
        let id = Deps::container_id(&uid, &name)
            .map_err(|e| fail(Some(&name), WorkerError::CreateContainer(e)))?;
        let spec = run_spec(&deps, &pod, c, img, id.clone(), netns.as_ref(), &vols)
            .map_err(|e| fail(Some(&name), e))?;
        if spec.args.is_empty() {
            return Err(fail(
                Some(&name),
                WorkerError::CreateContainer(
                    "no command: the image has no entrypoint or cmd".into(),
                ),
            ));
        }
        started.push(Started { name, id, spec });
    }

    let ports = reserve_host_ports(&pod)?;
    info!(pod = %pod.name, %uid, ?pod_ip, "pod prepared");
    Ok(StartedPod {
        pod_ip,
        containers: started,
        ports,
    })
}

/// The run spec of one container of `pod`; `rootfs` is filled in when it is mounted. Also
/// used to rebuild the spec of a container adopted after an agent restart, so both must
/// derive it the same way.
pub fn run_spec(
    deps: &Deps,
    pod: &PodSpec,
    c: &ContainerSpec,
    img: &ImageConfig,
    id: ContainerId,
    netns: Option<&PodNet>,
    vols: &PodVolumes,
) -> Result<RunSpec, WorkerError> {
    let uid = pod.uid.as_str();
    let name = c.name.as_str();
    // The pod's resolv.conf and hosts first: a volume the user mounts over them wins.
    let mut mounts = crate::dns::files::mounts(&deps.pod_dir(uid));
    mounts.extend(
        volumes::mounts(vols, &c.volume_mounts)
            .map_err(|e| WorkerError::CreateContainerConfig(error_chain(&e)))?,
    );
    Ok(RunSpec {
        id,
        rootfs: PathBuf::new(),
        args: argv(c, img),
        env: environment(
            c,
            img,
            &hostname(&pod.name),
            deps.secrets.as_ref(),
            deps.config_maps.as_ref(),
        )?,
        cwd: c
            .working_dir
            .as_ref()
            .map(|w| w.to_string())
            .or_else(|| Some(img.working_dir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into()),
        hostname: hostname(&pod.name),
        netns: netns.map(|n| n.netns_path.clone()),
        cgroup_path: PathBuf::from(&deps.cgroup_root)
            .join(&deps.node)
            .join(uid)
            .join(name),
        memory_limit_bytes: c.resources.memory_limit_bytes,
        cpu_limit_millis: c.resources.cpu_limit_millis,
        cpu_request_millis: c.resources.cpu_request_millis,
        pids_limit: deps.pids_limit,
        log_path: deps.log_path(uid, name),
        log_max_bytes: deps.log_max_bytes,
        mounts,
        security: security(&c.security),
    })
}

/// The hostPorts of `pod`, with their transport; none for a host-network pod, whose
/// containers listen on the node's ports themselves.
fn host_ports(pod: &PodSpec) -> impl Iterator<Item = (&ContainerSpec, u16, u16, L4)> {
    pod.containers
        .iter()
        .filter(|_| !pod.host_network)
        .flat_map(|c| c.ports.iter().map(move |p| (c, p)))
        .filter_map(|(c, p)| {
            let proto = match p.protocol {
                Protocol::Tcp => L4::Tcp,
                Protocol::Udp => L4::Udp,
            };
            Some((c, p.host_port?, p.container_port, proto))
        })
}

/// The DNAT rules of the hostPorts of `pod` at `pod_ip`.
pub fn host_port_rules(pod: &PodSpec, pod_ip: Option<IpAddr>) -> Vec<HostPortRule> {
    let Some(IpAddr::V4(pod_ip)) = pod_ip else {
        return Vec::new();
    };
    host_ports(pod)
        .map(|(_, host_port, container_port, proto)| HostPortRule {
            host_port,
            proto,
            pod_ip,
            container_port,
        })
        .collect()
}

/// Binds every hostPort of `pod` (see [`PortReservation`]): a port a host process or another
/// agent holds fails the pod, rather than being taken from it silently by DNAT.
pub fn reserve_host_ports(pod: &PodSpec) -> Result<Vec<PortReservation>, StartFailure> {
    host_ports(pod)
        .map(|(c, host_port, _, proto)| {
            PortReservation::take(host_port, proto).map_err(|e| StartFailure {
                container: Some(c.name.to_string()),
                reason: WorkerError::HostPort(error_chain(&e)),
            })
        })
        .collect()
}

/// A container started by [`run_container`].
pub struct Ran {
    pub spec: RunSpec,
    /// The pod's network had to be made again first (see [`Network::ensure_pod`]).
    pub sandbox: Option<Sandbox>,
}

/// `e` and every cause under it, `: `-separated: what `describe` shows must say why (a
/// bare "failed to create container x" was all a pod without its netns ever showed). A
/// cause whose text its parent already printed is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Mounts a fresh rootfs and runs one container of pod `uid`. Used for first starts and
/// restarts. A pod whose network is gone gets it back first, as kubelet recreates a dead
/// sandbox: a create into a missing netns would fail forever.
pub async fn run_container(
    deps: &Arc<Deps>,
    uid: &str,
    mut spec: RunSpec,
    img: ImageConfig,
    dir: PathBuf,
) -> Result<Ran, WorkerError> {
    let d = deps.clone();
    let uid = uid.to_owned();
    blocking(move || {
        let sandbox = match spec.netns {
            Some(_) => d.network.ensure_pod(&uid).map_err(|e| {
                WorkerError::CreateContainer(format!("pod sandbox: {}", error_chain(&e)))
            })?,
            None => None,
        };
        if let Some(s) = &sandbox {
            spec.netns = Some(s.net.netns_path.clone());
        }
        // A restart gets a fresh writable layer, as Kubernetes gives a fresh container.
        let _ = d.runtime.delete(&spec.id);
        d.images
            .unmount_rootfs(&dir)
            .map_err(|e| WorkerError::CreateContainer(error_chain(&e)))?;
        crate::datadir::create_private_dir(&dir)
            .map_err(|e| WorkerError::CreateContainer(format!("{}: {e}", dir.display())))?;
        if let Some(logs) = spec.log_path.parent() {
            crate::datadir::create_private_dir(logs)
                .map_err(|e| WorkerError::CreateContainer(format!("{}: {e}", logs.display())))?;
        }
        // The instance before this one becomes `baton logs --previous`.
        crate::logs::keep_previous(&spec.log_path).map_err(|e| {
            WorkerError::CreateContainer(format!("{}: {e}", spec.log_path.display()))
        })?;
        spec.rootfs = d
            .images
            .mount_rootfs(&img, &dir)
            .map_err(|e| WorkerError::CreateContainer(error_chain(&e)))?;
        d.runtime
            .run(&spec)
            .map_err(|e| WorkerError::CreateContainer(error_chain(&e)))?;
        Ok(Ran { spec, sandbox })
    })
    .await?
}

/// Removes a container that has finished for good (a succeeded init container): its
/// runtime state and its rootfs. Its log stays, with the pod.
pub async fn remove_container(deps: Arc<Deps>, uid: String, name: String) {
    let result = blocking(move || {
        if let Ok(id) = Deps::container_id(&uid, &name) {
            if let Err(e) = deps.runtime.delete(&id) {
                warn!(container = %id, error = %e, "delete failed");
            }
        }
        if let Err(e) = deps.images.unmount_rootfs(&deps.container_dir(&uid, &name)) {
            warn!(%uid, container = %name, error = %e, "rootfs cleanup failed");
        }
    })
    .await;
    if let Err(e) = result {
        warn!(error = %e, "remove worker failed");
    }
}

/// Kills one container as kubelet does for a failed liveness probe: SIGTERM, up to `grace`,
/// then SIGKILL. Its exit arrives as usual, from the runtime.
pub async fn kill_container(deps: Arc<Deps>, id: ContainerId, grace: Duration) {
    let _ = deps.runtime.kill(&id, libc_sig::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && alive(deps.runtime.as_ref(), &id) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if alive(deps.runtime.as_ref(), &id) {
        let _ = deps.runtime.kill(&id, libc_sig::SIGKILL);
    }
}

/// Is any process of this container still alive? Signal 0 probes without touching it.
fn alive(runtime: &dyn Runtime, id: &ContainerId) -> bool {
    runtime.kill(id, 0).is_ok()
}

/// Stops a pod: SIGTERM, a grace period, SIGKILL, then removes containers, rootfs, logs,
/// network and the pod directory. Tolerates anything already gone.
pub async fn stop(deps: Arc<Deps>, uid: String, containers: Vec<String>, grace: Duration) {
    let ids: Vec<ContainerId> = containers
        .iter()
        .filter_map(|c| Deps::container_id(&uid, c).ok())
        .collect();
    for id in &ids {
        let _ = deps.runtime.kill(id, libc_sig::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline
        && ids.iter().any(|id| alive(deps.runtime.as_ref(), id))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (d, u) = (deps.clone(), uid.clone());
    until_clean(&uid, move |last| cleanup(&d, &u, &ids, &containers, last)).await;
}

/// Runs a blocking `cleanup` until no step fails, pausing 1, 2, 4 and 8 s between attempts;
/// the last attempt is told that it is the last. A step that fails (a busy mount, a
/// container whose state cannot be read) used to stay failed, leaving cgroups, mounts and
/// addresses behind until the next agent start. Returns how many steps still failed.
async fn until_clean(uid: &str, cleanup: impl Fn(bool) -> usize + Send + Sync + 'static) -> usize {
    let cleanup = Arc::new(cleanup);
    let mut pause = Duration::from_secs(1);
    loop {
        let last = pause > STOP_RETRY_CAP;
        let f = cleanup.clone();
        match blocking(move || f(last)).await {
            Ok(0) => return 0,
            Ok(failed) if !last => {
                warn!(%uid, failed, retry_in = ?pause, "pod cleanup incomplete; retrying");
            }
            Ok(failed) => {
                warn!(%uid, failed, "pod cleanup incomplete; the next agent start removes the rest");
                return failed;
            }
            Err(e) => {
                warn!(error = %e, "stop worker failed");
                return 1;
            }
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

/// The longest pause between two cleanup attempts of a stopped pod (1, 2, 4, 8 s).
const STOP_RETRY_CAP: Duration = Duration::from_secs(8);

/// Removes a stopped pod's containers, rootfs, network, volumes and directory; returns how
/// many steps failed. The directory stays while anything in it failed, so that a retry
/// finds what is left, unless this is the `last` attempt.
fn cleanup(d: &Deps, uid: &str, ids: &[ContainerId], containers: &[String], last: bool) -> usize {
    let mut failed = 0;
    for (id, name) in ids.iter().zip(containers) {
        if alive(d.runtime.as_ref(), id) {
            let _ = d.runtime.kill(id, libc_sig::SIGKILL);
        }
        if let Err(e) = d.runtime.delete(id) {
            warn!(container = %id, error = %e, "delete failed");
            failed += 1;
        }
        if let Err(e) = d.images.unmount_rootfs(&d.container_dir(uid, name)) {
            warn!(container = %id, error = %e, "rootfs cleanup failed");
            failed += 1;
        }
    }
    if let Err(e) = d.network.delete_pod(uid) {
        warn!(%uid, error = %e, "network cleanup failed");
        failed += 1;
    }
    if let Err(e) = volumes::teardown(&d.pod_dir(uid)) {
        warn!(%uid, error = %e, "volume cleanup failed");
        failed += 1;
    }
    if failed == 0 || last {
        remove_pod_dir(&d.pod_dir(uid));
    }
    failed
}

fn remove_pod_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %dir.display(), error = %e, "cannot remove pod directory");
        }
    }
}

/// A pod's hostname, as Kubernetes sets it: its name, at most 63 characters. The
/// coordinator names a pod of a namespace other than `default` `<namespace>_<name>` (`_`
/// is in no Kubernetes name), and the namespace is not part of the hostname.
fn hostname(pod: &str) -> String {
    let name = pod.split_once('_').map_or(pod, |(_, name)| name);
    name.chars().take(63).collect()
}

/// Signal numbers, kept here so the node loop does not need nix.
pub mod libc_sig {
    pub const SIGTERM: i32 = 15;
    pub const SIGKILL: i32 = 9;
}

#[cfg(test)]
mod tests;
