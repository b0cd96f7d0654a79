//! The agent's update task: takes orders and the node's health over a channel of a closed
//! event enum, and drives the device through download, verification, staging and the
//! switch (old agent), or probation and commit (new agent). It never touches pods: the
//! switch only makes this process exit, and the next agent adopts the pods.
//!
//! Orders are retained on the broker and come again at every connect, so handling one is
//! idempotent: an order for the version this device already committed, rolled back or is
//! proving answers with that phase again and does nothing else. While an order downloads,
//! the task still listens: a withdrawal (a halted or aborted rollout) or another order stops
//! the download and removes its partial file; from the verified, staged file on, the switch
//! is never interrupted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::sign::VerifyingKey;
use baton_proto::{AgentUpdate, BString, Body, UpdatePhase, UpdateReport};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::check::{self, Me, Refusal};
use super::download::{self, Source};
use super::layout::{file_sha256, Layout};
use super::probation::{Health, Probation, Verdict};
use super::state::{Binary, Phase, UpdateState};

/// What the node loop tells the update task.
#[derive(Debug, Clone)]
pub enum UpdateEvent {
    /// The retained order on `down/update` (`None`: withdrawn).
    Order(Option<AgentUpdate>),
    Health(Health),
}

/// Sends a body to the coordinator; `false` when it was dropped (offline).
pub type Send = Arc<dyn Fn(Body) -> bool + std::marker::Send + Sync>;

pub struct UpdateConfig {
    pub data_dir: PathBuf,
    /// Where releases are downloaded from; `None` refuses orders.
    pub source: Option<Source>,
    /// The pinned release public key; `None` refuses orders.
    pub release_key: Option<VerifyingKey>,
    /// Started by `baton-agent launch` (which can roll back); otherwise orders are refused.
    pub launched: bool,
}

/// The running task's handle: its inbox, and a flag that turns true when the agent must
/// exit for the launcher to start the next binary.
pub struct Handle {
    pub events: mpsc::Sender<UpdateEvent>,
    pub exit: watch::Receiver<bool>,
}

/// Starts the task.
pub fn spawn(cfg: UpdateConfig, send: Send) -> Handle {
    let (tx, rx) = mpsc::channel(64);
    let (exit_tx, exit) = watch::channel(false);
    let task = Task::new(cfg, send, exit_tx);
    tokio::spawn(task.run(rx));
    Handle { events: tx, exit }
}

struct Task {
    cfg: UpdateConfig,
    layout: Layout,
    send: Send,
    exit: watch::Sender<bool>,
    state: Option<UpdateState>,
    probation: Option<Probation>,
    epoch: Instant,
    health: Health,
    /// The last report, sent again at each connect (reports are not queued offline).
    last: Option<UpdateReport>,
    /// Orders refused for their release (rollout, sha256) with the reason: the retained
    /// order comes again at each connect, and is answered without a new download.
    refused: std::collections::BTreeMap<(String, String), String>,
    /// True while the current order's download runs: the only step a new order stops.
    downloading: Arc<AtomicBool>,
}

fn bounded<const N: usize>(s: &str) -> BString<N> {
    BString::truncated(s)
}

impl Task {
    fn new(cfg: UpdateConfig, send: Send, exit: watch::Sender<bool>) -> Task {
        let layout = Layout::new(&cfg.data_dir);
        let state = match UpdateState::load(&layout.state_file()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "unreadable update state");
                None
            }
        };
        let mut t = Task {
            cfg,
            layout,
            send,
            exit,
            state,
            probation: None,
            epoch: Instant::now(),
            health: Health::default(),
            last: None,
            refused: Default::default(),
            downloading: Arc::default(),
        };
        t.resume();
        t
    }

    /// What the state says this agent is: on probation, or to report an outcome.
    fn resume(&mut self) {
        let Some(s) = &self.state else { return };
        let me = crate::build_info::VERSION;
        match s.phase {
            Phase::Probation if s.to.version == me => {
                info!(
                    version = me,
                    window_secs = s.health_window_secs,
                    "on probation after an update"
                );
                self.probation = Some(Probation::new(0, s.health_window_secs, s.deadline_secs));
                self.last = Some(report(s, UpdatePhase::Probation, None));
            }
            Phase::RolledBack if !s.reported => {
                self.last = Some(report(s, UpdatePhase::RolledBack, s.reason.as_deref()));
            }
            Phase::Committed if !s.reported => {
                self.last = Some(report(s, UpdatePhase::Committed, None));
            }
            _ => {}
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<UpdateEvent>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut queued = None;
        loop {
            let ev = match queued.take() {
                Some(ev) => ev,
                None => tokio::select! {
                    ev = rx.recv() => match ev {
                        None => return,
                        Some(ev) => ev,
                    },
                    _ = tick.tick(), if self.probation.is_some() => {
                        self.step();
                        continue;
                    }
                },
            };
            match ev {
                UpdateEvent::Health(h) => self.on_health(h),
                UpdateEvent::Order(Some(o)) => queued = self.on_order_listening(o, &mut rx).await,
                UpdateEvent::Order(None) => {}
            }
        }
    }

    fn on_health(&mut self, h: Health) {
        let connected_now = h.connected && !self.health.connected;
        self.health = h;
        if connected_now {
            if let Some(r) = self.last.clone() {
                self.publish(r);
            }
        }
    }

    /// Handles `o` while listening to the inbox: health is kept for after, and a withdrawal
    /// or another order stops `o`'s download (not a later step). Returns the order that
    /// came meanwhile, to handle next.
    async fn on_order_listening(
        &mut self,
        o: AgentUpdate,
        rx: &mut mpsc::Receiver<UpdateEvent>,
    ) -> Option<UpdateEvent> {
        let downloading = self.downloading.clone();
        let part = self.layout.part_file(&hex::encode(o.release.sha256));
        let mut health = None;
        let mut next = None;
        let mut open = true;
        let mut stopped = false;
        {
            let work = self.on_order(o.clone());
            tokio::pin!(work);
            loop {
                tokio::select! {
                    biased;
                    () = &mut work => break,
                    ev = rx.recv(), if open && next.is_none() => match ev {
                        None => open = false,
                        Some(UpdateEvent::Health(h)) => health = Some(h),
                        Some(ev) => next = Some(ev),
                    },
                }
                // The same retained order again (a reconnect, or a new leader's) waits its
                // turn and is answered as before; a withdrawal or another release stops the
                // download.
                let other = matches!(&next, Some(UpdateEvent::Order(n)) if !n.as_ref().is_some_and(|n| same_order(n, &o)));
                if other && downloading.load(Ordering::SeqCst) {
                    stopped = true;
                    break;
                }
            }
        }
        if stopped {
            downloading.store(false, Ordering::SeqCst);
            info!(version = %o.release.version, "order withdrawn or replaced: download stopped");
            if let Err(e) = std::fs::remove_file(&part) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(error = %e, path = %part.display(), "cannot remove a stopped download");
                }
            }
        }
        if let Some(h) = health {
            self.on_health(h);
        }
        next
    }

    /// Sends `r`; a final phase that got out is marked reported in the state.
    fn publish(&mut self, r: UpdateReport) {
        self.last = Some(r.clone());
        let final_phase = matches!(r.phase, UpdatePhase::Committed | UpdatePhase::RolledBack);
        if (self.send)(Body::UpdateReport(r)) && final_phase {
            if let Some(s) = &mut self.state {
                if !s.reported {
                    s.reported = true;
                    if let Err(e) = s.store(&self.layout.state_file()) {
                        warn!(error = %e, "cannot record the report");
                    }
                }
            }
        }
    }

    fn refuse(&mut self, o: &AgentUpdate, why: &Refusal) {
        warn!(version = %o.release.version, reason = %why, "refused an agent update");
        self.publish(UpdateReport {
            rollout: o.rollout.clone(),
            version: o.release.version.clone(),
            phase: UpdatePhase::Refused,
            reason: Some(bounded(&why.to_string())),
            downloaded: 0,
        });
    }

    async fn on_order(&mut self, o: AgentUpdate) {
        if *self.exit.borrow() {
            // Switched: the next agent answers it.
            return;
        }
        let sha = hex::encode(o.release.sha256);
        let version = o.release.version.as_str();
        let key = (o.rollout.to_string(), sha.clone());
        if let Some(why) = self.refused.get(&key).cloned() {
            self.refuse(&o, &Refusal::Failed(why));
            return;
        }
        if let Some(s) = self.state.clone() {
            if s.to.version == version && s.to.sha256 == sha {
                let again = match s.phase {
                    // A new rollout of the same release may try it again.
                    Phase::RolledBack if s.rollout == o.rollout.as_str() => {
                        Some(UpdatePhase::RolledBack)
                    }
                    Phase::Committed => Some(UpdatePhase::Committed),
                    Phase::Probation => Some(UpdatePhase::Probation),
                    _ => None,
                };
                if let Some(phase) = again {
                    let mut r = report(&s, phase, s.reason.as_deref());
                    r.rollout = o.rollout.clone();
                    self.publish(r);
                    return;
                }
            }
        }
        if version == crate::build_info::VERSION && self.probation.is_none() {
            self.publish(UpdateReport {
                rollout: o.rollout.clone(),
                version: o.release.version.clone(),
                phase: UpdatePhase::Committed,
                reason: None,
                downloaded: 0,
            });
            return;
        }
        if self.probation.is_some() {
            // A new order while proving this version: finish proving it first.
            return;
        }
        if let Err(why) = self.install(&o, &sha).await {
            // A download that failed may work at the next connect; the rest would not.
            if !matches!(&why, Refusal::Failed(m) if m.starts_with("download failed")) {
                self.refused.insert(key, why.to_string());
            }
            self.refuse(&o, &why);
        }
    }

    /// Checks, downloads, verifies, stages and switches; then asks the agent to exit.
    async fn install(&mut self, o: &AgentUpdate, sha: &str) -> Result<(), Refusal> {
        let me = Me {
            version: crate::build_info::VERSION,
            target: crate::build_info::TARGET,
            has_key: self.cfg.release_key.is_some(),
            launched: self.cfg.launched,
        };
        check::check_order(o, &me)?;
        let r = &o.release;
        // The signature first: a release the key did not sign is not even downloaded.
        if let Some(key) = &self.cfg.release_key {
            baton_proto::release::verify(r, key).map_err(|e| Refusal::Verify(e.to_string()))?;
        }
        let src = self.cfg.source.clone().ok_or(Refusal::NoSource)?;
        let part = self.layout.part_file(sha);
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        std::fs::create_dir_all(self.layout.root()).map_err(|e| {
            Refusal::Failed(format!(
                "cannot create {}: {e}",
                self.layout.root().display()
            ))
        })?;
        let free = check::free_bytes(self.layout.root())
            .map_err(|e| Refusal::Failed(format!("cannot measure free disk: {e}")))?;
        check::check_disk(
            &self.layout.root().display().to_string(),
            free,
            r.size,
            have.min(r.size),
        )?;

        self.downloading.store(true, Ordering::SeqCst);
        let got = self.download(o, &src, &part).await;
        self.downloading.store(false, Ordering::SeqCst);
        let got = got?;
        if let Err(e) = baton_proto::release::check_content(r, got.size, &got.sha256) {
            let _ = std::fs::remove_file(&part);
            return Err(Refusal::Verify(e.to_string()));
        }
        let staged = self
            .layout
            .stage(&part, r.version.as_str(), sha)
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        info!(version = %r.version, path = %staged.display(), "staged a verified agent release");
        let to = Binary {
            version: r.version.to_string(),
            path: staged,
            sha256: sha.to_owned(),
        };
        self.publish(phase_report(o, UpdatePhase::Staged, got.size));
        self.switch(o, to).map_err(Refusal::Failed)?;
        self.publish(phase_report(o, UpdatePhase::Switching, got.size));
        // Give the report a moment to leave before the process ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = self.exit.send(true);
        Ok(())
    }

    /// Downloads with a few retries (resuming each time), reporting progress.
    async fn download(
        &mut self,
        o: &AgentUpdate,
        src: &Source,
        part: &std::path::Path,
    ) -> Result<download::Downloaded, Refusal> {
        let mut last_err = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(2u64 << attempt)).await;
            }
            let send = self.send.clone();
            let mut last_sent = Instant::now() - Duration::from_secs(10);
            let progress = |n: u64| {
                if last_sent.elapsed() >= Duration::from_secs(2) {
                    last_sent = Instant::now();
                    send(Body::UpdateReport(phase_report(
                        o,
                        UpdatePhase::Downloading,
                        n,
                    )));
                }
            };
            match download::fetch(src, &o.release.sha256, o.release.size, part, progress).await {
                Ok(d) => return Ok(d),
                Err(e) => {
                    warn!(error = %e, attempt, "release download failed");
                    last_err = e.to_string();
                }
            }
        }
        Err(Refusal::Failed(format!("download failed: {last_err}")))
    }

    /// Switches to `to` (see [`Layout::switch`]).
    fn switch(&mut self, o: &AgentUpdate, to: Binary) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let from = Binary {
            version: crate::build_info::VERSION.to_owned(),
            sha256: file_sha256(&exe).map_err(|e| format!("cannot hash {}: {e}", exe.display()))?,
            path: exe,
        };
        let mut s = UpdateState::switching(o.rollout.as_str(), from, to, o.health_window_secs);
        s.pending = Some(format!("no broker connection within {} s", s.deadline_secs));
        self.layout.switch(&mut s).map_err(|e| e.to_string())?;
        self.layout.prune(&[&s.from.path, &s.to.path]);
        info!(from = %s.from.version, to = %s.to.version, "switched; exiting so the launcher starts the new agent (pods keep running)");
        self.state = Some(s);
        Ok(())
    }

    /// One probation tick.
    fn step(&mut self) {
        let Some(p) = &mut self.probation else { return };
        let now = self.epoch.elapsed().as_millis() as u64;
        let verdict = p.observe(now, self.health);
        let Some(s) = &mut self.state else { return };
        let path = self.layout.state_file();
        match verdict {
            Verdict::Wait { pending } => {
                if s.pending.as_deref() != Some(pending.as_str()) {
                    s.pending = Some(pending);
                    if let Err(e) = s.store(&path) {
                        warn!(error = %e, "cannot record the probation's progress");
                    }
                }
            }
            Verdict::Commit => {
                s.phase = Phase::Committed;
                s.pending = None;
                s.reported = false;
                if let Err(e) = s.store(&path) {
                    // Not committed on disk: the watchdog will roll back, which is safe.
                    error!(error = %e, "cannot commit the update");
                    return;
                }
                nix::unistd::alarm::cancel();
                info!(version = %s.to.version, "update committed");
                self.layout.prune(&[&s.from.path, &s.to.path]);
                let r = report(s, UpdatePhase::Committed, None);
                self.probation = None;
                self.publish(r);
            }
            Verdict::RollBack(reason) => {
                warn!(%reason, "probation failed: rolling back");
                s.phase = Phase::RollingBack;
                s.reason = Some(reason);
                if let Err(e) = s.store(&path) {
                    // The watchdog will end this agent and the launcher roll back.
                    error!(error = %e, "cannot record the rollback");
                }
                self.probation = None;
                let _ = self.exit.send(true);
            }
        }
    }
}

fn report(s: &UpdateState, phase: UpdatePhase, reason: Option<&str>) -> UpdateReport {
    UpdateReport {
        rollout: bounded(&s.rollout),
        version: bounded(&s.to.version),
        phase,
        reason: reason.map(bounded),
        downloaded: 0,
    }
}

fn phase_report(o: &AgentUpdate, phase: UpdatePhase, downloaded: u64) -> UpdateReport {
    UpdateReport {
        rollout: o.rollout.clone(),
        version: o.release.version.clone(),
        phase,
        reason: None,
        downloaded,
    }
}

/// The same order, whichever leader gave it: the term says who sent it, not what it asks.
fn same_order(a: &AgentUpdate, b: &AgentUpdate) -> bool {
    AgentUpdate {
        term: b.term,
        ..a.clone()
    } == *b
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
