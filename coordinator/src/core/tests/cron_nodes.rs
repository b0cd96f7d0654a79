//! Node-scheduled CronJobs in the core: sent to the nodes their template selects (never
//! to a v4 agent, with an event saying so), never fired here, and the nodes' runs
//! recorded as Jobs, once each, with their pods as the nodes report them.

use super::*;

fn node_cron(node: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: tick\n  annotations: {{baton.io/schedule-on: node}}\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          nodeSelector: {{kubernetes.io/hostname: {node}}}\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox:1}}]\n"
    )
}

fn jobs(h: &mut Harness) -> Vec<api::Job> {
    match h
        .api(ApiOp::Get {
            kind: ResourceKind::Job,
            name: None,
        })
        .unwrap()
    {
        ApiReply::Objects(l) => l
            .into_iter()
            .filter_map(|o| match o {
                ApiObject::Job(j) => Some(j),
                _ => None,
            })
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_selected_v5_node_is_sent_the_cron_job_and_its_runs_become_jobs() {
    let mut h = two_nodes();
    h.core.handle(Event::Inbound {
        node: nn("old"),
        body: hello(4000),
        proto: 4,
    });
    h.drain();
    h.apply(&node_cron("pi-1")).unwrap();
    let msgs = h.drain();
    let d = desired_for(&msgs, "pi-1").expect("pi-1 is sent it");
    assert_eq!(d.crons.len(), 1);
    assert_eq!(d.crons[0].name.as_str(), "tick");
    assert_eq!(d.crons[0].deltas.len() + 1, baton_proto::MAX_CRON_FIRES);
    assert!(
        desired_for(&msgs, "pi-2").is_none(),
        "not selected: unchanged"
    );
    // What it costs the node's desired state: about a byte an instant, and the pod.
    let size = |d: &DesiredState| {
        baton_proto::Envelope::new(
            baton_proto::Sender::Coordinator,
            1,
            Body::Desired(d.clone()),
        )
        .encode()
        .unwrap()
        .len()
    };
    let bare = DesiredState {
        crons: BVec::new(),
        ..d.clone()
    };
    let added = size(&d) - size(&bare);
    println!(
        "FIGURE an every-minute node CronJob adds {added} bytes to its nodes' desired state \
         ({} instants, a day)",
        baton_proto::MAX_CRON_FIRES
    );
    assert!(added < baton_proto::MAX_CRON_FIRES + 200, "{added}");

    // Selected but v4: withheld, and said once on the CronJob.
    h.apply(&node_cron("old").replace("name: tick", "name: tock"))
        .unwrap();
    let msgs = h.drain();
    assert!(desired_for(&msgs, "old").is_none_or(|d| d.crons.is_empty()));
    let said = h.reasons("cronjob/tock");
    assert_eq!(
        said.iter().filter(|r| *r == "NodeProtocolTooOld").count(),
        1,
        "{said:?}"
    );
    h.core.handle(Event::Tick);
    assert_eq!(
        h.reasons("cronjob/tock")
            .iter()
            .filter(|r| *r == "NodeProtocolTooOld")
            .count(),
        1
    );

    // The coordinator fires nothing itself, however long.
    tokio::time::advance(Duration::from_secs(130)).await;
    h.core.handle(Event::Tick);
    assert!(jobs(&mut h).is_empty());

    // pi-1's report: each run a Job of the CronJob, of the node; again, nothing new.
    let run = |minute, outcome| baton_proto::CronRun {
        cron: BString::new("tick").unwrap(),
        minute,
        started_at_ms: u64::from(minute) * 60_000 + 200,
        finished_at_ms: Some(u64::from(minute) * 60_000 + 2_000),
        outcome,
    };
    let report = baton_proto::CronReport {
        clock_untrusted: false,
        runs: BVec::from_vec(vec![
            run(30_000_001, baton_proto::CronOutcome::Succeeded),
            run(30_000_002, baton_proto::CronOutcome::Succeeded),
        ])
        .unwrap(),
    };
    h.send("pi-1", Body::CronRuns(report.clone()));
    let got = jobs(&mut h);
    let names: Vec<&str> = got.iter().map(|j| j.metadata.name.as_str()).collect();
    assert_eq!(names, ["tick-30000001-pi-1", "tick-30000002-pi-1"]);
    assert!(got.iter().all(|j| j.status.succeeded == 1));
    h.send("pi-1", Body::CronRuns(report));
    assert_eq!(jobs(&mut h).len(), 2, "reported again: recorded once");
    tokio::time::advance(Duration::from_secs(5)).await;
    h.core.handle(Event::Tick);
    assert_eq!(
        jobs(&mut h).len(),
        2,
        "the Job controller runs none of them"
    );
    // Each run's pod is kept (of the node, owned by its Job and the CronJob), ended as
    // its run, and never sent to the node.
    let pods = h.pods();
    let names: Vec<&str> = pods.iter().map(|p| p.metadata.name.as_str()).collect();
    assert_eq!(names, ["tick-30000001-pi-1-run", "tick-30000002-pi-1-run"]);
    assert!(
        pods.iter()
            .all(|p| p.status.phase == api::PodPhase::Succeeded),
        "{pods:?}"
    );
    assert!(desired_for(&h.drain(), "pi-1").is_none_or(|d| d.pods.is_empty()));

    // An untrusted clock is said on the node.
    h.send(
        "pi-1",
        Body::CronRuns(baton_proto::CronReport {
            clock_untrusted: true,
            runs: BVec::new(),
        }),
    );
    assert!(h
        .reasons("node/pi-1")
        .contains(&"CronClockUntrusted".to_string()));
}

/// A node-fired CronJob's Secrets and ConfigMaps go to the nodes it selects with their
/// desired state, as their pods' do: a run fired offline finds them on the device. Nodes
/// it does not select get neither.
#[tokio::test(start_paused = true)]
async fn its_secrets_and_config_maps_go_to_its_nodes() {
    use crate::security::secrets::{DataKey, SecretKeeper};
    // Secrets are sealed to enrolled nodes' keys: pi-1 has one.
    let key = baton_proto::sign::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let keys = move |node: &str| (node == "pi-1").then_some(key);
    let Harness {
        core,
        out,
        store,
        releases,
    } = Harness::new(Arc::new(MemStore::new()));
    let core = core
        .with_secrets(SecretKeeper::new(DataKey::ephemeral(), Arc::new(keys)))
        .unwrap();
    let mut h = Harness {
        core,
        out,
        store,
        releases,
    };
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    h.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: tok}\nstringData: {t: s3cret}\n")
        .unwrap();
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: conf}\ndata: {a: b}\n")
        .unwrap();
    h.drain();
    let cron = node_cron("pi-1").replace(
        "containers: [{name: c, image: busybox:1}]",
        "containers: [{name: c, image: busybox:1, env: [{name: T, valueFrom: {secretKeyRef: {name: tok, key: t}}}], volumeMounts: [{name: v, mountPath: /cfg}]}]\n          volumes: [{name: v, configMap: {name: conf}}]",
    );
    h.apply(&cron).unwrap();
    let msgs = h.drain();
    let d = desired_for(&msgs, "pi-1").expect("pi-1 is sent it");
    assert_eq!(d.crons.len(), 1);
    let sealed: Vec<&str> = d.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(sealed, ["tok"], "the template's secret, sealed to pi-1");
    let parts: Vec<(&str, String)> = msgs
        .iter()
        .filter_map(|m| match &m.body {
            Body::ConfigMapPart(p) => Some((m.node.as_str(), p.name.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(parts, [("pi-1", "conf".to_owned())]);
    assert!(desired_for(&msgs, "pi-2").is_none_or(|d| d.secrets.is_empty()));
    // Ticks change nothing: the node's secrets are not recomputed as stale every time.
    h.core.handle(Event::Tick);
    assert!(desired_for(&h.drain(), "pi-1").is_none());
}

fn pod_of(h: &mut Harness, name: &str) -> api::Pod {
    h.pods()
        .into_iter()
        .find(|p| p.metadata.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// A run's pod as its node reports it in its `Status`: `<cronjob>-<minute>`.
fn run_status(uid: &str, minute: u32, state: ContainerState) -> NodeStatus {
    NodeStatus {
        applied_generation: 1,
        pods: BVec::from_vec(vec![PodStatus {
            name: BString::new(format!("tick-{minute}")).unwrap(),
            uid: BString::new(format!("{uid}-{minute}")).unwrap(),
            pod_ip: Some("10.42.1.9".parse().unwrap()),
            containers: BVec::from_vec(vec![ContainerStatus {
                name: BString::new("c").unwrap(),
                state,
                restart_count: 0,
                last_termination: None,
                ready: false,
            }])
            .unwrap(),
            init_containers: BVec::new(),
            evicted: None,
        }])
        .unwrap(),
    }
}

/// A node's run is a pod of that node, owned by its Job and the CronJob: made when the
/// run is reported, its status from the node's `Status` (Running, then Succeeded), never
/// sent to the node, left alone when the node is lost (it fires offline), ended as its
/// run when the node stops it, and gone with the CronJob.
#[tokio::test(start_paused = true)]
async fn a_run_is_a_pod_of_its_node_as_it_reports_it() {
    let mut h = Harness::evicting_after(Arc::new(MemStore::new()), Duration::from_secs(5));
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    h.apply(&node_cron("pi-1")).unwrap();
    h.drain();
    let uid = match h
        .api(ApiOp::Get {
            kind: ResourceKind::CronJob,
            name: Some("tick".into()),
        })
        .unwrap()
    {
        ApiReply::Object(ApiObject::CronJob(c)) => c.metadata.uid,
        other => panic!("unexpected {other:?}"),
    };
    let run = |minute, outcome| baton_proto::CronRun {
        cron: BString::new("tick").unwrap(),
        minute,
        started_at_ms: u64::from(minute) * 60_000 + 200,
        finished_at_ms: None,
        outcome,
    };
    let report = |runs| {
        Body::CronRuns(baton_proto::CronReport {
            clock_untrusted: false,
            runs: BVec::from_vec(runs).unwrap(),
        })
    };
    let (a, b) = (30_000_001, 30_000_002);
    h.send(
        "pi-1",
        report(vec![
            run(a, baton_proto::CronOutcome::Active),
            run(b, baton_proto::CronOutcome::Active),
        ]),
    );
    let name = format!("tick-{a}-pi-1-run");
    let p = pod_of(&mut h, &name);
    assert_eq!(p.metadata.uid, format!("{uid}-{a}"), "the device's uid");
    assert_eq!(p.spec.node_name.as_deref(), Some("pi-1"));
    assert_eq!(
        p.metadata.job.as_deref(),
        Some(format!("tick-{a}-pi-1").as_str())
    );
    assert_eq!(p.metadata.cron_job.as_deref(), Some("tick"));
    assert_eq!(p.status.phase, api::PodPhase::Pending);
    assert!(
        desired_for(&h.drain(), "pi-1").is_none_or(|d| d.pods.is_empty()),
        "never sent to its node"
    );

    h.send(
        "pi-1",
        Body::Status(run_status(
            &uid,
            a,
            ContainerState::Running {
                started_at_ms: u64::from(a) * 60_000 + 300,
            },
        )),
    );
    let p = pod_of(&mut h, &name);
    assert_eq!(p.status.phase, api::PodPhase::Running);
    assert_eq!(p.status.pod_ip.as_deref(), Some("10.42.1.9"));
    // Another node's report of the same device pod is not this one.
    h.send(
        "pi-2",
        Body::Status(run_status(&uid, a, ContainerState::Exited { code: 3 })),
    );
    assert_eq!(pod_of(&mut h, &name).status.phase, api::PodPhase::Running);

    // pi-1 is lost past the eviction timeout: its runs stay its own.
    for _ in 0..(TIMEOUT.as_secs() + 10) {
        tokio::time::advance(Duration::from_secs(1)).await;
        h.send("pi-2", Body::Heartbeat(Heartbeat::default()));
        h.core.handle(Event::Tick);
    }
    assert!(!h.node("pi-1").status.ready);
    assert_eq!(h.pods().len(), 2, "not evicted");

    // Back: the run ended, then its pod's containers.
    h.send("pi-1", hello(4000));
    h.send(
        "pi-1",
        report(vec![run(a, baton_proto::CronOutcome::Succeeded)]),
    );
    h.send(
        "pi-1",
        Body::Status(run_status(&uid, a, ContainerState::Exited { code: 0 })),
    );
    let p = pod_of(&mut h, &name);
    assert_eq!(p.status.phase, api::PodPhase::Succeeded);
    assert_eq!(
        p.status.container_statuses[0].state,
        api::ContainerState::Exited { exit_code: 0 }
    );
    // `b` is replaced: Failed, also when the node's last word on its pod, stopping it,
    // was not.
    let why = BString::new("Replaced by a newer run").unwrap();
    h.send(
        "pi-1",
        report(vec![run(b, baton_proto::CronOutcome::Failed(why))]),
    );
    h.send(
        "pi-1",
        Body::Status(run_status(&uid, b, ContainerState::Pending)),
    );
    let p = pod_of(&mut h, &format!("tick-{b}-pi-1-run"));
    assert_eq!(p.status.phase, api::PodPhase::Failed);
    assert_eq!(p.status.message.as_deref(), Some("Replaced by a newer run"));

    h.api(ApiOp::Delete {
        kind: ResourceKind::CronJob,
        name: "tick".into(),
    })
    .unwrap();
    h.core.handle(Event::Tick);
    assert!(h.pods().is_empty(), "gone with the CronJob: {:?}", h.pods());
}
