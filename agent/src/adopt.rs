//! Re-adoption after an agent restart (crash or upgrade).
//!
//! Containers do not depend on the agent process: they keep running, and logging, while it is
//! gone. When it starts again it must not restart them. It compares the persisted desired
//! state with what the runtime still has ([`plan`], pure) and then:
//! - adopts every desired pod whose main containers *all* still run (the desired state's,
//!   and the node-scheduled CronJob runs still running, `crate::cron::Runs::resume`): it rebuilds their run
//!   specs (from the local image configs, never pulling), finds the pod's network and
//!   volumes, asks the runtime to watch them again, reserves the pod's hostPorts again (their
//!   DNAT rules never went away, see [`crate::network`]) and reads the pod's record (restart counts, last terminations). Its init containers
//!   are done (the main ones could not run otherwise) and are never run again;
//! - removes everything else a previous process left: containers of pods that are no longer
//!   desired, every container of a pod that is only partly there, and the rootfs mounts, pod
//!   networks and directories of pods not adopted. Those desired pods then start normally.
//!
//! A pod whose adoption fails half-way (an image config gone) is removed and started afresh:
//! a restart is the safe fallback, a half-adopted pod is not. A hostPort some other process
//! bound while no agent ran is only logged: the pod has answered on it throughout, and
//! restarting it for that would break the guarantee of an agent switch (same pids, ports
//! answering).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use baton_proto::{PodSpec, PullPolicy};
use tracing::{info, instrument, warn};

use crate::image::ImageConfig;
use crate::network::PortReservation;
use crate::pod::{self, Deps, PodRecord};
use crate::runtime::{Adopted, ContainerId, RunSpec};

/// What to do with what a previous agent process left behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Desired pods whose containers all still run, by uid.
    pub adopt: Vec<String>,
    /// Containers to remove: not desired, or of a pod that is only partly there.
    pub remove: Vec<ContainerId>,
}

/// Decides from the desired state and the runtime's view of each container it has state for.
/// Only main containers count: init containers have exited by the time those run, and what
/// is left of them is removed.
pub fn plan(desired: &[PodSpec], found: &BTreeMap<ContainerId, Adopted>) -> Plan {
    let mut out = Plan::default();
    let mut claimed = BTreeSet::new();
    for p in desired {
        let uid = p.uid.as_str();
        let ids: Vec<Option<ContainerId>> = p
            .containers
            .iter()
            .map(|c| Deps::container_id(uid, &c.name).ok())
            .collect();
        let all_run = !ids.is_empty()
            && ids.iter().all(|id| {
                id.as_ref()
                    .and_then(|id| found.get(id))
                    .is_some_and(|a| a.running)
            });
        if all_run {
            out.adopt.push(uid.to_owned());
            claimed.extend(ids.into_iter().flatten());
        }
    }
    out.remove = found
        .keys()
        .filter(|id| !claimed.contains(*id))
        .cloned()
        .collect();
    out
}

/// A container taken over from a previous agent process.
pub struct AdoptedContainer {
    pub name: String,
    pub id: ContainerId,
    pub spec: RunSpec,
    pub image: ImageConfig,
    pub adopted: Adopted,
}

/// A pod taken over from a previous agent process, ready to be tracked as Running.
pub struct AdoptedPod {
    pub spec: PodSpec,
    pub pod_ip: Option<IpAddr>,
    pub containers: Vec<AdoptedContainer>,
    pub ports: Vec<PortReservation>,
    /// What the previous agent process recorded about the pod's containers.
    pub record: PodRecord,
}

/// Adopts what still runs and removes the rest (see the module docs). Blocks on runtime and
/// network calls; meant for agent start-up, before the node loop runs.
#[instrument(skip_all)]
/// Every container a previous agent process left, with the runtime's view of it.
pub fn leftovers(deps: &Deps) -> BTreeMap<ContainerId, Adopted> {
    let mut found = BTreeMap::new();
    match deps.runtime.list() {
        Ok(ids) => {
            for id in ids {
                match deps.runtime.state(&id) {
                    Ok(Some(a)) => {
                        found.insert(id, a);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(container = %id, error = %e, "cannot read leftover container state; removing it");
                        found.insert(
                            id,
                            Adopted {
                                pid: 0,
                                running: false,
                                created_at_ms: None,
                            },
                        );
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list leftover containers"),
    }
    found
}

/// Adopts the pods of `desired` (the desired state's, and the CronJob runs still running,
/// `crate::cron::Runs::resume`) whose containers `found` (`leftovers`) has running, and
/// removes the rest.
pub async fn adopt_or_clean(
    deps: &Arc<Deps>,
    desired: &[PodSpec],
    found: BTreeMap<ContainerId, Adopted>,
) -> Vec<AdoptedPod> {
    let plan = plan(desired, &found);
    let mut remove = plan.remove;
    let mut adopted = Vec::new();
    for uid in plan.adopt {
        let Some(spec) = desired.iter().find(|p| p.uid.as_str() == uid) else {
            continue;
        };
        match adopt_pod(deps, spec).await {
            Ok(p) => {
                info!(pod = %spec.name, %uid, pod_ip = ?p.pod_ip, "pod adopted: its containers kept running");
                adopted.push(p);
            }
            Err(reason) => {
                warn!(pod = %spec.name, %uid, %reason, "cannot adopt pod; restarting it");
                remove.extend(
                    spec.containers
                        .iter()
                        .filter_map(|c| Deps::container_id(&uid, &c.name).ok()),
                );
            }
        }
    }
    let keep: BTreeSet<String> = adopted.iter().map(|p| p.spec.uid.to_string()).collect();
    remove_leftovers(deps, &remove, &keep);
    adopted
}

async fn adopt_pod(deps: &Arc<Deps>, pod: &PodSpec) -> Result<AdoptedPod, String> {
    let uid = pod.uid.as_str();
    let net = if pod.host_network {
        None
    } else {
        Some(
            deps.network
                .existing_pod(uid)
                .map_err(|e| e.to_string())?
                .ok_or("its pod network is gone")?,
        )
    };
    let pod_ip = net.as_ref().map(|n| IpAddr::V4(n.ip));
    // Idempotent: finds the tmpfs volumes still mounted and the emptyDirs with their content.
    let readers = crate::volumes::Readers::of(pod);
    let vols = crate::volumes::prepare(
        &deps.pod_dir(uid),
        &pod.volumes,
        &readers,
        deps.secrets.as_ref(),
        deps.config_maps.as_ref(),
    )
    .map_err(|e| format!("volumes: {e}"))?;
    let mut containers = Vec::new();
    for c in pod.containers.iter() {
        // The image was there when the container started; never pull here.
        let image = deps
            .images
            .ensure(&c.image, PullPolicy::Never)
            .await
            .map_err(|e| format!("image of container {}: {e}", c.name))?;
        let id = Deps::container_id(uid, &c.name)?;
        let mut spec = pod::run_spec(deps, pod, c, &image, id.clone(), net.as_ref(), &vols)
            .map_err(|e| e.to_string())?;
        spec.rootfs = deps.container_dir(uid, &c.name).join("rootfs");
        let adopted = deps
            .runtime
            .adopt(&id, &spec.log_path, spec.log_max_bytes)
            .map_err(|e| e.to_string())?;
        containers.push(AdoptedContainer {
            name: c.name.to_string(),
            id,
            spec,
            image,
            adopted,
        });
    }
    // The previous agent's DNAT rules still answer; only the reservation is this process's.
    let ports = pod::reserve_host_ports(pod).unwrap_or_else(|f| {
        warn!(pod = %pod.name, reason = %f.reason, "hostPort not reserved by this agent");
        Vec::new()
    });
    Ok(AdoptedPod {
        spec: pod.clone(),
        pod_ip,
        containers,
        ports,
        record: PodRecord::load(&deps.record_path(uid)),
    })
}

/// Removes the given containers, then the rootfs mounts, networks and directories of every
/// pod not in `keep`.
pub fn remove_leftovers(deps: &Deps, containers: &[ContainerId], keep: &BTreeSet<String>) {
    for id in containers {
        info!(container = %id, "removing leftover container");
        let _ = deps.runtime.kill(id, pod::libc_sig::SIGKILL);
        if let Err(e) = deps.runtime.delete(id) {
            warn!(container = %id, error = %e, "cannot remove leftover container");
        }
    }
    if let Ok(entries) = std::fs::read_dir(&deps.pods_dir) {
        for pod_dir in entries.flatten() {
            let uid = pod_dir.file_name().to_string_lossy().into_owned();
            if keep.contains(&uid) {
                continue;
            }
            if let Ok(ctrs) = std::fs::read_dir(pod_dir.path().join("containers")) {
                for c in ctrs.flatten() {
                    if let Err(e) = deps.images.unmount_rootfs(&c.path()) {
                        warn!(dir = %c.path().display(), error = %e, "cannot remove leftover rootfs");
                    }
                }
            }
            if let Err(e) = deps.network.delete_pod(&uid) {
                warn!(%uid, error = %e, "cannot remove leftover pod network");
            }
            if let Err(e) = crate::volumes::teardown(&pod_dir.path()) {
                warn!(%uid, error = %e, "cannot unmount leftover pod volumes");
            }
            let _ = std::fs::remove_dir_all(pod_dir.path());
        }
    }
    // Addresses whose pod directory is already gone (a crash between the two).
    if let Ok(allocs) = deps.network.allocations() {
        for (_, uid) in allocs {
            if !keep.contains(&uid) {
                if let Err(e) = deps.network.delete_pod(&uid) {
                    warn!(%uid, error = %e, "cannot remove leftover pod network");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{fake::Call, FakeRuntime, Runtime};
    use baton_proto::{BString, BVec, ContainerSpec, RestartPolicy};

    fn pod(uid: &str, containers: &[&str]) -> PodSpec {
        PodSpec {
            name: BString::new(format!("pod-{uid}")).unwrap(),
            uid: BString::new(uid).unwrap(),
            host_network: true,
            restart_policy: RestartPolicy::Always,
            termination_grace_secs: 1,
            containers: BVec::from_vec(
                containers
                    .iter()
                    .map(|c| ContainerSpec {
                        name: BString::new(*c).unwrap(),
                        image: BString::new("busybox").unwrap(),
                        image_pull_policy: PullPolicy::IfNotPresent,
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
                    })
                    .collect(),
            )
            .unwrap(),
            init_containers: BVec::new(),
            volumes: BVec::new(),
            image_pull_secrets: BVec::new(),
            priority: 0,
            dns: None,
        }
    }

    fn desired(pods: Vec<PodSpec>) -> Vec<PodSpec> {
        pods
    }

    fn id(s: &str) -> ContainerId {
        ContainerId::new(s).unwrap()
    }

    /// What a FakeRuntime seeded with leftovers reports, as `adopt_or_clean` collects it.
    fn found(rt: &FakeRuntime) -> BTreeMap<ContainerId, Adopted> {
        rt.list()
            .unwrap()
            .into_iter()
            .filter_map(|id| Some((id.clone(), rt.state(&id).unwrap()?)))
            .collect()
    }

    #[test]
    fn adopts_complete_running_pods_and_removes_the_rest() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = FakeRuntime::new(tx);
        // u1: both containers run -> adopted.
        rt.seed(&id("u1-a"), true);
        rt.seed(&id("u1-b"), true);
        // u2: one of two containers exited -> the pod is removed and restarted.
        rt.seed(&id("u2-a"), true);
        rt.seed(&id("u2-b"), false);
        // u3: one of two containers is missing -> same.
        rt.seed(&id("u3-a"), true);
        // u4: not desired any more -> removed.
        rt.seed(&id("u4-a"), true);
        // u5: desired, nothing left -> neither adopted nor removed (it starts normally).
        let d = desired(vec![
            pod("u1", &["a", "b"]),
            pod("u2", &["a", "b"]),
            pod("u3", &["a", "b"]),
            pod("u5", &["a"]),
        ]);
        let p = plan(&d, &found(&rt));
        assert_eq!(p.adopt, vec!["u1".to_string()]);
        assert_eq!(
            p.remove,
            vec![id("u2-a"), id("u2-b"), id("u3-a"), id("u4-a")]
        );
        // The fake answered from its seeded state only: no container was run or killed.
        assert!(rt
            .calls()
            .iter()
            .all(|c| matches!(c, Call::List | Call::State(_))));
    }

    #[test]
    fn nothing_left_means_nothing_to_do_and_an_empty_pod_is_never_adopted() {
        let d = desired(vec![pod("u1", &["a"]), pod("u2", &[])]);
        assert_eq!(plan(&d, &BTreeMap::new()), Plan::default());
        let d = desired(vec![]);
        let mut f = BTreeMap::new();
        f.insert(
            id("u1-a"),
            Adopted {
                pid: 7,
                running: true,
                created_at_ms: None,
            },
        );
        assert_eq!(
            plan(&d, &f),
            Plan {
                adopt: vec![],
                remove: vec![id("u1-a")]
            }
        );
    }

    #[test]
    fn fake_adopt_follows_the_runtime_contract() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = FakeRuntime::new(tx);
        let pid = rt.seed(&id("u1-a"), true);
        rt.seed(&id("u1-b"), false);
        let log = std::path::Path::new("/l");
        assert_eq!(rt.adopt(&id("u1-a"), log, 1).unwrap().pid, pid);
        assert!(matches!(
            rt.adopt(&id("u1-b"), log, 1),
            Err(crate::runtime::RuntimeError::NotRunning(_))
        ));
        assert!(matches!(
            rt.adopt(&id("nope"), log, 1),
            Err(crate::runtime::RuntimeError::NotFound(_))
        ));
        // After adoption the container is watched: an exit is reported like for `run`.
        rt.kill(&id("u1-a"), 0).unwrap();
    }
}
