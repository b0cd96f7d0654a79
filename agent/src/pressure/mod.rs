//! Node pressure, following kubelet's node-pressure eviction: thresholds in kubelet's flag
//! shape (`thresholds.rs`, pure), the signals measured on the node (`measure.rs`), and which
//! conditions they put under pressure (`conditions.rs`, pure). The node loop measures on
//! every heartbeat and reports the conditions in it; the coordinator turns them into node
//! conditions, events and `NoSchedule` taints (docs/operations.md, "Node pressure").

pub mod conditions;
pub mod debounce;
pub mod evict;
pub mod measure;
pub mod thresholds;

pub use conditions::{pressures, Observed, Pressure};
pub use thresholds::{Thresholds, DEFAULT_EVICTION_HARD};

#[derive(Debug, thiserror::Error)]
pub enum PressureError {
    #[error("invalid eviction threshold {item:?}: {why}")]
    Threshold { item: String, why: String },
}
