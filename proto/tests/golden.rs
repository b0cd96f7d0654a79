//! Golden bytes: the exact encoding of representative messages. If one of these fails,
//! the wire format changed: bump `PROTO_VERSION` and document it in docs/protocol.md,
//! never just update the bytes.
//!
//! The hex of every message v4 had is its v4 encoding, the bytes a Baton 0.1 agent reads
//! and writes: `check` asserts that it is unchanged at v4 (version skew) and that the
//! current version differs only in the version byte.

use baton_proto::*;
use core::net::{IpAddr, Ipv4Addr};

fn node() -> NodeName {
    NodeName::new("pi-1").unwrap()
}

fn s<const N: usize>(v: &str) -> BString<N> {
    BString::new(v).unwrap()
}

fn check(env: Envelope, golden_hex: &str) {
    let v4 = env.clone().at_version(4).unwrap();
    let bytes = v4.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        golden_hex,
        "encoding of {env:?} changed"
    );
    assert_eq!(Envelope::decode(&bytes).unwrap(), v4);
    let now = env.encode().unwrap();
    assert_eq!(now[0] as u16, PROTO_VERSION);
    assert_eq!(now[1..], bytes[1..], "only the version byte differs");
    assert_eq!(Envelope::decode(&now).unwrap(), env);
}

/// Messages whose shape changed in v5 (a [`PodSpec`] gained `priority`, a [`DesiredState`]
/// its `term`): the v4 bytes, what a Baton 0.1 agent reads and is sent, unchanged and
/// without what v4 lacks; and the current bytes, which keep it.
fn check_reshaped(env: Envelope, v4_hex: &str, v5_hex: &str) {
    let v4 = env.clone().at_version(4).unwrap();
    let bytes = v4.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        v4_hex,
        "v4 encoding of {env:?} changed"
    );
    let Body::Desired(mut d) = v4.body.clone() else {
        panic!("only a desired state carries pod specs")
    };
    let pods = d.pods.iter().cloned().map(|p| PodSpec {
        priority: 0,
        dns: None,
        ..p
    });
    d.pods = BVec::from_vec(pods.collect()).unwrap();
    d.term = 0;
    let read = Envelope::decode(&bytes).unwrap();
    assert_eq!(
        read.body,
        Body::Desired(d),
        "v4 carries no priority and no term"
    );
    assert_eq!(read.encode().unwrap(), bytes);
    let now = env.encode().unwrap();
    assert_eq!(hex::encode(&now), v5_hex, "encoding of {env:?} changed");
    assert_eq!(Envelope::decode(&now).unwrap(), env);
    // The signature covers the bytes of the version sent, so a v4 agent can check it.
    assert_ne!(
        v4.signing_bytes("t").unwrap()[..],
        env.signing_bytes("t").unwrap()[..]
    );
}

/// Messages added after v4: their bytes at the current version, and refused at v4.
fn check_new(env: Envelope, golden_hex: &str) {
    let bytes = env.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        golden_hex,
        "encoding of {env:?} changed"
    );
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    assert_eq!(
        env.clone().at_version(4),
        Err(ProtoError::BodyTooNew {
            version: 4,
            needs: 5
        })
    );
    let mut as_v4 = bytes.clone();
    as_v4[0] = 4;
    assert_eq!(
        Envelope::decode(&as_v4),
        Err(ProtoError::BodyTooNew {
            version: 4,
            needs: 5
        }),
        "a v4 envelope cannot carry a v5 message"
    );
}

fn release() -> Release {
    Release {
        version: s("0.2.1"),
        target: s("aarch64-unknown-linux-musl"),
        protocol: 5,
        size: 300,
        sha256: [0xab; 32],
        signature: BVec::from_vec(vec![0x5a; 64]).unwrap(),
    }
}

#[test]
fn agent_update() {
    check_new(
        Envelope::new(
            Sender::Coordinator,
            9,
            Body::AgentUpdate(Some(AgentUpdate {
                rollout: s("agents-0.2.1"),
                release: release(),
                allow_downgrade: false,
                health_window_secs: 120,
                term: 300,
            })),
        ),
        // 05 v5 | 00 Coordinator | 09 seq | 00 sent_at | 07 AgentUpdate | 01 Some | rollout |
        // version | target | 05 protocol | ac02 size | sha256 | 40 + signature | 00 | 78 window |
        // ac02 term | 00 no signature
        "0500090007010c6167656e74732d302e322e3105302e322e311a616172636836342d756e6b6e6f776e2d6c696e75782d6d75736c05ac02abababababababababababababababababababababababababababababababab405a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a0078ac0200",
    );
    // The retained "no update wanted".
    check_new(
        Envelope::new(Sender::Coordinator, 10, Body::AgentUpdate(None)),
        "05000a00070000",
    );
}

#[test]
fn update_report() {
    check_new(
        Envelope::new(
            Sender::Node(node()),
            11,
            Body::UpdateReport(UpdateReport {
                rollout: s("agents-0.2.1"),
                version: s("0.2.1"),
                phase: UpdatePhase::RolledBack,
                reason: Some(s("crashed 3 times in 40 s: exit 101")),
                downloaded: 300,
            }),
        ),
        // 05 | 01 Node "pi-1" | 0b seq | 00 | 08 UpdateReport | rollout | version | 05 RolledBack |
        // 01 Some reason | ac02 downloaded | 00 no signature
        "05010470692d310b00080c6167656e74732d302e322e3105302e322e310501216372617368656420332074696d657320696e20343020733a206578697420313031ac0200",
    );
}

#[test]
fn link_profile() {
    check_new(
        Envelope::new(
            Sender::Node(node()),
            12,
            Body::Link(LinkProfile {
                keepalive_secs: 180,
                heartbeat_max_secs: 21600,
            }),
        ),
        // 05 | 01 Node "pi-1" | 0c seq | 00 | 0c Link | b401 keepalive 180 |
        // e0a801 heartbeat_max 21600 | 00 no signature
        "05010470692d310c000cb401e0a80100",
    );
}

#[test]
fn heartbeat() {
    let env = Envelope::new(
        Sender::Node(node()),
        300,
        Body::Heartbeat(Heartbeat {
            applied_generation: 7,
            status_digest: 0x0102_0304_0506_0708,
            ..Default::default()
        }),
    );
    // 04 version | 01 Node, 04 "pi-1" | ac02 seq=300 | 00 sent_at | 01 Heartbeat | 07 gen |
    // digest varint | 00 no pressure | 00 no apply error | 00 no signature
    check(
        env,
        "0401047069 2d31ac02 00 0107 888e98a8c0e0808101 00 00 00"
            .replace(' ', "")
            .as_str(),
    );
}

/// v4: a heartbeat under pressure, with the reason the last desired state was not applied.
#[test]
fn heartbeat_with_pressure_and_apply_error() {
    let env = Envelope::new(
        Sender::Node(node()),
        300,
        Body::Heartbeat(Heartbeat {
            applied_generation: 7,
            status_digest: 1,
            pressure: BVec::from_vec(vec![Pressure {
                kind: PressureKind::Disk,
                message: s("disk"),
            }])
            .unwrap(),
            apply_error: Some(s("x")),
        }),
    );
    // ... 01 Heartbeat | 07 gen | 01 digest | 01 one pressure: 00 Disk, 04 "disk" |
    // 01 Some, 01 "x" | 00 no signature
    check(
        env,
        "0401047069 2d31ac02 00 01 07 01 01 00 04 6469736b 01 01 78 00"
            .replace(' ', "")
            .as_str(),
    );
}

/// v4: a pod the agent evicted, with kubelet's reason.
#[test]
fn status_of_an_evicted_pod() {
    let env = Envelope::new(
        Sender::Node(node()),
        1,
        Body::Status(NodeStatus {
            applied_generation: 1,
            pods: BVec::from_vec(vec![PodStatus {
                name: s("p"),
                uid: s("u"),
                pod_ip: None,
                containers: BVec::new(),
                init_containers: BVec::new(),
                evicted: Some(s("e")),
            }])
            .unwrap(),
        }),
    );
    // ... 02 Status | 01 gen | 01 one pod: 01 "p", 01 "u", 00 no ip, 00 and 00 no
    // containers, 01 Some, 01 "e" | 00 no signature
    check(
        env,
        "0401047069 2d31 01 00 02 01 01 0170 0175 00 00 00 01 0165 00"
            .replace(' ', "")
            .as_str(),
    );
}

#[test]
fn offline_and_status_request() {
    check(
        Envelope::new(Sender::Node(node()), 0, Body::Offline),
        "04010470692d3100000300",
    );
    check(
        Envelope::new(Sender::Coordinator, 1, Body::StatusRequest),
        "040001000500",
    );
}

fn hello_body(taints: Vec<NodeTaint>) -> Hello {
    Hello {
        arch: "arm64".try_into().unwrap(),
        arch_variant: heapless::String::new(),
        os: "linux".try_into().unwrap(),
        agent_version: "0.1.0".try_into().unwrap(),
        allocatable: Capacity {
            cpu_millis: 3500,
            memory_bytes: 1 << 30,
            pods: 110,
        },
        labels: BVec::from_vec(vec![Label {
            key: s("zone"),
            value: s("lab"),
        }])
        .unwrap(),
        address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
        pod_cidr: s("10.42.1.0/24"),
        applied_generation: 3,
        last_connect_error: Some(s("connection refused")),
        taints: BVec::from_vec(taints).unwrap(),
    }
}

/// v5 added `Hello.taints` (`--register-with-taints`): the v4 bytes are unchanged and
/// carry none; v5 appends them.
#[test]
fn hello() {
    let hex_of = |h: &str| h.replace([' ', '\\'], "");
    let env = Envelope::new(Sender::Node(node()), 1, Body::Hello(hello_body(vec![])));
    let v4 = env.clone().at_version(4).unwrap();
    let bytes = v4.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        hex_of(HELLO),
        "v4 encoding of Hello changed"
    );
    assert_eq!(Envelope::decode(&bytes).unwrap(), v4);

    let taint = NodeTaint {
        key: s("dedicated"),
        value: s("cams"),
        effect: TaintEffect::NoSchedule,
    };
    let env = Envelope::new(
        Sender::Node(node()),
        1,
        Body::Hello(hello_body(vec![taint])),
    );
    let now = env.encode().unwrap();
    assert_eq!(
        hex::encode(&now),
        hex_of(HELLO_V5),
        "encoding of Hello changed"
    );
    assert_eq!(Envelope::decode(&now).unwrap(), env);
    // A v4 coordinator is sent the v4 shape: the same bytes as without taints.
    let old = env.clone().at_version(4).unwrap().encode().unwrap();
    assert_eq!(hex::encode(&old), hex_of(HELLO));
}
const HELLO: &str = "040104 70692d31 01 00 00 05 61726d3634 00 05 6c696e7578 05 302e312e30 \
ac1b 8080808004 6e 01 04 7a6f6e65 03 6c6162 01 00 0a000002 0c 31302e34322e312e302f3234 03 \
01 12 636f6e6e656374696f6e2072656675736564 00";
// v5 | ... as v4 ... | 01 taint: 09 "dedicated" 04 "cams" 00 NoSchedule | 00
const HELLO_V5: &str = "050104 70692d31 01 00 00 05 61726d3634 00 05 6c696e7578 05 302e312e30 \
ac1b 8080808004 6e 01 04 7a6f6e65 03 6c6162 01 00 0a000002 0c 31302e34322e312e302f3234 03 \
01 12 636f6e6e656374696f6e2072656675736564 01 09 646564696361746564 04 63616d73 00 00";

#[test]
fn desired_state() {
    let c = ContainerSpec {
        name: s("web"),
        image: s("127.0.0.1:5000/baton/http-echo:1"),
        image_pull_policy: PullPolicy::IfNotPresent,
        command: BVec::new(),
        args: BVec::from_vec(vec![s("-p"), s("8080")]).unwrap(),
        env: BVec::from_vec(vec![EnvVar {
            name: s("MESSAGE"),
            value: EnvValue::Literal(s("hi")),
        }])
        .unwrap(),
        working_dir: Some(s("/www")),
        ports: BVec::from_vec(vec![Port {
            container_port: 8080,
            host_port: Some(80),
            protocol: Protocol::Tcp,
        }])
        .unwrap(),
        resources: Resources {
            cpu_request_millis: 100,
            cpu_limit_millis: Some(500),
            memory_request_bytes: 16 << 20,
            memory_limit_bytes: Some(32 << 20),
        },
        liveness_probe: None,
        readiness_probe: None,
        security: Default::default(),
        volume_mounts: BVec::new(),
        startup_probe: None,
    };
    let pod = PodSpec {
        name: s("web-abc"),
        uid: s("u1"),
        host_network: false,
        restart_policy: RestartPolicy::Always,
        termination_grace_secs: 30,
        containers: BVec::from_vec(vec![c]).unwrap(),
        init_containers: BVec::new(),
        volumes: BVec::new(),
        image_pull_secrets: BVec::new(),
        priority: SYSTEM_NODE_CRITICAL_PRIORITY,
        dns: None,
    };
    let env = Envelope::new(
        Sender::Coordinator,
        9,
        Body::Desired(DesiredState {
            generation: 2,
            pods: BVec::from_vec(vec![pod]).unwrap(),
            secrets: BVec::new(),
            term: 7,
            crons: Default::default(),
        }),
    );
    check_reshaped(
        env,
        &DESIRED.replace([' ', '\\'], ""),
        &DESIRED_V5.replace([' ', '\\'], ""),
    );
}
const DESIRED: &str = "040009000402010777 65622d616263 02 7531 00 00 1e 01 03 776562 \
20 3132372e302e302e313a353030302f6261746f6e2f687474702d6563686f3a31 01 00 02 022d70 0438303830 \
01 074d455353414745 00 026869 01 042f777777 01 903f01 5000 64 01f403 8080800801 808080 10 \
00 000000 000000000000 00 00 00 00 00 00";
// v5: the same but the version, the pod's priority (zigzag varint) and its DNS settings
// (00, none) after its imagePullSecrets, the leader's term (07) and the (empty) CronJobs after the secrets.
const DESIRED_V5: &str = "050009000402010777 65622d616263 02 7531 00 00 1e 01 03 776562 \
20 3132372e302e302e313a353030302f6261746f6e2f687474702d6563686f3a31 01 00 02 022d70 0438303830 \
01 074d455353414745 00 026869 01 042f777777 01 903f01 5000 64 01f403 8080800801 808080 10 \
00 000000 000000000000 00 00 00 00 d0dfacf30e 00 00 07 00 00";

#[test]
fn status() {
    let env = Envelope::new(
        Sender::Node(node()),
        2,
        Body::Status(NodeStatus {
            applied_generation: 2,
            pods: BVec::from_vec(vec![PodStatus {
                name: s("p"),
                uid: s("u"),
                pod_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 42, 1, 2))),
                containers: BVec::from_vec(vec![
                    ContainerStatus {
                        name: s("a"),
                        state: ContainerState::OomKilled,
                        restart_count: 1,
                        last_termination: None,
                        ready: true,
                    },
                    ContainerStatus {
                        name: s("b"),
                        state: ContainerState::Failed { reason: s("x") },
                        restart_count: 0,
                        last_termination: None,
                        ready: true,
                    },
                ])
                .unwrap(),
                init_containers: BVec::new(),
                evicted: None,
            }])
            .unwrap(),
        }),
    );
    check(
        env,
        "040104 70692d31 02 00 02 02 01 0170 0175 01 00 0a2a0102 02 0161 04 01 01 00 0162 05 0178 00 01 00 00 00 00"
            .replace(' ', "")
            .as_str(),
    );
}

fn probe(handler: ProbeHandler) -> Probe {
    Probe {
        handler,
        initial_delay_secs: 1,
        period_secs: 10,
        timeout_secs: 1,
        success_threshold: 1,
        failure_threshold: 3,
    }
}

#[test]
fn desired_state_v2_fields() {
    let c = ContainerSpec {
        name: s("app"),
        image: s("r/a@sha256:00"),
        image_pull_policy: PullPolicy::Never,
        command: BVec::new(),
        args: BVec::new(),
        env: BVec::from_vec(vec![EnvVar {
            name: s("PW"),
            value: EnvValue::SecretKey {
                secret: s("db"),
                key: s("pw"),
            },
        }])
        .unwrap(),
        working_dir: None,
        ports: BVec::new(),
        resources: Resources::default(),
        volume_mounts: BVec::from_vec(vec![VolumeMount {
            name: s("creds"),
            mount_path: s("/s"),
            read_only: true,
        }])
        .unwrap(),
        liveness_probe: Some(probe(ProbeHandler::Exec {
            command: BVec::from_vec(vec![s("true")]).unwrap(),
        })),
        readiness_probe: Some(probe(ProbeHandler::HttpGet {
            path: s("/h"),
            port: 80,
            https: false,
            host: None,
            headers: BVec::from_vec(vec![HttpHeader {
                name: s("X"),
                value: s("y"),
            }])
            .unwrap(),
        })),
        startup_probe: Some(probe(ProbeHandler::TcpSocket {
            port: 81,
            host: None,
        })),
        security: SecurityContext {
            privileged: false,
            capabilities_add: BVec::from_vec(vec![s("NET_ADMIN")]).unwrap(),
            capabilities_drop: BVec::new(),
            run_as_user: Some(1000),
            run_as_group: None,
            read_only_root_filesystem: true,
            seccomp: SeccompProfile::Unconfined,
        },
    };
    let init = ContainerSpec {
        name: s("i"),
        image: s("r/b"),
        image_pull_policy: PullPolicy::Always,
        command: BVec::new(),
        args: BVec::new(),
        env: BVec::new(),
        working_dir: None,
        ports: BVec::new(),
        resources: Resources::default(),
        volume_mounts: BVec::new(),
        liveness_probe: None,
        readiness_probe: None,
        startup_probe: None,
        security: SecurityContext::default(),
    };
    let pod = PodSpec {
        name: s("p"),
        uid: s("u"),
        host_network: false,
        restart_policy: RestartPolicy::OnFailure,
        termination_grace_secs: 5,
        containers: BVec::from_vec(vec![c]).unwrap(),
        init_containers: BVec::from_vec(vec![init]).unwrap(),
        volumes: BVec::from_vec(vec![
            Volume {
                name: s("creds"),
                source: VolumeSource::Secret {
                    secret_name: s("db"),
                },
            },
            Volume {
                name: s("tmp"),
                source: VolumeSource::EmptyDir {
                    size_limit_bytes: Some(1024),
                },
            },
        ])
        .unwrap(),
        image_pull_secrets: BVec::from_vec(vec![s("regcred")]).unwrap(),
        priority: 0,
        dns: None,
    };
    let mut env = Envelope::new(
        Sender::Coordinator,
        1_800_000_000_000_000,
        Body::Desired(DesiredState {
            generation: 1,
            pods: BVec::from_vec(vec![pod]).unwrap(),
            secrets: BVec::from_vec(vec![SealedSecret {
                name: s("db"),
                version: 3,
                sealed: Sealed {
                    scheme: SealScheme::X25519ChaCha20Poly1305,
                    data: BVec::from_vec(vec![0xaa, 0xbb]).unwrap(),
                },
            }])
            .unwrap(),
            term: 1,
            crons: Default::default(),
        }),
    );
    env.sent_at_ms = 1_800_000_000_000;
    env.signature = BVec::from_vec(vec![0x5a; 64]).unwrap();
    check_reshaped(
        env,
        &DESIRED_V2.replace([' ', '\\'], ""),
        &DESIRED_V2_AT_V5.replace([' ', '\\'], ""),
    );
}
// seq and sent_at are realistic microsecond/millisecond clocks; the 64-byte signature is
// a placeholder pattern (the crate does not sign; it only defines what is signed).
const DESIRED_V2: &str = "0400 8080e2c4f2a29903 80a0f1c2b134 04 01 01 0170 0175 00 01 05 01 \
03617070 0d722f61407368613235363a3030 02 00 00 01 025057 01 026462 027077 00 00 00000000 \
01 056372656473 022f73 01 \
01 00 01 0474727565 010a01 0103 \
01 01 022f68 50 00 00 01 0158 0179 010a01 0103 \
01 02 51 00 010a01 0103 \
00 01 094e45545f41444d494e 00 01 e807 00 01 02 \
01 0169 03722f62 00 00 00 00 00 00 00000000 00 000000 000000000000 00 \
02 056372656473 00 026462 03746d70 01 01 8008 \
01 07726567637265 64 \
01 026462 03 00 02aabb \
40 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
// v5: the version, priority 0 and no DNS settings (00) after the imagePullSecrets, term 1
// and no CronJobs after the secrets.
const DESIRED_V2_AT_V5: &str = "0500 8080e2c4f2a29903 80a0f1c2b134 04 01 01 0170 0175 00 01 05 01 \
03617070 0d722f61407368613235363a3030 02 00 00 01 025057 01 026462 027077 00 00 00000000 \
01 056372656473 022f73 01 \
01 00 01 0474727565 010a01 0103 \
01 01 022f68 50 00 00 01 0158 0179 010a01 0103 \
01 02 51 00 010a01 0103 \
00 01 094e45545f41444d494e 00 01 e807 00 01 02 \
01 0169 03722f62 00 00 00 00 00 00 00000000 00 000000 000000000000 00 \
02 056372656473 00 026462 03746d70 01 01 8008 \
01 07726567637265 64 00 00 \
01 026462 03 00 02aabb 01 00 \
40 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

#[test]
fn status_v2_fields() {
    let ready = ContainerStatus {
        name: s("a"),
        state: ContainerState::Running {
            started_at_ms: 1_000,
        },
        restart_count: 2,
        ready: true,
        last_termination: Some(Termination {
            exit_code: 137,
            reason: s("OOMKilled"),
            finished_at_ms: 900,
        }),
    };
    let init = ContainerStatus {
        name: s("i"),
        state: ContainerState::Exited { code: 0 },
        restart_count: 0,
        ready: false,
        last_termination: None,
    };
    let env = Envelope::new(
        Sender::Node(node()),
        3,
        Body::Status(NodeStatus {
            applied_generation: 1,
            pods: BVec::from_vec(vec![PodStatus {
                name: s("p"),
                uid: s("u"),
                pod_ip: None,
                containers: BVec::from_vec(vec![ready]).unwrap(),
                init_containers: BVec::from_vec(vec![init]).unwrap(),
                evicted: None,
            }])
            .unwrap(),
        }),
    );
    check(env, &STATUS_V2.replace([' ', '\\'], ""));
}
const STATUS_V2: &str = "040104 70692d31 03 00 02 01 01 0170 0175 00 \
01 0161 02 e807 02 01 01 9202 094f4f4d4b696c6c6564 8407 \
01 0169 03 00 00 00 00 00 00";

#[test]
fn signing_bytes_bind_the_topic_and_ignore_the_signature() {
    let mut env = Envelope::new(Sender::Coordinator, 1, Body::StatusRequest);
    let a = env.signing_bytes("baton/v1/nodes/a/down/control").unwrap();
    env.signature = BVec::from_vec(vec![1, 2, 3]).unwrap();
    assert_eq!(
        a,
        env.signing_bytes("baton/v1/nodes/a/down/control").unwrap()
    );
    assert_ne!(
        a,
        env.signing_bytes("baton/v1/nodes/b/down/control").unwrap()
    );
    assert!(a.starts_with(SIGNING_CONTEXT));
    env.seq = 2;
    assert_ne!(
        a,
        env.signing_bytes("baton/v1/nodes/a/down/control").unwrap()
    );
}

#[test]
fn rotate_key() {
    // 04 version | 00 Coordinator | 07 seq | 00 sent_at | 06 RotateKey | 00 no signature
    check(
        Envelope::new(Sender::Coordinator, 7, Body::RotateKey),
        "040007000600",
    );
}

#[test]
fn log_session() {
    check_new(
        Envelope::new(
            Sender::Coordinator,
            12,
            Body::LogRequest(LogRequest {
                session: 0xbeef,
                pod_uid: s("u1"),
                container: s("app"),
                previous: false,
                follow: true,
                tail_lines: Some(10),
                credit: 8,
                since: None,
                timestamps: false,
            }),
        ),
        // 05 | 00 Coordinator | 0c seq | 00 | 09 LogRequest | effd02 session | "u1" | "app" |
        // 00 previous | 01 follow | 01 Some 0a tail | 08 credit | 00 no since |
        // 00 timestamps | 00 no signature
        "05000c0009effd02027531036170700001010a08000000",
    );
    let since = |since| {
        Envelope::new(
            Sender::Coordinator,
            12,
            Body::LogRequest(LogRequest {
                session: 0xbeef,
                pod_uid: s("u1"),
                container: s("app"),
                previous: true,
                follow: false,
                tail_lines: None,
                credit: 8,
                since: Some(since),
                timestamps: true,
            }),
        )
    };
    check_new(
        since(LogSince::Ago { millis: 3000 }),
        // ... | 01 previous | 00 follow | 00 no tail | 08 credit | 01 Some 00 Ago b817 3000 |
        // 01 timestamps | 00
        concat!("05000c0009effd020275310361707001000008", "0100b817", "0100"),
    );
    check_new(
        since(LogSince::At { unix_nanos: -1 }),
        // ... | 01 Some 01 At 01 (zigzag -1) | 01 timestamps | 00
        concat!("05000c0009effd020275310361707001000008", "010101", "0100"),
    );
    check_new(
        Envelope::new(
            Sender::Coordinator,
            13,
            Body::LogCredit(LogCredit {
                session: 0xbeef,
                acked: 3,
                credit: 8,
                cancel: false,
            }),
        ),
        // 05 | 00 | 0d seq | 00 | 0a LogCredit | effd02 | 03 acked | 08 credit | 00 cancel | 00
        "05000d000aeffd0203080000",
    );
    check_new(
        Envelope::new(
            Sender::Node(node()),
            14,
            Body::LogChunk(LogChunk {
                session: 0xbeef,
                seq: 4,
                data: BVec::from_vec(b"hi\n".to_vec()).unwrap(),
                end: Some(None),
            }),
        ),
        // 05 | 01 Node "pi-1" | 0e seq | 00 | 0b LogChunk | effd02 | 04 seq | 03 "hi\n" |
        // 01 Some end, 00 no error | 00
        "05010470692d310e000beffd02040368690a010000",
    );
}

/// The exec session's messages. Their variant indices follow `ConfigMapPart` (0e): a
/// variant added before them shifts each by one (the third byte after the sender).
#[test]
fn exec_session() {
    check_new(
        Envelope::new(
            Sender::Coordinator,
            12,
            Body::ExecRequest(ExecRequest {
                session: 0xbeef,
                pod_uid: s("u1"),
                container: s("app"),
                command: BVec::from_vec(vec![s("sh"), s("-c")]).unwrap(),
                tty: true,
                stdin: true,
                rows: 24,
                cols: 80,
                credit: 8,
            }),
        ),
        // 05 | 00 Coordinator | 0c seq | 00 | 0f ExecRequest | effd02 session | "u1" | "app" |
        // 02 args: "sh" "-c" | 01 tty | 01 stdin | 18 rows | 50 cols | 08 credit | 00
        "05000c000feffd020275310361707002027368022d63010118500800",
    );
    let input = |seq, action| {
        Envelope::new(
            Sender::Coordinator,
            13,
            Body::ExecInput(ExecInput {
                session: 0xbeef,
                seq,
                acked: 3,
                credit: 8,
                action,
            }),
        )
    };
    // 05 | 00 | 0d seq | 00 | 10 ExecInput | effd02 | seq | 03 acked | 08 credit | action | 00
    check_new(
        input(
            0,
            ExecAction::Stdin(BVec::from_vec(b"a\n".to_vec()).unwrap()),
        ),
        "05000d0010effd020003080102610a00",
    );
    check_new(input(1, ExecAction::Eof), "05000d0010effd020103080200");
    check_new(
        input(
            2,
            ExecAction::Resize {
                rows: 40,
                cols: 120,
            },
        ),
        "05000d0010effd0202030803287800",
    );
    check_new(input(3, ExecAction::Cancel), "05000d0010effd020303080400");
    check_new(
        Envelope::new(
            Sender::Node(node()),
            14,
            Body::ExecOutput(ExecOutput {
                session: 0xbeef,
                seq: 4,
                stream: ExecStream::Stderr,
                data: BVec::from_vec(b"hi\n".to_vec()).unwrap(),
                stdin_acked: 2,
            }),
        ),
        // 05 | 01 Node "pi-1" | 0e seq | 00 | 11 ExecOutput | effd02 | 04 seq | 01 Stderr |
        // 03 "hi\n" | 02 stdin acked | 00
        "05010470692d310e0011effd0204010368690a0200",
    );
    check_new(
        Envelope::new(
            Sender::Node(node()),
            15,
            Body::ExecExit(ExecExit {
                session: 0xbeef,
                seq: 5,
                code: Some(3),
                error: None,
            }),
        ),
        // 05 | 01 Node "pi-1" | 0f seq | 00 | 12 ExecExit | effd02 | 05 seq | 01 Some 06 (3) |
        // 00 no error | 00
        "05010470692d310f0012effd020501060000",
    );
}

#[test]
fn usage() {
    check_new(
        Envelope::new(
            Sender::Node(node()),
            13,
            Body::Usage(NodeUsage {
                cpu_millis: 250,
                memory_bytes: 1000,
                disk_used_bytes: 2,
                disk_total_bytes: 3,
                temperature_millicelsius: Some(-1500),
                pods: BVec::from_vec(vec![PodUsage {
                    uid: s("u1"),
                    cpu_millis: 100,
                    memory_bytes: 4,
                }])
                .unwrap(),
            }),
        ),
        // 05 | 01 Node "pi-1" | 0d seq | 00 | 0d Usage | fa01 cpu 250 | e807 memory 1000 |
        // 02 disk used | 03 disk total | 01 Some, zigzag -1500 = 2999 = b717 | 01 pod: "u1", 64 cpu
        // 100, 04 memory | 00 no signature
        "05010470692d310d000dfa01e8070203 01b717 01 02 7531 64 04 00"
            .replace(' ', "")
            .as_str(),
    );
}

#[test]
fn config_map_part() {
    let data = ConfigMapData {
        items: BVec::from_vec(vec![ConfigMapItem {
            key: s("k"),
            value: BVec::from_vec(b"v".to_vec()).unwrap(),
        }])
        .unwrap(),
    };
    let mut parts = data.parts(&s("game")).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(ConfigMapData::assemble(&parts).unwrap(), data);
    parts[0].term = 9;
    check_new(
        Envelope::new(
            Sender::Coordinator,
            14,
            Body::ConfigMapPart(parts[0].clone()),
        ),
        // 05 | 00 Coordinator | 0e seq | 00 | 0e ConfigMapPart | "game" | digest (varint) |
        // 00 index | 01 count | 05 bytes: 01 item, "k", "v" | 09 term | 00 no signature
        "05000e000e 0467616d65 adb88887cdb8888aa301 00 01 05 01016b0176 09 00"
            .replace(' ', "")
            .as_str(),
    );
}

/// A 1 MiB ConfigMap travels in parts that each fit a message; a part of another version
/// or a tampered one does not assemble.
#[test]
fn a_big_config_map_travels_in_parts() {
    let big = ConfigMapData {
        items: BVec::from_vec(vec![ConfigMapItem {
            key: s("blob"),
            value: BVec::from_vec(vec![b'x'; 1024 * 1024 - 4]).unwrap(),
        }])
        .unwrap(),
    };
    let parts = big.parts(&s("big")).unwrap();
    assert_eq!(parts.len(), 6);
    for p in &parts {
        let env = Envelope::new(Sender::Coordinator, 1, Body::ConfigMapPart(p.clone()));
        assert!(env.encode().unwrap().len() <= MAX_MESSAGE_BYTES);
    }
    assert_eq!(ConfigMapData::assemble(&parts).unwrap(), big);
    let mut tampered = parts.clone();
    let mut b = tampered[3].bytes.to_vec();
    b[10] ^= 1;
    tampered[3].bytes = BVec::from_vec(b).unwrap();
    assert!(ConfigMapData::assemble(&tampered).is_err());
    assert!(ConfigMapData::assemble(&parts[..5]).is_err());
}

fn small_table() -> ServiceTable {
    let web = ServiceEntry {
        name: s("web"),
        vip: Ipv4Addr::new(10, 43, 0, 2),
        load_balancer: false,
        affinity_secs: 0,
        ports: BVec::from_vec(vec![ServicePortEntry {
            port: 80,
            protocol: Protocol::Tcp,
            node_port: Some(30080),
            name: Some(s("http")),
        }])
        .unwrap(),
        endpoints: BVec::from_vec(vec![ServiceEndpoint {
            ip: Ipv4Addr::new(10, 42, 1, 5),
            target_ports: BVec::from_vec(vec![8080]).unwrap(),
        }])
        .unwrap(),
    };
    let route = NodeRoute {
        cidr: s("10.42.1.0/24"),
        via: Ipv4Addr::new(192, 168, 1, 10),
    };
    ServiceTable::new(
        BVec::from_vec(vec![web]).unwrap(),
        BVec::from_vec(vec![route]).unwrap(),
    )
    .unwrap()
}

/// The lead renumbers the variant byte (`0f`) when other v5 messages merge before it.
#[test]
fn service_table() {
    let mut table = small_table();
    table.check().unwrap();
    // The term is not content: the digest stays.
    table.term = 3;
    table.check().unwrap();
    check_new(
        Envelope::new(Sender::Coordinator, 14, Body::ServiceTable(table)),
        // 05 | 00 Coordinator | 0e seq | 00 | 13 ServiceTable | digest (varint) |
        // 01 service: "web", 10.43.0.2, 00 not LB, 00 no affinity, 01 port: 80, 00 tcp,
        // 01 nodePort 30080, 01 name "http"; 01 endpoint: 10.42.1.5, 01 port 8080 |
        // 01 route: "10.42.1.0/24" via 192.168.1.10 | 03 term | 00 every node serves
        // LoadBalancers | 00 no signature
        "05000e0013 86cde9a4f5ccc1cb26 \
         01 03776562 0a2b0002 00 00 01 50 00 0180eb01 01 0468747470 01 0a2a0105 01903f \
         01 0c31302e34322e312e302f3234 c0a8010a 03 00 00"
            .replace(' ', "")
            .as_str(),
    );
}

/// LoadBalancer ports on labelled nodes only: the addresses are content (a new digest).
#[test]
fn service_table_with_load_balancer_nodes() {
    let plain = small_table();
    let table = small_table()
        .with_lb_nodes(Some(
            BVec::from_vec(vec![Ipv4Addr::new(192, 168, 1, 12)]).unwrap(),
        ))
        .unwrap();
    table.check().unwrap();
    assert_ne!(table.digest, plain.digest);
    assert!(table.serves_load_balancers(Ipv4Addr::new(192, 168, 1, 12)));
    assert!(!table.serves_load_balancers(Ipv4Addr::new(192, 168, 1, 10)));
    assert!(plain.serves_load_balancers(Ipv4Addr::new(192, 168, 1, 10)));
    let mut forged = table.clone();
    forged.lb_nodes = None;
    assert!(
        forged.check().is_err(),
        "dropping the node list changes the digest"
    );
    let env = Envelope::new(Sender::Coordinator, 1, Body::ServiceTable(table));
    let hex = hex::encode(env.encode().unwrap());
    // ... 00 term | 01 Some, 01 node: 192.168.1.12 | 00 no signature
    assert!(hex.ends_with("c0a8010a000101c0a8010c00"), "{hex}");
    assert_eq!(Envelope::decode(&env.encode().unwrap()).unwrap(), env);
}

/// A table changed on the way (or made without its digest) is refused by `check`, and
/// one over the message limit does not decode.
#[test]
fn a_tampered_or_oversized_service_table_is_refused() {
    let mut t = small_table();
    let mut web = t.services[0].clone();
    web.affinity_secs = 60;
    t.services = BVec::from_vec(vec![web]).unwrap();
    assert!(t.check().is_err());
    let mut t = small_table();
    t.routes = BVec::new();
    assert!(t.check().is_err());

    let many: Vec<ServiceEndpoint> = (0..MAX_SERVICE_ENDPOINTS as u32)
        .map(|i| ServiceEndpoint {
            ip: Ipv4Addr::from(0x0a2a_0000 + i),
            target_ports: BVec::from_vec(vec![8080; 8]).unwrap(),
        })
        .collect();
    let mut big = small_table();
    big.services = BVec::from_vec(
        (0..30)
            .map(|_| ServiceEntry {
                endpoints: BVec::from_vec(many.clone()).unwrap(),
                ..small_table().services[0].clone()
            })
            .collect(),
    )
    .unwrap();
    let env = Envelope::new(Sender::Coordinator, 1, Body::ServiceTable(big));
    assert!(matches!(env.encode(), Err(ProtoError::TooLarge { .. })));
    let mut bytes = Envelope::new(Sender::Coordinator, 1, Body::ServiceTable(small_table()))
        .encode()
        .unwrap();
    bytes.resize(MAX_MESSAGE_BYTES + 1, 0);
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(ProtoError::TooLarge { .. })
    ));
}

fn node_cron() -> NodeCron {
    NodeCron {
        name: s("tick"),
        uid: s("u1"),
        pod: PodSpec {
            name: s("tick"),
            uid: s("u1"),
            host_network: false,
            restart_policy: RestartPolicy::Never,
            termination_grace_secs: 1,
            containers: BVec::new(),
            init_containers: BVec::new(),
            volumes: BVec::new(),
            image_pull_secrets: BVec::new(),
            priority: 0,
            dns: None,
        },
        policy: CronPolicy::Forbid,
        starting_deadline_secs: Some(30),
        backoff_limit: 6,
        successful_history: 3,
        failed_history: 1,
        first: 1_800_000_060,
        deltas: BVec::from_vec(vec![60, 60]).unwrap(),
    }
}

/// v5 appended `crons` to the desired state: an every-minute schedule costs a byte an
/// instant. A v4 agent is never sent one, and the v4 shape has no such field.
#[test]
fn desired_state_with_a_node_cron() {
    let cron = node_cron();
    assert_eq!(
        cron.fires().collect::<Vec<_>>(),
        vec![1_800_000_060, 1_800_000_120, 1_800_000_180]
    );
    let env = Envelope::new(
        Sender::Coordinator,
        5,
        Body::Desired(DesiredState {
            generation: 3,
            pods: BVec::new(),
            secrets: BVec::new(),
            term: 2,
            crons: BVec::from_vec(vec![cron]).unwrap(),
        }),
    );
    let bytes = env.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        // 05 | 00 Coordinator | 05 seq | 00 | 04 Desired | 03 generation | 00 pods |
        // 00 secrets | 02 term | 01 cron: "tick", "u1", pod ("tick", "u1", 00 host network, 02 Never,
        // 01 grace, 00 containers, 00 inits, 00 volumes, 00 pull secrets, 00 priority,
        // 00 no DNS settings),
        // 01 Forbid, 01 1e deadline 30, 06 backoff, 03 01 history, first (varint),
        // 02 deltas 3c 3c | 00 no signature
        "0500050004 03 00 00 02 01 047469636b 027531 047469636b 027531 00 02 01 00 00 00 00 00 00 \
         01 011e 06 03 01 bca4a7da06 02 3c3c 00"
            .replace([' ', '\\'], "")
    );
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    // At v4 the same state is written without its term and CronJobs.
    let v4 = env.clone().at_version(4).unwrap().encode().unwrap();
    assert_eq!(hex::encode(&v4), "0400050004030000 00".replace(' ', ""));
}

#[test]
fn cron_runs() {
    let report = CronReport {
        clock_untrusted: false,
        runs: BVec::from_vec(vec![
            CronRun {
                cron: s("tick"),
                minute: 30_000_001,
                started_at_ms: 1_800_000_060_500,
                finished_at_ms: Some(1_800_000_063_000),
                outcome: CronOutcome::Succeeded,
            },
            CronRun {
                cron: s("tick"),
                minute: 30_000_002,
                started_at_ms: 1_800_000_120_400,
                finished_at_ms: None,
                outcome: CronOutcome::Failed(s("exit code 1")),
            },
        ])
        .unwrap(),
    };
    check_new(
        Envelope::new(Sender::Node(node()), 7, Body::CronRuns(report)),
        // 05 | 01 Node "pi-1" | 07 seq | 00 | 14 CronRuns | 00 clock trusted | 02 runs:
        // "tick", minute, started, 01 finished, 01 Succeeded; "tick", minute, started,
        // 00 not finished, 02 Failed "exit code 1" | 00 no signature
        "050104 70692d31 07 00 14 00 02 \
         047469636b 8187a70e d4f8f4c2b134 01 988cf5c2b134 01 \
         047469636b 8287a70e d0ccf8c2b134 00 02 0b6578697420636f64652031 00"
            .replace([' ', '\\'], "")
            .as_str(),
    );
}

/// v5's pod DNS settings: `dnsPolicy: None` with a `dnsConfig`, and a `hostAliases` entry.
/// A pod without them pays one byte (00, above); a v4 agent is never sent one (the
/// coordinator withholds the pod), and the v4 shape has no such field.
#[test]
fn pod_dns_settings() {
    let pod = PodSpec {
        dns: Some(PodDns {
            policy: DnsPolicy::None,
            nameservers: BVec::from_vec(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))]).unwrap(),
            searches: BVec::from_vec(vec![s("lab.example")]).unwrap(),
            options: BVec::from_vec(vec![
                DnsOption {
                    name: s("ndots"),
                    value: Some(s("2")),
                },
                DnsOption {
                    name: s("edns0"),
                    value: None,
                },
            ])
            .unwrap(),
            host_aliases: BVec::from_vec(vec![HostAlias {
                ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                hostnames: BVec::from_vec(vec![s("db.lab")]).unwrap(),
            }])
            .unwrap(),
        }),
        ..node_cron().pod
    };
    let env = Envelope::new(
        Sender::Coordinator,
        5,
        Body::Desired(DesiredState {
            generation: 3,
            pods: BVec::from_vec(vec![pod]).unwrap(),
            secrets: BVec::new(),
            term: 2,
            crons: BVec::new(),
        }),
    );
    let bytes = env.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        // 05 | 00 Coordinator | 05 seq | 00 | 04 Desired | 03 generation | 01 pod ("tick",
        // "u1", 00 host network, 02 Never, 01 grace, 00 containers, 00 inits, 00 volumes,
        // 00 pull secrets, 00 priority, 01 DNS settings: 03 None, 01 nameserver 00 V4
        // c0000235, 01 search "lab.example", 02 options "ndots" 01 "2" and "edns0" 00,
        // 01 alias 00 V4 0a010203 01 "db.lab") | 00 secrets | 02 term | 00 CronJobs |
        // 00 no signature
        "0500050004 03 01 047469636b 027531 00 02 01 00 00 00 00 00 \
         01 03 01 00c0000235 01 0b6c61622e6578616d706c65 02 056e646f7473 01 0132 \
         0565646e7330 00 01 000a010203 01 0664622e6c6162 00 02 00 00"
            .replace([' ', '\\'], "")
    );
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
}
