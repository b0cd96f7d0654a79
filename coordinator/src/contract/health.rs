//! `GET /healthz`: whether the coordinator can reach its nodes.

use serde::{Deserialize, Serialize};

use super::payload::json_bodies;

/// The health answer: 200 with `ok`, or 503 with `unavailable` and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Why the coordinator cannot reach its nodes (`mqtt: ...`), when it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub mqtt: MqttStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Unavailable,
}

/// The broker link's state and counters, as the bus keeps them
/// (`crate::edge::bus::BusStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttStatus {
    /// Connected and subscribed to the nodes' topics.
    pub connected: bool,
    pub received: u64,
    pub dropped: u64,
    pub published: u64,
    /// Why the link is not usable now (a failed connect, a denied subscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A configuration that makes the broker drop everything silently, until a node's
    /// message disproves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
}

json_bodies!(Health);
