//! Unit tests of `baton flash` on small real MBR + FAT images made here (mbrman and
//! fatfs's formatter), read back with fatfs. The coordinator's side (minting and
//! checking tokens) is covered by the e2e test `tests/tests/flash.rs`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use mbrman::{MBRPartitionEntry, CHS, MBR};

use super::firstboot::{self, FirstBoot, CMDLINE_HOOK};
use super::plan::Step;
use super::settings::{self, Settings, Wifi};
use super::*;
use crate::cli::ClientArgs;

const TOKEN: &str = "bjt1.0123456789abcdef.0123456789abcdef0123456789abcdef.\
                     0000000000000000000000000000000000000000000000000000000000000000";

/// `baton flash ARGS` as clap parses it.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    flash: FlashArgs,
}

fn args(extra: &[&str]) -> FlashArgs {
    let mut v = vec!["flash"];
    v.extend_from_slice(extra);
    Cli::try_parse_from(v).unwrap().flash
}

/// An image of `mib` MiB: an MBR with one partition of `type_id` from 1 MiB on, holding
/// a FAT file system (unless `type_id` is 0x83) with `files`.
fn image(dir: &Path, name: &str, mib: u64, type_id: u8, files: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    let start = 2048u32;
    let sectors = ((mib << 20) / 512) as u32 - start;
    let mut mbr = MBR::new_from(&mut f, 512, [0xba, 0x70, 0x0e, 0x01]).unwrap();
    mbr[1] = MBRPartitionEntry {
        boot: 0,
        first_chs: CHS::empty(),
        sys: type_id,
        last_chs: CHS::empty(),
        starting_lba: start,
        sectors,
    };
    mbr.write_into(&mut f).unwrap();
    if type_id != 0x83 {
        let mut part = Cursor::new(vec![0u8; sectors as usize * 512]);
        let fat = if mib >= 40 {
            FatType::Fat32
        } else {
            FatType::Fat16
        };
        fatfs::format_volume(
            &mut part,
            FormatVolumeOptions::new()
                .fat_type(fat)
                .volume_label(*b"bootfs     "),
        )
        .unwrap();
        part.set_position(0);
        {
            let fs = FileSystem::new(&mut part, FsOptions::new()).unwrap();
            for (p, bytes) in files {
                let mut file = fs.root_dir().create_file(p).unwrap();
                file.write_all(bytes).unwrap();
            }
            fs.unmount().unwrap();
        }
        f.write_all_at(part.get_ref(), u64::from(start) * 512)
            .unwrap();
    }
    path
}

/// Every file of the image's first partition, by path (directories walked).
fn read_back(img: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(img).unwrap().read_to_end(&mut bytes).unwrap();
    let mut part = Cursor::new(bytes[1 << 20..].to_vec());
    part.set_position(0);
    let fs = FileSystem::new(&mut part, FsOptions::new()).unwrap();
    let mut out = BTreeMap::new();
    fn walk<T: fatfs::ReadWriteSeek>(
        dir: fatfs::Dir<'_, T>,
        prefix: &str,
        out: &mut BTreeMap<String, Vec<u8>>,
    ) {
        for e in dir.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if e.is_dir() {
                walk(e.to_dir(), &format!("{path}/"), out);
            } else {
                let mut b = Vec::new();
                e.to_file().read_to_end(&mut b).unwrap();
                out.insert(path, b);
            }
        }
    }
    walk(fs.root_dir(), "", &mut out);
    out
}

/// The image's bytes, to compare before and after (a hash is slow in a debug build).
fn bytes(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

/// A minimal little-endian ELF executable header for `machine`, padded to `len` bytes.
fn elf64(machine: u16, len: usize) -> Vec<u8> {
    let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    h.resize(16, 0);
    h.extend(2u16.to_le_bytes()); // ET_EXEC
    h.extend(machine.to_le_bytes());
    h.extend(1u32.to_le_bytes());
    h.extend([0u8; 24]); // entry, phoff, shoff
    h.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 0, 64, 0, 0] {
        h.extend(v.to_le_bytes());
    }
    h.resize(len.max(64), 0xa5);
    h
}

/// A 32-bit ARM executable header with an `.ARM.attributes` section giving
/// `Tag_CPU_arch` = `cpu_arch` (10 is ARMv7, 6 ARMv6).
fn elf32_arm(cpu_arch: u8) -> Vec<u8> {
    // The attributes: 'A', then one "aeabi" subsection with one Tag_File subsubsection.
    let attrs = [5u8, b'7', b'-', b'A', 0, 6, cpu_arch];
    let subsub_len = 1 + 4 + attrs.len() as u32;
    let sub_len = 4 + 6 + subsub_len;
    let mut data = vec![b'A'];
    data.extend(sub_len.to_le_bytes());
    data.extend(b"aeabi\0");
    data.push(1);
    data.extend(subsub_len.to_le_bytes());
    data.extend(attrs);
    let names = b"\0.ARM.attributes\0.shstrtab\0";
    let data_off = 52u32;
    let names_off = data_off + data.len() as u32;
    let shoff = (names_off as usize + names.len()).next_multiple_of(4) as u32;
    let mut h = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
    h.resize(16, 0);
    h.extend(2u16.to_le_bytes());
    h.extend(40u16.to_le_bytes()); // EM_ARM
    h.extend(1u32.to_le_bytes());
    h.extend(0u32.to_le_bytes()); // entry
    h.extend(0u32.to_le_bytes()); // phoff
    h.extend(shoff.to_le_bytes());
    h.extend(0x0500_0400u32.to_le_bytes()); // EABI5, hard float
    for v in [52u16, 32, 0, 40, 3, 2] {
        h.extend(v.to_le_bytes());
    }
    h.extend(&data);
    h.extend(names);
    h.resize(shoff as usize, 0);
    h.extend([0u8; 40]); // the null section
                         // sh_name, sh_type, flags, addr, offset, size, link, info, addralign, entsize
    let sections = [
        [
            1u32,
            0x7000_0003,
            0,
            0,
            data_off,
            data.len() as u32,
            0,
            0,
            1,
            0,
        ],
        [17, 3, 0, 0, names_off, names.len() as u32, 0, 0, 1, 0],
    ];
    for sh in sections {
        for v in sh {
            h.extend(v.to_le_bytes());
        }
    }
    h
}

fn pi64_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("config.txt", b"# Pi\n[all]\narm_64bit=1\n"),
        (
            "cmdline.txt",
            b"console=serial0,115200 root=PARTUUID=ba700e01-02 rootfstype=ext4 fsck.repair=yes rootwait\n",
        ),
        ("kernel8.img", b"kernel"),
    ]
}

fn settings() -> Settings {
    Settings {
        node: "pi-1".into(),
        labels: settings::labels("zone=lab,tier=edge").unwrap(),
        mqtt: "mqtts://10.0.2.2:8883".into(),
        api: "https://10.0.2.2:7475".into(),
        insecure_registries: vec!["10.0.2.2:5000".into()],
        wifi: None,
        ssh_key: None,
        release_public_key: None,
    }
}

/// What `baton flash` does once the token is known: the read pass, the checks, the
/// plan, and the write (as `write_device`, without the API).
fn flash_with_token(img: &Path, a: &FlashArgs, s: Settings) -> Result<Ready, FlashError> {
    let view = read_target(img)?;
    let mut r = plan_device(a, &mut Agents::default(), &view, s, a.arch)?;
    r.plan
        .set(firstboot::TOKEN, format!("{TOKEN}\n").into_bytes());
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    image::apply(&file, &view.partition, &r.plan)?;
    Ok(r)
}

fn agent_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn base_args(agent: &str) -> Vec<String> {
    [
        "card.img",
        "--name",
        "pi-1",
        "--mqtt",
        "mqtts://10.0.2.2:8883",
        "--api",
        "https://10.0.2.2:7475",
        "--agent",
        agent,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn parse(v: &[String]) -> FlashArgs {
    args(&v.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn flashes_a_fat32_image_for_firstrun_and_every_file_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "card.img", 64, 0x0c, &pi64_files());
    let agent_bytes = elf64(183, 300_000);
    let agent = agent_file(dir.path(), "agent", &agent_bytes);
    let a = parse(&base_args(&agent));
    let r = flash_with_token(&img, &a, settings()).unwrap();
    assert_eq!(r.arch, Arch::Arm64);
    assert_eq!(r.style, FirstBoot::Firstrun);
    assert_eq!(r.view.fat, "FAT32");

    let files = read_back(&img);
    assert_eq!(files["baton/baton-agent"], agent_bytes);
    assert_eq!(files["baton/join-token"], format!("{TOKEN}\n").into_bytes());
    let env = String::from_utf8(files["baton/agent.env"].clone()).unwrap();
    assert!(
        env.contains("BATON_COORDINATOR='mqtts://10.0.2.2:8883'\n"),
        "{env}"
    );
    assert!(env.contains("BATON_COORDINATOR_API='https://10.0.2.2:7475'\n"));
    assert!(env.contains("BATON_NODE_NAME='pi-1'\n"));
    assert!(env.contains("BATON_LABELS='tier=edge,zone=lab'\n"));
    assert!(env.contains("BATON_INSECURE_REGISTRIES='10.0.2.2:5000'\n"));
    assert_eq!(
        files["baton/firstboot.sh"],
        firstboot::firstboot_sh().into_bytes()
    );
    let firstrun = String::from_utf8(files["firstrun.sh"].clone()).unwrap();
    assert!(firstrun.contains("sh \"$boot/baton/firstboot.sh\""));
    let cmdline = String::from_utf8(files["cmdline.txt"].clone()).unwrap();
    assert_eq!(
        cmdline,
        format!(
            "console=serial0,115200 root=PARTUUID=ba700e01-02 rootfstype=ext4 fsck.repair=yes rootwait {}\n",
            CMDLINE_HOOK.join(" ")
        )
    );
    // Nothing else was touched.
    assert_eq!(files["config.txt"], b"# Pi\n[all]\narm_64bit=1\n");
    assert_eq!(files["kernel8.img"], b"kernel");
    assert!(!files.contains_key("user-data"));
}

#[test]
fn flashing_twice_replaces_the_hook_and_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "card.img", 64, 0x0c, &pi64_files());
    let agent = agent_file(dir.path(), "agent", &elf64(183, 200_000));
    let a = parse(&base_args(&agent));
    flash_with_token(&img, &a, settings()).unwrap();
    let first = read_back(&img);
    let mut s = settings();
    s.node = "pi-2".into();
    flash_with_token(&img, &a, s).unwrap();
    let second = read_back(&img);
    let cmdline = String::from_utf8(second["cmdline.txt"].clone()).unwrap();
    for arg in CMDLINE_HOOK {
        assert_eq!(cmdline.matches(arg).count(), 1, "{cmdline}");
    }
    assert_eq!(
        cmdline,
        String::from_utf8(first["cmdline.txt"].clone()).unwrap()
    );
    assert_eq!(cmdline.lines().count(), 1);
    assert!(String::from_utf8_lossy(&second["baton/agent.env"]).contains("'pi-2'"));
    // Our own firstrun.sh is replaced, not kept as a "previous" one.
    assert!(!second.contains_key("baton/firstrun.previous.sh"));
    assert_eq!(first.len(), second.len());
}

#[test]
fn an_imager_firstrun_is_kept_and_chained() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = pi64_files();
    let imager: &[u8] = b"#!/bin/bash\nset +e\necho imager\nrm -f /boot/firmware/firstrun.sh\n";
    files.push(("firstrun.sh", imager));
    files.push((
        "cmdline.txt",
        b"console=tty1 root=/dev/mmcblk0p2 rootwait systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n",
    ));
    files.remove(1);
    let img = image(dir.path(), "card.img", 64, 0x0c, &files);
    let agent = agent_file(dir.path(), "agent", &elf64(183, 1000));
    let a = parse(&base_args(&agent));
    flash_with_token(&img, &a, settings()).unwrap();
    let back = read_back(&img);
    assert_eq!(back["baton/firstrun.previous.sh"], imager);
    let ours = String::from_utf8(back["firstrun.sh"].clone()).unwrap();
    assert!(ours.contains("baton/firstrun.previous.sh"), "{ours}");
    let cmdline = String::from_utf8(back["cmdline.txt"].clone()).unwrap();
    assert_eq!(cmdline.matches("systemd.run=").count(), 1, "{cmdline}");
    // A second flash keeps the chained script and does not chain ours.
    flash_with_token(&img, &a, settings()).unwrap();
    assert_eq!(read_back(&img)["baton/firstrun.previous.sh"], imager);
}

#[test]
fn cloud_init_images_get_merged_user_data_meta_data_and_network_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = pi64_files();
    let imager_ud: &[u8] = b"#cloud-config\nhostname: kiosk\nusers:\n- name: ann\n  groups: sudo\nruncmd:\n- [echo, imager]\n";
    files.push(("user-data", imager_ud));
    files.push(("meta-data", b"instance-id: rpios-image\n"));
    let img = image(dir.path(), "card.img", 64, 0x0c, &files);
    let agent = agent_file(dir.path(), "agent", &elf64(183, 1000));
    let key = dir.path().join("id.pub");
    fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 ann@laptop\n",
    )
    .unwrap();
    let a = parse(&base_args(&agent));
    let mut s = settings();
    s.ssh_key = Some(settings::ssh_key(&key).unwrap());
    s.wifi = settings::wifi(Some("Home Net"), Some("correct horse"), Some("gb")).unwrap();
    let r = flash_with_token(&img, &a, s.clone()).unwrap();
    assert_eq!(r.style, FirstBoot::CloudInit);
    flash_with_token(&img, &a, s).unwrap();
    let back = read_back(&img);
    assert!(!back.contains_key("firstrun.sh"));
    assert_eq!(back["cmdline.txt"], pi64_files()[1].1);

    let ud = String::from_utf8(back["user-data"].clone()).unwrap();
    assert!(ud.starts_with("#cloud-config\n"), "{ud}");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&ud).unwrap();
    assert_eq!(doc["hostname"], "kiosk");
    assert_eq!(doc["users"][0]["name"], "ann");
    let runcmd = doc["runcmd"].as_sequence().unwrap();
    assert_eq!(
        runcmd[0],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[echo, imager]").unwrap()
    );
    // Flashed twice, still once each.
    assert_eq!(runcmd.len(), 4, "{ud}");
    assert_eq!(
        runcmd[3],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[sh, /boot/firmware/baton/firstboot.sh]")
            .unwrap()
    );
    assert_eq!(doc["ssh_authorized_keys"].as_sequence().unwrap().len(), 1);

    let md: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&back["meta-data"]).unwrap();
    assert_eq!(md["instance-id"], "pi-1");
    let nc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&back["network-config"]).unwrap();
    assert_eq!(nc["network"]["version"], 2);
    assert_eq!(nc["network"]["ethernets"]["eth0"]["dhcp4"], true);
    let wlan0 = &nc["network"]["wifis"]["wlan0"];
    assert_eq!(wlan0["regulatory-domain"], "GB");
    // wpa_passphrase "Home Net" "correct horse": the PSK, not the passphrase.
    let psk = wlan0["access-points"]["Home Net"]["password"]
        .as_str()
        .unwrap();
    assert_eq!(psk.len(), 64);
    assert!(!String::from_utf8_lossy(&back["network-config"]).contains("correct horse"));
}

#[test]
fn the_wpa_psk_is_derived_as_wpa_passphrase_does() {
    // IEEE 802.11i-2004, H.4.3, test vector 1.
    let w = settings::wifi(Some("IEEE"), Some("password"), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        w.psk_hex,
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    );
    let hex = "F42C6FC52DF0EBEF9EBB4B90B38A5F902E83FE1B135A70E23AED762E9710A12E";
    let w = settings::wifi(Some("IEEE"), Some(hex), None)
        .unwrap()
        .unwrap();
    assert_eq!(w.psk_hex, hex.to_ascii_lowercase());
}

/// Runs Debian's cloud-init (22.4) schema check on `text`.
fn cloud_init_schema(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&p)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run cloud-init ({e}): install it with scripts/install-deps.sh (Debian package cloud-init)")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn user_data_passes_cloud_inits_own_schema_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.pub");
    fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 ann@laptop\n",
    )
    .unwrap();
    let mut s = settings();
    s.ssh_key = Some(settings::ssh_key(&key).unwrap());
    s.wifi = settings::wifi(Some("Home Net"), Some("correct horse"), Some("GB")).unwrap();
    let fresh = cloudinit::user_data(None, &s).unwrap();
    let merged = cloudinit::user_data(
        Some(b"#cloud-config\nusers:\n- name: ann\n  groups: sudo\n  shell: /bin/bash\nruncmd:\n- echo hi\n"),
        &s,
    )
    .unwrap();
    for (name, text) in [("fresh.yaml", &fresh), ("merged.yaml", &merged)] {
        let (ok, out) = cloud_init_schema(dir.path(), name, text);
        assert!(ok, "cloud-init refused our {name}:\n{text}\n{out}");
    }
    // The check can fail: a user-data whose runcmd is not a list is refused.
    let broken = fresh.replace("runcmd:\n", "runcmd: 5\nx_runcmd:\n");
    assert_ne!(broken, fresh);
    let (ok, out) = cloud_init_schema(dir.path(), "broken.yaml", &broken);
    assert!(
        !ok,
        "cloud-init accepted a broken user-data:\n{broken}\n{out}"
    );
}

#[test]
fn user_data_that_is_not_cloud_config_is_refused() {
    let s = settings();
    for bad in [
        &b"#!/bin/sh\necho hi\n"[..],
        b"#cloud-config\nruncmd: [unclosed\n",
        b"#cloud-config\n- a list\n",
        b"#cloud-config\nruncmd: 5\n",
    ] {
        assert!(cloudinit::user_data(Some(bad), &s).is_err(), "{bad:?}");
    }
}

fn refused(img: &Path, argv: &[String], expect: &str) {
    let before = bytes(img);
    let a = parse(argv);
    let client = Client::new(&ClientArgs {
        server: Some("http://127.0.0.1:9".into()),
        token: Some("unused".into()),
        config: None,
        namespace: None,
        all_namespaces: false,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(flash(&client, &a))
        .expect_err("flash should have refused")
        .to_string();
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(err.contains("was not changed"), "{err}");
    assert!(bytes(img) == before, "the image changed: {err}");
}

fn with_target(mut argv: Vec<String>, img: &Path) -> Vec<String> {
    argv[0] = img.display().to_string();
    argv
}

#[test]
fn refusals_leave_the_image_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arm64 = agent_file(d, "arm64", &elf64(183, 4000));
    let good = image(d, "good.img", 64, 0x0c, &pi64_files());

    // No MBR at all.
    let blank = d.join("blank.img");
    File::create(&blank).unwrap().set_len(8 << 20).unwrap();
    refused(&blank, &with_target(base_args(&arm64), &blank), "no MBR");
    // An MBR with only a Linux partition.
    let linux = image(d, "linux.img", 8, 0x83, &[]);
    refused(
        &linux,
        &with_target(base_args(&arm64), &linux),
        "no FAT boot partition",
    );
    // A FAT partition too small for the agent.
    let small = image(d, "small.img", 6, 0x0e, &pi64_files());
    let big = agent_file(d, "big", &elf64(183, 6 << 20));
    refused(&small, &with_target(base_args(&big), &small), "too small");
    // Neither config.txt nor a kernel says which architecture.
    let bare = image(d, "bare.img", 64, 0x0c, &[("cmdline.txt", b"root=x\n")]);
    refused(
        &bare,
        &with_target(base_args(&arm64), &bare),
        "unknown architecture",
    );
    // An x86_64 binary for an arm64 card.
    refused(&good, &with_target(base_args("/bin/true"), &good), "x86_64");
    // A 64-bit agent with --arch armv7, an ARMv7 agent for an ARMv6 card.
    let mut v = with_target(base_args(&arm64), &good);
    v.extend(["--arch".into(), "armv7".into()]);
    refused(&good, &v, "not armv7");
    let v7 = agent_file(d, "v7", &elf32_arm(10));
    let mut v = with_target(base_args(&v7), &good);
    v.extend(["--arch".into(), "armv6".into()]);
    refused(&good, &v, "ARMv7 or later");
    // Bad settings: a quote in the node name, an SSID with a quote, a broken token.
    let mut v = with_target(base_args(&arm64), &good);
    v[2] = "pi'1".into();
    refused(&good, &v, "node name");
    let mut v = with_target(base_args(&arm64), &good);
    v.extend([
        "--wifi-ssid".into(),
        "a\"b".into(),
        "--wifi-psk".into(),
        "12345678".into(),
    ]);
    refused(&good, &v, "--wifi-ssid");
    let mut v = with_target(base_args(&arm64), &good);
    v.extend(["--join-token".into(), "bjt1.nope".into()]);
    refused(&good, &v, "not a join token");
    // An unreachable coordinator: nothing is written either.
    let v = with_target(base_args(&arm64), &good);
    let before = bytes(&good);
    let client = Client::new(&ClientArgs {
        server: Some("http://127.0.0.1:9".into()),
        token: Some("unused".into()),
        config: None,
        namespace: None,
        all_namespaces: false,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(flash(&client, &parse(&v))).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert!(bytes(&good) == before);
    // A directory and a character device are not targets.
    refused(
        &good,
        &with_target(base_args(&arm64), d),
        "neither an image file nor a block device",
    );
    refused(
        &good,
        &with_target(base_args(&arm64), Path::new("/dev/null")),
        "neither an image file nor a block device",
    );
}

#[test]
fn a_full_partition_is_refused_but_replacing_files_counts_what_they_free() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "card.img", 6, 0x0e, &pi64_files());
    let view = read_target(&img).unwrap();
    let free = view.free_clusters * view.cluster_size;
    // An agent that fits with a little room to spare: flashing it twice works, because
    // the second flash frees the first agent's clusters.
    let fits = (free - 16 * view.cluster_size) as usize;
    let agent = agent_file(dir.path(), "agent", &elf64(183, fits));
    let a = parse(&base_args(&agent));
    flash_with_token(&img, &a, settings()).unwrap();
    flash_with_token(&img, &a, settings()).unwrap();
    let agent = agent_file(dir.path(), "big", &elf64(183, free as usize + 1));
    let a = parse(&base_args(&agent));
    let before = bytes(&img);
    let err = flash_with_token(&img, &a, settings()).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    assert!(bytes(&img) == before);
}

#[test]
fn architecture_detection() {
    use arch::{choose, detect, Detected};
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    let none = names(&[]);
    assert_eq!(detect(Some(b"arm_64bit=1\n"), &none), Detected::Bits64);
    assert_eq!(
        detect(Some(b"# arm_64bit=1\narm_64bit=0"), &none),
        Detected::Bits32
    );
    let k64 = names(&["kernel8.img", "kernel_2712.img"]);
    assert_eq!(detect(None, &k64), Detected::Bits64);
    let both = names(&["kernel8.img", "kernel7l.img", "kernel.img"]);
    assert_eq!(detect(None, &both), Detected::Bits32);
    assert_eq!(
        detect(Some(b"dtparam=audio=on\n"), &none),
        Detected::Unknown
    );
    let (a, note) = choose(None, Detected::Bits32, &both).unwrap();
    assert_eq!(a, Arch::Armv6);
    assert!(note.unwrap().contains("--arch armv7"));
    assert_eq!(
        choose(Some(Arch::Armv7), Detected::Bits32, &both)
            .unwrap()
            .0,
        Arch::Armv7
    );
    let k32 = names(&["kernel7l.img"]);
    assert!(choose(Some(Arch::Arm64), Detected::Bits32, &k32).is_err());
    assert!(choose(None, Detected::Unknown, &none).is_err());
}

#[test]
fn elf_checks() {
    assert!(arch::check_elf(&elf64(183, 100), Arch::Arm64).is_ok());
    assert!(arch::check_elf(&elf64(62, 100), Arch::Arm64)
        .unwrap_err()
        .contains("x86_64"));
    assert_eq!(arch::check_elf(&elf32_arm(10), Arch::Armv7), Ok(()));
    assert!(arch::check_elf(&elf32_arm(6), Arch::Armv6).is_ok());
    assert!(arch::check_elf(&elf32_arm(6), Arch::Armv7).is_ok());
    assert!(arch::check_elf(&elf32_arm(10), Arch::Armv6).is_err());
    assert!(arch::check_elf(&elf32_arm(10), Arch::Arm64).is_err());
    assert!(arch::check_elf(b"#!/bin/sh\n", Arch::Arm64).is_err());
    let me = fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(arch::check_elf(&me, Arch::Arm64)
        .unwrap_err()
        .contains("x86_64"));
}

#[test]
fn cmdline_editing_is_idempotent() {
    let once = firstboot::cmdline_with_hook(b"console=tty1 root=/dev/x rootwait\n").unwrap();
    let twice = firstboot::cmdline_with_hook(once.as_bytes()).unwrap();
    assert_eq!(once, twice);
    assert_eq!(
        firstboot::cmdline_without_hook(twice.as_bytes()).unwrap(),
        "console=tty1 root=/dev/x rootwait\n"
    );
    // Imager's variant (with a failure action) is replaced, not kept beside ours.
    let imager = b"a=b systemd.run=/boot/firstrun.sh systemd.run_failure_action=none systemd.run_success_action=reboot\n\n";
    assert_eq!(
        firstboot::cmdline_with_hook(imager).unwrap(),
        format!("a=b {}\n", CMDLINE_HOOK.join(" "))
    );
    assert!(firstboot::cmdline_with_hook(b"\n").is_err());
}

#[test]
fn generated_scripts_are_valid_sh_and_firstboot_passes_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.pub");
    fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 ann@laptop\n",
    )
    .unwrap();
    let mut s = settings();
    s.ssh_key = Some(settings::ssh_key(&key).unwrap());
    let release_key = "A".repeat(43) + "=";
    s.release_public_key = Some(settings::release_key(&release_key).unwrap());
    assert!(settings::release_key("not a key").is_err());
    s.wifi = Some(Wifi {
        ssid: "Home (2.4) #1".into(),
        psk_hex: "ab".repeat(32),
        country: Some("DE".into()),
    });
    for (name, text) in [
        ("firstboot.sh", firstboot::firstboot_sh()),
        ("firstrun.sh", firstboot::firstrun_sh(&s)),
    ] {
        let p = dir.path().join(name);
        fs::write(&p, &text).unwrap();
        let out = Command::new("sh").arg("-n").arg(&p).output().unwrap();
        assert!(out.status.success(), "{name}: {out:?}\n{text}");
    }
    // firstboot.sh with a stand-in agent that records its arguments.
    let baton = dir.path().join("baton");
    fs::create_dir(&baton).unwrap();
    fs::write(baton.join("agent.env"), firstboot::agent_env(&s)).unwrap();
    fs::write(baton.join("join-token"), TOKEN).unwrap();
    fs::write(baton.join("firstboot.sh"), firstboot::firstboot_sh()).unwrap();
    fs::write(
        baton.join("baton-agent"),
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/../args\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(baton.join("baton-agent"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("sh")
        .arg(baton.join("firstboot.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let recorded = fs::read_to_string(dir.path().join("args")).unwrap();
    let expected = format!(
        "install\n--coordinator\nmqtts://10.0.2.2:8883\n--coordinator-api\nhttps://10.0.2.2:7475\n\
         --node-name\npi-1\n--labels\ntier=edge,zone=lab\n--insecure-registry\n10.0.2.2:5000\n\
         --release-public-key\n{release_key}\n--join-token-file\n{}\n",
        baton.join("join-token").display()
    );
    assert_eq!(recorded, expected);
    // The agent is in place now: the boot partition's copy is freed.
    assert!(!baton.join("baton-agent").exists());
}

#[test]
fn plans_write_baton_files_first_and_cmdline_last() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "card.img", 64, 0x0c, &pi64_files());
    let view = read_target(&img).unwrap();
    let p = firstboot::plan(&view, &settings(), FirstBoot::Firstrun, b"x", TOKEN).unwrap();
    let paths: Vec<String> = p
        .steps
        .iter()
        .map(|s| match s {
            Step::Write { path, .. } => path.clone(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "baton/baton-agent",
            "baton/join-token",
            "baton/agent.env",
            "baton/firstboot.sh",
            "firstrun.sh",
            "cmdline.txt"
        ]
    );
}

#[test]
fn settings_are_checked() {
    assert!(settings::node_name("pi-1.lab_2").is_ok());
    for bad in ["", "pi 1", "pi;1", "$(x)", "..", &"a".repeat(64)] {
        assert!(settings::node_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(settings::labels("a=1; b=2,c/d=x.y").unwrap().len(), 3);
    for bad in ["a", "=1", "a=b c", "a='x'"] {
        assert!(settings::labels(bad).is_err(), "{bad:?}");
    }
    assert!(settings::url("--mqtt", "mqtts://10.0.2.2:8883", &["mqtt", "mqtts"]).is_ok());
    assert!(settings::url("--mqtt", "http://10.0.2.2", &["mqtt", "mqtts"]).is_err());
    assert!(settings::url("--api", "https://h:1/'$(id)'", &["https"]).is_err());
    assert!(settings::url("--api", "http://10.0.2.2:7474", &["http", "https"]).is_err());
    assert!(settings::url("--api", "http://127.0.0.1:7474", &["http", "https"]).is_ok());
    // A broker cluster's members: each checked, the bad one named by position.
    let m = ["mqtt", "mqtts"];
    assert_eq!(
        settings::url_list("--mqtt", "mqtts://a:8883, mqtts://b:8883", &m).unwrap(),
        "mqtts://a:8883,mqtts://b:8883"
    );
    let e = settings::url_list("--mqtt", "mqtts://a:8883,,mqtts://b", &m).unwrap_err();
    assert!(e.to_string().contains("(entry 2 of 3) is empty"), "{e}");
    let e = settings::url_list("--mqtt", "mqtts://a:8883,http://b", &m).unwrap_err();
    assert!(e.to_string().contains("(entry 2 of 2)"), "{e}");
    assert!(settings::registries(&["10.0.2.2:5000".into()]).is_ok());
    assert!(settings::registries(&["a b:1".into()]).is_err());
    assert!(settings::wifi(Some("net"), None, None).is_err());
    assert!(settings::wifi(Some("net"), Some("short"), None).is_err());
    assert!(settings::wifi(Some("net"), Some("long enough"), Some("GBR")).is_err());
    assert!(settings::wifi(Some("n'et"), Some("long enough"), None).is_err());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    assert!(settings::ssh_key(&key).is_err());
    fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 $(reboot)\n").unwrap();
    assert!(settings::ssh_key(&key).is_err());
    assert_eq!(settings::sh_quote("it's"), r"'it'\''s'");
}

#[test]
fn batch_csv() {
    let d = batch::parse(
        b"name,labels,arch\n# a comment\npi-1,zone=a;tier=b,arm64\npi-2,\"zone=a,tier=c\",\npi-3\n",
    )
    .unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d[0].labels.len(), 2);
    assert_eq!(d[0].arch, Some(Arch::Arm64));
    assert_eq!(d[1].labels["tier"], "c");
    assert_eq!(d[1].arch, None);
    assert!(d[2].labels.is_empty());
    assert!(batch::parse(b"pi-1\npi-1\n").unwrap_err().contains("twice"));
    assert!(batch::parse(b"pi-1,a=b,sparc\n")
        .unwrap_err()
        .contains("sparc"));
    assert!(batch::parse(b"pi-1,a=b,c=d,arm64\n").is_err());
    assert!(batch::parse(b"name,labels,arch\n").is_err());
    assert!(batch::parse(b"p i,,\n").is_err());
}

#[test]
fn flags_come_from_the_environment_too() {
    let a = args(&[
        "/dev/sdz",
        "--name",
        "pi-1",
        "--mqtt",
        "mqtt://h:1883",
        "--api",
        "https://h:7475",
        "--insecure-registry",
        "a:1,b:2",
        "--token-ttl",
        "2h",
    ]);
    assert_eq!(a.insecure_registry, ["a:1", "b:2"]);
    assert_eq!(a.token_ttl, std::time::Duration::from_secs(7200));
    assert_eq!(a.agents_dir, PathBuf::from("target/cross"));
    assert_eq!(a.first_boot, FirstBoot::Auto);
    // A batch needs an output folder, and takes no single name or token.
    assert!(Cli::try_parse_from([
        "flash", "x.img", "--mqtt", "mqtt://h", "--api", "http://h", "--batch", "d.csv"
    ])
    .is_err());
    assert!(Cli::try_parse_from([
        "flash",
        "x.img",
        "--mqtt",
        "mqtt://h",
        "--api",
        "http://h",
        "--batch",
        "d.csv",
        "--out-dir",
        "o",
        "--join-token",
        "t"
    ])
    .is_err());
    assert!(Cli::try_parse_from([
        "flash",
        "x.img",
        "--mqtt",
        "mqtt://h",
        "--api",
        "http://h",
        "--batch",
        "d.csv",
        "--out-dir",
        "o"
    ])
    .is_ok());
}

#[test]
fn mount_tables_are_read_by_device_number() {
    use std::os::unix::fs::MetadataExt;
    let root = fs::metadata("/").unwrap().dev();
    assert!(
        target::mounted().iter().any(|(dev, _)| *dev == root),
        "the root file system's device is not among the mounted ones"
    );
}

/// dosfstools' `fsck.fat -n` on the boot partition of `img`: another implementation's
/// opinion of what fatfs wrote.
fn fsck_fat(img: &Path) {
    let part = img.with_extension("part");
    fs::write(&part, &bytes(img)[1 << 20..]).unwrap();
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&part)
        .output()
        .expect("fsck.fat (Debian package dosfstools, scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "fsck.fat -n: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fsck_fat_finds_the_flashed_file_systems_clean() {
    let dir = tempfile::tempdir().unwrap();
    for (name, mib, t) in [("fat32.img", 64, 0x0c), ("fat16.img", 8, 0x0e)] {
        let img = image(dir.path(), name, mib, t, &pi64_files());
        fsck_fat(&img);
        let agent = agent_file(dir.path(), "agent", &elf64(183, 100_000));
        let a = parse(&base_args(&agent));
        flash_with_token(&img, &a, settings()).unwrap();
        fsck_fat(&img);
        flash_with_token(&img, &a, settings()).unwrap();
        fsck_fat(&img);
    }
}
