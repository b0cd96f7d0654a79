//! The agent's reconciler: desired pods plus observed pods in, a list of steps out.
//!
//! Pure and synchronous, with time passed in, so every decision is a table test. The
//! node loop executes the steps and feeds what happened back as observations.
//!
//! Within a running pod (network and volumes ready), containers are sequenced as kubelet
//! does: init containers one at a time, in order, each to a clean exit; a failed one is
//! restarted with the same backoff as any container unless the policy is `Never` (the pod
//! has then failed and nothing more runs). Only once all have succeeded do the main
//! containers start, all at once. Init containers never run again after that, not even when
//! a main container restarts (the node keeps `init_done` across agent restarts).

use std::collections::BTreeMap;

use baton_proto::{DesiredState, RestartPolicy};

/// Milliseconds on a monotonic clock the caller chooses.
pub type Millis = u64;

/// A container crash-looping slower than this resets its backoff, as kubelet does.
pub const BACKOFF_RESET_AFTER: Millis = 10 * 60 * 1000;
pub const BACKOFF_CAP: Millis = 5 * 60 * 1000;
const BACKOFF_FIRST: Millis = 10 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Pulling images, wiring the network, creating containers.
    Starting,
    Running,
    Stopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerObs {
    /// Not started yet in this pod's life (or its start failed before it ran).
    Waiting,
    /// A worker is creating it right now.
    Creating,
    Running {
        since: Millis,
    },
    Exited {
        code: i32,
        oom: bool,
        at: Millis,
        ran_for: Millis,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrObs {
    pub name: String,
    pub state: ContainerObs,
    /// How many restarts in a row its backoff has counted.
    pub level: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObs {
    pub lifecycle: Lifecycle,
    pub restart_policy: RestartPolicy,
    /// In order.
    pub init_containers: Vec<CtrObs>,
    /// Every init container has succeeded once (possibly in an earlier agent process).
    pub init_done: bool,
    pub containers: Vec<CtrObs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    StartPod {
        uid: String,
    },
    StopPod {
        uid: String,
    },
    /// First run of a container (init or main) in this pod's life.
    StartContainer {
        uid: String,
        container: String,
    },
    RestartContainer {
        uid: String,
        container: String,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// When to call `plan` again at the latest, for a restart whose backoff is running.
    pub wake_at: Option<Millis>,
}

/// Delay before restarting a container that has been restarted `level` times in a row:
/// immediate the first time, then 10 s doubling up to five minutes.
pub fn backoff(level: u32) -> Millis {
    match level {
        0 => 0,
        n => BACKOFF_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(BACKOFF_CAP),
    }
}

/// Up to a tenth of the backoff, different per container: many containers that crash
/// together (a shared dependency went away) do not all come back in the same instant.
/// Derived from the container's identity rather than a random source, so the planner
/// stays a pure function.
pub fn jitter(uid: &str, container: &str, level: u32) -> Millis {
    let spread = backoff(level) / 10;
    if spread == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid
        .bytes()
        .chain([0])
        .chain(container.bytes())
        .chain(level.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % (spread + 1)
}

pub fn should_restart(policy: RestartPolicy, code: i32, oom: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0 || oom,
        RestartPolicy::Never => false,
    }
}

/// The next init container to act on: the first that has not succeeded.
fn plan_init(uid: &str, obs: &PodObs, now: Millis, out: &mut Plan) {
    for c in &obs.init_containers {
        match c.state {
            ContainerObs::Exited {
                code: 0,
                oom: false,
                ..
            } => continue,
            ContainerObs::Waiting => out.steps.push(Step::StartContainer {
                uid: uid.to_owned(),
                container: c.name.clone(),
            }),
            ContainerObs::Exited { .. } => {
                // An init container is retried on failure under Always and OnFailure alike;
                // under Never the pod has failed.
                if obs.restart_policy != RestartPolicy::Never {
                    plan_restart(uid, c, now, out);
                }
            }
            ContainerObs::Creating | ContainerObs::Running { .. } => {}
        }
        return;
    }
}

/// Restarts an exited container once its backoff is over, or asks to be woken then.
fn plan_restart(uid: &str, c: &CtrObs, now: Millis, out: &mut Plan) {
    let ContainerObs::Exited { at, ran_for, .. } = c.state else {
        return;
    };
    let level = if ran_for >= BACKOFF_RESET_AFTER {
        0
    } else {
        c.level
    };
    let due = at
        .saturating_add(backoff(level))
        .saturating_add(jitter(uid, &c.name, level));
    if due <= now {
        out.steps.push(Step::RestartContainer {
            uid: uid.to_owned(),
            container: c.name.clone(),
        });
    } else {
        out.wake_at = Some(out.wake_at.map_or(due, |w| w.min(due)));
    }
}

pub fn plan(desired: &DesiredState, observed: &BTreeMap<String, PodObs>, now: Millis) -> Plan {
    let mut out = Plan::default();
    for pod in desired.pods.iter() {
        if !observed.contains_key(pod.uid.as_str()) {
            out.steps.push(Step::StartPod {
                uid: pod.uid.to_string(),
            });
        }
    }
    for (uid, obs) in observed {
        let wanted = desired.pods.iter().any(|p| p.uid.as_str() == uid);
        if !wanted {
            if obs.lifecycle != Lifecycle::Stopping {
                out.steps.push(Step::StopPod { uid: uid.clone() });
            }
            continue;
        }
        if obs.lifecycle != Lifecycle::Running {
            continue;
        }
        let init_done = obs.init_done
            || obs.init_containers.iter().all(|c| {
                matches!(
                    c.state,
                    ContainerObs::Exited {
                        code: 0,
                        oom: false,
                        ..
                    }
                )
            });
        if !init_done {
            plan_init(uid, obs, now, &mut out);
            continue;
        }
        for c in &obs.containers {
            match c.state {
                ContainerObs::Waiting => out.steps.push(Step::StartContainer {
                    uid: uid.clone(),
                    container: c.name.clone(),
                }),
                ContainerObs::Exited { code, oom, .. } => {
                    if should_restart(obs.restart_policy, code, oom) {
                        plan_restart(uid, c, now, &mut out);
                    }
                }
                ContainerObs::Creating | ContainerObs::Running { .. } => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, BVec, PodSpec};

    fn desired(uids: &[&str]) -> DesiredState {
        let pods = uids
            .iter()
            .map(|u| PodSpec {
                name: BString::new(format!("pod-{u}")).unwrap(),
                uid: BString::new(*u).unwrap(),
                host_network: false,
                restart_policy: RestartPolicy::Always,
                termination_grace_secs: 1,
                containers: BVec::new(),
                init_containers: BVec::new(),
                volumes: BVec::new(),
                image_pull_secrets: BVec::new(),
                priority: 0,
                dns: None,
            })
            .collect();
        DesiredState {
            generation: 1,
            pods: BVec::from_vec(pods).unwrap(),
            secrets: BVec::new(),
            term: 0,
            crons: Default::default(),
        }
    }

    fn ctr(name: &str, state: ContainerObs, level: u32) -> CtrObs {
        CtrObs {
            name: name.into(),
            state,
            level,
        }
    }

    fn obs(lifecycle: Lifecycle, policy: RestartPolicy, c: ContainerObs, level: u32) -> PodObs {
        PodObs {
            lifecycle,
            restart_policy: policy,
            init_containers: vec![],
            init_done: false,
            containers: vec![ctr("c", c, level)],
        }
    }

    fn observed(items: &[(&str, PodObs)]) -> BTreeMap<String, PodObs> {
        items
            .iter()
            .map(|(u, o)| (u.to_string(), o.clone()))
            .collect()
    }

    fn start(u: &str) -> Step {
        Step::StartPod { uid: u.into() }
    }
    fn stop(u: &str) -> Step {
        Step::StopPod { uid: u.into() }
    }
    fn restart(u: &str) -> Step {
        Step::RestartContainer {
            uid: u.into(),
            container: "c".into(),
        }
    }

    #[test]
    fn table() {
        use ContainerObs::*;
        use Lifecycle::*;
        use RestartPolicy::*;
        let running = ContainerObs::Running { since: 0 };
        let crashed = |code, at| Exited {
            code,
            oom: false,
            at,
            ran_for: 1000,
        };
        #[rustfmt::skip]
        type Case = (&'static str, DesiredState, BTreeMap<String, PodObs>, Millis, Plan);
        let cases: Vec<Case> = vec![
            (
                "nothing to do",
                desired(&[]),
                observed(&[]),
                0,
                Plan::default(),
            ),
            (
                "start new pods",
                desired(&["a", "b"]),
                observed(&[]),
                0,
                Plan {
                    steps: vec![start("a"), start("b")],
                    wake_at: None,
                },
            ),
            (
                "stop pods no longer wanted, keep wanted ones",
                desired(&["a"]),
                observed(&[
                    ("a", obs(Lifecycle::Running, Always, running, 0)),
                    ("b", obs(Lifecycle::Running, Always, running, 0)),
                ]),
                0,
                Plan {
                    steps: vec![stop("b")],
                    wake_at: None,
                },
            ),
            (
                "a pod already stopping is not stopped twice",
                desired(&[]),
                observed(&[("b", obs(Stopping, Always, running, 0))]),
                0,
                Plan::default(),
            ),
            (
                "a replaced pod (new uid) stops the old and starts the new",
                desired(&["new"]),
                observed(&[("old", obs(Lifecycle::Running, Always, running, 0))]),
                0,
                Plan {
                    steps: vec![start("new"), stop("old")],
                    wake_at: None,
                },
            ),
            (
                "first crash restarts at once",
                desired(&["a"]),
                observed(&[("a", obs(Lifecycle::Running, Always, crashed(1, 500), 0))]),
                500,
                Plan {
                    steps: vec![restart("a")],
                    wake_at: None,
                },
            ),
            (
                "second crash waits 10s (plus its jitter)",
                desired(&["a"]),
                observed(&[("a", obs(Lifecycle::Running, Always, crashed(1, 500), 1))]),
                600,
                Plan {
                    steps: vec![],
                    wake_at: Some(10_500 + jitter("a", "c", 1)),
                },
            ),
            (
                "... and not a moment before",
                desired(&["a"]),
                observed(&[("a", obs(Lifecycle::Running, Always, crashed(1, 500), 1))]),
                10_499 + jitter("a", "c", 1),
                Plan {
                    steps: vec![],
                    wake_at: Some(10_500 + jitter("a", "c", 1)),
                },
            ),
            (
                "... and restarts once it is due",
                desired(&["a"]),
                observed(&[("a", obs(Lifecycle::Running, Always, crashed(1, 500), 1))]),
                10_500 + jitter("a", "c", 1),
                Plan {
                    steps: vec![restart("a")],
                    wake_at: None,
                },
            ),
            (
                "a long run resets the backoff",
                desired(&["a"]),
                observed(&[(
                    "a",
                    obs(
                        Lifecycle::Running,
                        Always,
                        Exited {
                            code: 1,
                            oom: false,
                            at: 5,
                            ran_for: BACKOFF_RESET_AFTER,
                        },
                        7,
                    ),
                )]),
                5,
                Plan {
                    steps: vec![restart("a")],
                    wake_at: None,
                },
            ),
            (
                "OnFailure leaves a clean exit alone",
                desired(&["a"]),
                observed(&[("a", obs(Lifecycle::Running, OnFailure, crashed(0, 5), 0))]),
                10,
                Plan::default(),
            ),
            (
                "OnFailure restarts an OOM kill",
                desired(&["a"]),
                observed(&[(
                    "a",
                    obs(
                        Lifecycle::Running,
                        OnFailure,
                        Exited {
                            code: 137,
                            oom: true,
                            at: 5,
                            ran_for: 1,
                        },
                        0,
                    ),
                )]),
                10,
                Plan {
                    steps: vec![restart("a")],
                    wake_at: None,
                },
            ),
            (
                "Never never restarts",
                desired(&["a"]),
                observed(&[("a", obs(Lifecycle::Running, Never, crashed(1, 5), 0))]),
                10,
                Plan::default(),
            ),
            (
                "a starting pod is left to finish",
                desired(&["a"]),
                observed(&[("a", obs(Starting, Always, Waiting, 0))]),
                10,
                Plan::default(),
            ),
        ];
        for (name, d, o, now, want) in cases {
            assert_eq!(plan(&d, &o, now), want, "{name}");
        }
    }

    fn start_c(u: &str, c: &str) -> Step {
        Step::StartContainer {
            uid: u.into(),
            container: c.into(),
        }
    }
    fn restart_c(u: &str, c: &str) -> Step {
        Step::RestartContainer {
            uid: u.into(),
            container: c.into(),
        }
    }

    /// Init containers `i1`, `i2` and main container `c`, running pod `a`.
    fn with_init(
        policy: RestartPolicy,
        i1: ContainerObs,
        i2: (ContainerObs, u32),
        c: ContainerObs,
        init_done: bool,
    ) -> BTreeMap<String, PodObs> {
        observed(&[(
            "a",
            PodObs {
                lifecycle: Lifecycle::Running,
                restart_policy: policy,
                init_containers: vec![ctr("i1", i1, 0), ctr("i2", i2.0, i2.1)],
                init_done,
                containers: vec![ctr("c", c, 0)],
            },
        )])
    }

    #[test]
    fn init_containers_run_in_order_to_success_before_the_main_ones() {
        use ContainerObs::*;
        use RestartPolicy::*;
        let ok = Exited {
            code: 0,
            oom: false,
            at: 100,
            ran_for: 50,
        };
        let failed = Exited {
            code: 2,
            oom: false,
            at: 100,
            ran_for: 50,
        };
        let d = desired(&["a"]);
        let wake = 100 + backoff(2) + jitter("a", "i2", 2);
        #[rustfmt::skip]
        let cases: Vec<(&str, BTreeMap<String, PodObs>, Millis, Plan)> = vec![
            ("a fresh pod starts its first init container only",
             with_init(Always, Waiting, (Waiting, 0), Waiting, false), 0,
             Plan { steps: vec![start_c("a", "i1")], wake_at: None }),
            ("one runs at a time",
             with_init(Always, Running { since: 1 }, (Waiting, 0), Waiting, false), 5, Plan::default()),
            ("nor while it is being created",
             with_init(Always, Creating, (Waiting, 0), Waiting, false), 5, Plan::default()),
            ("a success starts the next",
             with_init(Always, ok, (Waiting, 0), Waiting, false), 200,
             Plan { steps: vec![start_c("a", "i2")], wake_at: None }),
            ("a failure is retried at once the first time",
             with_init(Always, ok, (failed, 0), Waiting, false), 100,
             Plan { steps: vec![restart_c("a", "i2")], wake_at: None }),
            ("... then with backoff",
             with_init(OnFailure, ok, (failed, 2), Waiting, false), 200,
             Plan { steps: vec![], wake_at: Some(wake) }),
            ("... and restarted when due",
             with_init(OnFailure, ok, (failed, 2), Waiting, false), wake,
             Plan { steps: vec![restart_c("a", "i2")], wake_at: None }),
            ("under Never a failed init container fails the pod: nothing more runs",
             with_init(Never, ok, (failed, 0), Waiting, false), 10_000_000, Plan::default()),
            ("all succeeded: the main containers start",
             with_init(Always, ok, (ok, 0), Waiting, false), 200,
             Plan { steps: vec![start_c("a", "c")], wake_at: None }),
            ("once done (e.g. before an agent restart), init containers never run again",
             with_init(Always, Waiting, (Waiting, 0), failed, true), 200,
             Plan { steps: vec![restart_c("a", "c")], wake_at: None }),
        ];
        for (name, o, now, want) in cases {
            assert_eq!(plan(&d, &o, now), want, "{name}");
        }
    }

    #[test]
    fn main_containers_without_init_start_together() {
        let o = observed(&[(
            "a",
            PodObs {
                lifecycle: Lifecycle::Running,
                restart_policy: RestartPolicy::Always,
                init_containers: vec![],
                init_done: false,
                containers: vec![
                    ctr("x", ContainerObs::Waiting, 0),
                    ctr("y", ContainerObs::Waiting, 0),
                ],
            },
        )]);
        assert_eq!(
            plan(&desired(&["a"]), &o, 0).steps,
            vec![start_c("a", "x"), start_c("a", "y")]
        );
    }

    #[test]
    fn jitter_is_bounded_spread_and_absent_for_the_first_restart() {
        assert_eq!(jitter("a", "c", 0), 0);
        for level in 1..10 {
            for uid in ["a", "b", "c", "d"] {
                assert!(jitter(uid, "c", level) <= backoff(level) / 10);
            }
        }
        let spread: std::collections::BTreeSet<Millis> = (0..20)
            .map(|i| jitter(&format!("pod-{i}"), "c", 3))
            .collect();
        assert!(
            spread.len() > 10,
            "jitter does not spread restarts: {spread:?}"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let seq: Vec<Millis> = (0..8).map(backoff).collect();
        assert_eq!(
            seq,
            [0, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }
}
