//! Node-scheduled CronJobs in the core: sent to the nodes their template selects (never
//! to a v4 agent, with an event saying so), never fired here, and the nodes' runs
//! recorded as Jobs, once each.

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
    assert!(h.pods().is_empty());

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
