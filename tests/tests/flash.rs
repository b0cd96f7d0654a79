//! `baton flash` against a real coordinator, on Pi-like images made with Debian's own
//! tools (sfdisk, mkfs.fat) and read back with mtools and checked with fsck.fat, so that
//! neither side of the FAT is only fatfs:
//! - a flashed card carries a single-use token bound to its node, which the coordinator
//!   lists with one use left and which a real agent enrolls with;
//! - a spent or expired `--join-token`, or an agent for another architecture, is refused
//!   with the image byte-identical and no token minted;
//! - `--batch` of three devices gives three images with three distinct tokens, and a
//!   block device (a loop device over an image) flashes like a file;
//! - a mounted image, device, or device with a mounted partition is refused.
//!
//! The arm64 "agent" flashed here is a static aarch64-musl Rust program, the `kv` example
//! app that `images/build.sh` builds before the tests: flash only reads its ELF header.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::{bin, repo_root, sh, wait_for, Lab, Proc};
use sha2::{Digest, Sha256};

const ARM64_TRIPLE: &str = "aarch64-unknown-linux-musl";

fn sha256(p: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(fs::read(p)?)))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Where the root partition of [`pi_image`] starts: 40 MiB.
const ROOT_AT: u64 = 40 << 20;

/// A Pi-like 56 MiB card image: an MBR (sfdisk) with a 39 MiB FAT32 boot partition from
/// 1 MiB (mkfs.fat), holding what a 64-bit Raspberry Pi OS boot partition has that flash
/// reads, and a 16 MiB ext4 root partition (mkfs.ext4) at [`ROOT_AT`].
fn pi_image(dir: &Path, name: &str) -> Result<PathBuf> {
    let img = dir.join(name);
    fs::File::create(&img)?.set_len(56 << 20)?;
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&img)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().context("sfdisk (Debian package fdisk)")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        b"label: dos\nstart=2048, size=79872, type=c\nstart=81920, type=83\n",
    )?;
    ensure!(child.wait()?.success(), "sfdisk failed");
    // 39 MiB of FAT32 in 512-byte clusters, at sector 2048.
    sh(Command::new("mkfs.fat")
        .args(["-F", "32", "-s", "1", "-n", "BOOTFS", "--offset", "2048"])
        .arg(&img)
        .arg("39936"))?;
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rootfs", "-E"])
        .arg(format!("offset={ROOT_AT}"))
        .arg(&img)
        .arg("16M"))?;
    let files: [(&str, &[u8]); 3] = [
        ("config.txt", b"[all]\narm_64bit=1\n"),
        (
            "cmdline.txt",
            b"console=serial0,115200 console=tty1 root=PARTUUID=ba700e01-02 rootfstype=ext4 rootwait\n",
        ),
        ("kernel8.img", b"not really a kernel"),
    ];
    for (n, bytes) in files {
        let src = dir.join(format!("{name}.{n}"));
        fs::write(&src, bytes)?;
        sh(mtools("mcopy", &img).arg(&src).arg(format!("::{n}")))?;
    }
    Ok(img)
}

fn mtools(tool: &str, img: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@1M", img.display()));
    c
}

/// A file of the image's boot partition, read by mtools.
fn mtype(img: &Path, path: &str) -> Result<Vec<u8>> {
    Ok(sh(mtools("mtype", img).arg(format!("::{path}")))?.stdout)
}

/// fsck.fat's read-only check of the boot partition: a clean file system.
fn fsck(img: &Path) -> Result<()> {
    let part = img.with_extension("part");
    let bytes = fs::read(img)?;
    fs::write(&part, &bytes[1 << 20..ROOT_AT as usize])?;
    let out = Command::new("fsck.fat").arg("-n").arg(&part).output()?;
    fs::remove_file(&part)?;
    ensure!(out.status.success(), "fsck.fat -n: {}", text(&out));
    Ok(())
}

/// `--agents-dir` holding the kv app as the arm64 agent.
fn agents_dir(dir: &Path) -> Result<PathBuf> {
    let kv = repo_root().join("images/apps/target/aarch64-unknown-linux-musl/release/kv");
    ensure!(
        kv.exists(),
        "{} is missing: run images/build.sh first (scripts/test.sh does)",
        kv.display()
    );
    let agents = dir.join("agents");
    fs::create_dir_all(agents.join(ARM64_TRIPLE))?;
    fs::copy(&kv, agents.join(ARM64_TRIPLE).join("baton-agent"))?;
    Ok(agents)
}

/// `baton flash TARGET ARGS` in the lab's hub, against its coordinator.
fn flash(lab: &Lab, target: &Path, args: &[&str]) -> Result<Output> {
    let mut a = vec!["flash".to_owned(), target.display().to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    lab.baton_raw(&refs, None)
}

/// The join tokens of `baton token list`: (id, uses left, the rest of the row).
fn join_tokens(lab: &Lab) -> Result<Vec<(String, String, String)>> {
    let out = String::from_utf8(lab.baton(&["token", "list"])?.stdout)?;
    let mut rows = Vec::new();
    let mut in_joins = false;
    for line in out.lines() {
        if line.starts_with("JOIN TOKEN") {
            in_joins = true;
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if in_joins && f.len() >= 2 {
            rows.push((f[0].to_owned(), f[1].to_owned(), line.to_owned()));
        }
    }
    Ok(rows)
}

/// The token id in flash's report (`join token <id>: ...`).
fn reported_ids(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("join token "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect()
}

fn device_args(lab_hub: &str, agents: &str) -> Vec<String> {
    vec![
        "--agents-dir".into(),
        agents.into(),
        "--mqtt".into(),
        format!("mqtt://{lab_hub}:1883"),
        "--api".into(),
        format!("https://{lab_hub}:7475"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_flashed_token_enrolls_once_and_spent_or_expired_tokens_are_refused() -> Result<()> {
    let mut lab = Lab::start_bare("fl", 1)?;
    let r = single(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn single(lab: &mut Lab) -> Result<()> {
    lab.restart_coordinator_enrolling(&[])?;
    let dir = lab.dir.path().to_owned();
    let agents = agents_dir(&dir)?;
    let agents = agents.display().to_string();
    let hub = lab.hub_ip();
    let node = lab.agents[0].name.clone();
    let common = device_args(&hub, &agents);

    // Flash: a single-use token minted for this node, with its labels.
    let img = pi_image(&dir, "card.img")?;
    let mut args = vec!["--name", &node, "--labels", "zone=lab", "--token-ttl", "1h"];
    args.extend(strs(&common));
    let out = flash(lab, &img, &args)?;
    ensure!(out.status.success(), "flash: {}", text(&out));
    let report = String::from_utf8(out.stdout.clone())?;
    let token = String::from_utf8(mtype(&img, "baton/join-token")?)?
        .trim()
        .to_owned();
    let id = token.split('.').nth(1).context("token id")?.to_owned();
    ensure!(reported_ids(&report) == [id.clone()], "report: {report}");
    ensure!(
        !text(&out).contains(&token),
        "flash printed the secret: {report}"
    );
    ensure!(
        report.contains(&node) && report.contains("done in"),
        "{report}"
    );

    // The card as another FAT implementation reads it.
    fsck(&img)?;
    let kv = fs::read(format!("{agents}/{ARM64_TRIPLE}/baton-agent"))?;
    ensure!(
        mtype(&img, "baton/baton-agent")? == kv,
        "agent bytes differ"
    );
    let env = String::from_utf8(mtype(&img, "baton/agent.env")?)?;
    ensure!(env.contains(&format!("BATON_NODE_NAME='{node}'")), "{env}");
    ensure!(
        env.contains(&format!("BATON_COORDINATOR='mqtt://{hub}:1883'")),
        "{env}"
    );
    let cmdline = String::from_utf8(mtype(&img, "cmdline.txt")?)?;
    ensure!(
        cmdline
            .matches("systemd.run=/boot/firmware/firstrun.sh")
            .count()
            == 1,
        "{cmdline}"
    );
    ensure!(!mtype(&img, "firstrun.sh")?.is_empty());

    // The coordinator lists it: one use left, for this node, with the labels.
    let listed = join_tokens(lab)?;
    let row = listed
        .iter()
        .find(|(i, _, _)| *i == id)
        .with_context(|| format!("token {id} not listed: {listed:?}"))?;
    ensure!(row.1 == "1", "uses left: {row:?}");
    ensure!(
        row.2.contains(&node) && row.2.contains("zone=lab"),
        "{row:?}"
    );

    // A real agent enrolls with the token from the card; that spends it.
    let data = lab.agents[0].data_dir.clone();
    let mut cmd = lab.agents[0].ns.cmd(bin("baton-agent"));
    cmd.args([
        "--node-name",
        &node,
        "--join-token",
        &token,
        "--coordinator-api",
        &lab.enroll_api(),
        "--coordinator",
        &lab.mqtt_url(),
        "--pod-cidr",
        "10.42.1.0/24",
    ])
    .arg("--data-dir")
    .arg(&data);
    lab.agents[0].proc = Some(Proc::spawn_appending(
        &node,
        &mut cmd,
        data.with_extension("log"),
    )?);
    wait_for("the agent to enroll", Duration::from_secs(60), || {
        Ok(data.join("identity.json").exists().then_some(()))
    })?;
    lab.kill_agent(0);
    ensure!(
        !join_tokens(lab)?.iter().any(|(i, _, _)| *i == id),
        "a used-up token is still listed"
    );

    // Spent, expired, or an agent for another architecture: refused, nothing changes,
    // and no token is minted.
    let fresh = pi_image(&dir, "fresh.img")?;
    let before = sha256(&fresh)?;
    let expired = lab.join_token(&["--ttl", "1s", "--node-name", &node])?;
    std::thread::sleep(Duration::from_secs(2));
    let minted_before = join_tokens(lab)?.len();
    let x86_agent = bin("baton-agent").display().to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["--join-token", &token], "already used up"),
        (&["--join-token", &expired], "expired"),
        (&["--agent", &x86_agent], "x86_64"),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["--name", &node];
        args.extend(strs(&common));
        args.extend(extra);
        let out = flash(lab, &fresh, &args)?;
        let t = text(&out);
        ensure!(!out.status.success(), "flash with {extra:?} succeeded: {t}");
        ensure!(t.contains(expect), "expected {expect:?}: {t}");
        ensure!(t.contains("was not changed"), "{t}");
        ensure!(sha256(&fresh)? == before, "{extra:?} changed the image");
    }
    ensure!(
        join_tokens(lab)?.len() == minted_before,
        "a refused flash minted a token"
    );
    Ok(())
}

#[test]
fn a_batch_of_three_gives_three_images_with_three_tokens() -> Result<()> {
    let mut lab = Lab::start_bare("fb", 0)?;
    let r = batch(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn batch(lab: &mut Lab) -> Result<()> {
    lab.start_coordinator()?;
    let dir = lab.dir.path().to_owned();
    let agents = agents_dir(&dir)?.display().to_string();
    let hub = lab.hub_ip();
    let common = device_args(&hub, &agents);
    let img = pi_image(&dir, "base.img")?;
    let before = sha256(&img)?;
    let csv = dir.join("devices.csv");
    fs::write(
        &csv,
        "name,labels,arch\npi-a,zone=a;rack=1,arm64\npi-b,\"zone=b,rack=2\",\npi-c,,\n",
    )?;
    let out_dir = dir.join("out");
    let mut args = vec!["--batch", csv.to_str().context("path")?, "--out-dir"];
    args.push(out_dir.to_str().context("path")?);
    args.extend(strs(&common));
    let out = flash(lab, &img, &args)?;
    ensure!(out.status.success(), "batch: {}", text(&out));
    let report = String::from_utf8(out.stdout.clone())?;
    ensure!(
        sha256(&img)? == before,
        "the batch changed its source image"
    );

    let mut tokens = Vec::new();
    for name in ["pi-a", "pi-b", "pi-c"] {
        let card = out_dir.join(format!("{name}.img"));
        fsck(&card)?;
        let env = String::from_utf8(mtype(&card, "baton/agent.env")?)?;
        ensure!(env.contains(&format!("BATON_NODE_NAME='{name}'")), "{env}");
        let token = String::from_utf8(mtype(&card, "baton/join-token")?)?;
        tokens.push(token.trim().to_owned());
    }
    let env_b = String::from_utf8(mtype(&out_dir.join("pi-b.img"), "baton/agent.env")?)?;
    ensure!(env_b.contains("BATON_LABELS='rack=2,zone=b'"), "{env_b}");
    let mut distinct = tokens.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(distinct.len() == 3, "tokens not distinct: {tokens:?}");
    let listed = join_tokens(lab)?;
    for (t, name) in tokens.iter().zip(["pi-a", "pi-b", "pi-c"]) {
        let id = t.split('.').nth(1).context("id")?;
        ensure!(reported_ids(&report).iter().any(|r| r == id), "{report}");
        let row = listed
            .iter()
            .find(|(i, _, _)| i == id)
            .with_context(|| format!("{id} not listed"))?;
        ensure!(row.1 == "1" && row.2.contains(name), "{row:?}");
    }
    let leftovers: Vec<_> = fs::read_dir(&out_dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    ensure!(leftovers.is_empty(), "partial images left: {leftovers:?}");

    // Again: the images exist, so nothing is written and nothing minted.
    let out = flash(lab, &img, &args)?;
    ensure!(
        !out.status.success() && text(&out).contains("never overwrites"),
        "{}",
        text(&out)
    );
    ensure!(
        join_tokens(lab)?.len() == listed.len(),
        "a refused batch minted tokens"
    );

    // A block device flashes like a file: a loop device over a fresh image.
    let card = pi_image(&dir, "loop.img")?;
    let dev = Loop::attach(&card, None)?;
    let mut args = vec!["--name", "pi-d"];
    args.extend(strs(&common));
    let out = flash(lab, Path::new(&dev.0), &args)?;
    ensure!(out.status.success(), "flash {}: {}", dev.0, text(&out));
    drop(dev);
    fsck(&card)?;
    let env = String::from_utf8(mtype(&card, "baton/agent.env")?)?;
    ensure!(env.contains("BATON_NODE_NAME='pi-d'"), "{env}");
    Ok(())
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path, offset: Option<u64>) -> Result<Loop> {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if let Some(o) = offset {
            c.args(["-o", &o.to_string()]);
        }
        let out = sh(c.arg(file))?;
        Ok(Loop(String::from_utf8(out.stdout)?.trim().to_owned()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

/// A mount, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(what: &str, at: &Path, opts: Option<&str>) -> Result<Mount> {
        fs::create_dir_all(at)?;
        let mut c = Command::new("mount");
        if let Some(o) = opts {
            c.args(["-o", o]);
        }
        sh(c.arg(what).arg(at))?;
        Ok(Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// `baton flash` with an unreachable coordinator: the mount check comes first.
fn flash_offline(target: &str, agents: &str) -> Result<Output> {
    Ok(Command::new(bin("baton"))
        .args(["flash", target, "--name", "pi-m", "--agents-dir", agents])
        .args([
            "--mqtt",
            "mqtt://10.0.2.2:1883",
            "--api",
            "https://10.0.2.2:7475",
        ])
        .env("BATON_SERVER", "http://127.0.0.1:9")
        .env("BATON_TOKEN", "unused")
        .env_remove("BATON_CONFIG")
        .output()?)
}

fn refused_mounted(target: &str, agents: &str, img: &Path) -> Result<()> {
    let before = sha256(img)?;
    let out = flash_offline(target, agents)?;
    let t = text(&out);
    ensure!(
        !out.status.success(),
        "flash of mounted {target} succeeded: {t}"
    );
    ensure!(t.contains("is mounted at"), "{target}: {t}");
    ensure!(sha256(img)? == before, "{target}: the image changed");
    Ok(())
}

#[test]
fn mounted_images_and_devices_are_refused() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("baton-e2e-flm-")
        .tempdir()?;
    let d = dir.path();
    let agents = agents_dir(d)?.display().to_string();
    let img = pi_image(d, "card.img")?;
    let path = img.to_str().context("path")?;
    // The mounts are of the ext4 root partition, as a desktop automounts a card (and
    // the kernels CI runs on need not have vfat). Read-only: a read-write ext4 mount
    // writes to the image itself a moment later (the journal, ext4lazyinit's inode
    // tables), which the check that flash left the image alone would blame on flash.
    let root_at = Some(ROOT_AT);

    // The image itself, mounted through a loop device at the partition's offset.
    {
        let _m = Mount::new(
            path,
            &d.join("m1"),
            Some(&format!("loop,ro,offset={ROOT_AT}")),
        )?;
        refused_mounted(path, &agents, &img)?;
    }
    // A block device that is mounted itself.
    {
        let dev = Loop::attach(&img, root_at)?;
        let _m = Mount::new(&dev.0, &d.join("m2"), Some("ro"))?;
        refused_mounted(&dev.0, &agents, &img)?;
    }
    // A whole device whose partition is mounted. Loop devices do not scan partitions in
    // CI's containers, so a second loop device over the first at the partition's offset
    // stands in for its partition (`mount -o offset=` of a device does the same).
    {
        let disk = Loop::attach(&img, None)?;
        let part = Loop::attach(Path::new(&disk.0), root_at)?;
        let _m = Mount::new(&part.0, &d.join("m3"), Some("ro"))?;
        refused_mounted(&disk.0, &agents, &img)?;
    }
    // Unmounted again: the mount check passes and flash gets as far as the coordinator.
    let out = flash_offline(path, &agents)?;
    if out.status.success() || !text(&out).contains("cannot reach the coordinator") {
        bail!("unmounted image: {}", text(&out));
    }
    Ok(())
}
