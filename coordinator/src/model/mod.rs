//! The API's object model: the Kubernetes-shaped types, the YAML manifest parser that fills them, resource quantities, and the conversion to the wire contract (`baton-proto`).

pub mod api;
pub mod manifest;
pub mod quantity;
pub mod release;
pub mod secrets;
pub mod wire;
