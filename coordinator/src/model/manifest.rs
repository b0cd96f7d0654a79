//! `baton apply` input: Kubernetes YAML manifests to [`api::Object`]s.
//!
//! Baton accepts a strict subset of the Kubernetes schema, so a manifest written for
//! Kubernetes applies unchanged when it only uses that subset, and anything else is
//! refused with the full path of the first field Baton does not support. Silently
//! ignoring a `securityContext` or a `livenessProbe` would run a workload with weaker
//! guarantees than its author asked for.
//!
//! Parsing runs in three passes per document, all before anything is returned, so a
//! manifest is all-or-nothing:
//! 1. YAML to a [`Value`] (syntax errors carry line and column);
//! 2. a walk of the value against an allow-list ([`Shape`]) that names unsupported
//!    fields, drops `status`, and treats `null` as absent as Kubernetes does;
//! 3. serde into private input structs that mirror the Kubernetes shape (type errors
//!    carry their path through `serde_path_to_error`), then validation into `api` types.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::model::api::{
    self, PullPolicy, RestartPolicy, POD_NAME_SUFFIX_LEN, POD_TEMPLATE_HASH_LABEL,
    TEMPLATE_HASH_LEN,
};
use crate::model::quantity;

/// Longest DNS-1123 label: pod and container names.
pub const MAX_NAME_LEN: usize = 63;
/// Longest Deployment name, so that `<name>-<hash>-<suffix>` pod names fit in 63.
pub const MAX_DEPLOYMENT_NAME_LEN: usize =
    MAX_NAME_LEN - 1 - TEMPLATE_HASH_LEN - 1 - POD_NAME_SUFFIX_LEN;
/// More replicas than this is a typo on an edge cluster, not a plan.
pub const MAX_REPLICAS: i64 = 1000;
/// The most keys one Secret holds (what one sealed secret carries on the wire).
pub const MAX_SECRET_KEYS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: invalid YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {doc}: {path}: {message}")]
    Field {
        doc: usize,
        path: String,
        message: String,
    },
    #[error("document {doc}: {message}")]
    Document { doc: usize, message: String },
    /// Every field Baton does not support in the document, as `(path, message)`, in
    /// document order, so one round trip shows them all.
    #[error("document {doc}: {}", render_fields(fields))]
    Unsupported {
        doc: usize,
        fields: Vec<(String, String)>,
    },
    #[error("no objects in manifest")]
    Empty,
}

fn render_fields(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .map(|(path, message)| format!("{path}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses one or more `---`-separated documents. Empty documents are skipped; any
/// error in any document fails the whole manifest.
pub fn parse_manifests(yaml: &str) -> Result<Vec<api::Object>, ManifestError> {
    let mut objects = Vec::new();
    // (kind, name) -> document that defined it, to refuse duplicates within one apply.
    let mut seen: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let doc = i + 1;
        let mut value =
            Value::deserialize(de).map_err(|source| ManifestError::Yaml { doc, source })?;
        if value.is_null() {
            continue;
        }
        value
            .apply_merge()
            .map_err(|source| ManifestError::Yaml { doc, source })?;
        let object = parse_document(doc, value)?;
        let key = match &object {
            api::Object::Deployment(d) => ("deployment", d.metadata.name.clone()),
            api::Object::Pod(p) => ("pod", p.metadata.name.clone()),
            api::Object::Secret(x) => ("secret", x.metadata.name.clone()),
        };
        if let Some(first) = seen.get(&key) {
            return Err(ManifestError::Document {
                doc,
                message: format!("{}/{} is already defined in document {first}", key.0, key.1),
            });
        }
        seen.insert(key, doc);
        objects.push(object);
    }
    if objects.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(objects)
}

fn parse_document(doc: usize, mut value: Value) -> Result<api::Object, ManifestError> {
    let document_error = |message: String| ManifestError::Document { doc, message };
    let Some(map) = value.as_mapping() else {
        return Err(document_error(
            "expected a mapping with apiVersion and kind".to_string(),
        ));
    };
    let field = |name: &str| -> Result<String, ManifestError> {
        match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ManifestError::Field {
                doc,
                path: name.to_string(),
                message: "expected a string".to_string(),
            }),
            None => Err(ManifestError::Field {
                doc,
                path: name.to_string(),
                message: "required".to_string(),
            }),
        }
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    let field_error =
        |(path, message): (String, String)| ManifestError::Field { doc, path, message };
    let check = |value: &mut Value, shape: &Shape| -> Result<(), ManifestError> {
        let mut unsupported = Vec::new();
        walk(value, shape, &mut String::new(), &mut unsupported).map_err(field_error)?;
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Unsupported {
                doc,
                fields: unsupported,
            })
        }
    };
    match (api_version.as_str(), kind.as_str()) {
        ("apps/v1", "Deployment") => {
            check(&mut value, &DEPLOYMENT)?;
            let input: InDeployment = from_value(doc, value)?;
            deployment(input)
                .map(api::Object::Deployment)
                .map_err(field_error)
        }
        ("v1", "Pod") => {
            check(&mut value, &POD)?;
            let input: InPod = from_value(doc, value)?;
            pod(input).map(api::Object::Pod).map_err(field_error)
        }
        ("v1", "Secret") => {
            check(&mut value, &SECRET)?;
            let input: InSecret = from_value(doc, value)?;
            secret(input).map(api::Object::Secret).map_err(field_error)
        }
        _ => Err(document_error(format!(
            "kind {kind} (apiVersion {api_version}) is not supported by Baton; \
             supported: Deployment (apps/v1), Pod (v1), Secret (v1)"
        ))),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(
    doc: usize,
    value: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde_path_to_error spells the document root ".".
        if path == "." {
            ManifestError::Document { doc, message }
        } else {
            ManifestError::Field { doc, path, message }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Pass 2: the allow-list.

/// What Baton accepts at a place in the document.
enum Shape {
    /// A scalar or list of scalars; serde checks its type.
    Leaf,
    /// A Kubernetes quantity; numbers (`cpu: 1`, `cpu: 0.5`) become strings.
    Quantity,
    /// A string-to-string map (labels, annotations, nodeSelector); keys are free.
    FreeMap,
    /// A mapping with exactly these fields allowed.
    Object(&'static [(&'static str, Shape)]),
    List(&'static Shape),
    /// Accepted, checked against the inner shape, then removed (`status`, `strategy: {}`).
    Dropped(&'static Shape),
    /// Anything at all (only under `Dropped`).
    Any,
    /// Only `null` (`creationTimestamp: null`, which `kubectl create --dry-run` prints).
    NullOnly,
}

const RESOURCE_LIST: Shape =
    Shape::Object(&[("cpu", Shape::Quantity), ("memory", Shape::Quantity)]);
const PROBE: Shape = Shape::Object(&[
    ("exec", Shape::Object(&[("command", Shape::Leaf)])),
    (
        "httpGet",
        Shape::Object(&[
            ("path", Shape::Leaf),
            ("port", Shape::Leaf),
            ("scheme", Shape::Leaf),
            ("host", Shape::Leaf),
            (
                "httpHeaders",
                Shape::List(&Shape::Object(&[
                    ("name", Shape::Leaf),
                    ("value", Shape::Leaf),
                ])),
            ),
        ]),
    ),
    (
        "tcpSocket",
        Shape::Object(&[("port", Shape::Leaf), ("host", Shape::Leaf)]),
    ),
    ("initialDelaySeconds", Shape::Leaf),
    ("periodSeconds", Shape::Leaf),
    ("timeoutSeconds", Shape::Leaf),
    ("successThreshold", Shape::Leaf),
    ("failureThreshold", Shape::Leaf),
]);
const CONTAINER: Shape = Shape::Object(&[
    ("name", Shape::Leaf),
    ("image", Shape::Leaf),
    ("imagePullPolicy", Shape::Leaf),
    ("command", Shape::Leaf),
    ("args", Shape::Leaf),
    (
        "env",
        Shape::List(&Shape::Object(&[
            ("name", Shape::Leaf),
            ("value", Shape::Leaf),
            (
                "valueFrom",
                Shape::Object(&[(
                    "secretKeyRef",
                    Shape::Object(&[("name", Shape::Leaf), ("key", Shape::Leaf)]),
                )]),
            ),
        ])),
    ),
    ("workingDir", Shape::Leaf),
    (
        "ports",
        Shape::List(&Shape::Object(&[
            ("name", Shape::Leaf),
            ("containerPort", Shape::Leaf),
            ("hostPort", Shape::Leaf),
            ("protocol", Shape::Leaf),
        ])),
    ),
    (
        "resources",
        Shape::Object(&[("requests", RESOURCE_LIST), ("limits", RESOURCE_LIST)]),
    ),
    (
        "volumeMounts",
        Shape::List(&Shape::Object(&[
            ("name", Shape::Leaf),
            ("mountPath", Shape::Leaf),
            ("readOnly", Shape::Leaf),
        ])),
    ),
    ("livenessProbe", PROBE),
    ("readinessProbe", PROBE),
    ("startupProbe", PROBE),
    (
        "securityContext",
        Shape::Object(&[
            ("privileged", Shape::Leaf),
            (
                "capabilities",
                Shape::Object(&[("add", Shape::Leaf), ("drop", Shape::Leaf)]),
            ),
            ("runAsUser", Shape::Leaf),
            ("runAsGroup", Shape::Leaf),
            ("readOnlyRootFilesystem", Shape::Leaf),
            ("seccompProfile", SECCOMP_PROFILE),
        ]),
    ),
]);
const POD_SPEC: Shape = Shape::Object(&[
    ("containers", Shape::List(&CONTAINER)),
    ("initContainers", Shape::List(&CONTAINER)),
    ("nodeSelector", Shape::FreeMap),
    ("hostNetwork", Shape::Leaf),
    ("restartPolicy", Shape::Leaf),
    ("terminationGracePeriodSeconds", Shape::Leaf),
    (
        "volumes",
        Shape::List(&Shape::Object(&[
            ("name", Shape::Leaf),
            ("secret", Shape::Object(&[("secretName", Shape::Leaf)])),
            ("emptyDir", Shape::Object(&[("sizeLimit", Shape::Quantity)])),
            ("hostPath", Shape::Object(&[("path", Shape::Leaf)])),
        ])),
    ),
    (
        "imagePullSecrets",
        Shape::List(&Shape::Object(&[("name", Shape::Leaf)])),
    ),
    (
        "securityContext",
        Shape::Object(&[
            ("runAsUser", Shape::Leaf),
            ("runAsGroup", Shape::Leaf),
            ("seccompProfile", SECCOMP_PROFILE),
        ]),
    ),
]);
/// `localhostProfile` is known so that a `Localhost` profile is refused with its own
/// message (by [`seccomp_profile`]) rather than as an unknown field.
const SECCOMP_PROFILE: Shape =
    Shape::Object(&[("type", Shape::Leaf), ("localhostProfile", Shape::Leaf)]);
const META: Shape = Shape::Object(&[
    ("name", Shape::Leaf),
    ("namespace", Shape::Leaf),
    ("labels", Shape::FreeMap),
    ("annotations", Shape::FreeMap),
    ("creationTimestamp", Shape::NullOnly),
]);
const TEMPLATE_META: Shape = Shape::Object(&[
    ("labels", Shape::FreeMap),
    ("annotations", Shape::FreeMap),
    ("creationTimestamp", Shape::NullOnly),
]);
const DEPLOYMENT: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    (
        "spec",
        Shape::Object(&[
            ("replicas", Shape::Leaf),
            (
                "selector",
                Shape::Object(&[("matchLabels", Shape::FreeMap)]),
            ),
            (
                "template",
                Shape::Object(&[("metadata", TEMPLATE_META), ("spec", POD_SPEC)]),
            ),
            // `kubectl create deployment --dry-run=client -o yaml` prints `strategy: {}`,
            // which means the default: RollingUpdate with 25%/25%.
            (
                "strategy",
                Shape::Object(&[
                    ("type", Shape::Leaf),
                    (
                        "rollingUpdate",
                        Shape::Object(&[
                            ("maxSurge", Shape::Leaf),
                            ("maxUnavailable", Shape::Leaf),
                        ]),
                    ),
                ]),
            ),
            ("revisionHistoryLimit", Shape::Leaf),
        ]),
    ),
    ("status", Shape::Dropped(&Shape::Any)),
]);
const POD: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("spec", POD_SPEC),
    ("status", Shape::Dropped(&Shape::Any)),
]);
const SECRET: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("type", Shape::Leaf),
    ("data", Shape::FreeMap),
    ("stringData", Shape::FreeMap),
]);

const NOT_SUPPORTED: &str = "field not supported by Baton";

/// Checks `value` against `shape`, rewriting it in place: removes `null` fields and
/// dropped ones, and turns numeric quantities into strings. Unsupported fields are
/// collected into `unsupported`; other errors are returned as `(path, message)`.
fn walk(
    value: &mut Value,
    shape: &Shape,
    path: &mut String,
    unsupported: &mut Vec<(String, String)>,
) -> Result<(), (String, String)> {
    match shape {
        Shape::Leaf | Shape::FreeMap | Shape::Any | Shape::Dropped(_) => Ok(()),
        Shape::NullOnly => {
            if !value.is_null() {
                unsupported.push((
                    path.clone(),
                    format!("{NOT_SUPPORTED} (set by the coordinator)"),
                ));
            }
            Ok(())
        }
        Shape::Quantity => {
            if let Value::Number(n) = value {
                // YAML reads `129e6` and `0.5` as floats; Rust's shortest round-trip
                // form keeps them readable ("129000000", not "129000000.0").
                let text = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(u), _, _) => u.to_string(),
                    (None, Some(i), _) => i.to_string(),
                    (None, None, Some(f)) => f.to_string(),
                    (None, None, None) => n.to_string(),
                };
                *value = Value::String(text);
            }
            Ok(())
        }
        Shape::List(item) => {
            if let Value::Sequence(items) = value {
                for (i, v) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(v, item, path, unsupported)?;
                    path.truncate(len);
                }
            }
            Ok(())
        }
        Shape::Object(fields) => {
            let Value::Mapping(map) = value else {
                return Ok(()); // serde reports the type error with its path
            };
            let mut remove = Vec::new();
            for (k, v) in map.iter_mut() {
                let Value::String(key) = k else {
                    return Err((path.clone(), format!("keys must be strings, got {k:?}")));
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match fields.iter().find(|(name, _)| name == key) {
                    None => {
                        unsupported.push((path.clone(), NOT_SUPPORTED.to_string()));
                        remove.push(k.clone());
                    }
                    Some((_, Shape::Dropped(inner))) => {
                        walk(v, inner, path, unsupported)?;
                        remove.push(k.clone());
                    }
                    Some((_, field_shape)) => {
                        walk(v, field_shape, path, unsupported)?;
                        // Kubernetes treats `field: null` as an absent field.
                        if v.is_null() {
                            remove.push(k.clone());
                        }
                    }
                }
                path.truncate(len);
            }
            for k in remove {
                map.remove(&k);
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pass 3: input structs (the Kubernetes shape) and validation into `api` types.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InDeployment {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: InMeta,
    spec: InDeploymentSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InPod {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: InMeta,
    spec: InPodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InMeta {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InDeploymentSpec {
    replicas: Option<i64>,
    selector: Option<InSelector>,
    template: InTemplate,
    strategy: Option<InStrategy>,
    revision_history_limit: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InStrategy {
    #[serde(rename = "type")]
    type_: Option<api::StrategyType>,
    rolling_update: Option<InRollingUpdate>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InRollingUpdate {
    /// IntOrString: checked by hand for Kubernetes' messages.
    max_surge: Option<Value>,
    max_unavailable: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InTemplate {
    #[serde(default)]
    metadata: InTemplateMeta,
    spec: InPodSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InTemplateMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InPodSpec {
    containers: Vec<InContainer>,
    #[serde(default)]
    init_containers: Vec<InContainer>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    host_network: bool,
    restart_policy: Option<RestartPolicy>,
    termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    volumes: Vec<InVolume>,
    #[serde(default)]
    image_pull_secrets: Vec<InRef>,
    #[serde(default)]
    security_context: InPodSecurityContext,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InRef {
    name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InPodSecurityContext {
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    seccomp_profile: Option<InSeccompProfile>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InSeccompProfile {
    #[serde(rename = "type")]
    typ: Option<String>,
    localhost_profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InVolume {
    name: Option<String>,
    secret: Option<InSecretVolume>,
    empty_dir: Option<InEmptyDir>,
    host_path: Option<InHostPath>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InSecretVolume {
    secret_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InEmptyDir {
    size_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InHostPath {
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InVolumeMount {
    name: Option<String>,
    mount_path: Option<String>,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InProbe {
    exec: Option<InExec>,
    http_get: Option<InHttpGet>,
    tcp_socket: Option<InTcpSocket>,
    initial_delay_seconds: Option<i64>,
    period_seconds: Option<i64>,
    timeout_seconds: Option<i64>,
    success_threshold: Option<i64>,
    failure_threshold: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InExec {
    #[serde(default)]
    command: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InHttpGet {
    path: Option<String>,
    /// IntOrString: a number or a named containerPort.
    port: Option<Value>,
    scheme: Option<api::Scheme>,
    host: Option<String>,
    #[serde(default)]
    http_headers: Vec<InHeader>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InHeader {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InTcpSocket {
    port: Option<Value>,
    host: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InSecurityContext {
    privileged: Option<bool>,
    capabilities: Option<InCapabilities>,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    read_only_root_filesystem: Option<bool>,
    seccomp_profile: Option<InSeccompProfile>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InCapabilities {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InSecret {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: InMeta,
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InContainer {
    name: Option<String>,
    image: Option<String>,
    image_pull_policy: Option<PullPolicy>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<InEnv>,
    working_dir: Option<String>,
    #[serde(default)]
    ports: Vec<InPort>,
    #[serde(default)]
    resources: InResources,
    #[serde(default)]
    volume_mounts: Vec<InVolumeMount>,
    liveness_probe: Option<InProbe>,
    readiness_probe: Option<InProbe>,
    startup_probe: Option<InProbe>,
    security_context: Option<InSecurityContext>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InEnv {
    name: String,
    #[serde(default)]
    value: String,
    value_from: Option<InEnvSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InEnvSource {
    secret_key_ref: Option<InSecretKeyRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InSecretKeyRef {
    name: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InPort {
    name: Option<String>,
    container_port: i64,
    host_port: Option<i64>,
    protocol: Option<api::Protocol>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InResources {
    #[serde(default)]
    requests: InResourceList,
    #[serde(default)]
    limits: InResourceList,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InResourceList {
    cpu: Option<String>,
    memory: Option<String>,
}

type Invalid = (String, String);

fn invalid<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((path.into(), message.into()))
}

fn deployment(input: InDeployment) -> Result<api::Deployment, Invalid> {
    let metadata = object_meta(input.metadata, MAX_DEPLOYMENT_NAME_LEN)?;
    let spec = input.spec;
    let replicas = spec.replicas.unwrap_or(1);
    if !(0..=MAX_REPLICAS).contains(&replicas) {
        return invalid(
            "spec.replicas",
            format!("must be between 0 and {MAX_REPLICAS}, got {replicas}"),
        );
    }
    let Some(selector) = spec.selector else {
        return invalid("spec.selector", "required");
    };
    if selector.match_labels.is_empty() {
        return invalid("spec.selector.matchLabels", "must not be empty");
    }
    labels("spec.selector.matchLabels", &selector.match_labels)?;
    let template_meta = spec.template.metadata;
    labels("spec.template.metadata.labels", &template_meta.labels)?;
    annotations(
        "spec.template.metadata.annotations",
        &template_meta.annotations,
    )?;
    for (path, map) in [
        ("spec.selector.matchLabels", &selector.match_labels),
        ("spec.template.metadata.labels", &template_meta.labels),
    ] {
        if map.contains_key(POD_TEMPLATE_HASH_LABEL) {
            return invalid(
                format!("{path}.{POD_TEMPLATE_HASH_LABEL}"),
                "label is reserved: Baton sets it on the pods it creates",
            );
        }
    }
    if selector
        .match_labels
        .iter()
        .any(|(k, v)| template_meta.labels.get(k) != Some(v))
    {
        return invalid(
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        );
    }
    let strategy = strategy(spec.strategy.unwrap_or_default())?;
    let revision_history_limit = match spec.revision_history_limit {
        None => api::DEFAULT_REVISION_HISTORY_LIMIT,
        Some(n) => u32::try_from(n).map_err(|_| {
            (
                "spec.revisionHistoryLimit".to_string(),
                format!("must be between 0 and {}, got {n}", u32::MAX),
            )
        })?,
    };
    let pod_spec = pod_spec("spec.template.spec", spec.template.spec)?;
    if pod_spec.restart_policy != RestartPolicy::Always {
        return invalid(
            "spec.template.spec.restartPolicy",
            format!(
                "must be Always for a Deployment, got {:?}",
                pod_spec.restart_policy
            ),
        );
    }
    Ok(api::Deployment {
        api_version: "apps/v1".to_string(),
        kind: "Deployment".to_string(),
        metadata,
        spec: api::DeploymentSpec {
            replicas: replicas as u32, // within 0..=1000, checked above
            selector: api::LabelSelector {
                match_labels: selector.match_labels,
            },
            template: api::PodTemplateSpec {
                metadata: api::TemplateMeta {
                    labels: template_meta.labels,
                    annotations: template_meta.annotations,
                },
                spec: pod_spec,
            },
            strategy,
            revision_history_limit,
        },
        status: api::DeploymentStatus::default(),
    })
}

/// A Deployment strategy with Kubernetes' defaults and validation rules.
fn strategy(s: InStrategy) -> Result<api::DeploymentStrategy, Invalid> {
    let path = "spec.strategy.rollingUpdate";
    match s.type_.unwrap_or_default() {
        api::StrategyType::Recreate => {
            if s.rolling_update.is_some() {
                return invalid(
                    path,
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
            Ok(api::DeploymentStrategy {
                type_: api::StrategyType::Recreate,
                rolling_update: None,
            })
        }
        api::StrategyType::RollingUpdate => {
            let ru = s.rolling_update.unwrap_or_default();
            let default = api::RollingUpdate::default();
            let max_surge = int_or_percent(&format!("{path}.maxSurge"), ru.max_surge)?
                .unwrap_or(default.max_surge);
            let max_unavailable =
                int_or_percent(&format!("{path}.maxUnavailable"), ru.max_unavailable)?
                    .unwrap_or(default.max_unavailable);
            if matches!(max_unavailable, api::IntOrPercent::Percent(p) if p > 100) {
                return invalid(
                    format!("{path}.maxUnavailable"),
                    "must not be greater than 100%",
                );
            }
            if max_surge.is_zero() && max_unavailable.is_zero() {
                return invalid(
                    format!("{path}.maxUnavailable"),
                    "may not be 0 when `maxSurge` is 0",
                );
            }
            Ok(api::DeploymentStrategy {
                type_: api::StrategyType::RollingUpdate,
                rolling_update: Some(api::RollingUpdate {
                    max_surge,
                    max_unavailable,
                }),
            })
        }
    }
}

/// Kubernetes' IntOrString for `maxSurge`/`maxUnavailable`: a non-negative integer or a
/// percentage string such as `25%`.
fn int_or_percent(path: &str, v: Option<Value>) -> Result<Option<api::IntOrPercent>, Invalid> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if i < 0 => {
                invalid(path, format!("must be greater than or equal to 0, got {i}"))
            }
            Some(i) => u32::try_from(i)
                .map(|i| Some(api::IntOrPercent::Int(i)))
                .or_else(|_| invalid(path, format!("must be at most {}, got {i}", u32::MAX))),
            None => invalid(path, format!("must be an integer or a percentage, got {n}")),
        },
        Some(Value::String(text)) => match api::IntOrPercent::parse_percent(&text) {
            Some(p) => Ok(Some(p)),
            None => invalid(
                path,
                format!(
                    "{text:?}: a valid percent string must be a numeric string followed by an \
                     ending '%' (e.g. '1%' or '93%')"
                ),
            ),
        },
        Some(other) => invalid(
            path,
            format!("must be an integer or a percentage, got {other:?}"),
        ),
    }
}

fn pod(input: InPod) -> Result<api::Pod, Invalid> {
    Ok(api::Pod {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        metadata: object_meta(input.metadata, MAX_NAME_LEN)?,
        spec: pod_spec("spec", input.spec)?,
        status: api::PodStatus::default(),
    })
}

fn object_meta(meta: InMeta, max_name_len: usize) -> Result<api::ObjectMeta, Invalid> {
    let Some(name) = meta.name else {
        return invalid("metadata.name", "required");
    };
    dns_label("metadata.name", &name, max_name_len)?;
    if let Some(ns) = meta.namespace {
        if ns != "default" {
            return invalid(
                "metadata.namespace",
                format!("only the \"default\" namespace is supported, got {ns:?}"),
            );
        }
    }
    labels("metadata.labels", &meta.labels)?;
    annotations("metadata.annotations", &meta.annotations)?;
    Ok(api::ObjectMeta {
        name,
        labels: meta.labels,
        annotations: meta.annotations,
        ..Default::default()
    })
}

/// Kubernetes' probe defaults.
const PROBE_PERIOD_SECONDS: u32 = 10;
const PROBE_TIMEOUT_SECONDS: u32 = 1;
const PROBE_SUCCESS_THRESHOLD: u32 = 1;
const PROBE_FAILURE_THRESHOLD: u32 = 3;

/// Whether a container runs to completion before the others (an init container) or
/// alongside them: init containers may not have probes, as in Kubernetes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ContainerKind {
    Init,
    Main,
}

fn pod_spec(path: &str, spec: InPodSpec) -> Result<api::PodSpec, Invalid> {
    if spec.containers.is_empty() {
        return invalid(
            format!("{path}.containers"),
            "at least one container is required",
        );
    }
    for (k, v) in &spec.node_selector {
        let p = format!("{path}.nodeSelector");
        qualified_name(&p, k)?;
        label_value(&format!("{p}.{k}"), v)?;
    }
    let grace = match spec.termination_grace_period_seconds {
        None => None,
        Some(s) => Some(u32::try_from(s).map_err(|_| {
            (
                format!("{path}.terminationGracePeriodSeconds"),
                format!("must be between 0 and {}, got {s}", u32::MAX),
            )
        })?),
    };
    let volumes = volumes(path, spec.volumes)?;
    let volume_names: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut convert = |field: &str,
                       kind: ContainerKind,
                       input: Vec<InContainer>|
     -> Result<Vec<api::Container>, Invalid> {
        let mut out = Vec::with_capacity(input.len());
        for (i, c) in input.into_iter().enumerate() {
            let cpath = format!("{path}.{field}[{i}]");
            let c = container(&cpath, c, spec.host_network, &volume_names, kind)?;
            if !names.insert(c.name.clone()) {
                return invalid(
                    format!("{cpath}.name"),
                    format!("duplicate container name {:?}", c.name),
                );
            }
            for (j, p) in c.ports.iter().enumerate() {
                if let Some(hp) = p.host_port {
                    if !host_ports.insert((hp, p.protocol == api::Protocol::UDP)) {
                        return invalid(
                            format!("{cpath}.ports[{j}].hostPort"),
                            format!("duplicate host port {hp}/{:?} in the pod", p.protocol),
                        );
                    }
                }
            }
            out.push(c);
        }
        Ok(out)
    };
    let init_containers = convert("initContainers", ContainerKind::Init, spec.init_containers)?;
    let containers = convert("containers", ContainerKind::Main, spec.containers)?;
    let mut image_pull_secrets = Vec::with_capacity(spec.image_pull_secrets.len());
    for (i, r) in spec.image_pull_secrets.into_iter().enumerate() {
        let p = format!("{path}.imagePullSecrets[{i}].name");
        let name = required(&p, r.name)?;
        secret_name(&p, &name)?;
        image_pull_secrets.push(api::LocalObjectReference { name });
    }
    let sc = spec.security_context;
    let security_context = api::PodSecurityContext {
        run_as_user: id(&format!("{path}.securityContext.runAsUser"), sc.run_as_user)?,
        run_as_group: id(
            &format!("{path}.securityContext.runAsGroup"),
            sc.run_as_group,
        )?,
        seccomp_profile: seccomp_profile(
            &format!("{path}.securityContext.seccompProfile"),
            sc.seccomp_profile,
        )?,
    };
    Ok(api::PodSpec {
        containers,
        node_selector: spec.node_selector,
        host_network: spec.host_network,
        restart_policy: spec.restart_policy.unwrap_or_default(),
        termination_grace_period_seconds: grace,
        node_name: None,
        init_containers,
        volumes,
        image_pull_secrets,
        security_context,
    })
}

fn required<T>(path: &str, v: Option<T>) -> Result<T, Invalid> {
    v.ok_or_else(|| (path.to_owned(), "required".to_owned()))
}

/// A user or group id: Kubernetes allows 0..=2147483647.
fn id(path: &str, v: Option<i64>) -> Result<Option<u32>, Invalid> {
    match v {
        None => Ok(None),
        Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => invalid(path, format!("must be between 0 and 2147483647, got {n}")),
    }
}

/// A secret's name: a DNS subdomain, as Kubernetes requires.
fn secret_name(path: &str, name: &str) -> Result<(), Invalid> {
    if dns_subdomain(name) {
        Ok(())
    } else {
        invalid(
            path,
            format!(
                "{name:?} must be a lowercase RFC 1123 subdomain: labels of alphanumerics or \
                 '-' separated by '.', at most 253 characters"
            ),
        )
    }
}

/// A key of a secret: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn secret_key(path: &str, key: &str) -> Result<(), Invalid> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && key != "."
        && key != "..";
    if ok {
        Ok(())
    } else {
        invalid(
            path,
            format!(
                "{key:?}: a valid key must consist of alphanumerics, '-', '_' or '.' (at most 253)"
            ),
        )
    }
}

/// An absolute path without `..` components: mount points and host paths.
fn absolute_path(path: &str, p: &str) -> Result<(), Invalid> {
    if !p.starts_with('/') {
        return invalid(path, format!("{p:?} must be an absolute path"));
    }
    if p.split('/').any(|c| c == "..") {
        return invalid(path, format!("{p:?} must not contain '..'"));
    }
    if p.contains('\0') {
        return invalid(path, "must not contain NUL");
    }
    Ok(())
}

/// The runtime (OCI `process.cwd`) needs an absolute directory, resolved inside the
/// container's root: a relative one was accepted and then crash-looped on the node.
/// `..` is harmless there, so unlike a mount path it is allowed; empty means unset, as
/// in Kubernetes.
fn working_dir(path: &str, w: String) -> Result<String, Invalid> {
    if !w.starts_with('/') {
        return invalid(path, format!("{w:?} must be an absolute path"));
    }
    if w.contains('\0') {
        return invalid(path, "must not contain NUL");
    }
    Ok(w)
}

fn volumes(path: &str, input: Vec<InVolume>) -> Result<Vec<api::Volume>, Invalid> {
    let mut out: Vec<api::Volume> = Vec::with_capacity(input.len());
    for (i, v) in input.into_iter().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        let name = required(&format!("{vpath}.name"), v.name)?;
        dns_label(&format!("{vpath}.name"), &name, MAX_NAME_LEN)?;
        if out.iter().any(|o| o.name == name) {
            return invalid(
                format!("{vpath}.name"),
                format!("duplicate volume name {name:?}"),
            );
        }
        let mut sources = Vec::new();
        if let Some(s) = v.secret {
            let p = format!("{vpath}.secret.secretName");
            let secret = required(&p, s.secret_name)?;
            secret_name(&p, &secret)?;
            sources.push(api::VolumeSource::Secret {
                secret_name: secret,
            });
        }
        if let Some(e) = v.empty_dir {
            if let Some(limit) = &e.size_limit {
                quantity::parse_memory_bytes(limit)
                    .map_err(|err| (format!("{vpath}.emptyDir.sizeLimit"), err.to_string()))?;
            }
            sources.push(api::VolumeSource::EmptyDir {
                size_limit: e.size_limit,
            });
        }
        if let Some(h) = v.host_path {
            let p = format!("{vpath}.hostPath.path");
            let hp = required(&p, h.path)?;
            absolute_path(&p, &hp)?;
            sources.push(api::VolumeSource::HostPath { path: hp });
        }
        let source = match sources.len() {
            0 => {
                return invalid(
                    vpath,
                    "must specify a volume type: secret, emptyDir or hostPath",
                )
            }
            1 => sources.remove(0),
            _ => return invalid(vpath, "may not specify more than 1 volume type"),
        };
        out.push(api::Volume { name, source });
    }
    Ok(out)
}

fn container(
    path: &str,
    c: InContainer,
    host_network: bool,
    volume_names: &BTreeSet<&str>,
    kind: ContainerKind,
) -> Result<api::Container, Invalid> {
    let Some(name) = c.name else {
        return invalid(format!("{path}.name"), "required");
    };
    dns_label(&format!("{path}.name"), &name, MAX_NAME_LEN)?;
    let image = c.image.unwrap_or_default();
    if image.is_empty() {
        return invalid(format!("{path}.image"), "required");
    }
    if image.chars().any(|ch| ch.is_whitespace()) {
        return invalid(format!("{path}.image"), "must not contain whitespace");
    }
    let mut env = Vec::with_capacity(c.env.len());
    for (i, e) in c.env.into_iter().enumerate() {
        // Kubernetes 1.34 relaxed env names from C identifiers to any printable ASCII
        // except '='; Baton follows the current rule.
        if e.name.is_empty()
            || !e
                .name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'=')
        {
            return invalid(
                format!("{path}.env[{i}].name"),
                format!("{:?} must be non-empty printable ASCII without '='", e.name),
            );
        }
        let value_from = match e.value_from {
            None => None,
            Some(from) => {
                let fpath = format!("{path}.env[{i}].valueFrom");
                if !e.value.is_empty() {
                    return invalid(fpath, "may not be specified when `value` is not empty");
                }
                let Some(r) = from.secret_key_ref else {
                    return invalid(fpath, "must specify secretKeyRef");
                };
                let rpath = format!("{fpath}.secretKeyRef");
                let secret = required(&format!("{rpath}.name"), r.name)?;
                secret_name(&format!("{rpath}.name"), &secret)?;
                let key = required(&format!("{rpath}.key"), r.key)?;
                secret_key(&format!("{rpath}.key"), &key)?;
                Some(api::EnvVarSource {
                    secret_key_ref: api::SecretKeySelector { name: secret, key },
                })
            }
        };
        env.push(api::EnvVar {
            name: e.name,
            value: e.value,
            value_from,
        });
    }
    let mut ports = Vec::with_capacity(c.ports.len());
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.into_iter().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        let container_port = port(&format!("{ppath}.containerPort"), p.container_port)?;
        let host_port = match p.host_port {
            None => None,
            Some(hp) => Some(port(&format!("{ppath}.hostPort"), hp)?),
        };
        if host_network && host_port.is_some_and(|hp| hp != container_port) {
            return invalid(
                format!("{ppath}.hostPort"),
                "must match containerPort when hostNetwork is true",
            );
        }
        if let Some(n) = &p.name {
            port_name(&format!("{ppath}.name"), n)?;
            if !port_names.insert(n.clone()) {
                return invalid(
                    format!("{ppath}.name"),
                    format!("duplicate port name {n:?}"),
                );
            }
        }
        ports.push(api::ContainerPort {
            name: p.name,
            container_port,
            host_port,
            protocol: p.protocol.unwrap_or_default(),
        });
    }
    let resources = resources(&format!("{path}.resources"), c.resources)?;
    let mut volume_mounts: Vec<api::VolumeMount> = Vec::with_capacity(c.volume_mounts.len());
    for (i, m) in c.volume_mounts.into_iter().enumerate() {
        let mpath = format!("{path}.volumeMounts[{i}]");
        let vname = required(&format!("{mpath}.name"), m.name)?;
        if !volume_names.contains(vname.as_str()) {
            return invalid(
                format!("{mpath}.name"),
                format!("no volume named {vname:?} in the pod's volumes"),
            );
        }
        let mount_path = required(&format!("{mpath}.mountPath"), m.mount_path)?;
        absolute_path(&format!("{mpath}.mountPath"), &mount_path)?;
        if volume_mounts.iter().any(|o| o.mount_path == mount_path) {
            return invalid(
                format!("{mpath}.mountPath"),
                format!("{mount_path:?} must be unique"),
            );
        }
        volume_mounts.push(api::VolumeMount {
            name: vname,
            mount_path,
            read_only: m.read_only,
        });
    }
    let mut probes = [
        ("livenessProbe", c.liveness_probe, true),
        ("readinessProbe", c.readiness_probe, false),
        ("startupProbe", c.startup_probe, true),
    ]
    .into_iter()
    .map(|(field, p, single_success)| {
        let ppath = format!("{path}.{field}");
        match p {
            None => Ok(None),
            Some(_) if kind == ContainerKind::Init => {
                invalid(ppath, "must not be set for init containers")
            }
            Some(p) => probe(&ppath, p, &ports, single_success).map(Some),
        }
    })
    .collect::<Result<Vec<_>, Invalid>>()?
    .into_iter();
    let (liveness_probe, readiness_probe, startup_probe) = (
        probes.next().flatten(),
        probes.next().flatten(),
        probes.next().flatten(),
    );
    let security_context = c
        .security_context
        .map(|sc| security_context(&format!("{path}.securityContext"), sc))
        .transpose()?;
    Ok(api::Container {
        name,
        image,
        image_pull_policy: c.image_pull_policy,
        command: c.command,
        args: c.args,
        env,
        working_dir: c
            .working_dir
            .filter(|w| !w.is_empty())
            .map(|w| working_dir(&format!("{path}.workingDir"), w))
            .transpose()?,
        ports,
        resources,
        volume_mounts,
        liveness_probe,
        readiness_probe,
        startup_probe,
        security_context,
    })
}

fn security_context(path: &str, sc: InSecurityContext) -> Result<api::SecurityContext, Invalid> {
    let capabilities = match sc.capabilities {
        None => None,
        Some(caps) => {
            let list = |which: &str, v: Vec<String>| -> Result<Vec<String>, Invalid> {
                v.into_iter()
                    .enumerate()
                    .map(|(i, cap)| capability(&format!("{path}.capabilities.{which}[{i}]"), &cap))
                    .collect()
            };
            Some(api::Capabilities {
                add: list("add", caps.add)?,
                drop: list("drop", caps.drop)?,
            })
        }
    };
    Ok(api::SecurityContext {
        privileged: sc.privileged,
        capabilities,
        run_as_user: id(&format!("{path}.runAsUser"), sc.run_as_user)?,
        run_as_group: id(&format!("{path}.runAsGroup"), sc.run_as_group)?,
        read_only_root_filesystem: sc.read_only_root_filesystem,
        seccomp_profile: seccomp_profile(&format!("{path}.seccompProfile"), sc.seccomp_profile)?,
    })
}

/// `seccompProfile` at `path`. Only `RuntimeDefault` and `Unconfined` are supported: a
/// `Localhost` profile is a file on the node the coordinator cannot check, refused by name
/// rather than run with some other filter.
fn seccomp_profile(
    path: &str,
    p: Option<InSeccompProfile>,
) -> Result<Option<api::SeccompProfile>, Invalid> {
    let Some(p) = p else {
        return Ok(None);
    };
    let tpath = format!("{path}.type");
    let typ = match required(&tpath, p.typ)?.as_str() {
        "RuntimeDefault" => api::SeccompProfileType::RuntimeDefault,
        "Unconfined" => api::SeccompProfileType::Unconfined,
        "Localhost" => {
            return invalid(
                tpath,
                "Localhost seccomp profiles are not supported by Baton (use RuntimeDefault, or Unconfined where the coordinator's policy allows it)",
            )
        }
        other => {
            return invalid(
                tpath,
                format!("{other:?} must be RuntimeDefault, Unconfined or Localhost"),
            )
        }
    };
    if p.localhost_profile.is_some() {
        return invalid(
            format!("{path}.localhostProfile"),
            "may only be set with type Localhost",
        );
    }
    Ok(Some(api::SeccompProfile { typ }))
}

/// A capability name as Kubernetes writes it (`NET_ADMIN`); a `CAP_` prefix is dropped
/// so `CAP_NET_ADMIN` and `NET_ADMIN` are one capability for the policy.
fn capability(path: &str, cap: &str) -> Result<String, Invalid> {
    let name = cap.strip_prefix("CAP_").unwrap_or(cap);
    let ok = !name.is_empty()
        && name.len() <= 28
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return invalid(
            path,
            format!("{cap:?} must be a capability name in upper case, e.g. NET_ADMIN"),
        );
    }
    Ok(name.to_owned())
}

/// A probe with Kubernetes' defaults filled in, its port resolved and its values checked
/// as the API server checks them.
fn probe(
    path: &str,
    p: InProbe,
    ports: &[api::ContainerPort],
    single_success: bool,
) -> Result<api::Probe, Invalid> {
    let mut handlers = Vec::new();
    if let Some(e) = p.exec {
        if e.command.is_empty() {
            return invalid(format!("{path}.exec.command"), "required");
        }
        handlers.push(api::ProbeHandler::Exec { command: e.command });
    }
    if let Some(h) = p.http_get {
        let hpath = format!("{path}.httpGet");
        let port = probe_port(&format!("{hpath}.port"), h.port, ports)?;
        let http_path = h
            .path
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/".into());
        if !http_path.starts_with('/') {
            return invalid(
                format!("{hpath}.path"),
                format!("{http_path:?} must start with '/'"),
            );
        }
        for (i, hd) in h.http_headers.iter().enumerate() {
            let ok = !hd.name.is_empty()
                && hd
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return invalid(
                    format!("{hpath}.httpHeaders[{i}].name"),
                    format!("{:?} must be a valid HTTP header name", hd.name),
                );
            }
        }
        handlers.push(api::ProbeHandler::HttpGet {
            path: http_path,
            port,
            scheme: h.scheme.unwrap_or_default(),
            host: probe_host(&format!("{hpath}.host"), h.host)?,
            http_headers: h
                .http_headers
                .into_iter()
                .map(|hd| api::HttpHeader {
                    name: hd.name,
                    value: hd.value,
                })
                .collect(),
        });
    }
    if let Some(t) = p.tcp_socket {
        let tpath = format!("{path}.tcpSocket");
        handlers.push(api::ProbeHandler::TcpSocket {
            port: probe_port(&format!("{tpath}.port"), t.port, ports)?,
            host: probe_host(&format!("{tpath}.host"), t.host)?,
        });
    }
    let handler = match handlers.len() {
        0 => {
            return invalid(
                path,
                "must specify a handler type: exec, httpGet or tcpSocket",
            )
        }
        1 => handlers.remove(0),
        _ => return invalid(path, "may not specify more than 1 handler type"),
    };
    let number = |field: &str, v: Option<i64>, default: u32, min: u32| -> Result<u32, Invalid> {
        let v = v.unwrap_or(i64::from(default));
        match u32::try_from(v) {
            Ok(n) if n >= min => Ok(n),
            _ => invalid(
                format!("{path}.{field}"),
                format!("must be greater than or equal to {min}, got {v}"),
            ),
        }
    };
    let success_threshold = number(
        "successThreshold",
        p.success_threshold,
        PROBE_SUCCESS_THRESHOLD,
        1,
    )?;
    if single_success && success_threshold != 1 {
        return invalid(
            format!("{path}.successThreshold"),
            format!("must be 1, got {success_threshold}"),
        );
    }
    Ok(api::Probe {
        handler,
        initial_delay_seconds: number("initialDelaySeconds", p.initial_delay_seconds, 0, 0)?,
        period_seconds: number("periodSeconds", p.period_seconds, PROBE_PERIOD_SECONDS, 1)?,
        timeout_seconds: number(
            "timeoutSeconds",
            p.timeout_seconds,
            PROBE_TIMEOUT_SECONDS,
            1,
        )?,
        success_threshold,
        failure_threshold: number(
            "failureThreshold",
            p.failure_threshold,
            PROBE_FAILURE_THRESHOLD,
            1,
        )?,
    })
}

/// A probe's `port`: a number, or the name of one of the container's ports.
fn probe_port(path: &str, v: Option<Value>, ports: &[api::ContainerPort]) -> Result<u16, Invalid> {
    match v {
        None => invalid(path, "required"),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => port(path, i),
            None => invalid(path, format!("must be an integer or a port name, got {n}")),
        },
        Some(Value::String(name)) => {
            if let Ok(i) = name.parse::<i64>() {
                return port(path, i);
            }
            port_name(path, &name)?;
            match ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
            {
                Some(p) => Ok(p.container_port),
                None => invalid(
                    path,
                    format!("no port named {name:?} in the container's ports"),
                ),
            }
        }
        Some(other) => invalid(
            path,
            format!("must be an integer or a port name, got {other:?}"),
        ),
    }
}

fn probe_host(path: &str, host: Option<String>) -> Result<Option<String>, Invalid> {
    match host {
        None => Ok(None),
        Some(h) if h.is_empty() => Ok(None),
        Some(h) if h.len() <= 253 && !h.chars().any(|c| c.is_whitespace() || c == '/') => {
            Ok(Some(h))
        }
        Some(h) => invalid(path, format!("{h:?} must be a host name or an address")),
    }
}

/// Bytes a sealed secret adds to its content: the X25519 key (32), the AEAD tag (16), and
/// postcard's length prefixes (a count, and two varints of at most 3 bytes per item).
pub fn sealed_overhead(items: usize) -> usize {
    32 + 16 + 2 + items * 6
}

fn secret(input: InSecret) -> Result<api::Secret, Invalid> {
    let meta = input.metadata;
    let Some(name) = meta.name.clone() else {
        return invalid("metadata.name", "required");
    };
    secret_name("metadata.name", &name)?;
    let metadata = object_meta(
        InMeta {
            name: Some("x".into()),
            ..meta
        },
        MAX_NAME_LEN,
    )
    .map(|m| api::ObjectMeta { name, ..m })?;
    let type_ = match input.type_.as_deref() {
        None | Some("Opaque") => api::SecretType::Opaque,
        Some(api::DOCKER_CONFIG_JSON_TYPE) => api::SecretType::DockerConfigJson,
        Some(other) => {
            return invalid(
                "type",
                format!(
                    "{other:?} is not supported by Baton; supported: Opaque, {}",
                    api::DOCKER_CONFIG_JSON_TYPE
                ),
            )
        }
    };
    let mut data = BTreeMap::new();
    for (k, v) in input.data {
        let p = format!("data.{k}");
        secret_key(&p, &k)?;
        let bytes = api::base64::decode(v.trim())
            .ok_or_else(|| (p.clone(), "invalid base64".to_owned()))?;
        data.insert(k, bytes);
    }
    // As in Kubernetes, `stringData` is merged into `data` and wins on a shared key.
    for (k, v) in input.string_data {
        secret_key(&format!("stringData.{k}"), &k)?;
        data.insert(k, v.into_bytes());
    }
    if data.len() > MAX_SECRET_KEYS {
        return invalid(
            "data",
            format!(
                "at most {MAX_SECRET_KEYS} keys are supported, got {}",
                data.len()
            ),
        );
    }
    let secret = api::Secret {
        api_version: "v1".into(),
        kind: "Secret".into(),
        metadata,
        type_,
        data,
    };
    let size = secret.size_bytes() + sealed_overhead(secret.data.len());
    if size > baton_proto::MAX_SEALED_BYTES {
        return invalid(
            "data",
            format!(
                "the secret is {size} bytes (keys, values and encryption overhead); at most {} \
                 are supported",
                baton_proto::MAX_SEALED_BYTES
            ),
        );
    }
    if type_ == api::SecretType::DockerConfigJson {
        let key = api::DOCKER_CONFIG_JSON_KEY;
        let Some(json) = secret.data.get(key) else {
            return invalid(
                format!("data[{key}]"),
                format!("required for type {}", api::DOCKER_CONFIG_JSON_TYPE),
            );
        };
        match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return invalid(format!("data[{key}]"), "must be a JSON object"),
            Err(e) => return invalid(format!("data[{key}]"), format!("invalid JSON: {e}")),
        }
    }
    Ok(secret)
}

fn resources(path: &str, r: InResources) -> Result<api::ResourceRequirements, Invalid> {
    let cpu = |which: &str, v: &Option<String>| -> Result<Option<u32>, Invalid> {
        v.as_deref()
            .map(|s| {
                quantity::parse_cpu_millis(s)
                    .map_err(|e| (format!("{path}.{which}.cpu"), e.to_string()))
            })
            .transpose()
    };
    let memory = |which: &str, v: &Option<String>| -> Result<Option<u64>, Invalid> {
        v.as_deref()
            .map(|s| {
                quantity::parse_memory_bytes(s)
                    .map_err(|e| (format!("{path}.{which}.memory"), e.to_string()))
            })
            .transpose()
    };
    if let (Some(req), Some(lim)) = (
        cpu("requests", &r.requests.cpu)?,
        cpu("limits", &r.limits.cpu)?,
    ) {
        if req > lim {
            return invalid(
                format!("{path}.requests.cpu"),
                format!(
                    "request {} must be less than or equal to the limit {}",
                    quantity::format_cpu(req.into()),
                    quantity::format_cpu(lim.into())
                ),
            );
        }
    }
    if let (Some(req), Some(lim)) = (
        memory("requests", &r.requests.memory)?,
        memory("limits", &r.limits.memory)?,
    ) {
        if req > lim {
            return invalid(
                format!("{path}.requests.memory"),
                format!(
                    "request {} must be less than or equal to the limit {}",
                    quantity::format_memory(req),
                    quantity::format_memory(lim)
                ),
            );
        }
    }
    Ok(api::ResourceRequirements {
        requests: api::ResourceList {
            cpu: r.requests.cpu,
            memory: r.requests.memory,
        },
        limits: api::ResourceList {
            cpu: r.limits.cpu,
            memory: r.limits.memory,
        },
    })
}

fn port(path: &str, p: i64) -> Result<u16, Invalid> {
    match u16::try_from(p) {
        Ok(p) if p >= 1 => Ok(p),
        _ => invalid(path, format!("must be between 1 and 65535, got {p}")),
    }
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
fn dns_label(path: &str, s: &str, max: usize) -> Result<(), Invalid> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1]);
    if !ok {
        return invalid(
            path,
            format!(
                "{s:?} must consist of lowercase alphanumerics or '-' and start and end \
                 with an alphanumeric (RFC 1123 label)"
            ),
        );
    }
    if s.len() > max {
        return invalid(path, format!("{s:?} must be at most {max} characters"));
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
                && is_alnum_lower(b[0])
                && is_alnum_lower(b[b.len() - 1])
        })
}

/// The name part of a label key, and a label value: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
fn label_name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name` with a DNS subdomain prefix.
fn qualified_name(path: &str, key: &str) -> Result<(), Invalid> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !dns_subdomain(p)) || !label_name_chars(name) {
        return invalid(
            format!("{path}.{key}"),
            "key must be [prefix/]name: a DNS subdomain prefix and a name of at most 63 \
             alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        );
    }
    Ok(())
}

fn label_value(path: &str, v: &str) -> Result<(), Invalid> {
    if v.is_empty() || label_name_chars(v) {
        return Ok(());
    }
    invalid(
        path,
        format!(
            "{v:?} must be at most 63 alphanumerics, '-', '_' or '.', starting and ending \
             alphanumeric"
        ),
    )
}

fn labels(path: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in labels {
        qualified_name(path, k)?;
        label_value(&format!("{path}.{k}"), v)?;
    }
    Ok(())
}

fn annotations(path: &str, annotations: &BTreeMap<String, String>) -> Result<(), Invalid> {
    annotations.keys().try_for_each(|k| qualified_name(path, k))
}

/// IANA service name, as Kubernetes requires for port names.
fn port_name(path: &str, n: &str) -> Result<(), Invalid> {
    let b = n.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !n.contains("--");
    if !ok {
        return invalid(
            path,
            format!(
                "{n:?} must be at most 15 lowercase alphanumerics or '-', contain a letter, \
                 and not start, end or repeat '-' (IANA service name)"
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
