use super::*;
use std::collections::BTreeMap;

fn deployment(replicas: u32, image: &str) -> api::Deployment {
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    api::Deployment {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        metadata: api::ObjectMeta {
            name: "web".into(),
            generation: 3,
            ..Default::default()
        },
        spec: api::DeploymentSpec {
            replicas,
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
                        name: "app".into(),
                        image: image.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            strategy: Default::default(),
            revision_history_limit: 10,
        },
        status: Default::default(),
    }
}

fn rolling(mut d: api::Deployment, surge: &str, unavailable: &str) -> api::Deployment {
    let parse = |s: &str| {
        api::IntOrPercent::parse_percent(s)
            .unwrap_or_else(|| api::IntOrPercent::Int(s.parse().unwrap()))
    };
    d.spec.strategy = api::DeploymentStrategy {
        type_: api::StrategyType::RollingUpdate,
        rolling_update: Some(api::RollingUpdate {
            max_surge: parse(surge),
            max_unavailable: parse(unavailable),
        }),
    };
    d
}

fn recreate(mut d: api::Deployment) -> api::Deployment {
    d.spec.strategy = api::DeploymentStrategy {
        type_: api::StrategyType::Recreate,
        rolling_update: None,
    };
    d
}

fn make_ready(p: &mut api::Pod) {
    p.spec.node_name = Some("n1".into());
    p.status.phase = api::PodPhase::Running;
    p.status.container_statuses = vec![api::ContainerStatus {
        name: "app".into(),
        state: api::ContainerState::Running {
            started_at: "t".into(),
        },
        ready: true,
        restart_count: 0,
        ..Default::default()
    }];
}

/// A pod as the store would hold it: `state` is `p` (pending, unscheduled),
/// `s` (scheduled, pending), `r` (running, ready), `f` (failed), `t` (ready but
/// terminating).
fn pod(d: &api::Deployment, suffix: &str, ts: &str, state: char) -> api::Pod {
    let mut p = new_pod(d, &template_hash(&d.spec.template), suffix);
    p.metadata.creation_timestamp = ts.into();
    if state != 'p' {
        p.spec.node_name = Some("n1".into());
    }
    match state {
        'r' => make_ready(&mut p),
        't' => {
            make_ready(&mut p);
            p.metadata.deletion_timestamp = Some(ts.into());
        }
        'f' => p.status.phase = api::PodPhase::Failed,
        _ => {}
    }
    p
}

fn suffixes() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("x{n:04}")
    }
}

/// Renders a plan compactly: `+name` for a create, `-name` for a delete.
fn render(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::CreatePod(p) => format!("+{}", p.metadata.name),
            Action::DeletePod(n) => format!("-{n}"),
        })
        .collect()
}

fn apply(pods: &mut Vec<api::Pod>, actions: &[Action]) {
    for a in actions {
        match a {
            Action::CreatePod(p) => pods.push(p.clone()),
            Action::DeletePod(n) => pods.retain(|p| &p.metadata.name != n),
        }
    }
}

#[test]
fn template_hash_is_stable_and_tracks_the_template() {
    let a = deployment(1, "nginx:1.25");
    let h = template_hash(&a.spec.template);
    assert_eq!(h.len(), TEMPLATE_HASH_LEN);
    assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(h, template_hash(&a.clone().spec.template));
    // Replicas are not part of the template.
    assert_eq!(h, template_hash(&deployment(5, "nginx:1.25").spec.template));
    assert_ne!(h, template_hash(&deployment(1, "nginx:1.26").spec.template));
    // Pinned: a change here replaces every running pod on upgrade.
    assert_eq!(h, "4e98794ccb");
}

#[test]
fn plans() {
    let d1 = deployment(3, "nginx:1.25");
    let h1 = template_hash(&d1.spec.template);
    let d2 = deployment(2, "nginx:1.26");
    let h2 = template_hash(&d2.spec.template);
    let one = deployment(1, "nginx:1.25");
    let two = deployment(2, "nginx:1.25");
    let zero = deployment(0, "nginx:1.25");
    // (name, deployment, pods as (suffix, timestamp, state, made from d2?), expected plan)
    type Row<'a> = (
        &'a str,
        &'a api::Deployment,
        Vec<(&'a str, &'a str, char, bool)>,
        Vec<String>,
    );
    let rows: Vec<Row> = vec![
        (
            "scale up from zero",
            &d1,
            vec![],
            vec![
                format!("+web-{h1}-x0001"),
                format!("+web-{h1}-x0002"),
                format!("+web-{h1}-x0003"),
            ],
        ),
        (
            "steady state",
            &d1,
            vec![
                ("a", "t1", 'r', false),
                ("b", "t1", 'r', false),
                ("c", "t1", 's', false),
            ],
            vec![],
        ),
        (
            "scale up by one keeps the others",
            &d1,
            vec![("a", "t1", 'r', false), ("b", "t1", 'r', false)],
            vec![format!("+web-{h1}-x0001")],
        ),
        (
            "scale down prefers unscheduled, then not running, then newest",
            &one,
            vec![
                ("old", "2026-01-01T00:00:00Z", 'r', false),
                ("new", "2026-01-02T00:00:00Z", 'r', false),
                ("pend", "2026-01-01T00:00:00Z", 's', false),
                ("unsch", "2026-01-01T00:00:00Z", 'p', false),
            ],
            vec![
                format!("-web-{h1}-unsch"),
                format!("-web-{h1}-pend"),
                format!("-web-{h1}-new"),
            ],
        ),
        (
            "scale to zero",
            &zero,
            vec![("a", "t1", 'r', false), ("b", "t2", 'r', false)],
            vec![format!("-web-{h1}-b"), format!("-web-{h1}-a")],
        ),
        (
            "terminating pods are ignored and their names stay taken",
            &two,
            vec![("x0001", "t1", 't', false), ("a", "t1", 'r', false)],
            vec![format!("+web-{h1}-x0002")],
        ),
        (
            "a template change starts a rolling update (2 replicas: surge 1, unavailable 0)",
            &d2,
            vec![("a", "t1", 'r', false), ("b", "t1", 'r', false)],
            vec![format!("+web-{h2}-x0001")],
        ),
        (
            "a new pod that is ready lets one old pod go (at the surge limit)",
            &d2,
            vec![
                ("a", "t1", 'r', false),
                ("b", "t2", 'r', false),
                ("n", "t3", 'r', true),
            ],
            vec![format!("-web-{h1}-b")],
        ),
        (
            "failed pods are replaced",
            &d1,
            vec![
                ("a", "t1", 'r', false),
                ("b", "t1", 'f', false),
                ("c", "t1", 'r', false),
            ],
            vec![format!("-web-{h1}-b"), format!("+web-{h1}-x0001")],
        ),
        (
            "colliding suffix is drawn again",
            &two,
            vec![("x0001", "t1", 'r', false)],
            vec![format!("+web-{h1}-x0002")],
        ),
    ];
    for (name, d, pods, want) in rows {
        let pods: Vec<api::Pod> = pods
            .into_iter()
            .map(|(s, ts, st, new)| pod(if new { &d2 } else { &d1 }, s, ts, st))
            .collect();
        let owned: Vec<&api::Pod> = pods.iter().collect();
        let plan = reconcile_deployment(d, &owned, &mut suffixes());
        assert_eq!(render(&plan), want, "{name}");
        // Idempotence: the same inputs give the same plan.
        let again = reconcile_deployment(d, &owned, &mut suffixes());
        assert_eq!(render(&again), want, "{name}: same inputs");
    }
}

/// Rolling-update steps, rendered as `+new` per created pod and `-SUFFIX` per
/// deleted one. Old pods `a`..`d` have timestamps in that order, so the newest old
/// pod goes first among equals.
#[test]
fn rolling_update_steps() {
    let v1 = |r| deployment(r, "v1");
    let v2 = |r, s, u| rolling(deployment(r, "v2"), s, u);
    // (name, deployment, old pods (suffix, state), new pods' states, plan)
    type Row<'a> = (
        &'a str,
        api::Deployment,
        Vec<(&'a str, char)>,
        &'a str,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        (
            "first step surges one and retires one ready old pod",
            v2(4, "1", "1"),
            vec![("a", 'r'), ("b", 'r'), ("c", 'r'), ("d", 'r')],
            "",
            "+new -d",
        ),
        (
            "waits while new pods are not ready",
            v2(4, "1", "1"),
            old3(),
            "ss",
            "",
        ),
        (
            "a ready new pod frees one old pod",
            v2(4, "1", "1"),
            old3(),
            "rs",
            "-c",
        ),
        (
            "not-ready old pods go first, even when nothing new is ready",
            v2(4, "1", "1"),
            vec![("a", 'r'), ("b", 's'), ("c", 's'), ("d", 'r')],
            "",
            "+new -c",
        ),
        (
            "maxUnavailable 0 only surges",
            v2(4, "1", "0"),
            vec![("a", 'r'), ("b", 'r'), ("c", 'r'), ("d", 'r')],
            "",
            "+new",
        ),
        (
            "25%/25% of 4 is 1/1",
            v2(4, "25%", "25%"),
            vec![("a", 'r'), ("b", 'r'), ("c", 'r'), ("d", 'r')],
            "",
            "+new -d",
        ),
        (
            "50% of 3: surge rounds up to 2, unavailable down to 1",
            v2(3, "50%", "50%"),
            old3(),
            "",
            "+new +new -c",
        ),
        (
            "10% of 3: surge rounds up to 1, unavailable down to 0",
            v2(3, "10%", "10%"),
            old3(),
            "",
            "+new",
        ),
        (
            "0% and 10% of 3 are both 0: unavailable becomes 1",
            v2(3, "0%", "10%"),
            old3(),
            "",
            "-c",
        ),
        (
            "surge as a number",
            v2(3, "3", "0"),
            old3(),
            "",
            "+new +new +new",
        ),
        (
            "scale down mid-rollout sheds the excess",
            v2(2, "25%", "25%"),
            vec![("a", 'r'), ("b", 'r'), ("c", 'r'), ("d", 'r')],
            "ss",
            "-d -c -b",
        ),
        (
            "scale up mid-rollout surges to the new size",
            v2(6, "25%", "25%"),
            vec![("a", 'r'), ("b", 'r')],
            "s",
            "+new +new +new +new +new",
        ),
        (
            "recreate deletes every old pod first",
            recreate(deployment(2, "v2")),
            vec![("a", 'r'), ("b", 's')],
            "",
            "-b -a",
        ),
        (
            "recreate waits for terminating old pods",
            recreate(deployment(2, "v2")),
            vec![("a", 't')],
            "",
            "",
        ),
        (
            "recreate then creates the new pods",
            recreate(deployment(2, "v2")),
            vec![],
            "",
            "+new +new",
        ),
        (
            "a finished rollout with old pods draining does nothing",
            v2(2, "1", "0"),
            vec![("a", 't'), ("b", 't')],
            "rr",
            "",
        ),
    ];
    for (name, d, old, new, want) in rows {
        let old_d = v1(1);
        let mut pods: Vec<api::Pod> = old
            .iter()
            .enumerate()
            .map(|(i, (s, st))| pod(&old_d, s, &format!("t{i}"), *st))
            .collect();
        for (i, st) in new.chars().enumerate() {
            pods.push(pod(&d, &format!("n{i}"), "t9", st));
        }
        let owned: Vec<&api::Pod> = pods.iter().collect();
        let got = reconcile_deployment(&d, &owned, &mut suffixes());
        let rendered: Vec<String> = got
            .iter()
            .map(|a| match a {
                Action::CreatePod(_) => "+new".to_string(),
                Action::DeletePod(n) => format!("-{}", n.rsplit('-').next().unwrap_or("")),
            })
            .collect();
        assert_eq!(rendered.join(" "), want, "{name}");
        let again = reconcile_deployment(&d, &owned, &mut suffixes());
        assert_eq!(render(&again), render(&got), "{name}: not deterministic");
    }
}

fn old3() -> Vec<(&'static str, char)> {
    vec![("a", 'r'), ("b", 'r'), ("c", 'r')]
}

/// Drives rollouts to the end, one pod becoming ready at a time, and checks the
/// bounds after every plan: never more than `replicas + maxSurge` pods, never fewer
/// ready than `replicas - maxUnavailable` (once that many were ready). Also scales
/// mid-rollout and checks that the end state is exactly `replicas` new ready pods.
#[test]
fn rollouts_stay_within_bounds_and_converge() {
    let cases: &[(u32, &str, &str, Option<u32>)] = &[
        (4, "1", "1", None),
        (4, "1", "0", None),
        (4, "0", "1", None),
        (6, "25%", "25%", None),
        (10, "30%", "0", None),
        (3, "0%", "10%", None),
        (5, "2", "2", Some(2)),
        (2, "1", "0", Some(7)),
    ];
    for &(replicas, surge, unavailable, rescale) in cases {
        let what = format!(
            "{replicas} replicas, surge {surge}, unavailable {unavailable}, rescale {rescale:?}"
        );
        let v1 = deployment(replicas, "v1");
        let mut d = rolling(deployment(replicas, "v2"), surge, unavailable);
        let mut pods: Vec<api::Pod> = (0..replicas)
            .map(|i| pod(&v1, &format!("o{i}"), &format!("t{i}"), 'r'))
            .collect();
        let mut suffix = suffixes();
        for step in 0..200 {
            if step == 3 {
                if let Some(r) = rescale {
                    d.spec.replicas = r;
                }
            }
            let (max_surge, max_unavailable) = fenceposts(&d);
            let r = d.spec.replicas as usize;
            let ready_before = pods.iter().filter(|p| is_ready(p)).count();
            let plan = reconcile_deployment(&d, &pods.iter().collect::<Vec<_>>(), &mut suffix);
            apply(&mut pods, &plan);
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            // A step that only scaled down may go below; otherwise availability holds.
            let floor = r.saturating_sub(max_unavailable as usize).min(ready_before);
            if step != 3 {
                assert!(
                    ready >= floor,
                    "{what}, step {step}: {ready} ready < {floor}"
                );
                assert!(
                    pods.len() <= r + max_surge as usize,
                    "{what}, step {step}: {} pods",
                    pods.len()
                );
            }
            if plan.is_empty() {
                // Nothing to do: a pod becomes ready, or we are done.
                match pods.iter_mut().find(|p| !is_ready(p)) {
                    Some(p) => make_ready(p),
                    None => break,
                }
            }
        }
        let h2 = template_hash(&d.spec.template);
        assert_eq!(pods.len(), d.spec.replicas as usize, "{what}: {pods:?}");
        assert!(
            pods.iter()
                .all(|p| is_ready(p) && hash_of(p) == Some(h2.as_str())),
            "{what}: not all new and ready"
        );
    }
}

#[test]
fn recreate_converges() {
    let v1 = deployment(3, "v1");
    let d = recreate(deployment(3, "v2"));
    let mut pods: Vec<api::Pod> = (0..3)
        .map(|i| pod(&v1, &format!("o{i}"), "t", 'r'))
        .collect();
    let plan = reconcile_deployment(&d, &pods.iter().collect::<Vec<_>>(), &mut suffixes());
    assert_eq!(plan.len(), 3);
    assert!(plan.iter().all(|a| matches!(a, Action::DeletePod(_))));
    // The core marks them terminating first: nothing new yet.
    for p in &mut pods {
        p.metadata.deletion_timestamp = Some("t".into());
    }
    assert!(reconcile_deployment(&d, &pods.iter().collect::<Vec<_>>(), &mut suffixes()).is_empty());
    pods.clear();
    let plan = reconcile_deployment(&d, &[], &mut suffixes());
    assert_eq!(plan.len(), 3);
    assert!(plan.iter().all(|a| matches!(a, Action::CreatePod(_))));
}

#[test]
fn created_pods_carry_template_labels_owner_and_spec() {
    let d = deployment(1, "nginx:1.25");
    let plan = reconcile_deployment(&d, &[], &mut || "abcde".to_string());
    let [Action::CreatePod(p)] = plan.as_slice() else {
        panic!("want one create, got {plan:?}");
    };
    let h = template_hash(&d.spec.template);
    assert_eq!(p.metadata.name, format!("web-{h}-abcde"));
    assert_eq!(p.metadata.owner.as_deref(), Some("web"));
    assert_eq!(
        p.metadata.labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL), Some(&h));
    assert_eq!(p.spec, d.spec.template.spec);
    assert_eq!(p.status.phase, api::PodPhase::Pending);
    assert_eq!((p.api_version.as_str(), p.kind.as_str()), ("v1", "Pod"));
}

#[test]
fn status_counts_live_updated_and_ready() {
    let d1 = deployment(3, "nginx:1.25");
    let d2 = deployment(3, "nginx:1.26");
    let pods = [
        pod(&d2, "a", "t", 'r'),
        pod(&d2, "b", "t", 's'),
        pod(&d1, "c", "t", 'r'),
        pod(&d2, "d", "t", 'f'),
    ];
    let owned: Vec<&api::Pod> = pods.iter().collect();
    let s = deployment_status(&d2, &owned);
    assert_eq!(
        s,
        api::DeploymentStatus {
            replicas: 3,
            ready_replicas: 2,
            updated_replicas: 2,
            available_replicas: 2,
            observed_generation: 3,
        }
    );
}

#[test]
fn owned_pods_filters_by_owner() {
    let d = deployment(1, "x");
    let mut other = pod(&d, "b", "t", 'r');
    other.metadata.owner = Some("other".into());
    let mine = pod(&d, "a", "t", 'r');
    let pods = vec![mine.clone(), other];
    let owned = owned_pods(&d, &pods);
    assert_eq!(owned, vec![&mine]);
}

/// Readiness is the agent's word (its readiness probe), not "the container runs": a
/// rollout holds while the new pod runs but its probe has not passed, and moves on
/// once the agent reports it ready.
#[test]
fn a_rollout_waits_for_the_agents_readiness_not_for_running() {
    use baton_proto as proto;
    let d = rolling(deployment(2, "v2"), "1", "0");
    let old: Vec<api::Pod> = ["a", "b"]
        .iter()
        .map(|s| {
            let mut p = pod(&deployment(2, "v1"), s, "2026-01-01T00:00:00Z", 'r');
            p.metadata.owner = Some("web".into());
            p
        })
        .collect();
    let mut next = suffixes();
    let refs: Vec<&api::Pod> = old.iter().collect();
    let plan = reconcile_deployment(&d, &refs, &mut next);
    let [Action::CreatePod(new)] = plan.as_slice() else {
        panic!("expected one surge pod, got {:?}", render(&plan))
    };
    let mut new = new.clone();
    new.spec.node_name = Some("n1".into());
    let report = |ready: bool| proto::PodStatus {
        name: proto::BString::new(new.metadata.name.clone()).unwrap(),
        uid: proto::BString::new("u").unwrap(),
        pod_ip: None,
        containers: proto::BVec::from_vec(vec![proto::ContainerStatus {
            name: proto::BString::new("app").unwrap(),
            state: proto::ContainerState::Running { started_at_ms: 1 },
            restart_count: 0,
            ready,
            last_termination: None,
        }])
        .unwrap(),
        init_containers: proto::BVec::new(),
        evicted: None,
    };
    new.status = crate::model::wire::pod_status(&report(false), &new.spec, None);
    assert_eq!(new.status.phase, api::PodPhase::Running);
    assert!(!is_ready(&new));
    let mut all: Vec<&api::Pod> = old.iter().collect();
    all.push(&new);
    assert_eq!(
        render(&reconcile_deployment(&d, &all, &mut next)),
        Vec::<String>::new(),
        "running but not ready: no old pod may go"
    );
    new.status = crate::model::wire::pod_status(&report(true), &new.spec, None);
    let mut all: Vec<&api::Pod> = old.iter().collect();
    all.push(&new);
    let plan = render(&reconcile_deployment(&d, &all, &mut next));
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert!(
        plan[0].starts_with("-web-")
            && !plan[0].contains(&hash_of(&new).unwrap_or("?").to_string()),
        "one old pod goes: {plan:?}"
    );
}
