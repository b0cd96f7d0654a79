//! The renderers against kubectl's output.

use super::describe::*;
use super::*;

fn ts(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}

fn pod(name: &str, node: Option<&str>, states: Vec<api::ContainerState>) -> api::Pod {
    api::Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            creation_timestamp: "2026-11-01T12:00:00Z".into(),
            ..Default::default()
        },
        spec: api::PodSpec {
            containers: (0..states.len().max(1))
                .map(|i| api::Container {
                    name: format!("c{i}"),
                    image: "busybox".into(),
                    ..Default::default()
                })
                .collect(),
            node_name: node.map(str::to_owned),
            ..Default::default()
        },
        status: api::PodStatus {
            container_statuses: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| api::ContainerStatus {
                    name: format!("c{i}"),
                    ready: matches!(state, api::ContainerState::Running { .. }),
                    state,
                    restart_count: 1,
                    ..Default::default()
                })
                .collect(),
            pod_ip: Some("10.42.0.7".into()),
            ..Default::default()
        },
    }
}

#[test]
fn status_words() {
    use api::ContainerState as S;
    let run = || S::Running {
        started_at: "x".into(),
    };
    let cases = [
        (pod("a", None, vec![]), "Pending"),
        (pod("b", Some("n"), vec![]), "Pending"),
        (pod("c", Some("n"), vec![run(), run()]), "Running"),
        (pod("d", Some("n"), vec![run(), S::Pulling]), "Pulling"),
        (pod("e", Some("n"), vec![S::OOMKilled]), "OOMKilled"),
        (
            pod("f", Some("n"), vec![S::Exited { exit_code: 2 }]),
            "Error",
        ),
        (
            pod("g", Some("n"), vec![S::Exited { exit_code: 0 }]),
            "Completed",
        ),
        (
            pod(
                "h",
                Some("n"),
                vec![S::Failed {
                    reason: "ImagePullFailed: manifest unknown".into(),
                }],
            ),
            "ImagePullFailed",
        ),
    ];
    for (p, want) in cases {
        assert_eq!(pod_status_word(&p), want, "{}", p.metadata.name);
    }
    let mut lost = pod("i", Some("n"), vec![run()]);
    lost.status.phase = api::PodPhase::Unknown;
    assert_eq!(pod_status_word(&lost), "Unknown");
}

fn status(name: &str, state: api::ContainerState, reason: Option<&str>) -> api::ContainerStatus {
    api::ContainerStatus {
        name: name.into(),
        ready: matches!(state, api::ContainerState::Running { .. }),
        state,
        reason: reason.map(str::to_owned),
        ..Default::default()
    }
}

/// A pod on a node with two init containers and one main container.
fn init_pod(inits: Vec<api::ContainerStatus>, main: Vec<api::ContainerStatus>) -> api::Pod {
    let mut p = pod("i", Some("n"), vec![]);
    p.spec.init_containers = ["a", "b"]
        .iter()
        .map(|n| api::Container {
            name: (*n).into(),
            image: "busybox".into(),
            ..Default::default()
        })
        .collect();
    p.status.init_container_statuses = inits;
    p.status.container_statuses = main;
    p
}

#[test]
fn status_words_follow_kubectl_for_init_containers_and_crash_loops() {
    use api::ContainerState as S;
    let done = || status("a", S::Exited { exit_code: 0 }, Some("Completed"));
    let run = || S::Running {
        started_at: "x".into(),
    };
    let waiting_main = || vec![status("c0", S::Pending, Some("PodInitializing"))];
    let cases = [
        (
            init_pod(
                vec![
                    status("a", S::Pending, Some("PodInitializing")),
                    status("b", S::Pending, Some("PodInitializing")),
                ],
                waiting_main(),
            ),
            "Init:0/2",
        ),
        (
            init_pod(vec![done(), status("b", run(), None)], waiting_main()),
            "Init:1/2",
        ),
        (
            init_pod(
                vec![status("a", S::Exited { exit_code: 1 }, Some("Error"))],
                waiting_main(),
            ),
            "Init:Error",
        ),
        (
            init_pod(
                vec![status(
                    "a",
                    S::Exited { exit_code: 1 },
                    Some("CrashLoopBackOff"),
                )],
                waiting_main(),
            ),
            "Init:CrashLoopBackOff",
        ),
        (
            init_pod(vec![done(), done()], waiting_main()),
            "PodInitializing",
        ),
        (
            init_pod(vec![done(), done()], vec![status("c0", run(), None)]),
            "Running",
        ),
        (
            init_pod(
                vec![done(), done()],
                vec![status("c0", S::OOMKilled, Some("CrashLoopBackOff"))],
            ),
            "CrashLoopBackOff",
        ),
    ];
    for (p, want) in cases {
        assert_eq!(pod_status_word(&p), want, "{:?}", p.status);
    }
    // One container done, one still running and ready: Running, as kubectl says.
    let mut p = pod("j", Some("n"), vec![]);
    p.status.container_statuses = vec![
        status("c0", S::Exited { exit_code: 0 }, Some("Completed")),
        status("c1", run(), None),
    ];
    assert_eq!(pod_status_word(&p), "Running");
    // Not ready although running: READY 0/1, STATUS Running.
    let mut p = pod("k", Some("n"), vec![run()]);
    p.status.container_statuses[0].ready = false;
    assert_eq!(pod_status_word(&p), "Running");
    let table = pods_table(&[p], false, ts("2026-11-01T12:05:00Z"));
    assert!(table.contains("k      0/1     Running"), "{table}");
}

#[test]
fn restarts_show_when_the_last_one_ended() {
    use api::ContainerState as S;
    let mut p = pod(
        "r",
        Some("n"),
        vec![S::Running {
            started_at: "x".into(),
        }],
    );
    p.status.container_statuses[0].restart_count = 3;
    p.status.container_statuses[0].last_state = Some(api::LastState {
        terminated: api::TerminatedState {
            exit_code: 137,
            reason: "OOMKilled".into(),
            finished_at: "2026-11-01T12:04:18Z".into(),
        },
    });
    let now = ts("2026-11-01T12:05:00Z");
    assert_eq!(restarts_column(&p, now), "3 (42s ago)");
    p.status.container_statuses[0].last_state = None;
    assert_eq!(restarts_column(&p, now), "3");
    // While init containers run, theirs are the restarts that count.
    let mut i = init_pod(
        vec![status(
            "a",
            S::Exited { exit_code: 1 },
            Some("CrashLoopBackOff"),
        )],
        vec![],
    );
    i.status.init_container_statuses[0].restart_count = 4;
    assert_eq!(restarts_column(&i, now), "4");
}

#[test]
fn describe_shows_probes_last_state_mounts_secret_and_config_map_refs() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  volumes:
  - {name: data, emptyDir: {}}
  - {name: creds, secret: {secretName: db}}
  containers:
  - name: web
    image: busybox:1
    ports: [{name: http, containerPort: 8080}]
    envFrom:
    - configMapRef: {name: game-demo}
    - prefix: UI_
      configMapRef: {name: ui, optional: true}
    env:
    - {name: MODE, value: prod}
    - name: PW
      valueFrom: {secretKeyRef: {name: db, key: pw}}
    - name: LIVES
      valueFrom: {configMapKeyRef: {name: game-demo, key: lives}}
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: creds, mountPath: /creds, readOnly: true}
    livenessProbe:
      httpGet: {path: /healthz, port: http}
    readinessProbe:
      exec: {command: [cat, /tmp/ready]}
      periodSeconds: 5
    startupProbe:
      tcpSocket: {port: 8080}
      failureThreshold: 30
";
    let mut p = match crate::model::manifest::parse_manifests(yaml)
        .unwrap()
        .remove(0)
    {
        api::Object::Pod(p) => p,
        _ => unreachable!(),
    };
    p.spec.node_name = Some("pi-1".into());
    p.status.container_statuses = vec![api::ContainerStatus {
        name: "web".into(),
        state: api::ContainerState::Running {
            started_at: "2026-11-01T12:04:20Z".into(),
        },
        ready: true,
        restart_count: 2,
        reason: None,
        last_state: Some(api::LastState {
            terminated: api::TerminatedState {
                exit_code: 137,
                reason: "OOMKilled".into(),
                finished_at: "2026-11-01T12:04:18Z".into(),
            },
        }),
    }];
    let out = describe_pod(&p, &[], ts("2026-11-01T12:05:00Z"));
    for want in [
            "    State:          Running\n      Started:      2026-11-01T12:04:20Z\n",
            "    Last State:     Terminated\n      Reason:       OOMKilled\n      Exit Code:    137\n      Finished:     2026-11-01T12:04:18Z\n",
            "    Ready:          True\n    Restart Count:  2\n",
            "    Liveness:       http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3\n",
            "    Readiness:      exec [cat /tmp/ready] delay=0s timeout=1s period=5s #success=1 #failure=3\n",
            "    Startup:        tcp-socket :8080 delay=0s timeout=1s period=10s #success=1 #failure=30\n",
            // kubectl's words and order: the sources, then the variables.
            "    Environment Variables from:\n      game-demo  ConfigMap                    Optional: false\n      ui         ConfigMap with prefix 'UI_'  Optional: true\n    Environment:\n",
            "      MODE:   prod\n      PW:     <set to the key 'pw' in secret 'db'>\n      LIVES:  <set to the key 'lives' of config map 'game-demo'>  Optional: false\n",
            "      /data from data (rw)\n      /creds from creds (ro)\n",
            "    SecretName:  db\n",
            // kubectl's Namespace line, after Name (a default pod's is `default`).
            "Namespace:      default\nNode:",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
}

#[test]
fn secrets_show_key_sizes_never_values() {
    // As the API answers it.
    let view: crate::contract::body::SecretView = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "creationTimestamp": "2026-11-01T12:00:00Z"},
        "type": "Opaque",
        "dataSizes": {"pw": 6, "user": 5},
    }))
    .unwrap();
    let now = ts("2026-11-01T12:05:00Z");
    assert_eq!(
        secrets_table(std::slice::from_ref(&view), now),
        "NAME   TYPE     DATA   AGE\ndb     Opaque   2      5m\n"
    );
    let out = describe_secret(&view, &[], now);
    assert!(out.contains("Type:           Opaque\n"), "{out}");
    assert!(
        out.contains("\nData\n====\npw:    6 bytes\nuser:  5 bytes\n"),
        "{out}"
    );
}

#[test]
fn rollout_rendering() {
    let mut p = RolloutProgress {
        replicas: 6,
        updated: 3,
        updated_ready: 2,
        ..Default::default()
    };
    assert_eq!(progress_bar(&p), "[#####-----] 3/6 updated, 2 ready");
    p.old = 4;
    p.terminating = 1;
    assert_eq!(
        progress_bar(&p),
        "[#####-----] 3/6 updated, 2 ready, 4 old, 1 terminating"
    );
    p = RolloutProgress {
        replicas: 0,
        ..Default::default()
    };
    assert_eq!(progress_bar(&p), "[##########] 0/0 updated, 0 ready");

    let rev = |n: u64, cause: Option<&str>| api::Revision {
        deployment: "web".into(),
        revision: n,
        template_hash: "abc".into(),
        template: api::PodTemplateSpec {
            metadata: Default::default(),
            spec: api::PodSpec {
                containers: vec![api::Container {
                    name: "echo".into(),
                    image: "reg/http-echo:2".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        },
        change_cause: cause.map(str::to_owned),
        creation_timestamp: String::new(),
    };
    let revs = [rev(1, None), rev(2, Some("kubectl apply v2"))];
    assert_eq!(
            history_table("deployment.apps/web", &revs),
            "deployment.apps/web\nREVISION   CHANGE-CAUSE\n1          <none>\n2          kubectl apply v2\n"
        );
    let details = revision_details("deployment.apps/web", &revs[1]);
    assert!(
        details.starts_with("deployment.apps/web with revision #2\n"),
        "{details}"
    );
    assert!(details.contains("pod-template-hash=abc"), "{details}");
    assert!(details.contains("Image:      reg/http-echo:2"), "{details}");
}

#[test]
fn terminating_pods_say_so() {
    let mut p = pod(
        "web-1",
        Some("pi-1"),
        vec![api::ContainerState::Running {
            started_at: "x".into(),
        }],
    );
    p.metadata.deletion_timestamp = Some("2026-11-01T12:00:00Z".into());
    assert_eq!(pod_status_word(&p), "Terminating");
}

#[test]
fn pods_table_like_kubectl() {
    use api::ContainerState as S;
    let pods = [
        pod(
            "web-1",
            Some("pi-1"),
            vec![S::Running {
                started_at: "x".into(),
            }],
        ),
        pod("web-22", None, vec![]),
    ];
    let got = pods_table(&pods, true, ts("2026-11-01T12:05:00Z"));
    let want = "\
NAME     READY   STATUS    RESTARTS   AGE   NODE     IP
web-1    1/1     Running   1          5m    pi-1     10.42.0.7
web-22   0/1     Pending   0          5m    <none>   10.42.0.7
";
    assert_eq!(got, want);
}

#[test]
fn ages() {
    let now = ts("2026-11-03T12:00:00Z");
    for (t, want) in [
        ("2026-11-03T11:59:15Z", "45s"),
        ("2026-11-03T11:50:00Z", "10m"),
        ("2026-11-03T07:00:00Z", "5h"),
        ("2026-11-01T12:00:00Z", "2d"),
        ("", "<unknown>"),
    ] {
        assert_eq!(age(t, now), want, "{t}");
    }
}

#[test]
fn not_after_is_rfc3339_with_what_is_left() {
    let now = ts("2026-12-05T12:00:00Z");
    let secs = |t: &str| {
        ts(t)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert_eq!(
        not_after_str(Some(secs("2027-01-04T13:30:00Z")), now),
        "2027-01-04T13:30:00Z (30days 1h left)"
    );
    assert_eq!(
        not_after_str(Some(secs("2026-12-05T10:00:00Z")), now),
        "2026-12-05T10:00:00Z (expired 2h ago)"
    );
    assert_eq!(not_after_str(None, now), "-");
}

/// A Ready node `pi-1`, created an hour before the tests' `now`, with nothing else set.
fn ready_node() -> api::Node {
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: "pi-1".into(),
            creation_timestamp: "2026-12-05T11:00:00Z".into(),
            ..Default::default()
        },
        spec: Default::default(),
        status: api::NodeStatus {
            ready: true,
            ..Default::default()
        },
    }
}

#[test]
fn describe_node_shows_the_leaders_term() {
    let now = ts("2026-12-05T12:00:00Z");
    let mut n = ready_node();
    let out = describe_node(&n, None, &[], &[], now);
    assert!(out.contains("Leader Term:    <none>"), "{out}");
    n.status.leader_term = 7;
    let out = describe_node(&n, None, &[], &[], now);
    assert!(
        out.contains("Leader Term:    7 (the serving leader's)"),
        "{out}"
    );
}

#[test]
fn describe_and_wide_show_the_last_connect_error_and_enrollment() {
    let now = ts("2026-12-05T12:00:00Z");
    let mut n = ready_node();
    let out = describe_node(&n, None, &[], &[], now);
    assert!(out.contains("Connect Error:  <none>"), "{out}");
    assert!(out.contains("Enrollment:\n  enrolled:     no\n"), "{out}");
    n.status.last_connect_error = Some(api::ConnectError {
        message: "connection refused (nothing listens there)".into(),
        reported_at: "2026-12-05T11:59:00Z".into(),
    });
    let identity = crate::contract::nodes::IdentitySummary {
        node: "pi-1".into(),
        public_key: "AAAA".into(),
        previous_key: None,
        previous_valid_until_ms: 0,
        not_after: 1_796_515_200,
        enrolled_at: "2026-12-05T11:00:00Z".into(),
        revoked: true,
        fingerprint: "SHA256:abcd".into(),
        serial: "01:02".into(),
    };
    let out = describe_node(&n, Some(&identity), &[], &[], now);
    assert!(
        out.contains("connection refused (nothing listens there) (reported 2026-12-05T11:59:00Z)"),
        "{out}"
    );
    for want in [
        "  enrolled:     yes\n",
        "  fingerprint:  SHA256:abcd\n",
        "  serial:       01:02\n",
        "  not after:    2026-12-06T00:00:00Z (12h left)\n",
        "  revoked:      yes\n",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let wide = nodes_table(&[n], true, now);
    assert!(
        wide.lines().next().unwrap().ends_with("LAST-CONNECT-ERROR"),
        "{wide}"
    );
    assert!(
        wide.lines().nth(1).unwrap().ends_with("connection refused"),
        "{wide}"
    );
}

/// A node under pressure: kubectl's `Ready,DiskPressure`, and in `describe` the condition
/// with what was measured, the taint, and why the applied generation lags.
#[test]
fn pressure_shows_in_status_conditions_taints_and_the_apply_error() {
    let now = ts("2026-12-05T12:00:00Z");
    let mut n = ready_node();
    let out = describe_node(&n, None, &[], &[], now);
    assert!(out.contains("Conditions:     <no pressure>\n"), "{out}");
    assert!(out.contains("Taints:         <none>\n"), "{out}");
    assert!(!out.contains("Apply Error"), "{out}");

    n.status.conditions = vec![api::NodeCondition {
        type_: "DiskPressure".into(),
        reason: "KubeletHasDiskPressure".into(),
        message: "nodefs.available 0 < 2.4Mi (10%)".into(),
        last_transition_time: "2026-12-05T11:59:00Z".into(),
    }];
    n.spec.taints = crate::decide::taints::with_condition_taints(&[], &n.status.conditions);
    n.status.apply_error = Some("generation 7 not applied: No space left on device".into());
    n.status.ready = false;
    let table = nodes_table(std::slice::from_ref(&n), false, now);
    assert!(table.contains("NotReady,DiskPressure"), "{table}");
    n.status.ready = true;
    let table = nodes_table(std::slice::from_ref(&n), false, now);
    assert!(
        table.lines().nth(1).unwrap().split_whitespace().nth(1) == Some("Ready,DiskPressure"),
        "{table}"
    );
    let out = describe_node(&n, None, &[], &[], now);
    for want in [
        "Conditions:\n",
        "  DiskPressure   True     2026-12-05T11:59:00Z   KubeletHasDiskPressure   nodefs.available 0 < 2.4Mi (10%)\n",
        "Taints:         node.kubernetes.io/disk-pressure:NoSchedule\n",
        "Apply Error:    generation 7 not applied: No space left on device\n",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
}

#[test]
fn services_show_kubectl_ports_and_external_ips() {
    use super::service::{describe_service, external_ip, ports_column, services_table};
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  type: NodePort\n  \
                selector: {app: dns}\n  ports:\n  - {name: web, port: 80, targetPort: http, nodePort: 30080}\n  \
                - {name: dns, port: 53, protocol: UDP}\n";
    let Ok(mut objects) = crate::model::manifest::parse_manifests(yaml) else {
        panic!("parses");
    };
    let Some(api::Object::Service(mut s)) = objects.pop() else {
        panic!("a service");
    };
    s.spec.cluster_ip = "10.43.0.2".into();
    s.spec.ports[1].node_port = None;
    assert_eq!(ports_column(&s), "80:30080/TCP,53/UDP");
    assert_eq!(external_ip(&s), "<none>");
    let table = services_table(std::slice::from_ref(&s), false, ts("2026-01-01T00:00:00Z"));
    assert!(
        table.starts_with(
            "NAME   TYPE       CLUSTER-IP   EXTERNAL-IP   PORT(S)               AGE\n"
        ),
        "{table}"
    );
    let mut lb = s.clone();
    lb.spec.type_ = api::ServiceType::LoadBalancer;
    assert_eq!(external_ip(&lb), "<pending>");
    lb.status.load_balancer.ingress = vec![
        api::LoadBalancerIngress {
            ip: "192.168.1.10".into(),
        },
        api::LoadBalancerIngress {
            ip: "192.168.1.11".into(),
        },
    ];
    assert_eq!(external_ip(&lb), "192.168.1.10,192.168.1.11");

    let eps = api::Endpoints {
        api_version: "v1".into(),
        kind: "Endpoints".into(),
        metadata: Default::default(),
        subsets: vec![api::EndpointSubset {
            addresses: ["10.42.1.5", "10.42.2.7"]
                .map(|ip| api::EndpointAddress {
                    ip: ip.into(),
                    node_name: None,
                    pod: "p".into(),
                })
                .to_vec(),
            ports: vec![api::EndpointPort {
                name: Some("web".into()),
                port: 8080,
                protocol: api::Protocol::TCP,
            }],
        }],
    };
    let text = describe_service(&s, Some(&eps), &[], ts("2026-01-01T00:00:00Z"));
    assert!(text.contains("TargetPort:     http/TCP\nNodePort:       web  30080/TCP\nEndpoints:      10.42.1.5:8080,10.42.2.7:8080\n"), "{text}");
    // The UDP port resolved on no pod: none.
    assert!(
        text.contains(
            "Port:           dns  53/UDP\nTargetPort:     53/UDP\nEndpoints:      <none>\n"
        ),
        "{text}"
    );
}

#[test]
fn describe_says_a_refused_pod_cidr_and_who_holds_it() {
    let now = ts("2026-12-05T12:00:00Z");
    let mut n = ready_node();
    n.status.pod_cidr = "10.42.1.0/24".into();
    let out = describe_node(&n, None, &[], &[], now);
    assert!(out.contains("PodCIDR:        10.42.1.0/24\n"), "{out}");
    n.status.pod_cidr_refused =
        Some("pod CIDR 10.42.1.0/24 overlaps 10.42.1.0/24, held by node pi-2".into());
    let out = describe_node(&n, None, &[], &[], now);
    let line = out
        .lines()
        .find(|l| l.starts_with("PodCIDR:"))
        .expect("a PodCIDR line");
    assert!(line.contains("10.42.1.0/24 (refused"), "{line}");
    assert!(line.contains("held by node pi-2"), "{line}");
}

#[test]
fn describe_node_lists_its_pods_with_their_namespace_first() {
    let now = ts("2026-12-05T12:00:00Z");
    let n = ready_node();
    let a = pod("web-1", Some("pi-1"), vec![]);
    let mut b = pod("web-1", Some("pi-1"), vec![]);
    b.metadata.namespace = Some("team-b".into());
    let out = describe_node(&n, None, &[&a, &b], &[], now);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("Pods:"))
        .skip(1)
        .take(3)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["Namespace", "Name"],
            vec!["default", "web-1"],
            vec!["team-b", "web-1"]
        ],
        "{out}"
    );
}
