//! Coordinators on etcd (issue 17) on the real lab: the coordinator's state lives in a
//! real etcd instead of its data directory, survives the coordinator's death with no pod
//! restarted, and an etcd outage refuses changes clearly, loses nothing, and heals once
//! etcd is back while the pods keep running.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{init_pid, is_running, node_of, uid, uids, wait_pods, EchoDeployment};
use baton_e2e::{items, wait_for, Lab};

const LONG: Duration = Duration::from_secs(180);

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
"#;

fn cluster_ip(lab: &Lab) -> Result<String> {
    let v = lab.get_json(&["get", "svc", "web"])?;
    let svc = items(&v).into_iter().next().context("service web")?;
    Ok(svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[test]
fn coordinator_state_lives_in_etcd_and_survives_an_etcd_outage() -> Result<()> {
    let mut lab = Lab::start_on_etcd("ha", 1)?;
    let app = EchoDeployment::new(2);
    lab.apply(&app.yaml(&lab.registry()))?;
    lab.apply(SERVICE)?;
    let pods = wait_pods(&lab, "web", 2, LONG, "2 pods Running", is_running)?;
    let ip = cluster_ip(&lab)?;
    ensure!(!ip.is_empty(), "no ClusterIP");
    let coordinator_dir = lab.dir.path().join("coordinator");
    ensure!(
        !coordinator_dir.join("baton.redb").exists(),
        "the coordinator wrote a redb store beside etcd"
    );
    let pids: Vec<u32> = pods
        .iter()
        .map(|p| init_pid(&lab, &node_of(p), &uid(p), "echo"))
        .collect::<Result<_>>()?;

    // The coordinator dies (SIGKILL) and starts again: everything comes back from etcd,
    // and no container was restarted for it.
    lab.kill_coordinator();
    lab.start_coordinator()?;
    let again = wait_pods(&lab, "web", 2, LONG, "the same 2 pods", is_running)?;
    ensure!(uids(&again) == uids(&pods), "pods were replaced: {again:?}");
    ensure!(cluster_ip(&lab)? == ip, "the Service's ClusterIP changed");
    for (p, pid) in pods.iter().zip(&pids) {
        ensure!(
            init_pid(&lab, &node_of(p), &uid(p), "echo")? == *pid,
            "a container restarted"
        );
    }

    // etcd goes down: a change is refused with an error naming the store, not hung, and
    // the pods keep running.
    lab.etcd.as_mut().context("etcd")?.kill();
    let out = lab.baton_raw(&["scale", "deployment/web", "--replicas", "3"], None)?;
    ensure!(
        !out.status.success(),
        "a change was accepted without a store"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("etcd"), "the error does not name etcd: {err}");
    for (p, pid) in pods.iter().zip(&pids) {
        ensure!(
            init_pid(&lab, &node_of(p), &uid(p), "echo")? == *pid,
            "a container restarted while etcd was down"
        );
    }

    // etcd is back: the coordinator reloads what was committed (2 replicas, not the
    // refused 3), then takes the change.
    lab.etcd.as_mut().context("etcd")?.restart()?;
    wait_for("a change accepted again", LONG, || {
        let out = lab.baton_raw(&["scale", "deployment/web", "--replicas", "3"], None)?;
        Ok(out.status.success().then_some(()))
    })?;
    let three = wait_pods(&lab, "web", 3, LONG, "3 pods Running", is_running)?;
    ensure!(
        uids(&pods).is_subset(&uids(&three)),
        "the first pods were lost: {three:?}"
    );
    ensure!(cluster_ip(&lab)? == ip, "the Service's ClusterIP changed");

    // And it is all in etcd: one more coordinator death brings back 3.
    lab.kill_coordinator();
    lab.start_coordinator()?;
    let after = wait_pods(&lab, "web", 3, LONG, "3 pods after a restart", is_running)?;
    ensure!(
        uids(&after) == uids(&three),
        "pods changed across the restart"
    );
    Ok(())
}
