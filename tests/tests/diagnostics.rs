//! Errors a person can act on: every common way to point an agent or the coordinator at
//! the wrong broker, port, CA or certificate is reported at the default log level
//! (RUST_LOG unset), once, at WARN, with the address, the cause and advice; repeats are
//! rate-limited, not silenced; the coordinator's `/healthz` turns 503 with the reason; and
//! `baton describe node` shows what an agent went through before it got connected.
//!
//! Real processes throughout: the `baton-agent` and `baton` binaries, the embedded broker
//! behind its TLS front, Mosquitto with the shipped deploy/mosquitto config and ACL, each
//! site in its own network namespace (everything on its loopback).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::certs::{self, CertPair, Pki};
use baton_e2e::{bin, repo_root, sh, wait_for, Netns, Proc};

/// How soon the first warning must appear: the first attempt fails within milliseconds
/// (refused) or one TLS round trip; a few seconds allow for a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One network namespace with a temp dir; everything in it is stopped on drop.
struct Site {
    ns: Netns,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    /// Agents started here: (node name, data dir), reset on drop.
    agents: Vec<(String, std::path::PathBuf)>,
}

impl Site {
    fn new(tag: &str) -> Result<Site> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("dg{tag}{}-{n}", std::process::id() % 10000);
        Ok(Site {
            ns: Netns::new(&format!("bt-{id}"))?,
            dir: tempfile::Builder::new()
                .prefix(&format!("baton-e2e-{id}-"))
                .tempdir()?,
            procs: Vec::new(),
            agents: Vec::new(),
        })
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    /// Starts `cmd` at the default log level (RUST_LOG unset); returns its index.
    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<usize> {
        cmd.env_remove("RUST_LOG");
        let log = self.path(&format!("{name}.log"));
        self.procs.push(Proc::spawn(name, &mut cmd, log)?);
        Ok(self.procs.len() - 1)
    }

    /// An agent for node `node` dialing `url`, with `tls` = (CA, client certificate).
    fn agent(&mut self, node: &str, url: &str, tls: Option<(&Path, &CertPair)>) -> Result<usize> {
        let data = self.path(node);
        let cidr = format!("10.42.{}.0/24", 100 + self.agents.len());
        let mut cmd = self.ns.cmd(bin("baton-agent"));
        cmd.args([
            "--coordinator",
            url,
            "--node-name",
            node,
            "--pod-cidr",
            &cidr,
        ])
        .arg("--data-dir")
        .arg(&data)
        // These agents test the link itself, with hand-made certificates: no enrollment.
        .args(baton_e2e::DEV_AGENT_FLAGS);
        if let Some((ca, cert)) = tls {
            cmd.arg("--mqtt-ca")
                .arg(ca)
                .arg("--mqtt-cert")
                .arg(&cert.cert)
                .arg("--mqtt-key")
                .arg(&cert.key);
        }
        self.agents.push((node.to_owned(), data));
        self.spawn(node, cmd)
    }

    /// `baton server` with these flags, its data in `<dir>/<name>`; waits until it serves.
    fn coordinator(&mut self, name: &str, args: &[&str]) -> Result<usize> {
        let mut cmd = self.ns.cmd(bin("baton"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(self.path(name))
            .args(args);
        // A plain embedded broker (development mode) unless the test sets up TLS itself.
        if !args
            .iter()
            .any(|a| *a == "--mqtt-tls-cert" || *a == "--broker")
        {
            cmd.args(baton_e2e::DEV_COORDINATOR_FLAGS);
        }
        let i = self.spawn(name, cmd)?;
        wait_for(&format!("{name} to serve"), Duration::from_secs(30), || {
            let p = &mut self.procs[i];
            ensure!(p.is_running(), "{name} exited: {}", p.log());
            Ok(p.log().contains("coordinator serving").then_some(()))
        })?;
        Ok(i)
    }

    /// Mosquitto with the shipped deploy/mosquitto config and ACL on 127.0.0.1:8883,
    /// certificates from `pki`.
    fn mosquitto(&mut self, pki: &Pki, server: &CertPair) -> Result<()> {
        let deploy = repo_root().join("deploy/mosquitto");
        let p = |p: &Path| p.display().to_string();
        let conf = std::fs::read_to_string(deploy.join("mosquitto.conf"))?
            .replace("listener 8883\n", "listener 8883 127.0.0.1\n")
            .replace("/etc/baton/mqtt/server.crt", &p(&server.cert))
            .replace("/etc/baton/mqtt/server.key", &p(&server.key))
            .replace("/etc/baton/mqtt/ca.crt", &p(&pki.ca))
            .replace("/etc/baton/mqtt/acl", &p(&deploy.join("acl")));
        ensure!(
            !conf.contains("/etc/baton"),
            "deploy/mosquitto/mosquitto.conf no longer has the paths this test replaces"
        );
        // Started as root, Mosquitto would drop to a user that cannot read the temp dir.
        let path = self.path("mosquitto.conf");
        std::fs::write(&path, conf + "\nuser root\n")?;
        let mut cmd = self.ns.cmd("/usr/sbin/mosquitto");
        cmd.arg("-c").arg(&path);
        let i = self.spawn("mosquitto", cmd)?;
        wait_for("mosquitto to listen", Duration::from_secs(20), || {
            ensure!(
                self.procs[i].is_running(),
                "mosquitto exited: {}",
                self.procs[i].log()
            );
            let out = self.ns.cmd("ss").arg("-ltn").output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .contains("127.0.0.1:8883")
                .then_some(()))
        })
    }

    fn log(&self, i: usize) -> String {
        self.procs[i].log()
    }

    /// Waits for a log line of process `i` containing every one of `needles`.
    fn wait_line(&self, i: usize, needles: &[&str], within: Duration) -> Result<String> {
        let name = &self.procs[i].name;
        wait_for(&format!("{name} to log {needles:?}"), within, || {
            let log = self.log(i);
            match log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                Some(l) => Ok(Some(l.to_owned())),
                None => bail!("log so far:\n{log}"),
            }
        })
    }

    /// GET /healthz inside the site: (HTTP status, body).
    fn healthz(&self, url: &str) -> Result<(u16, String)> {
        let out = sh(self
            .ns
            .cmd("curl")
            .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("{url}/healthz")))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl output")?;
        Ok((code.trim().parse()?, body.to_owned()))
    }

    /// The `baton` CLI against the coordinator whose data dir is `<dir>/<name>`.
    fn baton(&self, name: &str, args: &[&str]) -> Result<String> {
        let out = sh(self
            .ns
            .cmd(bin("baton"))
            .args(args)
            .env("BATON_CONFIG", self.path(name).join("admin.conf")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn dump_logs(&self) {
        for p in &self.procs {
            eprintln!("----- {} -----\n{}", p.name, p.log());
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(20));
        }
        for (node, data) in &self.agents {
            let _ = self
                .ns
                .cmd(bin("baton-agent"))
                .args(["reset", "--node-name", node])
                .arg("--data-dir")
                .arg(data)
                .output();
        }
    }
}

/// The agent's WARN lines about its broker link (not the development-mode warning at start).
fn link_warnings(log: &str) -> impl Iterator<Item = &str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("baton_agent::bus"))
}

/// Runs `f`; on failure prints the site's logs.
fn with_logs(site: &Site, f: impl FnOnce(&Site) -> Result<()>) -> Result<()> {
    let r = f(site);
    if r.is_err() {
        site.dump_logs();
    }
    r
}

const CONNECT_FAIL: &str = "WARN";

/// Each way of pointing an agent at the wrong place gives one WARN line within seconds,
/// with the address, the cause and the advice; while the cause stays the same, further
/// attempts are not logged (the next line would come a minute later, with a count).
#[test]
fn agent_connection_failures_are_explained_at_the_default_log_level() -> Result<()> {
    let mut site = Site::new("a")?;
    let fleet = Pki::new(&site.path("pki"), "fleet-ca")?;
    let broker = fleet.server("broker", &["127.0.0.1"])?;
    let other = Pki::new(&site.path("other"), "other-ca")?;
    // The embedded broker behind its TLS front on 8883, the API over HTTPS on 7474.
    let coordinator = site.coordinator(
        "coordinator",
        &[
            "--tls-auto",
            "--mqtt-listen",
            "127.0.0.1:8883",
            "--mqtt-tls-cert",
            &broker.cert.display().to_string(),
            "--mqtt-tls-key",
            &broker.key.display().to_string(),
            "--mqtt-client-ca",
            &fleet.ca.display().to_string(),
        ],
    )?;

    let closed = site.agent("closed", "mqtt://127.0.0.1:1", None)?;
    let https = site.agent("https", "mqtt://127.0.0.1:7474", None)?;
    let plain_on_tls = site.agent("plain", "mqtt://127.0.0.1:8883", None)?;
    let stranger = other.client("stranger", "stranger")?;
    let other_ca = site.agent(
        "otherca",
        "mqtts://127.0.0.1:8883",
        Some((&other.ca, &stranger)),
    )?;
    let someone = fleet.client("someone", "someone-else")?;
    let not_mine = site.agent(
        "notmine",
        "mqtts://127.0.0.1:8883",
        Some((&fleet.ca, &someone)),
    )?;
    // The positive control: the same broker with the right certificate connects.
    let own = fleet.client("good", "good")?;
    let good = site.agent("good", "mqtts://127.0.0.1:8883", Some((&fleet.ca, &own)))?;

    with_logs(&site, |site| {
        // The listen log names the scheme it serves (it said `http_addr=` for HTTPS).
        let serving = site.wait_line(coordinator, &["coordinator serving"], PROMPT)?;
        ensure!(
            serving.contains("https://127.0.0.1:7474") && !serving.contains("http_addr"),
            "{serving}"
        );
        let cases = [
            (
                closed,
                "cannot connect to the MQTT broker at mqtt://127.0.0.1:1: connection refused (nothing listens there: is the broker running, and is the port right?)",
            ),
            (https, "cannot connect to the MQTT broker at mqtt://127.0.0.1:7474: the server did not answer as MQTT"),
            (https, "(is this a TLS port? use mqtts://)"),
            (plain_on_tls, "cannot connect to the MQTT broker at mqtt://127.0.0.1:8883: the server did not answer as MQTT"),
            (plain_on_tls, "(is this a TLS port? use mqtts://)"),
            (
                other_ca,
                "cannot connect to the MQTT broker at mqtts://127.0.0.1:8883: tls: the broker's certificate is not trusted",
            ),
            (other_ca, "(the broker's certificate is not signed by the CA you gave (--mqtt-ca))"),
            (
                not_mine,
                "cannot connect to the MQTT broker at mqtts://127.0.0.1:8883: the broker refused the connection: return code NotAuthorized",
            ),
            (
                not_mine,
                "its CN must be this node's name (--node-name); is this another node's certificate?",
            ),
        ];
        for (i, want) in cases {
            let line = site.wait_line(i, &[CONNECT_FAIL, want], PROMPT)?;
            eprintln!("FIGURE {}: {line}", site.procs[i].name);
        }
        site.wait_line(good, &["connected to broker"], PROMPT)?;

        // Several retries later (backoff 0.25 s doubling): still one line each.
        std::thread::sleep(Duration::from_secs(8));
        for i in [closed, https, plain_on_tls, other_ca, not_mine] {
            let log = site.log(i);
            let warns = log
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("cannot connect"))
                .count();
            ensure!(
                warns == 1,
                "{}: {warns} warnings in 8 s, want 1 (rate-limited):\n{log}",
                site.procs[i].name
            );
            ensure!(
                !log.contains("connected to broker"),
                "{} connected:\n{log}",
                site.procs[i].name
            );
        }
        // The development-mode warning at start is expected; a link warning is not.
        ensure!(
            !link_warnings(&site.log(good)).any(|_| true),
            "the good agent warned:\n{}",
            site.log(good)
        );
        Ok(())
    })
}

/// An agent started before its broker warns once, keeps retrying, logs at INFO how many
/// attempts it took when the broker appears, and `describe node` / `get nodes -o wide`
/// show the error it had before it got through.
#[test]
fn describe_node_shows_the_last_connect_error_after_the_agent_gets_through() -> Result<()> {
    let mut site = Site::new("d")?;
    let agent = site.agent("early", "mqtt://127.0.0.1:1883", None)?;
    with_logs(&site, |site| {
        site.wait_line(
            agent,
            &["WARN", "connection refused (nothing listens there"],
            PROMPT,
        )?;
        Ok(())
    })?;
    // Let it retry a few times first.
    std::thread::sleep(Duration::from_secs(3));
    site.coordinator("coordinator", &[])?;
    with_logs(&site, |site| {
        let line = site.wait_line(
            agent,
            &["INFO", "connected to broker at mqtt://127.0.0.1:1883 after"],
            Duration::from_secs(30),
        )?;
        eprintln!("FIGURE recovery: {line}");
        let attempts: u64 = line
            .split(" after ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no attempt count in {line:?}"))?;
        ensure!(attempts >= 3, "only {attempts} attempts in 3 s: {line}");
        let warns = link_warnings(&site.log(agent)).count();
        ensure!(warns == 1, "{warns} warnings, want 1:\n{}", site.log(agent));

        let described = wait_for(
            "describe node to show the error",
            Duration::from_secs(30),
            || {
                let out = site.baton("coordinator", &["describe", "node", "early"])?;
                if out.contains("Connect Error:  connection refused (nothing listens there: is the broker running, and is the port right?) (reported ") {
                Ok(Some(out))
            } else {
                bail!("describe node:\n{out}")
            }
            },
        )?;
        ensure!(described.contains("enrolled:     no"), "{described}");
        eprintln!("FIGURE describe node:\n{described}");
        let wide = site.baton("coordinator", &["get", "nodes", "-o", "wide"])?;
        ensure!(
            wide.contains("LAST-CONNECT-ERROR") && wide.contains("connection refused"),
            "{wide}"
        );
        Ok(())
    })
}

/// The coordinator's `--broker` on a port where nothing listens: one WARN with the
/// advice, and `/healthz` 503 with the reason, until the broker is reachable.
#[test]
fn coordinator_broker_on_a_wrong_port_warns_and_fails_healthz() -> Result<()> {
    let mut site = Site::new("c")?;
    let c = site.coordinator("coordinator", &["--broker", "mqtt://127.0.0.1:1"])?;
    with_logs(&site, |site| {
        let line = site.wait_line(
            c,
            &[
                "WARN",
                "cannot connect to the MQTT broker at mqtt://127.0.0.1:1: connection refused (nothing listens there: is the broker running, and is the port right?)",
            ],
            PROMPT,
        )?;
        eprintln!("FIGURE coordinator: {line}");
        let (code, body) = wait_for("healthz 503", PROMPT, || {
            let (code, body) = site.healthz("http://127.0.0.1:7474")?;
            Ok((code == 503).then_some((code, body)))
        })?;
        ensure!(
            body.contains("\"reason\":\"mqtt: connection refused (nothing listens there"),
            "{code} {body}"
        );
        Ok(())
    })
}

/// A coordinator certificate with the wrong CN connects to Mosquitto, whose ACL then
/// silently drops everything. Mosquitto 2.0.11 even grants the denied SUBSCRIBE (SUBACK
/// 0, not 0x80), so the certificate's CN is the one sign: it is reported at WARN and on
/// `/healthz` (503 until a node's message disproves it). An agent with another node's
/// certificate is told likewise. The coordinator with the right CN is the control.
#[test]
fn wrong_cn_against_the_mosquitto_acl_is_detected() -> Result<()> {
    let mut site = Site::new("m")?;
    let pki = Pki::new(&site.path("pki"), "fleet-ca")?;
    let server = pki.server("broker", &["127.0.0.1"])?;
    let wrong = pki.client("wrong", "baton-coordinator")?;
    let right = pki.client("right", certs::COORDINATOR_CN)?;
    site.mosquitto(&pki, &server)?;
    let tls = |c: &CertPair| {
        vec![
            "--broker".to_owned(),
            "mqtts://127.0.0.1:8883".to_owned(),
            "--broker-ca".to_owned(),
            pki.ca.display().to_string(),
            "--broker-cert".to_owned(),
            c.cert.display().to_string(),
            "--broker-key".to_owned(),
            c.key.display().to_string(),
        ]
    };
    let args = |v: &[String], listen: &str| {
        let mut v = v.to_vec();
        v.extend(["--listen".to_owned(), listen.to_owned()]);
        v
    };
    let bad_args = args(&tls(&wrong), "127.0.0.1:7474");
    let bad = site.coordinator(
        "bad",
        &bad_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let good_args = args(&tls(&right), "127.0.0.1:7475");
    site.coordinator(
        "good",
        &good_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let someone = pki.client("someone", "someone-else")?;
    let agent = site.agent(
        "acl-node",
        "mqtts://127.0.0.1:8883",
        Some((&pki.ca, &someone)),
    )?;
    with_logs(&site, |site| {
        let line = site.wait_line(
            bad,
            &[
                "WARN",
                "the coordinator's MQTT client certificate (--broker-cert) has CN \"baton-coordinator\", but deploy/mosquitto's ACL grants the coordinator's topics only to CN baton:coordinator",
                "no node will appear (issue the certificate with CN baton:coordinator)",
            ],
            PROMPT,
        )?;
        eprintln!("FIGURE wrong CN: {line}");
        // Mosquitto lets it connect and grants its SUBSCRIBE (SUBACK 0, not 0x80): the
        // wire says all is well, and only the certificate tells.
        let (code, body) = wait_for("the bad coordinator subscribed", PROMPT, || {
            let (code, body) = site.healthz("http://127.0.0.1:7474")?;
            Ok(body.contains("\"connected\":true").then_some((code, body)))
        })?;
        ensure!(
            code == 503
                && body.contains("\"reason\":\"mqtt: the coordinator's MQTT client certificate"),
            "{code} {body}"
        );
        ensure!(!site.log(bad).contains("SUBACK 0x80"), "{}", site.log(bad));
        let (code, body) = wait_for("the good coordinator's healthz", PROMPT, || {
            let (code, body) = site.healthz("http://127.0.0.1:7475")?;
            Ok(body.contains("\"connected\":true").then_some((code, body)))
        })?;
        ensure!(code == 200, "{code} {body}");

        let line = site.wait_line(
            agent,
            &[
                "WARN",
                "this node's MQTT client certificate (--mqtt-cert) has CN \"someone-else\", not the node name \"acl-node\"",
                "(is this another node's certificate?)",
            ],
            PROMPT,
        )?;
        eprintln!("FIGURE agent wrong CN: {line}");
        Ok(())
    })
}

/// A plain-HTTP registry (Distribution's docker-registry) that the agent was not told is
/// plain: the pull fails with a message that says it is reachable but not TLS, and names
/// the flag, `--insecure-registry HOST:PORT` (it used to say "unreachable: received
/// corrupt message of type InvalidContentType").
#[test]
fn a_plain_http_registry_not_marked_insecure_names_the_flag() -> Result<()> {
    let mut site = Site::new("r")?;
    let registry_dir = site.path("registry");
    sh(site
        .ns
        .cmd(repo_root().join("images/registry.sh"))
        .args(["start", "127.0.0.1:5000"])
        .arg(&registry_dir))?;
    site.coordinator("coordinator", &[])?;
    let agent = site.agent("puller", "mqtt://127.0.0.1:1883", None)?;
    let result = with_logs(&site, |site| {
        site.wait_line(agent, &["connected to broker"], Duration::from_secs(30))?;
        let manifest = site.path("pod.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/baton/busybox:1\n",
        )?;
        site.baton(
            "coordinator",
            &["apply", "-f", &manifest.display().to_string()],
        )?;
        let want = "registry 127.0.0.1:5000 error: it speaks plain HTTP, not HTTPS (received corrupt message of type InvalidContentType); to pull from it over plain HTTP, start the agent with --insecure-registry 127.0.0.1:5000";
        let reason = wait_for("the pull to fail", Duration::from_secs(60), || {
            let out = site.baton("coordinator", &["get", "pod", "plain", "-o", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let reason = v["status"]["containerStatuses"][0]["state"]["failed"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if reason.contains(want) {
                Ok(Some(reason))
            } else {
                bail!("pod status: {}", v["status"])
            }
        })?;
        ensure!(!reason.contains("unreachable"), "{reason}");
        eprintln!("FIGURE plain registry: {reason}");
        Ok(())
    });
    let _ = site
        .ns
        .cmd(repo_root().join("images/registry.sh"))
        .args(["stop", "127.0.0.1:5000"])
        .arg(&registry_dir)
        .output();
    result
}

/// An enrolled node's enrollment state in `describe node` (fingerprint and serial of the
/// certificate the device holds, notAfter as RFC 3339 with the time left, revoked or not)
/// and `node identity` with the same.
#[test]
fn describe_node_shows_the_enrollment_state() -> Result<()> {
    let mut lab = baton_e2e::Lab::start("dge", 1, baton_e2e::Broker::Embedded)?;
    let result = (|| -> Result<()> {
        lab.restart_coordinator_enrolling(&[])?;
        let token = lab.join_token(&[])?;
        lab.agent_args = vec![
            "--join-token".into(),
            token,
            "--coordinator-api".into(),
            lab.enroll_api(),
        ];
        lab.spawn_agent(0)?;
        let name = lab.agents[0].name.clone();
        let identity = lab.agents[0].data_dir.join("identity.json");
        wait_for("the agent to enroll", Duration::from_secs(60), || {
            Ok(identity.exists().then_some(()))
        })?;
        let id: serde_json::Value = serde_json::from_slice(&std::fs::read(
            lab.agents[0].data_dir.join("identity.json"),
        )?)?;
        let pem = lab.dir.path().join("node.crt");
        std::fs::write(&pem, id["certificate"].as_str().context("certificate")?)?;
        let text = |cmd: &mut Command| -> Result<String> {
            Ok(String::from_utf8_lossy(&sh(cmd)?.stdout).trim().to_owned())
        };
        // `sha256 Fingerprint=AB:CD:...` and `serial=0123...` from openssl.
        let fp = text(
            Command::new("openssl")
                .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
                .arg(&pem),
        )?;
        let fp = fp
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .replace(':', "")
            .to_lowercase();
        let serial = text(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(&pem),
        )?;
        let serial = serial.trim_start_matches("serial=").to_lowercase();

        let describe = || -> Result<String> {
            Ok(
                String::from_utf8_lossy(&lab.baton(&["describe", "node", &name])?.stdout)
                    .into_owned(),
            )
        };
        let out = describe()?;
        eprintln!("FIGURE describe enrolled node:\n{out}");
        ensure!(out.contains("  enrolled:     yes\n"), "{out}");
        ensure!(
            out.contains(&format!("  fingerprint:  SHA256:{fp}\n")),
            "want {fp}:\n{out}"
        );
        let shown = out
            .lines()
            .find_map(|l| l.strip_prefix("  serial:       "))
            .unwrap_or_default()
            .replace(':', "");
        ensure!(
            shown.trim_start_matches('0') == serial.trim_start_matches('0'),
            "want {serial}:\n{out}"
        );
        let not_after = out
            .lines()
            .find_map(|l| l.strip_prefix("  not after:    "))
            .unwrap_or_default()
            .to_owned();
        ensure!(
            not_after.len() > 22
                && not_after.as_bytes()[10] == b'T'
                && not_after.contains("Z (")
                && not_after.ends_with(" left)"),
            "not after: {not_after:?}"
        );
        ensure!(out.contains("  revoked:      no\n"), "{out}");
        let ident =
            String::from_utf8_lossy(&lab.baton(&["node", "identity", &name])?.stdout).into_owned();
        ensure!(
            ident.contains(&format!("not after:   {not_after}")),
            "{ident}"
        );

        lab.baton(&["node", "revoke", &name])?;
        let out = describe()?;
        ensure!(out.contains("  revoked:      yes\n"), "{out}");
        Ok(())
    })();
    if result.is_err() {
        lab.dump_logs();
    }
    result
}
