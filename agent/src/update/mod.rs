//! Agent updates on the device (issue 13; docs/updates.md, "On the device").
//!
//! - `check.rs`: the checks of an order before anything is downloaded (pure);
//! - `download.rs`: the range-resumable download, hashed while written;
//! - `layout.rs`: where binaries live (`<data-dir>/agent/`), staging, `current`/`previous`;
//! - `state.rs`: the update state file shared by the old agent, the launcher and the new one;
//! - `task.rs`: the agent's update task (order -> staged -> switched; probation -> commit);
//! - `probation.rs`: the commit rule (pure);
//! - `launcher.rs`: `baton-agent launch`, which picks the binary, counts failures and rolls
//!   back without depending on the new binary;
//! - `fault.rs`: TEST ONLY faults for the e2e tests.
//!
//! Architecture invariant: nothing here stops or touches a pod. An update ends the agent
//! process only; the next agent (new or old) adopts the running pods.

pub mod check;
pub mod download;
pub mod fault;
pub mod launcher;
pub mod layout;
pub mod probation;
pub mod state;
pub mod task;

#[cfg(test)]
mod tests;

pub use probation::Health;
pub use task::{spawn, Handle, UpdateConfig, UpdateEvent};
