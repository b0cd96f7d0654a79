use baton_proto as proto;

use super::*;
use crate::model::api;

fn pod(containers: Vec<api::Container>, policy: api::RestartPolicy) -> api::Pod {
    api::Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: api::ObjectMeta {
            name: "web-abcde".into(),
            uid: "u1".into(),
            ..Default::default()
        },
        spec: api::PodSpec {
            containers,
            restart_policy: policy,
            ..Default::default()
        },
        status: Default::default(),
    }
}

fn container(image: &str) -> api::Container {
    api::Container {
        name: "c".into(),
        image: image.into(),
        ..Default::default()
    }
}

#[test]
fn pull_policy_defaults_like_kubernetes() {
    use api::PullPolicy::*;
    for (image, want) in [
        ("nginx", Always),
        ("nginx:latest", Always),
        ("nginx:1.25", IfNotPresent),
        ("127.0.0.1:5000/app", Always),
        ("127.0.0.1:5000/app:v1", IfNotPresent),
        ("busybox@sha256:abcd", IfNotPresent),
    ] {
        assert_eq!(default_pull_policy(image), want, "{image}");
    }
}

#[test]
fn requests_default_to_limits() {
    let mut c = container("app:v1");
    c.resources.limits.cpu = Some("500m".into());
    c.resources.limits.memory = Some("64Mi".into());
    c.resources.requests.cpu = Some("100m".into());
    let p = pod(vec![c], api::RestartPolicy::Always);
    let spec = pod_spec(&p).unwrap();
    let r = spec.containers[0].resources;
    assert_eq!(r.cpu_request_millis, 100);
    assert_eq!(r.cpu_limit_millis, Some(500));
    assert_eq!(r.memory_request_bytes, 64 << 20);
    assert_eq!(r.memory_limit_bytes, Some(64 << 20));
    assert_eq!(
        spec.containers[0].image_pull_policy,
        proto::PullPolicy::IfNotPresent
    );
}

#[test]
fn oversized_fields_are_refused_not_truncated() {
    let mut c = container("app:v1");
    c.env.push(api::EnvVar {
        name: "X".into(),
        value: "x".repeat(5000),
        value_from: None,
    });
    let err = pod_spec(&pod(vec![c], api::RestartPolicy::Always)).unwrap_err();
    assert!(
        err.to_string().contains("spec.containers[0].env.value"),
        "{err}"
    );
}

fn status(states: Vec<proto::ContainerState>) -> proto::PodStatus {
    let containers = states
        .into_iter()
        .map(|state| proto::ContainerStatus {
            name: BString::new("c").unwrap(),
            state,
            restart_count: 0,
            last_termination: None,
            ready: true,
        })
        .collect();
    proto::PodStatus {
        name: BString::new("web-abcde").unwrap(),
        uid: BString::new("u1").unwrap(),
        pod_ip: Some("10.42.0.5".parse().unwrap()),
        containers: BVec::from_vec(containers).unwrap(),
        init_containers: BVec::new(),
        evicted: None,
    }
}

#[test]
fn phases() {
    use api::RestartPolicy::*;
    use proto::ContainerState as S;
    let running = S::Running {
        started_at_ms: 1_700_000_000_000,
    };
    let cases = [
        (
            vec![running.clone(), running.clone()],
            Always,
            api::PodPhase::Running,
        ),
        (
            vec![running.clone(), S::Pulling],
            Always,
            api::PodPhase::Pending,
        ),
        (vec![S::OomKilled], Never, api::PodPhase::Failed),
        (vec![S::OomKilled], Always, api::PodPhase::Pending),
        (
            vec![S::Exited { code: 1 }, running.clone()],
            Never,
            api::PodPhase::Failed,
        ),
        (vec![S::Exited { code: 0 }], Never, api::PodPhase::Succeeded),
        (
            vec![S::Exited { code: 0 }],
            OnFailure,
            api::PodPhase::Succeeded,
        ),
        (vec![S::Exited { code: 0 }], Always, api::PodPhase::Pending),
        (vec![], Always, api::PodPhase::Pending),
    ];
    for (states, policy, want) in cases {
        let spec = api::PodSpec {
            restart_policy: policy,
            ..Default::default()
        };
        let got = pod_status(&status(states.clone()), &spec, None);
        assert_eq!(got.phase, want, "{states:?} {policy:?}");
    }
    let st = pod_status(
        &status(vec![running]),
        &api::PodSpec::default(),
        Some("192.168.1.9".into()),
    );
    assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.5"));
    assert!(st.container_statuses[0].ready);
    assert!(
        matches!(&st.container_statuses[0].state, api::ContainerState::Running { started_at } if started_at.starts_with("2023-11-14"))
    );
}

fn parse_pod(yaml: &str) -> api::Pod {
    match crate::model::manifest::parse_manifests(yaml)
        .unwrap()
        .remove(0)
    {
        api::Object::Pod(mut p) => {
            p.metadata.uid = "u1".into();
            p
        }
        _ => panic!("not a pod"),
    }
}

#[test]
fn pod_features_reach_the_wire() {
    let p = parse_pod(
            "\
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 2000}
  imagePullSecrets: [{name: regcred}]
  volumes:
  - {name: work, emptyDir: {sizeLimit: 16Mi}}
  - {name: creds, secret: {secretName: db}}
  - {name: host, hostPath: {path: /srv/data}}
  initContainers:
  - name: fetch
    image: busybox:1
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: web
    image: busybox:1
    ports: [{name: http, containerPort: 8080}]
    env:
    - {name: A, value: b}
    - name: PW
      valueFrom: {secretKeyRef: {name: db, key: pw}}
    volumeMounts: [{name: work, mountPath: /work, readOnly: true}]
    livenessProbe: {httpGet: {path: /healthz, port: http, scheme: HTTPS, httpHeaders: [{name: X, value: y}]}}
    readinessProbe: {tcpSocket: {port: 8080, host: 127.0.0.1}, periodSeconds: 2}
    startupProbe: {exec: {command: [cat, /work/x]}, failureThreshold: 30}
    securityContext:
      runAsUser: 0
      privileged: true
      readOnlyRootFilesystem: true
      capabilities: {add: [NET_ADMIN], drop: [ALL]}
",
        );
    let spec = pod_spec(&p).unwrap();
    assert_eq!(spec.init_containers.len(), 1);
    assert_eq!(spec.init_containers[0].name.as_str(), "fetch");
    assert_eq!(
        spec.init_containers[0].security.run_as_user,
        Some(1000),
        "the pod's user is the default"
    );
    assert_eq!(spec.image_pull_secrets[0].as_str(), "regcred");
    assert_eq!(
        spec.volumes
            .iter()
            .map(|v| v.source.clone())
            .collect::<Vec<_>>(),
        vec![
            proto::VolumeSource::EmptyDir {
                size_limit_bytes: Some(16 << 20)
            },
            proto::VolumeSource::Secret {
                secret_name: BString::new("db").unwrap()
            },
            proto::VolumeSource::HostPath {
                path: BString::new("/srv/data").unwrap()
            },
        ]
    );
    let c = &spec.containers[0];
    assert_eq!(
        c.env[1].value,
        proto::EnvValue::SecretKey {
            secret: BString::new("db").unwrap(),
            key: BString::new("pw").unwrap(),
        }
    );
    assert_eq!(
        c.volume_mounts[0],
        proto::VolumeMount {
            name: BString::new("work").unwrap(),
            mount_path: BString::new("/work").unwrap(),
            read_only: true,
        }
    );
    let live = c.liveness_probe.as_ref().unwrap();
    assert_eq!(
        live.handler,
        proto::ProbeHandler::HttpGet {
            path: BString::new("/healthz").unwrap(),
            port: 8080,
            https: true,
            host: None,
            headers: BVec::from_vec(vec![proto::HttpHeader {
                name: BString::new("X").unwrap(),
                value: BString::new("y").unwrap(),
            }])
            .unwrap(),
        }
    );
    assert_eq!(
        (live.period_secs, live.timeout_secs, live.failure_threshold),
        (10, 1, 3)
    );
    let ready = c.readiness_probe.as_ref().unwrap();
    assert_eq!(ready.period_secs, 2);
    assert!(matches!(
        &ready.handler,
        proto::ProbeHandler::TcpSocket { port: 8080, host: Some(h) } if h.as_str() == "127.0.0.1"
    ));
    assert_eq!(c.startup_probe.as_ref().unwrap().failure_threshold, 30);
    let sec = &c.security;
    assert!(sec.privileged && sec.read_only_root_filesystem);
    assert_eq!(
        sec.run_as_user,
        Some(0),
        "the container's user wins over the pod's"
    );
    assert_eq!(sec.run_as_group, Some(2000));
    assert_eq!(sec.capabilities_add[0].as_str(), "NET_ADMIN");
    assert_eq!(sec.capabilities_drop[0].as_str(), "ALL");
}

#[test]
fn priority_classes_reach_the_wire_resolved() {
    let spec = |extra: &str| {
        let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{extra}  containers: [{{name: c, image: busybox:1}}]\n");
        pod_spec(&parse_pod(&yaml)).unwrap()
    };
    let node = spec("  priorityClassName: system-node-critical\n");
    assert_eq!(node.priority, proto::SYSTEM_NODE_CRITICAL_PRIORITY);
    assert!(node.is_critical());
    let cluster = spec("  priorityClassName: system-cluster-critical\n");
    assert_eq!(cluster.priority, 2_000_000_000);
    assert!(cluster.is_critical());
    let plain = spec("");
    assert_eq!(plain.priority, 0);
    assert!(!plain.is_critical());
}

#[test]
fn seccomp_profiles_resolve_container_over_pod() {
    let yaml = |pod_sc: &str, c_sc: &str| {
        format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{pod_sc}  initContainers:\n  - {{name: i, image: busybox:1}}\n  containers:\n  - name: c\n    image: busybox:1\n{c_sc}"
            )
    };
    let profiles = |pod_sc: &str, c_sc: &str| {
        let spec = pod_spec(&parse_pod(&yaml(pod_sc, c_sc))).unwrap();
        (
            spec.init_containers[0].security.seccomp,
            spec.containers[0].security.seccomp,
        )
    };
    use proto::SeccompProfile::{Default, RuntimeDefault, Unconfined};
    assert_eq!(profiles("", ""), (Default, Default));
    assert_eq!(
        profiles(
            "  securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
            ""
        ),
        (RuntimeDefault, RuntimeDefault)
    );
    assert_eq!(
        profiles(
            "  securityContext: {seccompProfile: {type: Unconfined}}\n",
            "    securityContext: {seccompProfile: {type: RuntimeDefault}}\n"
        ),
        (Unconfined, RuntimeDefault)
    );
    assert_eq!(
        profiles(
            "",
            "    securityContext: {seccompProfile: {type: Unconfined}}\n"
        ),
        (Default, Unconfined)
    );
}

fn cstatus(
    name: &str,
    state: proto::ContainerState,
    restarts: u32,
    ready: bool,
) -> proto::ContainerStatus {
    proto::ContainerStatus {
        name: BString::new(name).unwrap(),
        state,
        restart_count: restarts,
        ready,
        last_termination: None,
    }
}

fn report(
    inits: Vec<proto::ContainerStatus>,
    main: Vec<proto::ContainerStatus>,
) -> proto::PodStatus {
    proto::PodStatus {
        name: BString::new("web-abcde").unwrap(),
        uid: BString::new("u1").unwrap(),
        pod_ip: None,
        containers: BVec::from_vec(main).unwrap(),
        init_containers: BVec::from_vec(inits).unwrap(),
        evicted: None,
    }
}

#[test]
fn readiness_comes_from_the_agent() {
    use proto::ContainerState as S;
    let run = S::Running {
        started_at_ms: 1_700_000_000_000,
    };
    let st = pod_status(
        &report(
            vec![],
            vec![
                cstatus("a", run.clone(), 0, false),
                cstatus("b", run, 0, true),
                // A stopped container is never ready, whatever the report says.
                cstatus("c", S::Exited { code: 0 }, 0, true),
            ],
        ),
        &api::PodSpec::default(),
        None,
    );
    let ready: Vec<bool> = st.container_statuses.iter().map(|c| c.ready).collect();
    assert_eq!(ready, [false, true, false]);
}

#[test]
fn init_containers_reasons_and_last_termination() {
    use api::RestartPolicy::*;
    use proto::ContainerState as S;
    let run = || S::Running {
        started_at_ms: 1_700_000_000_000,
    };
    let done = || cstatus("i", S::Exited { code: 0 }, 0, false);
    let waiting = || vec![cstatus("m", S::Pending, 0, false)];
    let spec = |policy| api::PodSpec {
        restart_policy: policy,
        ..Default::default()
    };
    let reasons = |st: &api::PodStatus| -> (Vec<Option<String>>, Vec<Option<String>>) {
        (
            st.init_container_statuses
                .iter()
                .map(|c| c.reason.clone())
                .collect(),
            st.container_statuses
                .iter()
                .map(|c| c.reason.clone())
                .collect(),
        )
    };
    let s = |v: &str| Some(v.to_string());
    // Init container running: the pod is Pending and its main container initializing.
    let st = pod_status(
        &report(vec![cstatus("i", run(), 0, false)], waiting()),
        &spec(Always),
        None,
    );
    assert_eq!(st.phase, api::PodPhase::Pending);
    assert_eq!(reasons(&st), (vec![None], vec![s("PodInitializing")]));
    // The first failure is an Error; after a restart it is a crash loop.
    let st = pod_status(
        &report(
            vec![cstatus("i", S::Exited { code: 1 }, 0, false)],
            waiting(),
        ),
        &spec(Always),
        None,
    );
    assert_eq!(reasons(&st).0, vec![s("Error")]);
    let st = pod_status(
        &report(
            vec![cstatus("i", S::Exited { code: 1 }, 2, false)],
            waiting(),
        ),
        &spec(Always),
        None,
    );
    assert_eq!(reasons(&st).0, vec![s("CrashLoopBackOff")]);
    assert_eq!(st.phase, api::PodPhase::Pending);
    // Under Never a failed init container fails the pod and is not retried.
    let st = pod_status(
        &report(
            vec![cstatus("i", S::Exited { code: 1 }, 0, false)],
            waiting(),
        ),
        &spec(Never),
        None,
    );
    assert_eq!(st.phase, api::PodPhase::Failed);
    assert_eq!(reasons(&st).0, vec![s("Error")]);
    // All init containers done: the main containers decide.
    let st = pod_status(
        &report(vec![done(), done()], vec![cstatus("m", run(), 0, true)]),
        &spec(Always),
        None,
    );
    assert_eq!(st.phase, api::PodPhase::Running);
    assert_eq!(
        reasons(&st),
        (vec![s("Completed"), s("Completed")], vec![None])
    );
    // Main containers: OOM-killed after restarts is a crash loop under Always, and
    // a plain OOMKilled where nothing restarts it.
    let mut oom = cstatus("m", S::OomKilled, 3, false);
    oom.last_termination = Some(proto::Termination {
        exit_code: 137,
        reason: BString::new("OOMKilled").unwrap(),
        finished_at_ms: 1_700_000_000_000,
    });
    // An init container not yet started waits on the pod's initialization, which
    // kubectl shows as `Init:0/1`.
    let st = pod_status(
        &report(vec![cstatus("i", S::Pulling, 0, false)], waiting()),
        &spec(Always),
        None,
    );
    assert_eq!(
        reasons(&st),
        (vec![s("PodInitializing")], vec![s("PodInitializing")])
    );
    let st = pod_status(&report(vec![], vec![oom.clone()]), &spec(Always), None);
    assert_eq!(reasons(&st).1, vec![s("CrashLoopBackOff")]);
    let last = st.container_statuses[0]
        .last_state
        .clone()
        .unwrap()
        .terminated;
    assert_eq!(
        (
            last.exit_code,
            last.reason.as_str(),
            last.finished_at.as_str()
        ),
        (137, "OOMKilled", "2023-11-14T22:13:20Z")
    );
    let st = pod_status(&report(vec![], vec![oom]), &spec(Never), None);
    assert_eq!(reasons(&st).1, vec![s("OOMKilled")]);
    // OnFailure restarts failures only: exit 0 is Completed even after restarts.
    let st = pod_status(
        &report(vec![], vec![cstatus("m", S::Exited { code: 0 }, 2, false)]),
        &spec(OnFailure),
        None,
    );
    assert_eq!(
        (st.phase, reasons(&st).1),
        (api::PodPhase::Succeeded, vec![s("Completed")])
    );
    let st = pod_status(
        &report(vec![], vec![cstatus("m", S::Exited { code: 2 }, 2, false)]),
        &spec(OnFailure),
        None,
    );
    assert_eq!(reasons(&st).1, vec![s("CrashLoopBackOff")]);
    // JSON carries the reasons and the last state in k8s's shape.
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["containerStatuses"][0]["reason"], "CrashLoopBackOff");
}

/// The agent's connection report reaches the node's status without the control
/// characters a hostile device could use to rewrite an operator's terminal.
#[test]
fn a_hellos_connect_error_is_kept_without_control_characters() {
    let h = proto::Hello {
        arch: "arm64".try_into().unwrap(),
        arch_variant: Default::default(),
        os: "linux".try_into().unwrap(),
        agent_version: "0.1.0".try_into().unwrap(),
        allocatable: proto::Capacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pods: 110,
        },
        labels: proto::BVec::new(),
        address: None,
        pod_cidr: proto::BString::new("10.42.1.0/24").unwrap(),
        applied_generation: 0,
        last_connect_error: Some(
            proto::BString::new("connection refused\u{1b}[2J\r\n(advice)").unwrap(),
        ),
        taints: proto::BVec::new(),
    };
    let n = node_from_hello(&proto::NodeName::new("pi-1").unwrap(), &h);
    let e = n.status.last_connect_error.unwrap();
    assert_eq!(e.message, "connection refused[2J(advice)");
    assert!(!e.reported_at.is_empty());
}
