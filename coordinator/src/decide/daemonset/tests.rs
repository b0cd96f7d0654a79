use std::collections::BTreeMap;

use super::*;

fn ds(image: &str) -> api::DaemonSet {
    let labels = BTreeMap::from([("app".to_string(), "agent".to_string())]);
    api::DaemonSet {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        metadata: api::ObjectMeta {
            name: "agent".into(),
            generation: 2,
            ..Default::default()
        },
        spec: api::DaemonSetSpec {
            selector: api::LabelSelector {
                match_labels: labels.clone(),
            },
            template: api::PodTemplateSpec {
                metadata: api::TemplateMeta {
                    labels,
                    annotations: BTreeMap::new(),
                },
                spec: api::PodSpec {
                    containers: vec![api::Container {
                        name: "c".into(),
                        image: image.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            update_strategy: Default::default(),
            revision_history_limit: 10,
        },
        status: Default::default(),
    }
}

fn node(name: &str, labels: &[(&str, &str)]) -> api::Node {
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        spec: Default::default(),
        status: api::NodeStatus {
            ready: true,
            arch: "arm64".into(),
            os: "linux".into(),
            ..Default::default()
        },
    }
}

fn taint(key: &str, effect: api::TaintEffect) -> api::Taint {
    api::Taint {
        key: key.into(),
        value: String::new(),
        effect,
        time_added: None,
    }
}

fn make_ready(p: &mut api::Pod) {
    p.status.phase = api::PodPhase::Running;
    p.status.container_statuses = vec![api::ContainerStatus {
        name: "c".into(),
        state: api::ContainerState::Running {
            started_at: "t".into(),
        },
        ready: true,
        restart_count: 0,
        ..Default::default()
    }];
}

/// A cluster the plans are applied to: created pods start not ready, deleted ones go at
/// once (or stay terminating with `drain`).
struct Sim {
    nodes: Vec<api::Node>,
    pods: BTreeMap<String, api::Pod>,
    next: u32,
    drain: bool,
}

impl Sim {
    fn new(nodes: Vec<api::Node>) -> Self {
        Self {
            nodes,
            pods: BTreeMap::new(),
            next: 0,
            drain: false,
        }
    }

    fn plan(&mut self, d: &api::DaemonSet) -> Vec<Action> {
        let nodes: Vec<&api::Node> = self.nodes.iter().collect();
        let owned: Vec<&api::Pod> = self.pods.values().collect();
        let next = &mut self.next;
        let mut suffix = || {
            *next += 1;
            format!("p{:04}", *next)
        };
        reconcile_daemon_set(d, &nodes, &owned, &mut suffix)
    }

    fn step(&mut self, d: &api::DaemonSet) -> Vec<Action> {
        let actions = self.plan(d);
        for a in &actions {
            match a {
                Action::CreatePod(p) => {
                    let mut p = p.clone();
                    p.metadata.creation_timestamp = format!("t{:04}", self.next);
                    self.pods.insert(p.metadata.name.clone(), p);
                }
                Action::DeletePod(n) if self.drain => {
                    if let Some(p) = self.pods.get_mut(n) {
                        p.metadata.deletion_timestamp = Some("now".into());
                    }
                }
                Action::DeletePod(n) => {
                    self.pods.remove(n);
                }
            }
        }
        actions
    }

    fn ready_all(&mut self) {
        for p in self.pods.values_mut() {
            make_ready(p);
        }
    }

    fn finish_drains(&mut self) {
        self.pods
            .retain(|_, p| p.metadata.deletion_timestamp.is_none());
    }

    /// Live pods by node, as `(node, hash)`.
    fn placement(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .pods
            .values()
            .filter(|p| !is_terminating(p))
            .map(|p| {
                (
                    p.spec.node_name.clone().unwrap_or_default(),
                    hash_of(p).unwrap_or_default().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Wanted nodes without a ready pod.
    fn nodes_without_ready(&self, d: &api::DaemonSet) -> usize {
        self.nodes
            .iter()
            .filter(|n| node_wants(d, n))
            .filter(|n| {
                !self.pods.values().any(|p| {
                    p.spec.node_name.as_deref() == Some(n.metadata.name.as_str()) && is_ready(p)
                })
            })
            .count()
    }
}

#[test]
fn which_nodes_want_the_pod() {
    let mut d = ds("a:1");
    let plain = node("n1", &[]);
    let cam = node("n2", &[("camera", "yes")]);
    assert!(node_wants(&d, &plain) && node_wants(&d, &cam));

    d.spec.template.spec.node_selector = BTreeMap::from([("camera".into(), "yes".into())]);
    assert!(!node_wants(&d, &plain) && node_wants(&d, &cam));
    // Well-known labels count, as for the scheduler.
    d.spec.template.spec.node_selector =
        BTreeMap::from([("kubernetes.io/hostname".into(), "n1".into())]);
    assert!(node_wants(&d, &plain) && !node_wants(&d, &cam));

    // Required node affinity.
    d.spec.template.spec.node_selector.clear();
    d.spec.template.spec.affinity = Some(api::Affinity {
        node_affinity: Some(api::NodeAffinity {
            required: Some(api::RequiredNodeSelector {
                node_selector_terms: vec![api::NodeSelectorTerm {
                    match_expressions: vec![api::NodeSelectorRequirement {
                        key: "camera".into(),
                        operator: api::NodeSelectorOperator::Exists,
                        values: vec![],
                    }],
                }],
            }),
            preferred: vec![],
        }),
    });
    assert!(!node_wants(&d, &plain) && node_wants(&d, &cam));
    d.spec.template.spec.affinity = None;

    // An untolerated NoSchedule or NoExecute taint keeps it off; a toleration lets it on.
    let mut tainted = node("n3", &[]);
    tainted.spec.taints = vec![taint("maintenance", api::TaintEffect::NoSchedule)];
    assert!(!node_wants(&d, &tainted));
    tainted.spec.taints = vec![taint("maintenance", api::TaintEffect::NoExecute)];
    assert!(!node_wants(&d, &tainted));
    tainted.spec.taints = vec![taint("soft", api::TaintEffect::PreferNoSchedule)];
    assert!(node_wants(&d, &tainted));
    tainted.spec.taints = vec![taint("maintenance", api::TaintEffect::NoSchedule)];
    d.spec.template.spec.tolerations = vec![api::Toleration {
        key: "maintenance".into(),
        operator: api::TolerationOperator::Exists,
        value: String::new(),
        effect: None,
        toleration_seconds: None,
    }];
    assert!(node_wants(&d, &tainted));
    d.spec.template.spec.tolerations.clear();

    // Cordoned, under pressure or NotReady: still the node's pod, as in Kubernetes.
    let mut busy = node("n4", &[]);
    busy.spec.unschedulable = true;
    busy.spec.taints = vec![taint(MEMORY_PRESSURE, api::TaintEffect::NoSchedule)];
    busy.status.ready = false;
    assert!(node_wants(&d, &busy));
}

#[test]
fn one_bound_pod_per_matching_node_and_none_elsewhere() {
    let mut d = ds("a:1");
    d.spec.template.spec.node_selector = BTreeMap::from([("camera".into(), "yes".into())]);
    let mut sim = Sim::new(vec![
        node("n1", &[("camera", "yes")]),
        node("n2", &[]),
        node("n3", &[("camera", "yes")]),
    ]);
    let actions = sim.step(&d);
    assert_eq!(actions.len(), 2, "{actions:#?}");
    let hash = template_hash(&d.spec.template);
    assert_eq!(
        sim.placement(),
        vec![("n1".into(), hash.clone()), ("n3".into(), hash.clone())]
    );
    let p = sim.pods.values().next().unwrap();
    assert_eq!(p.metadata.daemon_set.as_deref(), Some("agent"));
    assert_eq!(p.metadata.owner, None, "never a Deployment's pod");
    assert!(p.metadata.name.starts_with("agent-"));
    assert_eq!(p.metadata.name.len(), "agent-".len() + 5);
    // Idempotent, ready or not.
    assert_eq!(sim.step(&d), vec![]);
    sim.ready_all();
    assert_eq!(sim.step(&d), vec![]);

    // n2 is labelled: it gets one. n1 loses its label: its pod goes.
    sim.nodes[1]
        .metadata
        .labels
        .insert("camera".into(), "yes".into());
    sim.nodes[0].metadata.labels.clear();
    sim.step(&d);
    assert_eq!(
        sim.placement(),
        vec![("n2".into(), hash.clone()), ("n3".into(), hash.clone())]
    );
    // A node that leaves the fleet takes nothing with it elsewhere: its pod is deleted.
    sim.nodes.remove(2);
    sim.step(&d);
    assert_eq!(sim.placement(), vec![("n2".into(), hash)]);
}

#[test]
fn a_lost_node_keeps_its_pod_and_a_failed_pod_is_replaced_on_its_node() {
    let d = ds("a:1");
    let mut sim = Sim::new(vec![node("n1", &[]), node("n2", &[])]);
    sim.step(&d);
    sim.ready_all();
    sim.nodes[0].status.ready = false;
    assert_eq!(sim.step(&d), vec![], "nothing moves off a NotReady node");

    let failed = sim.pods.keys().next().unwrap().clone();
    sim.pods.get_mut(&failed).unwrap().status.phase = api::PodPhase::Failed;
    let actions = sim.step(&d);
    assert_eq!(actions.len(), 2, "{actions:#?}");
    assert_eq!(actions[0], Action::DeletePod(failed));
    assert_eq!(sim.placement().len(), 2);
}

#[test]
fn a_no_execute_taint_tolerated_for_a_while_keeps_the_pod_but_gets_no_new_one() {
    let mut d = ds("a:1");
    d.spec.template.spec.tolerations = vec![api::Toleration {
        key: "flaky".into(),
        operator: api::TolerationOperator::Exists,
        value: String::new(),
        effect: Some(api::TaintEffect::NoExecute),
        toleration_seconds: Some(300),
    }];
    let mut sim = Sim::new(vec![node("n1", &[])]);
    sim.step(&d);
    sim.ready_all();
    sim.nodes[0].spec.taints = vec![taint("flaky", api::TaintEffect::NoExecute)];
    assert!(!node_wants(&d, &sim.nodes[0]));
    assert_eq!(
        sim.step(&d),
        vec![],
        "the taint manager ends it, not the controller"
    );
    // Once evicted, nothing comes back until the taint goes.
    sim.pods.clear();
    assert_eq!(sim.step(&d), vec![]);
    sim.nodes[0].spec.taints.clear();
    assert_eq!(sim.step(&d).len(), 1);
}

#[test]
fn a_node_gets_no_new_pod_while_its_old_one_drains() {
    let d = ds("a:1");
    let mut sim = Sim::new(vec![node("n1", &[])]);
    sim.drain = true;
    sim.step(&d);
    sim.ready_all();
    let name = sim.pods.keys().next().unwrap().clone();
    sim.pods.get_mut(&name).unwrap().metadata.deletion_timestamp = Some("now".into());
    assert_eq!(sim.step(&d), vec![], "host ports are still held");
    sim.finish_drains();
    assert_eq!(sim.step(&d).len(), 1);
}

#[test]
fn extra_pods_on_a_node_are_deleted_keeping_the_ready_one() {
    let d = ds("a:1");
    let mut sim = Sim::new(vec![node("n1", &[])]);
    sim.step(&d);
    sim.ready_all();
    let hash = template_hash(&d.spec.template);
    let mut extra = new_pod(&d, &hash, "n1", "zzzzz");
    extra.metadata.creation_timestamp = "t9999".into();
    sim.pods.insert(extra.metadata.name.clone(), extra);
    assert_eq!(sim.step(&d), vec![Action::DeletePod("agent-zzzzz".into())]);
}

/// Runs a rollout to its end, readying every pod after each step, and checks that no
/// more than `limit` wanted nodes are ever without a ready pod.
fn roll(sim: &mut Sim, d: &api::DaemonSet, limit: usize) -> usize {
    let mut steps = 0;
    loop {
        let actions = sim.step(d);
        assert!(
            sim.nodes_without_ready(d) <= limit,
            "step {steps}: {} nodes without a ready pod: {:#?}",
            sim.nodes_without_ready(d),
            sim.pods
        );
        sim.finish_drains();
        if actions.is_empty() && sim.pods.values().all(is_ready) {
            return steps;
        }
        sim.ready_all();
        steps += 1;
        assert!(steps < 50, "no convergence");
    }
}

#[test]
fn rolling_update_with_max_unavailable_one_replaces_one_node_at_a_time() {
    let v1 = ds("a:1");
    let mut sim = Sim::new(vec![node("n1", &[]), node("n2", &[]), node("n3", &[])]);
    sim.drain = true;
    sim.step(&v1);
    sim.ready_all();
    let v2 = ds("a:2");
    // The first step takes exactly one node's pod away.
    let actions = sim.plan(&v2);
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert!(matches!(actions[0], Action::DeletePod(_)));
    roll(&mut sim, &v2, 1);
    let hash = template_hash(&v2.spec.template);
    assert!(sim.placement().iter().all(|(_, h)| *h == hash));
    assert_eq!(sim.placement().len(), 3);
    assert_eq!(sim.nodes_without_ready(&v2), 0);
}

#[test]
fn rolling_update_percentages_round_up_and_not_ready_old_pods_go_first() {
    let v1 = ds("a:1");
    let nodes = (1..=4).map(|i| node(&format!("n{i}"), &[])).collect();
    let mut sim = Sim::new(nodes);
    sim.step(&v1);
    sim.ready_all();
    // One old pod is not ready: it goes without counting against the budget.
    let sick = sim.pods.keys().next().unwrap().clone();
    sim.pods.get_mut(&sick).unwrap().status.container_statuses[0].ready = false;
    let mut v2 = ds("a:2");
    v2.spec.update_strategy.rolling_update = Some(api::RollingUpdate {
        max_surge: api::IntOrPercent::Int(0),
        max_unavailable: api::IntOrPercent::Percent(30), // 1.2 nodes: 2
    });
    assert_eq!(fenceposts(&v2, 4), (0, 2));
    let deletes = sim
        .plan(&v2)
        .into_iter()
        .filter(|a| matches!(a, Action::DeletePod(_)))
        .count();
    assert_eq!(deletes, 2, "the sick pod plus one ready one");
    roll(&mut sim, &v2, 2);
}

#[test]
fn surge_starts_the_new_pod_beside_the_old_one() {
    let v1 = ds("a:1");
    let mut sim = Sim::new(vec![node("n1", &[]), node("n2", &[])]);
    sim.step(&v1);
    sim.ready_all();
    let mut v2 = ds("a:2");
    v2.spec.update_strategy.rolling_update = Some(api::RollingUpdate {
        max_surge: api::IntOrPercent::Int(1),
        max_unavailable: api::IntOrPercent::Int(0),
    });
    let actions = sim.step(&v2);
    assert_eq!(actions.len(), 1, "one surge pod: {actions:#?}");
    assert!(matches!(actions[0], Action::CreatePod(_)));
    assert_eq!(
        sim.step(&v2),
        vec![],
        "the old pod stays until the new is ready"
    );
    roll(&mut sim, &v2, 0);
    assert_eq!(sim.placement().len(), 2, "{:#?}", sim.placement());
}

#[test]
fn on_delete_replaces_only_what_the_user_deleted() {
    let mut v1 = ds("a:1");
    v1.spec.update_strategy = api::DaemonSetUpdateStrategy {
        type_: api::DaemonSetStrategyType::OnDelete,
        rolling_update: None,
    };
    let mut sim = Sim::new(vec![node("n1", &[]), node("n2", &[])]);
    sim.step(&v1);
    sim.ready_all();
    let mut v2 = v1.clone();
    v2.spec.template.spec.containers[0].image = "a:2".into();
    assert_eq!(sim.step(&v2), vec![]);
    let first = sim.pods.keys().next().unwrap().clone();
    sim.pods.remove(&first);
    let actions = sim.step(&v2);
    assert_eq!(actions.len(), 1);
    let Action::CreatePod(p) = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(hash_of(p), Some(template_hash(&v2.spec.template).as_str()));
}

#[test]
fn status_counts_nodes() {
    let v1 = ds("a:1");
    let mut sim = Sim::new(vec![node("n1", &[]), node("n2", &[]), node("n3", &[])]);
    sim.step(&v1);
    let first = sim.pods.keys().next().unwrap().clone();
    make_ready(sim.pods.get_mut(&first).unwrap());
    let mut v2 = ds("a:2");
    v2.metadata.generation = 3;
    // n3 gets an untolerated taint: its pod counts as misscheduled.
    sim.nodes[2].spec.taints = vec![taint("x", api::TaintEffect::NoSchedule)];
    let nodes: Vec<&api::Node> = sim.nodes.iter().collect();
    let owned: Vec<&api::Pod> = sim.pods.values().collect();
    let s = daemon_set_status(&v2, &nodes, &owned);
    assert_eq!(
        s,
        api::DaemonSetStatus {
            desired_number_scheduled: 2,
            current_number_scheduled: 2,
            number_misscheduled: 1,
            number_ready: 1,
            updated_number_scheduled: 0,
            number_available: 1,
            observed_generation: 3,
        }
    );
}
