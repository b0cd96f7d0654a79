//! Security: the coordinator's CA (pki), enrollment, the inbound gate every MQTT message passes, sealed secrets, and API tokens.

pub mod auth;
pub mod encoding;
pub mod enroll;
pub mod envelope;
pub mod gate;
pub mod pki;
pub mod secrets;
