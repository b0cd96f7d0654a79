//! Device identity and signed messages end to end, on real processes behind a real
//! Mosquitto: enrollment with a join token (single use, expiry), a forged command and a
//! forged heartbeat published straight to the broker with `mosquitto_pub`, a captured
//! heartbeat replayed, a revoked node shut out, and a key rotation that keeps pods running.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{exactly, is_running, node_of, uid, EchoDeployment};
use baton_e2e::{bin, container_pids, forge, items, until_logged, wait_for, Broker, Lab, Proc};
use baton_proto::sign::{self, SigningKey};
use baton_proto::{Body, Envelope, Heartbeat, NodeName, Sender};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// An agent command for lab agent `i`, like the lab's own, plus enrollment flags.
fn agent_cmd(lab: &Lab, i: usize, data_dir: &Path, name: &str, token: &str) -> Command {
    let a = &lab.agents[i];
    let mut cmd = a.ns.cmd("timeout");
    cmd.arg("600").arg(bin("baton-agent"));
    cmd.args([
        "--coordinator",
        &lab.mqtt_url(),
        "--node-name",
        name,
        "--insecure-registry",
        &lab.registry(),
        "--heartbeat-secs",
        "1",
        "--heartbeat-max-secs",
        "1",
        "--pod-cidr",
        &format!("10.42.{}.0/24", i + 1),
        "--join-token",
        token,
        "--coordinator-api",
        &lab.enroll_api(),
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .env("RUST_LOG", "info,libcgroups=error,libcontainer=warn");
    cmd
}

/// Starts lab agent `i` enrolled with `token` and waits for its node to be Ready.
fn start_enrolled(lab: &mut Lab, i: usize, token: &str) -> Result<()> {
    let (name, dir) = (lab.agents[i].name.clone(), lab.agents[i].data_dir.clone());
    let mut cmd = agent_cmd(lab, i, &dir, &name, token);
    let log = dir.with_extension("log");
    lab.agents[i].proc = Some(Proc::spawn_appending(&name, &mut cmd, log)?);
    wait_for(&format!("{name} enrolled and Ready"), LONG, || {
        ensure!(
            lab.agents[i].proc.as_mut().is_some_and(|p| p.is_running()),
            "agent exited: {}",
            lab.agent_log(i)
        );
        let nodes = lab.get_json(&["get", "nodes"])?;
        let ready = items(&nodes)
            .iter()
            .any(|n| n["metadata"]["name"] == name.as_str() && n["status"]["ready"] == true);
        Ok((ready && dir.join("identity.json").exists()).then_some(()))
    })
}

/// An enrollment that must fail: the agent keeps retrying (twice seen here), says why each
/// time, writes no identity, and ends cleanly on SIGTERM. Returns what it printed.
fn enroll_refused(lab: &Lab, i: usize, token: &str, tag: &str) -> Result<String> {
    let dir = lab.dir.path().join(format!("refused-{tag}"));
    let (text, clean) = until_logged(
        &mut agent_cmd(lab, i, &dir, &format!("{}-{tag}", lab.id), token),
        &lab.dir.path().join(format!("refused-{tag}.log")),
        &["enrollment failed; will retry"],
        2,
        LONG,
    )
    .with_context(|| format!("enrollment with the {tag} token"))?;
    ensure!(clean, "{tag}: no clean exit on SIGTERM: {text}");
    ensure!(
        !dir.join("identity.json").exists(),
        "{tag}: an identity was written"
    );
    Ok(text)
}

fn rejections(lab: &Lab, node: &str, reason: &str) -> Result<u64> {
    let out = lab.baton(&["security", "rejections", "-o", "json"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["nodes"][node][reason].as_u64().unwrap_or(0))
}

/// Captures the raw bytes of the next message on `topic`.
fn capture(lab: &Lab, topic: &str) -> Result<Vec<u8>> {
    let out = lab
        .hub
        .cmd("timeout")
        .args([
            "20",
            "mosquitto_sub",
            "-h",
            &lab.hub_ip(),
            "-p",
            "1883",
            "-C",
            "1",
            "-N",
            "-t",
            topic,
        ])
        .output()?;
    ensure!(
        out.status.success() && !out.stdout.is_empty(),
        "mosquitto_sub: {out:?}"
    );
    Ok(out.stdout)
}

fn web_pods(lab: &Lab, n: usize) -> Result<Option<Vec<Value>>> {
    exactly(lab, "web", n, is_running)
}

#[test]
fn enrolled_fleet_refuses_forgery_replay_and_revoked_nodes() -> Result<()> {
    let mut lab = Lab::start_with("sec", 2, Broker::Mosquitto, &["--rotation-overlap", "3s"])?;
    let result = steps(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn steps(lab: &mut Lab) -> Result<()> {
    // The lab started its agents without identities; start them again enrolled, with the
    // coordinator serving enrollment over TLS on the hub address.
    lab.restart_coordinator_enrolling(&[])?;

    // Enrollment: a single-use token works once.
    let token = lab.join_token(&["--ttl", "1h", "--labels", "zone=lab"])?;
    start_enrolled(lab, 0, &token)?;
    let n0 = lab.agents[0].name.clone();
    let text = enroll_refused(lab, 1, &token, "reused")?;
    ensure!(text.contains("already used"), "reused token: {text}");
    // An expired token is refused.
    let expired = lab.join_token(&["--ttl", "1s"])?;
    std::thread::sleep(Duration::from_secs(2));
    let text = enroll_refused(lab, 1, &expired, "expired")?;
    ensure!(text.contains("expired"), "expired token: {text}");
    // A token whose CA hash is not this coordinator's: the agent refuses to trust it.
    let mut wrong_ca = expired.clone();
    wrong_ca.replace_range(wrong_ca.len() - 4.., "0000");
    let text = enroll_refused(lab, 1, &wrong_ca, "wrongca")?;
    ensure!(text.contains("does not match"), "wrong CA hash: {text}");
    let token = lab.join_token(&[])?;
    start_enrolled(lab, 1, &token)?;
    let n1 = lab.agents[1].name.clone();
    let id: Value = serde_json::from_slice(&std::fs::read(
        lab.agents[0].data_dir.join("identity.json"),
    )?)?;
    ensure!(id["labels"]["zone"] == "lab", "token labels: {id}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(lab.agents[0].data_dir.join("identity.json"))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "identity file mode {mode:o}");
    }

    // Two pods, one per node (spread).
    lab.apply(&EchoDeployment::new(2).yaml(&lab.registry()))?;
    let pods = wait_for("2 web pods Running", LONG, || web_pods(lab, 2))?;
    let on0: Vec<&Value> = pods.iter().filter(|p| node_of(p) == n0).collect();
    ensure!(on0.len() == 1, "expected one pod on {n0}: {pods:?}");
    let pid0 = container_pids(&n0, &uid(on0[0]), "echo");
    ensure!(!pid0.is_empty(), "no container process on {n0}");

    // A forged command straight to the device's topic: an empty desired state, signed by
    // some other key, and one unsigned.
    let node0 = NodeName::new(&n0)?;
    let desired_topic = format!("baton/v1/nodes/{n0}/down/desired");
    let forged = |key: Option<&SigningKey>| -> Result<Vec<u8>> {
        let body = forge::empty_desired(u64::MAX);
        let env = forge::envelope(Sender::Coordinator, u64::MAX / 2, body, &desired_topic, key)?;
        Ok(env.encode()?)
    };
    let attacker = SigningKey::from_bytes(&[0x42; 32]);
    forge::mosquitto_pub(lab, &desired_topic, &forged(Some(&attacker))?, false)?;
    forge::mosquitto_pub(lab, &desired_topic, &forged(None)?, false)?;
    wait_for("the agent to refuse both forged commands", LONG, || {
        let log = lab.agent_log(0);
        let refusals: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused a coordinator message"))
            .collect();
        let has = |r: &str| refusals.iter().any(|l| l.contains(r));
        Ok((has("bad-signature") && has("unsigned")).then_some(()))
    })?;
    // A forged heartbeat for node 0, to the coordinator.
    let hb_topic = format!("baton/v1/nodes/{n0}/up/heartbeat");
    let hb = forge::envelope(
        Sender::Node(node0.clone()),
        u64::MAX / 2,
        forge::bare_heartbeat(),
        &hb_topic,
        Some(&attacker),
    )?;
    forge::mosquitto_pub(lab, &hb_topic, &hb.encode()?, false)?;
    wait_for(
        "the coordinator to count the forged heartbeat",
        LONG,
        || Ok((rejections(lab, &n0, "bad-signature")? >= 1).then_some(())),
    )?;

    // A captured real heartbeat, replayed a moment later.
    let real = capture(lab, &hb_topic)?;
    let real_env = Envelope::decode(&real)?;
    ensure!(real_env.signature.len() == 64, "heartbeats are signed");
    std::thread::sleep(Duration::from_secs(2));
    forge::mosquitto_pub(lab, &hb_topic, &real, false)?;
    wait_for("the coordinator to count the replay", LONG, || {
        Ok((rejections(lab, &n0, "replay")? >= 1).then_some(()))
    })?;

    // Nothing of that reached the pods: the same container still runs on node 0.
    std::thread::sleep(Duration::from_secs(3));
    let now = wait_for("2 web pods Running", LONG, || web_pods(lab, 2))?;
    ensure!(
        now.iter()
            .any(|p| node_of(p) == n0 && uid(p) == uid(on0[0])),
        "the pod on {n0} was replaced: {now:?}"
    );
    ensure!(
        container_pids(&n0, &uid(on0[0]), "echo") == pid0,
        "the container on {n0} was restarted"
    );

    // Key rotation on node 1 while it runs: pods keep running, it stays Ready with the
    // new key after the old one expired (3 s overlap).
    let on1: Vec<Value> = now.iter().filter(|p| node_of(p) == n1).cloned().collect();
    ensure!(on1.len() == 1, "expected one pod on {n1}");
    let pid1 = container_pids(&n1, &uid(&on1[0]), "echo");
    let before = std::fs::read_to_string(lab.agents[1].data_dir.join("identity.json"))?;
    let out = lab.agents[1]
        .ns
        .cmd(bin("baton-agent"))
        .arg("rotate")
        .arg("--data-dir")
        .arg(&lab.agents[1].data_dir)
        .output()?;
    ensure!(out.status.success(), "rotate: {out:?}");
    let after = std::fs::read_to_string(lab.agents[1].data_dir.join("identity.json"))?;
    ensure!(before != after, "rotation did not change the identity file");
    let sig_before = rejections(lab, &n1, "bad-signature")?;
    std::thread::sleep(Duration::from_secs(8));
    let nodes = lab.get_json(&["get", "nodes"])?;
    ensure!(
        items(&nodes)
            .iter()
            .any(|n| n["metadata"]["name"] == n1.as_str() && n["status"]["ready"] == true),
        "{n1} is not Ready after rotation"
    );
    ensure!(
        rejections(lab, &n1, "bad-signature")? == sig_before,
        "messages of {n1} were refused after rotation"
    );
    ensure!(
        container_pids(&n1, &uid(&on1[0]), "echo") == pid1,
        "rotation restarted the container on {n1}"
    );

    // Revocation: node 0 is shut out, its pod moves to node 1.
    lab.baton(&["node", "revoke", &n0])?;
    wait_for("the web pods to run on node 1 only", LONG, || {
        Ok(web_pods(lab, 2)?.filter(|ps| ps.iter().all(|p| node_of(p) == n1)))
    })?;
    wait_for("node 0's heartbeats to be refused", LONG, || {
        Ok((rejections(lab, &n0, "revoked")? >= 2).then_some(()))
    })?;
    let nodes = lab.get_json(&["get", "nodes"])?;
    ensure!(
        items(&nodes)
            .iter()
            .any(|n| n["metadata"]["name"] == n0.as_str() && n["status"]["ready"] == false),
        "revoked {n0} is still Ready"
    );
    Ok(())
}

/// The cost of signing: sign and verify per heartbeat against postcard-encoding the same
/// heartbeat, in one run, and the bytes a signature adds. Prints figures (for
/// docs/benchmarks.md; run with `--release -- --nocapture`); asserts only what holds on
/// any machine.
#[test]
fn sign_and_verify_cost_per_heartbeat() -> Result<()> {
    use std::time::Instant;
    let node = NodeName::new("pi-1")?;
    let topic = "baton/v1/nodes/pi-1/up/heartbeat";
    let heartbeat = || {
        let mut e = Envelope::new(
            Sender::Node(node.clone()),
            1_790_000_000_000_000,
            Body::Heartbeat(Heartbeat {
                applied_generation: 42,
                status_digest: 0x1234_5678_9abc_def0,
                ..Default::default()
            }),
        );
        e.sent_at_ms = 1_790_000_000_000;
        e
    };
    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    let n = 2_000u32;
    let unsigned = heartbeat();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(std::hint::black_box(&unsigned).encode()?);
    }
    let encode = t.elapsed().as_nanos() as f64 / f64::from(n);
    let mut signed = heartbeat();
    let t = Instant::now();
    for _ in 0..n {
        let mut e = std::hint::black_box(heartbeat());
        sign::sign(&mut e, topic, &key)?;
        signed = e;
    }
    let sign_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        sign::verify(std::hint::black_box(&signed), topic, &vk)?;
    }
    let verify_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let (u, s) = (unsigned.encode()?.len(), signed.encode()?.len());
    println!(
        "heartbeat: postcard encode {encode:.0} ns/op, sign {sign_ns:.0} ns/op, verify {verify_ns:.0} ns/op; {u} bytes unsigned, {s} signed (+{})",
        s - u
    );
    ensure!(
        s - u == sign::SIGNATURE_BYTES,
        "a signature adds its 64 bytes"
    );
    Ok(())
}
