//! The session messages (v5): `baton logs` (`Log*`) and `baton exec` (`Exec*`, modelled
//! on the log session's, with stdin and a terminal added). A session is opened by the
//! coordinator on `down/control` and answered on its own topic, with credit-based flow
//! control (docs/protocol.md).

use serde::{Deserialize, Serialize};

use crate::{BString, BVec};

/// The most log bytes one [`LogChunk`] carries: small enough that a session's in-flight
/// chunks (at most [`MAX_LOG_CREDIT`]) stay a few hundred KiB on both sides.
pub const MAX_LOG_CHUNK: usize = 16 * 1024;

/// The most chunks a requester may have unacknowledged at once: the agent never reads
/// ahead of its credit, so this bounds what a slow reader can make anyone buffer.
pub const MAX_LOG_CREDIT: u32 = 16;

/// "Send me the log of this container" (`baton logs`). The agent answers on
/// `up/logs/<session>` with [`LogChunk`]s, at most `credit` ahead of the last
/// [`LogCredit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// Chosen by the requester, unique among its open sessions; names the reply topic.
    pub session: u64,
    pub pod_uid: BString<64>,
    pub container: BString<63>,
    /// The last terminated instance's log instead of the current one.
    pub previous: bool,
    /// Keep sending what is written, across rotation and restarts, until cancelled.
    pub follow: bool,
    /// Only the last this many lines (`None`: all that is kept).
    pub tail_lines: Option<u32>,
    /// Chunks the agent may send before the next credit (at most [`MAX_LOG_CREDIT`]).
    pub credit: u32,
    /// Only lines written at or after this (`--since`, `--since-time`); `tail_lines`
    /// applies to what is left, as in kubectl.
    pub since: Option<LogSince>,
    /// Each line prefixed with when it was written (RFC 3339, nanoseconds, UTC) and a space.
    pub timestamps: bool,
}

/// The start of a [`LogRequest`]'s time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSince {
    /// This long before the agent reads the request, on the agent's own clock (as kubelet
    /// takes `sinceSeconds`): a board's clock may be off, a duration does not care.
    Ago { millis: u64 },
    /// An absolute time, nanoseconds since the Unix epoch.
    At { unix_nanos: i64 },
}

/// Flow control of a log session: the requester has consumed every chunk up to `acked`
/// and grants `credit` chunks beyond it. Also its keep-alive: a session that hears
/// nothing for a while ends. `cancel` ends it at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCredit {
    pub session: u64,
    pub acked: u64,
    pub credit: u32,
    pub cancel: bool,
}

/// One piece of a log session, in `seq` order from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub session: u64,
    pub seq: u64,
    /// The log's bytes as the container wrote them (with `timestamps`, each line after
    /// its time).
    pub data: BVec<u8, MAX_LOG_CHUNK>,
    /// Set on the last chunk of a session: `Some(None)` the log ended (no follow, or the
    /// pod is gone), `Some(Some(why))` it could not be read.
    pub end: Option<Option<BString<256>>>,
}

/// The most bytes one [`ExecOutput`] or [`ExecInput`] carries.
pub const MAX_EXEC_CHUNK: usize = 16 * 1024;

/// The most output chunks a requester may have unacknowledged at once, and the most stdin
/// inputs the coordinator sends beyond what the agent acknowledged as written: what a slow
/// reader (or a command that does not read its stdin) can make either side hold.
pub const MAX_EXEC_CREDIT: u32 = 16;

/// "Run this command in this container" (`baton exec`). The agent answers on
/// `up/exec/<session>` with [`ExecOutput`]s, at most `credit` ahead of the last
/// acknowledgement, then one [`ExecExit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Chosen by the requester, unique among its open sessions; names the reply topic.
    pub session: u64,
    pub pod_uid: BString<64>,
    pub container: BString<63>,
    /// The program and its arguments (no shell).
    pub command: BVec<BString<1024>, 64>,
    /// A pseudo-terminal for the command (stdout and stderr are then one stream).
    pub tty: bool,
    /// Stdin is forwarded ([`ExecInput`]); without it the command's stdin is empty.
    pub stdin: bool,
    /// The terminal's size, with `tty`.
    pub rows: u16,
    pub cols: u16,
    /// Output chunks the agent may send before the first [`ExecInput`] acknowledges any
    /// (at most [`MAX_EXEC_CREDIT`]).
    pub credit: u32,
}

/// Input to an exec session, in `seq` order from 0. Every input also acknowledges the
/// output up to `acked` and grants `credit` chunks beyond it, and keeps the session alive:
/// one that hears nothing for a while is ended and its command killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInput {
    pub session: u64,
    pub seq: u64,
    pub acked: u64,
    pub credit: u32,
    pub action: ExecAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecAction {
    /// Only the credit (and the keep-alive).
    Credit,
    /// Bytes for the command's stdin.
    Stdin(BVec<u8, MAX_EXEC_CHUNK>),
    /// The end of stdin.
    Eof,
    /// The terminal changed size (with `tty`).
    Resize { rows: u16, cols: u16 },
    /// The requester went away: kill the command.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecStream {
    Stdout,
    Stderr,
}

/// One piece of an exec session's output, in `seq` order from 0. `data` may be empty: the
/// chunk then only acknowledges stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub session: u64,
    pub seq: u64,
    pub stream: ExecStream,
    pub data: BVec<u8, MAX_EXEC_CHUNK>,
    /// How many [`ExecAction::Stdin`] and [`ExecAction::Eof`] inputs the agent has written
    /// to the command: the coordinator sends at most [`MAX_EXEC_CREDIT`] of them beyond it
    /// (credit, resize and cancel are never held back, so output cannot wait on input).
    pub stdin_acked: u64,
}

/// The end of an exec session, after its last output (`seq` is one past it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    pub session: u64,
    pub seq: u64,
    /// The command's exit status (128 + n when killed by signal n); `None` with `error`.
    pub code: Option<i32>,
    /// Why the command could not run or was ended (no such container, too many sessions,
    /// requester gone).
    pub error: Option<BString<256>>,
}
