//! The host's cgroups as the runtime reads them: where a container's cgroup is in each
//! hierarchy (v1 or unified), its OOM counter, whether a process is in it, and removing the
//! empty ones a delete leaves.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};
use libcgroups::v1::util::{get_subsystem_mount_point, list_supported_mount_points};
use libcgroups::v1::ControllerType;

/// Where this host's cgroup directories are, to read OOM counters and to prune empty parents.
#[derive(Debug, Clone)]
pub(super) enum CgroupLayout {
    /// Legacy or hybrid: one hierarchy per controller (libcgroups uses v1 then).
    V1 {
        memory: Option<PathBuf>,
        mounts: Vec<PathBuf>,
    },
    Unified {
        root: PathBuf,
    },
}

impl CgroupLayout {
    pub(super) fn detect() -> Self {
        match get_cgroup_setup() {
            Ok(CgroupSetup::Unified) => Self::Unified {
                root: PathBuf::from(DEFAULT_CGROUP_ROOT),
            },
            other => {
                if let Err(e) = &other {
                    tracing::warn!(error = %e, "cannot detect cgroup setup; assuming v1");
                }
                let mut mounts: Vec<PathBuf> = list_supported_mount_points()
                    .map(|m| m.into_values().collect())
                    .unwrap_or_default();
                mounts.sort();
                mounts.dedup();
                Self::V1 {
                    memory: get_subsystem_mount_point(&ControllerType::Memory).ok(),
                    mounts,
                }
            }
        }
    }

    /// The directories that hold `rel` in every hierarchy.
    pub(super) fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        match self {
            Self::V1 { mounts, .. } => mounts.iter().map(|m| m.join(rel)).collect(),
            Self::Unified { root } => vec![root.join(rel)],
        }
    }

    /// Number of OOM kills recorded in the cgroup at `rel`; `None` when unreadable.
    pub(super) fn oom_kills(&self, rel: &Path) -> Option<u64> {
        let (file, key) = match self {
            Self::V1 { memory, .. } => (
                memory.as_ref()?.join(rel).join("memory.oom_control"),
                "oom_kill",
            ),
            Self::Unified { root } => (root.join(rel).join("memory.events"), "oom_kill"),
        };
        let text = fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key))
                .then(|| it.next().and_then(|v| v.parse().ok()))
                .flatten()
        })
    }
}

impl CgroupLayout {
    /// The memory working set of the cgroup at `rel` (its usage less inactive file cache,
    /// as kubelet counts it); `None` when unreadable.
    pub(super) fn working_set(&self, rel: &Path) -> Option<u64> {
        let (dir, usage_file, inactive_key) = match self {
            Self::V1 { memory, .. } => (
                memory.as_ref()?.join(rel),
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
            Self::Unified { root } => (root.join(rel), "memory.current", "inactive_file"),
        };
        let usage: u64 = fs::read_to_string(dir.join(usage_file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let inactive = fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some(inactive_key))
                        .then(|| it.next().and_then(|v| v.parse::<u64>().ok()))
                        .flatten()
                })
            })
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }
}

impl CgroupLayout {
    /// Processes (tasks) in the cgroup at `rel` and below, as the pids controller counts
    /// them; `None` when unreadable. kubelet ranks pods by this under PIDPressure.
    pub(super) fn pids(&self, rel: &Path) -> Option<u64> {
        let dir = match self {
            // Read only while a pod is chosen for eviction: finding the mount each time
            // is cheaper than keeping it for a rare event.
            Self::V1 { .. } => get_subsystem_mount_point(&ControllerType::Pids)
                .ok()?
                .join(rel),
            Self::Unified { root } => root.join(rel),
        };
        fs::read_to_string(dir.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl CgroupLayout {
    /// CPU time used by the cgroup at `rel` and below, in nanoseconds (v1 `cpuacct.usage`,
    /// v2 `cpu.stat` `usage_usec`); `None` when unreadable.
    pub(super) fn cpu_usage_ns(&self, rel: &Path) -> Option<u64> {
        match self {
            // Found at each read, like the pids controller: the usage report is rare.
            Self::V1 { .. } => fs::read_to_string(
                get_subsystem_mount_point(&ControllerType::CpuAcct)
                    .ok()?
                    .join(rel)
                    .join("cpuacct.usage"),
            )
            .ok()?
            .trim()
            .parse()
            .ok(),
            Self::Unified { root } => {
                let text = fs::read_to_string(root.join(rel).join("cpu.stat")).ok()?;
                let usec: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(usec.saturating_mul(1000))
            }
        }
    }
}

/// Whether the process `pid` is a member of the cgroup at `rel` (in any hierarchy). This is
/// what tells a container's init from an unrelated process that got its pid after a reboot.
pub(super) fn in_cgroup(pid: u32, rel: &Path) -> bool {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let want = format!("/{}", rel.display());
    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path == want)
    })
}

/// Removes a cgroup directory that has no child cgroups and no tasks; `true` once it is gone.
///
/// Right after a child cgroup is removed, the kernel may still answer EBUSY for its parent
/// for a few milliseconds (the child is torn down asynchronously), so EBUSY on an otherwise
/// empty directory is retried briefly.
pub(super) fn remove_empty_cgroup(dir: &Path) -> bool {
    for attempt in 0..8u32 {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => {
                let has_children = fs::read_dir(dir).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                });
                let has_tasks = fs::read_to_string(dir.join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty());
                if has_children || has_tasks {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5 << attempt.min(5)));
            }
        }
    }
    false
}

/// Removes `dir` and the cgroups below it, deepest first; returns those that could not be
/// removed (a process still in them). A missing `dir` is already gone.
pub(super) fn remove_cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let children = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for child in children {
        left.extend(remove_cgroup_tree(&child));
    }
    if left.is_empty() && !remove_empty_cgroup(dir) {
        left.push(dir.to_path_buf());
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the host's real cgroups (the agent's tests run as root): a nested tree under every
    /// hierarchy goes whole, the directory of the tree itself included.
    #[test]
    fn a_cgroup_tree_is_removed_under_every_hierarchy() {
        let layout = CgroupLayout::detect();
        let rel = PathBuf::from(format!("baton-test-tree-{}", std::process::id()));
        let dirs = layout.dirs(&rel);
        assert!(!dirs.is_empty());
        for d in &dirs {
            fs::create_dir_all(d.join("pod/ctr")).unwrap();
            fs::create_dir_all(d.join("other")).unwrap();
        }
        for d in &dirs {
            assert_eq!(
                remove_cgroup_tree(d),
                Vec::<PathBuf>::new(),
                "{}",
                d.display()
            );
            assert!(!d.exists(), "{} left", d.display());
        }
        assert!(
            remove_cgroup_tree(&dirs[0]).is_empty(),
            "a missing tree is gone already"
        );
    }
}
