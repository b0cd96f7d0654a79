//! Golden bytes: the exact encoding of representative messages. If one of these fails,
//! the wire format changed: bump `PROTO_VERSION` and document it in docs/protocol.md,
//! never just update the bytes.

use baton_proto::*;
use core::net::{IpAddr, Ipv4Addr};

fn node() -> NodeName {
    NodeName::new("pi-1").unwrap()
}

fn s<const N: usize>(v: &str) -> BString<N> {
    BString::new(v).unwrap()
}

fn check(env: Envelope, golden_hex: &str) {
    let bytes = env.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        golden_hex,
        "encoding of {env:?} changed"
    );
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
}

#[test]
fn heartbeat() {
    let env = Envelope::new(
        Sender::Node(node()),
        300,
        Body::Heartbeat(Heartbeat {
            applied_generation: 7,
            status_digest: 0x0102_0304_0506_0708,
        }),
    );
    // 01 version | 01 Node, 04 "pi-1" | ac02 seq=300 | 01 Heartbeat | 07 gen | digest varint | 00 no signature
    check(
        env,
        "0101047069 2d31ac020107 888e98a8c0e0808101 00"
            .replace(' ', "")
            .as_str(),
    );
}

#[test]
fn offline_and_status_request() {
    check(
        Envelope::new(Sender::Node(node()), 0, Body::Offline),
        "01010470692d31000300",
    );
    check(
        Envelope::new(Sender::Coordinator, 1, Body::StatusRequest),
        "0100010500",
    );
}

#[test]
fn hello() {
    let env = Envelope::new(
        Sender::Node(node()),
        1,
        Body::Hello(Hello {
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
        }),
    );
    check(env, &HELLO.replace([' ', '\\'], ""));
}
const HELLO: &str = "010104 70692d31 01 00 05 61726d3634 00 05 6c696e7578 05 302e312e30 \
ac1b 8080808004 6e 01 04 7a6f6e65 03 6c6162 01 00 0a000002 0c 31302e34322e312e302f3234 03 00";

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
            value: s("hi"),
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
    };
    let pod = PodSpec {
        name: s("web-abc"),
        uid: s("u1"),
        host_network: false,
        restart_policy: RestartPolicy::Always,
        termination_grace_secs: 30,
        containers: BVec::from_vec(vec![c]).unwrap(),
    };
    let env = Envelope::new(
        Sender::Coordinator,
        9,
        Body::Desired(DesiredState {
            generation: 2,
            pods: BVec::from_vec(vec![pod]).unwrap(),
        }),
    );
    check(env, &DESIRED.replace([' ', '\\'], ""));
}
const DESIRED: &str = "0100090402010777 65622d616263 02 7531 00 00 1e 01 03 776562 \
20 3132372e302e302e313a353030302f6261746f6e2f687474702d6563686f3a31 01 00 02 022d70 0438303830 \
01 074d455353414745 026869 01 042f777777 01 903f01 5000 64 01f403 8080800801 808080 1000";

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
                    },
                    ContainerStatus {
                        name: s("b"),
                        state: ContainerState::Failed { reason: s("x") },
                        restart_count: 0,
                    },
                ])
                .unwrap(),
            }])
            .unwrap(),
        }),
    );
    check(
        env,
        "010104 70692d31 02 02 02 01 0170 0175 01 00 0a2a0102 02 0161 04 01 0162 05 0178 00 00"
            .replace(' ', "")
            .as_str(),
    );
}
