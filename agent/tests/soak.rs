//! The runtime under load, through `YoukiRuntime` with real containers (root, cgroups): no
//! create, start, exec or delete ever hangs; the agent process never clones libcontainer's
//! processes itself; its threads do not grow with containers (issue 14).

mod rt_support;

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use baton_agent::runtime::{ContainerId, ExecOutcome, ExitReason, Runtime};
use rt_support::{poll, Fixture};

/// One operation past this counts as hung (they take milliseconds).
const OP_DEADLINE: Duration = Duration::from_secs(60);

/// What each worker is doing, and since when: what the watchdog reports if it hangs.
type Doing = Arc<Mutex<Option<(String, Instant)>>>;

fn doing(slot: &Doing, what: Option<String>) {
    *slot.lock().unwrap() = what.map(|w| (w, Instant::now()));
}

/// The soak of issue 14: 2,000 create + start + wait + delete cycles of a busybox container
/// on 4 threads, while exec probes run into a long-lived container every 50 ms and logging
/// is on at debug level (in this process and in the runtime's helpers). Every operation must
/// finish within [`OP_DEADLINE`]; a hang fails the test naming the operation.
/// `BATON_SOAK_CYCLES` changes the number of cycles (for a quick local run).
#[test]
fn two_thousand_creates_with_probes_and_debug_logging_never_hang() {
    let cycles: usize = std::env::var("BATON_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // Before any thread of ours starts; the helpers inherit it.
    std::env::set_var("RUST_LOG", "debug");
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_test_writer()
        .try_init();
    let mut fx = Fixture::new("soak");
    let mut exits = std::mem::replace(&mut fx.exits, tokio::sync::mpsc::unbounded_channel().1);
    let fx = Arc::new(fx);
    let waiting: Arc<Mutex<HashMap<ContainerId, mpsc::Sender<ExitReason>>>> = Arc::default();
    {
        let waiting = waiting.clone();
        std::thread::spawn(move || {
            while let Some(ev) = exits.blocking_recv() {
                if let Some(tx) = waiting.lock().unwrap().remove(&ev.id) {
                    let _ = tx.send(ev.reason);
                }
            }
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut slots: Vec<Doing> = Vec::new();
    let (failed_tx, failed_rx) = mpsc::channel::<String>();

    // The long-lived container the probes exec into.
    let target = fx.spec("probed", &["sleep", "100000"]);
    fx.runtime.run(&target).unwrap();
    let probes = Arc::new(AtomicUsize::new(0));
    {
        let (fx, stop, probes, failed) =
            (fx.clone(), stop.clone(), probes.clone(), failed_tx.clone());
        let slot = Doing::default();
        slots.push(slot.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                doing(
                    &slot,
                    Some(format!("exec probe {}", probes.load(Ordering::Relaxed))),
                );
                let got = fx.runtime.exec(
                    &target.id,
                    &["test".into(), "-d".into(), "/tmp".into()],
                    Duration::from_secs(10),
                );
                doing(&slot, None);
                if got.as_ref().ok() != Some(&ExecOutcome::Exited(0)) {
                    let _ = failed.send(format!("probe: {got:?}"));
                    return;
                }
                probes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    for _ in 0..4 {
        let (fx, stop, next, done, waiting, failed) = (
            fx.clone(),
            stop.clone(),
            next.clone(),
            done.clone(),
            waiting.clone(),
            failed_tx.clone(),
        );
        let slot = Doing::default();
        slots.push(slot.clone());
        std::thread::spawn(move || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= cycles || stop.load(Ordering::Relaxed) {
                return;
            }
            let spec = fx.spec(&format!("c{i}"), &["sh", "-c", "echo ok"]);
            let (tx, rx) = mpsc::channel();
            waiting.lock().unwrap().insert(spec.id.clone(), tx);
            doing(&slot, Some(format!("run (create + start) of cycle {i}")));
            if let Err(e) = fx.runtime.run(&spec) {
                let _ = failed.send(format!("cycle {i}: run: {e:?}"));
                return;
            }
            doing(&slot, Some(format!("wait for the exit of cycle {i}")));
            let reason = rx.recv_timeout(OP_DEADLINE + Duration::from_secs(5));
            doing(&slot, Some(format!("delete of cycle {i}")));
            let deleted = fx.runtime.delete(&spec.id);
            doing(&slot, None);
            let log = fs::read_to_string(&spec.log_path).unwrap_or_default();
            let _ = fs::remove_file(&spec.log_path);
            if reason != Ok(ExitReason::Exited(0)) || log != "ok\n" || deleted.is_err() {
                let _ = failed.send(format!(
                    "cycle {i}: exit {reason:?}, log {log:?}, delete {deleted:?}"
                ));
                return;
            }
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(failed_tx);

    let started = Instant::now();
    let verdict = loop {
        if let Ok(f) = failed_rx.recv_timeout(Duration::from_secs(1)) {
            break Err(f);
        }
        let hung: Vec<String> = slots
            .iter()
            .filter_map(|s| {
                let s = s.lock().unwrap();
                let (what, since) = s.as_ref()?;
                (since.elapsed() > OP_DEADLINE).then(|| format!("{what} ({:?})", since.elapsed()))
            })
            .collect();
        if !hung.is_empty() {
            break Err(format!("hung: {hung:?}"));
        }
        if done.load(Ordering::Relaxed) == cycles {
            break Ok(());
        }
    };
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "soak: {} cycles and {} probes in {:?}",
        done.load(Ordering::Relaxed),
        probes.load(Ordering::Relaxed),
        started.elapsed()
    );
    verdict.unwrap();
    assert!(probes.load(Ordering::Relaxed) > 0, "no probe ran");
}

/// `/proc/<pid>/stat` fields after the command name: (state, ppid).
fn state_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    Some((rest.next()?.to_owned(), rest.next()?.parse().ok()?))
}

/// Every direct child of this process (of any of its threads), with its name.
fn children() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let kids = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in kids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_owned()));
        }
    }
    out
}

/// libcontainer's intermediate process (`youki:[1:INTER]`) is a child of whoever runs the
/// create or exec: it must never be this process, only the single-threaded runtime helper.
/// The container's init becomes this process's child once the helper has exited (we are
/// its subreaper), so the runtime can reap it and read its exit status.
#[test]
fn the_agent_process_never_clones_containers_itself() {
    let mut fx = Fixture::new("noclone");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (_, comm) in children() {
                    let mut seen = seen.lock().unwrap();
                    if !seen.contains(&comm) {
                        seen.push(comm);
                    }
                }
            }
        })
    };
    let long = fx.spec("long", &["sleep", "1000"]);
    let pid = fx.runtime.run(&long).unwrap();
    for i in 0..5 {
        let spec = fx.spec(&format!("c{i}"), &["true"]);
        assert_eq!(fx.run_to_end(&spec).0, ExitReason::Exited(0));
        let probe = fx
            .runtime
            .exec(&long.id, &["true".into()], Duration::from_secs(10))
            .unwrap();
        assert_eq!(probe, ExecOutcome::Exited(0));
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|c| c.contains("INTER")),
        "libcontainer cloned off this process: children seen {seen:?}"
    );
    assert!(
        seen.iter().any(|c| c == "baton-agent"),
        "no runtime helper seen: {seen:?}"
    );
    let (state, parent) = state_and_parent(pid).expect("the init runs");
    assert_eq!(
        (state.as_str(), parent),
        ("S", std::process::id()),
        "the init is not this process's child"
    );
    fx.runtime.delete(&long.id).unwrap();
    assert!(matches!(
        fx.wait_exit(&long.id),
        ExitReason::Signaled(9) | ExitReason::Exited(_)
    ));
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").unwrap().count()
}

/// Waiting for containers takes no thread per container: with 10 running the process has
/// as many threads as with none, and as many again once they are deleted.
#[test]
fn threads_do_not_grow_with_containers() {
    let fx = Fixture::new("threads");
    let idle = threads();
    let specs: Vec<_> = (0..10)
        .map(|i| fx.spec(&format!("c{i}"), &["sleep", "1000"]))
        .collect();
    for s in &specs {
        fx.runtime.run(s).unwrap();
    }
    poll("10 containers running", || {
        specs
            .iter()
            .all(|s| fx.runtime.kill(&s.id, 0).is_ok())
            .then_some(())
    });
    assert_eq!(threads(), idle, "threads with 10 containers vs none");
    for s in &specs {
        fx.runtime.delete(&s.id).unwrap();
    }
    assert_eq!(threads(), idle, "threads after the containers are gone");
}
