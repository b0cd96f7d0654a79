//! Pod features on real containers through `YoukiRuntime`: exec (what probes use) inside the
//! container's namespaces, containers sharing a pod's network namespace, volumes bound in,
//! liveness probes that kill, and the security context (user, capabilities, read-only root).

mod rt_support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use baton_agent::probe::{self, ContainerProbes, Kind, Verdict};
use baton_agent::runtime::{ExecOutcome, ExitReason, Mount, Runtime, RuntimeError, Security};
use baton_agent::volumes::{self, StaticSecrets};
use baton_proto::{BString, BVec, ContainerSpec, Probe, ProbeHandler, PullPolicy};
use rt_support::{poll, Fixture};

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A network namespace made for one test and deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: &str) -> Self {
        let name = format!("baton-t-{test}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        Self { name }
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Unmounts a test's volumes even when it fails.
struct Volumes(PathBuf);
impl Drop for Volumes {
    fn drop(&mut self) {
        let _ = volumes::teardown(&self.0);
    }
}

#[test]
fn exec_runs_inside_the_containers_namespaces_and_root() {
    let mut fx = Fixture::new("exec");
    fs::write(fx.rootfs.join("only-in-rootfs"), "x").unwrap();
    let host_only = fx.dir.path().join("only-on-host");
    fs::write(&host_only, "x").unwrap();
    let mut spec = fx.spec("c", &["sleep", "1000"]);
    spec.hostname = "in-the-pod".into();
    fx.runtime.run(&spec).unwrap();
    let t = Duration::from_secs(10);
    let exec = |a: &[&str]| fx.runtime.exec(&spec.id, &args(a), t).unwrap();
    // Its root: a file only in the rootfs is there, a host file is not.
    assert_eq!(
        exec(&["test", "-f", "/only-in-rootfs"]),
        ExecOutcome::Exited(0)
    );
    assert_eq!(
        exec(&["test", "-e", host_only.to_str().unwrap()]),
        ExecOutcome::Exited(1)
    );
    // Its pid namespace (pid 1 is the container's sleep) and its UTS namespace.
    assert_eq!(
        exec(&["grep", "-q", "sleep", "/proc/1/cmdline"]),
        ExecOutcome::Exited(0)
    );
    assert_eq!(
        exec(&["sh", "-c", "test \"$(hostname)\" = in-the-pod"]),
        ExecOutcome::Exited(0)
    );
    assert_eq!(exec(&["sh", "-c", "exit 3"]), ExecOutcome::Exited(3));
    // Execs leave nothing behind in the runtime's state (they run every probe period).
    let leftovers: Vec<_> = fs::read_dir(fx.runtime.container_dir(&spec.id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tenant-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A command that outlives its timeout is killed and reaped.
    assert_eq!(
        fx.runtime
            .exec(
                &spec.id,
                &args(&["sleep", "100"]),
                Duration::from_millis(300)
            )
            .unwrap(),
        ExecOutcome::TimedOut
    );
    // It ran in the container's cgroup: the killed sleep left no process behind there
    // (only the init remains).
    let procs = poll("exec'd sleep gone from the cgroup", || {
        let p = fs::read_to_string(rt_support::cgroup_file(
            "pids",
            &spec.cgroup_path,
            "cgroup.procs",
            "cgroup.procs",
        ))
        .ok()?;
        (p.lines().count() == 1).then_some(p)
    });
    assert_eq!(procs.lines().count(), 1);
    fx.runtime.kill(&spec.id, 9).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Signaled(9));
    assert!(matches!(
        fx.runtime.exec(&spec.id, &args(&["true"]), t),
        Err(RuntimeError::NotRunning(_))
    ));
    fx.runtime.delete(&spec.id).unwrap();
    assert!(matches!(
        fx.runtime.exec(&spec.id, &args(&["true"]), t),
        Err(RuntimeError::NotFound(_))
    ));
}

#[test]
fn containers_of_a_pod_reach_each_other_on_localhost() {
    let mut fx = Fixture::new("localhost");
    let ns = Netns::new("lo");
    let mut server = fx.spec(
        "server",
        &["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"],
    );
    server.netns = Some(ns.path());
    let mut client = fx.spec(
        "client",
        &[
            "sh",
            "-c",
            "for i in $(seq 1 100); do wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1",
        ],
    );
    client.netns = Some(ns.path());
    fx.runtime.run(&server).unwrap();
    let (reason, log) = fx.run_to_end(&client);
    assert_eq!(reason, ExitReason::Exited(0), "log: {log}");
    assert_eq!(log, "hello from baton\n");
    fx.runtime.delete(&server.id).unwrap();
}

#[test]
fn an_empty_dir_carries_files_from_one_container_to_the_next() {
    let mut fx = Fixture::new("emptydir");
    let pod_dir = fx.dir.path().join("pod");
    let _v = Volumes(pod_dir.clone());
    let vols = volumes::prepare(
        &pod_dir,
        &[baton_proto::Volume {
            name: BString::new("work").unwrap(),
            source: baton_proto::VolumeSource::EmptyDir {
                size_limit_bytes: Some(1 << 20),
            },
        }],
        &volumes::Readers::default(),
        &volumes::NoSecrets,
        &volumes::NoSecrets,
    )
    .unwrap();
    let m = volumes::mounts(
        &vols,
        &[baton_proto::VolumeMount {
            name: BString::new("work").unwrap(),
            mount_path: BString::new("/work").unwrap(),
            read_only: false,
        }],
    )
    .unwrap();
    for (i, word) in ["first", "second"].iter().enumerate() {
        let mut init = fx.spec(
            &format!("init{i}"),
            &["sh", "-c", &format!("echo {word} >> /work/order")],
        );
        init.mounts = m.clone();
        assert_eq!(fx.run_to_end(&init).0, ExitReason::Exited(0));
    }
    let mut main = fx.spec("main", &["cat", "/work/order"]);
    main.mounts = m.clone();
    // A read-only mount of the same volume refuses writes.
    let mut ro = fx.spec("ro", &["sh", "-c", "echo x > /work/x"]);
    ro.mounts = vec![Mount {
        read_only: true,
        ..m[0].clone()
    }];
    let (reason, log) = fx.run_to_end(&main);
    assert_eq!(
        (reason, log.as_str()),
        (ExitReason::Exited(0), "first\nsecond\n")
    );
    let (reason, log) = fx.run_to_end(&ro);
    assert_ne!(
        reason,
        ExitReason::Exited(0),
        "wrote to a read-only volume: {log}"
    );
    assert!(!vols.path("work").unwrap().join("x").exists());
}

#[test]
fn a_secret_volume_is_readable_and_read_only_in_the_container() {
    let mut fx = Fixture::new("secretvol");
    let pod_dir = fx.dir.path().join("pod");
    let _v = Volumes(pod_dir.clone());
    let secrets = StaticSecrets::default();
    secrets.insert("db", &[("password", b"hunter2")]);
    // Mounted by a container running as 1000: its file.
    let mut readers = volumes::Readers::default();
    readers.add("creds", 1000, 0);
    let vols = volumes::prepare(
        &pod_dir,
        &[baton_proto::Volume {
            name: BString::new("creds").unwrap(),
            source: baton_proto::VolumeSource::Secret {
                secret_name: BString::new("db").unwrap(),
            },
        }],
        &readers,
        &secrets,
        &volumes::NoSecrets,
    )
    .unwrap();
    let mut spec = fx.spec(
        "c",
        &[
            "sh",
            "-c",
            "cat /etc/creds/password; echo; touch /etc/creds/x && echo WROTE; id -u",
        ],
    );
    // Asked writable, still read-only: secret volumes always are.
    spec.mounts = volumes::mounts(
        &vols,
        &[baton_proto::VolumeMount {
            name: BString::new("creds").unwrap(),
            mount_path: BString::new("/etc/creds").unwrap(),
            read_only: false,
        }],
    )
    .unwrap();
    // Its non-root user can read it (owner 1000, mode 0400).
    spec.security.run_as_user = Some(1000);
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "log: {log}");
    assert!(log.starts_with("hunter2\n"), "{log}");
    assert!(!log.contains("WROTE"), "{log}");
    assert!(log.ends_with("1000\n"), "{log}");
    // A container of another user given the same mount cannot read it.
    let mut other = fx.spec("other", &["cat", "/etc/creds/password"]);
    other.mounts = spec.mounts.clone();
    other.security.run_as_user = Some(2000);
    let (reason, log) = fx.run_to_end(&other);
    assert_ne!(reason, ExitReason::Exited(0), "uid 2000 read it: {log}");
    assert!(log.contains("Permission denied"), "{log}");
}

#[test]
fn run_as_user_and_group_and_a_read_only_root() {
    let mut fx = Fixture::new("user");
    let mut spec = fx.spec(
        "c",
        &["sh", "-c", "id -u; id -g; touch /newfile && echo WROTE-ROOT; echo ok > /tmp/t 2>/dev/null && echo WROTE-TMP; true"],
    );
    spec.security.run_as_user = Some(1234);
    spec.security.run_as_group = Some(4321);
    spec.security.read_only_root_filesystem = true;
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "log: {log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[..2], ["1234", "4321"], "{log}");
    assert!(!log.contains("WROTE"), "{log}");
    assert!(!fx.rootfs.join("newfile").exists());

    // As root, only the read-only root stops the write.
    let mut root = fx.spec("root", &["sh", "-c", "touch /newfile"]);
    root.security.read_only_root_filesystem = true;
    let (reason, _) = fx.run_to_end(&root);
    assert_ne!(reason, ExitReason::Exited(0));
    root.security.read_only_root_filesystem = false;
    let (reason, log) = fx.run_to_end(&root);
    assert_eq!(reason, ExitReason::Exited(0), "{log}");
    assert!(fx.rootfs.join("newfile").exists());
}

/// `CapEff` of the container's process, from /proc/self/status.
fn cap_eff(fx: &mut Fixture, name: &str, sec: Security) -> u64 {
    let mut spec = fx.spec(name, &["grep", "CapEff", "/proc/self/status"]);
    spec.security = sec;
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "log: {log}");
    let hex = log.split_whitespace().nth(1).unwrap_or_default();
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("no CapEff in {log:?}"))
}

#[test]
fn capabilities_follow_the_default_set_add_drop_and_privileged() {
    let mut fx = Fixture::new("caps");
    // containerd's default set, as Docker shows it.
    assert_eq!(cap_eff(&mut fx, "default", Security::default()), 0xa80425fb);
    let sec = Security {
        capabilities_add: vec!["NET_ADMIN".into()],
        capabilities_drop: vec!["cap_chown".into(), "KILL".into()],
        ..Security::default()
    };
    assert_eq!(
        cap_eff(&mut fx, "adddrop", sec),
        (0xa80425fb | 1 << 12) & !(1 << 0) & !(1 << 5)
    );
    let sec = Security {
        capabilities_add: vec!["NET_BIND_SERVICE".into()],
        capabilities_drop: vec!["ALL".into()],
        ..Security::default()
    };
    assert_eq!(cap_eff(&mut fx, "dropall", sec), 1 << 10);
    // Privileged: every capability the agent itself holds.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap();
    let all = u64::from_str_radix(bnd.trim(), 16).unwrap();
    let sec = Security {
        privileged: true,
        ..Security::default()
    };
    assert_eq!(cap_eff(&mut fx, "privileged", sec), all);
    // A non-root user keeps none after exec, as in Kubernetes.
    let sec = Security {
        run_as_user: Some(1000),
        ..Security::default()
    };
    assert_eq!(cap_eff(&mut fx, "nonroot", sec), 0);
    // An unknown name fails the run, before anything starts.
    let mut bad = fx.spec("bad", &["true"]);
    bad.security.capabilities_add = vec!["FLY".into()];
    assert!(matches!(
        fx.runtime.run(&bad),
        Err(RuntimeError::InvalidSpec { .. })
    ));
}

#[test]
fn a_privileged_container_sees_host_devices() {
    let mut fx = Fixture::new("privdev");
    let mut spec = fx.spec(
        "c",
        &[
            "sh",
            "-c",
            "test -c /dev/null && test -c /dev/kmsg && echo ok",
        ],
    );
    spec.security.privileged = true;
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!((reason, log.as_str()), (ExitReason::Exited(0), "ok\n"));
    // Unprivileged: no /dev/kmsg.
    let spec = fx.spec("u", &["test", "-c", "/dev/kmsg"]);
    assert_eq!(fx.run_to_end(&spec).0, ExitReason::Exited(1));
}

fn exec_probe(cmd: &[&str]) -> Probe {
    Probe {
        handler: ProbeHandler::Exec {
            command: BVec::from_vec(cmd.iter().map(|c| BString::new(*c).unwrap()).collect())
                .unwrap(),
        },
        initial_delay_secs: 0,
        period_secs: 1,
        timeout_secs: 5,
        success_threshold: 1,
        failure_threshold: 2,
    }
}

fn container_with(liveness: Probe) -> ContainerSpec {
    ContainerSpec {
        name: BString::new("c").unwrap(),
        image: BString::new("busybox").unwrap(),
        image_pull_policy: PullPolicy::IfNotPresent,
        command: BVec::new(),
        args: BVec::new(),
        env: BVec::new(),
        working_dir: None,
        ports: BVec::new(),
        resources: Default::default(),
        volume_mounts: BVec::new(),
        liveness_probe: Some(liveness),
        readiness_probe: None,
        startup_probe: None,
        security: Default::default(),
    }
}

/// The node loop's probe cycle, driven by hand against a real container: the exec liveness
/// probe passes while `/healthy` exists; once the container removes it, two failures in a
/// row ask for a kill, and the kill ends the container.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_exec_liveness_probe_kills_the_container() {
    let mut fx = Fixture::new("liveness");
    let spec = fx.spec(
        "c",
        &[
            "sh",
            "-c",
            "touch /healthy; sleep 2; rm /healthy; sleep 1000",
        ],
    );
    fx.runtime.run(&spec).unwrap();
    let rt: Arc<dyn Runtime> = Arc::new(
        baton_agent::runtime::YoukiRuntime::new(
            fx.dir.path().join("state"),
            tokio::sync::mpsc::unbounded_channel().0,
        )
        .unwrap()
        .with_helper(env!("CARGO_BIN_EXE_baton-agent")),
    );
    let c = container_with(exec_probe(&["test", "-f", "/healthy"]));
    let target = probe::Target {
        runtime: rt.clone(),
        id: spec.id.clone(),
        pod_ip: None,
    };
    let start = tokio::time::Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut probes = ContainerProbes::new(&c, now());
    let mut passes = 0;
    let deadline = start + rt_support::DEADLINE;
    let verdict = loop {
        assert!(tokio::time::Instant::now() < deadline, "no kill verdict");
        let due = probes.due(now());
        let mut verdict = Verdict::Nothing;
        for kind in due {
            assert_eq!(kind, Kind::Liveness);
            let ok = probe::run(c.liveness_probe.as_ref().unwrap(), &target)
                .await
                .is_ok();
            passes += u32::from(ok);
            verdict = probes.record(kind, ok);
        }
        if verdict != Verdict::Nothing {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        verdict,
        Verdict::Kill {
            reason: probe::LIVENESS_FAILED
        }
    );
    assert!(passes >= 1, "the probe never passed while /healthy existed");
    fx.runtime.kill(&spec.id, 9).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Signaled(9));
    fx.runtime.delete(&spec.id).unwrap();
}
