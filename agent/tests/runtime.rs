//! Real containers through `YoukiRuntime` (root, cgroups): lifecycle, limits, logs, cleanup.

mod rt_support;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};

use baton_agent::runtime::{ExitReason, Runtime, RuntimeError, YoukiRuntime};
use rt_support::{cgroup_dirs, cgroup_file, Fixture};

#[test]
fn args_env_cwd_and_hostname_reach_the_process() {
    let mut fx = Fixture::new("argv");
    let mut spec = fx.spec(
        "c",
        &[
            "sh",
            "-c",
            r#"echo "foo=$FOO"; echo "cwd=$(pwd)"; echo "host=$(hostname)"; echo "args=$1|$2""#,
            "sh",
            "x y",
            "z",
        ],
    );
    spec.env.push("FOO=bar baz".into());
    spec.cwd = "/tmp".into();
    spec.hostname = "pod-host".into();
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "log: {log}");
    assert_eq!(log, "foo=bar baz\ncwd=/tmp\nhost=pod-host\nargs=x y|z\n");
}

#[test]
fn exit_code_is_reported_and_stopped_container_is_not_running() {
    let mut fx = Fixture::new("exitcode");
    let spec = fx.spec("c", &["sh", "-c", "echo to-stderr >&2; exit 7"]);
    fx.runtime.run(&spec).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Exited(7));
    assert_eq!(fs::read_to_string(&spec.log_path).unwrap(), "to-stderr\n");
    assert!(matches!(
        fx.runtime.kill(&spec.id, 0),
        Err(RuntimeError::NotRunning(_))
    ));
    assert_eq!(fx.runtime.list().unwrap(), vec![spec.id.clone()]);
    fx.runtime.delete(&spec.id).unwrap();
    assert!(fx.runtime.list().unwrap().is_empty());
    assert!(matches!(
        fx.runtime.kill(&spec.id, 0),
        Err(RuntimeError::NotFound(_))
    ));
}

#[test]
fn memory_limit_gives_oom_killed() {
    let mut fx = Fixture::new("oom");
    let mut spec = fx.spec(
        "c",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
    );
    spec.memory_limit_bytes = Some(32 << 20);
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::OomKilled, "log: {log}");
}

#[test]
fn a_small_allocation_under_the_limit_is_not_oom() {
    let mut fx = Fixture::new("nooom");
    let mut spec = fx.spec(
        "c",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"],
    );
    spec.memory_limit_bytes = Some(32 << 20);
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "log: {log}");
}

#[test]
fn kill_reports_the_signal_and_delete_removes_state_and_cgroups() {
    let mut fx = Fixture::new("kill");
    let mut spec = fx.spec("c", &["sleep", "1000"]);
    spec.memory_limit_bytes = Some(64 << 20);
    spec.cpu_limit_millis = Some(500);
    spec.cpu_request_millis = 250;
    spec.pids_limit = 33;
    let pid = fx.runtime.run(&spec).unwrap();
    assert!(pid > 1);
    assert!(matches!(
        fx.runtime.run(&spec),
        Err(RuntimeError::AlreadyExists(_))
    ));
    fx.runtime.kill(&spec.id, 0).unwrap();

    // Limits landed in the container's cgroup.
    let cg = spec.cgroup_path.as_path();
    let read = |c: &str, v1: &str, v2: &str| {
        fs::read_to_string(cgroup_file(c, cg, v1, v2))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read("pids", "pids.max", "pids.max"), "33");
    assert_eq!(
        read("memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    let quota = read("cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(quota.starts_with("50000"), "quota {quota}");
    if Path::new("/sys/fs/cgroup/cpu").exists() {
        assert_eq!(read("cpu", "cpu.shares", "cpu.weight"), "256");
    }
    let procs =
        fs::read_to_string(cgroup_file("pids", cg, "cgroup.procs", "cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "init {pid} not in {procs}"
    );

    fx.runtime.kill(&spec.id, 9).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Signaled(9));

    let state = fx.runtime.container_dir(&spec.id);
    assert!(state.exists());
    fx.runtime.delete(&spec.id).unwrap();
    assert!(!state.exists());
    for d in cgroup_dirs(cg) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    // The empty pod and node levels are pruned too; the top level is never touched.
    let memory_top = cgroup_file("memory", Path::new(&fx.cgroup_top), "", "");
    assert!(!memory_top.join("node").exists());
    assert!(memory_top.exists());
    // Idempotent, and unknown ids are fine.
    fx.runtime.delete(&spec.id).unwrap();
    fx.runtime.delete(&fx.id("never-created")).unwrap();
}

#[test]
fn delete_of_a_running_container_kills_it_and_reports_the_exit() {
    let mut fx = Fixture::new("delrun");
    let spec = fx.spec("c", &["sh", "-c", "sleep 1000 & sleep 1000"]);
    fx.runtime.run(&spec).unwrap();
    fx.runtime.delete(&spec.id).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Signaled(9));
    for d in cgroup_dirs(&spec.cgroup_path) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn sigterm_reaches_a_process_that_handles_it() {
    let mut fx = Fixture::new("term");
    let spec = fx.spec(
        "c",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    fx.runtime.run(&spec).unwrap();
    rt_support::poll("ready", || {
        fs::read_to_string(&spec.log_path)
            .ok()
            .filter(|l| l.contains("ready"))
    });
    fx.runtime.kill(&spec.id, 15).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Exited(3));
    assert!(fs::read_to_string(&spec.log_path)
        .unwrap()
        .contains("got-term"));
    fx.runtime.delete(&spec.id).unwrap();
}

/// Also checks that SIGPIPE has its default action in the container (the agent ignores it, and
/// ignored signals survive exec): otherwise `yes` would never end after `head` exits.
#[test]
fn logs_stay_within_the_bound() {
    let mut fx = Fixture::new("logs");
    let mut spec = fx.spec(
        "c",
        &["sh", "-c", "yes 0123456789 | head -c 3000000; echo done"],
    );
    spec.log_max_bytes = 64 * 1024;
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0));
    let rotated = fs::read_to_string(spec.log_path.with_extension("log.1")).unwrap();
    assert!(
        log.len() as u64 <= spec.log_max_bytes,
        "log is {} bytes",
        log.len()
    );
    assert!(
        rotated.len() as u64 <= spec.log_max_bytes,
        "rotated log is {} bytes",
        rotated.len()
    );
    assert!(log.ends_with("done\n"));
    assert!(rotated.len() as u64 > spec.log_max_bytes / 2);
    // Rotation may cut a line at either end of the file; everything in between is intact.
    let lines: Vec<&str> = rotated.lines().collect();
    assert!(lines[1..lines.len() - 1].iter().all(|l| *l == "0123456789"));
    // The log, its rotated copy, and the line times of each (small: a few marks).
    let logs_dir = spec.log_path.parent().unwrap();
    let mut names: Vec<String> = fs::read_dir(logs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["c.log", "c.log.1", "c.log.1.times", "c.log.times"]);
    for t in ["c.log.times", "c.log.1.times"] {
        let len = fs::metadata(logs_dir.join(t)).unwrap().len();
        assert!(len <= 1024, "{t} is {len} bytes");
    }
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let mut fx = Fixture::new("pids");
    let mut spec = fx.spec(
        "c",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 50 ]; do sleep 60 & i=$((i+1)); done; echo all-forked",
        ],
    );
    spec.pids_limit = 10;
    fx.runtime.run(&spec).unwrap();
    let reason = fx.wait_exit(&spec.id);
    let log = fs::read_to_string(&spec.log_path).unwrap();
    assert!(
        !log.contains("all-forked"),
        "fork loop was not limited: {reason:?} {log}"
    );
    assert!(
        log.contains("fork"),
        "expected a fork failure: {reason:?} {log}"
    );
    fx.runtime.delete(&spec.id).unwrap();
}

#[test]
fn a_new_runtime_instance_lists_and_deletes_leftovers() {
    let mut fx = Fixture::new("readopt");
    let spec = fx.spec("c", &["sleep", "1000"]);
    fx.runtime.run(&spec).unwrap();
    // An agent restart: a second runtime over the same state dir, without the reaper.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let again = YoukiRuntime::new(fx.dir.path().join("state"), tx)
        .unwrap()
        .with_helper(env!("CARGO_BIN_EXE_baton-agent"));
    assert_eq!(again.list().unwrap(), vec![spec.id.clone()]);
    again.kill(&spec.id, 0).unwrap();
    again.delete(&spec.id).unwrap();
    assert!(again.list().unwrap().is_empty());
    // The original process is still the parent, so its reaper reports the exit.
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Signaled(9));
    for d in cgroup_dirs(&spec.cgroup_path) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn a_missing_binary_fails_run_and_leaves_nothing() {
    let fx = Fixture::new("nobin");
    let spec = fx.spec("c", &["/bin/does-not-exist"]);
    let err = fx.runtime.run(&spec).unwrap_err();
    assert!(matches!(err, RuntimeError::Backend { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(fx.runtime.list().unwrap().is_empty());
    for d in cgroup_dirs(&spec.cgroup_path) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// Creating containers while other threads spawn commands must not hang the container's init:
/// `Command::spawn` holds std's environment lock while it forks, and a child forked by
/// libcontainer at that moment must never need that lock. The creates run on a worker thread so
/// that a hang fails the test instead of stalling the suite.
#[test]
fn creates_do_not_hang_while_other_threads_spawn_commands() {
    let finished = creates_finish_while(
        "forkrace",
        10,
        2,
        |stop, started| {
            (0..2)
                .map(|_| {
                    let (stop, started) = (stop.clone(), started.clone());
                    std::thread::spawn(move || {
                        started.wait();
                        while !stop.load(Ordering::Relaxed) {
                            let _ = std::process::Command::new("/bin/true").status();
                        }
                    })
                })
                .collect()
        },
        |fx, i| {
            let mut spec = fx.spec(&format!("c{i}"), &["sh", "-c", "echo $FOO"]);
            spec.env.push(format!("FOO=run{i}"));
            (spec, format!("run{i}\n"))
        },
    );
    assert!(
        finished,
        "a container create hung while other threads spawned commands"
    );
}

/// libcontainer clones the container's processes off this multi-threaded process, and the
/// child allocates. Under glibc's malloc a child cloned while another thread held the arena
/// lock it needed waited forever (CI: a pod stuck in `youki:[1:INTER]` on `main_arena`). Many
/// threads allocating and freeing across threads (more than glibc has arenas) while
/// containers are created: every create must finish.
#[test]
fn creates_do_not_hang_while_other_threads_allocate() {
    let (give, take) = mpsc::sync_channel::<Vec<u8>>(64);
    let take = Arc::new(Mutex::new(take));
    let finished = creates_finish_while(
        "allocrace",
        40,
        24,
        |stop, started| {
            (0..24)
                .map(|t| {
                    let (stop, give, take) = (stop.clone(), give.clone(), take.clone());
                    let started = started.clone();
                    std::thread::spawn(move || {
                        started.wait();
                        let mut n = t;
                        while !stop.load(Ordering::Relaxed) {
                            n = (n * 7 + 13) % 97;
                            // Sizes past glibc's tcache, freed by another thread than the
                            // one that allocated them.
                            let _ = give.try_send(vec![n as u8; 2048 + n * 700]);
                            let got = take.lock().unwrap().try_recv();
                            drop(got);
                        }
                    })
                })
                .collect()
        },
        |fx, i| {
            (
                fx.spec(&format!("c{i}"), &["echo", "ok"]),
                "ok\n".to_owned(),
            )
        },
    );
    assert!(
        finished,
        "a container create hung while other threads allocated"
    );
}

/// Runs `runs` containers one after the other on a worker thread (so that a hang fails the
/// test instead of stalling the suite) while `background` threads run, checking each exits
/// 0 with the expected log. False if one did not finish within the deadline.
fn creates_finish_while(
    test: &'static str,
    runs: usize,
    threads: usize,
    background: impl FnOnce(&Arc<AtomicBool>, &Arc<Barrier>) -> Vec<std::thread::JoinHandle<()>>,
    spec: impl Fn(&Fixture, usize) -> (baton_agent::runtime::RunSpec, String) + Send + 'static,
) -> bool {
    let stop = Arc::new(AtomicBool::new(false));
    // Every background thread waits here once: all have started before the first create
    // (a thread starting while a container is cloned is another hang, not this test's).
    let started = Arc::new(Barrier::new(threads + 1));
    let threads = background(&stop, &started);
    started.wait();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut fx = Fixture::new(test);
        for i in 0..runs {
            let (spec, want) = spec(&fx, i);
            let (reason, log) = fx.run_to_end(&spec);
            let _ = done_tx.send(Some((i, reason, log, want)));
        }
        let _ = done_tx.send(None);
    });
    let mut finished = false;
    while let Ok(msg) = done_rx.recv_timeout(rt_support::DEADLINE) {
        match msg {
            Some((i, reason, log, want)) => {
                assert_eq!(reason, ExitReason::Exited(0), "container {i}: {log}");
                assert_eq!(log, want, "container {i}");
            }
            None => {
                finished = true;
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    finished
}

/// An agent killed between create and start leaves a container whose init is alive in its
/// cgroup but still waits to exec (state `created`). The next agent must not adopt it: it
/// would report Running for a container that never runs its command (found by the chaos
/// suite, tests/tests/chaos.rs). The state file is rewritten to `created` to stand for that
/// moment, which the runtime API cannot stop at.
#[test]
fn a_created_but_never_started_container_is_not_adoptable() {
    let mut fx = Fixture::new("created");
    let spec = fx.spec("c", &["sleep", "1000"]);
    fx.runtime.run(&spec).unwrap();
    let state = fx
        .dir
        .path()
        .join("state/containers")
        .join(spec.id.as_str())
        .join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    assert_eq!(v["status"], "running");
    v["status"] = "created".into();
    fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();

    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let again = YoukiRuntime::new(fx.dir.path().join("state"), tx)
        .unwrap()
        .with_helper(env!("CARGO_BIN_EXE_baton-agent"));
    let found = again.state(&spec.id).unwrap().expect("state is there");
    assert!(!found.running, "a created container counted as running");
    assert!(matches!(
        again.adopt(&spec.id, &spec.log_path, spec.log_max_bytes),
        Err(RuntimeError::NotRunning(_))
    ));
    again.delete(&spec.id).unwrap();
    assert_eq!(fx.wait_exit(&spec.id), ExitReason::Signaled(9));
}

/// libcontainer rewrites `state.json` in place (truncate, then write) on every kill, and
/// reads `/proc/<pid>/stat` after opening `/proc/<pid>` on every load. Loads racing a kill
/// on another thread, or a container's exit, must not fail: a failed load in `delete` left a
/// stopped pod's container and cgroup behind (CI, `--test skeleton`).
#[test]
fn loads_racing_kills_and_exits_do_not_fail() {
    let fx = Fixture::new("race");
    let spec = fx.spec("c", &["sh", "-c", "trap '' CONT; sleep 1000"]);
    fx.runtime.run(&spec).unwrap();
    std::thread::scope(|s| {
        let rt = &fx.runtime;
        let id = &spec.id;
        let killer = s.spawn(move || {
            for _ in 0..400 {
                // SIGCONT changes nothing in the container, but libcontainer saves its state.
                rt.kill(id, 18).unwrap();
            }
        });
        let mut loads = 0;
        while !killer.is_finished() {
            let state = rt.state(id).unwrap().expect("state while running");
            assert!(state.running, "the container stopped under SIGCONT");
            loads += 1;
        }
        killer.join().unwrap();
        assert!(loads > 0);
    });
    // A delete racing the exit of the container's init also succeeds and leaves nothing.
    fx.runtime.kill(&spec.id, 9).unwrap();
    fx.runtime.delete(&spec.id).unwrap();
    for d in cgroup_dirs(&spec.cgroup_path) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// Zombie children of this process whose name is libcontainer's (`youki:[1:INTER]`,
/// `youki:[2:INIT]`).
fn youki_zombies() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, ppid) = (rest.next(), rest.next());
        if state == Some("Z") && ppid == Some(me.as_str()) && comm.starts_with("youki") {
            out.push(format!("{} {comm}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// Issue 10: each create that libcontainer failed after cloning left its intermediate and
/// init processes as zombies of the agent, forever (12 after 6 attempts). A network namespace
/// that is gone (a pod sandbox removed from outside) fails inside the clone, as in the field.
#[test]
fn failed_creates_leave_no_zombies() {
    let mut fx = Fixture::new("zombies");
    let before = youki_zombies();
    for i in 0..20 {
        let mut spec = fx.spec(&format!("c{i}"), &["true"]);
        spec.netns = Some(fx.dir.path().join("no-such-netns"));
        let err = fx
            .runtime
            .run(&spec)
            .expect_err("a create into a missing netns");
        assert!(matches!(err, RuntimeError::Backend { .. }), "{err}");
        assert!(fx.runtime.list().unwrap().is_empty());
    }
    let left: Vec<String> = youki_zombies()
        .into_iter()
        .filter(|z| !before.contains(z))
        .collect();
    assert!(left.is_empty(), "zombies left by failed creates: {left:?}");
    // The runtime still creates containers afterwards.
    let ok = fx.spec("ok", &["true"]);
    assert_eq!(fx.run_to_end(&ok).0, ExitReason::Exited(0));
}
