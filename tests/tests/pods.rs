//! Pods beyond one container, end to end on real processes and containers: a shared
//! network namespace, init containers, restart policies, liveness and readiness probes,
//! OOM kills, and what `baton get pods` / `describe` make of them; plus the coordinator's
//! admission policy and Secrets as the CLI shows them.
//!
//! Each test runs its own [`Lab`] (coordinator, registry, one agent), so they run in
//! parallel. Probe timings are short (period 1 s) so the tests stay quick; every wait is
//! a poll with a generous deadline, never a timed assertion.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{node_of, pod_ip, text};
use baton_e2e::{wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn on_failure<T>(lab: &Lab, r: Result<T>) -> Result<T> {
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn pod(lab: &Lab, name: &str) -> Result<Value> {
    lab.get_json(&["get", "pod", name])
}

/// The `get pods` row of one pod, split into columns (NAME READY STATUS RESTARTS...; a
/// RESTARTS of `3 (42s ago)` spans three).
fn row(lab: &Lab, name: &str) -> Result<Vec<String>> {
    let out = lab.baton(&["get", "pods"])?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .with_context(|| format!("no row for {name} in:\n{table}"))
}

/// Waits until `get pods` shows `name` with `status` in its STATUS column.
fn wait_status(lab: &Lab, name: &str, status: &str) -> Result<Vec<String>> {
    let last = std::cell::RefCell::new(Vec::new());
    wait_for(&format!("{name} to show {status}"), LONG, || {
        let r = row(lab, name)?;
        *last.borrow_mut() = r.clone();
        Ok((r.get(2).map(String::as_str) == Some(status)).then_some(r))
    })
    .with_context(|| {
        format!(
            "last row {:?}; pod {}",
            last.borrow(),
            pod(lab, name).map(|p| p.to_string()).unwrap_or_default()
        )
    })
}

fn describe(lab: &Lab, name: &str) -> Result<String> {
    let out = lab.baton(&["describe", "pod", name])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fetches `http://<pod ip>:<port><path>` from inside the pod's node.
fn fetch(lab: &Lab, p: &Value, port: u16, path: &str) -> Result<String> {
    let node = node_of(p);
    let agent = lab
        .agent_by_node(&node)
        .context("pod's node is a lab agent")?;
    let out = agent
        .ns
        .cmd("curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .arg(format!("http://{}:{port}{path}", pod_ip(p)))
        .output()?;
    ensure!(
        out.status.success(),
        "curl {}:{port}{path}: {}",
        pod_ip(p),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn container_status<'a>(p: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    p["status"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn restart_count(p: &Value, name: &str) -> u64 {
    container_status(p, "containerStatuses", name)
        .and_then(|c| c["restartCount"].as_u64())
        .unwrap_or(0)
}

/// A bare pod of `baton/busybox:1` containers; `spec` and `containers` are YAML lines
/// already indented for their place.
fn busybox_pod(registry: &str, name: &str, spec: &str, containers: &str) -> String {
    let image = format!("{registry}/baton/busybox:1");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n{}  containers:\n{}",
        spec.replace("IMAGE", &image),
        containers.replace("IMAGE", &image)
    )
}

// ----- a relative --data-dir ----------------------------------------------------------

/// `baton-agent --data-dir .baton/agent` once started, then failed every container with
/// "rootfs must be an absolute path" and crash-looped the pods: the agent now pins the path
/// to its start directory, so a restart with the short spelling finds the same identity and
/// state, and new containers run.
#[test]
fn an_agent_started_with_a_relative_data_dir_runs_containers() -> Result<()> {
    let mut lab = Lab::start("pods-rel", 1, Broker::Embedded)?;
    let r = relative_data_dir(&mut lab);
    on_failure(&lab, r)
}

fn relative_data_dir(lab: &mut Lab) -> Result<()> {
    lab.kill_agent(0);
    lab.relative_data_dirs = true;
    lab.start_agent(0)?;
    let yaml = busybox_pod(
        &lab.registry(),
        "rel",
        "",
        "  - name: c\n    image: IMAGE\n    command: [sleep, '3600']\n",
    );
    lab.apply(&yaml)?;
    wait_status(lab, "rel", "Running")?;
    let p = pod(lab, "rel")?;
    anyhow::ensure!(restart_count(&p, "c") == 0, "the container restarted: {p}");
    Ok(())
}

// ----- one network, init containers, restart policies ---------------------------------

#[test]
fn containers_share_a_network_and_init_containers_run_first() -> Result<()> {
    let lab = Lab::start("pods-net", 1, Broker::Embedded)?;
    let r = network_and_init(&lab);
    on_failure(&lab, r)
}

fn network_and_init(lab: &Lab) -> Result<()> {
    let reg = lab.registry();
    // `web` listens on 127.0.0.1 only: `relay` can reach it only through the pod's shared
    // network namespace, and serves what it got on the pod's address.
    let duo = busybox_pod(
        &reg,
        "duo",
        "",
        r#"  - name: web
    image: IMAGE
    command: [sh, -c, "mkdir -p /tmp/w && echo duo-ok > /tmp/w/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/w"]
  - name: relay
    image: IMAGE
    command: [sh, -c, "mkdir -p /tmp/r; while true; do wget -q -O /tmp/r/got.html http://127.0.0.1:8080/index.html; sleep 1; done & exec httpd -f -p 9090 -h /tmp/r"]
"#,
    );
    // The second init container fails unless the first one ran, and finished, before it.
    let ordered = busybox_pod(
        &reg,
        "ordered",
        r#"  volumes:
  - {name: work, emptyDir: {}}
  initContainers:
  - name: first
    image: IMAGE
    command: [sh, -c, "sleep 1; echo one > /work/index.html"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: IMAGE
    command: [sh, -c, "grep -q one /work/index.html && echo two >> /work/index.html"]
    volumeMounts: [{name: work, mountPath: /work}]
"#,
        r#"  - name: web
    image: IMAGE
    command: [httpd, -f, -p, "8080", -h, /work]
    volumeMounts: [{name: work, mountPath: /work, readOnly: true}]
"#,
    );
    let failing_init = |name: &str, policy: &str| {
        busybox_pod(
            &reg,
            name,
            &format!(
                "  restartPolicy: {policy}\n  initContainers:\n  - name: setup\n    image: IMAGE\n    command: [sh, -c, \"exit 3\"]\n"
            ),
            "  - name: main\n    image: IMAGE\n    command: [sleep, \"600\"]\n",
        )
    };
    let once = |name: &str, policy: &str, script: &str| {
        busybox_pod(
            &reg,
            name,
            &format!("  restartPolicy: {policy}\n  volumes: [{{name: m, emptyDir: {{}}}}]\n"),
            &format!(
                "  - name: job\n    image: IMAGE\n    command: [sh, -c, \"{script}\"]\n    volumeMounts: [{{name: m, mountPath: /m}}]\n"
            ),
        )
    };
    let manifest = [
        duo,
        ordered,
        failing_init("initloop", "Always"),
        failing_init("initnever", "Never"),
        once("never-fails", "Never", "exit 2"),
        // Fails on its first run, succeeds on its second: OnFailure restarts it once.
        once(
            "onfailure",
            "OnFailure",
            "if [ -f /m/ran ]; then exit 0; fi; touch /m/ran; exit 1",
        ),
        once("never-ok", "Never", "exit 0"),
    ]
    .join("---\n");
    lab.apply(&manifest)?;

    // Two containers, one pod address, talking over localhost.
    let duo = wait_for("duo to be 2/2 Running", LONG, || {
        let r = row(lab, "duo")?;
        Ok((r[1] == "2/2" && r[2] == "Running").then_some(()))
    })
    .and_then(|()| pod(lab, "duo"))?;
    ensure!(
        pod_ip(&duo).parse::<std::net::IpAddr>().is_ok(),
        "one pod IP: {duo}"
    );
    let got = wait_for(
        "relay to serve what it fetched over localhost",
        LONG,
        || {
            Ok(fetch(lab, &duo, 9090, "/got.html")
                .ok()
                .filter(|s| s.contains("duo-ok")))
        },
    )?;
    ensure!(got.trim() == "duo-ok", "{got:?}");
    ensure!(
        fetch(lab, &duo, 8080, "/index.html").is_err(),
        "web listens on the pod's loopback only"
    );

    // Init containers ran in order, then the main container served their work.
    wait_status(lab, "ordered", "Running")?;
    let ordered = pod(lab, "ordered")?;
    let page = wait_for("ordered to serve", LONG, || {
        Ok(fetch(lab, &ordered, 8080, "/index.html").ok())
    })?;
    ensure!(page == "one\ntwo\n", "init containers' output: {page:?}");
    let inits = ordered["status"]["initContainerStatuses"]
        .as_array()
        .context("initContainerStatuses")?;
    ensure!(
        inits.len() == 2
            && inits
                .iter()
                .all(|c| c["state"]["exited"]["exitCode"] == 0 && c["reason"] == "Completed"),
        "both init containers completed: {inits:?}"
    );

    // A failing init container: Init:Error, then a crash loop under Always; the main
    // container never starts.
    wait_status(lab, "initloop", "Init:CrashLoopBackOff")?;
    let p = pod(lab, "initloop")?;
    ensure!(p["status"]["phase"] == "Pending", "{p}");
    ensure!(
        !p["status"]["containerStatuses"][0]["state"]["running"].is_object(),
        "main container must not run: {p}"
    );
    let init = container_status(&p, "initContainerStatuses", "setup").context("init status")?;
    ensure!(init["restartCount"].as_u64() >= Some(1), "{init}");
    ensure!(init["lastState"]["terminated"]["exitCode"] == 3, "{init}");
    // Under Never the pod fails with Init:Error and the init container is not retried.
    let r = wait_status(lab, "initnever", "Init:Error")?;
    ensure!(r[1] == "0/1" && r[3] == "0", "{r:?}");
    wait_for("initnever to be Failed", LONG, || {
        Ok((pod(lab, "initnever")?["status"]["phase"] == "Failed").then_some(()))
    })?;

    // restartPolicy: Never keeps a failure, OnFailure restarts it until it succeeds.
    let r = wait_status(lab, "never-fails", "Error")?;
    ensure!(r[3] == "0", "never restarted: {r:?}");
    ensure!(pod(lab, "never-fails")?["status"]["phase"] == "Failed");
    wait_for("onfailure to succeed after one restart", LONG, || {
        let p = pod(lab, "onfailure")?;
        Ok((p["status"]["phase"] == "Succeeded").then_some(p))
    })
    .and_then(|p| {
        ensure!(restart_count(&p, "job") == 1, "{p}");
        Ok(())
    })?;
    wait_status(lab, "onfailure", "Completed")?;
    wait_status(lab, "never-ok", "Completed")?;
    ensure!(restart_count(&pod(lab, "never-ok")?, "job") == 0);
    // Stays failed: still no restart a while later.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(restart_count(&pod(lab, "never-fails")?, "job") == 0);
    Ok(())
}

// ----- probes and OOM ------------------------------------------------------------------

/// A directory on the host, mounted into pods as a hostPath volume (the lab's coordinator
/// allows exactly it), so the test can flip a probe's outcome by creating a file.
struct HostDir(tempfile::TempDir);

impl HostDir {
    fn new() -> Result<Self> {
        Ok(Self(
            tempfile::Builder::new()
                .prefix("baton-e2e-pods-")
                .tempdir()?,
        ))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

#[test]
fn probes_restart_containers_and_gate_readiness() -> Result<()> {
    let dir = HostDir::new()?;
    let host = dir.path().to_string_lossy().into_owned();
    let lab = Lab::start_with(
        "pods-probe",
        1,
        Broker::Embedded,
        &["--allow-host-path", &host],
    )?;
    let r = probes(&lab, &host, dir.path());
    on_failure(&lab, r)
}

fn probes(lab: &Lab, host: &str, dir: &Path) -> Result<()> {
    let reg = lab.registry();
    let probe = |kind: &str| -> String {
        format!(
            "    livenessProbe:\n{kind}      periodSeconds: 1\n      failureThreshold: 2\n      initialDelaySeconds: 1\n"
        )
    };
    let liveness = |name: &str, command: &str, kind: &str| {
        busybox_pod(
            &reg,
            name,
            "",
            &format!(
                "  - name: c\n    image: IMAGE\n    command: [sh, -c, \"{command}\"]\n    ports: [{{name: http, containerPort: 8080}}]\n{}",
                probe(kind)
            ),
        )
    };
    let manifest = [
        // exec: healthy while the file exists, which it does for 3 s after each start.
        liveness(
            "live-exec",
            "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 600",
            "      exec: {command: [cat, /tmp/healthy]}\n",
        ),
        // httpGet on a named port: the server answers 404 for /healthz.
        liveness(
            "live-http",
            "mkdir -p /tmp/w; exec httpd -f -p 8080 -h /tmp/w",
            "      httpGet: {path: /healthz, port: http}\n",
        ),
        // tcpSocket on a port nothing listens on.
        liveness(
            "live-tcp",
            "exec sleep 600",
            "      tcpSocket: {port: 8081}\n",
        ),
        // Readiness from a file on the host the test creates when it has seen 0/1.
        busybox_pod(
            &reg,
            "gated",
            &format!("  volumes: [{{name: flags, hostPath: {{path: {host}}}}}]\n"),
            "  - name: c\n    image: IMAGE\n    command: [sleep, \"600\"]\n    volumeMounts: [{name: flags, mountPath: /flags, readOnly: true}]\n    readinessProbe:\n      exec: {command: [cat, /flags/ready]}\n      periodSeconds: 1\n",
        ),
        // 100 MB of dd buffer against a 32 Mi limit (dd is the container's process, so the OOM
        // kill ends the container), restarted by restartPolicy Always.
        busybox_pod(
            &reg,
            "hog",
            "",
            "  - name: hog\n    image: IMAGE\n    command: [sh, -c, \"sleep 1; exec dd if=/dev/zero of=/dev/null bs=100M count=1\"]\n    resources:\n      limits: {memory: 32Mi}\n",
        ),
    ]
    .join("---\n");
    lab.apply(&manifest)?;

    // Readiness gates READY while the pod runs.
    let r = wait_status(lab, "gated", "Running")?;
    ensure!(r[1] == "0/1", "running but not ready: {r:?}");
    let p = pod(lab, "gated")?;
    ensure!(p["status"]["containerStatuses"][0]["ready"] == false, "{p}");
    std::fs::write(dir.join("ready"), "yes")?;
    wait_for("gated to become ready", LONG, || {
        let r = row(lab, "gated")?;
        Ok((r[1] == "1/1").then_some(()))
    })?;
    std::fs::remove_file(dir.join("ready"))?;
    wait_for("gated to become unready again", LONG, || {
        let r = row(lab, "gated")?;
        Ok((r[1] == "0/1" && r[2] == "Running").then_some(()))
    })?;
    ensure!(
        restart_count(&pod(lab, "gated")?, "c") == 0,
        "readiness never restarts"
    );

    // Each failing liveness probe restarts its container; get and describe say so.
    for name in ["live-exec", "live-http", "live-tcp"] {
        let p = wait_for(
            &format!("{name} to be restarted by its liveness probe"),
            LONG,
            || {
                let p = pod(lab, name)?;
                Ok((restart_count(&p, "c") >= 1
                    && p["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object())
                .then_some(p))
            },
        )?;
        let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
        ensure!(!text(&last["reason"]).is_empty(), "{name}: {last}");
        let r = wait_for(&format!("{name}'s RESTARTS to show when"), LONG, || {
            let r = row(lab, name)?;
            Ok((r.len() >= 6 && r[4].starts_with('(') && r[5] == "ago)").then_some(r))
        })?;
        ensure!(r[3].parse::<u64>()? >= 1, "{name}: {r:?}");
        let d = describe(lab, name)?;
        ensure!(
            d.contains("    Last State:     Terminated\n"),
            "{name}:\n{d}"
        );
        ensure!(
            d.contains(&format!("      Reason:       {}\n", text(&last["reason"]))),
            "{name}:\n{d}"
        );
        ensure!(d.contains("    Liveness:       "), "{name}:\n{d}");
    }
    let d = describe(lab, "live-http")?;
    ensure!(
        d.contains("    Liveness:       http-get http://:8080/healthz delay=1s timeout=1s period=1s #success=1 #failure=2\n"),
        "{d}"
    );

    // An OOM kill shows as the last state, and the container is restarted.
    let p = wait_for("hog to be restarted after an OOM kill", LONG, || {
        let p = pod(lab, "hog")?;
        Ok((restart_count(&p, "hog") >= 1).then_some(p))
    })?;
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    ensure!(last["reason"] == "OOMKilled", "{p}");
    let d = describe(lab, "hog")?;
    ensure!(
        d.contains("    Last State:     Terminated\n      Reason:       OOMKilled\n"),
        "{d}"
    );
    Ok(())
}

// ----- policy and secrets through the CLI ------------------------------------------------

#[test]
fn the_policy_refuses_and_secrets_never_show_their_values() -> Result<()> {
    let lab = Lab::start("pods-pol", 1, Broker::Embedded)?;
    let r = policy_and_secrets(&lab);
    on_failure(&lab, r)
}

fn policy_and_secrets(lab: &Lab) -> Result<()> {
    let reg = lab.registry();
    for (spec, container, flag) in [
        (
            "",
            "    securityContext: {privileged: true}\n",
            "--allow-privileged",
        ),
        ("  hostNetwork: true\n", "", "--allow-host-network"),
        (
            "  volumes: [{name: h, hostPath: {path: /etc}}]\n",
            "",
            "--allow-host-path",
        ),
        (
            "",
            "    securityContext: {capabilities: {add: [SYS_ADMIN]}}\n",
            "--allow-capability SYS_ADMIN",
        ),
        (
            "  securityContext: {seccompProfile: {type: Unconfined}}\n",
            "",
            "--allow-privileged",
        ),
    ] {
        let yaml = busybox_pod(
            &reg,
            "refused",
            spec,
            &format!("  - name: c\n    image: IMAGE\n    command: [sleep, \"1\"]\n{container}"),
        );
        let out = lab.baton_raw(&["apply", "-f", "-"], Some(&yaml))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{flag}: applied anyway");
        ensure!(
            err.contains(flag) && err.contains("policy"),
            "{flag}: {err}"
        );
    }
    ensure!(
        lab.pods()?.is_empty(),
        "nothing refused was stored or scheduled"
    );

    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ntype: Opaque\ndata: {user: YWRtaW4=}\nstringData: {password: hunter2-e2e}\n";
    let out = lab.apply(secret)?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("secret/db created"),
        "{out:?}"
    );
    let table = String::from_utf8_lossy(&lab.baton(&["get", "secrets"])?.stdout).into_owned();
    ensure!(
        table.lines().nth(1).is_some_and(|l| l
            .split_whitespace()
            .collect::<Vec<_>>()
            .starts_with(&["db", "Opaque", "2"])),
        "{table}"
    );
    let described =
        String::from_utf8_lossy(&lab.baton(&["describe", "secret", "db"])?.stdout).into_owned();
    ensure!(
        described.contains("password:  11 bytes") && described.contains("user:      5 bytes"),
        "{described}"
    );
    let json = String::from_utf8_lossy(&lab.baton(&["get", "secret", "db", "-o", "json"])?.stdout)
        .into_owned();
    for shown in [&table, &described, &json] {
        ensure!(
            !shown.contains("hunter2") && !shown.contains("aHVudGVy") && !shown.contains("YWRtaW4"),
            "a value leaked: {shown}"
        );
    }
    Ok(())
}
