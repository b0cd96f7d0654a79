//! Pass 2 of parsing: the allow-list. A document's value is walked against the [`Shape`]
//! of its kind, which names every field Baton does not support by its path.

use serde_yaml_ng::Value;

/// What Baton accepts at a place in the document.
pub(super) enum Shape {
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
                Shape::Object(&[
                    (
                        "secretKeyRef",
                        Shape::Object(&[("name", Shape::Leaf), ("key", Shape::Leaf)]),
                    ),
                    (
                        "configMapKeyRef",
                        Shape::Object(&[
                            ("name", Shape::Leaf),
                            ("key", Shape::Leaf),
                            ("optional", Shape::Leaf),
                        ]),
                    ),
                ]),
            ),
        ])),
    ),
    (
        "envFrom",
        Shape::List(&Shape::Object(&[
            ("prefix", Shape::Leaf),
            (
                "configMapRef",
                Shape::Object(&[("name", Shape::Leaf), ("optional", Shape::Leaf)]),
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
    ("dnsPolicy", Shape::Leaf),
    (
        "dnsConfig",
        Shape::Object(&[
            ("nameservers", Shape::Leaf),
            ("searches", Shape::Leaf),
            (
                "options",
                Shape::List(&Shape::Object(&[
                    ("name", Shape::Leaf),
                    ("value", Shape::Leaf),
                ])),
            ),
        ]),
    ),
    (
        "hostAliases",
        Shape::List(&Shape::Object(&[
            ("ip", Shape::Leaf),
            ("hostnames", Shape::Leaf),
        ])),
    ),
    ("restartPolicy", Shape::Leaf),
    ("terminationGracePeriodSeconds", Shape::Leaf),
    (
        "volumes",
        Shape::List(&Shape::Object(&[
            ("name", Shape::Leaf),
            ("secret", Shape::Object(&[("secretName", Shape::Leaf)])),
            ("emptyDir", Shape::Object(&[("sizeLimit", Shape::Quantity)])),
            ("hostPath", Shape::Object(&[("path", Shape::Leaf)])),
            (
                "configMap",
                Shape::Object(&[
                    ("name", Shape::Leaf),
                    (
                        "items",
                        Shape::List(&Shape::Object(&[
                            ("key", Shape::Leaf),
                            ("path", Shape::Leaf),
                            ("mode", Shape::Leaf),
                        ])),
                    ),
                    ("defaultMode", Shape::Leaf),
                    ("optional", Shape::Leaf),
                ]),
            ),
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
    (
        "affinity",
        Shape::Object(&[(
            "nodeAffinity",
            Shape::Object(&[
                (
                    "requiredDuringSchedulingIgnoredDuringExecution",
                    Shape::Object(&[("nodeSelectorTerms", Shape::List(&NODE_SELECTOR_TERM))]),
                ),
                (
                    "preferredDuringSchedulingIgnoredDuringExecution",
                    Shape::List(&Shape::Object(&[
                        ("weight", Shape::Leaf),
                        ("preference", NODE_SELECTOR_TERM),
                    ])),
                ),
            ]),
        )]),
    ),
    (
        "tolerations",
        Shape::List(&Shape::Object(&[
            ("key", Shape::Leaf),
            ("operator", Shape::Leaf),
            ("value", Shape::Leaf),
            ("effect", Shape::Leaf),
            ("tolerationSeconds", Shape::Leaf),
        ])),
    ),
    ("priorityClassName", Shape::Leaf),
    ("priority", Shape::Leaf),
]);
/// `matchFields` is left out: it is refused by its path.
const NODE_SELECTOR_TERM: Shape = Shape::Object(&[(
    "matchExpressions",
    Shape::List(&Shape::Object(&[
        ("key", Shape::Leaf),
        ("operator", Shape::Leaf),
        ("values", Shape::Leaf),
    ])),
)]);
/// `localhostProfile` is known so that a `Localhost` profile is refused with its own
/// message (by [`seccomp_profile`](super::container::seccomp_profile)) rather than as an
/// unknown field.
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
pub(super) const DEPLOYMENT: Shape = Shape::Object(&[
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
pub(super) const DAEMON_SET: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    (
        "spec",
        Shape::Object(&[
            (
                "selector",
                Shape::Object(&[("matchLabels", Shape::FreeMap)]),
            ),
            (
                "template",
                Shape::Object(&[("metadata", TEMPLATE_META), ("spec", POD_SPEC)]),
            ),
            (
                "updateStrategy",
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
const JOB_SPEC: Shape = Shape::Object(&[
    ("completions", Shape::Leaf),
    ("parallelism", Shape::Leaf),
    ("backoffLimit", Shape::Leaf),
    ("activeDeadlineSeconds", Shape::Leaf),
    ("ttlSecondsAfterFinished", Shape::Leaf),
    (
        "template",
        Shape::Object(&[("metadata", TEMPLATE_META), ("spec", POD_SPEC)]),
    ),
]);
pub(super) const JOB: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("spec", JOB_SPEC),
    ("status", Shape::Dropped(&Shape::Any)),
]);
pub(super) const CRON_JOB: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    (
        "spec",
        Shape::Object(&[
            ("schedule", Shape::Leaf),
            ("timeZone", Shape::Leaf),
            ("concurrencyPolicy", Shape::Leaf),
            ("startingDeadlineSeconds", Shape::Leaf),
            ("suspend", Shape::Leaf),
            ("successfulJobsHistoryLimit", Shape::Leaf),
            ("failedJobsHistoryLimit", Shape::Leaf),
            (
                "jobTemplate",
                Shape::Object(&[("metadata", TEMPLATE_META), ("spec", JOB_SPEC)]),
            ),
        ]),
    ),
    ("status", Shape::Dropped(&Shape::Any)),
]);
pub(super) const POD: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("spec", POD_SPEC),
    ("status", Shape::Dropped(&Shape::Any)),
]);
pub(super) const SECRET: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("type", Shape::Leaf),
    ("data", Shape::FreeMap),
    ("stringData", Shape::FreeMap),
]);

/// A Namespace: a name, labels and annotations. `spec.finalizers` is refused by path:
/// Baton's deletion of a namespace has no finalizers.
pub(super) const NAMESPACE: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("status", Shape::Dropped(&Shape::Any)),
]);
pub(super) const CONFIG_MAP: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    ("data", Shape::FreeMap),
    ("binaryData", Shape::FreeMap),
    ("immutable", Shape::Leaf),
]);

/// A Service. Fields Baton accepts without acting on them, because their only values it
/// takes are what it does anyway (IPv4 single stack, cluster-wide traffic policies), are
/// leaves checked by `service.rs`; the rest (`externalIPs`, `loadBalancerIP`,
/// `publishNotReadyAddresses`, `ExternalName`, ...) are refused by path.
pub(super) const SERVICE: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    (
        "spec",
        Shape::Object(&[
            ("type", Shape::Leaf),
            ("clusterIP", Shape::Leaf),
            ("clusterIPs", Shape::Leaf),
            (
                "ports",
                Shape::List(&Shape::Object(&[
                    ("name", Shape::Leaf),
                    ("protocol", Shape::Leaf),
                    ("port", Shape::Leaf),
                    ("targetPort", Shape::Leaf),
                    ("nodePort", Shape::Leaf),
                ])),
            ),
            ("selector", Shape::FreeMap),
            ("sessionAffinity", Shape::Leaf),
            (
                "sessionAffinityConfig",
                Shape::Object(&[(
                    "clientIP",
                    Shape::Object(&[("timeoutSeconds", Shape::Leaf)]),
                )]),
            ),
            ("allocateLoadBalancerNodePorts", Shape::Leaf),
            ("ipFamilyPolicy", Shape::Leaf),
            ("ipFamilies", Shape::Leaf),
            ("externalTrafficPolicy", Shape::Leaf),
            ("internalTrafficPolicy", Shape::Leaf),
        ]),
    ),
    ("status", Shape::Dropped(&Shape::Any)),
]);

pub(super) const AGENT_UPDATE: Shape = Shape::Object(&[
    ("apiVersion", Shape::Leaf),
    ("kind", Shape::Leaf),
    ("metadata", META),
    (
        "spec",
        Shape::Object(&[
            ("version", Shape::Leaf),
            (
                "selector",
                Shape::Object(&[("matchLabels", Shape::FreeMap), ("arch", Shape::Leaf)]),
            ),
            (
                "canary",
                Shape::Object(&[
                    ("nodes", Shape::Leaf),
                    ("pause", Shape::Leaf),
                    ("soakSeconds", Shape::Leaf),
                ]),
            ),
            ("maxUnavailable", Shape::Leaf),
            ("failureBudget", Shape::Leaf),
            ("healthWindowSeconds", Shape::Leaf),
            ("deadlineSeconds", Shape::Leaf),
            ("allowDowngrade", Shape::Leaf),
        ]),
    ),
    ("status", Shape::Dropped(&Shape::Any)),
]);

const NOT_SUPPORTED: &str = "field not supported by Baton";

/// Checks `value` against `shape`, rewriting it in place: removes `null` fields and
/// dropped ones, and turns numeric quantities into strings. Unsupported fields are
/// collected into `unsupported`; other errors are returned as `(path, message)`.
pub(super) fn walk(
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
