//! Every route of the HTTP API, defined once: its method, its path template, and the
//! types of its request and reply bodies.
//!
//! A route is a struct of its parameters. The server routes [`Route::PATH`] (axum's
//! syntax: `{name}` is one segment, `{*name}` the rest of the path) with
//! [`Route::METHOD`]; a client builds the same path from the struct with
//! [`Route::path`], which fills that template, so neither side writes a URL by hand.
//! Parameters that the template does not name go into the query string. Names are
//! percent-encoded.
//!
//! [`ALL`] lists every route; `edge::http`'s tests call each one through the real router
//! and read its answer as the route's [`Route::Response`], so a route that the server
//! and its clients see differently fails a test.
//!
//! The structs also deserialize from the server's path and query parameters (axum's
//! `Path` and `Query`), so a handler reads its parameters by the contract's names. A
//! `kind` is the exception: the server parses it with [`ResourceKind::parse`], which
//! takes kubectl's spellings, where serde takes only the lowercase singular.
//!
//! The device's three routes (enrollment, its CA, certificate rotation) take their paths
//! from [`baton_proto::enroll`], which the agent builds its requests from.
//!
//! Every route but the four marked "no token" needs `Authorization: Bearer TOKEN`;
//! "admin" ones need an admin token (`crate::security::auth::authorize`).

use baton_proto::enroll;
use serde::Deserialize;

use super::agent_updates::AgentUpdate;
use super::body::{
    ApiObject, ApplyResults, Deleted, Described, List, Revocation, RolloutProgress, ScaleRequest,
    UndoRequest, UndoResult,
};
use super::health::Health;
use super::images::{ImageDeleted, ImageSummary};
use super::nodes::{
    EnrollRequest, EnrollResponse, IdentitySummary, NodeSpecChange, RejectionReport, RotateRequest,
};
use super::payload::{Archive, ExecFrames, LogText, Manifest, MetricsText, NoBody, Pem};
use super::releases::{Binary, ReleaseDeleted, ReleaseSummary};
use super::resource::ResourceKind;
use super::tokens::{
    CreatedJoinToken, CreatedToken, JoinTokenInfo, JoinTokenRequest, TokenInfo, TokenRequest,
};
use super::usage::{NodeUsageView, PodUsageView};
use super::watch::WatchLines;
use crate::model::api;

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One route of the API. Implemented only by the structs of the `routes!` list below.
pub trait Route {
    /// The struct's name, for messages.
    const NAME: &'static str;
    const METHOD: Method;
    /// The path template the server routes, in axum's syntax.
    const PATH: &'static str;
    /// The request body: a JSON type, or [`NoBody`], [`Manifest`] or [`Archive`].
    type Request;
    /// The body of a successful answer: a JSON type, or [`Pem`]. Errors are
    /// [`super::body::ErrorBody`].
    type Response;

    /// The path and query of this call: [`Route::PATH`] with the parameters filled in.
    fn path(&self) -> String;

    /// [`Route::path`] on the server at `base` (`https://host:port`).
    fn url(&self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.path())
    }
}

/// A route without its types, as [`ALL`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteInfo {
    pub name: &'static str,
    pub method: Method,
    pub path: &'static str,
}

/// Defines each route's struct and [`Route`] impl, and [`ALL`], from one list.
macro_rules! routes {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident: $ty:ty),* $(,)? }
            $method:ident $path:expr, $req:ty => $resp:ty;
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
            pub struct $name {
                $(pub $field: $ty,)*
            }

            impl Route for $name {
                const NAME: &'static str = stringify!($name);
                const METHOD: Method = Method::$method;
                const PATH: &'static str = $path;
                type Request = $req;
                type Response = $resp;

                fn path(&self) -> String {
                    fill(Self::PATH, &[$((stringify!($field), Param::value(&self.$field))),*])
                }
            }
        )*

        /// Every route of the API. (The read-only registry's `/v2/...` is not here: that
        /// is OCI's Distribution API, served by `crate::registry`.)
        pub const ALL: &[RouteInfo] = &[$(
            RouteInfo { name: stringify!($name), method: Method::$method, path: $path },
        )*];
    };
}

routes! {
    /// 200 while the broker link works, 503 with the reason while it is known to be
    /// broken. No token.
    Healthz {} Get "/healthz", NoBody => Health;

    /// Creates or updates every object of a YAML manifest. Admin. `namespace` is where
    /// objects naming none go (`default` without it); an object naming another is refused.
    Apply { namespace: Option<String> } Post "/api/v1/apply", Manifest => ApplyResults;
    /// Every object of a kind.
    ListObjects { kind: ResourceKind } Get "/api/v1/{kind}", NoBody => List<ApiObject>;
    GetObject { kind: ResourceKind, name: String }
        Get "/api/v1/{kind}/{name}", NoBody => ApiObject;
    /// Admin.
    DeleteObject { kind: ResourceKind, name: String }
        Delete "/api/v1/{kind}/{name}", NoBody => Deleted;
    /// The object and the events about it.
    Describe { kind: ResourceKind, name: String }
        Get "/api/v1/describe/{kind}/{name}", NoBody => Described;
    /// Events, oldest first; with `object` (`pod/NAME`) only that object's.
    Events { object: Option<String> } Get "/api/v1/events", NoBody => List<api::Event>;
    /// The namespaced twins of the object routes above, Kubernetes' shape: a namespaced
    /// kind's objects in one namespace. The routes without a namespace mean `default`
    /// for one object and every namespace for a list (`ListObjects`), as in Kubernetes.
    ListNamespaced { namespace: String, kind: ResourceKind }
        Get "/api/v1/namespaces/{namespace}/{kind}", NoBody => List<ApiObject>;
    GetNamespaced { namespace: String, kind: ResourceKind, name: String }
        Get "/api/v1/namespaces/{namespace}/{kind}/{name}", NoBody => ApiObject;
    /// Admin.
    DeleteNamespaced { namespace: String, kind: ResourceKind, name: String }
        Delete "/api/v1/namespaces/{namespace}/{kind}/{name}", NoBody => Deleted;
    DescribeNamespaced { namespace: String, kind: ResourceKind, name: String }
        Get "/api/v1/namespaces/{namespace}/describe/{kind}/{name}", NoBody => Described;
    /// The namespace's events (`object` as in `Events`).
    EventsNamespaced { namespace: String, object: Option<String> }
        Get "/api/v1/namespaces/{namespace}/events", NoBody => List<api::Event>;
    /// `baton top nodes`: each node's last usage report (nodes that sent none are absent).
    TopNodes {} Get "/api/v1/top/nodes", NoBody => List<NodeUsageView>;
    /// `baton top pods`: each running pod's usage, from its node's last report.
    TopPods {} Get "/api/v1/top/pods", NoBody => List<PodUsageView>;
    /// Changes to objects of `kind` (or `events`) as they commit, streamed as JSON lines
    /// (`watch::WatchEvent`). Without `resource_version`: every current object first, as
    /// `ADDED`; with one: the changes after it, or 410 when they are no longer known.
    Watch { kind: String, resource_version: Option<String> }
        Get "/api/v1/watch/{kind}", NoBody => WatchLines;
    /// `Watch` limited to a namespace: a namespaced kind's changes there, or the events
    /// about its objects; what a token limited to namespaces may open, and what the
    /// dashboard's namespace view follows.
    WatchNamespaced { namespace: String, kind: String, resource_version: Option<String> }
        Get "/api/v1/namespaces/{namespace}/watch/{kind}", NoBody => WatchLines;
    /// `baton logs`: the container's log, streamed (chunked) as it comes from the node.
    /// `follow` and `previous` are `true` when set; `tail` a line count.
    PodLogs {
        name: String,
        container: Option<String>,
        follow: Option<String>,
        previous: Option<String>,
        tail: Option<String>,
        since: Option<String>,
        since_time: Option<String>,
        timestamps: Option<String>,
    } Get "/api/v1/pods/{name}/log", NoBody => LogText;
    /// `baton exec`: runs `command` (a JSON array of strings) in the pod's container
    /// (its first unless `container`). The connection is upgraded to
    /// [`super::exec::UPGRADE`] and carries its frames both ways; `stdin` and `tty` are
    /// `true` when set, `rows` and `cols` the terminal's size. Every exec is recorded as an
    /// event. Admin.
    PodExec {
        name: String,
        container: Option<String>,
        command: String,
        stdin: Option<String>,
        tty: Option<String>,
        rows: Option<String>,
        cols: Option<String>,
    } Post "/api/v1/pods/{name}/exec", NoBody => ExecFrames;
    /// `PodLogs` in a namespace.
    PodLogsNamespaced {
        namespace: String,
        name: String,
        container: Option<String>,
        follow: Option<String>,
        previous: Option<String>,
        tail: Option<String>,
        since: Option<String>,
        since_time: Option<String>,
        timestamps: Option<String>,
    } Get "/api/v1/namespaces/{namespace}/pods/{name}/log", NoBody => LogText;
    /// `PodExec` in a namespace. Admin.
    PodExecNamespaced {
        namespace: String,
        name: String,
        container: Option<String>,
        command: String,
        stdin: Option<String>,
        tty: Option<String>,
        rows: Option<String>,
        cols: Option<String>,
    } Post "/api/v1/namespaces/{namespace}/pods/{name}/exec", NoBody => ExecFrames;
    /// Admin.
    ScaleNamespaced { namespace: String, name: String }
        Post "/api/v1/namespaces/{namespace}/deployments/{name}/scale", ScaleRequest => ApiObject;
    RolloutStatusNamespaced { namespace: String, name: String }
        Get "/api/v1/namespaces/{namespace}/deployments/{name}/rollout/status", NoBody => RolloutProgress;
    RolloutHistoryNamespaced { namespace: String, name: String }
        Get "/api/v1/namespaces/{namespace}/deployments/{name}/rollout/history", NoBody => List<api::Revision>;
    /// Admin.
    RolloutUndoNamespaced { namespace: String, name: String }
        Post "/api/v1/namespaces/{namespace}/deployments/{name}/rollout/undo", UndoRequest => UndoResult;
    DaemonSetRolloutStatusNamespaced { namespace: String, name: String }
        Get "/api/v1/namespaces/{namespace}/daemonsets/{name}/rollout/status", NoBody => RolloutProgress;
    DaemonSetRolloutHistoryNamespaced { namespace: String, name: String }
        Get "/api/v1/namespaces/{namespace}/daemonsets/{name}/rollout/history", NoBody => List<api::Revision>;
    /// Admin.
    DaemonSetRolloutUndoNamespaced { namespace: String, name: String }
        Post "/api/v1/namespaces/{namespace}/daemonsets/{name}/rollout/undo", UndoRequest => UndoResult;
    /// Sets a Deployment's replicas; answers the Deployment. Admin.
    Scale { name: String }
        Post "/api/v1/deployments/{name}/scale", ScaleRequest => ApiObject;
    RolloutStatus { name: String }
        Get "/api/v1/deployments/{name}/rollout/status", NoBody => RolloutProgress;
    /// A Deployment's revisions, oldest first.
    RolloutHistory { name: String }
        Get "/api/v1/deployments/{name}/rollout/history", NoBody => List<api::Revision>;
    /// Admin.
    RolloutUndo { name: String }
        Post "/api/v1/deployments/{name}/rollout/undo", UndoRequest => UndoResult;
    /// A DaemonSet's rollout, counted in nodes.
    DaemonSetRolloutStatus { name: String }
        Get "/api/v1/daemonsets/{name}/rollout/status", NoBody => RolloutProgress;
    /// A DaemonSet's revisions, oldest first.
    DaemonSetRolloutHistory { name: String }
        Get "/api/v1/daemonsets/{name}/rollout/history", NoBody => List<api::Revision>;
    /// Admin.
    DaemonSetRolloutUndo { name: String }
        Post "/api/v1/daemonsets/{name}/rollout/undo", UndoRequest => UndoResult;

    /// An agent update rollout with each node's progress: `name`'s, or without one the
    /// open rollout (else the newest).
    AgentRolloutStatus { name: Option<String> }
        Get "/api/v1/agent/rollout/status", NoBody => AgentUpdate;
    /// Stops ordering new nodes; orders in flight go on. Admin.
    AgentRolloutPause { name: String }
        Post "/api/v1/agent/rollout/{name}/pause", NoBody => AgentUpdate;
    /// Goes on after a pause, and approves a finished canary. Admin.
    AgentRolloutResume { name: String }
        Post "/api/v1/agent/rollout/{name}/resume", NoBody => AgentUpdate;
    /// Ends the rollout; orders not acted on are withdrawn. Admin.
    AgentRolloutAbort { name: String }
        Post "/api/v1/agent/rollout/{name}/abort", NoBody => AgentUpdate;

    /// The calling token, without its secret: how the dashboard learns its role and
    /// namespaces. Any token, a namespace-limited one too.
    WhoAmI {} Get "/api/v1/whoami", NoBody => TokenInfo;
    /// API tokens, without their secrets. Admin.
    ListTokens {} Get "/api/v1/tokens", NoBody => List<TokenInfo>;
    /// Admin.
    CreateToken {} Post "/api/v1/tokens", TokenRequest => CreatedToken;
    /// Admin.
    DeleteToken { name: String } Delete "/api/v1/tokens/{name}", NoBody => Deleted;
    /// Admin.
    ListJoinTokens {} Get "/api/v1/tokens/join", NoBody => List<JoinTokenInfo>;
    /// Admin.
    CreateJoinToken {} Post "/api/v1/tokens/join", JoinTokenRequest => CreatedJoinToken;
    /// Admin.
    DeleteJoinToken { id: String } Delete "/api/v1/tokens/join/{id}", NoBody => Deleted;

    /// The CA certificate, PEM; the device pins it by the hash its join token carries.
    /// No token.
    EnrollCa {} Get enroll::CA_PATH, NoBody => Pem;
    /// Enrolls a device with a join token. No token (the join token authenticates it).
    Enroll {} Post enroll::ENROLL_PATH, EnrollRequest => EnrollResponse;
    /// A new certificate for a new key, signed by the node's current key. No token.
    RotateCertificate { name: String }
        Post enroll::ROTATE_PATH, RotateRequest => EnrollResponse;
    /// Revokes a node's identity. Admin.
    Revoke { name: String } Post "/api/v1/nodes/{name}/revoke", NoBody => Revocation;
    /// Cordons, uncordons or taints a node; answers the node. Admin.
    UpdateNode { name: String }
        Post "/api/v1/nodes/{name}/spec", NodeSpecChange => ApiObject;
    /// Asks the node to rotate its key; answers its identity before. Admin.
    RotateKey { name: String }
        Post "/api/v1/nodes/{name}/rotate-key", NoBody => IdentitySummary;
    Identity { name: String } Get "/api/v1/nodes/{name}/identity", NoBody => IdentitySummary;
    Rejections {} Get "/api/v1/security/rejections", NoBody => RejectionReport;
    /// Prometheus metrics (text exposition format), where scrapers look for them. Any
    /// token: a read-only one is what a Prometheus server should hold.
    Metrics {} Get "/metrics", NoBody => MetricsText;

    ListImages {} Get "/api/v1/images", NoBody => List<ImageSummary>;
    /// Imports an OCI archive; `name` is `REPOSITORY[:TAG]` for images the archive does
    /// not name. Answers the images added or replaced. Admin.
    ImportImages { name: Option<String> }
        Post "/api/v1/images/import", Archive => List<ImageSummary>;
    /// `name` is `REPOSITORY:TAG`. Admin.
    DeleteImage { name: String } Delete "/api/v1/images/{*name}", NoBody => ImageDeleted;

    /// Imported agent releases, by version then target.
    ListReleases {} Get "/api/v1/releases", NoBody => List<ReleaseSummary>;
    /// Imports an agent binary (the body, streamed) with its signed metadata (the
    /// parameters: a `SignedRelease`'s fields); refused unless the configured release key
    /// signed it and the bytes match. Idempotent. Admin.
    ImportRelease {
        version: String,
        target: String,
        protocol: String,
        size: String,
        sha256: String,
        signature: String,
    } Post "/api/v1/releases/import", Archive => ReleaseSummary;
    /// `digest` is `sha256:<hex>`. Refused while a rollout names the release. Admin.
    DeleteRelease { digest: String }
        Delete "/api/v1/releases/{digest}", NoBody => ReleaseDeleted;
    /// A release's bytes (`baton_proto::release::download_path`); `Range: bytes=N-`
    /// answers 206 from byte N, so a node resumes a download. Any token.
    ReleaseBinary { digest: String }
        Get "/api/v1/releases/{digest}/binary", NoBody => Binary;
}

/// Where every namespaced route starts, the namespace following: how a token limited to
/// namespaces is checked (`crate::security::auth::authorize_scoped`).
pub const NAMESPACED_PREFIX: &str = "/api/v1/namespaces/";

/// A parameter's value in a path or query; `None` leaves it out of the query.
trait Param {
    fn value(&self) -> Option<&str>;
}

impl Param for String {
    fn value(&self) -> Option<&str> {
        Some(self)
    }
}

impl Param for Option<String> {
    fn value(&self) -> Option<&str> {
        self.as_deref()
    }
}

impl Param for ResourceKind {
    fn value(&self) -> Option<&str> {
        Some(self.plural())
    }
}

/// `template` with each `{key}` (one segment) or `{*key}` (any number of segments)
/// replaced by its parameter, percent-encoded; the parameters it does not name are
/// appended as a query. A key without a parameter stays as it is, so the server will
/// not route it.
fn fill(template: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut used = vec![false; params.len()];
    let mut rest = template;
    while let Some((open, close)) = rest
        .find('{')
        .and_then(|o| rest[o..].find('}').map(|c| (o, o + c)))
    {
        out.push_str(&rest[..open]);
        let key = &rest[open + 1..close];
        let (wildcard, key) = match key.strip_prefix('*') {
            Some(k) => (true, k),
            None => (false, key),
        };
        match params.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                used[i] = true;
                let value = params[i].1.unwrap_or_default();
                // A wildcard keeps its slashes: they separate an image name's parts.
                encode(&mut out, value, |b| b == b':' || (wildcard && b == b'/'));
            }
            None => out.push_str(&rest[open..=close]),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    let mut sep = '?';
    for ((key, value), used) in params.iter().zip(used) {
        if let (false, Some(value)) = (used, value) {
            out.push(sep);
            out.push_str(key);
            out.push('=');
            encode(&mut out, value, |_| false);
            sep = '&';
        }
    }
    out
}

/// Appends `s` with every byte but RFC 3986's unreserved ones and those `keep` accepts
/// percent-encoded.
fn encode(out: &mut String, s: &str, keep: impl Fn(u8) -> bool) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_their_templates_and_encode_names() {
        let get = GetObject {
            kind: ResourceKind::Deployment,
            name: "web".into(),
        };
        assert_eq!(get.path(), "/api/v1/deployments/web");
        assert_eq!(
            get.url("https://h:7474/"),
            "https://h:7474/api/v1/deployments/web"
        );
        assert_eq!(
            Scale {
                name: "a b/c".into()
            }
            .path(),
            "/api/v1/deployments/a%20b%2Fc/scale"
        );
        assert_eq!(
            DeleteImage {
                name: "baton/http-echo:1".into()
            }
            .path(),
            "/api/v1/images/baton/http-echo:1"
        );
        assert_eq!(Events { object: None }.path(), "/api/v1/events");
        assert_eq!(
            Events {
                object: Some("pod/web-1".into())
            }
            .path(),
            "/api/v1/events?object=pod%2Fweb-1"
        );
        assert_eq!(
            ImportImages {
                name: Some("baton/x:1".into())
            }
            .path(),
            "/api/v1/images/import?name=baton%2Fx%3A1"
        );
        assert_eq!(Healthz {}.path(), Healthz::PATH);
    }

    #[test]
    fn a_node_downloads_a_release_where_the_routes_serve_it() {
        let sha = [0xab; 32];
        assert_eq!(
            ReleaseBinary {
                digest: baton_proto::release::digest_string(&sha)
            }
            .path(),
            baton_proto::release::download_path(&sha)
        );
    }

    #[test]
    fn the_agent_fills_the_rotate_path_as_the_routes_do() {
        for name in ["pi-1", "a b/c", "x:y.z_~", "ü%?#"] {
            assert_eq!(
                RotateCertificate { name: name.into() }.path(),
                enroll::rotate_path(name),
                "{name}"
            );
        }
        assert_eq!(EnrollCa {}.path(), enroll::CA_PATH);
        assert_eq!(Enroll {}.path(), enroll::ENROLL_PATH);
    }

    #[test]
    fn every_route_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            assert!(seen.insert((r.method, r.path)), "{r:?} twice");
            // `/metrics` is where Prometheus scrapers look by default.
            assert!(
                r.path == "/healthz" || r.path == "/metrics" || r.path.starts_with("/api/v1/"),
                "{r:?}"
            );
            if r.name.ends_with("Namespaced") {
                assert!(
                    r.path
                        .starts_with(&format!("{NAMESPACED_PREFIX}{{namespace}}/")),
                    "{r:?}"
                );
            }
        }
    }
}
