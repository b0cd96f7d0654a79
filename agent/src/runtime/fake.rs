//! A recording [`Runtime`] for unit tests of the agent core: it records every call with typed
//! arguments, can be told to fail the next `run`, and lets the test decide when containers exit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc::UnboundedSender;

use super::{
    Adopted, Attached, ContainerId, ExecIo, ExecOutcome, ExitEvent, ExitReason, RunSpec, Runtime,
    RuntimeError,
};

/// One recorded call. `Run` keeps the spec inline (not boxed) so tests can match on it directly;
/// the size of a test double's enum does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Run(RunSpec),
    Kill(ContainerId, i32),
    Delete(ContainerId),
    List,
    State(ContainerId),
    Adopt(ContainerId),
    Exec(ContainerId, Vec<String>),
    ExecAttached(ContainerId, Vec<String>),
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    fail_next_run: Option<String>,
    /// Ids that were run and not deleted, i.e. what `list` reports.
    containers: BTreeSet<ContainerId>,
    /// Ids that `exit` was called for since their last `run`.
    exited: BTreeSet<ContainerId>,
    /// Pid of each container in `containers`.
    pids: BTreeMap<ContainerId, u32>,
    next_pid: u32,
    /// What `exec` answers per container; `Exited(0)` when not set.
    exec_outcomes: BTreeMap<ContainerId, ExecOutcome>,
}

pub struct FakeRuntime {
    exits: UnboundedSender<ExitEvent>,
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new(exits: UnboundedSender<ExitEvent>) -> Self {
        Self {
            exits,
            state: Mutex::new(State {
                next_pid: 1000,
                ..State::default()
            }),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Makes the next `run` fail with [`RuntimeError::Injected`] (the call is still recorded).
    pub fn fail_next_run(&self, err_msg: impl Into<String>) {
        self.lock().fail_next_run = Some(err_msg.into());
    }

    /// Reports that `id` exited, as the real runtime's reaper would. From now on `kill` answers
    /// [`RuntimeError::NotRunning`] for it, like the real runtime.
    pub fn exit(&self, id: &ContainerId, reason: ExitReason) {
        self.lock().exited.insert(id.clone());
        // A closed receiver means the core under test is gone; nothing to report to.
        let _ = self.exits.send(ExitEvent {
            id: id.clone(),
            reason,
        });
    }

    /// Pretends an earlier agent process left `id` behind, running or already exited: it is
    /// listed and answers `state`, without a recorded `run`. Returns its pid.
    pub fn seed(&self, id: &ContainerId, running: bool) -> u32 {
        let mut st = self.lock();
        st.next_pid += 1;
        let pid = st.next_pid;
        st.containers.insert(id.clone());
        st.pids.insert(id.clone(), pid);
        if running {
            st.exited.remove(id);
        } else {
            st.exited.insert(id.clone());
        }
        pid
    }

    /// From now on `exec` in `id` answers `outcome` (a probe test's knob).
    pub fn set_exec_outcome(&self, id: &ContainerId, outcome: ExecOutcome) {
        self.lock().exec_outcomes.insert(id.clone(), outcome);
    }

    /// Ids that were run and not yet deleted.
    pub fn containers(&self) -> Vec<ContainerId> {
        self.lock().containers.iter().cloned().collect()
    }

    /// A poisoned lock only means another test thread panicked; the data is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Runtime for FakeRuntime {
    fn run(&self, spec: &RunSpec) -> Result<u32, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Run(spec.clone()));
        if let Some(msg) = st.fail_next_run.take() {
            return Err(RuntimeError::Injected(msg));
        }
        spec.validate()?;
        if !st.containers.insert(spec.id.clone()) {
            return Err(RuntimeError::AlreadyExists(spec.id.clone()));
        }
        st.exited.remove(&spec.id);
        st.next_pid += 1;
        let pid = st.next_pid;
        st.pids.insert(spec.id.clone(), pid);
        Ok(pid)
    }

    fn kill(&self, id: &ContainerId, signal: i32) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Kill(id.clone(), signal));
        if !st.containers.contains(id) {
            Err(RuntimeError::NotFound(id.clone()))
        } else if st.exited.contains(id) {
            Err(RuntimeError::NotRunning(id.clone()))
        } else {
            Ok(())
        }
    }

    fn delete(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Delete(id.clone()));
        st.containers.remove(id);
        st.exited.remove(id);
        st.pids.remove(id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<ContainerId>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::List);
        Ok(st.containers.iter().cloned().collect())
    }

    fn state(&self, id: &ContainerId) -> Result<Option<Adopted>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::State(id.clone()));
        Ok(st.pids.get(id).map(|pid| Adopted {
            pid: *pid,
            running: !st.exited.contains(id),
            created_at_ms: None,
        }))
    }

    fn adopt(
        &self,
        id: &ContainerId,
        _log_path: &Path,
        _log_max_bytes: u64,
    ) -> Result<Adopted, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Adopt(id.clone()));
        let Some(pid) = st.pids.get(id).copied() else {
            return Err(RuntimeError::NotFound(id.clone()));
        };
        if st.exited.contains(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        Ok(Adopted {
            pid,
            running: true,
            created_at_ms: None,
        })
    }

    fn exec(
        &self,
        id: &ContainerId,
        args: &[String],
        _timeout: std::time::Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Exec(id.clone(), args.to_vec()));
        if !st.containers.contains(id) {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        if st.exited.contains(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        Ok(st
            .exec_outcomes
            .get(id)
            .cloned()
            .unwrap_or(ExecOutcome::Exited(0)))
    }

    /// Acts as `cat` over pipes: copies stdin to stdout until its end, then exits with the
    /// status `set_exec_outcome` chose (0 by default); `kill` ends it at once with 137.
    fn exec_attached(
        &self,
        id: &ContainerId,
        args: &[String],
        io: ExecIo,
    ) -> Result<Attached, RuntimeError> {
        let code = {
            let mut st = self.lock();
            st.calls.push(Call::ExecAttached(id.clone(), args.to_vec()));
            if !st.containers.contains(id) {
                return Err(RuntimeError::NotFound(id.clone()));
            }
            if st.exited.contains(id) {
                return Err(RuntimeError::NotRunning(id.clone()));
            }
            match st.exec_outcomes.get(id) {
                Some(ExecOutcome::Exited(c)) => *c,
                _ => 0,
            }
        };
        let ExecIo::Pipes { stdin, stdout, .. } = io else {
            return Err(RuntimeError::Injected("the fake runtime has no tty".into()));
        };
        let (done, exited) = std::sync::mpsc::channel();
        let killed = done.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(
                &mut std::fs::File::from(stdin),
                &mut std::fs::File::from(stdout),
            );
            let _ = done.send(code);
        });
        let killed = std::sync::Mutex::new(killed);
        Ok(Attached {
            pty: None,
            wait: Box::new(move || Ok(exited.recv().unwrap_or(137))),
            kill: std::sync::Arc::new(move || {
                let _ = killed.lock().map(|k| k.send(137));
            }),
        })
    }
}

/// A minimal spec for tests that only need a container of this id to exist.
#[cfg(test)]
pub fn test_spec(id: &str) -> RunSpec {
    RunSpec {
        id: ContainerId::new(id).unwrap(),
        rootfs: "/r".into(),
        args: vec!["true".into()],
        env: vec![],
        cwd: "/".into(),
        hostname: "h".into(),
        netns: None,
        cgroup_path: "baton/n/p/c".into(),
        memory_limit_bytes: None,
        cpu_limit_millis: None,
        cpu_request_millis: 0,
        pids_limit: 10,
        log_path: "/l".into(),
        log_max_bytes: 1,
        mounts: vec![],
        security: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> RunSpec {
        test_spec(id)
    }

    #[test]
    fn records_calls_injects_failures_and_emits_exits() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = FakeRuntime::new(tx);
        let a = spec("a");
        rt.fail_next_run("boom");
        assert!(matches!(rt.run(&a), Err(RuntimeError::Injected(m)) if m == "boom"));
        let pid = rt.run(&a).unwrap();
        assert!(pid > 0);
        assert!(matches!(rt.run(&a), Err(RuntimeError::AlreadyExists(_))));
        rt.kill(&a.id, 15).unwrap();
        rt.kill(&a.id, 0).unwrap();
        rt.exit(&a.id, ExitReason::Signaled(15));
        assert!(matches!(
            rt.kill(&a.id, 0),
            Err(RuntimeError::NotRunning(_))
        ));
        assert_eq!(
            rx.try_recv().unwrap(),
            ExitEvent {
                id: a.id.clone(),
                reason: ExitReason::Signaled(15)
            }
        );
        assert_eq!(rt.list().unwrap(), vec![a.id.clone()]);
        rt.delete(&a.id).unwrap();
        rt.delete(&a.id).unwrap();
        assert!(rt.list().unwrap().is_empty());
        assert!(matches!(rt.kill(&a.id, 9), Err(RuntimeError::NotFound(_))));
        assert_eq!(
            rt.calls(),
            vec![
                Call::Run(a.clone()),
                Call::Run(a.clone()),
                Call::Run(a.clone()),
                Call::Kill(a.id.clone(), 15),
                Call::Kill(a.id.clone(), 0),
                Call::Kill(a.id.clone(), 0),
                Call::List,
                Call::Delete(a.id.clone()),
                Call::Delete(a.id.clone()),
                Call::List,
                Call::Kill(a.id.clone(), 9),
            ]
        );
    }
}
