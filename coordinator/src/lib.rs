//! Baton's coordinator library. `main.rs` only parses flags.
//!
//! The folders are its rooms, top to bottom (see docs/architecture.md):
//! `cli` and `server` (the two ways the `baton` binary runs) → `edge` (HTTP, MQTT, TLS,
//! the embedded broker) and `dashboard` (the web page it serves) → `registry` →
//! `security` → `core` (the state machine) → `decide` (pure deciders) → `contract` and
//! `model` (the API's types) → `store`.

pub mod cli;
pub mod contract;
pub mod core;
pub mod dashboard;
pub mod decide;
pub mod edge;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod security;
pub mod server;
pub mod store;
