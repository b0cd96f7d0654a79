use std::cell::RefCell;

use super::*;

/// A recording `systemctl`, with or without systemd running.
#[derive(Default)]
struct Recorder {
    running: bool,
    booting: bool,
    calls: RefCell<Vec<String>>,
}

impl Systemctl for Recorder {
    fn running(&self, _root: &Path) -> bool {
        self.running
    }

    fn run(&self, args: &[&str]) -> Result<(), InstallError> {
        self.calls.borrow_mut().push(args.join(" "));
        Ok(())
    }

    fn booting(&self) -> bool {
        self.booting
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    exe: PathBuf,
    token_file: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let exe = tmp.path().join("baton-agent");
    fs::write(&exe, b"\x7fELF pretend").unwrap();
    let token_file = tmp.path().join("join-token");
    fs::write(&token_file, "bjt1.token\n").unwrap();
    Setup {
        _tmp: tmp,
        root,
        exe,
        token_file,
    }
}

fn plan(s: &Setup, start: bool) -> Plan {
    Plan {
        root: s.root.clone(),
        env: vec![
            ("BATON_COORDINATOR".into(), "mqtts://10.0.0.1:8883".into()),
            ("BATON_JOIN_TOKEN".into(), "bjt1.token".into()),
            ("BATON_AGENT_DATA_DIR".into(), "/var/lib/baton-agent".into()),
        ],
        data_dir: "/var/lib/baton-agent".into(),
        token_file: Some(s.token_file.clone()),
        start,
        executable: s.exe.clone(),
    }
}

#[test]
fn install_writes_every_file_with_its_mode_and_moves_the_token() {
    let s = setup();
    let sd = Recorder::default();
    let done = install(&plan(&s, true), &sd).unwrap();
    assert_eq!(
        done,
        Installed {
            binary: Binary::Copied { bytes: 12 },
            service: Service::NotRunning
        }
    );
    assert!(sd.calls.borrow().is_empty(), "{:?}", sd.calls.borrow());
    let r = &s.root;
    assert_eq!(fs::read(r.join(BINARY)).unwrap(), b"\x7fELF pretend");
    assert_eq!(mode(&r.join(BINARY)), 0o755);
    assert_eq!(mode(&r.join(ENV_FILE)), 0o600);
    assert_eq!(mode(&r.join(UNIT_FILE)), 0o644);
    assert_eq!(mode(&r.join(MODULES_FILE)), 0o644);
    assert_eq!(mode(&r.join("var/lib/baton-agent")), 0o700);
    assert_eq!(mode(&r.join("var/lib")), 0o755);
    assert_eq!(
        fs::read_to_string(r.join(ENV_FILE))
            .unwrap()
            .lines()
            .skip(1)
            .collect::<Vec<_>>(),
        [
            "BATON_COORDINATOR=mqtts://10.0.0.1:8883",
            "BATON_JOIN_TOKEN=bjt1.token",
            "BATON_AGENT_DATA_DIR=/var/lib/baton-agent"
        ]
    );
    assert_eq!(fs::read_to_string(r.join(UNIT_FILE)).unwrap(), unit());
    assert_eq!(
        fs::read_to_string(r.join(MODULES_FILE)).unwrap(),
        modules_load()
    );
    // Enabled for the next boot, the way systemctl would.
    assert_eq!(
        fs::read_link(r.join(WANTS_LINK)).unwrap(),
        Path::new("/etc/systemd/system/baton-agent.service")
    );
    assert!(!s.token_file.exists(), "the token file was not removed");
    assert_eq!(read_env(r).unwrap().unwrap(), plan(&s, true).env);
}

#[test]
fn with_systemd_the_unit_is_enabled_and_restarted_or_only_enabled() {
    for (start, want, service) in [
        (
            true,
            vec![
                "daemon-reload",
                "enable baton-agent.service",
                "restart baton-agent.service",
            ],
            Service::Started,
        ),
        (
            false,
            vec!["daemon-reload", "enable baton-agent.service"],
            Service::Enabled,
        ),
    ] {
        let s = setup();
        let sd = Recorder {
            running: true,
            ..Default::default()
        };
        let done = install(&plan(&s, start), &sd).unwrap();
        assert_eq!(done.service, service);
        assert_eq!(*sd.calls.borrow(), want);
        // systemctl makes the enable link itself.
        assert!(fs::symlink_metadata(s.root.join(WANTS_LINK)).is_err());
    }
}

#[test]
fn during_boot_the_start_is_queued_not_waited_for() {
    let s = setup();
    let sd = Recorder {
        running: true,
        booting: true,
        ..Default::default()
    };
    let done = install(&plan(&s, true), &sd).unwrap();
    assert_eq!(done.service, Service::Started);
    assert_eq!(
        *sd.calls.borrow(),
        [
            "daemon-reload",
            "enable baton-agent.service",
            "--no-block restart baton-agent.service"
        ]
    );
}

#[test]
fn a_bad_value_or_root_writes_nothing() {
    let s = setup();
    let mut p = plan(&s, false);
    p.env
        .push(("BATON_NODE_NAME".into(), "bad\nBATON_X=1".into()));
    let e = install(&p, &Recorder::default()).unwrap_err();
    assert!(matches!(e, InstallError::EnvValue { .. }), "{e}");
    let mut p = plan(&s, false);
    p.data_dir = "var/lib/relative".into();
    let e = install(&p, &Recorder::default()).unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    assert!(tree(&s.root).is_empty(), "{:?}", tree(&s.root));
    assert!(s.token_file.exists());
    let mut p = plan(&s, false);
    p.root = s.root.join("missing");
    assert!(matches!(
        install(&p, &Recorder::default()),
        Err(InstallError::Root(_))
    ));
}

#[test]
fn a_second_install_updates_the_files_and_keeps_the_data() {
    let s = setup();
    install(&plan(&s, false), &Recorder::default()).unwrap();
    let data = s.root.join("var/lib/baton-agent");
    fs::write(data.join("identity.json"), "{}").unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(s.root.join(UNIT_FILE), "stale").unwrap();
    // An agent update had switched this device: the binary installed now wins.
    let agent = data.join("agent");
    fs::create_dir_all(agent.join("versions/0.2.1-abc")).unwrap();
    fs::write(agent.join("update.json"), "{}").unwrap();
    std::os::unix::fs::symlink("versions/0.2.1-abc/baton-agent", agent.join("current")).unwrap();
    let mut p = plan(&s, false);
    p.env[0].1 = "mqtts://10.0.0.2:8883".into();
    p.token_file = None;
    install(&p, &Recorder::default()).unwrap();
    assert_eq!(
        fs::read_to_string(data.join("identity.json")).unwrap(),
        "{}"
    );
    assert_eq!(mode(&data), 0o700);
    assert!(!agent.join("update.json").exists());
    assert!(agent.join("current").symlink_metadata().is_err());
    assert_eq!(fs::read_to_string(s.root.join(UNIT_FILE)).unwrap(), unit());
    assert!(fs::read_to_string(s.root.join(ENV_FILE))
        .unwrap()
        .contains("10.0.0.2"));
}

#[test]
fn the_running_executable_is_not_copied_onto_itself() {
    let s = setup();
    let mut p = plan(&s, false);
    fs::create_dir_all(s.root.join("usr/local/bin")).unwrap();
    fs::rename(&s.exe, s.root.join(BINARY)).unwrap();
    p.executable = s.root.join(BINARY);
    let done = install(&p, &Recorder::default()).unwrap();
    assert_eq!(done.binary, Binary::AlreadyThere);
    assert_eq!(fs::read(s.root.join(BINARY)).unwrap(), b"\x7fELF pretend");
}

#[test]
fn uninstall_stops_the_unit_and_removes_every_file_it_wrote() {
    let s = setup();
    install(&plan(&s, false), &Recorder::default()).unwrap();
    let sd = Recorder {
        running: true,
        ..Default::default()
    };
    assert!(stop_service(&s.root, &sd).unwrap());
    assert!(!stop_service(&s.root, &Recorder::default()).unwrap());
    let removed = remove_files(&s.root, &sd).unwrap();
    assert_eq!(removed.len(), 6, "{removed:?}");
    assert_eq!(
        *sd.calls.borrow(),
        ["disable --now baton-agent.service", "daemon-reload"]
    );
    assert!(remove_tree(&s.root.join("var/lib/baton-agent")).unwrap());
    let left: Vec<String> = tree(&s.root)
        .into_iter()
        .filter(|p| !fs::metadata(s.root.join(p)).unwrap().is_dir())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Again: nothing to do, not an error.
    assert!(remove_files(&s.root, &Recorder::default())
        .unwrap()
        .is_empty());
    assert!(!remove_tree(&s.root.join("var/lib/baton-agent")).unwrap());
    assert!(read_env(&s.root).unwrap().is_none());
}

#[test]
fn an_admins_file_beside_the_env_file_stays() {
    let s = setup();
    install(&plan(&s, false), &Recorder::default()).unwrap();
    let mine = s.root.join("etc/baton-agent/registry.json");
    fs::write(&mine, "{}").unwrap();
    remove_files(&s.root, &Recorder::default()).unwrap();
    assert!(mine.exists());
    assert!(!s.root.join(ENV_FILE).exists());
}

#[test]
fn a_tree_with_a_mount_in_it_is_not_removed_and_a_run_dir_tmpfs_is_unmounted() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data dir");
    let inner = data.join("rootfs");
    fs::create_dir_all(&inner).unwrap();
    mount(
        Some("tmpfs"),
        &inner,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fs::write(inner.join("host-file"), "precious").unwrap();
    let r = remove_tree(&data);
    let still = inner.join("host-file").exists();
    umount2(&inner, MntFlags::MNT_DETACH).unwrap();
    let e = r.unwrap_err();
    assert!(
        matches!(&e, InstallError::Mounted { mounts, .. } if mounts[0].ends_with("data dir/rootfs")),
        "{e}"
    );
    assert!(still, "a file under the mount was removed");
    assert!(remove_tree(&data).unwrap());
    assert!(!data.exists());

    // A run dir the agent mounted a tmpfs on: unmounted and removed once empty.
    let run = tmp.path().join("run");
    fs::create_dir(&run).unwrap();
    fs::write(tmp.path().join("run.lock"), "").unwrap();
    mount(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fs::create_dir(run.join("other-node")).unwrap();
    assert!(
        !remove_run_dir(&run).unwrap(),
        "a run dir in use was removed"
    );
    fs::remove_dir(run.join("other-node")).unwrap();
    let removed = remove_run_dir(&run);
    if run.exists() {
        let _ = umount2(&run, MntFlags::MNT_DETACH);
    }
    assert!(removed.unwrap());
    assert!(!run.exists() && !tmp.path().join("run.lock").exists());
    assert!(!remove_run_dir(&run).unwrap());
}

#[test]
fn mountinfo_escapes_are_read() {
    assert_eq!(unescape_mountinfo(r"/a\040b\011c\134d"), "/a b\tc\\d");
    assert_eq!(unescape_mountinfo(r"/x\999\0"), r"/x\999\0");
    assert_eq!(unescape_mountinfo(r"/x\777"), r"/x\777");
}
