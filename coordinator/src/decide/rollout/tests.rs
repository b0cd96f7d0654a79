use super::*;
use std::collections::BTreeMap;

fn deployment(image: &str, limit: u32, cause: Option<&str>) -> api::Deployment {
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let mut annotations = BTreeMap::new();
    if let Some(c) = cause {
        annotations.insert(api::CHANGE_CAUSE_ANNOTATION.to_string(), c.to_string());
    }
    api::Deployment {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        metadata: api::ObjectMeta {
            name: "web".into(),
            annotations,
            ..Default::default()
        },
        spec: api::DeploymentSpec {
            replicas: 2,
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
            revision_history_limit: limit,
        },
        status: Default::default(),
    }
}

/// Applies a plan to a revision list.
fn apply(revs: &mut Vec<api::Revision>, plan: RevisionPlan) {
    revs.retain(|r| !plan.delete.contains(&r.revision));
    for p in plan.put {
        revs.retain(|r| r.revision != p.revision);
        revs.push(p);
    }
    revs.sort_by_key(|r| r.revision);
}

/// Applies `d` as a user would, syncing until the plan is empty (it must be after one
/// step), and renders the history as `rev:image[:cause]`.
fn step(revs: &mut Vec<api::Revision>, d: &api::Deployment, live: &[&str]) -> Vec<String> {
    let live: BTreeSet<String> = live
        .iter()
        .map(|img| template_hash(&deployment(img, 0, None).spec.template))
        .collect();
    let plan = sync_revisions(d, &revs.iter().collect::<Vec<_>>(), &live, "t");
    apply(revs, plan);
    let again = sync_revisions(d, &revs.iter().collect::<Vec<_>>(), &live, "t");
    assert!(again.is_empty(), "not idempotent: {again:?}");
    revs.iter()
        .map(|r| {
            let img = &r.template.spec.containers[0].image;
            match &r.change_cause {
                Some(c) => format!("{}:{img}:{c}", r.revision),
                None => format!("{}:{img}", r.revision),
            }
        })
        .collect()
}

#[test]
fn revision_bookkeeping() {
    let mut revs = Vec::new();
    // (what, image, history limit, change-cause, images with live pods, history after)
    type Row<'a> = (
        &'a str,
        &'a str,
        u32,
        Option<&'a str>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let rows: &[Row] = &[
        ("first apply", "v1", 10, None, &[], &["1:v1"]),
        ("same template again", "v1", 10, None, &["v1"], &["1:v1"]),
        (
            "new template, with a cause",
            "v2",
            10,
            Some("to v2"),
            &["v1"],
            &["1:v1", "2:v2:to v2"],
        ),
        (
            "cause changes alone",
            "v2",
            10,
            Some("v2 for real"),
            &["v2"],
            &["1:v1", "2:v2:v2 for real"],
        ),
        (
            "re-applying v1 renumbers it",
            "v1",
            10,
            None,
            &["v2"],
            &["2:v2:v2 for real", "3:v1"],
        ),
        (
            "v3",
            "v3",
            10,
            None,
            &["v1"],
            &["2:v2:v2 for real", "3:v1", "4:v3"],
        ),
        (
            "limit 1 prunes the oldest but keeps one with live pods",
            "v4",
            1,
            None,
            &["v2", "v3"],
            &["2:v2:v2 for real", "4:v3", "5:v4"],
        ),
        (
            "once its pods are gone it goes",
            "v4",
            1,
            None,
            &["v4"],
            &["4:v3", "5:v4"],
        ),
        (
            "limit 0 keeps only the current",
            "v4",
            0,
            None,
            &["v4"],
            &["5:v4"],
        ),
    ];
    for (what, img, limit, cause, live, want) in rows {
        let d = deployment(img, *limit, *cause);
        assert_eq!(step(&mut revs, &d, live), *want, "{what}");
    }
}

#[test]
fn undo_targets() {
    let mut revs = Vec::new();
    for img in ["v1", "v2", "v3"] {
        step(&mut revs, &deployment(img, 10, None), &[]);
    }
    let all: Vec<&api::Revision> = revs.iter().collect();
    let current = template_hash(&deployment("v3", 10, None).spec.template);
    let img = |r: &api::Revision| r.template.spec.containers[0].image.clone();
    assert_eq!(img(undo_target("web", &all, &current, None).unwrap()), "v2");
    assert_eq!(
        img(undo_target("web", &all, &current, Some(0)).unwrap()),
        "v2"
    );
    assert_eq!(
        img(undo_target("web", &all, &current, Some(1)).unwrap()),
        "v1"
    );
    assert_eq!(
        undo_target("web", &all, &current, Some(7)).unwrap_err(),
        RolloutError::RevisionNotFound(7)
    );
    let only: Vec<&api::Revision> = revs[2..].iter().collect();
    assert_eq!(
        undo_target("web", &only, &current, None)
            .unwrap_err()
            .to_string(),
        "no rollout history found for deployment \"web\""
    );

    // Undo to v2 then reconciling revisions: v2 becomes revision 4, and undoing again
    // goes back to v3.
    let mut d = deployment("v3", 10, None);
    d.spec.template = undo_target("web", &all, &current, None)
        .unwrap()
        .template
        .clone();
    assert_eq!(step(&mut revs, &d, &[]), ["1:v1", "3:v3", "4:v2"]);
    let all: Vec<&api::Revision> = revs.iter().collect();
    let current = template_hash(&d.spec.template);
    assert_eq!(img(undo_target("web", &all, &current, None).unwrap()), "v3");
}

fn pod(d: &api::Deployment, name: &str, ready: bool, terminating: bool) -> api::Pod {
    let mut p = controller::new_pod(d, &template_hash(&d.spec.template), name);
    p.spec.node_name = Some("n1".into());
    if terminating {
        p.metadata.deletion_timestamp = Some("t".into());
    }
    if ready {
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
    p
}

#[test]
fn progress_messages() {
    let v1 = deployment("v1", 10, None);
    let v2 = deployment("v2", 10, None);
    let rows: Vec<(&str, Vec<api::Pod>, &str, bool)> = vec![
            (
                "nothing updated",
                vec![pod(&v1, "a", true, false), pod(&v1, "b", true, false)],
                "Waiting for deployment \"web\" rollout to finish: 0 out of 2 new replicas have been updated...",
                false,
            ),
            (
                "old pending termination",
                vec![
                    pod(&v1, "a", true, false),
                    pod(&v2, "b", true, false),
                    pod(&v2, "c", false, false),
                ],
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...",
                false,
            ),
            (
                "not all available",
                vec![
                    pod(&v1, "a", true, true),
                    pod(&v2, "b", true, false),
                    pod(&v2, "c", false, false),
                ],
                "Waiting for deployment \"web\" rollout to finish: 1 of 2 updated replicas are available...",
                false,
            ),
            (
                "done while old pods drain",
                vec![
                    pod(&v1, "a", true, true),
                    pod(&v2, "b", true, false),
                    pod(&v2, "c", true, false),
                ],
                "deployment \"web\" successfully rolled out",
                true,
            ),
        ];
    for (what, pods, msg, done) in rows {
        let owned: Vec<&api::Pod> = pods.iter().collect();
        let p = rollout_progress(&v2, &owned, 2);
        assert_eq!((p.message.as_str(), p.done), (msg, done), "{what}");
        assert_eq!(p.failure, None, "{what}");
    }

    let mut bad = pod(&v2, "b", false, false);
    bad.status.container_statuses = vec![api::ContainerStatus {
        name: "app".into(),
        state: api::ContainerState::Failed {
            reason: "ImagePullFailed: manifest unknown".into(),
        },
        ready: false,
        restart_count: 0,
        ..Default::default()
    }];
    let pods = [pod(&v1, "a", true, false), bad];
    let owned: Vec<&api::Pod> = pods.iter().collect();
    let p = rollout_progress(&v2, &owned, 2);
    let h = template_hash(&v2.spec.template);
    assert_eq!(
        p.failure,
        Some(format!(
            "pod web-{h}-b: container app: ImagePullFailed: manifest unknown"
        ))
    );
    assert_eq!(
        (p.updated, p.updated_ready, p.old, p.available),
        (1, 0, 1, 1)
    );
}
