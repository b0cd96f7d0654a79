//! Namespaces end to end (issue 18), on a real agent with real containers: a manifest
//! naming a namespace that does not exist is refused with the field's path; the same
//! Deployment name in two namespaces runs side by side on one node; `get -A` shows
//! kubectl's NAMESPACE column, and so does `describe node`'s pod list; tokens limited to
//! one namespace are refused (403) in the other and on cluster-scoped writes, and may watch
//! their own (`get -w -n`); a token for two namespaces reads both, not a third; a pod reads its own namespace's ConfigMaps only;
//! deleting a namespace takes its pods off the node and leaves the other namespace's
//! running, untouched.

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::{bin, container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn web(registry: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: echo
        image: {registry}/baton/http-echo:1
"
    )
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn namespaces_keep_teams_apart() -> Result<()> {
    let lab = Lab::start("ns", 1, Broker::Embedded)?;
    let r = scenario(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// The one Running pod of namespace `ns`: (name, uid, node).
fn running_pod(lab: &Lab, ns: &str) -> Result<(String, String, String)> {
    wait_for(&format!("the pod of {ns} Running"), LONG, || {
        let pods = baton_e2e::items(&lab.get_json(&["get", "pods", "-n", ns])?);
        let [p] = &pods[..] else { return Ok(None) };
        let running = p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok(running.then(|| {
            (
                field(&p["metadata"]["name"]),
                field(&p["metadata"]["uid"]),
                field(&p["spec"]["nodeName"]),
            )
        }))
    })
}

fn scenario(lab: &Lab) -> Result<()> {
    let registry = lab.registry();
    let deployment = web(&registry);

    // A namespace that does not exist: refused, the path named, nothing stored.
    let refused = lab.baton_raw(&["apply", "-f", "-", "-n", "team-a"], Some(&deployment))?;
    let err = text(&refused.stderr);
    ensure!(
        !refused.status.success()
            && err.contains("metadata.namespace")
            && err.contains("namespace \"team-a\" not found"),
        "{err}"
    );
    // The namespace of the manifest against another given with -n: kubectl's refusal.
    lab.apply(&namespace("team-a"))?;
    let own = deployment.replace("  name: web\n", "  name: web\n  namespace: team-a\n");
    let refused = lab.baton_raw(&["apply", "-f", "-", "-n", "default"], Some(&own))?;
    ensure!(
        !refused.status.success()
            && text(&refused.stderr).contains("does not match the namespace \"default\""),
        "{}",
        text(&refused.stderr)
    );

    // The same name in two namespaces, one by -n, one by its own metadata.namespace, and
    // a Namespace applied in the same manifest as its objects.
    let out = lab.baton_raw(&["apply", "-f", "-", "-n", "team-a"], Some(&deployment))?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("deployment.apps/web created"),
        "{out:?}"
    );
    let team_b = own.replace("team-a", "team-b");
    lab.apply(&format!("{}---\n{team_b}", namespace("team-b")))?;
    let (a_name, a_uid, a_node) = running_pod(lab, "team-a")?;
    let (b_name, b_uid, b_node) = running_pod(lab, "team-b")?;
    ensure!(a_node == b_node, "one agent: {a_node} vs {b_node}");
    ensure!(a_uid != b_uid);
    ensure!(
        a_name.starts_with("web-") && b_name.starts_with("web-"),
        "{a_name} {b_name}"
    );
    let a_pids = container_pids(&a_node, &a_uid, "echo");
    let b_pids = container_pids(&b_node, &b_uid, "echo");
    ensure!(
        !a_pids.is_empty() && !b_pids.is_empty(),
        "both containers run"
    );
    // The namespace is not part of the pod's hostname.
    let environ = std::fs::read(format!("/proc/{}/environ", a_pids[0]))?;
    let environ = text(&environ).replace('\0', "\n");
    ensure!(
        environ.lines().any(|l| l == format!("HOSTNAME={a_name}")),
        "{environ}"
    );
    // Each is its namespace's only one; default has none.
    ensure!(baton_e2e::items(&lab.get_json(&["get", "deployments"])?).is_empty());
    // describe: kubectl's Namespace line after Name.
    let described = text(
        &lab.baton(&["describe", "deployment", "web", "-n", "team-b"])?
            .stdout,
    );
    ensure!(
        described.starts_with("Name:           web\nNamespace:      team-b\n"),
        "{described}"
    );
    let one = lab.get_json(&["get", "deployment", "web", "-n", "team-b"])?;
    ensure!(one["metadata"]["namespace"] == "team-b", "{one}");

    // `get -A`: NAMESPACE first, both rows.
    let table = text(&lab.baton(&["get", "pods", "-A"])?.stdout);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(header.first() == Some(&"NAMESPACE"), "{table}");
    for (ns, name) in [("team-a", &a_name), ("team-b", &b_name)] {
        ensure!(
            table
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([ns, name.as_str()])),
            "{ns}/{name} in {table}"
        );
    }
    // describe node: its pods with kubectl's Namespace column first.
    let node = text(&lab.baton(&["describe", "node", &a_node])?.stdout);
    for (ns, name) in [("team-a", &a_name), ("team-b", &b_name)] {
        ensure!(
            node.lines()
                .any(|l| l.split_whitespace().take(2).eq([ns, name.as_str()])),
            "{ns}/{name} in {node}"
        );
    }
    let namespaces = text(&lab.baton(&["get", "ns"])?.stdout);
    for ns in ["default", "team-a", "team-b"] {
        ensure!(
            namespaces.lines().any(|l| l.starts_with(&format!("{ns} "))),
            "{namespaces}"
        );
    }
    // Events carry their namespace: team-b's list has only its own.
    let events = text(&lab.baton(&["get", "events", "-n", "team-b"])?.stdout);
    ensure!(events.contains(&format!("pod/{b_name}")), "{events}");
    ensure!(!events.contains(&format!("pod/{a_name}")), "{events}");

    config_stays_in_its_namespace(lab, &registry)?;
    a_watch_stays_in_its_namespace(lab)?;

    // Tokens limited to team-a.
    let token = |role: &str, name: &str| -> Result<String> {
        let out = lab.baton(&[
            "token", "create", "--role", role, "--name", name, "-n", "team-a",
        ])?;
        Ok(text(&out.stdout).trim().to_owned())
    };
    let viewer = token("read-only", "a-viewer")?;
    let admin_a = token("admin", "a-admin")?;
    let token_cmd = |token: &str| {
        let mut cmd = lab.hub.cmd(bin("baton"));
        cmd.env_remove("BATON_CONFIG")
            .env("HOME", lab.dir.path())
            .env("BATON_SERVER", lab.api_url())
            .env("BATON_TOKEN", token);
        cmd
    };
    let as_token = |token: &str, args: &[&str], stdin: Option<&str>| -> Result<Output> {
        let mut cmd = token_cmd(token);
        cmd.args(args);
        if let Some(input) = stdin {
            use std::io::Write;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            if let Some(mut i) = child.stdin.take() {
                i.write_all(input.as_bytes())?;
            }
            return Ok(child.wait_with_output()?);
        }
        Ok(cmd.output()?)
    };
    let forbidden = |out: &Output, what: &str| -> Result<()> {
        let err = text(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("Forbidden"),
            "{what}: expected 403, got {out:?}"
        );
        Ok(())
    };
    let mine = as_token(&viewer, &["get", "pods", "-n", "team-a"], None)?;
    ensure!(
        mine.status.success() && text(&mine.stdout).contains(&a_name),
        "{mine:?}"
    );
    forbidden(
        &as_token(&viewer, &["get", "pods", "-n", "team-b"], None)?,
        "read team-b",
    )?;
    forbidden(&as_token(&viewer, &["get", "nodes"], None)?, "read nodes")?;
    // The namespace's watches are open to it: its pods, and events about them.
    for (what, want) in [
        ("pods", a_name.clone()),
        ("events", format!("pod/{a_name}")),
    ] {
        let mut cmd = token_cmd(&viewer);
        cmd.args(["get", what, "-w", "-n", "team-a"]);
        let (mut child, rows) = baton_e2e::lines::spawn_cmd_lines(cmd)?;
        let seen = baton_e2e::lines::read_until(&rows, LONG, &want, |l| l.contains(&want));
        let _ = child.kill();
        let _ = child.wait();
        let seen = seen.with_context(|| format!("get {what} -w -n team-a as its viewer"))?;
        // team-b's same-named pod (unless its name came out the same) is not shown.
        ensure!(
            a_name == b_name || !seen.iter().any(|l| l.contains(&b_name)),
            "{seen:?}"
        );
    }
    let watch_b = as_token(&viewer, &["get", "pods", "-w", "-n", "team-b"], None)?;
    forbidden(&watch_b, "watch team-b")?;
    // A token for two namespaces reads both, and not a third.
    let out = lab.baton(&[
        "token",
        "create",
        "--role",
        "read-only",
        "--name",
        "ab-viewer",
        "-n",
        "team-a,team-b",
    ])?;
    let ab_viewer = text(&out.stdout).trim().to_owned();
    for ns in ["team-a", "team-b"] {
        let mine = as_token(&ab_viewer, &["get", "pods", "-n", ns], None)?;
        ensure!(mine.status.success(), "{ns}: {mine:?}");
    }
    forbidden(
        &as_token(&ab_viewer, &["get", "pods", "-n", "default"], None)?,
        "a third namespace",
    )?;
    let listed = text(&lab.baton(&["token", "list"])?.stdout);
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with("ab-viewer ") && l.contains("team-a,team-b")),
        "{listed}"
    );
    forbidden(&as_token(&viewer, &["cordon", &a_node], None)?, "cordon")?;
    forbidden(
        &as_token(&viewer, &["delete", "pod", &a_name, "-n", "team-a"], None)?,
        "a read-only delete",
    )?;
    // The namespace's admin: writes there, nowhere else, and nothing cluster-scoped.
    let scaled = as_token(
        &admin_a,
        &[
            "scale",
            "deployment",
            "web",
            "--replicas",
            "1",
            "-n",
            "team-a",
        ],
        None,
    )?;
    ensure!(scaled.status.success(), "{scaled:?}");
    forbidden(
        &as_token(
            &admin_a,
            &[
                "scale",
                "deployment",
                "web",
                "--replicas",
                "2",
                "-n",
                "team-b",
            ],
            None,
        )?,
        "scale in team-b",
    )?;
    forbidden(
        &as_token(&admin_a, &["apply", "-f", "-"], Some(&team_b))?,
        "apply into team-b",
    )?;
    forbidden(
        &as_token(&admin_a, &["apply", "-f", "-"], Some(&namespace("team-c")))?,
        "apply a Namespace",
    )?;
    forbidden(
        &as_token(&admin_a, &["delete", "namespace", "team-a"], None)?,
        "delete its own namespace",
    )?;
    forbidden(&as_token(&admin_a, &["cordon", &a_node], None)?, "cordon")?;
    ensure!(lab.get_json(&["get", "ns", "team-c"]).is_err());

    // Deleting team-a: its pod leaves the node; team-b's keeps running, the same process.
    let out = lab.baton(&["delete", "namespace", "team-a"])?;
    ensure!(
        text(&out.stdout).contains("namespace \"team-a\" deleted"),
        "{out:?}"
    );
    wait_for("team-a's container gone from the node", LONG, || {
        Ok(container_pids(&a_node, &a_uid, "echo")
            .is_empty()
            .then_some(()))
    })?;
    wait_for("namespace team-a gone", LONG, || {
        Ok(lab
            .baton_raw(&["get", "ns", "team-a"], None)?
            .status
            .code()
            .filter(|c| *c != 0)
            .map(|_| ()))
    })?;
    ensure!(baton_e2e::items(&lab.get_json(&["get", "deployments", "-n", "team-a"])?).is_empty());
    ensure!(
        container_pids(&b_node, &b_uid, "echo") == b_pids,
        "team-b's container was not touched"
    );
    let (b_again, b_uid_again, _) = running_pod(lab, "team-b")?;
    ensure!(b_again == b_name && b_uid_again == b_uid);
    Ok(())
}

/// `get -w -n team-a` shows team-a's changes and never team-b's, a deletion included
/// (which carries no object): between team-a's `probe` made and changed, team-b's same-named
/// one comes and goes unseen; then team-a's deletion is shown. `-w -A` shows both, with
/// kubectl's NAMESPACE column first.
fn a_watch_stays_in_its_namespace(lab: &Lab) -> Result<()> {
    let probe = |ns: &str, v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n  namespace: {ns}\ndata:\n  v: {v}\n")
    };
    let is_probe = |l: &str| l.starts_with("probe ");
    let (mut cli, rows) =
        baton_e2e::lines::spawn_lines(lab, &["get", "configmaps", "-w", "-n", "team-a"])?;
    let (mut all_cli, all_rows) =
        baton_e2e::lines::spawn_lines(lab, &["get", "configmaps", "-w", "-A"])?;
    let in_ns = |ns: &'static str| move |l: &str| l.split_whitespace().take(2).eq([ns, "probe"]);
    let result = (|| -> Result<()> {
        lab.apply(&probe("team-a", "x"))?;
        // Listed or added: either way the watches are open from here on.
        let mut seen = baton_e2e::lines::read_until(&rows, LONG, "team-a's probe", is_probe)?;
        let mut all =
            baton_e2e::lines::read_until(&all_rows, LONG, "-A: team-a's probe", in_ns("team-a"))?;
        lab.apply(&probe("team-b", "x"))?;
        lab.baton(&["delete", "configmap", "probe", "-n", "team-b"])?;
        lab.apply(&probe("team-a", "y"))?;
        lab.baton(&["delete", "configmap", "probe", "-n", "team-a"])?;
        seen.extend(baton_e2e::lines::read_until(
            &rows,
            LONG,
            "team-a's probe deleted",
            |l| is_probe(l) && l.contains("Deleted"),
        )?);
        let probes: Vec<_> = seen.iter().filter(|l| is_probe(l)).collect();
        // team-a's three changes; team-b's deletion would have come before the change.
        ensure!(probes.len() == 3, "{seen:?}");
        ensure!(!probes[1].contains("Deleted"), "{seen:?}");
        // -A: kubectl's NAMESPACE column first, and both namespaces' changes.
        all.extend(baton_e2e::lines::read_until(
            &all_rows,
            LONG,
            "-A: team-a's probe deleted",
            |l| in_ns("team-a")(l) && l.contains("Deleted"),
        )?);
        ensure!(all[0].starts_with("NAMESPACE "), "{all:?}");
        ensure!(
            all.iter()
                .any(|l| in_ns("team-b")(l) && l.contains("Deleted")),
            "{all:?}"
        );
        Ok(())
    })();
    for c in [&mut cli, &mut all_cli] {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}

/// A pod reads ConfigMaps (and Secrets, by the same rule) of its own namespace only:
/// default's `cfg` does not satisfy a team-b pod, which waits, saying so, until team-b has
/// its own, and then gets team-b's value.
fn config_stays_in_its_namespace(lab: &Lab, registry: &str) -> Result<()> {
    let cfg = |ns: &str, v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: {ns}\ndata:\n  v: {v}\n"
        )
    };
    lab.apply(&cfg("default", "from-default"))?;
    let reader = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: reader\n  namespace: team-b\nspec:\n  containers:\n  - name: c\n    image: {registry}/baton/busybox:1\n    command: [sleep, '3600']\n    env:\n    - name: V\n      valueFrom: {{configMapKeyRef: {{name: cfg, key: v}}}}\n"
    );
    lab.apply(&reader)?;
    wait_for("reader waiting for team-b's ConfigMap", LONG, || {
        let p = lab.get_json(&["get", "pod", "reader", "-n", "team-b"])?;
        // The reason names the ConfigMap as the pod does, without its namespace.
        let status = p["status"].to_string();
        let waiting = status.contains("CreateContainerConfigError")
            && status.contains(r#"configmap \"cfg\" not found"#);
        Ok(waiting.then_some(()))
    })?;
    lab.apply(&cfg("team-b", "from-team-b"))?;
    let (uid, node) = wait_for("reader Running", LONG, || {
        let p = lab.get_json(&["get", "pod", "reader", "-n", "team-b"])?;
        let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok((p["status"]["phase"] == "Running")
            .then(|| (field(&p["metadata"]["uid"]), field(&p["spec"]["nodeName"]))))
    })?;
    let pid = wait_for("reader's process", LONG, || {
        Ok(container_pids(&node, &uid, "c").first().copied())
    })?;
    let environ = text(&std::fs::read(format!("/proc/{pid}/environ"))?).replace('\0', "\n");
    ensure!(environ.lines().any(|l| l == "V=from-team-b"), "{environ}");
    lab.baton(&["delete", "pod", "reader", "-n", "team-b"])?;
    Ok(())
}
