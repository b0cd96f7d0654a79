use super::*;

/// `node("n1", "arm64", "4", "4Gi", 110)` is a ready linux node.
fn node(name: &str, arch: &str, cpu: &str, mem: &str, pods: u16) -> api::Node {
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: Default::default(),
        status: api::NodeStatus {
            ready: true,
            arch: arch.into(),
            os: "linux".into(),
            agent_version: "0.1.0".into(),
            allocatable: api::NodeCapacity {
                cpu_millis: quantity::parse_cpu_millis(cpu).expect("cpu"),
                memory_bytes: quantity::parse_memory_bytes(mem).expect("mem"),
                pods,
            },
            ..Default::default()
        },
    }
}

/// Per container: (request cpu, request memory, limit cpu, limit memory).
type Resources<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn pod(containers: &[Resources<'_>]) -> api::PodSpec {
    api::PodSpec {
        containers: containers
            .iter()
            .enumerate()
            .map(|(i, (rc, rm, lc, lm))| api::Container {
                name: format!("c{i}"),
                image: "x".into(),
                resources: api::ResourceRequirements {
                    requests: api::ResourceList {
                        cpu: rc.map(Into::into),
                        memory: rm.map(Into::into),
                    },
                    limits: api::ResourceList {
                        cpu: lc.map(Into::into),
                        memory: lm.map(Into::into),
                    },
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn used(cpu: u64, mem: &str, pods: u32) -> Usage {
    Usage {
        cpu_millis: cpu,
        memory_bytes: quantity::parse_memory_bytes(mem).expect("mem"),
        pods,
    }
}

#[test]
fn requests_default_to_limits_and_sum_over_containers() {
    let spec = pod(&[
        (Some("100m"), Some("64Mi"), Some("1"), Some("128Mi")),
        (None, None, Some("250m"), Some("32Mi")),
        (None, None, None, None),
    ]);
    assert_eq!(pod_requests(&spec), Ok(used(350, "96Mi", 1)));
}

#[test]
fn node_labels_add_well_known_ones() {
    let mut n = node("pi-1", "arm64", "4", "4Gi", 10);
    n.metadata.labels.insert("zone".into(), "garage".into());
    n.metadata.labels.insert(LABEL_ARCH.into(), "lies".into());
    let l = node_labels(&n);
    let want: BTreeMap<String, String> = [
        ("beta.kubernetes.io/arch", "arm64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "arm64"),
        ("kubernetes.io/hostname", "pi-1"),
        ("kubernetes.io/os", "linux"),
        ("zone", "garage"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(l, want);
}

#[test]
fn table() {
    let pi1 = node("pi-1", "arm64", "4", "4Gi", 110);
    let pi2 = node("pi-2", "arm64", "4", "4Gi", 110);
    let x86 = node("nuc", "amd64", "8", "16Gi", 110);
    let mut down = node("down", "arm64", "4", "4Gi", 110);
    down.status.ready = false;
    let tiny = node("tiny", "arm", "1", "256Mi", 2);
    let mut zoned = node("zoned", "arm64", "4", "4Gi", 110);
    let mut full = node("full", "arm64", "8", "16Gi", 110);
    full.spec.taints = crate::decide::taints::with_condition_taints(
        &[],
        &[api::NodeCondition {
            type_: "DiskPressure".into(),
            ..Default::default()
        }],
    );
    zoned.metadata.labels.insert("zone".into(), "barn".into());

    let small = pod(&[(Some("100m"), Some("64Mi"), None, None)]);
    let big_mem = pod(&[(None, None, None, Some("8Gi"))]);
    let mut on_arm64 = small.clone();
    on_arm64
        .node_selector
        .insert(LABEL_ARCH.into(), "arm64".into());
    let mut on_beta_amd64 = small.clone();
    on_beta_amd64
        .node_selector
        .insert(LABEL_BETA_ARCH.into(), "amd64".into());
    let mut in_barn = small.clone();
    in_barn.node_selector.insert("zone".into(), "barn".into());
    let mut on_host = small.clone();
    on_host
        .node_selector
        .insert(LABEL_HOSTNAME.into(), "pi-2".into());
    let mut bad = small.clone();
    bad.containers[0].resources.requests.cpu = Some("lots".into());

    let c = |node, used, same| Candidate {
        node,
        used,
        pods_of_same_owner: same,
        host_ports: BTreeSet::new(),
    };
    let with_ports = |node, ports: &[u16]| Candidate {
        node,
        used: Usage::default(),
        pods_of_same_owner: 0,
        host_ports: ports.iter().map(|p| (api::Protocol::TCP, *p)).collect(),
    };
    let mut on_8080 = small.clone();
    on_8080.containers[0].ports.push(api::ContainerPort {
        container_port: 80,
        host_port: Some(8080),
        ..Default::default()
    });
    let mut udp_8080 = on_8080.clone();
    udp_8080.containers[0].ports[0].protocol = api::Protocol::UDP;
    let mut host_net_80 = small.clone();
    host_net_80.host_network = true;
    host_net_80.containers[0].ports.push(api::ContainerPort {
        container_port: 80,
        ..Default::default()
    });
    let idle = Usage::default();
    type Row<'a> = (
        &'a str,
        &'a api::PodSpec,
        Vec<Candidate<'a>>,
        Result<&'a str, &'a str>,
    );
    let rows: Vec<Row> = vec![
            ("no nodes", &small, vec![], Err("0/0 nodes are available: no nodes registered")),
            ("single node", &small, vec![c(&pi1, idle, 0)], Ok("pi-1")),
            ("ties break by name", &small, vec![c(&pi2, idle, 0), c(&pi1, idle, 0)], Ok("pi-1")),
            (
                "spread beats free capacity",
                &small,
                vec![c(&x86, idle, 1), c(&pi1, used(3000, "3Gi", 5), 0)],
                Ok("pi-1"),
            ),
            (
                "least requested among equals",
                &small,
                vec![c(&pi1, used(2000, "1Gi", 2), 0), c(&pi2, used(500, "1Gi", 2), 0)],
                Ok("pi-2"),
            ),
            ("not ready skipped", &small, vec![c(&down, idle, 0), c(&pi2, idle, 0)], Ok("pi-2")),
            (
                "a node under disk pressure is skipped, however empty",
                &small,
                vec![c(&full, idle, 0), c(&pi2, used(3000, "3Gi", 5), 3)],
                Ok("pi-2"),
            ),
            (
                "an untolerated taint is reported",
                &small,
                vec![c(&full, idle, 0), c(&down, idle, 0)],
                Err("0/2 nodes are available: 1 node(s) not ready, 1 node(s) had untolerated taint(s)"),
            ),
            ("arch selector", &on_arm64, vec![c(&x86, idle, 0), c(&pi2, idle, 0)], Ok("pi-2")),
            ("beta arch selector", &on_beta_amd64, vec![c(&pi1, idle, 0), c(&x86, idle, 0)], Ok("nuc")),
            ("user label selector", &in_barn, vec![c(&pi1, idle, 0), c(&zoned, idle, 0)], Ok("zoned")),
            ("hostname selector", &on_host, vec![c(&pi1, idle, 0), c(&pi2, idle, 1)], Ok("pi-2")),
            (
                "limit-only memory counts as request",
                &big_mem,
                vec![c(&pi1, idle, 0), c(&x86, idle, 3)],
                Ok("nuc"),
            ),
            (
                "exact fit is allowed",
                &small,
                vec![c(&tiny, used(900, "192Mi", 1), 0)],
                Ok("tiny"),
            ),
            (
                "summary in filter order",
                &on_arm64,
                vec![
                    c(&down, idle, 0),
                    c(&x86, idle, 0),
                    c(&tiny, idle, 0),
                    c(&pi1, used(3950, "4050Mi", 3), 0),
                    c(&pi2, used(0, "0", 110), 0),
                ],
                Err("0/5 nodes are available: 1 node(s) not ready, 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had too many pods, 1 node(s) had insufficient cpu, 1 node(s) had insufficient memory"),
            ),
            (
                "a taken host port moves the pod",
                &on_8080,
                vec![with_ports(&pi1, &[8080]), with_ports(&pi2, &[80])],
                Ok("pi-2"),
            ),
            (
                "the same port number on another protocol is free",
                &udp_8080,
                vec![with_ports(&pi1, &[8080])],
                Ok("pi-1"),
            ),
            (
                "hostNetwork ports are host ports",
                &host_net_80,
                vec![with_ports(&pi1, &[80])],
                Err("0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports"),
            ),
            (
                "insufficient memory everywhere",
                &big_mem,
                vec![c(&pi1, idle, 0), c(&pi2, idle, 0)],
                Err("0/2 nodes are available: 2 node(s) had insufficient memory"),
            ),
            (
                "full tiny node",
                &small,
                vec![c(&tiny, used(950, "200Mi", 2), 0)],
                Err("0/1 nodes are available: 1 node(s) had too many pods, 1 node(s) had insufficient cpu, 1 node(s) had insufficient memory"),
            ),
            (
                "unparseable request",
                &bad,
                vec![c(&pi1, idle, 0)],
                Err("invalid resource request: quantity \"lots\" is not a valid Kubernetes quantity"),
            ),
        ];
    for (name, spec, candidates, want) in rows {
        let got = schedule(spec, &candidates);
        let got = match &got {
            Ok(n) => Ok(n.as_str()),
            Err(u) => Err(u.reason.as_str()),
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn node_affinity_filters_by_its_terms_and_ranks_by_preferred_weights() {
    use api::NodeSelectorOperator::*;
    let expr = |key: &str, op, values: &[&str]| api::NodeSelectorRequirement {
        key: key.into(),
        operator: op,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let term = |e: Vec<api::NodeSelectorRequirement>| api::NodeSelectorTerm {
        match_expressions: e,
    };
    let mut nodes = [
        node("cam-1", "arm64", "4", "4Gi", 110),
        node("cam-2", "arm64", "4", "4Gi", 110),
        node("gw", "amd64", "4", "4Gi", 110),
    ];
    nodes[0]
        .metadata
        .labels
        .insert("zone".into(), "north".into());
    nodes[0].metadata.labels.insert("cores".into(), "4".into());
    nodes[1]
        .metadata
        .labels
        .insert("zone".into(), "south".into());
    nodes[1].metadata.labels.insert("cores".into(), "2".into());
    let cands: Vec<Candidate<'_>> = nodes
        .iter()
        .map(|n| Candidate {
            node: n,
            used: Usage::default(),
            pods_of_same_owner: 0,
            host_ports: BTreeSet::new(),
        })
        .collect();
    let with = |required: Option<Vec<api::NodeSelectorTerm>>,
                preferred: Vec<(u32, api::NodeSelectorTerm)>| {
        let mut p = pod(&[(None, None, None, None)]);
        p.affinity = Some(api::Affinity {
            node_affinity: Some(api::NodeAffinity {
                required: required.map(|t| api::RequiredNodeSelector {
                    node_selector_terms: t,
                }),
                preferred: preferred
                    .into_iter()
                    .map(|(weight, preference)| api::PreferredSchedulingTerm { weight, preference })
                    .collect(),
            }),
        });
        p
    };
    // Terms are ORed, expressions ANDed.
    let arm_south = with(
        Some(vec![
            term(vec![
                expr("kubernetes.io/arch", In, &["arm64"]),
                expr("zone", NotIn, &["north"]),
            ]),
            term(vec![expr("nothing", Exists, &[])]),
        ]),
        vec![],
    );
    assert_eq!(schedule(&arm_south, &cands).unwrap(), "cam-2");
    let many_cores = with(Some(vec![term(vec![expr("cores", Gt, &["3"])])]), vec![]);
    assert_eq!(schedule(&many_cores, &cands).unwrap(), "cam-1");
    let unlabeled = with(
        Some(vec![term(vec![expr("zone", DoesNotExist, &[])])]),
        vec![],
    );
    assert_eq!(schedule(&unlabeled, &cands).unwrap(), "gw");
    let none = with(Some(vec![term(vec![expr("zone", In, &["east"])])]), vec![]);
    assert_eq!(
        schedule(&none, &cands).unwrap_err().reason,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector"
    );
    // Preferences rank before spreading; the heavier matching one wins.
    let prefer = with(
        None,
        vec![
            (10, term(vec![expr("zone", In, &["north"])])),
            (50, term(vec![expr("kubernetes.io/hostname", In, &["gw"])])),
        ],
    );
    assert_eq!(schedule(&prefer, &cands).unwrap(), "gw");
    let mut spread = cands.clone();
    spread[2].pods_of_same_owner = 5;
    assert_eq!(
        schedule(&prefer, &spread).unwrap(),
        "gw",
        "preferred beats spreading"
    );
}
