//! Baton's agent library. `main.rs` only parses flags and calls [`node::run`].

pub mod image;
pub mod network;
pub mod runtime;
