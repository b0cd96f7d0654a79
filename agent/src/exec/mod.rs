//! Serving `baton exec`, on request only, as [`crate::logs`] serves `baton logs`.
//!
//! An [`ExecRequest`] (on `down/control`, signed like every coordinator message) starts the
//! command in the pod's container through [`Runtime::exec_attached`] (the runtime helper:
//! the container's namespaces, cgroup, root, user and seccomp filter), with pipes or, for
//! `tty`, a terminal made in the container. The agent answers on the session's own topic
//! (`up/exec/<session>`) with [`ExecOutput`]s numbered from 0, each at most
//! [`MAX_EXEC_CHUNK`] bytes, then one [`ExecExit`] with the status.
//!
//! Flow control both ways, so neither side buffers without bound:
//! - output by credit, as logs: chunk `seq` goes out only while `seq < acked + credit` of
//!   the last [`ExecInput`]. Until then the reader threads block on a small channel, the
//!   pipe fills and the command blocks in `write`: a slow client slows the command down;
//! - stdin by acknowledgement: each output carries how many stdin inputs were written
//!   (`stdin_acked`) and the coordinator sends at most [`MAX_EXEC_CREDIT`] beyond it, so the
//!   writer's queue is bounded even for a command that never reads.
//!
//! Every input is also a keep-alive: a session that hears nothing for [`IDLE`] kills its
//! command, and so does a cancel. When the pod goes, its container's processes (the
//! command among them) are killed with it and the session ends with their status.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::{
    BString, BVec, Body, ExecAction, ExecExit, ExecInput, ExecOutput, ExecRequest, ExecStream,
    MAX_EXEC_CHUNK, MAX_EXEC_CREDIT,
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::logs::ChunkSink;
use crate::pod::Deps;
use crate::runtime::{Attached, ExecIo, Runtime};

/// A session that hears no input (each carries credit) for this long ends.
pub const IDLE: Duration = Duration::from_secs(30);
/// The most exec sessions open at once on one node: each holds a runtime helper process
/// and a few threads.
pub const MAX_SESSIONS: usize = 4;
/// After the command exited, how long output may still take to arrive (a child it left
/// in the background may hold its stdout).
pub const DRAIN: Duration = Duration::from_millis(500);
/// How often a session looks whether stdin acknowledgements are due.
const TICK: Duration = Duration::from_millis(50);

/// The open exec sessions of one agent.
pub struct ExecServer {
    runtime: Arc<dyn Runtime>,
    sessions: Mutex<HashMap<u64, mpsc::Sender<ExecInput>>>,
}

enum Stdin {
    Data(Vec<u8>),
    Eof,
}

impl ExecServer {
    pub fn new(runtime: Arc<dyn Runtime>) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<ExecInput>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open_sessions(&self) -> usize {
        self.lock().len()
    }

    /// Starts `req`'s command, answering through `sink`.
    pub fn open(self: &Arc<Self>, req: ExecRequest, sink: Arc<dyn ChunkSink>) {
        let session = req.session;
        let refuse = |why: String| {
            let _ = sink.send(Body::ExecExit(ExecExit {
                session,
                seq: 0,
                code: None,
                error: Some(BString::truncated(&why)),
            }));
        };
        let id = match Deps::container_id(&req.pod_uid, &req.container) {
            Ok(id) if !req.container.contains('/') => id,
            _ => return refuse("invalid pod uid or container name".into()),
        };
        if req.command.is_empty() {
            return refuse("exec needs a command".into());
        }
        // Room for every input the coordinator may send ahead (stdin, and the credit,
        // resize and cancel beside it).
        let (tx, rx) = mpsc::channel(2 * MAX_EXEC_CREDIT as usize + 4);
        {
            let mut s = self.lock();
            if s.len() >= MAX_SESSIONS && !s.contains_key(&session) {
                drop(s);
                return refuse(format!(
                    "too many exec sessions open on this node (at most {MAX_SESSIONS})"
                ));
            }
            s.insert(session, tx);
        }
        let args: Vec<String> = req.command.iter().map(|a| a.to_string()).collect();
        info!(session, pod = %req.pod_uid, container = %req.container, tty = req.tty, "exec session opened");
        let me = self.clone();
        tokio::spawn(async move {
            let (code, why) = match start(me.runtime.clone(), id, args, &req).await {
                Ok(started) => {
                    let mut s = Session::new(&req, sink.clone(), rx, started);
                    let why = s.run().await;
                    (s.finish().await, why)
                }
                Err(e) => (Err(e), "could not start"),
            };
            me.lock().remove(&session);
            let (code, error, seq) = match code {
                Ok((code, seq)) => (Some(code), None, seq),
                Err(e) => (None, Some(BString::truncated(&e)), 0),
            };
            info!(session, reason = why, ?code, ?error, "exec session ended");
            send(
                &*sink,
                Body::ExecExit(ExecExit {
                    session,
                    seq,
                    code,
                    error,
                }),
            )
            .await;
        });
    }

    /// Input for an open session; unknown sessions are ignored.
    pub fn input(&self, i: ExecInput) {
        let tx = self.lock().get(&i.session).cloned();
        match tx {
            // Full only if the coordinator sent past its window: the session sees the gap.
            Some(tx) => {
                let _ = tx.try_send(i);
            }
            None => debug!(session = i.session, "input for an unknown exec session"),
        }
    }
}

/// The command, running, and the agent's ends of its stdio.
struct Started {
    attached: Attached,
    /// Output as it is read: (stream, bytes); closed when every reader has ended.
    output: mpsc::Receiver<(ExecStream, Vec<u8>)>,
    /// To the stdin writer thread (`None`: no stdin).
    stdin: Option<std::sync::mpsc::SyncSender<Stdin>>,
    /// Stdin inputs written so far.
    written: Arc<AtomicU64>,
    /// The terminal, for resizes.
    pty: Option<OwnedFd>,
}

async fn start(
    runtime: Arc<dyn Runtime>,
    id: crate::runtime::ContainerId,
    args: Vec<String>,
    req: &ExecRequest,
) -> Result<Started, String> {
    // Close-on-exec: nothing else the agent starts meanwhile (another exec's helper) may
    // inherit an end, or the command would never see its stdin end.
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {e}"))
    };
    let (io, ours) = if req.tty {
        (
            ExecIo::Tty {
                rows: req.rows.max(1),
                cols: req.cols.max(1),
            },
            None,
        )
    } else {
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
        (
            ExecIo::Pipes {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
            Some((in_w, out_r, err_r)),
        )
    };
    let container = req.container.to_string();
    let mut attached = tokio::task::spawn_blocking(move || runtime.exec_attached(&id, &args, io))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            let mut msg = format!("cannot exec in container {container}: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            msg
        })?;
    let (out_tx, output) = mpsc::channel(2);
    let clone = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("cannot dup: {e}"));
    let (stdin_fd, pty) = match (ours, attached.pty.take()) {
        (Some((in_w, out_r, err_r)), _) => {
            read_into(out_r, ExecStream::Stdout, out_tx.clone());
            read_into(err_r, ExecStream::Stderr, out_tx);
            (Some(in_w), None)
        }
        (None, Some(master)) => {
            read_into(clone(&master)?, ExecStream::Stdout, out_tx);
            (Some(clone(&master)?), Some(master))
        }
        (None, None) => return Err("the runtime gave no terminal".into()),
    };
    let written = Arc::new(AtomicU64::new(0));
    let stdin = match stdin_fd {
        Some(fd) if req.stdin => Some(write_from(fd, req.tty, written.clone())),
        // No stdin: the pipe's end closes here and the command reads an empty stdin.
        _ => None,
    };
    Ok(Started {
        attached,
        output,
        stdin,
        written,
        pty,
    })
}

/// A thread that reads `fd` into `out` until its end (a terminal answers EIO once the
/// command and its children closed it). It blocks while `out` is full: that is the flow
/// control reaching the command.
fn read_into(fd: OwnedFd, stream: ExecStream, out: mpsc::Sender<(ExecStream, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut f = File::from(fd);
        let mut buf = vec![0u8; MAX_EXEC_CHUNK];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.blocking_send((stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// The stdin writer thread: writes what it is given, counting each input once written.
fn write_from(
    fd: OwnedFd,
    tty: bool,
    written: Arc<AtomicU64>,
) -> std::sync::mpsc::SyncSender<Stdin> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Stdin>(MAX_EXEC_CREDIT as usize + 1);
    std::thread::spawn(move || {
        let mut f = Some(File::from(fd));
        while let Ok(op) = rx.recv() {
            match op {
                Stdin::Data(d) => {
                    if let Some(w) = f.as_mut() {
                        if w.write_all(&d).is_err() {
                            f = None; // the command closed its stdin: the rest is dropped
                        }
                    }
                }
                // A terminal has no end of input but the EOF character (^D); a pipe closes.
                Stdin::Eof if tty => {
                    if let Some(w) = f.as_mut() {
                        let _ = w.write_all(&[4]);
                    }
                }
                Stdin::Eof => f = None,
            }
            written.fetch_add(1, Ordering::Relaxed);
        }
    });
    tx
}

struct Session {
    id: u64,
    sink: Arc<dyn ChunkSink>,
    inputs: mpsc::Receiver<ExecInput>,
    started: Started,
    /// The next output's seq.
    seq: u64,
    /// Outputs with a seq below this may be sent.
    window: u64,
    /// The next input's seq.
    next_input: u64,
    /// `stdin_acked` as last sent.
    acked_sent: u64,
    last_heard: tokio::time::Instant,
    exit: Option<Result<i32, String>>,
}

impl Session {
    fn new(
        req: &ExecRequest,
        sink: Arc<dyn ChunkSink>,
        inputs: mpsc::Receiver<ExecInput>,
        started: Started,
    ) -> Self {
        Self {
            id: req.session,
            sink,
            inputs,
            started,
            seq: 0,
            window: u64::from(req.credit.min(MAX_EXEC_CREDIT)),
            next_input: 0,
            acked_sent: 0,
            last_heard: tokio::time::Instant::now(),
            exit: None,
        }
    }

    /// Runs until the command ended and its output is sent, or the session is given up
    /// (then the command is killed); says why.
    async fn run(&mut self) -> &'static str {
        let kill = self.started.attached.kill.clone();
        let wait = std::mem::replace(&mut self.started.attached.wait, Box::new(|| Ok(-1)));
        let mut waiter = tokio::task::spawn_blocking(wait);
        let mut outputs_open = true;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        // An empty first output tells the requester the command runs.
        let started = self.send_output(ExecStream::Stdout, Vec::new()).await;
        let why = if !started {
            "cannot publish"
        } else {
            loop {
                if self.exit.is_some() && !outputs_open {
                    break "exited";
                }
                tokio::select! {
                    out = self.started.output.recv(), if outputs_open && self.seq < self.window => {
                        match out {
                            Some((stream, data)) => {
                                if !self.send_output(stream, data).await {
                                    break "cannot publish";
                                }
                                drain_until = drain_until.map(|_| tokio::time::Instant::now() + DRAIN);
                            }
                            None => outputs_open = false,
                        }
                    }
                    input = self.inputs.recv() => match input {
                        Some(i) => match self.take(i) {
                            Ok(()) => {}
                            Err(why) => break why,
                        },
                        None => break "agent stopping",
                    },
                    done = &mut waiter, if self.exit.is_none() => {
                        self.exit = Some(match done {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        });
                        drain_until = Some(tokio::time::Instant::now() + DRAIN);
                    }
                    _ = tick.tick() => {
                        let written = self.started.written.load(Ordering::Relaxed);
                        if written > self.acked_sent && self.seq < self.window
                            && !self.send_output(ExecStream::Stdout, Vec::new()).await {
                            break "cannot publish";
                        }
                        if self.last_heard.elapsed() > IDLE {
                            break "requester gone (no input or credit)";
                        }
                        // Output still to come after the exit, but none for a while while it
                        // could have been sent: a background child holds the pipe.
                        if drain_until.is_some_and(|d| tokio::time::Instant::now() > d)
                            && self.seq < self.window
                        {
                            break "exited (output left to a background process)";
                        }
                    }
                }
            }
        };
        if self.exit.is_none() {
            kill();
            self.exit = Some(match waiter.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            });
        }
        why
    }

    /// The status and the final seq, once [`Session::run`] is over.
    async fn finish(&mut self) -> Result<(i32, u64), String> {
        // Ends the writer thread; readers end with their pipes or when the channel goes.
        self.started.stdin = None;
        match self.exit.take() {
            Some(Ok(code)) => Ok((code, self.seq)),
            Some(Err(e)) => Err(e),
            None => Err("the command's end is unknown".into()),
        }
    }

    /// Applies one input; `Err(why)` ends the session.
    fn take(&mut self, i: ExecInput) -> Result<(), &'static str> {
        if i.seq < self.next_input {
            return Ok(()); // a duplicate (QoS 1 redelivery)
        }
        if i.seq > self.next_input {
            return Err("exec input lost on the way");
        }
        self.next_input += 1;
        self.last_heard = tokio::time::Instant::now();
        self.window = self.window.max(
            i.acked
                .saturating_add(u64::from(i.credit.min(MAX_EXEC_CREDIT))),
        );
        let to_stdin = |op| match &self.started.stdin {
            Some(tx) => tx.try_send(op).map_err(|_| "stdin sent beyond its window"),
            None => Ok(()),
        };
        match i.action {
            ExecAction::Credit => Ok(()),
            ExecAction::Stdin(d) => to_stdin(Stdin::Data(d.into_vec())),
            ExecAction::Eof => to_stdin(Stdin::Eof),
            ExecAction::Resize { rows, cols } => {
                if let Some(pty) = &self.started.pty {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(pty, size);
                }
                Ok(())
            }
            ExecAction::Cancel => Err("cancelled"),
        }
    }

    async fn send_output(&mut self, stream: ExecStream, data: Vec<u8>) -> bool {
        let Ok(data) = BVec::from_vec(data) else {
            return false;
        };
        let stdin_acked = self.started.written.load(Ordering::Relaxed);
        let body = Body::ExecOutput(ExecOutput {
            session: self.id,
            seq: self.seq,
            stream,
            data,
            stdin_acked,
        });
        if !send(&*self.sink, body).await {
            return false;
        }
        self.acked_sent = stdin_acked;
        self.seq += 1;
        true
    }
}

/// Publishes `body`, retrying while the client queue is full.
async fn send(sink: &dyn ChunkSink, body: Body) -> bool {
    loop {
        match sink.send(body.clone()) {
            Ok(()) => return true,
            Err(true) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(false) => return false,
        }
    }
}
