//! The fleet over mutual TLS, end to end: a coordinator and two agents, each in its own
//! network namespace, every MQTT connection TLS with a client certificate (Ed25519 client
//! keys, an ECDSA broker certificate, an Ed25519 CA), against the shipped Mosquitto config
//! and ACL and against the embedded broker.
//!
//! Beyond "a pod deploys and runs", each test pokes at the broker the way a malicious
//! device or a stranger would, with `mosquitto_sub`/`mosquitto_pub` run from device A's
//! namespace:
//! - Mosquitto: device A can neither read device B's topics nor publish on them, nor on
//!   its own downward topics; clients without a certificate, or with one from another CA,
//!   cannot connect.
//! - Embedded rumqttd behind Baton's TLS front: strangers cannot connect either, nor can
//!   device A use B's client id, but rumqttd has no per-topic ACL: device A reads B's
//!   desired state and its forged message on B's topic reaches the coordinator's side of
//!   the broker. That is what envelope signatures are for (docs/security.md,
//!   "Transport"); with enrolled agents they refuse A's forgeries in both directions.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::certs::{CertPair, Pki};
use baton_e2e::fleet::{is_running, pod_info, wait_pods, EchoDeployment};
use baton_e2e::{forge, items, wait_for, Broker, Lab, Proc};
use baton_proto::{Body, Envelope, NodeName, Sender};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// A 2-replica Deployment runs, one pod per node, and answers from its containers.
fn deploys_and_runs(lab: &Lab) -> Result<()> {
    lab.apply(&EchoDeployment::new(2).yaml(&lab.registry()))?;
    let pods = wait_pods(lab, "web", 2, LONG, "2 running web pods", is_running)?;
    for p in &pods {
        let body = pod_info(lab, p, Duration::from_secs(5))?;
        ensure!(body.contains("hostname="), "pod answered {body:?}");
    }
    Ok(())
}

/// `mosquitto_sub`/`mosquitto_pub` from agent `from`'s namespace to the lab's broker by
/// IP address (OpenSSL sends it as TLS SNI: both brokers accept that), trusting `ca`,
/// with `identity` as client certificate if given, and its CN as client id (the embedded
/// broker's TLS front allows no other; Mosquitto sets it anyway). On either broker a
/// tool using device A's certificate and id takes over the session of that id, not of
/// A's agent (`baton-agent-A`).
fn mq(lab: &Lab, from: usize, prog: &str, ca: &Path, identity: Option<&CertPair>) -> Command {
    mq_as(
        lab,
        from,
        prog,
        ca,
        identity,
        identity.map(|i| i.cn.as_str()),
    )
}

/// [`mq`] with an explicit client id.
fn mq_as(
    lab: &Lab,
    from: usize,
    prog: &str,
    ca: &Path,
    identity: Option<&CertPair>,
    client_id: Option<&str>,
) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.agents[from].ns.0, prog]);
    c.args(["-h", &lab.hub_ip(), "-p", "8883", "-q", "1"])
        .arg("--cafile")
        .arg(ca);
    if let Some(id) = identity {
        c.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
    }
    if let Some(id) = client_id {
        c.args(["-i", id]);
    }
    c
}

/// Subscribes to `filter` for up to `secs` and returns the first message's
/// `topic payload-length` line, or None if nothing arrived (or the client was refused).
fn first_message(
    lab: &Lab,
    from: usize,
    ca: &Path,
    identity: Option<&CertPair>,
    filter: &str,
    secs: u32,
) -> Result<(Option<String>, Output)> {
    let out = mq(lab, from, "mosquitto_sub", ca, identity)
        .args([
            "-t",
            filter,
            "-C",
            "1",
            "-W",
            &secs.to_string(),
            "-F",
            "%t %l",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(((!text.is_empty()).then_some(text), out))
}

fn publish(
    lab: &Lab,
    from: usize,
    identity: &CertPair,
    topic: &str,
    payload: &Path,
    retain: bool,
) -> Result<Output> {
    let pki = lab.mtls.as_ref().context("mtls lab")?;
    let mut c = mq(lab, from, "mosquitto_pub", &pki.ca.ca, Some(identity));
    c.args(["-t", topic]).arg("-f").arg(payload);
    if retain {
        c.arg("-r");
    }
    Ok(c.output()?)
}

/// A well-formed, unsigned envelope claiming to come from `node`.
fn forged(lab: &Lab, node: &str, body: Body, file: &str) -> Result<std::path::PathBuf> {
    let env = Envelope::new(Sender::Node(NodeName::new(node)?), u64::MAX / 2, body);
    let path = lab.dir.path().join(file);
    std::fs::write(&path, env.encode()?)?;
    Ok(path)
}

fn ready(lab: &Lab, node: &str) -> Result<bool> {
    Ok(items(&lab.get_json(&["get", "nodes"])?)
        .iter()
        .any(|n| n["metadata"]["name"] == node && n["status"]["ready"] == true))
}

/// Clients without a certificate, or with one from another CA, cannot connect; the same
/// command with a fleet certificate can (it receives the node's retained desired state).
fn strangers_cannot_connect(lab: &Lab) -> Result<()> {
    let pki = lab.mtls.as_ref().context("mtls lab")?;
    let a = &lab.agents[0].name;
    let own_down = format!("baton/v1/nodes/{a}/down/#");
    let (got, _) = first_message(lab, 0, &pki.ca.ca, Some(&pki.agents[0]), &own_down, 10)?;
    ensure!(
        got.as_deref()
            .is_some_and(|l| l.starts_with(&format!("baton/v1/nodes/{a}/down/desired"))),
        "device A did not get its own retained desired state: {got:?}"
    );

    let (got, out) = first_message(lab, 0, &pki.ca.ca, None, &own_down, 5)?;
    ensure!(
        got.is_none() && !out.status.success(),
        "a client without a certificate connected: {got:?} {out:?}"
    );

    let rogue = Pki::new(&lab.dir.path().join("rogue"), "rogue-ca")?;
    // Same CN as device A, signed by a CA the broker does not trust.
    let impostor = rogue.client("impostor", a)?;
    let (got, out) = first_message(lab, 0, &pki.ca.ca, Some(&impostor), &own_down, 5)?;
    ensure!(
        got.is_none() && !out.status.success(),
        "a certificate from another CA connected: {got:?} {out:?}"
    );
    Ok(())
}

fn scenario(broker: Broker, tag: &str, attacks: impl FnOnce(&mut Lab) -> Result<()>) -> Result<()> {
    let mut lab = Lab::start_mtls(tag, 2, broker)?;
    let result = deploys_and_runs(&lab)
        .and_then(|()| strangers_cannot_connect(&lab))
        .and_then(|()| attacks(&mut lab));
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

#[test]
fn fleet_over_mtls_on_mosquitto_with_per_device_acls() -> Result<()> {
    scenario(Broker::Mosquitto, "mtm", |lab| {
        let pki = lab.mtls.as_ref().context("mtls lab")?;
        let (a, b) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
        let (cert_a, cert_b) = (&pki.agents[0], &pki.agents[1]);

        // A cannot read B's downward topics (B's desired state is retained there, so a
        // permitted subscription would get it at once).
        let (got, _) = first_message(
            lab,
            0,
            &pki.ca.ca,
            Some(cert_a),
            &format!("baton/v1/nodes/{b}/down/#"),
            4,
        )?;
        ensure!(got.is_none(), "device A read device B's topic: {got:?}");

        // An observer with the coordinator's read rights watches B's last-will topic and
        // A's heartbeats (the positive control: A's own upward messages do get through).
        let watched = lab.dir.path().join("observer.out");
        let mut observer = Proc::spawn(
            "observer",
            mq(lab, 0, "mosquitto_sub", &pki.ca.ca, Some(&pki.observer))
                .args(["-t", &format!("baton/v1/nodes/{b}/up/offline")])
                .args(["-t", &format!("baton/v1/nodes/{a}/up/heartbeat")])
                .args(["-F", "%t %l"]),
            watched.clone(),
        )?;
        wait_for(
            "the observer to see A's heartbeat",
            Duration::from_secs(20),
            || {
                Ok(std::fs::read_to_string(&watched)?
                    .contains(&format!("nodes/{a}/up/heartbeat"))
                    .then_some(()))
            },
        )?;

        // A publishes, with its own valid certificate, a forged Offline for B on B's
        // last-will topic (B itself never publishes there while connected, so anything
        // the observer sees there is the forgery) and a forged message on B's status
        // topic, and tries to wipe B's and its own retained desired state. Mosquitto
        // acknowledges and drops them all.
        let offline = forged(lab, &b, Body::Offline, "forged-offline")?;
        let status_like = forged(lab, &b, forge::bare_heartbeat(), "forged-heartbeat")?;
        let empty = lab.dir.path().join("empty");
        std::fs::write(&empty, b"")?;
        for (topic, payload, retain) in [
            (format!("baton/v1/nodes/{b}/up/offline"), &offline, false),
            (format!("baton/v1/nodes/{b}/up/status"), &status_like, false),
            (format!("baton/v1/nodes/{b}/down/desired"), &empty, true),
            (format!("baton/v1/nodes/{a}/down/desired"), &empty, true),
        ] {
            let out = publish(lab, 0, cert_a, &topic, payload, retain)?;
            ensure!(out.status.success(), "mosquitto_pub {topic}: {out:?}");
        }

        // Nothing A forged reached a subscriber with the coordinator's rights, B stays
        // Ready throughout, and both retained desired states are intact.
        for _ in 0..10 {
            ensure!(
                ready(lab, &b)?,
                "node {b} went NotReady after A's forgeries"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        observer.stop(Duration::from_secs(2));
        let seen = std::fs::read_to_string(&watched)?;
        ensure!(
            !seen.contains(&format!("nodes/{b}/up/offline")),
            "A's forgery on B's topic got through:\n{seen}"
        );
        for (i, cert, node) in [(1, cert_b, &b), (0, cert_a, &a)] {
            let (got, _) = first_message(
                lab,
                i,
                &pki.ca.ca,
                Some(cert),
                &format!("baton/v1/nodes/{node}/down/desired"),
                10,
            )?;
            let len: usize = got
                .as_deref()
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0);
            ensure!(len > 0, "{node}'s retained desired state is gone: {got:?}");
        }
        // B's pod is still running, and B's agent never saw anything odd.
        wait_pods(lab, "web", 2, LONG, "2 running web pods", is_running)?;
        let b_log = lab.agent_log(1);
        ensure!(
            !b_log.contains("rejected message"),
            "B's agent had to reject something:\n{b_log}"
        );
        Ok(())
    })
}

#[test]
fn fleet_over_mtls_on_the_embedded_broker() -> Result<()> {
    scenario(Broker::Embedded, "mte", |lab| {
        let pki = lab.mtls.as_ref().context("mtls lab")?;
        let b = lab.agents[1].name.clone();
        let cert_a = &pki.agents[0];

        // The TLS front binds the client id to the certificate: A cannot take over B's
        // agent session (which would disconnect B and publish its last will).
        for id in [format!("baton-agent-{b}"), b.clone()] {
            let out = mq_as(lab, 0, "mosquitto_sub", &pki.ca.ca, Some(cert_a), Some(&id))
                .args(["-t", "baton/v1/#", "-C", "1", "-W", "5"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
            ensure!(
                !out.status.success() && text.contains("not author"),
                "device A connected as {id}: {out:?}"
            );
        }
        ensure!(ready(lab, &b)?, "{b} is not Ready");

        // No per-topic ACL: device A reads B's retained desired state.
        let (got, _) = first_message(
            lab,
            0,
            &pki.ca.ca,
            Some(cert_a),
            &format!("baton/v1/nodes/{b}/down/#"),
            10,
        )?;
        ensure!(
            got.as_deref()
                .is_some_and(|l| l.starts_with(&format!("baton/v1/nodes/{b}/down/desired"))),
            "expected rumqttd to let device A read B's topic (no ACL): {got:?}"
        );

        // And A's forgery on B's upward topic passes the broker: a subscriber on B's
        // last-will topic receives it. (The subscriber uses B's certificate and id `B`,
        // not A's: two clients with A's id would take over each other's session.)
        let watched = lab.dir.path().join("observer.out");
        let mut observer = Proc::spawn(
            "observer",
            mq(lab, 1, "mosquitto_sub", &pki.ca.ca, Some(&pki.agents[1]))
                .args(["-t", &format!("baton/v1/nodes/{b}/up/offline")])
                .args(["-F", "%t %l"]),
            watched.clone(),
        )?;
        let offline = forged(lab, &b, Body::Offline, "forged-offline")?;
        wait_for(
            "A's forged Offline for B to pass the broker",
            Duration::from_secs(20),
            || {
                let out = publish(
                    lab,
                    0,
                    cert_a,
                    &format!("baton/v1/nodes/{b}/up/offline"),
                    &offline,
                    false,
                )?;
                ensure!(out.status.success(), "mosquitto_pub: {out:?}");
                std::thread::sleep(Duration::from_millis(500));
                Ok(std::fs::read_to_string(&watched)?
                    .contains(&format!("nodes/{b}/up/offline"))
                    .then_some(()))
            },
        )?;
        observer.stop(Duration::from_secs(2));

        // Past the broker, the coordinator is the last line. These agents are not
        // enrolled (the Lab starts them with a name, not a join token), so their messages
        // are unsigned and the coordinator cannot tell A's forgery from B: at most B is
        // NotReady until its next heartbeat (1 s here). It heals: B is Ready again and its
        // pod never stopped. With enrolled nodes the forgery is refused by signature
        // (coordinator/src/security/gate.rs; see docs/security.md, "Transport").
        wait_for(&format!("{b} to be Ready"), Duration::from_secs(30), || {
            Ok(ready(lab, &b)?.then_some(()))
        })?;
        wait_pods(lab, "web", 2, LONG, "2 running web pods", is_running)?;
        let health: Value = serde_json::from_slice(
            &lab.hub
                .cmd("curl")
                .args(["-sS", "http://127.0.0.1:7474/healthz"])
                .output()?
                .stdout,
        )
        .context("healthz")?;
        ensure!(
            health["mqtt"]["connected"] == true,
            "the coordinator's bridge is not connected: {health}"
        );
        Ok(())
    })
}

fn rejections(lab: &Lab, node: &str, reason: &str) -> Result<u64> {
    let out = lab.baton(&["security", "rejections", "-o", "json"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["nodes"][node][reason].as_u64().unwrap_or(0))
}

/// Restarts the lab's coordinator with enrollment served on the hub address, and its
/// agents enrolled with one two-use join token (their MQTT certificates stay the lab's).
fn enroll_fleet(lab: &mut Lab) -> Result<()> {
    let n = lab.agents.len();
    lab.restart_coordinator_enrolling(&["--require-signatures", "--rotation-overlap", "3s"])?;
    let token = lab.join_token(&["--ttl", "1h", "--uses", &n.to_string()])?;
    lab.agent_args = vec![
        "--join-token".into(),
        token,
        "--coordinator-api".into(),
        lab.enroll_api(),
    ];
    for i in 0..n {
        lab.start_agent(i)?;
        let id = lab.agents[i].data_dir.join("identity.json");
        wait_for(&format!("agent {i} enrolled"), LONG, || {
            ensure!(
                lab.agents[i].proc.as_mut().is_some_and(|p| p.is_running()),
                "agent {i} exited: {}",
                lab.agent_log(i)
            );
            Ok(id.exists().then_some(()))
        })?;
    }
    // Every node Ready again with signed heartbeats (required from now on).
    for a in &lab.agents {
        let name = a.name.clone();
        wait_for(&format!("{name} Ready, signed"), LONG, || {
            Ok((ready(lab, &name)? && rejections(lab, &name, "unknown-node")? == 0).then_some(()))
        })?;
    }
    Ok(())
}

/// On the embedded broker (no per-topic ACL) device A, with its own valid certificate,
/// forges messages for B in both directions; they pass the broker and are refused by
/// signature: the coordinator counts them, B's agent refuses its forged desired state,
/// and B's pod keeps the same container processes.
#[test]
fn signatures_hold_the_line_on_the_embedded_broker() -> Result<()> {
    let mut lab = Lab::start_mtls("mts", 2, Broker::Embedded)?;
    let result = signatures_hold(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn signatures_hold(lab: &mut Lab) -> Result<()> {
    use baton_e2e::container_pids;
    use baton_e2e::fleet::{node_of, uid};
    use baton_proto::sign::SigningKey;

    enroll_fleet(lab)?;
    lab.apply(&EchoDeployment::new(2).yaml(&lab.registry()))?;
    let pods = wait_pods(lab, "web", 2, LONG, "2 running web pods", is_running)?;
    let pki = lab.mtls.as_ref().context("mtls lab")?;
    let b = lab.agents[1].name.clone();
    let on_b: Vec<&Value> = pods.iter().filter(|p| node_of(p) == b).collect();
    ensure!(on_b.len() == 1, "expected one pod on {b}: {pods:?}");
    let b_uid = uid(on_b[0]);
    let pids = container_pids(&b, &b_uid, "echo");
    ensure!(!pids.is_empty(), "no container process on {b}");

    let attacker = SigningKey::from_bytes(&[0x42; 32]);
    let write = |name: &str, env: &Envelope| -> Result<std::path::PathBuf> {
        let path = lab.dir.path().join(name);
        std::fs::write(&path, env.encode()?)?;
        Ok(path)
    };
    // Up: B's heartbeat signed by another key, and an unsigned Offline for B.
    let hb_topic = format!("baton/v1/nodes/{b}/up/heartbeat");
    let hb = forge::envelope(
        Sender::Node(NodeName::new(&b)?),
        u64::MAX / 2,
        forge::bare_heartbeat(),
        &hb_topic,
        Some(&attacker),
    )?;
    let hb = write("forged-hb", &hb)?;
    let offline = forged(lab, &b, Body::Offline, "forged-offline")?;
    // Down: an empty desired state for B, signed by another key and unsigned.
    let desired_topic = format!("baton/v1/nodes/{b}/down/desired");
    let desired = |key: Option<&SigningKey>, name: &str| -> Result<std::path::PathBuf> {
        let body = forge::empty_desired(u64::MAX);
        write(
            name,
            &forge::envelope(Sender::Coordinator, u64::MAX / 2, body, &desired_topic, key)?,
        )
    };
    let desired_signed = desired(Some(&attacker), "forged-desired-signed")?;
    let desired_unsigned = desired(None, "forged-desired-unsigned")?;
    let cert_a = &pki.agents[0];
    for (topic, payload) in [
        (&hb_topic, &hb),
        (&format!("baton/v1/nodes/{b}/up/offline"), &offline),
        (&desired_topic, &desired_signed),
        (&desired_topic, &desired_unsigned),
    ] {
        let out = publish(lab, 0, cert_a, topic, payload, false)?;
        ensure!(out.status.success(), "mosquitto_pub {topic}: {out:?}");
    }

    wait_for("the coordinator to count A's forgeries for B", LONG, || {
        Ok(
            (rejections(lab, &b, "bad-signature")? >= 1 && rejections(lab, &b, "unsigned")? >= 1)
                .then_some(()),
        )
    })?;
    wait_for(
        "B's agent to refuse both forged desired states",
        LONG,
        || {
            let log = lab.agent_log(1);
            let refusals: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("refused a coordinator message"))
                .collect();
            let has = |r: &str| refusals.iter().any(|l| l.contains(r));
            Ok((has("bad-signature") && has("unsigned")).then_some(()))
        },
    )?;
    // B is untouched: Ready, the same pod, the same container processes.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(ready(lab, &b)?, "{b} went NotReady");
    let now = wait_pods(lab, "web", 2, LONG, "2 running web pods", is_running)?;
    ensure!(
        now.iter().any(|p| node_of(p) == b && uid(p) == b_uid),
        "the pod on {b} was replaced: {now:?}"
    );
    ensure!(
        container_pids(&b, &b_uid, "echo") == pids,
        "the container on {b} was restarted"
    );

    // `baton node rotate` while B's pod runs: the coordinator asks B's agent, which
    // rotates in place. B keeps its pod and stays Ready; its enrolled key changed; a
    // message signed with the old key is refused once the 3 s overlap is over.
    let identity = |lab: &Lab| -> Result<Value> {
        Ok(serde_json::from_slice(
            &lab.baton(&["node", "identity", &b, "-o", "json"])?.stdout,
        )?)
    };
    let old_pub = identity(lab)?["publicKey"].clone();
    let file: Value = serde_json::from_slice(&std::fs::read(
        lab.agents[1].data_dir.join("identity.json"),
    )?)?;
    let old_seed = base64_decode(file["privateKey"].as_str().context("privateKey")?)?;
    let old_key = SigningKey::from_bytes(
        &old_seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("a 32-byte seed"))?,
    );
    let out = lab.baton(&["node", "rotate", &b])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("key rotated"), "baton node rotate: {text}");
    let new_pub = identity(lab)?["publicKey"].clone();
    ensure!(new_pub != old_pub, "the enrolled key of {b} did not change");
    let file: Value = serde_json::from_slice(&std::fs::read(
        lab.agents[1].data_dir.join("identity.json"),
    )?)?;
    ensure!(
        base64_decode(file["privateKey"].as_str().context("privateKey")?)? != old_key.to_bytes(),
        "the device key in {b}'s identity file did not change"
    );
    let sig_before = rejections(lab, &b, "bad-signature")?;
    std::thread::sleep(Duration::from_secs(6));
    ensure!(ready(lab, &b)?, "{b} is not Ready after rotation");
    ensure!(
        rejections(lab, &b, "bad-signature")? == sig_before,
        "messages of {b} were refused after rotation"
    );
    ensure!(
        container_pids(&b, &b_uid, "echo") == pids,
        "rotation restarted the container on {b}"
    );
    let old = forge::envelope(
        Sender::Node(NodeName::new(&b)?),
        u64::MAX / 2,
        forge::bare_heartbeat(),
        &hb_topic,
        Some(&old_key),
    )?;
    let old = write("old-key-hb", &old)?;
    let out = publish(lab, 0, cert_a, &hb_topic, &old, false)?;
    ensure!(out.status.success(), "mosquitto_pub: {out:?}");
    wait_for("the old key to be refused after the overlap", LONG, || {
        Ok((rejections(lab, &b, "bad-signature")? > sig_before).then_some(()))
    })?;
    Ok(())
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(s.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "base64 -d: {out:?}");
    Ok(out.stdout)
}
