//! The core driven by events, as the MQTT bridge and HTTP server drive it, with an
//! in-memory store; split by concern like the core itself.

mod agent_updates;
mod config_maps;
mod cron_nodes;
mod daemon_sets;
mod exec;
mod jobs;
mod metrics;
mod namespaces;
mod node_spec;
mod nodes;
mod pod_dns;
mod pressure;
mod requests;
mod rollouts;
mod scheduling;
mod secrets;
mod services;
mod txn;
mod watch;

use super::*;
use crate::contract::ApplyAction;
use crate::decide::rollout;
use crate::model::manifest;
use crate::store::MemStore;
use baton_proto::{
    BString, BVec, Capacity, ContainerState, ContainerStatus, DesiredState, Heartbeat, Hello,
    LinkProfile, NodeStatus, PodStatus, Pressure, PressureKind,
};

const TIMEOUT: Duration = Duration::from_secs(20);

fn deployment(name: &str, replicas: u32, cpu: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: busybox:1.36
        resources:
          limits: {{cpu: {cpu}, memory: 32Mi}}
"
    )
}

struct Harness {
    core: Core,
    out: mpsc::Receiver<Outbound>,
    store: Arc<MemStore>,
    /// The imported agent releases the core sees (the registry's, in a server).
    releases: Arc<TestReleases>,
}

/// An in-memory release index.
#[derive(Default)]
struct TestReleases(std::sync::Mutex<Vec<crate::model::release::ReleaseRecord>>);

impl crate::model::release::ReleaseIndex for TestReleases {
    fn releases(&self) -> Vec<crate::model::release::ReleaseRecord> {
        self.0.lock().unwrap().clone()
    }
}

impl Harness {
    fn new(store: Arc<MemStore>) -> Self {
        Self::build(store, None)
    }

    /// A core that evicts a lost node's pods after `timeout`.
    fn evicting_after(store: Arc<MemStore>, timeout: Duration) -> Self {
        Self::build(store, Some(timeout))
    }

    fn build(store: Arc<MemStore>, eviction: Option<Duration>) -> Self {
        let (tx, out) = mpsc::channel(1024);
        let releases = Arc::new(TestReleases::default());
        let mut core = Core::new(store.clone(), tx, TIMEOUT)
            .unwrap()
            .with_releases(releases.clone(), Default::default());
        if let Some(t) = eviction {
            core = core.with_pod_eviction_timeout(t);
        }
        Self {
            core,
            out,
            store,
            releases,
        }
    }
    fn api(&mut self, op: ApiOp) -> Result<ApiReply, ApiError> {
        let (req, mut rx) = ApiRequest::new(op);
        self.core.handle(Event::Api(req));
        rx.try_recv().expect("the core answers every request")
    }
    fn apply(&mut self, yaml: &str) -> Result<Vec<Applied>, ApiError> {
        self.apply_as(yaml, None, Access::everywhere())
    }
    /// `apply -n namespace` by a caller with `access`.
    fn apply_as(
        &mut self,
        yaml: &str,
        namespace: Option<&str>,
        access: Access,
    ) -> Result<Vec<Applied>, ApiError> {
        let op = ApiOp::Apply {
            yaml: yaml.into(),
            namespace: namespace.map(str::to_owned),
            access,
        };
        match self.api(op)? {
            ApiReply::Applied(a) => Ok(a),
            other => panic!("unexpected {other:?}"),
        }
    }
    fn send(&mut self, node: &str, body: Body) {
        self.core.handle(Event::Inbound {
            node: nn(node),
            body,
            proto: baton_proto::PROTO_VERSION,
        });
    }
    fn drain(&mut self) -> Vec<Outbound> {
        let mut v = Vec::new();
        while let Ok(m) = self.out.try_recv() {
            v.push(m);
        }
        v
    }
    fn pods(&mut self) -> Vec<api::Pod> {
        match self
            .api(ApiOp::Get {
                kind: ResourceKind::Pod,
                name: None,
            })
            .unwrap()
        {
            ApiReply::Objects(o) => o
                .into_iter()
                .map(|v| match v {
                    ApiObject::Pod(p) => p,
                    other => panic!("not a pod: {other:?}"),
                })
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    }
    /// The reasons of the events about `object` (`pod/NAME`, `node/NAME`), oldest first.
    fn reasons(&mut self, object: &str) -> Vec<String> {
        let ApiReply::Events(ev) = self
            .api(ApiOp::Events {
                object: Some(object.into()),
            })
            .unwrap()
        else {
            panic!("not events")
        };
        ev.into_iter().map(|e| e.reason).collect()
    }
    fn node(&mut self, name: &str) -> api::Node {
        match self
            .api(ApiOp::Get {
                kind: ResourceKind::Node,
                name: Some(name.into()),
            })
            .unwrap()
        {
            ApiReply::Object(ApiObject::Node(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }
    fn snapshot(&self) -> Vec<Vec<(String, Vec<u8>)>> {
        [Table::Deployments, Table::Pods, Table::Nodes, Table::Events]
            .into_iter()
            .map(|t| self.store.list(t).unwrap())
            .collect()
    }
}

fn nn(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn hello(cpu_millis: u32) -> Body {
    Body::Hello(Hello {
        arch: "arm64".try_into().unwrap(),
        arch_variant: Default::default(),
        os: "linux".try_into().unwrap(),
        agent_version: "0.1.0".try_into().unwrap(),
        allocatable: Capacity {
            cpu_millis,
            memory_bytes: 1 << 30,
            pods: 110,
        },
        labels: BVec::new(),
        address: Some("192.168.1.10".parse().unwrap()),
        pod_cidr: BString::new("10.42.1.0/24").unwrap(),
        applied_generation: 0,
        last_connect_error: None,
        taints: BVec::new(),
    })
}

/// The last desired state sent to `node` among `msgs`.
fn desired_for(msgs: &[Outbound], node: &str) -> Option<DesiredState> {
    msgs.iter().rev().find_map(|m| match &m.body {
        Body::Desired(d) if m.node.as_str() == node => {
            assert!(m.retain, "desired state is published retained");
            Some(d.clone())
        }
        _ => None,
    })
}

fn status_requests(msgs: &[Outbound], node: &str) -> usize {
    msgs.iter()
        .filter(|m| m.node.as_str() == node && m.body == Body::StatusRequest)
        .count()
}

fn running_status(desired: &DesiredState, applied: u64) -> NodeStatus {
    let pods = desired
        .pods
        .iter()
        .map(|p| PodStatus {
            name: p.name.clone(),
            uid: p.uid.clone(),
            pod_ip: Some("10.42.1.5".parse().unwrap()),
            containers: BVec::from_vec(vec![ContainerStatus {
                name: BString::new("main").unwrap(),
                state: ContainerState::Running {
                    started_at_ms: 1_700_000_000_000,
                },
                restart_count: 0,
                last_termination: None,
                ready: true,
            }])
            .unwrap(),
            init_containers: BVec::new(),
            evicted: None,
        })
        .collect();
    NodeStatus {
        applied_generation: applied,
        pods: BVec::from_vec(pods).unwrap(),
    }
}

fn two_nodes() -> Harness {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    let msgs = h.drain();
    for n in ["pi-1", "pi-2"] {
        let d = desired_for(&msgs, n).expect("a hello gets a desired state");
        assert!(d.generation >= 1 && d.pods.is_empty(), "{d:?}");
        // The agent sends its status after every Hello by itself; asking here made it
        // say Hello again, and the two ping-ponged.
        assert_eq!(status_requests(&msgs, n), 0);
    }
    h
}
