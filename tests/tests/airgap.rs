//! Air-gapped image delivery on real processes: images imported into the coordinator
//! (`baton image import`) and pulled by agents in their own network namespaces with the
//! registry stopped, and images preloaded from a directory with no registry and no mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::fleet::{
    exactly, is_running, node_of, pod_info, pod_name, uid, wait_cleaned_up, EchoDeployment,
};
use baton_e2e::{bin, items, repo_root, sh, wait_for, Broker, Lab, Proc};

const LONG: Duration = Duration::from_secs(120);

/// The http-echo OCI layout the lab built (tags 1 and 2, linux/amd64 + linux/arm64).
fn echo_layout(lab: &Lab) -> PathBuf {
    lab.dir.path().join("images/baton/http-echo")
}

/// `tar -C layout -cf out .`: an OCI archive as `skopeo copy oci-archive:` writes one.
fn tar_layout(layout: &Path, out: &Path) -> Result<()> {
    sh(Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(out)
        .arg("."))
    .map(|_| ())
}

fn stop_registry(lab: &Lab) -> Result<()> {
    sh(lab
        .hub
        .cmd(repo_root().join("images/registry.sh"))
        .args(["stop", &lab.registry()])
        .arg(lab.dir.path().join("registry")))?;
    // Nothing answers on the registry's port any more.
    let out = lab
        .hub
        .cmd("curl")
        .args(["-sS", "-m", "3", &format!("http://{}/v2/", lab.registry())])
        .output()?;
    ensure!(!out.status.success(), "the registry still answers");
    Ok(())
}

/// Stops agent `i` and starts it again as the harness does, plus `extra` flags.
fn restart_agent_with(lab: &mut Lab, i: usize, extra: &[&str]) -> Result<()> {
    if let Some(mut p) = lab.agents[i].proc.take() {
        p.stop(Duration::from_secs(40));
    }
    let (mqtt, registry) = (lab.mqtt_url(), lab.registry());
    let a = &mut lab.agents[i];
    let mut cmd = a.ns.cmd(bin("baton-agent"));
    cmd.args(["--coordinator", &mqtt, "--node-name", &a.name])
        .args(["--insecure-registry", &registry, "--heartbeat-secs", "1"])
        .args(baton_e2e::DEV_AGENT_FLAGS)
        .args(["--pod-cidr", &format!("10.42.{}.0/24", i + 1)])
        .arg("--data-dir")
        .arg(&a.data_dir)
        .args(extra)
        .env(
            "RUST_LOG",
            "info,libcgroups=error,libcontainer=warn,rumqttd=warn",
        );
    let log = a.data_dir.with_extension("log");
    a.proc = Some(Proc::spawn_appending(&a.name.clone(), &mut cmd, log)?);
    Ok(())
}

/// Waits until agent `i`'s node is Ready after a restart: Ready, then Ready again a few
/// heartbeats later (a Ready left over from before the restart may not have flipped yet).
fn wait_ready(lab: &Lab, i: usize) -> Result<()> {
    let name = lab.agents[i].name.clone();
    let ready = || -> Result<Option<()>> {
        let nodes = lab.get_json(&["get", "nodes"])?;
        Ok(items(&nodes)
            .iter()
            .any(|n| n["metadata"]["name"] == name.as_str() && n["status"]["ready"] == true)
            .then_some(()))
    };
    wait_for(&format!("{name} to be Ready"), LONG, ready)?;
    std::thread::sleep(Duration::from_secs(3));
    wait_for(&format!("{name} to be Ready"), LONG, ready)
}

/// Seconds of the day of a text log line's RFC 3339 timestamp.
fn log_secs(line: &str) -> Option<f64> {
    // Without the terminal colour codes the agent's text logs carry.
    let mut plain = String::new();
    let mut escape = false;
    for c in line.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (false, c) => plain.push(c),
            (true, _) => {}
        }
    }
    let t = plain.split_whitespace().next()?.split_once('T')?.1;
    let t = t.trim_end_matches('Z');
    let mut parts = t.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// The duration of agent `i`'s last pull of http-echo, from its log ("pulling image" to
/// "image ready").
fn last_pull_secs(lab: &Lab, i: usize) -> Option<f64> {
    let log = lab.agent_log(i);
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains("pulling image") && l.contains("http-echo"))?;
    let end = lines[start..]
        .iter()
        .find(|l| l.contains("image ready") && l.contains("http-echo"))?;
    Some(log_secs(end)? - log_secs(lines[start])?)
}

fn deploy_and_check(lab: &Lab, replicas: usize) -> Result<Vec<serde_json::Value>> {
    lab.apply(&EchoDeployment::new(replicas).yaml(&lab.registry()))?;
    let pods = wait_for("running web pods", LONG, || {
        exactly(lab, "web", replicas, is_running)
    })?;
    for p in &pods {
        let body = pod_info(lab, p, Duration::from_secs(5))?;
        ensure!(
            body.contains(&format!("hostname={}", pod_name(p))),
            "pod {} answered {body:?}",
            pod_name(p)
        );
    }
    Ok(pods)
}

fn undeploy(lab: &Lab, pods: &[serde_json::Value]) -> Result<()> {
    lab.baton(&["delete", "deployment", "web"])?;
    for p in pods {
        wait_cleaned_up(lab, &node_of(p), &uid(p), LONG)?;
    }
    wait_for("no pods", LONG, || Ok(lab.pods()?.is_empty().then_some(())))
}

fn blob_files(lab: &Lab) -> Result<Vec<String>> {
    let dir = lab.dir.path().join("coordinator/registry/blobs/sha256");
    let mut v: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

fn image_names(lab: &Lab) -> Result<Vec<String>> {
    let out = lab.baton(&["image", "list", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(items(&v)
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect())
}

/// The archive `good` with one byte flipped inside its largest blob's content.
fn corrupt_copy(good: &Path, layout: &Path, out: &Path) -> Result<()> {
    let blobs = layout.join("blobs/sha256");
    let largest = fs::read_dir(&blobs)?
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .context("no blobs")?
        .path();
    let blob = fs::read(&largest)?;
    let mut tar = fs::read(good)?;
    let at = tar
        .windows(256)
        .position(|w| w == &blob[..256])
        .context("blob not found in the archive")?;
    tar[at + blob.len() / 2] ^= 0x40;
    fs::write(out, tar)?;
    Ok(())
}

fn airgapped(lab: &mut Lab) -> Result<()> {
    let archive = lab.dir.path().join("http-echo.tar");
    tar_layout(&echo_layout(lab), &archive)?;
    let size = fs::metadata(&archive)?.len();

    // A corrupt or truncated archive is refused with a clear error and stores nothing.
    let corrupt = lab.dir.path().join("corrupt.tar");
    corrupt_copy(&archive, &echo_layout(lab), &corrupt)?;
    let truncated = lab.dir.path().join("truncated.tar");
    fs::write(&truncated, &fs::read(&archive)?[..(size / 2) as usize])?;
    for (file, word) in [(&corrupt, "corrupt"), (&truncated, "truncated")] {
        let out = lab.baton_raw(
            &[
                "image",
                "import",
                &file.to_string_lossy(),
                "--name",
                "baton/http-echo",
            ],
            None,
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{word} archive accepted");
        ensure!(
            err.contains(word),
            "unclear error for a {word} archive: {err}"
        );
        ensure!(
            image_names(lab)?.is_empty(),
            "a {word} archive left an image"
        );
        ensure!(blob_files(lab)?.is_empty(), "a {word} archive left blobs");
    }

    // Import: both tags of the archive.
    let started = Instant::now();
    let out = lab.baton(&[
        "image",
        "import",
        &archive.to_string_lossy(),
        "--name",
        "baton/http-echo",
    ])?;
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("image/baton/http-echo:1 imported")
            && stdout.contains("image/baton/http-echo:2 imported"),
        "import output: {stdout}"
    );
    // The index's every platform: images/build.sh makes amd64, arm64 and arm/v7.
    ensure!(
        stdout.contains("linux/amd64,linux/arm/v7,linux/arm64/v8"),
        "platforms: {stdout}"
    );
    eprintln!(
        "FIGURE import: {size} bytes in {secs:.3} s wall ({:.1} MB/s); CLI said: {}",
        size as f64 / 1e6 / secs,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let table = String::from_utf8_lossy(&lab.baton(&["image", "list"])?.stdout).into_owned();
    ensure!(
        table.contains("NAME") && table.contains("baton/http-echo:1"),
        "image list:\n{table}"
    );

    // Cold pulls from the registry, for comparison, then from the coordinator.
    let pods = deploy_and_check(lab, 2)?;
    let from_registry: Vec<Option<f64>> = (0..2).map(|i| last_pull_secs(lab, i)).collect();
    undeploy(lab, &pods)?;

    let token = String::from_utf8_lossy(
        &lab.baton(&["token", "create", "--role", "read-only", "--name", "mirror"])?
            .stdout,
    )
    .trim()
    .to_owned();
    let token_file = lab.dir.path().join("mirror.token");
    fs::write(&token_file, format!("{token}\n"))?;
    stop_registry(lab)?;
    let mirror = format!("http://{}:7474", lab.hub_ip());
    for i in 0..2 {
        if let Some(mut p) = lab.agents[i].proc.take() {
            p.stop(Duration::from_secs(40));
        }
        // A cold image store: everything must come from the coordinator.
        fs::remove_dir_all(lab.agents[i].data_dir.join("images"))?;
        restart_agent_with(
            lab,
            i,
            &[
                "--registry-mirror",
                &mirror,
                "--registry-mirror-token-file",
                &token_file.to_string_lossy(),
            ],
        )?;
    }
    for i in 0..2 {
        wait_ready(lab, i)?;
    }
    let pods = deploy_and_check(lab, 2)?;
    let from_mirror: Vec<Option<f64>> = (0..2).map(|i| last_pull_secs(lab, i)).collect();
    for p in &pods {
        let i = lab.agent_index(&node_of(p)).context("node of a pod")?;
        ensure!(
            lab.agent_log(i).contains("pulled from the registry mirror"),
            "agent {i} did not pull from the coordinator"
        );
    }
    eprintln!(
        "FIGURE cold pull of {}/baton/http-echo:1 (agent log, pulling->ready, per agent): docker-registry {from_registry:?} s, coordinator {from_mirror:?} s",
        lab.registry()
    );
    undeploy(lab, &pods)?;

    // Deleting one tag keeps the blobs the other still needs.
    let before = blob_files(lab)?;
    lab.baton(&["image", "delete", "baton/http-echo:2"])?;
    ensure!(
        image_names(lab)? == ["baton/http-echo:1"],
        "image list after delete"
    );
    let after = blob_files(lab)?;
    ensure!(
        !after.is_empty() && after.len() < before.len(),
        "blobs {} -> {}",
        before.len(),
        after.len()
    );
    Ok(())
}

/// Coordinator on the hub's bridge address (plain HTTP on a private test bridge), so that
/// agents in their own namespaces reach its registry.
#[test]
fn airgapped_deploy_pulls_from_the_coordinator() -> Result<()> {
    let mut lab = Lab::start_with(
        "ag",
        2,
        Broker::Embedded,
        &["--listen", "0.0.0.0:7474", "--insecure-allow-remote"],
    )?;
    let result = airgapped(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn preloaded(lab: &mut Lab) -> Result<()> {
    stop_registry(lab)?;
    // The archive names its images fully, as `skopeo copy ... oci-archive:F:REF` does.
    let layout = lab.dir.path().join("preload-src");
    sh(Command::new("cp")
        .arg("-r")
        .arg(echo_layout(lab))
        .arg(&layout))?;
    let index = layout.join("index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&index)?)?;
    let Some(entries) = v["manifests"].as_array_mut() else {
        bail!("index.json has no manifests")
    };
    for e in entries {
        let tag = e["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .context("tag")?
            .to_owned();
        e["annotations"]["org.opencontainers.image.ref.name"] =
            format!("{}/baton/http-echo:{tag}", lab.registry()).into();
    }
    fs::write(&index, serde_json::to_vec(&v)?)?;
    let dir = lab.dir.path().join("preload");
    fs::create_dir_all(&dir)?;
    tar_layout(&layout, &dir.join("http-echo.tar"))?;

    restart_agent_with(lab, 0, &["--preload-images", &dir.to_string_lossy()])?;
    deploy_and_check(lab, 1)?;
    let log = lab.agent_log(0);
    ensure!(
        log.contains("image preloaded"),
        "no preload in the agent log"
    );
    ensure!(
        !log.contains("pulling image"),
        "the agent pulled instead of using the preloaded image"
    );
    Ok(())
}

#[test]
fn preloaded_images_run_with_no_registry_and_no_mirror() -> Result<()> {
    let mut lab = Lab::start("pl", 1, Broker::Embedded)?;
    let result = preloaded(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}
