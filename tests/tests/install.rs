//! `baton-agent install` and `uninstall` with the real binary, into a temporary root with
//! `--no-start` (this machine has no systemd; the ARM VM's scenario runs the real one):
//! - install writes the binary, agent.env (the token moved there from its file, which is
//!   removed), the unit, the modules list and the data dir, each with its mode; a second
//!   install (from the installed binary) updates them and keeps the identity; without
//!   `--no-start` it says the unit was not started and fails;
//! - every bad flag is refused before anything is written;
//! - uninstall removes all of it, and, after a real agent ran a pod in that data dir and
//!   was killed, its container, cgroups, pod network and mounts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{self, container_running, uid, wait_pods, EchoDeployment};
use baton_e2e::{bin, container_pids, sh, Broker, Lab};

const LONG: Duration = Duration::from_secs(120);

/// What the install writes, relative to its root.
const FILES: &[&str] = &[
    "usr/local/bin/baton-agent",
    "etc/baton-agent/agent.env",
    "etc/systemd/system/baton-agent.service",
    "etc/systemd/system/multi-user.target.wants/baton-agent.service",
    "etc/modules-load.d/baton-agent.conf",
];

/// A release public key (base64 of 32 bytes) for `--release-public-key`.
const RELEASE_KEY: &str = "372416aAjdrqwcTYsBCJhje2UH906wzAz5j+rcfI9kY=";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A well-formed join token (its CA hash matches no coordinator: nothing enrolls here).
fn token() -> String {
    format!(
        "bjt1.{}.{}.{}",
        "0123456789abcdef",
        "a".repeat(32),
        "c".repeat(64)
    )
}

/// An identity file for `node` (keys only: nothing here talks to a coordinator).
fn identity_json(node: &str) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let coordinator = baton_proto::sign::SigningKey::from_bytes(&[9; 32]);
    serde_json::json!({
        "version": 1, "nodeName": node, "privateKey": b64(&[7; 32]),
        "certificate": "", "caCertificate": "", "notAfter": 0,
        "coordinatorPublicKey": b64(coordinator.verifying_key().as_bytes()),
    })
    .to_string()
}

/// `baton-agent SUB --root ROOT ARGS` with `exe`, in a clean environment.
fn run(exe: &Path, sub: &str, root: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .arg(sub)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("run baton-agent")
}

#[test]
fn install_writes_the_service_bad_flags_write_nothing_and_uninstall_removes_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    std::fs::create_dir(&root)?;
    // The token file as `baton flash` leaves it on the boot partition.
    let boot = tmp.path().join("boot");
    std::fs::create_dir(&boot)?;
    let token_file = boot.join("join-token");
    std::fs::write(&token_file, format!("{}\n", token()))?;
    let tf = token_file.display().to_string();
    let good = [
        "--coordinator",
        "mqtts://10.0.0.1:8883",
        "--coordinator-api",
        "https://10.0.0.1:7474",
    ];
    let agent = bin("baton-agent");

    // Refused before anything is written.
    let malformed = boot.join("malformed");
    std::fs::write(&malformed, "bjt1.not-a-token\n")?;
    let m = malformed.display().to_string();
    let api = ["--coordinator-api", "https://10.0.0.1:7474"];
    let with = |extra: &[&str]| -> Vec<String> {
        good.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let only = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            only(&[api[0], api[1], "--join-token-file", &tf]),
            "--coordinator is required",
        ),
        (
            only(&[
                "--coordinator",
                "mqtts://",
                api[0],
                api[1],
                "--join-token-file",
                &tf,
            ]),
            "--coordinator",
        ),
        (
            only(&[
                "--coordinator",
                "mqtts://10.0.0.1:8883",
                "--join-token-file",
                &tf,
            ]),
            "--coordinator-api is required",
        ),
        (
            only(&[
                "--coordinator",
                "mqtts://10.0.0.1:8883",
                "--coordinator-api",
                "http://10.9.9.9:7474",
                "--join-token-file",
                &tf,
            ]),
            "only allowed to a loopback",
        ),
        (with(&["--join-token-file", &m]), "invalid join token"),
        (
            with(&["--join-token-file", "/nonexistent/join-token"]),
            "no join token in /nonexistent/join-token",
        ),
        (with(&["--join-token", "bjt1.short"]), "invalid join token"),
        (with(&[]), "no join token"),
        (
            with(&["--join-token-file", &tf, "--join-token", &token()]),
            "cannot be used with",
        ),
        (
            with(&["--join-token-file", &tf, "--labels", "no-equals"]),
            "is not KEY=VALUE",
        ),
        (
            with(&["--join-token-file", &tf, "--node-name", "a/b"]),
            "--node-name",
        ),
        (
            with(&["--join-token-file", &tf, "--data-dir", "var/lib/relative"]),
            "absolute",
        ),
        (
            with(&[
                "--join-token-file",
                &tf,
                "--registry-mirror",
                "http://it's:5000",
            ]),
            "single quote",
        ),
        (
            with(&["--join-token-file", &tf, "--heartbeat-secs", "soon"]),
            "invalid value",
        ),
        (
            with(&["--join-token-file", &tf, "--release-public-key", "AAAA"]),
            "invalid release public key",
        ),
    ];
    for (args, want) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(
            &agent,
            "install",
            &root,
            &[&a[..], &["--no-start"]].concat(),
        );
        ensure!(!out.status.success(), "installed with {args:?}");
        ensure!(
            text(&out).contains(want),
            "{args:?}: wanted {want:?} in {}",
            text(&out)
        );
        let written: Vec<_> = std::fs::read_dir(&root)?.collect();
        ensure!(written.is_empty(), "{args:?} wrote {written:?}");
        ensure!(token_file.exists(), "{args:?} removed the token file");
    }

    // Installed, with every flag given (and a BATON_* variable of the environment).
    let out = Command::new(&agent)
        .args(["install", "--no-start", "--root"])
        .arg(&root)
        .args(good)
        .args(["--join-token-file", &tf, "--labels", "zone=lab,disk=ssd"])
        .args([
            "--node-name",
            "pi-7",
            "--insecure-registry",
            "10.0.0.1:5000",
            "--release-public-key",
            RELEASE_KEY,
        ])
        .env_clear()
        .env("BATON_HEARTBEAT_SECS", "3")
        .output()?;
    ensure!(out.status.success(), "install: {}", text(&out));
    ensure!(text(&out).contains("not started"), "{}", text(&out));
    ensure!(
        !token_file.exists(),
        "the token file is still on the boot partition"
    );
    for f in FILES {
        ensure!(root.join(f).symlink_metadata().is_ok(), "{f} missing");
    }
    let bin_path = root.join(FILES[0]);
    ensure!(
        mode(&bin_path) == 0o755,
        "binary mode {:o}",
        mode(&bin_path)
    );
    sh(Command::new("cmp").arg(&agent).arg(&bin_path)).context("the installed binary differs")?;
    let env_path = root.join(FILES[1]);
    ensure!(
        mode(&env_path) == 0o600,
        "agent.env mode {:o}",
        mode(&env_path)
    );
    let env = std::fs::read_to_string(&env_path)?;
    for line in [
        "BATON_COORDINATOR=mqtts://10.0.0.1:8883",
        "BATON_COORDINATOR_API=https://10.0.0.1:7474",
        "BATON_LABELS=zone=lab,disk=ssd",
        "BATON_NODE_NAME=pi-7",
        "BATON_INSECURE_REGISTRIES=10.0.0.1:5000",
        "BATON_HEARTBEAT_SECS=3",
        "BATON_AGENT_DATA_DIR=/var/lib/baton-agent",
        &format!("BATON_RELEASE_PUBLIC_KEY={RELEASE_KEY}"),
        &format!("BATON_JOIN_TOKEN={}", token()),
    ] {
        ensure!(
            env.lines().any(|l| l == line),
            "{line} not in agent.env:\n{env}"
        );
    }
    ensure!(!env.contains("JOIN_TOKEN_FILE"), "{env}");
    let unit = std::fs::read_to_string(root.join(FILES[2]))?;
    for line in [
        "ExecStart=/usr/local/bin/baton-agent launch",
        "ExecStopPost=/usr/local/bin/baton-agent launch --record-exit",
        "EnvironmentFile=/etc/baton-agent/agent.env",
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
        "StandardOutput=journal",
        "WantedBy=multi-user.target",
    ] {
        ensure!(
            unit.lines().any(|l| l == line),
            "{line} not in the unit:\n{unit}"
        );
    }
    ensure!(
        std::fs::read_link(root.join(FILES[3]))?
            == Path::new("/etc/systemd/system/baton-agent.service"),
        "enable link"
    );
    let modules = std::fs::read_to_string(root.join(FILES[4]))?;
    ensure!(modules.lines().any(|l| l == "br_netfilter"), "{modules}");
    let data = root.join("var/lib/baton-agent");
    ensure!(mode(&data) == 0o700, "data dir mode {:o}", mode(&data));
    ensure!(
        mode(&root.join("var/lib")) & 0o005 == 0o005,
        "/var/lib closed to others"
    );

    // Again, from the installed binary (not copied onto itself), without the token file
    // (the token stays) and with an identity in the data dir (kept). Without --no-start
    // it says the unit was not started, and fails.
    let id = identity_json("pi-7");
    std::fs::write(data.join("identity.json"), &id)?;
    let out = run(
        &bin_path,
        "install",
        &root,
        &[&good[..], &["--labels", "zone=b"]].concat(),
    );
    ensure!(!out.status.success(), "exit 0 with the unit not started");
    ensure!(
        text(&out).contains("systemd is not running") && text(&out).contains("NOT started"),
        "{}",
        text(&out)
    );
    ensure!(
        text(&out).contains("is this binary: kept"),
        "{}",
        text(&out)
    );
    let env = std::fs::read_to_string(&env_path)?;
    ensure!(env.lines().any(|l| l == "BATON_LABELS=zone=b"), "{env}");
    ensure!(env.contains(&token()), "the token was lost: {env}");
    ensure!(std::fs::read_to_string(data.join("identity.json"))? == id);

    // Uninstall, keeping the data, then all of it.
    let out = run(&bin_path, "uninstall", &root, &["--keep-data"]);
    ensure!(out.status.success(), "uninstall: {}", text(&out));
    for f in FILES {
        ensure!(root.join(f).symlink_metadata().is_err(), "{f} left");
    }
    ensure!(
        data.join("identity.json").exists(),
        "--keep-data removed the data"
    );
    ensure!(
        !root.join("etc/baton-agent").exists(),
        "etc/baton-agent left"
    );
    let out = run(&agent, "uninstall", &root, &[]);
    ensure!(out.status.success(), "uninstall: {}", text(&out));
    ensure!(!data.exists(), "the data dir is left");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() && !p.is_symlink() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    ensure!(files.is_empty(), "left: {files:?}");
    Ok(())
}

#[test]
fn uninstall_removes_the_pods_an_agent_left_running() -> Result<()> {
    let mut lab = Lab::start("ins", 1, Broker::Embedded)?;
    let r = pods_removed(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// Bridges in agent 0's namespace.
fn bridges(lab: &Lab) -> Result<String> {
    let out = sh(lab.agents[0]
        .ns
        .cmd("ip")
        .args(["-o", "link", "show", "type", "bridge"]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pods_removed(lab: &mut Lab) -> Result<()> {
    // The agent again, with its run dir under the root too, so that the install root
    // holds all it has: the data dir is <root>/agent1, the run dir <root>/run/baton.
    let root: PathBuf = lab.dir.path().to_owned();
    let data_rel = lab.agents[0]
        .data_dir
        .strip_prefix(&root)
        .context("data dir under the lab dir")?
        .to_owned();
    lab.kill_agent(0);
    lab.reset_agent(0)?;
    lab.agent_args = vec![
        "--run-dir".into(),
        root.join("run/baton").display().to_string(),
    ];
    lab.start_agent(0)?;
    let node = lab.agents[0].name.clone();
    lab.apply(&EchoDeployment::new(1).yaml(&lab.registry()))?;
    let pods = wait_pods(
        lab,
        "web",
        1,
        LONG,
        "one running web pod",
        container_running,
    )?;
    let pod_uid = uid(&pods[0]);
    let init = fleet::init_pid(lab, &node, &pod_uid, "echo")?;
    let netns = String::from_utf8(
        sh(Command::new("ip").args(["netns", "identify", &init.to_string()]))?.stdout,
    )?
    .trim()
    .to_owned();
    ensure!(!netns.is_empty(), "the pod has no named netns");
    ensure!(
        bridges(lab)?.contains("bt-"),
        "no pod bridge: {}",
        bridges(lab)?
    );

    // The agent dies (SIGKILL): its pod keeps running.
    lab.kill_agent(0);
    ensure!(
        !container_pids(&node, &pod_uid, "echo").is_empty(),
        "the pod stopped with the agent"
    );

    let ns = lab.agents[0].ns.0.clone();
    let in_ns = |args: &[&str]| -> Result<Output> {
        let mut c = lab.agents[0].ns.cmd(bin("baton-agent"));
        c.args(args).arg("--root").arg(&root);
        Ok(c.output()?)
    };
    let data_flag = format!("/{}", data_rel.display());
    let out = in_ns(&[
        "install",
        "--no-start",
        "--coordinator",
        &lab.mqtt_url(),
        "--insecure-unenrolled",
        "--node-name",
        &node,
        "--pod-cidr",
        "10.42.1.0/24",
        "--data-dir",
        &data_flag,
        "--run-dir",
        "/run/baton",
    ])?;
    ensure!(out.status.success(), "install: {}", text(&out));
    let out = in_ns(&["uninstall"])?;
    ensure!(out.status.success(), "uninstall in {ns}: {}", text(&out));

    ensure!(
        container_pids(&node, &pod_uid, "echo").is_empty(),
        "the container still runs"
    );
    let left = fleet::leftovers(lab, &node, &pod_uid);
    ensure!(left.is_empty(), "left: {left:?}");
    ensure!(
        !Path::new("/run/netns").join(&netns).exists(),
        "the pod's netns {netns} is left"
    );
    ensure!(
        !bridges(lab)?.contains("bt-"),
        "bridge left: {}",
        bridges(lab)?
    );
    for ctrl in ["pids", "memory"] {
        let cg = fleet::cgroup_dir(ctrl, &node);
        let pods: Vec<_> = std::fs::read_dir(&cg)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            pods.is_empty(),
            "pod cgroups left in {}: {pods:?}",
            cg.display()
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let under: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&root.display().to_string()))
        .collect();
    ensure!(under.is_empty(), "mounts left under the root: {under:?}");
    ensure!(!lab.agents[0].data_dir.exists(), "the data dir is left");
    ensure!(!root.join("run/baton").exists(), "the run dir is left");
    for f in FILES {
        ensure!(root.join(f).symlink_metadata().is_err(), "{f} left");
    }
    Ok(())
}
