//! Secrets end to end on real processes behind a real Mosquitto, with an enrolled fleet:
//! a secret used as an env var and as a file in a pod on node A is readable inside the
//! container, and its value appears in no MQTT payload, not in the coordinator's store
//! file, not in node B's desired state and not in node A's `desired.bin`; a pod naming a
//! missing secret shows `CreateContainerConfigError` and starts once it is applied; a pod
//! with `imagePullSecrets` pulls from an htpasswd registry with credentials that exist only
//! in the coordinator's secret, and wrong ones give `ImagePullFailed: unauthorized`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::{bin, container_pids, items, repo_root, sh, wait_for, Broker, Lab, Proc};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);
const AUTH_PORT: u16 = 5001;

/// Stops the htpasswd registry even when the test fails. Not through the hub namespace
/// (it may be gone by then): stopping only signals the pid in the registry's pidfile.
struct Registry {
    addr: String,
    dir: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("images/registry.sh"))
            .args(["stop", self.addr.as_str()])
            .arg(&self.dir)
            .output();
    }
}

fn auth_registry(lab: &Lab) -> String {
    format!("{}:{AUTH_PORT}", lab.hub_ip())
}

/// Starts lab agent `i` enrolled with `token` and waits for its node to be Ready.
fn start_enrolled(lab: &mut Lab, i: usize, token: &str) -> Result<()> {
    let a = &lab.agents[i];
    let (name, dir) = (a.name.clone(), a.data_dir.clone());
    let mut cmd = a.ns.cmd("timeout");
    cmd.arg("600").arg(bin("baton-agent"));
    cmd.args([
        "--coordinator",
        &lab.mqtt_url(),
        "--node-name",
        &name,
        "--insecure-registry",
        &lab.registry(),
        "--insecure-registry",
        &auth_registry(lab),
        "--heartbeat-secs",
        "1",
        "--pod-cidr",
        &format!("10.42.{}.0/24", i + 1),
        "--join-token",
        token,
        "--coordinator-api",
        &lab.enroll_api(),
    ])
    .arg("--data-dir")
    .arg(&dir)
    .env("RUST_LOG", "info,libcgroups=error,libcontainer=warn");
    let log = dir.with_extension("log");
    lab.agents[i].proc = Some(Proc::spawn_appending(&name, &mut cmd, log)?);
    wait_for(&format!("{name} enrolled and Ready"), LONG, || {
        ensure!(
            lab.agents[i].proc.as_mut().is_some_and(|p| p.is_running()),
            "agent exited: {}",
            lab.agent_log(i)
        );
        let nodes = lab.get_json(&["get", "nodes"])?;
        let ready = items(&nodes)
            .iter()
            .any(|n| n["metadata"]["name"] == name.as_str() && n["status"]["ready"] == true);
        Ok((ready && dir.join("identity.json").exists()).then_some(()))
    })
}

fn get_pod(lab: &Lab, name: &str) -> Result<Value> {
    lab.get_json(&["get", "pod", name])
}

fn wait_running(lab: &Lab, name: &str) -> Result<Value> {
    wait_for(&format!("pod {name} Running"), LONG, || {
        let p = get_pod(lab, name)?;
        let running = p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        Ok(running.then_some(p))
    })
}

/// A pod pinned to `node` that sleeps, with extra container and pod YAML.
fn pod(name: &str, node: &str, image: &str, container_extra: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  terminationGracePeriodSeconds: 1\n{spec_extra}  containers:\n  - name: c\n    image: {image}\n    command: [sleep, '3600']\n{container_extra}"
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, recursively (the agent's data dir).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// Mount points of tmpfs filesystems (the agents share this mount namespace).
fn tmpfs_mounts() -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
            (fs == "tmpfs").then(|| PathBuf::from(at))
        })
        .collect())
}

#[test]
fn secrets_reach_only_their_pod_sealed() -> Result<()> {
    let mut lab = Lab::start_with("scr", 2, Broker::Mosquitto, &[])?;
    let result = steps(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn steps(lab: &mut Lab) -> Result<()> {
    // Enroll both agents (secrets are only ever sealed to enrolled keys).
    lab.restart_coordinator_enrolling(&[])?;
    let hub = lab.hub_ip();
    for i in 0..2 {
        let token = lab.join_token(&[])?;
        start_enrolled(lab, i, &token)?;
    }
    let (na, nb) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());

    // Everything on the broker from now on, retained messages included.
    let capture = lab.dir.path().join("mqtt-capture");
    let mut sub = Proc::spawn(
        "mosquitto_sub",
        lab.hub
            .cmd("mosquitto_sub")
            .args(["-h", &hub, "-p", "1883", "-v", "-t", "baton/v1/#"]),
        capture.clone(),
    )?;
    wait_for("mosquitto_sub to receive", LONG, || {
        Ok((std::fs::metadata(&capture)?.len() > 0).then_some(()))
    })?;

    let value = format!("pw-{}-{:x}", lab.id, std::process::id() as u64 * 7919);
    let file_value = format!("file-{value}");
    lab.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: {value}\n  cert.pem: {file_value}\n"
    ))?;
    // `get` and `describe` show key names and sizes, never values.
    for args in [
        &["get", "secrets", "-o", "json"][..],
        &["describe", "secret", "db"],
    ] {
        let out = lab.baton(args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains("password"), "{args:?}: {text}");
        ensure!(!text.contains(&value), "{args:?} shows the value: {text}");
    }

    let image = format!("{}/baton/http-echo:1", lab.registry());
    lab.apply(&pod(
        "uses-db",
        &na,
        &image,
        "    env:\n    - name: DB_PASSWORD\n      valueFrom: {secretKeyRef: {name: db, key: password}}\n    volumeMounts:\n    - {name: creds, mountPath: /etc/db}\n",
        "  volumes:\n  - name: creds\n    secret: {secretName: db}\n",
    ))?;
    let p = wait_running(lab, "uses-db")?;
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();

    // (a) Inside the container: its environment and its /etc/db/password file.
    let pid = wait_for("the container's process", LONG, || {
        Ok(container_pids(&na, &uid, "c").first().copied())
    })?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    ensure!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == format!("DB_PASSWORD={value}").as_bytes()),
        "DB_PASSWORD not in the container's environment"
    );
    let in_file = std::fs::read_to_string(format!("/proc/{pid}/root/etc/db/password"))
        .context("read /etc/db/password inside the container")?;
    ensure!(in_file == value, "the secret file holds {in_file:?}");
    let cert = std::fs::read_to_string(format!("/proc/{pid}/root/etc/db/cert.pem"))?;
    ensure!(cert == file_value, "cert.pem holds {cert:?}");

    // A pod naming a missing secret: a clear status, and it starts once the secret exists.
    lab.apply(&pod(
        "late",
        &nb,
        &image,
        "    env:\n    - name: TOKEN\n      valueFrom: {secretKeyRef: {name: late, key: token}}\n",
        "",
    ))?;
    wait_for("pod late to wait for its secret", LONG, || {
        let p = get_pod(lab, "late")?;
        let ok = p["status"]["reason"] == "CreateContainerConfigError"
            && p["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(r#"secret "late" not found"#));
        Ok(ok.then_some(()))
    })?;
    lab.apply(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: late\nstringData:\n  token: t0ken\n",
    )?;
    wait_running(lab, "late")?;

    // (b) The value is nowhere but in the container. Settle a few heartbeats first, so
    // republished desired states are in the capture too.
    std::thread::sleep(Duration::from_secs(3));
    sub.stop(Duration::from_secs(2));
    let mqtt = std::fs::read(&capture)?;
    ensure!(
        contains(&mqtt, format!("nodes/{na}/down/desired").as_bytes()),
        "the capture missed node A's desired state"
    );
    for v in [&value, &file_value] {
        ensure!(
            !contains(&mqtt, v.as_bytes()),
            "a secret value crossed the broker"
        );
    }
    let coord = lab.dir.path().join("coordinator");
    let store = std::fs::read(coord.join("baton.redb"))?;
    ensure!(
        !contains(&store, value.as_bytes()),
        "the store holds the value"
    );
    ensure!(!contains(&store, b"cert.pem"), "the store holds a key name");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(coord.join("pki/secrets.key"))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "secrets.key mode {mode:o}");
    }
    for (i, node) in [(0, &na), (1, &nb)] {
        let dir = &lab.agents[i].data_dir;
        let tmpfs = tmpfs_mounts()?;
        for f in files_under(dir) {
            // Secret volumes are tmpfs: memory, not the disk this sweep is about.
            if tmpfs.iter().any(|m| f.starts_with(m)) {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            ensure!(
                !contains(&bytes, value.as_bytes()),
                "{} of {node} holds the value",
                f.display()
            );
        }
        // The env value does reach the OCI bundle (the runtime needs it), which the agent
        // keeps on a tmpfs of its own under /run/baton: memory, never the disk.
        if i == 0 {
            let bundles = std::path::Path::new("/run/baton")
                .join(node.as_str())
                .join("bundles");
            ensure!(
                tmpfs.iter().any(|m| bundles.starts_with(m)),
                "{} is not on a tmpfs (tmpfs mounts: {tmpfs:?})",
                bundles.display()
            );
            ensure!(
                files_under(&bundles)
                    .iter()
                    .any(|f| contains(&std::fs::read(f).unwrap_or_default(), value.as_bytes())),
                "no bundle under {} carries the env value: where did it go?",
                bundles.display()
            );
        }
        let desired = baton_agent::state::StateFile::new(dir).load()?;
        let names: Vec<&str> = desired.secrets.iter().map(|s| s.name.as_str()).collect();
        let want: &[&str] = if i == 0 { &["db"] } else { &["late"] };
        ensure!(names == want, "{node}'s desired state carries {names:?}");
    }

    // (c) imagePullSecrets against an htpasswd registry serving the lab's images.
    let reg_dir = lab.dir.path().join("auth-registry");
    std::fs::create_dir_all(&reg_dir)?;
    let htp = sh(Command::new("htpasswd").args(["-Bbn", "baton", "s3cret"]))?;
    std::fs::write(reg_dir.join("htpasswd"), &htp.stdout)?;
    let reg = auth_registry(lab);
    let _registry = Registry {
        addr: reg.clone(),
        dir: reg_dir.clone(),
    };
    sh(lab
        .hub
        .cmd(repo_root().join("images/registry.sh"))
        .args(["start", &reg])
        .arg(&reg_dir)
        .env("REG_HTPASSWD", reg_dir.join("htpasswd"))
        .env("REG_STORAGE", lab.dir.path().join("registry/storage")))?;
    let dockercfg = |password: &str| {
        serde_json::json!({"auths": {reg.clone(): {"username": "baton", "password": password}}})
            .to_string()
    };
    lab.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{}'\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: badcred\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{}'\n",
        dockercfg("s3cret"),
        dockercfg("wrong")
    ))?;
    let private = format!("{reg}/baton/http-echo:1");
    lab.apply(&pod(
        "private",
        &na,
        &private,
        "    imagePullPolicy: Always\n",
        "  imagePullSecrets: [{name: regcred}]\n",
    ))?;
    wait_running(lab, "private")?;
    lab.apply(&pod(
        "wrongpw",
        &nb,
        &private,
        "    imagePullPolicy: Always\n",
        "  imagePullSecrets: [{name: badcred}]\n",
    ))?;
    wait_for("pod wrongpw to fail unauthorized", LONG, || {
        let p = get_pod(lab, "wrongpw")?;
        let reason = p["status"]["containerStatuses"][0]["state"]["failed"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(reason
            .contains("ImagePullFailed: unauthorized")
            .then_some(reason))
    })?;
    // The node's own configuration has no credentials: without the secret, no pull.
    lab.apply(&pod(
        "anon",
        &nb,
        &private,
        "    imagePullPolicy: Always\n",
        "",
    ))?;
    wait_for("pod anon to fail unauthorized", LONG, || {
        let p = get_pod(lab, "anon")?;
        let reason = p["status"]["containerStatuses"][0]["state"]["failed"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(reason.contains("unauthorized").then_some(()))
    })?;
    Ok(())
}
