//! The HTTP API contract shared by the server's handlers and its clients (the CLI, the
//! agent's enrollment, later the dashboard): every route ([`routes`]), the request and
//! reply bodies, the resource kinds, and the CLI's config file.
//!
//! Nothing here knows HTTP libraries: the server (`crate::edge::http`) routes
//! [`routes::Route::PATH`] with axum, the CLI calls [`routes::Route::url`] with reqwest.

pub mod agent_updates;
pub mod body;
pub mod client_config;
pub mod exec;
pub mod health;
pub mod images;
pub mod nodes;
pub mod payload;
pub mod releases;
pub mod resource;
pub mod routes;
pub mod since;
pub mod tokens;
pub mod usage;
pub mod watch;

pub use payload::{JsonBody, NoBody, Payload, RequestBody, ResponseBody};
pub use resource::{Applied, ApplyAction, ResourceKind};
pub use routes::Route;
