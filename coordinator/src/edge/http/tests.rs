use super::*;
use crate::security::auth::Role;
use axum::routing::post;

#[test]
fn remote_needs_tls_unless_explicitly_insecure() {
    let lo = "127.0.0.1:7474".parse().unwrap();
    let any = "0.0.0.0:7474".parse().unwrap();
    assert!(check_listen(lo, false, false).is_ok());
    assert!(check_listen("[::1]:7474".parse().unwrap(), false, false).is_ok());
    let err = check_listen(any, false, false).unwrap_err();
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    assert!(err.to_string().contains("--insecure-allow-remote"), "{err}");
    assert!(check_listen(any, true, false).is_ok());
    assert!(check_listen(any, false, true).is_ok());
}

/// A device route's body that never finishes is cut off at BODY_READ_TIMEOUT (408)
/// rather than holding its connection; an oversized one is refused (413).
#[tokio::test(start_paused = true)]
async fn device_route_bodies_must_arrive_in_time() {
    use axum::body::Body;
    use tower::ServiceExt;

    let app = Router::new()
        .route(
            "/x",
            post(|b: axum::body::Bytes| async move { b.len().to_string() }),
        )
        .layer(axum::middleware::from_fn(middleware::read_body_in_time));
    let send = |body: Body| {
        let req = axum::http::Request::post("/x").body(body).unwrap();
        app.clone().oneshot(req)
    };
    let ok = send(Body::from("hello")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let started = tokio::time::Instant::now();
    let never = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let slow = send(Body::from_stream(never)).await.unwrap();
    assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), BODY_READ_TIMEOUT);
    let big = vec![b'x'; crate::security::enroll::MAX_REQUEST_BYTES + 1];
    let big = send(Body::from(big)).await.unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// Route x role -> status, through the real router and middleware. The core is
/// [`fake_core`], so allowed calls get 200 (or 400 for a bad body) and denied ones never
/// reach it.
#[tokio::test]
async fn status_per_route_and_role() {
    use axum::body::Body;
    use tower::ServiceExt;

    let tx = fake_core();
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemStore::default());
    let tokens = Arc::new(Tokens::load(store).unwrap());
    let admin = tokens.create("admin", Role::Admin).unwrap();
    let ro = tokens.create("viewer", Role::ReadOnly).unwrap();
    let a_ro = tokens
        .create_scoped("a-viewer", Role::ReadOnly, vec!["a".into()])
        .unwrap();
    let a_admin = tokens
        .create_scoped("a-admin", Role::Admin, vec!["a".into()])
        .unwrap();
    let app = router(tx, Arc::new(BusStats::default()), tokens.clone());

    let cases: &[(&str, &str, &str, Option<&str>, u16)] = &[
        ("GET", "/healthz", "", None, 200),
        ("GET", "/api/v1/pods", "", None, 401),
        ("GET", "/api/v1/pods", "", Some("wrong"), 401),
        ("GET", "/api/v1/pods", "", Some(&ro), 200),
        ("GET", "/api/v1/pods/x", "", Some(&ro), 200),
        ("GET", "/api/v1/events", "", Some(&ro), 200),
        ("POST", "/api/v1/apply", "", Some(&ro), 403),
        (
            "POST",
            "/api/v1/pods/x/exec?command=%5B%22sh%22%5D",
            "",
            Some(&ro),
            403,
        ),
        // The route is served only as a POST: a GET (which the read-only role may send)
        // finds nothing to run.
        (
            "GET",
            "/api/v1/pods/x/exec?command=%5B%22sh%22%5D",
            "",
            Some(&ro),
            405,
        ),
        ("DELETE", "/api/v1/pods/x", "", Some(&ro), 403),
        (
            "POST",
            "/api/v1/deployments/x/scale",
            r#"{"replicas":1}"#,
            Some(&ro),
            403,
        ),
        (
            "POST",
            "/api/v1/deployments/x/rollout/undo",
            "",
            Some(&ro),
            403,
        ),
        (
            "POST",
            "/api/v1/daemonsets/x/rollout/undo",
            "",
            Some(&ro),
            403,
        ),
        (
            "GET",
            "/api/v1/daemonsets/x/rollout/status",
            "",
            Some(&ro),
            200,
        ),
        ("GET", "/api/v1/tokens", "", Some(&ro), 403),
        (
            "POST",
            "/api/v1/tokens",
            r#"{"name":"x","role":"admin"}"#,
            Some(&ro),
            403,
        ),
        ("GET", "/api/v1/pods", "", Some(&admin), 200),
        ("POST", "/api/v1/apply", "", Some(&admin), 200),
        ("DELETE", "/api/v1/pods/x", "", Some(&admin), 200),
        (
            "POST",
            "/api/v1/deployments/x/scale",
            r#"{"replicas":1}"#,
            Some(&admin),
            200,
        ),
        ("GET", "/api/v1/tokens", "", Some(&admin), 200),
        (
            "POST",
            "/api/v1/tokens",
            r#"{"name":"x","role":"bogus"}"#,
            Some(&admin),
            400,
        ),
        (
            "POST",
            "/api/v1/tokens",
            r#"{"name":"x","role":"read-only"}"#,
            Some(&admin),
            200,
        ),
        (
            "POST",
            "/api/v1/tokens",
            r#"{"name":"x","role":"read-only"}"#,
            Some(&admin),
            409,
        ),
        ("DELETE", "/api/v1/tokens/x", "", Some(&admin), 200),
        ("DELETE", "/api/v1/tokens/x", "", Some(&admin), 404),
        // Tokens limited to namespace a.
        ("GET", "/api/v1/namespaces/a/pods", "", Some(&a_ro), 200),
        ("GET", "/api/v1/namespaces/a/pods/x", "", Some(&a_ro), 200),
        ("GET", "/api/v1/namespaces/a/events", "", Some(&a_ro), 200),
        ("GET", "/api/v1/namespaces/a", "", Some(&a_ro), 200),
        ("GET", "/api/v1/namespaces/b/pods", "", Some(&a_ro), 403),
        ("GET", "/api/v1/pods", "", Some(&a_ro), 403),
        ("GET", "/api/v1/nodes", "", Some(&a_ro), 403),
        (
            "DELETE",
            "/api/v1/namespaces/a/pods/x",
            "",
            Some(&a_ro),
            403,
        ),
        ("POST", "/api/v1/apply", "", Some(&a_ro), 403),
        (
            "DELETE",
            "/api/v1/namespaces/a/pods/x",
            "",
            Some(&a_admin),
            200,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/b/pods/x",
            "",
            Some(&a_admin),
            403,
        ),
        ("DELETE", "/api/v1/namespaces/a", "", Some(&a_admin), 403),
        ("GET", "/api/v1/tokens", "", Some(&a_admin), 403),
        ("POST", "/api/v1/apply", "", Some(&a_admin), 200),
        ("GET", "/api/v1/namespaces/a/nodes", "", Some(&admin), 400),
    ];
    for (method, path, body, token, want) in cases {
        let mut req = axum::http::Request::builder().method(*method).uri(*path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(status, *want, "{method} {path} as {token:?}: {bytes:?}");
        if status == 403 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let msg = v["error"].as_str().unwrap();
            assert!(
                msg.contains("read-only") || msg.contains("in namespaces a"),
                "{msg}"
            );
        }
    }
}

const MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: echo, image: baton/http-echo:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1}
spec:
  containers: [{name: echo, image: baton/http-echo:1}]
";

/// A core that answers every [`ApiOp`] with a reply of the right type, made from the
/// request where it can be (so a test sees which parameters arrived).
fn fake_core() -> mpsc::Sender<Event> {
    use crate::contract::body::{ApiObject, Revocation, RolloutProgress, UndoResult};
    use crate::contract::{Applied, ApplyAction, ResourceKind};
    use crate::model::api;

    let mut deployment = None;
    let mut pod = None;
    for o in crate::model::manifest::parse_manifests(MANIFEST).unwrap() {
        match o {
            api::Object::Deployment(d) => deployment = Some(d),
            api::Object::Pod(p) => pod = Some(p),
            api::Object::Secret(_)
            | api::Object::AgentUpdate(_)
            | api::Object::DaemonSet(_)
            | api::Object::Job(_)
            | api::Object::CronJob(_)
            | api::Object::ConfigMap(_)
            | api::Object::Service(_)
            | api::Object::Namespace(_) => {}
        }
    }
    let rollout = match crate::model::manifest::parse_manifests(
        "apiVersion: baton.io/v1alpha1\nkind: AgentUpdate\nmetadata: {name: up}\nspec: {version: 0.2.1}\n",
    )
    .unwrap()
    .remove(0)
    {
        api::Object::AgentUpdate(u) => u,
        other => panic!("{other:?}"),
    };
    // The pod runs on pi-1, an agent that serves logs (v5).
    let mut pod = pod.unwrap();
    pod.spec.node_name = Some("pi-1".into());
    let node = ApiObject::Node(api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: "pi-1".into(),
            ..Default::default()
        },
        spec: Default::default(),
        status: api::NodeStatus {
            protocol_version: 5,
            ..Default::default()
        },
    });
    let (d, p) = (
        ApiObject::Deployment(deployment.unwrap()),
        ApiObject::Pod(pod),
    );
    let event = |object: Option<String>| api::Event {
        object: object.unwrap_or_else(|| "pod/web-1".into()),
        reason: "Scheduled".into(),
        message: "assigned to pi-1".into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        namespace: None,
    };
    let answer = move |op: ApiOp| match op {
        ApiOp::Apply { .. } => ApiReply::Applied(vec![Applied {
            kind: ResourceKind::Deployment,
            name: "web".into(),
            action: ApplyAction::Created,
        }]),
        ApiOp::Get { name: None, .. } => ApiReply::Objects(vec![d.clone(), p.clone()]),
        ApiOp::Get {
            kind: ResourceKind::Node,
            name: Some(_),
        } => ApiReply::Object(node.clone()),
        ApiOp::Get { name: Some(_), .. } => ApiReply::Object(p.clone()),
        ApiOp::Delete { kind, name } => ApiReply::Deleted { kind, name },
        ApiOp::Scale { .. } => ApiReply::Object(d.clone()),
        ApiOp::UpdateNode { .. } => ApiReply::Object(d.clone()),
        ApiOp::Describe { .. } => ApiReply::Described {
            object: p.clone(),
            events: vec![event(None)],
        },
        ApiOp::Events { object } => ApiReply::Events(vec![event(object)]),
        ApiOp::Top { pods: false } => ApiReply::NodeUsage(Vec::new()),
        ApiOp::Top { pods: true } => {
            ApiReply::PodUsage(vec![crate::contract::usage::PodUsageView {
                name: "web-1".into(),
                node: "pi-1".into(),
                cpu_millis: 250,
                memory_bytes: 1 << 20,
                namespace: None,
            }])
        }
        ApiOp::Fleet => ApiReply::Fleet(Box::new(crate::metrics::Fleet {
            pods: [("Running".to_owned(), 1)].into(),
            ..Default::default()
        })),
        ApiOp::RolloutStatus { .. } => ApiReply::Rollout(RolloutProgress {
            done: true,
            message: "deployment \"web\" successfully rolled out".into(),
            ..Default::default()
        }),
        ApiOp::RolloutHistory { .. } => ApiReply::Revisions(Vec::new()),
        ApiOp::RolloutUndo { to_revision, .. } => ApiReply::RolledBack(UndoResult {
            rolled_back: true,
            revision: to_revision.unwrap_or(1),
        }),
        ApiOp::SetRevoked { name, revoked } => ApiReply::Revocation(Revocation {
            node: name,
            revoked,
        }),
        // The name that arrived, and the action as the reason.
        ApiOp::AgentRollout { name, action } => {
            let mut u = rollout.clone();
            u.metadata.name = name.unwrap_or_else(|| "newest".into());
            u.status.reason = Some(format!("{action:?}"));
            ApiReply::AgentUpdate(u)
        }
        ApiOp::Exec { container, .. } => ApiReply::Exec(crate::core::ExecTarget {
            node: "pi-1".into(),
            pod_uid: "u1".into(),
            container: container.unwrap_or_else(|| "app".into()),
        }),
    };
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Api(req) => {
                    let _ = req.reply.send(Ok(answer(req.op)));
                }
                // One change, then the stream ends (the live channel is closed).
                Event::Watch(w) => {
                    let (_, live) = mpsc::channel(1);
                    let ev = crate::contract::watch::WatchEvent {
                        change: crate::contract::watch::Change::Deleted,
                        resource_version: w.since.unwrap_or(0) + 1,
                        kind: format!("{:?}", w.what),
                        name: "web-1".into(),
                        object: None,
                        event: None,
                        namespace: w.namespace,
                    };
                    let _ = w.reply.send(Ok(crate::core::watch::WatchStart {
                        backlog: vec![ev],
                        live,
                    }));
                }
                _ => {}
            }
        }
    });
    tx
}

/// One tar of a one-platform OCI image layout that names no image.
fn image_archive() -> Vec<u8> {
    use crate::registry::OCI_MANIFEST;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"layer bytes".as_slice();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest(&manifest), "size": manifest.len()}
    ]}))
    .unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in [&config[..], layer, &manifest] {
        let name = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
        add(name, blob);
    }
    add("index.json".into(), &index);
    tar.into_inner().unwrap()
}

/// A log hub whose node answers every log request with one line naming what was asked,
/// then the end of the log.
fn fake_agent_logs() -> Arc<crate::edge::logs::LogHub> {
    use baton_proto::{BVec, Body, LogChunk};
    let (tx, mut rx) = mpsc::channel::<crate::core::Outbound>(16);
    let hub = crate::edge::logs::LogHub::new(tx);
    let weak = Arc::downgrade(&hub);
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let (Body::LogRequest(r), Some(hub)) = (out.body, weak.upgrade()) else {
                continue;
            };
            let line = format!(
                "log of {} (previous: {}, tail: {:?}, since: {:?}, timestamps: {})\n",
                r.container, r.previous, r.tail_lines, r.since, r.timestamps
            );
            for (seq, data, end) in [(0, line.into_bytes(), None), (1, Vec::new(), Some(None))] {
                let chunk = LogChunk {
                    session: r.session,
                    seq,
                    data: BVec::from_vec(data).unwrap(),
                    end,
                };
                hub.deliver(&out.node, chunk);
            }
        }
    });
    hub
}

/// Calls contract routes through an app and reads each answer as the route's reply
/// type, noting which routes were called.
struct Client {
    app: Router,
    token: String,
    called: std::collections::BTreeSet<&'static str>,
}

impl Client {
    /// `route` with its contract body, as an admin (or with no token if `public`).
    async fn call<R>(&mut self, route: &R, body: &R::Request) -> R::Response
    where
        R: Route,
        R::Request: crate::contract::RequestBody,
        R::Response: crate::contract::ResponseBody,
    {
        use crate::contract::{Payload, RequestBody};
        let body = match body.payload().unwrap() {
            Payload::Empty => axum::body::Body::empty(),
            Payload::Json(b) => axum::body::Body::from(b),
            Payload::Text(t) => axum::body::Body::from(t),
        };
        self.send(route, body).await
    }

    /// `route` with a body of any kind (a streamed archive).
    async fn send<R>(&mut self, route: &R, body: axum::body::Body) -> R::Response
    where
        R: Route,
        R::Response: crate::contract::ResponseBody,
    {
        use crate::contract::ResponseBody;
        use tower::ServiceExt;
        self.called.insert(R::NAME);
        let path = route.path();
        let req = axum::http::Request::builder()
            .method(R::METHOD.as_str())
            .uri(&path)
            .header("authorization", format!("Bearer {}", self.token))
            .body(body)
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            status.is_success(),
            "{} {path} ({}): {status} {text}",
            R::METHOD.as_str(),
            R::NAME
        );
        R::Response::parse(&bytes).unwrap_or_else(|e| {
            panic!(
                "{} {path}: the answer is not a {}: {e}: {text}",
                R::METHOD.as_str(),
                std::any::type_name::<R::Response>()
            )
        })
    }
}

/// Every route of the contract, called through the server's whole app the way a client
/// calls it (the path its struct builds, its method, its request body), must be served
/// and answer its reply type. A route the server and the clients disagree on, in path,
/// method, parameters or bodies, fails here; a route added to the contract and not
/// called here fails the last assertion.
#[tokio::test]
async fn every_contract_route_is_served_as_defined() {
    use crate::contract::body::{ScaleRequest, UndoRequest};
    use crate::contract::nodes::{EnrollRequest, RotateRequest};
    use crate::contract::payload::{Manifest, NoBody};
    use crate::contract::tokens::{JoinTokenRequest, TokenRequest};
    use crate::contract::ResourceKind;
    use crate::security::encoding::b64;
    use crate::security::gate::SecurityConfig;
    use baton_proto::sign::SigningKey;
    use ed25519_dalek::Signer;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemStore::default());
    let tokens = Arc::new(Tokens::load(store.clone()).unwrap());
    let admin = tokens.create("admin", Role::Admin).unwrap();
    let pki = Arc::new(crate::security::pki::Pki::load_or_create(dir.path()).unwrap());
    let security = Arc::new(Security::load(store.clone(), pki, SecurityConfig::default()).unwrap());
    let (nudge, _nudged) = mpsc::channel(4);
    security.set_nudge(nudge);
    let enroller = Arc::new(Enroller::load(store.clone(), security.clone()).unwrap());
    let release_key = SigningKey::from_bytes(&[5; 32]);
    let registry = Arc::new(
        crate::registry::Registry::open(dir.path(), store)
            .unwrap()
            .with_release_key(Some(release_key.verifying_key())),
    );
    let app = app(
        fake_core(),
        Arc::new(BusStats::default()),
        tokens,
        registry,
        security,
        enroller,
        fake_agent_logs(),
    );
    let mut c = Client {
        app,
        token: admin,
        called: Default::default(),
    };

    let health = c.call(&routes::Healthz {}, &NoBody).await;
    assert_eq!(health.status, crate::contract::health::HealthStatus::Ok);

    // Objects: the fake core answers from what arrived.
    let applied = c
        .call(
            &routes::Apply { namespace: None },
            &Manifest(MANIFEST.into()),
        )
        .await;
    assert_eq!(applied.results[0].name, "web");
    let pods = ResourceKind::Pod;
    let list = c.call(&routes::ListObjects { kind: pods }, &NoBody).await;
    // Each object reads back as its own kind.
    use crate::contract::body::ApiObject;
    assert!(
        matches!(
            list.items[..],
            [ApiObject::Deployment(_), ApiObject::Pod(_)]
        ),
        "{list:?}"
    );
    let web1 = || "web-1".to_owned();
    c.call(
        &routes::GetObject {
            kind: pods,
            name: web1(),
        },
        &NoBody,
    )
    .await;
    let described = c
        .call(
            &routes::Describe {
                kind: pods,
                name: web1(),
            },
            &NoBody,
        )
        .await;
    assert_eq!(described.events.len(), 1);
    let deleted = c
        .call(
            &routes::DeleteObject {
                kind: pods,
                name: web1(),
            },
            &NoBody,
        )
        .await;
    assert_eq!(
        (&*deleted.deleted.kind, &*deleted.deleted.name),
        ("pod", "web-1")
    );
    let object = Some("pod/web 1".to_owned());
    let events = c
        .call(
            &routes::Events {
                object: object.clone(),
            },
            &NoBody,
        )
        .await;
    assert_eq!(Some(events.items[0].object.clone()), object);
    c.call(&routes::Events { object: None }, &NoBody).await;
    let web = || "web".to_owned();
    let cordon = crate::contract::nodes::NodeSpecChange {
        unschedulable: Some(true),
        ..Default::default()
    };
    c.call(
        &routes::UpdateNode {
            name: "pi-1".into(),
        },
        &cordon,
    )
    .await;
    c.call(
        &routes::Scale { name: web() },
        &ScaleRequest { replicas: 2 },
    )
    .await;
    let status = c
        .call(&routes::RolloutStatus { name: web() }, &NoBody)
        .await;
    assert!(status.done);
    c.call(&routes::RolloutHistory { name: web() }, &NoBody)
        .await;
    let undo = UndoRequest {
        to_revision: Some(3),
    };
    let undone = c.call(&routes::RolloutUndo { name: web() }, &undo).await;
    assert_eq!(undone.revision, 3);
    let cam = || "cam".to_owned();
    let status = c
        .call(&routes::DaemonSetRolloutStatus { name: cam() }, &NoBody)
        .await;
    assert!(status.done);
    c.call(&routes::DaemonSetRolloutHistory { name: cam() }, &NoBody)
        .await;
    let undone = c
        .call(&routes::DaemonSetRolloutUndo { name: cam() }, &undo)
        .await;
    assert_eq!(undone.revision, 3);

    // The namespaced twins: the namespace and name reach the core qualified.
    let ns = || "team-a".to_owned();
    let in_a = c
        .call(
            &routes::ListNamespaced {
                namespace: ns(),
                kind: pods,
            },
            &NoBody,
        )
        .await;
    assert!(in_a.items.is_empty(), "the fake's objects are default's");
    let in_default = c
        .call(
            &routes::ListNamespaced {
                namespace: "default".into(),
                kind: pods,
            },
            &NoBody,
        )
        .await;
    assert_eq!(in_default.items.len(), 2);
    c.call(
        &routes::GetNamespaced {
            namespace: ns(),
            kind: pods,
            name: web1(),
        },
        &NoBody,
    )
    .await;
    c.call(
        &routes::DescribeNamespaced {
            namespace: ns(),
            kind: pods,
            name: web1(),
        },
        &NoBody,
    )
    .await;
    let deleted = c
        .call(
            &routes::DeleteNamespaced {
                namespace: ns(),
                kind: pods,
                name: web1(),
            },
            &NoBody,
        )
        .await;
    assert_eq!(&*deleted.deleted.name, "team-a_web-1");
    let events = c
        .call(
            &routes::EventsNamespaced {
                namespace: ns(),
                object: Some("pod/web-1".into()),
            },
            &NoBody,
        )
        .await;
    assert!(events.items.is_empty(), "the fake's event is default's");
    c.call(
        &routes::ScaleNamespaced {
            namespace: ns(),
            name: web(),
        },
        &ScaleRequest { replicas: 2 },
    )
    .await;
    let twin = |name: String| (ns(), name);
    let (namespace, name) = twin(web());
    c.call(
        &routes::RolloutStatusNamespaced { namespace, name },
        &NoBody,
    )
    .await;
    let (namespace, name) = twin(web());
    c.call(
        &routes::RolloutHistoryNamespaced { namespace, name },
        &NoBody,
    )
    .await;
    let (namespace, name) = twin(web());
    c.call(&routes::RolloutUndoNamespaced { namespace, name }, &undo)
        .await;
    let (namespace, name) = twin(cam());
    c.call(
        &routes::DaemonSetRolloutStatusNamespaced { namespace, name },
        &NoBody,
    )
    .await;
    let (namespace, name) = twin(cam());
    c.call(
        &routes::DaemonSetRolloutHistoryNamespaced { namespace, name },
        &NoBody,
    )
    .await;
    let (namespace, name) = twin(cam());
    c.call(
        &routes::DaemonSetRolloutUndoNamespaced { namespace, name },
        &undo,
    )
    .await;

    // Agent rollouts.
    let newest = c
        .call(&routes::AgentRolloutStatus { name: None }, &NoBody)
        .await;
    assert_eq!(newest.metadata.name, "newest");
    let up = || "up 1".to_owned();
    let named = c
        .call(&routes::AgentRolloutStatus { name: Some(up()) }, &NoBody)
        .await;
    assert_eq!(
        (named.metadata.name.as_str(), named.status.reason.as_deref()),
        ("up 1", Some("Status"))
    );
    let paused = c
        .call(&routes::AgentRolloutPause { name: up() }, &NoBody)
        .await;
    assert_eq!(paused.status.reason.as_deref(), Some("Pause"));
    let resumed = c
        .call(&routes::AgentRolloutResume { name: up() }, &NoBody)
        .await;
    assert_eq!(resumed.status.reason.as_deref(), Some("Resume"));
    let aborted = c
        .call(&routes::AgentRolloutAbort { name: up() }, &NoBody)
        .await;
    assert_eq!(
        (
            aborted.metadata.name.as_str(),
            aborted.status.reason.as_deref()
        ),
        ("up 1", Some("Abort"))
    );

    // API tokens.
    let made = c
        .call(
            &routes::CreateToken {},
            &TokenRequest {
                name: "ci".into(),
                role: Role::ReadOnly,
                namespaces: vec!["team-a".into()],
            },
        )
        .await;
    assert_eq!((&*made.name, made.role), ("ci", Role::ReadOnly));
    let listed = c.call(&routes::ListTokens {}, &NoBody).await;
    assert_eq!(listed.items.len(), 2);
    // The caller's own record: the dashboard's role.
    let me = c.call(&routes::WhoAmI {}, &NoBody).await;
    assert_eq!(me.role, Role::Admin);
    assert!(listed.items.iter().any(|t| t.name == me.name));
    assert_eq!(listed.items[1].namespaces, ["team-a"]);
    c.call(&routes::DeleteToken { name: "ci".into() }, &NoBody)
        .await;

    // Devices: a join token enrolls a node, which rotates its certificate.
    let join = c
        .call(
            &routes::CreateJoinToken {},
            &JoinTokenRequest {
                ttl_seconds: 3600,
                uses: 1,
                ..Default::default()
            },
        )
        .await;
    let joins = c.call(&routes::ListJoinTokens {}, &NoBody).await;
    assert_eq!(joins.items, std::slice::from_ref(&join.info));
    let ca = c.call(&routes::EnrollCa {}, &NoBody).await;
    assert!(ca.0.contains("BEGIN CERTIFICATE"), "{}", ca.0);
    let key = SigningKey::from_bytes(&[7; 32]);
    let enrolled = c
        .call(
            &routes::Enroll {},
            &EnrollRequest {
                token: join.token,
                node_name: "pi-1".into(),
                public_key: b64(key.verifying_key().as_bytes()),
                labels: Default::default(),
                arch: "arm64".into(),
            },
        )
        .await;
    assert_eq!(enrolled.node_name, "pi-1");
    let pi1 = || "pi-1".to_owned();
    let identity = c.call(&routes::Identity { name: pi1() }, &NoBody).await;
    assert_eq!(identity.public_key, b64(key.verifying_key().as_bytes()));
    let before = c.call(&routes::RotateKey { name: pi1() }, &NoBody).await;
    assert_eq!(before, identity);
    let new_key = b64(SigningKey::from_bytes(&[8; 32]).verifying_key().as_bytes());
    let now = crate::security::encoding::now_ms();
    let signed = baton_proto::enroll::rotate_signing_bytes("pi-1", &new_key, now);
    let rotate = RotateRequest {
        new_public_key: new_key,
        timestamp_ms: now,
        signature: b64(&key.sign(&signed).to_bytes()),
    };
    c.call(&routes::RotateCertificate { name: pi1() }, &rotate)
        .await;
    let report = c.call(&routes::Rejections {}, &NoBody).await;
    assert_eq!(report.enrolled.get("pi-1"), Some(&false));
    // The core's snapshot, in Prometheus' text format.
    let metrics = c.call(&routes::Metrics {}, &NoBody).await;
    assert!(
        metrics.0.contains("baton_pods{phase=\"Running\"} 1\n"),
        "{}",
        metrics.0
    );
    let revoked = c.call(&routes::Revoke { name: pi1() }, &NoBody).await;
    assert!(revoked.revoked);
    c.call(&routes::DeleteJoinToken { id: join.info.id }, &NoBody)
        .await;

    // Images.
    let name = "baton/t:1".to_owned();
    let import = routes::ImportImages {
        name: Some(name.clone()),
    };
    let imported = c.send(&import, image_archive().into()).await;
    assert_eq!(imported.items[0].name, name);
    let images = c.call(&routes::ListImages {}, &NoBody).await;
    assert_eq!(images.items, imported.items);
    let gone = c.call(&routes::DeleteImage { name }, &NoBody).await;
    assert_eq!(gone.deleted, imported.items[0]);

    // Agent releases.
    let binary = b"an agent binary".to_vec();
    let (import, sha) = signed_import(&binary, "x86_64-unknown-linux-gnu", &release_key);
    let imported = c.send(&import, binary.clone().into()).await;
    assert_eq!(imported.digest, baton_proto::release::digest_string(&sha));
    let releases = c.call(&routes::ListReleases {}, &NoBody).await;
    assert_eq!(releases.items, vec![imported.clone()]);
    let digest = || imported.digest.clone();
    let got = c
        .call(&routes::ReleaseBinary { digest: digest() }, &NoBody)
        .await;
    assert_eq!(got.0, binary);
    let gone = c
        .call(&routes::DeleteRelease { digest: digest() }, &NoBody)
        .await;
    assert_eq!(gone.deleted, imported);

    // A container's log, as the fake agent sends it, with the request's fields.
    let log = c
        .call(
            &routes::PodLogs {
                name: "web-1".into(),
                container: None,
                follow: None,
                previous: Some("true".into()),
                tail: Some("3".into()),
                since: Some("1m30s".into()),
                since_time: None,
                timestamps: Some("true".into()),
            },
            &NoBody,
        )
        .await;
    assert_eq!(
        String::from_utf8(log.0).unwrap(),
        "log of echo (previous: true, tail: Some(3), since: Some(Ago { millis: 90000 }), timestamps: true)\n"
    );

    c.call(
        &routes::PodLogsNamespaced {
            namespace: ns(),
            name: "web-1".into(),
            container: None,
            follow: None,
            previous: None,
            tail: None,
            since: None,
            since_time: None,
            timestamps: None,
        },
        &NoBody,
    )
    .await;

    // Usage: what the core answers, as the contract's lists.
    assert!(c.call(&routes::TopNodes {}, &NoBody).await.items.is_empty());
    let top = c.call(&routes::TopPods {}, &NoBody).await;
    assert_eq!(
        (top.items[0].name.as_str(), top.items[0].cpu_millis),
        ("web-1", 250)
    );

    // A watch: the path's kind and the query's version reach the core.
    let watched = c
        .call(
            &routes::Watch {
                kind: "po".into(),
                resource_version: Some("41".into()),
            },
            &NoBody,
        )
        .await;
    assert_eq!(watched.0.len(), 1, "{watched:?}");
    assert_eq!(watched.0[0].kind, "Kind(Pod)");
    assert_eq!(watched.0[0].resource_version, 42);
    // A namespaced watch: the namespace reaches the core too; a cluster-scoped kind is
    // in none.
    let watched = c
        .call(
            &routes::WatchNamespaced {
                namespace: ns(),
                kind: "events".into(),
                resource_version: None,
            },
            &NoBody,
        )
        .await;
    assert_eq!(watched.0[0].kind, "Events");
    assert_eq!(watched.0[0].namespace, Some(ns()));
    let nodes = routes::WatchNamespaced {
        namespace: ns(),
        kind: "nodes".into(),
        resource_version: None,
    };
    let req = axum::http::Request::get(nodes.path())
        .header("authorization", format!("Bearer {}", c.token))
        .body(axum::body::Body::empty())
        .unwrap();
    let refused = tower::ServiceExt::oneshot(c.app.clone(), req)
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    // Exec upgrades its connection: answered 101 (the session itself is in tests/exec.rs),
    // and refused without the upgrade.
    let exec = routes::PodExec {
        name: "web-1".into(),
        container: None,
        command: r#"["sh","-c","exit 3"]"#.into(),
        stdin: None,
        tty: None,
        rows: None,
        cols: None,
    };
    let req = |upgrade: bool| {
        let mut b = axum::http::Request::post(exec.path())
            .header("authorization", format!("Bearer {}", c.token));
        if upgrade {
            b = b
                .header("connection", "upgrade")
                .header("upgrade", crate::contract::exec::UPGRADE);
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    use tower::ServiceExt;
    let plain = c.app.clone().oneshot(req(false)).await.unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let upgraded = c.app.clone().oneshot(req(true)).await.unwrap();
    assert_eq!(upgraded.status(), StatusCode::SWITCHING_PROTOCOLS);
    c.called.insert(<routes::PodExec as Route>::NAME);
    let exec_in_a = routes::PodExecNamespaced {
        namespace: ns(),
        name: "web-1".into(),
        container: None,
        command: r#"["true"]"#.into(),
        stdin: None,
        tty: None,
        rows: None,
        cols: None,
    };
    let req = axum::http::Request::post(exec_in_a.path())
        .header("authorization", format!("Bearer {}", c.token))
        .header("connection", "upgrade")
        .header("upgrade", crate::contract::exec::UPGRADE)
        .body(axum::body::Body::empty())
        .unwrap();
    let upgraded = c.app.clone().oneshot(req).await.unwrap();
    assert_eq!(upgraded.status(), StatusCode::SWITCHING_PROTOCOLS);
    c.called.insert(<routes::PodExecNamespaced as Route>::NAME);

    let all: std::collections::BTreeSet<&str> = routes::ALL.iter().map(|r| r.name).collect();
    assert_eq!(c.called, all, "contract routes this test does not call");
}

/// The server routes only contract paths: no handler file writes an API path of its own
/// (which the contract test above could not see).
#[test]
fn no_api_path_outside_the_contract() {
    let files = [
        ("edge/http/mod.rs", include_str!("mod.rs")),
        ("edge/http/api.rs", include_str!("api.rs")),
        (
            "edge/http/agent_updates.rs",
            include_str!("agent_updates.rs"),
        ),
        ("edge/http/device.rs", include_str!("device.rs")),
        ("edge/http/logs.rs", include_str!("logs.rs")),
        ("edge/http/exec.rs", include_str!("exec.rs")),
        ("edge/http/metrics.rs", include_str!("metrics.rs")),
        ("edge/http/watch.rs", include_str!("watch.rs")),
        ("edge/http/tokens.rs", include_str!("tokens.rs")),
        ("edge/http/middleware.rs", include_str!("middleware.rs")),
        ("registry/api.rs", include_str!("../../registry/api.rs")),
        (
            "registry/releases_api.rs",
            include_str!("../../registry/releases_api.rs"),
        ),
    ];
    for (name, text) in files {
        for needle in ["\"/api/", "\"/healthz"] {
            assert!(!text.contains(needle), "{name} writes a path: {needle}");
        }
    }
}

/// The import route of `binary` as agent 0.2.1 for `target`, signed by `key`; and its sha256.
fn signed_import(
    binary: &[u8],
    target: &str,
    key: &baton_proto::sign::SigningKey,
) -> (routes::ImportRelease, [u8; 32]) {
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(binary).into();
    let mut wire = baton_proto::Release {
        version: baton_proto::BString::new("0.2.1").unwrap(),
        target: baton_proto::BString::new(target).unwrap(),
        protocol: 5,
        size: binary.len() as u64,
        sha256: sha,
        signature: baton_proto::BVec::new(),
    };
    baton_proto::release::sign(&mut wire, key).unwrap();
    let import = routes::ImportRelease {
        version: "0.2.1".into(),
        target: target.into(),
        protocol: "5".into(),
        size: binary.len().to_string(),
        sha256: hex::encode(sha),
        signature: crate::security::encoding::b64(&wire.signature),
    };
    (import, sha)
}

/// An enrolled node without an API token (it enrolled through `--enroll-listen`) fetches a
/// release binary on its own key, from the enroll listener and from the main API; a bad,
/// stale, foreign or revoked signature is refused, and a signature opens nothing else.
#[tokio::test]
async fn enrolled_nodes_sign_their_release_downloads() {
    use crate::contract::nodes::EnrollRequest;
    use crate::contract::payload::NoBody;
    use crate::contract::tokens::JoinTokenRequest;
    use crate::security::encoding::b64;
    use crate::security::gate::SecurityConfig;
    use baton_proto::enroll::{
        download_signing_bytes, NODE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    };
    use baton_proto::sign::SigningKey;
    use ed25519_dalek::Signer;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemStore::default());
    let tokens = Arc::new(Tokens::load(store.clone()).unwrap());
    let admin = tokens.create("admin", Role::Admin).unwrap();
    let pki = Arc::new(crate::security::pki::Pki::load_or_create(dir.path()).unwrap());
    let security = Arc::new(Security::load(store.clone(), pki, SecurityConfig::default()).unwrap());
    let (nudge, _nudged) = mpsc::channel(4);
    security.set_nudge(nudge);
    let enroller = Arc::new(Enroller::load(store.clone(), security.clone()).unwrap());
    let release_key = SigningKey::from_bytes(&[5; 32]);
    let registry = Arc::new(
        crate::registry::Registry::open(dir.path(), store)
            .unwrap()
            .with_release_key(Some(release_key.verifying_key())),
    );
    let listener = enroll_router(
        fake_core(),
        security.clone(),
        enroller.clone(),
        registry.releases(),
    );
    let mut c = Client {
        app: app(
            fake_core(),
            Arc::new(BusStats::default()),
            tokens,
            registry,
            security,
            enroller,
            fake_agent_logs(),
        ),
        token: admin,
        called: Default::default(),
    };
    async fn enroll(c: &mut Client, name: &str, seed: u8) -> SigningKey {
        let key = SigningKey::from_bytes(&[seed; 32]);
        {
            let join = c
                .call(
                    &routes::CreateJoinToken {},
                    &JoinTokenRequest {
                        ttl_seconds: 3600,
                        uses: 1,
                        ..Default::default()
                    },
                )
                .await;
            let req = EnrollRequest {
                token: join.token,
                node_name: name.into(),
                public_key: b64(key.verifying_key().as_bytes()),
                labels: Default::default(),
                arch: "arm64".into(),
            };
            c.call(&routes::Enroll {}, &req).await;
        }
        key
    }
    let pi1 = enroll(&mut c, "pi-1", 7).await;
    let pi2 = enroll(&mut c, "pi-2", 9).await;
    let binary = b"an agent binary".to_vec();
    let (import, sha) = signed_import(&binary, "aarch64-unknown-linux-musl", &release_key);
    c.send(&import, binary.clone().into()).await;
    let path = baton_proto::release::download_path(&sha);

    // A request as the agent signs it: `node` claims, `key` signs `signed_path` at `ts`.
    let get =
        |app: &Router, path: &str, node: &str, key: &SigningKey, signed_path: &str, ts: u64| {
            let sig = key.sign(&download_signing_bytes(node, signed_path, ts));
            let req = axum::http::Request::get(path)
                .header(NODE_HEADER, node)
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, b64(&sig.to_bytes()))
                .header("range", "bytes=3-")
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(req)
        };
    let body = |r: axum::response::Response| async move {
        axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec()
    };
    let now = crate::security::encoding::now_ms();
    for app in [&listener, &c.app] {
        let ok = get(app, &path, "pi-1", &pi1, &path, now).await.unwrap();
        assert_eq!(ok.status(), StatusCode::PARTIAL_CONTENT, "resumable");
        assert_eq!(body(ok).await, binary[3..]);
        let refused = |r: axum::response::Response| r.status();
        // Another node's key, a path it did not sign, an old request, no headers at all.
        let foreign = get(app, &path, "pi-1", &pi2, &path, now).await.unwrap();
        assert_eq!(refused(foreign), StatusCode::UNAUTHORIZED);
        let other = format!("/api/v1/releases/sha256:{}/binary", "00".repeat(32));
        let replayed = get(app, &other, "pi-1", &pi1, &path, now).await.unwrap();
        assert_eq!(refused(replayed), StatusCode::UNAUTHORIZED);
        let stale = get(app, &path, "pi-1", &pi1, &path, now - 3_600_000)
            .await
            .unwrap();
        assert_eq!(refused(stale), StatusCode::UNAUTHORIZED);
        let unknown = get(app, &path, "pi-9", &pi1, &path, now).await.unwrap();
        assert_eq!(refused(unknown), StatusCode::UNAUTHORIZED);
        let bare = axum::http::Request::get(&path)
            .body(axum::body::Body::empty())
            .unwrap();
        let bare = app.clone().oneshot(bare).await.unwrap();
        assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    }
    // A signature opens release downloads only: not the node list on the main API.
    let nodes = "/api/v1/nodes";
    let listed = get(&c.app, nodes, "pi-1", &pi1, nodes, now).await.unwrap();
    assert_eq!(listed.status(), StatusCode::FORBIDDEN);
    // And the enroll listener still serves nothing else.
    let listed = get(&listener, nodes, "pi-1", &pi1, nodes, now)
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::NOT_FOUND);
    // A revoked node is refused.
    c.call(
        &routes::Revoke {
            name: "pi-2".into(),
        },
        &NoBody,
    )
    .await;
    let revoked = get(&listener, &path, "pi-2", &pi2, &path, now)
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::FORBIDDEN);
}
