//! Baton's agent library. `main.rs` only parses flags, starts the bus and runs a
//! [`node::Node`] over it.
//!
//! Module map: `node` owns all state and is driven by events; `reconcile` decides (pure);
//! `pod` executes decisions in workers; `runtime`, `image` and `network` are the effects
//! behind small interfaces; `bus` is the MQTT bridge (`link_profile` sets how much it says,
//! `term` refuses a deposed leader's messages); `state` persists desired state (`reserve`
//! keeps room for it on a full disk); `adopt` takes
//! over running containers after an agent restart.

pub mod adopt;
pub mod build_info;
pub mod bus;
pub mod config_maps;
pub mod crash;
pub mod cron;
pub mod datadir;
pub mod dns;
pub mod durable;
pub mod exec;
pub mod identity;
pub mod image;
pub mod install;
pub mod link_profile;
pub mod logs;
pub mod mqtt_tls;
pub mod network;
pub mod node;
pub mod pod;
pub mod pressure;
pub mod probe;
pub mod reconcile;
pub mod reserve;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod term;
pub mod update;
pub mod usage;
pub mod volumes;
