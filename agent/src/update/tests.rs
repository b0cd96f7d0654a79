//! The file layout on a temporary data dir: staging, and the switch stopped (a kill, a
//! power cut) after each of its steps, then the launcher's pick checked against the disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::launcher::{decide, verified, Facts, Pick};
use super::layout::{file_sha256, verifies, Layout};
use super::state::{Binary, ExitRecord, Phase, UpdateState};

struct Device {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    installed: PathBuf,
    layout: Layout,
}

fn device() -> Device {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let installed = tmp.path().join("baton-agent");
    std::fs::write(&installed, b"#!/bin/sh\necho 0.2.0\n").unwrap();
    Device {
        layout: Layout::new(&data),
        _tmp: tmp,
        data,
        installed,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Stages `content` as version `v`, as the update task does after the download.
fn stage(d: &Device, v: &str, content: &[u8]) -> Binary {
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content));
    let part = d.layout.part_file(&sha);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, content).unwrap();
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = d.layout.stage(&part, v, &sha).unwrap();
    Binary {
        version: v.into(),
        path,
        sha256: sha,
    }
}

fn installed(d: &Device) -> Binary {
    Binary {
        version: "0.2.0".into(),
        path: d.installed.clone(),
        sha256: file_sha256(&d.installed).unwrap(),
    }
}

/// What the launcher would exec on this disk now, as a path.
fn launch_pick(d: &Device, f: &Facts) -> (PathBuf, Option<UpdateState>) {
    let state = UpdateState::load(&d.layout.state_file()).unwrap();
    let dec = verified(decide(state.as_ref(), f), state.as_ref(), verifies);
    if let Some(s) = &dec.state {
        s.store(&d.layout.state_file()).unwrap();
    }
    let s = dec.state.clone().or(state);
    let path = match (dec.pick, &s) {
        (Pick::To, Some(s)) => s.to.path.clone(),
        (Pick::From, Some(s)) => s.from.path.clone(),
        _ => d.installed.clone(),
    };
    (path, s)
}

#[test]
fn staging_makes_the_verified_download_executable_and_nothing_before() {
    let d = device();
    let b = stage(&d, "0.2.1", b"new agent");
    assert_eq!(mode(&b.path), 0o755);
    assert!(b
        .path
        .ends_with(format!("versions/0.2.1-{}/baton-agent", &b.sha256[..12])));
    assert!(!d.layout.part_file(&b.sha256).exists());
    assert!(verifies(&b.path, &b.sha256));
    assert!(!verifies(&b.path, &"0".repeat(64)));
}

#[test]
fn a_stop_after_any_step_of_the_switch_leaves_a_verified_binary_to_start() {
    for steps in 0..=4 {
        let d = device();
        let to = stage(&d, "0.2.1", b"new agent");
        let mut s = UpdateState::switching("r1", installed(&d), to.clone(), 30);
        d.layout.switch_until(&mut s, steps).unwrap();
        // A temporary file a power cut left beside the state is ignored.
        std::fs::write(d.layout.root().join("update.json.tmp-1-0"), b"{").unwrap();

        let (path, state) = launch_pick(
            &d,
            &Facts {
                boot_id: "b2",
                uptime: 7,
            },
        );
        if steps == 0 {
            assert_eq!(path, d.installed, "nothing recorded: the old agent runs on");
            assert!(state.is_none());
        } else {
            assert_eq!(path, to.path, "after step {steps} the switch is finished");
            let state = state.unwrap();
            assert_eq!(state.phase, Phase::Probation);
            assert_eq!(state.starts, 1);
        }
        assert!(
            std::fs::metadata(&path).is_ok(),
            "step {steps}: {path:?} exists"
        );
        let want = if path == d.installed {
            installed(&d).sha256
        } else {
            to.sha256.clone()
        };
        assert!(verifies(&path, &want), "step {steps}: {path:?} verifies");
    }
}

#[test]
fn a_switch_then_a_crash_loop_ends_on_the_old_binary() {
    let d = device();
    let to = stage(&d, "0.2.1", b"new agent that crashes");
    let mut s = UpdateState::switching("r1", installed(&d), to.clone(), 30);
    d.layout.switch(&mut s).unwrap();
    assert_eq!(std::fs::read_link(d.layout.current()).unwrap(), to.path);
    assert_eq!(
        std::fs::read_link(d.layout.previous()).unwrap(),
        d.installed
    );
    let mut uptime = 50;
    let mut picks = Vec::new();
    for _ in 0..4 {
        let (path, _) = launch_pick(
            &d,
            &Facts {
                boot_id: "b1",
                uptime,
            },
        );
        picks.push(path);
        uptime += 2;
        let mut s = UpdateState::load(&d.layout.state_file()).unwrap().unwrap();
        if s.phase == Phase::Probation {
            s.exits.push(ExitRecord {
                boot_id: "b1".into(),
                uptime: uptime - 1,
                code: "exited".into(),
                status: "101".into(),
            });
            s.store(&d.layout.state_file()).unwrap();
        }
    }
    assert_eq!(
        picks[..3],
        [to.path.clone(), to.path.clone(), to.path.clone()]
    );
    assert_eq!(picks[3], d.installed);
    let s = UpdateState::load(&d.layout.state_file()).unwrap().unwrap();
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(
        s.reason.as_deref(),
        Some("crashed 3 times in 6 s: exit 101")
    );
}

#[test]
fn a_new_binary_damaged_on_disk_is_rolled_back_not_run() {
    let d = device();
    let to = stage(&d, "0.2.1", b"new agent");
    let mut s = UpdateState::switching("r1", installed(&d), to.clone(), 30);
    d.layout.switch(&mut s).unwrap();
    std::fs::write(&to.path, b"flipped bits").unwrap();
    let (path, state) = launch_pick(
        &d,
        &Facts {
            boot_id: "b1",
            uptime: 1,
        },
    );
    assert_eq!(path, d.installed);
    assert_eq!(state.unwrap().phase, Phase::RolledBack);
    let _ = &d.data;
}

#[test]
fn prune_keeps_only_the_named_versions() {
    let d = device();
    let a = stage(&d, "0.2.1", b"a");
    let b = stage(&d, "0.2.2", b"b");
    let c = stage(&d, "0.2.3", b"c");
    d.layout.prune(&[&b.path, &c.path]);
    assert!(!a.path.exists());
    assert!(b.path.exists() && c.path.exists());
}
