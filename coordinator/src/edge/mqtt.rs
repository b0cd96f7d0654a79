//! What the MQTT bridge ([`crate::edge::bus`]), the embedded broker
//! ([`crate::edge::broker`]) and its TLS front ([`crate::edge::mqtt_front`]) agree on: the
//! login of the broker's loopback listener and the connection cap.
//!
//! A leaf: the broker starts the front, and both hand the login to the bridge, so keeping
//! these here lets each of the three import them without importing the others.

/// Most concurrent MQTT connections (agents plus the coordinator itself).
pub const MAX_CONNECTIONS: usize = 10_000;

/// An MQTT username and password; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for MqttLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}
