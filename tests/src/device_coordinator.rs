//! The coordinator on an emulated Pi (tests/tests/device_coordinator.rs): the aarch64 `baton`
//! runs as a systemd service on the arm64 board, with its store on the card's ext4 root, and
//! a real agent on the host (a lab agent in its own namespace) joins it.
//!
//! The card is set up as docs/devices.md, "A Pi as the coordinator", says: the unit and the
//! environment file are taken from that section's `file=` blocks (so the page cannot drift
//! from what is tested) and written, with the binary and the enable link, into the root
//! partition before the first power-on ([`vm::edit_root`]). The board has no ssh, so a
//! test-only one-shot unit stands in for the operator's `ssh pi sudo cat admin.conf`: at
//! each boot it prints the CLI config, the CA, `uname -m` and the service's executable on
//! the serial console, once the coordinator has written them.
//!
//! QEMU runs in the hub namespace and forwards the API and MQTT ports from the hub's
//! bridge address into the guest, so the CLI in the hub and the agent in its namespace
//! reach the board there, as a LAN reaches a Pi ([`Remote`]); the coordinator's
//! certificates name that address (`BATON_TLS_SAN`). The registry stays in the hub.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::Engine as _;

use crate::device::{
    heartbeat, hub_get, lab_board, post_mortem, require_cross, web_deployment, web_pod, HOST_PORT,
};
use crate::fleet::{is_running, node_of, text};
use crate::vm::{self, Board, Vm};
use crate::{repo_root, wait_for, Lab, Remote};

/// The coordinator's build: a Pi 4/5 on a 64-bit OS.
pub const TRIPLE: &str = "aarch64-unknown-linux-musl";
/// The ports of docs/devices.md's coordinator.env, forwarded 1:1 from the hub's address.
const API_PORT: u16 = 7474;
const MQTT_PORT: u16 = 8883;
/// The Pi's address in docs/devices.md's files, replaced by the hub's.
const DOC_ADDRESS: &str = "10.0.0.5";
const SECTION: &str = "## A Pi as the coordinator";
/// The start of the hand-off unit's console line (anywhere in a line: the console may not
/// be at a line's start when it comes).
const HANDOFF: &str = "baton-handoff arch=";

/// Deadlines, with room for a loaded 2-core machine under TCG (the agent scenario measured
/// boot to userspace 13-60 s there).
const API: Duration = Duration::from_secs(300);
const READY: Duration = Duration::from_secs(180);
const PODS: Duration = Duration::from_secs(180);

/// What the scenario measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub image_build: Duration,
    pub card_setup: Duration,
    pub power_on_to_api: Duration,
    pub power_on_to_agent_ready: Duration,
    pub pods_running: Duration,
    pub power_cut_to_api: Duration,
    pub power_cut_to_ready: Duration,
    /// hostPort checks during the power cut and the reboot, every one answered.
    pub offline_checks: u32,
    pub total: Duration,
}

/// Runs the whole scenario.
pub fn scenario() -> Result<Figures> {
    let started = Instant::now();
    let baton = require_cross(TRIPLE, "baton")?;
    ensure!(
        elf_machine(&baton)? == EM_AARCH64,
        "{} is not an aarch64 executable",
        baton.display()
    );
    let mut fig = Figures::default();
    let t = Instant::now();
    let base = vm::device_image(Board::Arm64)?;
    fig.image_build = t.elapsed();

    let mut lab = Lab::start_bare("dco", 1)?;
    lab.start_registry()?;
    let hub = lab.hub_ip();
    lab.remote = Some(Remote {
        api: format!("https://{hub}:{API_PORT}"),
        mqtt: format!("mqtts://{hub}:{MQTT_PORT}"),
    });
    let mut vm = lab_board(&lab, Board::Arm64, &base)?;
    vm.forward_on(&hub, API_PORT, API_PORT);
    vm.forward_on(&hub, MQTT_PORT, MQTT_PORT);
    let r = run(&mut lab, &mut vm, &mut fig, &baton);
    if r.is_err() {
        post_mortem(&lab, &vm);
    }
    fig.total = started.elapsed();
    println!(
        "device coordinator arm64: image {:.0?} (cached or built), card set up {:.1?}; \
         power-on to the API answering {:.1?}, to the host agent Ready {:.1?}; pods running \
         {:.1?} after apply; power cut: power-on to the API {:.1?}, to the agent Ready again \
         {:.1?}, hostPort answered {} checks meanwhile; whole scenario {:.0?}",
        fig.image_build,
        fig.card_setup,
        fig.power_on_to_api,
        fig.power_on_to_agent_ready,
        fig.pods_running,
        fig.power_cut_to_api,
        fig.power_cut_to_ready,
        fig.offline_checks,
        fig.total
    );
    r?;
    Ok(fig)
}

fn run(lab: &mut Lab, vm: &mut Vm, fig: &mut Figures, baton: &Path) -> Result<()> {
    let t = Instant::now();
    install_coordinator(lab, &vm.image, baton)?;
    fig.card_setup = t.elapsed();

    // First power-on: the coordinator's first start (CA, admin token, store), then the
    // operator's copy of admin.conf.
    vm.power_on()?;
    let handoff = wait_handoff(vm)?;
    ensure!(
        handoff.arch == "aarch64" && handoff.exe == "/usr/local/bin/baton",
        "the coordinator does not run as the aarch64 baton on the ARM kernel: uname -m {:?}, \
         the service's executable {:?}",
        handoff.arch,
        handoff.exe
    );
    write_cli_config(lab, &handoff)?;
    wait_api(lab, vm)?;
    fig.power_on_to_api = vm.since_power_on();

    // The host's agent joins with a join token minted through the board's API.
    let node = lab.agents[0].name.clone();
    let token = lab.join_token(&["--ttl", "10m", "--node-name", &node])?;
    let api = lab.api_url();
    lab.agent_args = vec![
        "--coordinator-api".into(),
        api,
        "--join-token".into(),
        token,
    ];
    lab.spawn_agent(0)?;
    wait_ready(lab, &node, None)?;
    fig.power_on_to_agent_ready = vm.since_power_on();
    let identity = fingerprint(lab, &node)?;

    // A Deployment from the project's images, on the host agent.
    let t = Instant::now();
    lab.apply(&web_deployment(&lab.registry()))?;
    let pod = wait_for("web to run on the host agent", PODS, || {
        Ok(web_pod(lab)?.filter(|p| is_running(p) && node_of(p) == node))
    })?;
    let addr = lab.agents[0].addr.clone();
    wait_for("the hostPort to answer", PODS, || Ok(host_port(lab, &addr)))?;
    fig.pods_running = t.elapsed();

    // Power cut: the agent's pod keeps answering while the board is off and booting.
    vm.power_cut();
    let (mut checks, mut failed) = (0, 0);
    let mut offline_check = |lab: &Lab| {
        checks += 1;
        if host_port(lab, &addr).is_none() {
            failed += 1;
        }
    };
    for _ in 0..3 {
        offline_check(lab);
        std::thread::sleep(Duration::from_secs(1));
    }
    vm.power_on()?;
    wait_for("the API after the power cut", API, || {
        offline_check(lab);
        ensure!(vm.is_on(), "QEMU ended: {}", vm.qemu_log());
        Ok(lab.baton(&["get", "nodes"]).ok().map(|_| ()))
    })?;
    fig.power_cut_to_api = vm.since_power_on();
    fig.offline_checks = checks;
    ensure!(
        failed == 0,
        "the pod's hostPort did not answer {failed} of {checks} checks while the coordinator \
         was down"
    );
    ensure!(
        lab.agents[0].proc.as_mut().is_some_and(|p| p.is_running()),
        "the agent exited while the coordinator was down"
    );

    // The store survived: the Deployment, its pod and the node with its identity.
    let stored = lab.get_json(&["get", "deployment", "web"])?;
    ensure!(
        stored["spec"]["replicas"] == 1,
        "the Deployment after the power cut: {stored}"
    );
    ensure!(
        fingerprint(lab, &node)? == identity,
        "{node}'s identity changed across the power cut"
    );
    let before = heartbeat(lab, &node)?;
    wait_ready(lab, &node, Some(&before))?;
    fig.power_cut_to_ready = vm.since_power_on();
    let again = wait_for("web to show Running again", PODS, || {
        Ok(web_pod(lab)?.filter(is_running))
    })?;
    ensure!(
        text(&again["metadata"]["name"]) == text(&pod["metadata"]["name"])
            && again["status"]["containerStatuses"][0]["restartCount"]
                == pod["status"]["containerStatuses"][0]["restartCount"],
        "web's pod was replaced or restarted across the coordinator's power cut: before \
         {pod}, after {again}"
    );
    Ok(())
}

/// What the hand-off unit printed on this boot's console.
struct Handoff {
    arch: String,
    exe: String,
    admin_conf: String,
    ca_pem: String,
}

/// Waits for this boot's complete hand-off line.
fn wait_handoff(vm: &mut Vm) -> Result<Handoff> {
    wait_for("the coordinator's admin.conf on the console", API, || {
        ensure!(vm.is_on(), "QEMU ended: {}", vm.qemu_log());
        // A line is complete once its end of line is on the console.
        let console = vm.console();
        let Some(line) = console
            .split_inclusive('\n')
            .find(|l| l.contains(HANDOFF) && l.ends_with('\n'))
        else {
            return Ok(None);
        };
        let field = |k: &str| -> Result<String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_owned)
                .with_context(|| format!("no {k}= in the hand-off line {line:?}"))
        };
        let decode = |k: &str| -> Result<String> {
            let b = base64::engine::general_purpose::STANDARD
                .decode(field(k)?)
                .with_context(|| format!("{k} in the hand-off line {line:?}"))?;
            Ok(String::from_utf8(b)?)
        };
        Ok(Some(Handoff {
            arch: field("arch")?,
            exe: field("exe")?,
            admin_conf: decode("admin.conf")?,
            ca_pem: decode("ca.crt")?,
        }))
    })
}

/// The operator's CLI config, from the board's admin.conf: its admin token, with the CA
/// inline and the board's address (the CLI's `BATON_SERVER`, [`Lab::api_url`]).
fn write_cli_config(lab: &Lab, h: &Handoff) -> Result<()> {
    let token = h
        .admin_conf
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .map(|t| t.trim().trim_matches('"').to_owned())
        .with_context(|| format!("no token in the board's admin.conf: {:?}", h.admin_conf))?;
    ensure!(
        h.ca_pem.contains("BEGIN CERTIFICATE"),
        "the board's ca.crt: {:?}",
        h.ca_pem
    );
    let conf = lab.admin_conf();
    fs::create_dir_all(conf.parent().context("admin.conf's folder")?)?;
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    fs::write(
        &conf,
        format!(
            "server: {}\ntoken: {}\ncertificate-authority: {}\n",
            quote(&lab.api_url()),
            quote(&token),
            quote(&h.ca_pem)
        ),
    )?;
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Waits until the CLI in the hub gets an answer from the board's API (TLS checked
/// against the board's CA).
fn wait_api(lab: &Lab, vm: &mut Vm) -> Result<()> {
    wait_for("the board's API", API, || {
        ensure!(vm.is_on(), "QEMU ended: {}", vm.qemu_log());
        Ok(lab.baton(&["get", "nodes"]).ok().map(|_| ()))
    })
}

/// Waits until `node` is Ready, after a heartbeat other than `stale` if given (Ready from
/// the store after a restart is not enough).
fn wait_ready(lab: &Lab, node: &str, stale: Option<&str>) -> Result<()> {
    wait_for(&format!("{node} to be Ready"), READY, || {
        let n = lab.get_json(&["get", "node", node])?;
        Ok((n["status"]["ready"] == true
            && stale.is_none_or(|s| text(&n["status"]["lastHeartbeat"]) != s))
        .then_some(()))
    })
}

/// The node's enrolled key's fingerprint (`baton node identity`).
fn fingerprint(lab: &Lab, node: &str) -> Result<String> {
    let out = lab.baton(&["node", "identity", node, "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let f = text(&v["fingerprint"]);
    ensure!(!f.is_empty(), "{node} has no enrolled identity: {v}");
    Ok(f)
}

/// The http-echo info page at the agent's hostPort, from the hub.
fn host_port(lab: &Lab, addr: &str) -> Option<String> {
    hub_get(lab, &format!("http://{addr}:{HOST_PORT}/cgi-bin/info"))
        .filter(|b| b.contains("version=1"))
}

/// Writes the coordinator onto the card's root, as docs/devices.md says: the section's
/// `file=` blocks (the Pi's address replaced by the hub's), the binary, the enable link;
/// and the test's hand-off unit.
fn install_coordinator(lab: &Lab, card: &Path, baton: &Path) -> Result<()> {
    let stage = lab.dir.path().join("card-root");
    fs::create_dir_all(&stage)?;
    let mut cmds = vec!["mkdir /etc/baton".to_owned()];
    let mut put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let host = stage.join(path.trim_start_matches('/').replace('/', "_"));
        fs::write(&host, bytes)?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode))?;
        cmds.push(format!("write {} {path}", host.display()));
        Ok(())
    };
    let files = doc_files()?;
    let unit = "/etc/systemd/system/baton.service";
    let env = "/etc/baton/coordinator.env";
    for want in [unit, env] {
        ensure!(
            files.iter().any(|(p, _)| p == want),
            "docs/devices.md, {SECTION:?}, has no `file={want}` block"
        );
    }
    for (path, text) in &files {
        let mode = if path == env { 0o600 } else { 0o644 };
        put(
            path,
            text.replace(DOC_ADDRESS, &lab.hub_ip()).as_bytes(),
            mode,
        )?;
    }
    put("/usr/local/bin/baton", &fs::read(baton)?, 0o755)?;
    put(
        "/usr/local/sbin/baton-handoff",
        HANDOFF_SCRIPT.as_bytes(),
        0o755,
    )?;
    put(
        "/etc/systemd/system/baton-handoff.service",
        HANDOFF_UNIT.as_bytes(),
        0o644,
    )?;
    let wants = "/etc/systemd/system/multi-user.target.wants";
    cmds.extend([
        "set_inode_field /etc/baton mode 040700".to_owned(),
        format!("symlink {wants}/baton.service {unit}"),
        format!("symlink {wants}/baton-handoff.service /etc/systemd/system/baton-handoff.service"),
    ]);
    vm::edit_root(card, &cmds)
}

/// The `file=PATH` blocks of docs/devices.md's coordinator section: (PATH, text).
fn doc_files() -> Result<Vec<(String, String)>> {
    let doc = fs::read_to_string(repo_root().join("docs/devices.md"))?;
    let start = doc
        .find(SECTION)
        .context("docs/devices.md lost its section")?;
    let rest = &doc[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        let Some(path) = l.strip_prefix("```").and_then(|info| {
            info.split_whitespace()
                .find_map(|w| w.strip_prefix("file="))
        }) else {
            continue;
        };
        let mut text = String::new();
        for l in lines.by_ref().take_while(|l| !l.starts_with("```")) {
            text.push_str(l);
            text.push('\n');
        }
        out.push((path.to_owned(), text));
    }
    Ok(out)
}

/// Test only, the stand-in for the operator's ssh: one console line with what the
/// operator copies (admin.conf, the CA) and where the coordinator runs. One `echo` is one
/// write to the console, so the line is not split by other services' output.
const HANDOFF_SCRIPT: &str = r#"#!/bin/sh
d=/var/lib/baton
until [ -s $d/admin.conf ] && [ -s $d/pki/ca.crt ]; do sleep 0.2; done
pid=$(systemctl show -p MainPID --value baton.service)
echo "baton-handoff arch=$(uname -m) exe=$(readlink /proc/$pid/exe) admin.conf=$(base64 -w0 $d/admin.conf) ca.crt=$(base64 -w0 $d/pki/ca.crt)" >/dev/console
"#;

const HANDOFF_UNIT: &str = "[Unit]
Description=Test only: print the coordinator's admin.conf on the console (no ssh here)
After=baton.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/baton-handoff

[Install]
WantedBy=multi-user.target
";

const EM_AARCH64: u16 = 183;

/// The `e_machine` of an ELF file.
fn elf_machine(path: &Path) -> Result<u16> {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    fs::File::open(path)?.read_exact(&mut head)?;
    ensure!(
        head[..4] == *b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    Ok(u16::from_le_bytes([head[18], head[19]]))
}
