//! Jobs through the core: ended pods count and stay, a live pod on a lost node is
//! replaced elsewhere, and the status is read back the same after a restart.

use super::*;

const JOB: &str = "apiVersion: batch/v1
kind: Job
metadata:
  name: batch
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: busybox:1.36
";

fn job(h: &mut Harness) -> api::Job {
    match h
        .api(ApiOp::Get {
            kind: ResourceKind::Job,
            name: Some("batch".into()),
        })
        .unwrap()
    {
        ApiReply::Object(ApiObject::Job(j)) => j,
        other => panic!("unexpected {other:?}"),
    }
}

/// Reports `node`'s pods as running, but `done` as exited 0.
fn report(h: &mut Harness, msgs: &[Outbound], node: &str, done: &str) {
    let Some(desired) = desired_for(msgs, node) else {
        return; // no pod there
    };
    let mut status = running_status(&desired, desired.generation);
    let mut pods = status.pods.to_vec();
    for p in &mut pods {
        if p.name.as_str() == done {
            let mut c = p.containers.to_vec();
            c[0].state = ContainerState::Exited { code: 0 };
            c[0].ready = false;
            p.containers = BVec::from_vec(c).unwrap();
        }
    }
    status.pods = BVec::from_vec(pods).unwrap();
    h.send(node, Body::Status(status));
}

#[tokio::test(start_paused = true)]
async fn ended_pods_count_a_lost_live_pod_is_replaced_and_status_survives_a_restart() {
    let store = Arc::new(MemStore::new());
    let mut h = Harness::evicting_after(store.clone(), Duration::from_secs(5));
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    h.drain();
    h.apply(JOB).unwrap();
    let pods = h.pods();
    assert_eq!(pods.len(), 2, "parallelism 2");
    assert!(pods
        .iter()
        .all(|p| p.metadata.job.as_deref() == Some("batch")
            && p.metadata.owner.is_none()
            && p.spec.node_name.is_some()));
    let msgs = h.drain();
    // The first pod succeeds on its node; a third starts for the third completion.
    let done = pods[0].metadata.name.clone();
    for n in ["pi-1", "pi-2"] {
        report(&mut h, &msgs, n, &done);
    }
    let j = job(&mut h);
    assert_eq!((j.status.succeeded, j.status.active), (1, 2));
    assert!(j.status.start_time.is_some() && j.status.finished().is_none());
    assert_eq!(h.pods().len(), 3);

    // The node of a live pod is lost past the eviction timeout: its live pods are
    // replaced on the node left, the succeeded one stays wherever it is.
    let lost = h
        .pods()
        .iter()
        .find(|p| p.metadata.name != done)
        .and_then(|p| p.spec.node_name.clone())
        .unwrap();
    let lost = lost.as_str();
    let alive = if lost == "pi-1" { "pi-2" } else { "pi-1" };
    let on_lost: Vec<String> = h
        .pods()
        .iter()
        .filter(|p| p.spec.node_name.as_deref() == Some(lost) && p.metadata.name != done)
        .map(|p| p.metadata.name.clone())
        .collect();
    for _ in 0..(TIMEOUT.as_secs() + 10) {
        tokio::time::advance(Duration::from_secs(1)).await;
        h.send(alive, Body::Heartbeat(Heartbeat::default()));
        h.core.handle(Event::Tick);
    }
    let pods = h.pods();
    assert!(
        pods.iter().any(|p| p.metadata.name == done),
        "the count stays"
    );
    assert!(
        !on_lost.is_empty()
            && on_lost
                .iter()
                .all(|n| pods.iter().all(|p| &p.metadata.name != n)),
        "live pods of the lost node evicted: {on_lost:?}"
    );
    let live: Vec<&api::Pod> = pods.iter().filter(|p| p.metadata.name != done).collect();
    assert_eq!(live.len(), 2, "replaced: two run again");
    assert!(live
        .iter()
        .all(|p| p.spec.node_name.as_deref() == Some(alive)));
    let before = job(&mut h);
    assert_eq!(before.status.succeeded, 1);

    // A restarted core reads the same Job and pods, and plans nothing new.
    let names: Vec<String> = h.pods().iter().map(|p| p.metadata.name.clone()).collect();
    let mut h = Harness::new(store);
    h.core.handle(Event::Tick);
    assert_eq!(job(&mut h), before);
    let again: Vec<String> = h.pods().iter().map(|p| p.metadata.name.clone()).collect();
    assert_eq!(again, names);
}
