//! `baton exec`'s session messages (v5): modelled on the log session's, with stdin and a
//! terminal added. See docs/protocol.md for the flow control.

use serde::{Deserialize, Serialize};

use crate::{BString, BVec};

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
