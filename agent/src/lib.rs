//! Baton's agent library. `main.rs` only parses flags and calls [`node::run`].
//!
//! Module map: `node` owns all state and is driven by events; `reconcile` decides (pure);
//! `pod` executes decisions in workers; `runtime`, `image` and `network` are the effects
//! behind small interfaces; `bus` is the MQTT bridge; `state` persists desired state; `adopt` takes
//! over running containers after an agent restart.

pub mod adopt;
pub mod bus;
pub mod identity;
pub mod image;
pub mod mqtt_tls;
pub mod network;
pub mod node;
pub mod pod;
pub mod probe;
pub mod reconcile;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod volumes;
