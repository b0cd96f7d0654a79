//! Median wall time of create + start + wait for exit + delete of `/bin/true` through
//! `YoukiRuntime`. Needs root and the host's static busybox.
//!
//!     cargo run --release -p baton-agent --example bench_runtime -- [ROOTFS] [RUNS]
//!
//! With ROOTFS (tests/bench/run.sh passes the rootfs of its runc bundle) both runtimes run
//! the very same files; without it a busybox rootfs is made in a tempdir. Unlike the runc
//! bundle, the container shares the host's network namespace (the runtime only joins
//! existing ones), which spares it the cost of creating one.
//!
//! `BATON_BENCH_SECCOMP=unconfined` runs the containers without the default seccomp filter,
//! to measure what the filter costs.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_agent::runtime::{
    ContainerId, ExitReason, RunSpec, Runtime, Seccomp, Security, YoukiRuntime,
};

fn main() -> Result<()> {
    // This binary is its own runtime helper (`YoukiRuntime` runs /proc/self/exe).
    baton_agent::runtime::serve_op_if_asked(drop);
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let given_rootfs = match args.first() {
        Some(a) if a.parse::<usize>().is_err() => Some(PathBuf::from(args.remove(0))),
        _ => None,
    };
    let runs: usize = args
        .first()
        .map(|s| s.parse().context("RUNS must be a number"))
        .transpose()?
        .unwrap_or(50);
    let dir = tempfile::tempdir()?;
    let rootfs = match given_rootfs {
        Some(r) => r
            .canonicalize()
            .with_context(|| format!("rootfs {}", r.display()))?,
        None => {
            let rootfs = dir.path().join("rootfs");
            for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
                std::fs::create_dir_all(rootfs.join(d))?;
            }
            std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
                .context("copy /bin/busybox")?;
            symlink("busybox", rootfs.join("bin/true"))?;
            rootfs
        }
    };

    let (tx, mut exits) = tokio::sync::mpsc::unbounded_channel();
    let rt = YoukiRuntime::new(dir.path().join("state"), tx)?;
    let cgroup_top = format!("baton-bench-{}", std::process::id());
    let seccomp = match std::env::var("BATON_BENCH_SECCOMP").as_deref() {
        Ok("unconfined") => Seccomp::Unconfined,
        _ => Seccomp::Default,
    };
    println!("seccomp: {seccomp:?}");
    let mut times = Vec::with_capacity(runs);
    let (mut t_run, mut t_wait, mut t_delete) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let spec = RunSpec {
            id: ContainerId::new(&format!("bench-{i}"))?,
            rootfs: rootfs.clone(),
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: "bench".into(),
            netns: None,
            cgroup_path: PathBuf::from(&cgroup_top).join("pod").join(i.to_string()),
            memory_limit_bytes: Some(64 << 20),
            cpu_limit_millis: None,
            cpu_request_millis: 100,
            pids_limit: 64,
            log_path: dir.path().join(format!("logs/{i}.log")),
            log_max_bytes: 1 << 20,
            mounts: vec![],
            security: Security {
                seccomp,
                ..Security::default()
            },
        };
        let start = Instant::now();
        rt.run(&spec)?;
        t_run.push(start.elapsed());
        let ev = exits.blocking_recv().context("exit channel closed")?;
        t_wait.push(start.elapsed());
        if ev.reason != ExitReason::Exited(0) {
            bail!("{} ended with {:?}", ev.id, ev.reason);
        }
        rt.delete(&spec.id)?;
        let total = start.elapsed();
        t_delete.push(total - t_wait[i]);
        t_wait[i] -= t_run[i];
        times.push(total);
    }
    // The runtime prunes empty parents but never the top level; remove ours in every hierarchy.
    // A just-removed child cgroup can keep its parent busy for a few milliseconds.
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(&cgroup_top)];
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        dirs.push(entry.path().join(&cgroup_top));
    }
    for _ in 0..50 {
        dirs.retain(|d| d.exists() && std::fs::remove_dir(d).is_err());
        if dirs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, mut v) in [("run", t_run), ("wait", t_wait), ("delete", t_delete)] {
        v.sort();
        println!("{name}: median {:.2} ms", ms(v[runs / 2]));
    }
    times.sort();
    println!(
        "runs={runs} median={:.2} ms min={:.2} ms max={:.2} ms",
        ms(times[runs / 2]),
        ms(times[0]),
        ms(times[runs - 1])
    );
    Ok(())
}
