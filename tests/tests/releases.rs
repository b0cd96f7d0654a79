//! Agent release artifacts end to end (issue 13), with a real coordinator and the real CLI:
//! a release key made and a real agent binary signed offline, imports refused without a
//! configured key, then accepted (a directory, then the file again: idempotent), listed,
//! downloaded with a read-only token and resumed from a range with the same bytes;
//! a tampered binary, a signature by another key and an unsigned binary refused and never
//! listed; an enrolling device pins the coordinator's release key; delete.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::{bin, wait_for, Lab, Proc};
use serde_json::Value;
use sha2::{Digest, Sha256};

const NAME: &str = "baton-agent-0.2.1-x86_64-unknown-linux-gnu";

#[test]
fn releases_are_signed_offline_imported_served_by_range_and_pinned() -> Result<()> {
    let mut lab = Lab::start_bare("rel", 1)?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// `baton ARGS` in the hub as admin; (success, stdout, stderr).
fn baton(lab: &Lab, args: &[&str]) -> Result<(bool, String, String)> {
    let out = lab.baton_raw(args, None)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn ok(lab: &Lab, args: &[&str]) -> Result<String> {
    let (success, out, err) = baton(lab, args)?;
    ensure!(success, "baton {args:?} failed: {err}{out}");
    Ok(out)
}

fn refused(lab: &Lab, args: &[&str], needle: &str) -> Result<()> {
    let (success, out, err) = baton(lab, args)?;
    ensure!(!success, "baton {args:?} succeeded: {out}");
    ensure!(
        err.contains(needle),
        "baton {args:?}: {needle:?} not in: {err}"
    );
    Ok(())
}

fn list(lab: &Lab) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&ok(lab, &["release", "list", "-o", "json"])?)?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

fn sha(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(fs::read(path)?)))
}

/// `curl` in the hub against the coordinator, with `token`; returns the HTTP status.
fn curl(lab: &Lab, token: &str, path: &str, extra: &[&str], out: &Path) -> Result<String> {
    let url = format!("{}{path}", lab.api_url());
    let o = lab
        .hub
        .cmd("curl")
        .args(["-sS", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(&url)
        .output()?;
    ensure!(
        o.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn scenario(lab: &mut Lab) -> Result<()> {
    let work = lab.dir.path().join("releases");
    let (keys, other_keys, good, bad) = (
        work.join("keys"),
        work.join("other-keys"),
        work.join("good"),
        work.join("bad"),
    );
    for d in [&good, &bad] {
        fs::create_dir_all(d)?;
    }

    // 1. Offline: a key pair and a signed copy of a real agent binary. No server yet.
    let key_dir = keys.display().to_string();
    ok(lab, &["release", "keygen", "--out", &key_dir])?;
    let key = keys.join("release.key");
    let public = fs::read_to_string(keys.join("release.pub"))?;
    ensure!(
        fs::metadata(&key)?.permissions().mode() & 0o777 == 0o600,
        "release.key is not 0600"
    );
    refused(lab, &["release", "keygen", "--out", &key_dir], "exists")?;
    let binary = good.join(NAME);
    fs::copy(bin("baton-agent"), &binary)?;
    let key_arg = key.display().to_string();
    ok(
        lab,
        &[
            "release",
            "sign",
            "--key",
            &key_arg,
            &binary.display().to_string(),
        ],
    )?;
    let meta: Value =
        serde_json::from_slice(&fs::read(good.join(format!("{NAME}.release.json")))?)?;
    ensure!(
        meta["version"] == "0.2.1" && meta["target"] == "x86_64-unknown-linux-gnu",
        "{meta}"
    );
    let odd = work.join("agent.bin");
    fs::copy(&binary, &odd)?;
    refused(
        lab,
        &[
            "release",
            "sign",
            "--key",
            &key_arg,
            &odd.display().to_string(),
        ],
        "--version and --target",
    )?;

    // 2. A coordinator without a release key refuses every import.
    lab.start_coordinator()?;
    let good_arg = good.display().to_string();
    refused(
        lab,
        &["release", "import", &good_arg],
        "no release key configured",
    )?;
    ensure!(list(lab)?.is_empty());

    // 3. With the key (and enrollment served): the directory imports, the file again is
    // the same release.
    let pub_file = keys.join("release.pub").display().to_string();
    lab.restart_coordinator_enrolling(&["--release-public-key-file", &pub_file])?;
    let out = ok(lab, &["release", "import", &good_arg])?;
    let digest = format!("sha256:{}", sha(&binary)?);
    ensure!(
        out.contains("release/0.2.1") && out.contains(&digest),
        "{out}"
    );
    ok(lab, &["release", "import", &binary.display().to_string()])?;
    let items = list(lab)?;
    ensure!(items.len() == 1, "{items:?}");
    let size = fs::metadata(&binary)?.len();
    ensure!(
        items[0]["digest"] == digest.as_str()
            && items[0]["size"] == size
            && items[0]["protocol"] == baton_proto::PROTO_VERSION,
        "{items:?}"
    );
    let table = ok(lab, &["release", "list"])?;
    for col in [
        "VERSION", "TARGET", "PROTOCOL", "SIZE", "DIGEST", "AGE", "0.2.1",
    ] {
        ensure!(table.contains(col), "{col} not in {table}");
    }

    // 4. Download with a read-only token: cut short, resumed from where it stopped.
    let token = String::from_utf8(
        lab.baton(&["token", "create", "--role", "read-only", "--name", "dl"])?
            .stdout,
    )?
    .trim()
    .to_owned();
    let path = format!("/api/v1/releases/{digest}/binary");
    let got = work.join("download");
    let half = size / 2;
    let first = curl(
        lab,
        &token,
        &path,
        &["-r", &format!("0-{}", half - 1)],
        &got,
    )?;
    ensure!(first == "206", "first part: {first}");
    ensure!(fs::metadata(&got)?.len() == half);
    // curl -C - asks for `Range: bytes=<what it has>-` and appends.
    let rest = curl(lab, &token, &path, &["-C", "-"], &got)?;
    ensure!(rest == "206", "resumed part: {rest}");
    ensure!(sha(&got)? == sha(&binary)?, "the resumed download differs");
    let whole = work.join("whole");
    ensure!(curl(lab, &token, &path, &[], &whole)? == "200");
    ensure!(sha(&whole)? == sha(&binary)?);
    let beyond = curl(
        lab,
        &token,
        &path,
        &["-H", &format!("Range: bytes={size}-")],
        &work.join("nothing"),
    )?;
    ensure!(beyond == "416", "a range past the end: {beyond}");
    // The read-only token cannot import or delete.
    let denied = curl(
        lab,
        &token,
        &format!("/api/v1/releases/{digest}"),
        &["-X", "DELETE"],
        &work.join("denied"),
    )?;
    ensure!(denied == "403", "read-only delete: {denied}");

    // 5. Refusals, none of which is listed: a tampered binary (same name, same signed
    // metadata), a release signed by another key, an unsigned binary.
    let tampered = bad.join(NAME);
    let mut bytes = fs::read(&binary)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&tampered, &bytes)?;
    fs::copy(
        good.join(format!("{NAME}.release.json")),
        bad.join(format!("{NAME}.release.json")),
    )?;
    // Refused while the good copy is imported (an import again checks the bytes sent)
    // and after it is deleted.
    let tampered_arg = tampered.display().to_string();
    refused(lab, &["release", "import", &tampered_arg], "sha256")?;
    ok(lab, &["release", "delete", "0.2.1"])?;
    refused(lab, &["release", "import", &tampered_arg], "sha256")?;
    ok(
        lab,
        &[
            "release",
            "keygen",
            "--out",
            &other_keys.display().to_string(),
        ],
    )?;
    let other = bad.join("baton-agent-0.2.2-x86_64-unknown-linux-gnu");
    fs::copy(&binary, &other)?;
    let other_key = other_keys.join("release.key").display().to_string();
    ok(
        lab,
        &[
            "release",
            "sign",
            "--key",
            &other_key,
            &other.display().to_string(),
        ],
    )?;
    refused(
        lab,
        &["release", "import", &other.display().to_string()],
        "signature is not valid",
    )?;
    let unsigned = work.join(NAME);
    fs::copy(&binary, &unsigned)?;
    refused(
        lab,
        &["release", "import", &unsigned.display().to_string()],
        "not signed",
    )?;
    ensure!(list(lab)?.is_empty(), "a refused release is listed");
    ensure!(
        curl(lab, &token, &path, &[], &work.join("gone"))? == "404",
        "a deleted release is still served"
    );
    let files = fs::read_dir(lab.dir.path().join("coordinator/releases/sha256"))?.count();
    ensure!(
        files == 0,
        "{files} release files left after refusals and delete"
    );

    // 6. Imported again, then deleted by digest.
    ok(lab, &["release", "import", &good_arg])?;
    ok(lab, &["release", "delete", &digest])?;
    ensure!(list(lab)?.is_empty());

    // 7. An enrolling device pins the coordinator's release key.
    let join = lab.join_token(&["--ttl", "1h"])?;
    let (name, dir) = (lab.agents[0].name.clone(), lab.agents[0].data_dir.clone());
    let mut cmd = enrolling_agent(lab, &name, &dir, &join);
    lab.agents[0].proc = Some(Proc::spawn_appending(
        &name,
        &mut cmd,
        dir.with_extension("log"),
    )?);
    wait_for(&format!("{name} enrolled"), Duration::from_secs(60), || {
        Ok(dir.join("identity.json").exists().then_some(()))
    })?;
    let pinned = fs::read_to_string(dir.join("release.pub")).context("release.pub")?;
    ensure!(
        pinned.trim() == public.trim(),
        "pinned {pinned:?}, the coordinator's is {public:?}"
    );
    Ok(())
}

/// Lab agent 0, enrolling with `token` (as `tests/enrollment.rs` starts its devices).
fn enrolling_agent(lab: &Lab, name: &str, data_dir: &Path, token: &str) -> Command {
    let a = &lab.agents[0];
    let mut cmd = a.ns.cmd(bin("baton-agent"));
    cmd.args(["--coordinator", &lab.mqtt_url(), "--node-name", name])
        .args(["--pod-cidr", "10.42.1.0/24"])
        .args(["--coordinator-api", &lab.enroll_api()])
        .args(["--join-token", token])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info,libcgroups=error,libcontainer=warn");
    cmd
}
