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
//! - Embedded rumqttd: strangers cannot connect either, but it has no per-topic ACL:
//!   device A reads B's desired state and its forged message on B's topic reaches the
//!   coordinator's side of the broker. That is what envelope signatures are for
//!   (docs/security.md, "Transport").

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::certs::{CertPair, Pki, BROKER_NAME};
use baton_e2e::fleet::{is_running, pod_info, wait_pods, EchoDeployment};
use baton_e2e::{items, wait_for, Broker, Lab, Proc};
use baton_proto::{Body, Envelope, Heartbeat, NodeName, Sender};
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

/// `/etc/netns/<ns>/hosts` naming the hub [`BROKER_NAME`], for `ip netns exec`; removed
/// on drop. The OpenSSL-based mosquitto clients would send the hub's IP address as TLS
/// SNI, which the embedded broker's rustls refuses; by name they send a valid SNI.
struct BrokerName(Vec<PathBuf>);

impl BrokerName {
    fn new(lab: &Lab) -> Result<Self> {
        let mut dirs = Vec::new();
        for a in &lab.agents {
            let dir = Path::new("/etc/netns").join(&a.ns.0);
            std::fs::create_dir_all(&dir)?;
            dirs.push(dir.clone());
            std::fs::write(
                dir.join("hosts"),
                format!("127.0.0.1 localhost\n{} {BROKER_NAME}\n", lab.hub_ip()),
            )?;
        }
        Ok(BrokerName(dirs))
    }
}

impl Drop for BrokerName {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `mosquitto_sub`/`mosquitto_pub` from agent `from`'s namespace to the lab's broker (by
/// name, see [`BrokerName`]), trusting `ca`, with `identity` as client certificate if
/// given. On Mosquitto (`use_username_as_clientid`) a tool using device A's certificate
/// takes over A's session, so A's agent reconnects after each one: as intended, a
/// certificate is one session.
fn mq(lab: &Lab, from: usize, prog: &str, ca: &Path, identity: Option<&CertPair>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.agents[from].ns.0, prog]);
    c.args(["-h", BROKER_NAME, "-p", "8883", "-q", "1"])
        .arg("--cafile")
        .arg(ca);
    if let Some(id) = identity {
        c.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
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
    let _name = BrokerName::new(&lab)?;
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
        let status_like = forged(
            lab,
            &b,
            Body::Heartbeat(Heartbeat {
                applied_generation: 0,
                status_digest: 0,
            }),
            "forged-heartbeat",
        )?;
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
        // last-will topic (A itself, again for want of an ACL) receives it.
        let watched = lab.dir.path().join("observer.out");
        let mut observer = Proc::spawn(
            "observer",
            mq(lab, 0, "mosquitto_sub", &pki.ca.ca, Some(cert_a))
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
        // (coordinator/src/security.rs; see docs/security.md, "Transport").
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
