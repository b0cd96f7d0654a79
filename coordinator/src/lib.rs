//! Baton's coordinator library. `main.rs` only parses flags.

pub mod api;
pub mod controller;
pub mod manifest;
pub mod quantity;
pub mod scheduler;
pub mod store;
