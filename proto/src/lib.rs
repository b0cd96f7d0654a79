//! The wire contract between Baton's coordinator and its agents.
//!
//! Architecture invariant: this crate is the only place that defines wire types and MQTT
//! topic names. It has no async runtime and no MQTT client, so it builds for any target
//! the agent runs on, and both sides link the very same definitions.
//!
//! [`enroll`] is the one part that is not MQTT: the HTTP routes and JSON bodies by which
//! a device gets and renews its identity. The rules below are postcard's; those bodies
//! keep their JSON field names instead.
//!
//! Compatibility rules (postcard does not describe itself):
//! - every message travels in an [`Envelope`] whose first field is [`PROTO_VERSION`];
//! - enum variants are only ever added at the end, struct fields are never reordered,
//!   added or removed without bumping [`PROTO_VERSION`], and a type whose fields changed
//!   keeps its older shape for older peers ([`wire`]);
//! - `tests/golden.rs` pins the exact bytes of representative messages.

mod bounded;
pub mod broker;
pub mod enroll;
mod envelope;
mod messages;
pub mod release;
pub mod seal;
mod sessions;
pub mod sign;
pub mod topics;
pub mod wire;

pub use bounded::{BString, BVec};
pub use envelope::{Envelope, Sender, SIGNING_CONTEXT};
pub use messages::*;
pub use sessions::*;

/// The envelope format version. Bump it for any change in the encoding of any message.
/// v5 added [`Body::AgentUpdate`], [`Body::UpdateReport`], [`PodSpec::priority`] and
/// [`DesiredState::term`]; the coordinator writes [`Body::Desired`] without them for a v4
/// agent ([`wire`]), and every other message encodes as in v4.
pub const PROTO_VERSION: u16 = 5;

/// The oldest version this build still reads and writes, Kubernetes' skew policy for the
/// kubelet: the coordinator serves agents one minor release older (v4 is Baton 0.1).
pub const MIN_PROTO_VERSION: u16 = 4;

/// The largest encoded envelope either side accepts. Big enough for a node running
/// [`MAX_PODS_PER_NODE`] ordinary pods; small enough for a Pi Zero to decode safely.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The most pods one node is ever assigned (kubelet's default `maxPods`).
pub const MAX_PODS_PER_NODE: usize = 110;

/// The most secrets one node's desired state carries.
pub const MAX_SECRETS_PER_NODE: usize = 64;

/// The largest sealed secret (and secret value). k8s allows 1 MiB; a node's whole desired
/// state must fit in [`MAX_MESSAGE_BYTES`].
pub const MAX_SEALED_BYTES: usize = 64 * 1024;

/// The most keys a ConfigMap sent to a node has (and items a `configMap` volume lists).
pub const MAX_CONFIG_MAP_KEYS: usize = 1024;

/// The largest ConfigMap value on the wire: Kubernetes' 1 MiB for the whole object.
pub const MAX_CONFIG_MAP_WIRE_BYTES: usize = 1024 * 1024;

/// The most bytes of a ConfigMap one [`ConfigMapPart`] carries: an envelope with a part
/// stays well within [`MAX_MESSAGE_BYTES`] (the broker's packet limit follows that), so a
/// 1 MiB ConfigMap travels as 6 parts instead of raising the limit for every message.
pub const CONFIG_MAP_PART_BYTES: usize = 192 * 1024;

/// The most containers in one pod.
pub const MAX_CONTAINERS_PER_POD: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported protocol version {got} (this build speaks {MIN_PROTO_VERSION} to {PROTO_VERSION})")]
    UnsupportedVersion { got: u16 },
    #[error("a protocol v{version} envelope cannot carry this message (added in v{needs})")]
    BodyTooNew { version: u16, needs: u16 },
    #[error("malformed message: {0}")]
    Decode(postcard::Error),
    #[error("{trailing} unexpected bytes after the message")]
    TrailingBytes { trailing: usize },
    #[error("failed to encode message: {0}")]
    Encode(postcard::Error),
    #[error("string of {got} bytes exceeds the limit of {max}")]
    TooLong { max: usize, got: usize },
    #[error("{got} elements exceed the limit of {max}")]
    TooMany { max: usize, got: usize },
    #[error("invalid node name {0:?}: use 1-63 characters from [A-Za-z0-9._-]")]
    InvalidNodeName(String),
    #[error("invalid broker address {url:?}: {reason}")]
    BrokerUrl { url: String, reason: String },
}
