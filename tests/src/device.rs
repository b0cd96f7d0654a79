//! The emulated-device scenario (tests/tests/device_*.rs): a Pi-shaped card image flashed
//! with the real `baton flash` against a coordinator in a lab's hub, booted on an emulated
//! board ([`crate::vm`]), watched as it joins, runs containers, and survives a power cut.
//!
//! QEMU runs in the hub's network namespace. Its user network NATs the guest's connections
//! through QEMU's own sockets, so the device reaches the coordinator, the broker and the
//! registry at the hub's address, as a board on a LAN reaches a coordinator by its LAN
//! address; the hostPort check goes the other way, through a `hostfwd` port on the hub's
//! loopback.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::device_ota::{BoardOta, OtaFigures};
use crate::fleet::{is_running, node_of, text};
use crate::vm::{self, Board, Vm};
use crate::{items, repo_root, sh, wait_for, Broker, Lab};

/// The guest's hostPort, and the hub-loopback port QEMU forwards to it.
pub const HOST_PORT: u16 = 18080;
const FORWARDED: u16 = 28080;

/// Deadlines, with room for a loaded 2-core machine under TCG (measured there: boot to
/// userspace 35-60 s, power-on to Ready about 2 min).
const USERSPACE: Duration = Duration::from_secs(240);
const FIRST_BOOT: Duration = Duration::from_secs(420);
const READY: Duration = Duration::from_secs(360);
const PODS: Duration = Duration::from_secs(300);
/// systemd's greeting as PID 1 (the rest of the line is colored).
const USERSPACE_LINE: &str = "Welcome to ";

/// Whether a device test is skipped: only on an explicit `BATON_E2E_SKIP_DEVICES`, `1` for
/// every board or a comma-separated list of boards (`armhf`: scripts/test.sh skips the
/// 32-bit board while CI builds only the aarch64 binaries).
pub fn skipped(test: &str, board: &str) -> bool {
    let var = std::env::var("BATON_E2E_SKIP_DEVICES").unwrap_or_default();
    let skip = var == "1" || var.split(',').any(|b| b.trim() == board);
    if skip {
        eprintln!("{test}: skipped (BATON_E2E_SKIP_DEVICES={var})");
    }
    skip
}

/// Where the cross-built agents are: `$BATON_CROSS_DIR`, else `<repo>/target/cross`,
/// laid out as `baton flash --agents-dir` reads it (`<triple>/baton-agent`).
pub fn cross_dir() -> PathBuf {
    std::env::var_os("BATON_CROSS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cross"))
}

/// The cross-built agent for `triple`, or a failure naming how to build it.
pub fn require_agent(triple: &str) -> Result<PathBuf> {
    require_cross(triple, "baton-agent")
}

/// The cross-built binary `name` (`baton-agent` or `baton`) for `triple`, or a failure
/// naming how to build it. Without `BATON_CROSS_DIR`, `cross/build.sh TRIPLE` first: cached
/// by its inputs (seconds when nothing changed, so never a stale binary), and it waits for a
/// build of the target already running (scripts/test.sh builds them beside the tests).
pub fn require_cross(triple: &str, name: &str) -> Result<PathBuf> {
    if std::env::var_os("BATON_CROSS_DIR").is_none() {
        sh(Command::new(repo_root().join("cross/build.sh")).arg(triple))
            .with_context(|| format!("cross/build.sh {triple}"))?;
    }
    let path = cross_dir().join(triple).join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build the ARM binaries first (cross/build.sh {triple}, which writes \
         target/cross/<triple>/{name}), or point BATON_CROSS_DIR at a folder holding \
         {triple}/{name}; BATON_E2E_SKIP_DEVICES=1 skips the emulated-device tests",
        path.display()
    );
    Ok(path)
}

/// What the scenario measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub image_build: Duration,
    pub flash: Duration,
    /// Power-on to the cut of the interrupted first boot ([`Device::power_cut_in_first_boot`]):
    /// what that boot cost on top of the uninterrupted flow.
    pub cut_first_boot: Option<Duration>,
    pub first_userspace: Duration,
    pub first_boot: Duration,
    pub power_on_to_ready: Duration,
    pub second_boot_to_ready: Duration,
    pub pods_running: Duration,
    pub offline_pods_back: Duration,
    pub back_ready: Duration,
    /// The agent update of [`Device::ota`].
    pub ota: Option<OtaFigures>,
    pub total: Duration,
}

/// One device scenario: the board, the agent flashed on it, what the node must show.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub board: Board,
    /// The flashed agent's target triple (`<cross dir>/<triple>/baton-agent`).
    pub triple: &'static str,
    /// `baton flash --arch`, where the default (detected from the card) is not `triple`.
    pub flash_arch: Option<&'static str>,
    /// The ARCH `baton get nodes` must show.
    pub arch: &'static str,
    /// Another agent build the board must be able to run, checked with `--version` from a
    /// pod: for a target whose board cannot be emulated here (ARMv6, a Pi Zero).
    pub also_runs: Option<&'static str>,
    /// Cut the power in the middle of first boot, the moment `baton-agent install` has
    /// moved the join token off the boot partition and before firstrun.sh is done, then
    /// power on again: first boot must still complete and the device enroll exactly once.
    pub power_cut_in_first_boot: bool,
    /// Run the 32-bit libcontainer patch's own test (cross/libcontainer-32bit, built by
    /// `cross/test-libcontainer.sh --build` for armv7) on the board, from a privileged pod
    /// (the coordinator then runs with `--allow-privileged`). Meant for the 32-bit board;
    /// an arm64 board runs it too, through its kernel's compat mode.
    pub libcontainer_patch_test: bool,
    /// At the end, roll out this source's 0.2.1 for `triple` and cut the power while the
    /// node is on probation ([`crate::device_ota`]). The coordinator then has a release
    /// key from the start, which the device pins at enrollment.
    pub ota: bool,
}

/// Where a pod finds [`Device::also_runs`]'s agent: the card's boot partition, mounted
/// at /boot/firmware on the board.
const EXTRA_AGENT: &str = "extra-agent";
/// [`Device::libcontainer_patch_test`]'s program on the boot partition, and the file its
/// pod writes its output to there.
const PATCH_TEST: &str = "libcontainer-32bit-test";
const PATCH_TEST_OUT: &str = "libcontainer-32bit-test.out";

/// Runs the whole scenario for `dev`.
pub fn scenario(dev: Device) -> Result<Figures> {
    let started = Instant::now();
    require_agent(dev.triple)?;
    if let Some(t) = dev.also_runs {
        require_agent(t)?;
    }
    let patch_test = match dev.libcontainer_patch_test {
        true => Some(libcontainer_patch_test()?),
        false => None,
    };
    let board = dev.board;
    let arch = dev.arch;
    let mut fig = Figures::default();
    let t = Instant::now();
    let base = vm::device_image(board)?;
    fig.image_build = t.elapsed();

    let mut lab = Lab::start_with(
        &format!("d{}", &board.image_arch()[3..]),
        0,
        Broker::Embedded,
        &[],
    )?;
    // The extra agent's and the patch test's pods read them from the boot partition
    // through a hostPath; the patch test makes mount namespaces and device nodes.
    let mut extra = Vec::new();
    if dev.also_runs.is_some() || patch_test.is_some() {
        extra.extend(["--allow-host-path", "/boot/firmware"]);
    }
    if patch_test.is_some() {
        extra.push("--allow-privileged");
    }
    let mut ota = match dev.ota {
        true => Some(BoardOta::prepare(&lab, dev.triple)?),
        false => None,
    };
    let ota_flags = ota
        .as_ref()
        .map(BoardOta::coordinator_flags)
        .unwrap_or_default();
    extra.extend(ota_flags.iter().map(String::as_str));
    lab.restart_coordinator_enrolling(&extra)?;
    let mut vm = lab_board(&lab, board, &base)?;
    vm.forward(FORWARDED, HOST_PORT);
    if let Some(t) = &patch_test {
        vm::put_boot_file(&vm.image, PATCH_TEST, t)?;
    }
    let r = run(&mut lab, &mut vm, &mut fig, dev, ota.as_mut());
    if r.is_err() {
        post_mortem(&lab, &vm);
    }
    fig.total = started.elapsed();
    if let Some(c) = fig.cut_first_boot {
        println!("device {arch}: power cut during first boot {c:.1?} after power-on");
    }
    println!(
        "device {arch}: image {:.0?} (cached or built), flash {:.1?}, first boot: userspace {:.1?}, \
         firstrun done and rebooted {:.1?}; power-on to Ready {:.1?} (second boot {:.1?}); \
         pods running {:.1?} after apply; after a power cut with the coordinator down, \
         pods back {:.1?}, Ready again {:.1?} after the coordinator; whole scenario {:.0?}",
        fig.image_build,
        fig.flash,
        fig.first_userspace,
        fig.first_boot,
        fig.power_on_to_ready,
        fig.second_boot_to_ready,
        fig.pods_running,
        fig.offline_pods_back,
        fig.back_ready,
        fig.total
    );
    if let Some(o) = &fig.ota {
        println!(
            "device {arch}: agent update {} -> {}: downloaded {} B for a {} B binary; \
             upgrade to probation {:.1?}, to committed {:.1?} (power cut in probation, \
             power-on to committed {:.1?})",
            crate::ota::FROM,
            crate::ota::TO,
            o.downloaded,
            o.size,
            o.to_probation,
            o.to_committed,
            o.boot_to_committed
        );
    }
    r?;
    Ok(fig)
}

/// A `board` for `lab`: a copy of the card `base` in the lab's directory, QEMU in its hub.
pub fn lab_board(lab: &Lab, board: Board, base: &std::path::Path) -> Result<Vm> {
    let card = lab.dir.path().join("card.img");
    vm::copy_image(base, &card)?;
    Vm::new(board, &card, &lab.dir.path().join("vm"), Some(&lab.hub))
}

/// What a failed scenario leaves to read: the lab's logs and the console's last lines.
pub fn post_mortem(lab: &Lab, vm: &Vm) {
    lab.dump_logs();
    eprintln!(
        "----- this boot's network and agent lines ({}) -----\n{}",
        vm.serial_path().display(),
        vm.network_lines()
    );
    eprintln!(
        "----- last lines of the serial console ({}) -----\n{}",
        vm.serial_path().display(),
        vm.tail(150)
    );
}

fn run(
    lab: &mut Lab,
    vm: &mut Vm,
    fig: &mut Figures,
    dev: Device,
    ota: Option<&mut BoardOta>,
) -> Result<()> {
    let arch = dev.arch;
    let node = "pi-1";
    let hub = lab.hub_ip();
    let registry = lab.registry();

    // baton flash, as an operator would, with the device's view of the coordinator.
    let t = Instant::now();
    let cross = cross_dir().display().to_string();
    let card = vm.image.display().to_string();
    let mqtt = format!("mqtt://{hub}:1883");
    let api = format!("https://{hub}:{}", crate::ENROLL_PORT);
    let mut args = vec![
        "flash",
        &card,
        "--name",
        node,
        "--labels",
        "board=qemu-virt",
        "--agents-dir",
        &cross,
        "--mqtt",
        &mqtt,
        "--api",
        &api,
        "--insecure-registry",
        &registry,
        "--token-ttl",
        "1h",
    ];
    if let Some(a) = dev.flash_arch {
        args.extend(["--arch", a]);
    }
    let out = lab.baton_raw(&args, None)?;
    fig.flash = t.elapsed();
    ensure!(
        out.status.success(),
        "baton flash: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(report.contains("first boot: firstrun.sh"), "{report}");
    let cmdline = String::from_utf8(vm::boot_file(&vm.image, "cmdline.txt")?)?;
    ensure!(
        cmdline.contains("systemd.run=/boot/firmware/firstrun.sh"),
        "{cmdline}"
    );
    if let Some(t) = dev.also_runs {
        vm::put_boot_file(&vm.image, EXTRA_AGENT, &require_agent(t)?)?;
    }

    if dev.power_cut_in_first_boot {
        fig.cut_first_boot = Some(cut_during_firstrun(vm)?);
    }

    // First power-on (or the one after the cut): systemd runs firstrun.sh (the agent
    // installed from the boot partition), which removes its hook, and systemd reboots;
    // -no-reboot ends QEMU there.
    vm.power_on()?;
    fig.first_userspace = vm.wait_console(USERSPACE_LINE, USERSPACE)?;
    fig.first_boot = vm.wait_off(FIRST_BOOT).with_context(|| {
        format!(
            "firstrun.sh did not reboot the board; console:\n{}",
            vm.tail(60)
        )
    })?;
    let cmdline = String::from_utf8(vm::boot_file(&vm.image, "cmdline.txt")?)?;
    ensure!(
        !cmdline.contains("systemd.run") && cmdline.contains("root=/dev/vda2"),
        "firstrun.sh left cmdline.txt as {cmdline:?}"
    );
    for gone in ["firstrun.sh", "baton/join-token", "baton/baton-agent"] {
        ensure!(
            vm::boot_file(&vm.image, gone).is_err(),
            "{gone} is still on the boot partition after first boot"
        );
    }

    // Second power-on: the installed agent enrolls (if it did not before the reboot) and
    // joins.
    vm.power_on()?;
    let row = wait_for(&format!("{node} to be Ready"), READY, || {
        node_row(lab, node).map(|r| r.filter(|r| r[1] == "Ready"))
    })?;
    fig.second_boot_to_ready = vm.since_power_on();
    fig.power_on_to_ready = fig.first_boot + fig.second_boot_to_ready;
    ensure!(
        row[2] == arch,
        "{node} shows ARCH {} (want {arch}): {row:?}",
        row[2]
    );
    let log = coordinator_log(lab);
    ensure!(
        log.matches("node enrolled").count() == 1,
        "the device did not enroll exactly once:\n{log}"
    );
    if dev.power_cut_in_first_boot {
        println!(
            "device {arch}: after the power cut in first boot, enrolled once ({} enrollment \
             retried by the same device)",
            log.matches("enrollment retried").count()
        );
    }

    // Containers on the ARM kernel: a Deployment with a hostPort, a pod that outgrows its
    // 32Mi limit, and one that tries a syscall the default seccomp profile denies.
    let t = Instant::now();
    let mut yaml = manifest(&registry);
    if dev.also_runs.is_some() {
        yaml.push_str(&extra_agent_pod(&registry));
    }
    if dev.libcontainer_patch_test {
        yaml.push_str(&patch_test_pod(&registry));
    }
    lab.apply(&yaml)?;
    wait_for("web to run on the device", PODS, || {
        Ok(web_pod(lab)?
            .filter(|p| is_running(p) && node_of(p) == node)
            .map(|_| ()))
    })?;
    let info = wait_for("the hostPort to answer through hostfwd", PODS, || {
        Ok(http_get(lab, "/cgi-bin/info").filter(|b| b.contains("version=1")))
    })?;
    fig.pods_running = t.elapsed();
    ensure!(info.contains("hostname=web-"), "{info}");
    let hog = wait_for("hog to end", PODS, || {
        let p = lab.get_json(&["get", "pod", "hog"])?;
        Ok((p["status"]["phase"] == "Failed" || p["status"]["phase"] == "Succeeded").then_some(p))
    })?;
    ensure!(
        hog["status"]["containerStatuses"][0]["reason"] == "OOMKilled",
        "hog was not OOMKilled at 32Mi: {hog}"
    );
    let sc = wait_for("seccomp-probe to end", PODS, || {
        let p = lab.get_json(&["get", "pod", "seccomp-probe"])?;
        Ok((p["status"]["phase"] == "Failed" || p["status"]["phase"] == "Succeeded").then_some(p))
    })?;
    let code = &sc["status"]["containerStatuses"][0]["state"]["exited"]["exitCode"];
    // Failed at the end, so that one run also says how the rest went.
    let seccomp = match code.as_i64() {
        Some(0) => None,
        Some(3) => Some(format!("seccomp-probe ran without a seccomp filter (Seccomp: is not 2): is the agent built with the seccomp feature? {sc}")),
        Some(4) => Some(format!("unshare(CLONE_NEWUSER) worked under the default seccomp profile: {sc}")),
        _ => Some(format!("unshare failed, but not with EPERM: {sc}")),
    };
    if let Some(t) = dev.also_runs {
        let p = wait_for("extra-agent to end", PODS, || {
            let p = lab.get_json(&["get", "pod", "extra-agent"])?;
            Ok(
                (p["status"]["phase"] == "Failed" || p["status"]["phase"] == "Succeeded")
                    .then_some(p),
            )
        })?;
        let code = &p["status"]["containerStatuses"][0]["state"]["exited"]["exitCode"];
        ensure!(
            code.as_i64() == Some(0),
            "the {t} agent did not run on the {} board (`baton-agent --version` in a pod): {p}",
            arch
        );
        println!("device {arch}: the {t} agent runs there (`--version` from a pod)");
    }
    if dev.libcontainer_patch_test {
        check_patch_test(lab, vm, arch)?;
    }

    // Power cut, and the board boots again while the coordinator is down: the agent runs
    // its pods from what it stored (offline autonomy), the hostPort answers again.
    vm.power_cut();
    lab.kill_coordinator();
    vm.power_on()?;
    wait_for(
        "the hostPort to answer again, coordinator down",
        READY,
        || Ok(http_get(lab, "/cgi-bin/info").filter(|b| b.contains("version=1"))),
    )?;
    fig.offline_pods_back = vm.since_power_on();
    // The coordinator back: the node is Ready with the identity it has, not enrolled again.
    // Ready from the coordinator's store is not enough: wait for a heartbeat after the
    // restart.
    let t = Instant::now();
    lab.start_coordinator()?;
    let stored = heartbeat(lab, node)?;
    wait_for(
        &format!("a heartbeat of {node} after the restart"),
        READY,
        || {
            let n = lab.get_json(&["get", "node", node])?;
            Ok(
                (n["status"]["ready"] == true && text(&n["status"]["lastHeartbeat"]) != stored)
                    .then_some(()),
            )
        },
    )?;
    wait_for("web to show Running again", PODS, || {
        Ok(web_pod(lab)?.filter(is_running).map(|_| ()))
    })?;
    fig.back_ready = t.elapsed();
    let log = coordinator_log(lab);
    ensure!(
        !log.contains("node enrolled") && !log.contains("enrollment retried"),
        "the device enrolled again after the power cut:\n{log}"
    );
    if let Some(ota) = ota {
        fig.ota = Some(ota.run(lab, vm, node, &pods_answer)?);
    }
    if let Some(e) = seccomp {
        bail!(e);
    }
    Ok(())
}

/// Powers the board on for its first boot and pulls the plug the moment the join token
/// is gone from the boot partition: `baton-agent install` has durably moved it into
/// /etc/baton-agent/agent.env, and firstrun.sh has yet to start the agent, free the boot
/// partition and remove its hook. The next boot runs firstrun.sh again, which installs from
/// what the first run left. Returns the time from power-on to the cut.
fn cut_during_firstrun(vm: &mut Vm) -> Result<Duration> {
    vm.power_on()?;
    vm.wait_console(USERSPACE_LINE, USERSPACE)?;
    let start = Instant::now();
    while vm::boot_file_exists(&vm.image, "baton/join-token")? {
        ensure!(
            vm.is_on(),
            "the board went off before install moved the join token; console:\n{}",
            vm.tail(60)
        );
        ensure!(
            start.elapsed() < FIRST_BOOT,
            "install did not move the join token off the boot partition within {FIRST_BOOT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    vm.power_cut();
    let at = vm.since_power_on();
    let cmdline = String::from_utf8(vm::boot_file(&vm.image, "cmdline.txt")?)?;
    ensure!(
        cmdline.contains("systemd.run=/boot/firmware/firstrun.sh"),
        "the cut came too late, firstrun.sh had already removed its hook: {cmdline:?}"
    );
    Ok(at)
}

/// `cross/test-libcontainer.sh --build` (cached by cargo): the patch test, built for armv7
/// (which an arm64 board runs too, in its kernel's 32-bit compat mode).
fn libcontainer_patch_test() -> Result<PathBuf> {
    let out = sh(Command::new("nice")
        .args(["-n", "10"])
        .arg(repo_root().join("cross/test-libcontainer.sh"))
        .arg("--build"))
    .context("building the libcontainer patch test (cross/test-libcontainer.sh --build)")?;
    let text = String::from_utf8(out.stdout)?;
    let path = PathBuf::from(text.lines().last().unwrap_or_default());
    ensure!(
        path.is_file(),
        "cross/test-libcontainer.sh printed {text:?}"
    );
    Ok(path)
}

/// The patch test's pod ended with 0 and its output (on the boot partition) says it ran
/// as a 32-bit program and every check passed, none skipped.
fn check_patch_test(lab: &Lab, vm: &Vm, arch: &str) -> Result<()> {
    let p = wait_for("libcontainer-32bit to end", PODS, || {
        let p = lab.get_json(&["get", "pod", "libcontainer-32bit"])?;
        Ok((p["status"]["phase"] == "Failed" || p["status"]["phase"] == "Succeeded").then_some(p))
    })?;
    let out = vm::boot_file(&vm.image, PATCH_TEST_OUT)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(no {PATCH_TEST_OUT}: {e:#})"));
    println!("device {arch}: libcontainer 32-bit patch test, from a pod:\n{out}");
    let code = &p["status"]["containerStatuses"][0]["state"]["exited"]["exitCode"];
    ensure!(
        code.as_i64() == Some(0),
        "the libcontainer patch test failed on the {arch} board: {p}"
    );
    ensure!(
        out.contains("usize 32 bits")
            && out.lines().any(|l| l == "all ok")
            && out.contains("ok   rlimit above 4 GiB")
            && out.contains("ok   console: devpts ptmx accepted")
            && out.contains("ok   console: a 5:2 node on tmpfs refused"),
        "the libcontainer patch test did not pass every check as a 32-bit program"
    );
    Ok(())
}

/// The patch test in a privileged pod (it makes a mount namespace, a /dev tmpfs and a
/// device node), its output written to the boot partition and synced, for the host to read.
fn patch_test_pod(registry: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: libcontainer-32bit}}
spec:
  restartPolicy: Never
  volumes: [{{name: fw, hostPath: {{path: /boot/firmware}}}}]
  containers:
  - name: test
    image: {registry}/baton/busybox:1
    securityContext: {{privileged: true}}
    command: [sh, -c, "/fw/{PATCH_TEST} >/fw/{PATCH_TEST_OUT} 2>&1; rc=$?; sync; exit $rc"]
    volumeMounts: [{{name: fw, mountPath: /fw}}]
"#
    )
}

/// Waits until `web` runs again and its hostPort answers (after a boot of the board).
fn pods_answer(lab: &Lab) -> Result<()> {
    wait_for("web to show Running again", PODS, || {
        Ok(web_pod(lab)?.filter(is_running).map(|_| ()))
    })?;
    wait_for("the hostPort to answer again", PODS, || {
        Ok(http_get(lab, "/cgi-bin/info").filter(|b| b.contains("version=1")))
    })?;
    Ok(())
}

/// The device's row of `baton get nodes`: NAME STATUS ARCH ...
fn node_row(lab: &Lab, node: &str) -> Result<Option<Vec<String>>> {
    let out = lab.baton(&["get", "nodes"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|r| r.len() >= 3 && r[0] == node))
}

/// The node's `lastHeartbeat` as the coordinator has it.
pub fn heartbeat(lab: &Lab, node: &str) -> Result<String> {
    Ok(text(
        &lab.get_json(&["get", "node", node])?["status"]["lastHeartbeat"],
    ))
}

/// The pod of [`web_deployment`], if there is one.
pub fn web_pod(lab: &Lab) -> Result<Option<Value>> {
    Ok(items(&lab.get_json(&["get", "pods"])?)
        .into_iter()
        .find(|p| text(&p["metadata"]["name"]).starts_with("web-")))
}

/// GET `path` from the device's hostPort, through QEMU's forward on the hub's loopback.
fn http_get(lab: &Lab, path: &str) -> Option<String> {
    hub_get(lab, &format!("http://127.0.0.1:{FORWARDED}{path}"))
}

/// GET `url` from the hub (5 s at most): the body, if it answered 2xx.
pub fn hub_get(lab: &Lab, url: &str) -> Option<String> {
    let out = lab
        .hub
        .cmd("curl")
        .args(["-fsS", "--max-time", "5"])
        .arg(url)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod that runs the extra agent from the boot partition: exits 0 if its `--version`
/// answers.
fn extra_agent_pod(registry: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: extra-agent}}
spec:
  restartPolicy: Never
  volumes: [{{name: fw, hostPath: {{path: /boot/firmware}}}}]
  containers:
  - name: version
    image: {registry}/baton/busybox:1
    command: [sh, -c, "v=$(/fw/{EXTRA_AGENT} --version) || exit 1; echo $v; case $v in 'baton-agent '*) exit 0;; esac; exit 2"]
    volumeMounts: [{{name: fw, mountPath: /fw, readOnly: true}}]
"#
    )
}

/// `web`: one http-echo pod (the multi-arch image) answering on [`HOST_PORT`].
pub fn web_deployment(registry: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: {registry}/baton/http-echo:1
        ports:
        - {{containerPort: 8080, hostPort: {HOST_PORT}}}
        resources:
          limits: {{memory: 64Mi}}
"#
    )
}

/// The workloads: [`web_deployment`], `hog` (32Mi, allocates 100M: OOMKilled) and
/// `seccomp-probe`, which exits 0 only if its process is filtered (`Seccomp: 2`) and
/// `unshare -U` (CLONE_NEWUSER, denied by RuntimeDefault) fails with EPERM; 3, 4 and 5
/// say which part failed.
fn manifest(registry: &str) -> String {
    web_deployment(registry)
        + &format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: {registry}/baton/busybox:1
    command: [sh, -c, "exec dd if=/dev/zero of=/dev/null bs=100M count=1"]
    resources:
      limits: {{memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: seccomp-probe}}
spec:
  restartPolicy: Never
  containers:
  - name: probe
    image: {registry}/baton/busybox:1
    command: [sh, -c, "grep -q '^Seccomp:[[:space:]]*2' /proc/self/status || exit 3; out=$(unshare -U -r true 2>&1) && exit 4; case $out in *'Operation not permitted'*) exit 0;; esac; echo $out; exit 5"]
"#
        )
}

/// What the lab's coordinator has logged so far (empty when it is not running).
fn coordinator_log(lab: &Lab) -> String {
    lab.coordinator
        .as_ref()
        .map(|p| p.log())
        .unwrap_or_default()
}
