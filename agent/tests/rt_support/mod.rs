//! Shared by `tests/runtime.rs` and `tests/network.rs`: a busybox rootfs, a runtime fixture that
//! cleans up containers and cgroups on drop, and small polling helpers (no timed assertions:
//! deadlines are generous and only bound a hang).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_agent::runtime::{ContainerId, ExitEvent, ExitReason, RunSpec, Runtime, YoukiRuntime};
use tokio::sync::mpsc::UnboundedReceiver;

pub const DEADLINE: Duration = Duration::from_secs(30);

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "dd", "sleep", "httpd", "wget", "ip", "env", "pwd", "hostname", "yes",
    "head", "seq", "true", "false", "ls", "printf", "mkdir", "id", "grep", "touch", "nc", "test",
];

/// A rootfs with the host's static busybox and its applet links under `dir/rootfs`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "www"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    fs::write(root.join("www/index.html"), "hello from baton\n").unwrap();
    root
}

/// Removes a cgroup directory tree bottom-up (cgroup dirs only go away with rmdir).
pub fn rmdir_tree(path: &Path) {
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    // A just-removed child can keep its parent busy for a few milliseconds.
    for _ in 0..50 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every cgroup hierarchy's directory for a relative path.
pub fn cgroup_dirs(rel: &Path) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    fs::read_dir(root)
        .map(|rd| rd.flatten().map(|e| e.path().join(rel)).collect())
        .unwrap_or_default()
}

/// Path of a controller file: v1 `<controller>/<rel>/<v1>`, v2 `<rel>/<v2>`.
pub fn cgroup_file(controller: &str, rel: &Path, v1: &str, v2: &str) -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root.join(rel).join(v2)
    } else {
        root.join(controller).join(rel).join(v1)
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub runtime: YoukiRuntime,
    pub exits: UnboundedReceiver<ExitEvent>,
    /// Top-level cgroup of this test, removed on drop.
    pub cgroup_top: String,
    pub name: String,
}

impl Fixture {
    pub fn new(test: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let (tx, exits) = tokio::sync::mpsc::unbounded_channel();
        let runtime = YoukiRuntime::new(dir.path().join("state"), tx)
            .unwrap()
            .with_helper(env!("CARGO_BIN_EXE_baton-agent"));
        let name = format!("{test}-{}", std::process::id());
        Self {
            cgroup_top: format!("baton-test-{name}"),
            dir,
            rootfs,
            runtime,
            exits,
            name,
        }
    }

    pub fn id(&self, suffix: &str) -> ContainerId {
        ContainerId::new(&format!("{}-{suffix}", self.name)).unwrap()
    }

    /// A spec with harmless defaults; the cgroup is `<cgroup_top>/node/pod/<suffix>`.
    pub fn spec(&self, suffix: &str, args: &[&str]) -> RunSpec {
        RunSpec {
            id: self.id(suffix),
            rootfs: self.rootfs.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: "test".into(),
            netns: None,
            cgroup_path: PathBuf::from(&self.cgroup_top)
                .join("node/pod")
                .join(suffix),
            memory_limit_bytes: None,
            cpu_limit_millis: None,
            cpu_request_millis: 100,
            pids_limit: 64,
            log_path: self.dir.path().join("logs").join(format!("{suffix}.log")),
            log_max_bytes: 1 << 20,
            mounts: vec![],
            security: Default::default(),
        }
    }

    /// Waits for the exit event of `id` (other containers' events are skipped).
    pub fn wait_exit(&mut self, id: &ContainerId) -> ExitReason {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            match self.exits.try_recv() {
                Ok(ev) if &ev.id == id => return ev.reason,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        panic!("no exit event for {id} within {DEADLINE:?}");
    }

    /// Runs to completion and returns the exit and the log.
    pub fn run_to_end(&mut self, spec: &RunSpec) -> (ExitReason, String) {
        self.runtime.run(spec).unwrap();
        let reason = self.wait_exit(&spec.id);
        let log = fs::read_to_string(&spec.log_path).unwrap_or_default();
        self.runtime.delete(&spec.id).unwrap();
        (reason, log)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.runtime.list().unwrap_or_default() {
            let _ = self.runtime.delete(&id);
        }
        for d in cgroup_dirs(Path::new(&self.cgroup_top)) {
            rmdir_tree(&d);
        }
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
