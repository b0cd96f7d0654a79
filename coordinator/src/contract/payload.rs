//! How a route's bodies travel. Nearly every body is JSON; [`NoBody`], [`Manifest`],
//! [`Archive`] and [`Pem`] are the exceptions, and they are named types so that a route's
//! signature says which it is.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A body that travels as JSON. Every request and reply body of the contract is one,
/// except the four types below.
pub trait JsonBody: Serialize + DeserializeOwned {}

/// What a client puts on the wire for a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// No body at all.
    Empty,
    /// `application/json`.
    Json(Vec<u8>),
    /// Text sent as it is (a YAML manifest), with no content type.
    Text(String),
}

/// A request body a client can send in one piece. [`Archive`] is not one: it is streamed.
pub trait RequestBody {
    fn payload(&self) -> Result<Payload, serde_json::Error>;
}

/// A reply body a client can read from the bytes of a successful answer.
pub trait ResponseBody: Sized {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error>;
}

impl<T: JsonBody> RequestBody for T {
    fn payload(&self) -> Result<Payload, serde_json::Error> {
        serde_json::to_vec(self).map(Payload::Json)
    }
}

impl<T: JsonBody> ResponseBody for T {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The request of a route that takes no body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoBody;

impl RequestBody for NoBody {
    fn payload(&self) -> Result<Payload, serde_json::Error> {
        Ok(Payload::Empty)
    }
}

/// `apply`'s request: the manifest's YAML text, one or more documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest(pub String);

impl RequestBody for Manifest {
    fn payload(&self) -> Result<Payload, serde_json::Error> {
        Ok(Payload::Text(self.0.clone()))
    }
}

/// The image import's request: a tar of an OCI image layout, streamed rather than held
/// in memory (see `crate::cli::upload`), so it is not a [`RequestBody`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Archive;

/// A PEM document (the enrollment CA), answered as `application/x-pem-file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pem(pub String);

impl ResponseBody for Pem {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Pem(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// Marks contract types as JSON bodies.
macro_rules! json_bodies {
    ($($t:ty),* $(,)?) => {
        $(impl $crate::contract::payload::JsonBody for $t {})*
    };
}
pub(crate) use json_bodies;

/// The largest request body the API reads (a manifest); kube-apiserver's 3 MiB, so that a
/// ConfigMap at its 1 MiB limit still fits. The CLI checks it before sending.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// A container's log (`PodLogs`): bytes as the container wrote them, streamed. A failure
/// after the answer started (the node went away) ends the stream with a last line
/// starting [`LOG_ERROR_PREFIX`], since the status was already sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogText(pub Vec<u8>);

/// What `PodExec` answers: `101 Switching Protocols`, then [`super::exec`]'s frames on
/// the upgraded connection (never read as a body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecFrames;

impl ResponseBody for ExecFrames {
    fn parse(_: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(ExecFrames)
    }
}

/// The coordinator's Prometheus metrics (`Metrics`), in the text exposition format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsText(pub String);

impl ResponseBody for MetricsText {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(MetricsText(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// How a log stream that failed midway says why (see [`LogText`]).
pub const LOG_ERROR_PREFIX: &str = "\nbaton: error: ";

impl ResponseBody for LogText {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(LogText(bytes.to_vec()))
    }
}
