//! Executes the reconciler's steps: bringing one pod up or down. Each step runs as its own
//! task and reports back to the node loop as an event; the node loop alone owns state.
//!
//! The order matters and mirrors kubelet: pull every image first (a pod whose image is
//! missing never holds a network namespace), then the network, then the containers.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{ContainerSpec, EnvValue, PodSpec};
use tracing::{info, warn};

use crate::image::{ImageConfig, ImageStore};
use crate::network::{Network, PodNet, PortForward};
use crate::runtime::{ContainerId, RunSpec, Runtime};

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
}

/// A container brought up by a worker.
pub struct Started {
    pub name: String,
    pub id: ContainerId,
    pub spec: RunSpec,
}

pub struct StartedPod {
    pub pod_ip: Option<IpAddr>,
    pub containers: Vec<Started>,
    pub forwards: Vec<PortForward>,
}

/// Why a pod could not start; the text is what `baton get pods` shows.
#[derive(Debug, Clone)]
pub struct StartFailure {
    pub container: Option<String>,
    pub reason: String,
}

impl Deps {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    pub fn container_dir(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(container)
    }

    pub fn container_id(uid: &str, container: &str) -> Result<ContainerId, String> {
        ContainerId::new(&format!("{uid}-{container}")).map_err(|e| e.to_string())
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

/// Image env first, then the pod's, a later name replacing an earlier one.
pub fn environment(c: &ContainerSpec, img: &ImageConfig, hostname: &str) -> Vec<String> {
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
        // Secret references are resolved by the caller before a spec gets here.
        if let EnvValue::Literal(v) = &e.value {
            set(&e.name, v);
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("worker panicked: {e}"))
}

/// Pulls every image of the pod, reporting each container as it starts pulling.
pub async fn pull(
    deps: &Deps,
    pod: &PodSpec,
    mut on_pulling: impl FnMut(&str),
) -> Result<Vec<ImageConfig>, StartFailure> {
    let mut out = Vec::new();
    for c in pod.containers.iter() {
        on_pulling(&c.name);
        let img = deps
            .images
            .ensure(&c.image, c.image_pull_policy)
            .await
            .map_err(|e| StartFailure {
                container: Some(c.name.to_string()),
                reason: format!("ImagePullFailed: {e}"),
            })?;
        out.push(img);
    }
    Ok(out)
}

/// Network, rootfs and containers for a pod whose images are present. On failure,
/// whatever was created is left for [`stop`], which tolerates partial pods.
pub async fn start(
    deps: Arc<Deps>,
    pod: PodSpec,
    images: Vec<ImageConfig>,
) -> Result<StartedPod, StartFailure> {
    let uid = pod.uid.to_string();
    let fail = |container: Option<&str>, reason: String| StartFailure {
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
            .map_err(|e| fail(None, format!("NetworkSetupFailed: {e}")))?;
        Some(net)
    };
    let pod_ip = netns.as_ref().map(|n| IpAddr::V4(n.ip));

    let mut started = Vec::new();
    for (c, img) in pod.containers.iter().zip(images) {
        let name = c.name.to_string();
        let id = Deps::container_id(&uid, &name)
            .map_err(|e| fail(Some(&name), format!("CreateContainerError: {e}")))?;
        let dir = deps.container_dir(&uid, &name);
        let spec = run_spec(&deps, &pod, c, &img, id.clone(), netns.as_ref());
        if spec.args.is_empty() {
            return Err(fail(
                Some(&name),
                "CreateContainerError: no command: the image has no entrypoint or cmd".into(),
            ));
        }
        let spec = run_container(&deps, spec, img, dir)
            .await
            .map_err(|e| fail(Some(&name), e))?;
        started.push(Started { name, id, spec });
    }

    let forwards = start_forwards(&pod, pod_ip)?;
    info!(pod = %pod.name, %uid, ?pod_ip, "pod started");
    Ok(StartedPod {
        pod_ip,
        containers: started,
        forwards,
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
) -> RunSpec {
    let uid = pod.uid.as_str();
    let name = c.name.as_str();
    RunSpec {
        id,
        rootfs: PathBuf::new(),
        args: argv(c, img),
        env: environment(c, img, &pod.name),
        cwd: c
            .working_dir
            .as_ref()
            .map(|w| w.to_string())
            .or_else(|| Some(img.working_dir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into()),
        hostname: pod.name.chars().take(63).collect(),
        netns: netns.map(|n| n.netns_path.clone()),
        cgroup_path: PathBuf::from(&deps.cgroup_root)
            .join(&deps.node)
            .join(uid)
            .join(name),
        memory_limit_bytes: c.resources.memory_limit_bytes,
        cpu_limit_millis: c.resources.cpu_limit_millis,
        cpu_request_millis: c.resources.cpu_request_millis,
        pids_limit: deps.pids_limit,
        log_path: deps.pod_dir(uid).join("logs").join(format!("{name}.log")),
        log_max_bytes: deps.log_max_bytes,
    }
}

/// The hostPort forwarders of a pod whose address is `pod_ip`.
pub fn start_forwards(
    pod: &PodSpec,
    pod_ip: Option<IpAddr>,
) -> Result<Vec<PortForward>, StartFailure> {
    let mut forwards = Vec::new();
    for c in pod.containers.iter() {
        for p in c.ports.iter() {
            let Some(host_port) = p.host_port else {
                continue;
            };
            if pod.host_network {
                continue; // the container already listens on the node's own port
            }
            let Some(ip) = pod_ip else { continue };
            let fwd = PortForward::start(host_port, SocketAddr::new(ip, p.container_port))
                .map_err(|e| StartFailure {
                    container: Some(c.name.to_string()),
                    reason: format!("HostPortFailed: {e}"),
                })?;
            forwards.push(fwd);
        }
    }
    Ok(forwards)
}

/// Mounts a fresh rootfs and runs one container. Used for first starts and restarts.
pub async fn run_container(
    deps: &Arc<Deps>,
    mut spec: RunSpec,
    img: ImageConfig,
    dir: PathBuf,
) -> Result<RunSpec, String> {
    let d = deps.clone();
    blocking(move || {
        // A restart gets a fresh writable layer, as Kubernetes gives a fresh container.
        let _ = d.runtime.delete(&spec.id);
        d.images
            .unmount_rootfs(&dir)
            .map_err(|e| format!("CreateContainerError: {e}"))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("CreateContainerError: {}: {e}", dir.display()))?;
        if let Some(logs) = spec.log_path.parent() {
            std::fs::create_dir_all(logs)
                .map_err(|e| format!("CreateContainerError: {}: {e}", logs.display()))?;
        }
        spec.rootfs = d
            .images
            .mount_rootfs(&img, &dir)
            .map_err(|e| format!("CreateContainerError: {e}"))?;
        d.runtime
            .run(&spec)
            .map_err(|e| format!("CreateContainerError: {e}"))?;
        Ok(spec)
    })
    .await?
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
    let d = deps.clone();
    let result = blocking(move || {
        for (id, name) in ids.iter().zip(&containers) {
            if alive(d.runtime.as_ref(), id) {
                let _ = d.runtime.kill(id, libc_sig::SIGKILL);
            }
            if let Err(e) = d.runtime.delete(id) {
                warn!(container = %id, error = %e, "delete failed");
            }
            if let Err(e) = d.images.unmount_rootfs(&d.container_dir(&uid, name)) {
                warn!(container = %id, error = %e, "rootfs cleanup failed");
            }
        }
        if let Err(e) = d.network.delete_pod(&uid) {
            warn!(%uid, error = %e, "network cleanup failed");
        }
        remove_pod_dir(&d.pod_dir(&uid));
    })
    .await;
    if let Err(e) = result {
        warn!(error = %e, "stop worker failed");
    }
}

fn remove_pod_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %dir.display(), error = %e, "cannot remove pod directory");
        }
    }
}

/// Signal numbers, kept here so the node loop does not need nix.
pub mod libc_sig {
    pub const SIGTERM: i32 = 15;
    pub const SIGKILL: i32 = 9;
}
