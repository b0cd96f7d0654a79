//! The HTTP API contract shared by the server's handlers and the CLI: resource kinds,
//! request and reply bodies, and the client's config file.

pub mod body;
pub mod client_config;
pub mod resource;

pub use resource::{Applied, ApplyAction, ResourceKind};
