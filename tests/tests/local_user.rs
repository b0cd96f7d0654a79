//! The node's other local users, and other agents, against a running agent's data (issues 9
//! and 10): everything under `--data-dir` and the node's part of `--run-dir` is closed to
//! users other than root, also when an older agent left it open, while containers running
//! as a non-root user still read their secret volume; and a second agent on the same data
//! directory is refused without touching the first one's pods.
//!
//! The attacks run as `nobody` (`setpriv`), against a real agent running a real pod.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::fleet::{self, container_running, http_info, node_of, pod_ip, uid, wait_pods};
use baton_e2e::{bin, sh, wait_for, Broker, Lab};
use serde_json::Value;
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(120);

fn on_failure<T>(lab: &Lab, r: Result<T>) -> Result<T> {
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// Runs `args` as `nobody` (uid and gid 65534, no supplementary groups). A path to execute
/// goes through `sh -c`: setpriv itself still holds root's capabilities when it execs, so
/// `setpriv -- /a/path` would reach through directories nobody cannot search.
fn as_nobody(args: &[&str]) -> Result<Output> {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .context("setpriv")
}

/// `nobody` running `args` must be refused with EACCES.
fn denied(what: &str, args: &[&str]) -> Result<()> {
    let out = as_nobody(args)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success() && text.contains("Permission denied"),
        "nobody could {what}: `{}` gave {} with {text:?}",
        args.join(" "),
        out.status
    );
    Ok(())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An OCI layout at `dir` (built in `work`) holding `local.test/evil:1`: one layer with a setuid-root copy of
/// the host's `id` (`/suid-id`) and a 0666 character device for `/dev/kmsg`
/// (`/dev-kmsg`), as a hostile image would carry, plus busybox to run `sleep`. Returns the
/// layer's hex digest.
fn evil_layout(dir: &Path, work: &Path) -> Result<String> {
    let stage = work.join("evil-stage");
    fs::create_dir_all(stage.join("bin"))?;
    fs::copy("/usr/bin/id", stage.join("suid-id"))?;
    fs::set_permissions(stage.join("suid-id"), fs::Permissions::from_mode(0o4755))?;
    sh(Command::new("mknod")
        .arg(stage.join("dev-kmsg"))
        .args(["c", "1", "11"]))?;
    fs::set_permissions(stage.join("dev-kmsg"), fs::Permissions::from_mode(0o666))?;
    fs::copy("/bin/busybox", stage.join("bin/busybox"))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", stage.join("bin").join(applet))?;
    }
    let tar = work.join("evil-layer.tar");
    sh(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&stage)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    let layer = fs::read(&tar)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<String> {
        let hex = sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes)?;
        Ok(hex)
    };
    let layer_hex = put(&layer)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sleep", "3600"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    }))?;
    let config_hex = put(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_hex}"), "size": layer.len()}],
    }))?;
    let manifest_hex = put(&manifest)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": format!("sha256:{manifest_hex}"), "size": manifest.len(),
                           "annotations": {"io.containerd.image.name": "local.test/evil:1"}}],
        }))?,
    )?;
    Ok(layer_hex)
}

/// Opens every directory and file under `dir` to everyone (0755, 0644), as agents before
/// this fix left a data directory.
fn open_up(dir: &Path) -> Result<()> {
    sh(Command::new("chmod").args(["-R", "go+rX"]).arg(dir))?;
    Ok(())
}

fn mode(path: &Path) -> Result<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.mode() & 0o7777, m.uid(), m.gid()))
}

#[test]
fn local_users_cannot_reach_the_agents_secrets_logs_layers_or_state() -> Result<()> {
    let mut lab = Lab::start("lusr", 1, Broker::Embedded)?;
    let r = local_users(&mut lab);
    on_failure(&lab, r)
}

fn local_users(lab: &mut Lab) -> Result<()> {
    let node = lab.agents[0].name.clone();
    let data = lab.agents[0].data_dir.clone();
    let preload = lab.dir.path().join("preload");
    let layer = evil_layout(&preload.join("evil"), lab.dir.path())?;

    // An upgrade: the agent restarts on a data dir an older agent left open, with a run dir
    // on a 0755 tmpfs (like systemd's /run) whose node directory is open too. The lab's own
    // directory is opened, so that only the agent's modes stand between nobody and its data.
    // Enrolled this time: secrets are sealed to a device key, its identity.json.
    lab.restart_coordinator_enrolling(&[])?;
    open_up(&data)?;
    fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755))?;
    let run = lab.dir.path().join("run");
    fs::create_dir_all(&run)?;
    sh(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs"])
        .arg(&run))?;
    let _unmount = Unmount(run.clone());
    fs::create_dir_all(run.join(&node).join("bundles"))?;
    open_up(&run)?;
    lab.agent_args = vec![
        "--join-token".into(),
        lab.join_token(&[])?,
        "--coordinator-api".into(),
        lab.enroll_api(),
        "--run-dir".into(),
        p(&run).into(),
        "--preload-images".into(),
        p(&preload).into(),
    ];
    lab.start_agent(0)?;

    let value = format!("s3cret-{}-{}", lab.id, std::process::id());
    lab.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: {value}\n"
    ))?;
    let registry = lab.registry();
    lab.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: user-pod
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  volumes:
  - name: creds
    secret: {{secretName: db}}
  containers:
  - name: reader
    image: {registry}/baton/busybox:1
    command: [sh, -c, 'cat /etc/creds/password; echo; id -u; sleep 3600']
    securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
    env:
    - name: PW
      valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
    volumeMounts:
    - {{name: creds, mountPath: /etc/creds}}
  - name: evil
    image: local.test/evil:1
    imagePullPolicy: Never
"#
    ))?;
    let pod = wait_for("user-pod running", LONG, || {
        Ok(lab
            .pods()?
            .into_iter()
            .find(|p| fleet::pod_name(p) == "user-pod" && container_running(p)))
    })?;
    let pod_uid = uid(&pod);
    let pod_dir = data.join("pods").join(&pod_uid);
    let log = pod_dir.join("logs/reader.log");
    // The container's user (1000) reads its secret: non-root containers still work.
    wait_for("the reader to log the secret", LONG, || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        Ok((text == format!("{value}\n1000\n")).then_some(()))
    })?;

    let creds = pod_dir.join("volumes/creds");
    let secret = creds.join("password");
    let layer_dir = data.join("images/layers/sha256").join(&layer);
    let rootfs = pod_dir.join("containers/evil/rootfs");
    let bundle = run
        .join(&node)
        .join("bundles")
        .join(format!("{pod_uid}-reader"))
        .join("config.json");
    ensure!(
        fs::read_to_string(&bundle)?.contains(&value),
        "the bundle does not hold the secret env: the check below would prove little"
    );
    ensure!(
        fs::metadata(layer_dir.join("suid-id"))?
            .permissions()
            .mode()
            & 0o4000
            != 0
    );

    // What nobody tried, and must be refused.
    let setuid = layer_dir.join("suid-id");
    let setuid_rootfs = rootfs.join("suid-id");
    let kmsg = layer_dir.join("dev-kmsg");
    let kmsg_rootfs = rootfs.join("dev-kmsg");
    for bin in [&setuid, &setuid_rootfs] {
        denied(
            "run an image's setuid-root binary",
            &["sh", "-c", "exec \"$0\" -u", p(bin)],
        )?;
    }
    for dev in [&kmsg, &kmsg_rootfs] {
        denied(
            "open an image's device node for writing",
            &["sh", "-c", &format!("exec 3>>{}", p(dev))],
        )?;
    }
    denied("read a secret volume", &["cat", p(&secret)])?;
    denied("list a secret volume", &["ls", p(&creds)])?;
    denied("read a container log", &["cat", p(&log)])?;
    denied(
        "read the desired state",
        &["cat", p(&data.join("desired.bin"))],
    )?;
    denied(
        "read the identity",
        &["cat", p(&data.join("identity.json"))],
    )?;
    denied("read a bundle", &["cat", p(&bundle)])?;

    // And the modes behind it, in depth.
    ensure!(mode(&data)?.0 == 0o700, "data dir {:o}", mode(&data)?.0);
    for d in ["pods", "images", "net"] {
        ensure!(
            mode(&data.join(d))?.0 == 0o700,
            "{d} is {:o}",
            mode(&data.join(d))?.0
        );
    }
    ensure!(
        mode(&run.join(&node))?.0 == 0o700,
        "the node's run dir is open"
    );
    ensure!(mode(&log)?.0 == 0o600, "log {:o}", mode(&log)?.0);
    for f in ["desired.bin", "identity.json"] {
        ensure!(mode(&data.join(f))?.0 == 0o600, "{f} is open");
    }
    ensure!(
        mode(&secret)? == (0o400, 1000, 1000),
        "secret file {:?}",
        mode(&secret)?
    );
    ensure!(
        mode(&creds)? == (0o700, 1000, 1000),
        "secret tmpfs {:?}",
        mode(&creds)?
    );
    lab.baton(&["delete", "pod", "user-pod"])?;
    fleet::wait_cleaned_up(lab, &node, &pod_uid, LONG)?;
    Ok(())
}

/// Unmounts the test's run-dir tmpfs (lazily: the lab's agents may still hold it).
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_second_agent_on_a_live_data_dir_is_refused_and_the_pods_are_untouched() -> Result<()> {
    let mut lab = Lab::start("lock", 1, Broker::Embedded)?;
    let r = second_agent(&mut lab);
    on_failure(&lab, r)
}

/// The bridge ports (host veths) on the agent's node, from its namespace.
fn bridge_ports(lab: &Lab) -> Result<Vec<String>> {
    let out = sh(lab.agents[0]
        .ns
        .cmd("ip")
        .args(["-o", "link", "show", "type", "veth"]))?;
    let mut ports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" master bt-"))
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    ports.sort();
    Ok(ports)
}

/// The name of the network namespace process `pid` is in.
fn netns_of(pid: u32) -> Result<String> {
    let out = sh(Command::new("ip").args(["netns", "identify", &pid.to_string()]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn second_agent(lab: &mut Lab) -> Result<()> {
    lab.apply(&fleet::EchoDeployment::new(1).yaml(&lab.registry()))?;
    let pods = wait_pods(
        lab,
        "web",
        1,
        LONG,
        "one running web pod",
        container_running,
    )?;
    let pod = &pods[0];
    let init = fleet::init_pid(lab, &node_of(pod), &uid(pod), "echo")?;
    let netns = netns_of(init)?;
    ensure!(netns.starts_with("bt-"), "pod netns {netns:?}");
    let ports = bridge_ports(lab)?;
    ensure!(ports.len() == 1, "bridge ports {ports:?}");
    let first = lab.agents[0]
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("first agent pid")?;

    // The same command line as the running agent, in its namespace.
    let a = &lab.agents[0];
    let second = |sub: Option<&str>| {
        let mut cmd = a.ns.cmd(bin("baton-agent"));
        if let Some(s) = sub {
            cmd.arg(s);
        }
        cmd.args(["--coordinator", &lab.mqtt_url(), "--node-name", &a.name])
            .args(["--pod-cidr", "10.42.1.0/24", "--data-dir"])
            .arg(&a.data_dir);
        cmd
    };
    for sub in [None, Some("reset")] {
        let mut child = second(sub)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let end = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > end {
                // Stopping it is what used to take the first agent's pod network away.
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let out = child.wait_with_output()?;
                bail!(
                    "a second agent ({sub:?}) ran on a live data dir: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{sub:?} exited 0: {err}");
        ensure!(
            err.contains("in use by another agent") && err.contains(&format!("pid {first}")),
            "{sub:?} did not name the holder (pid {first}): {err}"
        );
    }

    // The first agent's pod: same container, same netns, same bridge port, still serving.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        fleet::init_pid(lab, &node_of(pod), &uid(pod), "echo")? == init,
        "the container was restarted"
    );
    ensure!(netns_of(init)? == netns, "the pod's netns is gone");
    ensure!(
        Path::new("/run/netns").join(&netns).exists(),
        "the netns file is gone"
    );
    ensure!(bridge_ports(lab)? == ports, "bridge ports changed");
    let page = http_info(
        lab,
        &lab.agents[0].name,
        &pod_ip(pod),
        Duration::from_secs(5),
    )?;
    ensure!(!page.is_empty(), "the pod does not answer");
    let pods: Vec<Value> = lab.pods()?;
    ensure!(
        pods.iter()
            .all(|p| p["status"]["containerStatuses"][0]["restartCount"] == 0),
        "restarts: {pods:?}"
    );
    Ok(())
}
