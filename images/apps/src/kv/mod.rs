//! The key-value store: wire protocol, server (primary or replica) and client.

pub mod client;
pub mod proto;
pub mod server;
