//! API roles end to end: a read-only token made with `baton token create` in the Lab can
//! list pods but cannot apply.

use std::io::Write;
use std::process::Stdio;

use anyhow::{ensure, Context, Result};
use baton_e2e::{bin, Broker, Lab};

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ro-web
spec:
  replicas: 1
  selector:
    matchLabels: {app: ro-web}
  template:
    metadata:
      labels: {app: ro-web}
    spec:
      containers:
      - name: echo
        image: 127.0.0.1:5000/baton/http-echo:1
";

#[test]
fn read_only_token_lists_but_cannot_apply() -> Result<()> {
    let lab = Lab::start("roles", 0, Broker::Embedded)?;
    let out = lab.baton(&["token", "create", "--role", "read-only", "--name", "viewer"])?;
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(token.len() >= 32, "no token printed: {token:?}");

    // The read-only token only, no config file.
    let ro = |args: &[&str], stdin: Option<&str>| -> Result<std::process::Output> {
        let mut cmd = lab.hub.cmd(bin("baton"));
        cmd.args(args)
            .env_remove("BATON_CONFIG")
            .env("HOME", lab.dir.path())
            .env("BATON_SERVER", "http://127.0.0.1:7474")
            .env("BATON_TOKEN", &token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.unwrap_or_default().as_bytes())?;
        Ok(child.wait_with_output()?)
    };

    let got = ro(&["get", "pods"], None)?;
    ensure!(
        got.status.success(),
        "read-only get pods failed: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let denied = ro(&["apply", "-f", "-"], Some(WEB))?;
    let err = String::from_utf8_lossy(&denied.stderr);
    ensure!(!denied.status.success(), "read-only apply succeeded");
    ensure!(
        err.contains("Forbidden") && err.contains("read-only"),
        "unexpected error: {err}"
    );
    let deployments = lab.get_json(&["get", "deployments"])?;
    ensure!(
        baton_e2e::items(&deployments).is_empty(),
        "the refused apply changed the store: {deployments}"
    );

    // The token list shows it, without the secret.
    let list = lab.baton(&["token", "list"])?;
    let list = String::from_utf8_lossy(&list.stdout);
    ensure!(
        list.contains("viewer") && list.contains("read-only") && !list.contains(&token),
        "{list}"
    );
    Ok(())
}
