//! The node loop's side of node pressure (see [`crate::pressure`]), at every heartbeat:
//! measure the signals (memory against the allocatable too: what the pods' working set
//! leaves of it), then do what kubelet does. Under DiskPressure: reclaim first (every image
//! no pod uses, then rotated container logs and dead containers' logs), and if the disk is still under pressure once that
//! is done, evict one pod at a time in kubelet's order (`pressure::evict`), without a grace
//! period. Under ImageDiskPressure (the image store on its own disk): remove unused images
//! while it lasts, never evict. Under MemoryPressure there is nothing to reclaim: evict at once, by working set
//! above the memory request. Critical pods (`system-node-critical`, `system-cluster-critical`)
//! are never evicted. An evicted pod is reported `Evicted` with the reason (its Deployment
//! replaces it elsewhere) and is not started again while it stays in the desired state.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use baton_proto::{DesiredState, PressureKind};
use tracing::{info, warn};

use super::Agent;
use crate::pressure::evict::{self, Candidate};
use crate::pressure::thresholds::human_bytes;
use crate::reconcile::{ContainerObs, Lifecycle};

impl Agent {
    /// Measures the node's signals against `--eviction-hard`, logs changes of condition,
    /// makes the disk reserve again once the data disk is out of pressure, and relieves
    /// disk pressure.
    pub(super) fn measure_pressure(&mut self) {
        let observed = crate::pressure::measure::observe(&crate::pressure::measure::Paths {
            data_dir: self.cfg.data_dir.clone(),
            image_dir: self.cfg.data_dir.join("images"),
        });
        let node_cgroup = Path::new(&self.cfg.cgroup_root).join(self.cfg.node.as_str());
        let observed = crate::pressure::Observed {
            memory: crate::pressure::conditions::memory_available(
                observed.memory,
                self.cfg.allocatable.memory_bytes,
                self.deps.runtime.memory_working_set(&node_cgroup),
            ),
            ..observed
        };
        let hard = crate::pressure::pressures(&self.cfg.eviction_hard, &observed);
        let soft = crate::pressure::pressures(&self.cfg.eviction_soft, &observed);
        let disk_met = hard
            .iter()
            .chain(&soft)
            .any(|p| p.kind == PressureKind::Disk);
        let verdict = self.debounce.update(
            std::time::Instant::now(),
            hard,
            soft,
            &self.cfg.eviction_soft_grace,
            self.cfg.pressure_transition,
        );
        let now = verdict.conditions;
        let kinds = |p: &[crate::pressure::Pressure]| p.iter().map(|p| p.kind).collect::<Vec<_>>();
        if kinds(&now) != kinds(&self.pressure) {
            if now.is_empty() {
                info!("no node pressure any more");
            } else {
                for p in &now {
                    warn!(condition = ?p.kind, measured = %p.message, "node under pressure");
                }
            }
        }
        self.pressure = now;
        let allows = |kind| {
            verdict
                .evict
                .iter()
                .find(|p| p.kind == kind)
                .map(|p| p.message.clone())
        };
        // kubelet has nothing to reclaim for memory or pids: evict at once.
        if let Some(measured) = allows(PressureKind::Memory) {
            self.evict_one(Resource::Memory, &measured);
        } else if let Some(measured) = allows(PressureKind::Pid) {
            self.evict_one(Resource::Pids, &measured);
        }
        // The image store on its own disk holds nothing of the pods that an eviction would
        // free: kubelet's only remedy there is collecting unused images, again and again
        // while the pressure lasts.
        if allows(PressureKind::ImageDisk).is_some() {
            self.reclaim_images();
        }
        match allows(PressureKind::Disk) {
            // Under a soft threshold, within its grace period: wait, keep what is there.
            None if disk_met => {}
            None => {
                self.reclaim = None;
                if !self.reserve.is_held() {
                    if let Err(e) = self.reserve.refill() {
                        warn!(error = %e, "cannot make the disk reserve yet");
                    }
                }
            }
            Some(measured) => self.relieve_disk(&measured),
        }
    }

    /// Removes every image no pod uses, unless a collection is still running.
    fn reclaim_images(&mut self) {
        if self.image_gc.swap(true, Ordering::Relaxed) {
            return;
        }
        let (busy, images) = (self.image_gc.clone(), self.deps.images.clone());
        tokio::spawn(async move {
            match images.gc_unused().await {
                Ok(r) if r.removed_images.is_empty() => {}
                Ok(r) => {
                    info!(removed = ?r.removed_images, freed = r.freed_bytes, "image disk pressure: removed unused images")
                }
                Err(e) => warn!(error = %e, "image disk pressure: cannot remove unused images"),
            }
            busy.store(false, Ordering::Relaxed);
        });
    }

    /// Reclaims, then evicts one pod once the reclaim is done and the disk is still short.
    fn relieve_disk(&mut self, measured: &str) {
        match &self.reclaim {
            None => {
                let done = Arc::new(AtomicBool::new(false));
                self.reclaim = Some(done.clone());
                let images = self.deps.images.clone();
                let pods_dir = self.deps.pods_dir.clone();
                // kubelet's dead containers: every one not running now. Their logs are
                // truncated, not unlinked, in case one restarts meanwhile and writes on.
                let deps = &self.deps;
                let dead: Vec<std::path::PathBuf> = self
                    .pods
                    .iter()
                    .flat_map(|(uid, p)| {
                        p.ctrs
                            .iter()
                            .filter(|c| matches!(c.obs, ContainerObs::Exited { .. }))
                            .map(move |c| deps.log_path(uid, &c.name))
                    })
                    .collect();
                tokio::spawn(async move {
                    match images.gc_unused().await {
                        Ok(r) => {
                            info!(removed = ?r.removed_images, freed = r.freed_bytes, "disk pressure: removed unused images")
                        }
                        Err(e) => warn!(error = %e, "disk pressure: cannot remove unused images"),
                    }
                    let (rotated, dead) = tokio::task::spawn_blocking(move || {
                        (remove_rotated_logs(&pods_dir), truncate_logs(&dead))
                    })
                    .await
                    .unwrap_or((0, 0));
                    info!(
                        rotated,
                        dead, "disk pressure: reclaimed rotated and dead containers' logs"
                    );
                    done.store(true, Ordering::Relaxed);
                });
                return;
            }
            Some(done) if !done.load(Ordering::Relaxed) => return,
            Some(_) => {}
        }
        self.evict_one(Resource::Disk, measured);
    }

    /// Evicts the first pod in kubelet's order for `resource`, unless an evicted pod is
    /// still stopping (its resources come back once it is gone) or eviction is off.
    fn evict_one(&mut self, resource: Resource, measured: &str) {
        if !self.cfg.pod_eviction || self.evicted.keys().any(|uid| self.pods.contains_key(uid)) {
            return;
        }
        let node_cgroup = Path::new(&self.cfg.cgroup_root).join(self.cfg.node.as_str());
        let candidates: Vec<Candidate> = self
            .pods
            .iter()
            .filter(|(uid, p)| {
                p.lifecycle != Lifecycle::Stopping && !self.evicted.contains_key(*uid)
            })
            .map(|(uid, p)| {
                let (usage, request) = match resource {
                    Resource::Disk => (disk_usage(&self.deps.pod_dir(uid)), 0),
                    Resource::Memory => (
                        self.deps
                            .runtime
                            .memory_working_set(&node_cgroup.join(uid))
                            .unwrap_or(0),
                        crate::pod::all_containers(&p.spec)
                            .map(|c| c.resources.memory_request_bytes)
                            .sum(),
                    ),
                    // kubelet ranks by process count; pods ask for no pids.
                    Resource::Pids => (
                        self.deps
                            .runtime
                            .pids_current(&node_cgroup.join(uid))
                            .unwrap_or(0),
                        0,
                    ),
                };
                // The desired state's copy: a v5 coordinator may repeat a generation first
                // received in v4's shape (no priority) once the agent said hello.
                let spec = self
                    .desired
                    .pods
                    .iter()
                    .find(|d| d.uid.as_str() == uid.as_str())
                    .unwrap_or(&p.spec);
                Candidate::of(uid.clone(), spec, usage, request)
            })
            .collect();
        let Some(victim) = evict::rank(candidates).into_iter().next() else {
            return;
        };
        let name = self
            .pods
            .get(&victim.uid)
            .map(|p| p.spec.name.to_string())
            .unwrap_or_default();
        let reason = match resource {
            Resource::Pids => format!(
                "The node was low on resource: {}. {measured}; the pod used {} processes.",
                resource.name(),
                victim.usage
            ),
            _ => format!(
                "The node was low on resource: {}. {measured}; the pod used {}, request is {}.",
                resource.name(),
                human_bytes(victim.usage),
                human_bytes(victim.request)
            ),
        };
        warn!(pod = %name, uid = %victim.uid, %reason, "evicting pod");
        self.force_stop.insert(victim.uid.clone());
        self.evicted.insert(victim.uid, reason);
        self.status_dirty = true;
    }

    /// The desired state the reconciler works from: the persisted one less evicted pods.
    pub(super) fn runnable(&self) -> std::borrow::Cow<'_, DesiredState> {
        let runs = self.run_pods();
        if self.evicted.is_empty() && runs.is_empty() {
            return std::borrow::Cow::Borrowed(&self.desired);
        }
        let mut d = self.desired.clone();
        // The CronJobs' runs are the node's own: desired, as long as they are active.
        let pods = d
            .pods
            .iter()
            .chain(&runs)
            .filter(|p| !self.evicted.contains_key(p.uid.as_str()))
            .cloned()
            .collect();
        d.pods = baton_proto::BVec::from_vec(pods).unwrap_or_default();
        std::borrow::Cow::Owned(d)
    }
}

/// What an eviction frees, in kubelet's words.
#[derive(Debug, Clone, Copy)]
enum Resource {
    Disk,
    Memory,
    Pids,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Disk => "ephemeral-storage",
            Resource::Memory => "memory",
            Resource::Pids => "pids",
        }
    }
}

/// Bytes under `dir` on its own filesystem: mounts below it (container root filesystems,
/// tmpfs volumes) are not the data disk's and are skipped.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, dev: u64) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.dev() != dev => 0,
                Ok(m) if m.is_dir() => walk(&e.path(), dev),
                Ok(m) => m.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    }
    match std::fs::metadata(dir) {
        Ok(m) => walk(dir, m.dev()),
        Err(_) => 0,
    }
}

/// Removes every rotated container log (`<pod>/logs/<container>.log.1`, with its line
/// times `.log.1.times`); returns the bytes.
fn remove_rotated_logs(pods_dir: &Path) -> u64 {
    let mut freed = 0;
    for pod in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
        for log in std::fs::read_dir(pod.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = log.path();
            let name = log.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".log.1") || name.ends_with(".log.1.times") {
                let size = log.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(&path).is_ok() {
                    freed += size;
                }
            }
        }
    }
    freed
}

/// Empties the logs at `paths` (dead containers'), and their line times; returns the bytes
/// freed.
fn truncate_logs(paths: &[std::path::PathBuf]) -> u64 {
    let empty = |path: &Path| {
        let f = std::fs::OpenOptions::new().write(true).open(path).ok()?;
        let size = f.metadata().ok()?.len();
        f.set_len(0).ok()?;
        Some(size)
    };
    paths
        .iter()
        .filter_map(|path| {
            let size = empty(path)?;
            Some(size + empty(&crate::logs::times::times_path(path)).unwrap_or(0))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_logs_go_and_current_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("u1/logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("app.log"), b"now").unwrap();
        std::fs::write(logs.join("app.log.1"), vec![0u8; 5000]).unwrap();
        std::fs::write(logs.join("app.log.1.times"), vec![0u8; 17]).unwrap();
        std::fs::write(logs.join("app.log.times"), vec![0u8; 17]).unwrap();
        assert_eq!(remove_rotated_logs(dir.path()), 5017);
        assert!(logs.join("app.log").exists() && !logs.join("app.log.1").exists());
        assert!(logs.join("app.log.times").exists() && !logs.join("app.log.1.times").exists());
        assert!(disk_usage(&dir.path().join("u1")) >= 3);
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }

    #[test]
    fn dead_logs_are_emptied_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (dead, live) = (dir.path().join("dead.log"), dir.path().join("live.log"));
        std::fs::write(&dead, vec![1u8; 7000]).unwrap();
        let dead_times = crate::logs::times::times_path(&dead);
        std::fs::write(&dead_times, vec![0u8; 20]).unwrap();
        std::fs::write(&live, b"running").unwrap();
        let missing = dir.path().join("never-started.log");
        assert_eq!(truncate_logs(&[dead.clone(), missing.clone()]), 7020);
        assert_eq!(std::fs::metadata(&dead).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(&dead_times).unwrap().len(), 0);
        assert_eq!(std::fs::read(&live).unwrap(), b"running");
        assert!(!missing.exists());
    }
}
