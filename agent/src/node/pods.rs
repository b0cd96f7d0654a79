//! What the node loop knows of each pod and container it runs: the observations the
//! reconciler reads, what the status reports, and what a pod's record keeps.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_proto::{BString, ContainerSpec, ContainerState, ContainerStatus, PodSpec, Termination};

use crate::image::ImageConfig;
use crate::network::PortReservation;
use crate::pod::{ContainerRecord, PodRecord};
use crate::probe::ContainerProbes;
use crate::reconcile::{self, ContainerObs, Lifecycle, Millis};
use crate::runtime::{ContainerId, RunSpec};

pub(super) struct Ctr {
    pub(super) name: String,
    /// An init container (run to completion before the main ones).
    pub(super) init: bool,
    pub(super) cspec: ContainerSpec,
    pub(super) id: Option<ContainerId>,
    pub(super) obs: ContainerObs,
    pub(super) report: ContainerState,
    /// Consecutive restarts, for the backoff; reset by a long run.
    pub(super) level: u32,
    pub(super) restarts: u32,
    pub(super) spec: Option<RunSpec>,
    pub(super) image: Option<ImageConfig>,
    /// Counts runs, so that a probe result from an earlier run is ignored.
    pub(super) run: u64,
    /// The probe schedule of the current run (`None` while not running).
    pub(super) probes: Option<ContainerProbes>,
    pub(super) last_termination: Option<Termination>,
    /// Why the agent is killing the current run (a failed liveness or startup probe).
    pub(super) kill_reason: Option<&'static str>,
    /// An exit that arrived while the start of this run was still being reported: the
    /// reaper thread and the starting worker race, and a container that exits at once
    /// (`exit 3`) is often reaped first. Applied as soon as the start is recorded.
    pub(super) early_exit: Option<(i32, bool)>,
}

impl Ctr {
    /// Records that the current run ended; a run long enough resets the restart backoff.
    pub(super) fn apply_exit(&mut self, code: i32, oom: bool, now: Millis) {
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

    pub(super) fn new(c: &ContainerSpec, init: bool) -> Self {
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

    pub(super) fn status(&self) -> Option<ContainerStatus> {
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

pub(super) struct Pod {
    pub(super) spec: PodSpec,
    pub(super) lifecycle: Lifecycle,
    pub(super) pod_ip: Option<IpAddr>,
    pub(super) ctrs: Vec<Ctr>,
    /// Its hostPorts' reservations; the DNAT rules follow from `pod_ip` (see `hostports.rs`).
    pub(super) _ports: Vec<PortReservation>,
    /// Workers (pull, start, run, remove) running for this pod. A stop waits for them all,
    /// so a worker can never create something after the stop has cleaned up.
    pub(super) busy: u32,
    /// Every init container has succeeded once; kept in the pod's record.
    pub(super) init_done: bool,
}

impl Pod {
    pub(super) fn record(&self) -> PodRecord {
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

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// A worker's failure as the status carries it: at most 1000 characters and 1024 bytes.
pub(super) fn truncate(reason: impl std::fmt::Display) -> BString<1024> {
    let mut s: String = reason.to_string().chars().take(1000).collect();
    while s.len() > 1024 {
        s.pop();
    }
    BString::new(s).unwrap_or_default()
}
