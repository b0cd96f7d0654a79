//! Enrollment that never gives up and happens exactly once (issue 12, "Bad input"), with
//! real agents and a real coordinator serving enrollment over TLS:
//! - a device with an expired, then a malformed token in its token file keeps retrying,
//!   says why each time, removes nothing, and enrolls within seconds of a valid token
//!   being dropped into the file, which it then removes;
//! - the same token on a second device is refused (under its own name or the first one's)
//!   and the first device stays Ready with the same identity;
//! - a device that lost power after the coordinator accepted its enrollment and before it
//!   saved the answer (its data dir as such a crash leaves it: the persisted key, no
//!   identity) enrolls again with the spent token: one node, same name, same key, same
//!   certificate, no use spent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::{bin, items, until_logged, wait_for, Lab, Proc};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

/// An agent command for lab agent `i` (its namespace, name and pod range) that enrolls:
/// `token` is `--join-token T` or `--join-token-file F`.
fn agent_cmd(lab: &Lab, i: usize, name: &str, data_dir: &Path, token: [&str; 2]) -> Command {
    let a = &lab.agents[i];
    let mut cmd = a.ns.cmd(bin("baton-agent"));
    cmd.args(["--coordinator", &lab.mqtt_url(), "--node-name", name])
        .args(["--heartbeat-secs", "1", "--heartbeat-max-secs", "1"])
        .args(["--pod-cidr", &format!("10.42.{}.0/24", i + 1)])
        .args(["--coordinator-api", &lab.enroll_api()])
        .args(token)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info,libcgroups=error,libcontainer=warn");
    cmd
}

fn node_json(lab: &Lab, name: &str) -> Result<Option<Value>> {
    let nodes = lab.get_json(&["get", "nodes"])?;
    Ok(items(&nodes)
        .into_iter()
        .find(|n| n["metadata"]["name"] == name))
}

fn ready(lab: &Lab, name: &str) -> Result<bool> {
    Ok(node_json(lab, name)?.is_some_and(|n| n["status"]["ready"] == true))
}

fn identity(lab: &Lab, name: &str) -> Result<Value> {
    let out = lab.baton(&["node", "identity", name, "-o", "json"])?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The device's identity file.
fn identity_file(dir: &Path) -> Result<Value> {
    let path = dir.join("identity.json");
    serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)
        .context("identity.json")
}

/// Counts `needle` in agent `i`'s log.
fn count(lab: &Lab, i: usize, needle: &str) -> usize {
    lab.agent_log(i).matches(needle).count()
}

fn wait_logged(lab: &Lab, i: usize, needle: &str, times: usize) -> Result<()> {
    wait_for(
        &format!("{times}x {needle:?} in agent {i}'s log"),
        LONG,
        || Ok((count(lab, i, needle) >= times).then_some(())),
    )
}

#[test]
fn enrollment_retries_until_it_works_and_happens_exactly_once() -> Result<()> {
    let mut lab = Lab::start_bare("enr", 2)?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &mut Lab) -> Result<()> {
    lab.restart_coordinator_enrolling(&[])?;
    let (n0, dir0) = (lab.agents[0].name.clone(), lab.agents[0].data_dir.clone());
    let token_file: PathBuf = lab.dir.path().join("boot/join-token");
    std::fs::create_dir_all(token_file.parent().unwrap())?;

    // 1. An expired token: retried with the coordinator's reason, nothing removed.
    let expired = lab.join_token(&["--ttl", "1s"])?;
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&token_file, format!("{expired}\n"))?;
    let file = token_file.display().to_string();
    let mut cmd = agent_cmd(lab, 0, &n0, &dir0, ["--join-token-file", &file]);
    lab.agents[0].proc = Some(Proc::spawn_appending(
        &n0,
        &mut cmd,
        dir0.with_extension("log"),
    )?);
    wait_logged(lab, 0, "enrollment failed; will retry", 2)?;
    ensure!(
        count(lab, 0, "join token expired") >= 2,
        "{}",
        lab.agent_log(0)
    );
    let key = std::fs::read_to_string(dir0.join("enroll.key"))
        .context("the device key is not persisted before enrolling")?;

    // 2. A malformed token in the file: the same, told as such.
    let before = count(lab, 0, "enrollment failed; will retry");
    std::fs::write(&token_file, "not-a-token\n")?;
    wait_for("the malformed token to be tried", LONG, || {
        Ok((count(lab, 0, "invalid join token") >= 1
            && count(lab, 0, "enrollment failed; will retry") > before)
            .then_some(()))
    })?;
    ensure!(
        lab.agents[0].proc.as_mut().unwrap().is_running(),
        "the agent gave up: {}",
        lab.agent_log(0)
    );
    ensure!(token_file.exists(), "a token file was removed on a failure");
    ensure!(!dir0.join("identity.json").exists());

    // 3. A valid token dropped in: enrolled within seconds (not at the end of a grown
    // backoff step), with the key persisted before, and the file removed.
    let token = lab.join_token(&["--ttl", "1h"])?;
    // Let the backoff grow to a step of 8-16 s first, so that an enrollment within a few
    // seconds is the token file's doing (it is looked at every 2 s during a wait).
    std::thread::sleep(Duration::from_secs(10));
    let tmp = token_file.with_extension("new");
    std::fs::write(&tmp, format!("{token}\n"))?;
    std::fs::rename(&tmp, &token_file)?;
    let dropped = Instant::now();
    wait_for(&format!("{n0} enrolled"), LONG, || {
        Ok(dir0.join("identity.json").exists().then_some(()))
    })?;
    ensure!(
        dropped.elapsed() < Duration::from_secs(5),
        "enrolled {:?} after the new token",
        dropped.elapsed()
    );
    wait_for(&format!("{n0} Ready"), LONG, || {
        Ok(ready(lab, &n0)?.then_some(()))
    })?;
    let id0 = identity_file(&dir0)?;
    ensure!(id0["privateKey"] == key.trim(), "enrolled with another key");
    ensure!(!token_file.exists(), "the spent token file is still there");
    ensure!(!dir0.join("enroll.key").exists(), "enroll.key left behind");
    let first = identity(lab, &n0)?;

    // 4. The same token on a second device, under its own name and under the first
    // device's: refused ("already used"), retried, and the first device unaffected.
    let n1 = lab.agents[1].name.clone();
    for (tag, name) in [("own", n1.as_str()), ("same", n0.as_str())] {
        let dir = lab.dir.path().join(format!("second-{tag}"));
        let (text, clean) = until_logged(
            &mut agent_cmd(lab, 1, name, &dir, ["--join-token", &token]),
            &lab.dir.path().join(format!("second-{tag}.log")),
            &["enrollment failed; will retry", "already used"],
            2,
            LONG,
        )?;
        ensure!(clean, "{tag}: no clean exit on SIGTERM: {text}");
        ensure!(!dir.join("identity.json").exists(), "{tag}: enrolled");
        ensure!(
            dir.join("enroll.key").exists(),
            "{tag}: its key was removed"
        );
        ensure!(ready(lab, &n0)?, "the first device is no longer Ready");
        ensure!(identity(lab, &n0)? == first, "the first identity changed");
    }
    ensure!(node_json(lab, &n1)?.is_none(), "{n1} was registered");

    // 5. Power lost after the coordinator accepted the enrollment, before the device
    // saved it: what such a crash leaves is the persisted key and no identity.
    lab.kill_agent(0);
    let seed = id0["privateKey"].as_str().context("privateKey")?;
    std::fs::write(dir0.join("enroll.key"), format!("{seed}\n"))?;
    for f in [
        "identity.json",
        "node.crt",
        "node.key",
        "ca.crt",
        "seq.json",
    ] {
        let _ = std::fs::remove_file(dir0.join(f));
    }
    let mut cmd = agent_cmd(lab, 0, &n0, &dir0, ["--join-token", &token]);
    lab.agents[0].proc = Some(Proc::spawn_appending(
        &n0,
        &mut cmd,
        dir0.with_extension("log"),
    )?);
    wait_for(&format!("{n0} enrolled again"), LONG, || {
        Ok(dir0.join("identity.json").exists().then_some(()))
    })?;
    let again = identity_file(&dir0)?;
    ensure!(again["privateKey"] == seed, "re-enrolled with another key");
    ensure!(
        again["certificate"] == id0["certificate"],
        "a second certificate was issued"
    );
    wait_for(&format!("{n0} Ready again"), LONG, || {
        Ok(ready(lab, &n0)?.then_some(()))
    })?;
    ensure!(
        identity(lab, &n0)? == first,
        "the coordinator's identity changed"
    );
    let nodes = lab.get_json(&["get", "nodes"])?;
    let names: Vec<Value> = items(&nodes)
        .iter()
        .map(|n| n["metadata"]["name"].clone())
        .collect();
    ensure!(names == [Value::from(n0.as_str())], "nodes: {names:?}");
    // Answered as a retry, the token still used up (not listed as usable).
    let tokens = String::from_utf8(lab.baton(&["token", "list"])?.stdout)?;
    let id = token.split('.').nth(1).context("token id")?;
    ensure!(!tokens.contains(id), "{tokens}");
    let coord = lab.coordinator.as_ref().context("coordinator")?.log();
    ensure!(
        coord.matches("answered again, no use spent").count() == 1,
        "{coord}"
    );
    Ok(())
}
