//! Coordinators on etcd (issue 17) on the real lab: the coordinator's state lives in a
//! real etcd instead of its data directory, survives the coordinator's death with no pod
//! restarted, and an etcd outage refuses changes clearly, loses nothing, and heals once
//! etcd is back while the pods keep running. A standby takes over from a paused leader
//! with a higher term, and the agents refuse the deposed leader's late messages.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{
    init_pid, is_running, node_of, pod_name, uid, uids, wait_pods, EchoDeployment,
};
use baton_e2e::{forge, items, wait_for, Broker, Lab, Proc};

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
    let mut lab = Lab::start_on_etcd("ha", 1, Broker::Embedded)?;
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
    // and no container was restarted for it. It comes back with a long lease, so that
    // below the refused change is answered long before it steps down.
    lab.coordinator_args
        .extend(["--leader-lease".to_string(), "15s".to_string()]);
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

    // Unable to renew its lease, the leader steps down (it cannot know it still leads).
    let stopped = lab.coordinator.as_mut().context("coordinator")?;
    wait_for("the leader to step down", LONG, || {
        Ok((!stopped.is_running()).then_some(()))
    })?;
    ensure!(
        stopped.log().contains("lost the leadership"),
        "{}",
        stopped.log()
    );
    for (p, pid) in pods.iter().zip(&pids) {
        ensure!(
            init_pid(&lab, &node_of(p), &uid(p), "echo")? == *pid,
            "a container restarted while the coordinator was down"
        );
    }

    // etcd is back and the coordinator is started again, as systemd's Restart= would: it
    // leads with what was committed (2 replicas, not the refused 3), then takes the
    // change.
    lab.etcd.as_mut().context("etcd")?.restart()?;
    lab.coordinator = None;
    lab.start_coordinator()?;
    let again = wait_pods(&lab, "web", 2, LONG, "the same 2 pods", is_running)?;
    ensure!(uids(&again) == uids(&pods), "pods were replaced: {again:?}");
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

/// The leader's term a coordinator's log says it sends with.
fn term_of(log: &str) -> Option<u64> {
    const SAYS: &str = "sending with the leader's term ";
    let at = log.rfind(SAYS)? + SAYS.len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An empty desired state of `term` for `node`, signed with the coordinator key in `pki`
/// and numbered as the coordinator numbers (its clock, in microseconds, ahead by a
/// reservation): what a deposed leader's late message looks like on the wire.
fn late_desired(pki: &std::path::Path, node: &str, term: u64) -> Result<(String, Vec<u8>)> {
    let pki = baton_coordinator::security::pki::Pki::load_or_create(pki)?;
    let topic = format!("baton/v1/nodes/{node}/down/desired");
    let env = forge::envelope(
        baton_proto::Sender::Coordinator,
        forge::now_ms() * 1000 + (1 << 34),
        forge::empty_desired(term),
        &topic,
        Some(pki.signing_key()),
    )?;
    Ok((topic, env.encode()?))
}

/// Runs the CLI against the coordinator at `api` (as admin: the token is in etcd, shared).
fn baton_at(lab: &Lab, api: &str, args: &[&str]) -> Result<std::process::Output> {
    Ok(lab.baton_cmd_at(api).args(args).output()?)
}

#[test]
fn a_standby_takes_over_from_a_paused_leader_which_then_writes_nothing() -> Result<()> {
    let mut lab = Lab::start_on_etcd("hafo", 1, Broker::Mosquitto)?;
    let app = EchoDeployment::new(2);
    lab.apply(&app.yaml(&lab.registry()))?;
    let pods = wait_pods(&lab, "web", 2, LONG, "2 pods Running", is_running)?;
    let pids: Vec<u32> = pods
        .iter()
        .map(|p| init_pid(&lab, &node_of(p), &uid(p), "echo"))
        .collect::<Result<_>>()?;
    // The leader's term: its election key's revision, which the agent follows.
    let first_term = lab
        .coordinator
        .as_ref()
        .and_then(|c| term_of(&c.log()))
        .context("the leader's term in its log")?;
    ensure!(first_term > 0, "a leader on etcd sends with term 0");
    wait_for("the agent to follow the first leader's term", LONG, || {
        Ok(lab
            .agent_log(0)
            .contains(&format!("following a new leader: term {first_term} "))
            .then_some(()))
    })?;

    // A second coordinator on the same etcd, its own data directory with the first's PKI
    // (docs/operations.md): it waits to lead, and meanwhile redirects the API to the
    // leader.
    let standby_dir = lab.dir.path().join("standby");
    std::fs::create_dir_all(&standby_dir)?;
    baton_e2e::sh(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(lab.dir.path().join("coordinator/pki"))
            .arg(&standby_dir),
    )?;
    let standby_api = "http://127.0.0.1:7476";
    let mut cmd = lab.coordinator_command(&standby_dir);
    cmd.args(["--listen", "127.0.0.1:7476"]);
    let standby = Proc::spawn("standby", &mut cmd, lab.dir.path().join("standby.log"))?;
    wait_for("the standby to wait", LONG, || {
        Ok(standby.log().contains("waiting to lead").then_some(()))
    })?;
    let out = baton_at(&lab, standby_api, &["get", "pods", "-o", "json"])?;
    ensure!(out.status.success(), "get through the standby: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        items(&v).len() == 2,
        "the standby's redirect did not reach the leader: {v}"
    );
    // exec too (an upgraded connection, not a plain request) through the standby.
    let out = baton_at(
        &lab,
        standby_api,
        &[
            "exec",
            &pod_name(&pods[0]),
            "--",
            "sh",
            "-c",
            "echo via-standby",
        ],
    )?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "via-standby\n",
        "exec through the standby: {out:?}"
    );
    let health = lab
        .hub
        .cmd("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{standby_api}/healthz"))
        .output()?;
    ensure!(
        String::from_utf8_lossy(&health.stdout) == "503",
        "a standby's /healthz must keep load balancers away: {health:?}"
    );
    ensure!(
        !standby.log().contains("leading"),
        "the standby leads beside a live leader: {}",
        standby.log()
    );

    // The leader is paused (SIGSTOP) past its lease: the standby leads and serves.
    let old = lab
        .coordinator
        .as_ref()
        .and_then(|p| p.pid())
        .context("leader pid")?;
    baton_e2e::pause_process(old)?;
    let paused = Instant::now();
    wait_for("the standby to lead", LONG, || {
        Ok(standby.log().contains("leading").then_some(()))
    })?;
    let led = paused.elapsed();
    wait_for("the standby to serve", LONG, || {
        Ok(baton_at(&lab, standby_api, &["get", "pods"])?
            .status
            .success()
            .then_some(()))
    })?;
    println!(
        "failover: the standby led {led:?} and served {:?} after the pause",
        paused.elapsed()
    );
    // The new leader's term is higher, and the agent follows it (the new leader asks
    // every node for its status and answers its Hello with the desired state).
    let second_term = term_of(&standby.log()).context("the new leader's term in its log")?;
    ensure!(
        second_term > first_term,
        "the term went from {first_term} to {second_term}"
    );
    println!("terms: the first leader {first_term}, the new leader {second_term}");
    wait_for("the agent to follow the new leader's term", LONG, || {
        Ok(lab
            .agent_log(0)
            .contains(&format!(
                "following a new leader: term {second_term} (was {first_term})"
            ))
            .then_some(()))
    })?;
    let out = baton_at(
        &lab,
        standby_api,
        &["scale", "deployment/web", "--replicas", "3"],
    )?;
    ensure!(out.status.success(), "scale on the new leader: {out:?}");

    // The old leader resumes: it finds its lease gone, writes nothing, and stops.
    baton_e2e::sh(std::process::Command::new("kill").args(["-CONT", &old.to_string()]))?;
    let old_proc = lab.coordinator.as_mut().context("old leader")?;
    wait_for("the old leader to stop", LONG, || {
        Ok((!old_proc.is_running()).then_some(()))
    })?;
    let old_log = old_proc.log();
    ensure!(old_log.contains("lost the leadership"), "{old_log}");
    lab.coordinator = None;
    let said = format!("its term {first_term} is below the term {second_term} of a later leader");
    let refused = |log: &str| log.lines().filter(|l| l.contains(&said)).count();
    let before = refused(&lab.agent_log(0));
    println!("refused of the resumed old leader's own messages: {before}");

    // A late message of the old leader (correctly signed, fresh, retained, with a higher
    // generation) that would stop every pod: the agent refuses it for its term.
    let node = lab.agents[0].name.clone();
    let (topic, payload) =
        late_desired(&lab.dir.path().join("coordinator/pki"), &node, first_term)?;
    forge::mosquitto_pub(&lab, &topic, &payload, true)?;
    wait_for(
        "the agent to refuse the deposed leader's message",
        LONG,
        || Ok((refused(&lab.agent_log(0)) > before).then_some(())),
    )?;
    ensure!(
        !lab.agent_log(0)
            .lines()
            .any(|l| l.contains("new desired state") && l.contains("1000000")),
        "the agent took the deposed leader's desired state"
    );

    let three = wait_for("3 pods Running", LONG, || {
        let out = baton_at(&lab, standby_api, &["get", "pods", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let web: Vec<_> = items(&v)
            .into_iter()
            .filter(|p| p["metadata"]["owner"] == "web")
            .collect();
        Ok((web.len() == 3 && web.iter().all(is_running)).then_some(web))
    })?;
    ensure!(
        uids(&pods).is_subset(&uids(&three)),
        "pods were replaced: {three:?}"
    );
    for (p, pid) in pods.iter().zip(&pids) {
        ensure!(
            init_pid(&lab, &node_of(p), &uid(p), "echo")? == *pid,
            "a container restarted across the failover"
        );
    }
    drop(standby);
    Ok(())
}
