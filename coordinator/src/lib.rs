//! Baton's coordinator library. `main.rs` only parses flags.

pub mod api;
pub mod auth;
pub mod broker;
pub mod broker_config;
pub mod bus;
pub mod cli;
pub mod client_config;
pub mod controller;
pub mod core;
pub mod enroll;
pub mod fsutil;
pub mod http;
pub mod manifest;
pub mod mqtt_front;
pub mod pki;
pub mod policy;
pub mod quantity;
pub mod registry;
pub mod rollout;
pub mod scheduler;
pub mod secrets;
pub mod security;
pub mod server;
pub mod store;
pub mod tls;
pub mod wire;
