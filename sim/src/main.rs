//! `baton-sim`: N hollow agents ([`baton_sim::Hollow`]) in one process, each on its own
//! MQTT connection through the agent's own bus, for measuring a coordinator and its broker
//! at fleet sizes no lab can boot (tests/bench/scale.sh). Prints a JSON line of counts every
//! `--stats-secs`; reads commands on stdin: `lose P` (P% of the connected nodes vanish, as
//! after a power cut: their connections drop without a DISCONNECT) and `restore` (they
//! come back, with the state they had).

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_agent::bus::{Bus, BusEvent};
use baton_agent::link_profile::{LinkArgs, Settings};
use baton_proto::NodeName;
use baton_sim::{Hollow, Input, Wanted};
use clap::Parser;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::{mpsc, watch};

#[derive(Parser, Debug)]
#[command(
    name = "baton-sim",
    version,
    about = "Simulates a fleet of Baton agents"
)]
struct Args {
    /// The broker, as agents are given it (mqtt://HOST:PORT; unenrolled nodes, so the
    /// coordinator must accept them: `baton server --insecure-mqtt`).
    #[arg(
        long,
        env = "BATON_SIM_COORDINATOR",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    coordinator: String,
    /// How many nodes.
    #[arg(long, env = "BATON_SIM_NODES", default_value_t = 100)]
    nodes: u32,
    /// Node names are PREFIX-INDEX.
    #[arg(long, env = "BATON_SIM_PREFIX", default_value = "sim")]
    prefix: String,
    /// The first node's index (several simulators can share a fleet).
    #[arg(long, env = "BATON_SIM_FIRST_INDEX", default_value_t = 0)]
    first_index: u32,
    /// How long a pod takes from desired to Running.
    #[arg(long, env = "BATON_SIM_START_DELAY_MS", default_value_t = 1000)]
    start_delay_ms: u64,
    /// New connections per second while the fleet comes up (a broker's accept queue is
    /// finite; so is a real fleet's boot storm).
    #[arg(long, env = "BATON_SIM_CONNECT_PER_SEC", default_value_t = 200)]
    connect_per_sec: u32,
    /// Every minute, this percentage of the nodes sees one container crash and restart.
    #[arg(long, env = "BATON_SIM_CRASH_PERCENT_PER_MIN", default_value_t = 0.0)]
    crash_percent_per_min: f64,
    /// Print counts every this many seconds.
    #[arg(long, env = "BATON_SIM_STATS_SECS", default_value_t = 5)]
    stats_secs: u64,
    #[command(flatten)]
    link: LinkArgs,
}

/// What the chaos and control tasks tell one node.
#[derive(Debug, Clone, Copy)]
enum Ctl {
    Crash,
    Lose,
}

#[derive(Default)]
struct Counts {
    connected: AtomicI64,
    running: AtomicI64,
    published: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicI64,
}

struct NodeCtx {
    index: u32,
    name: NodeName,
    url: String,
    settings: Settings,
    start_delay: Duration,
    counts: Arc<Counts>,
    restore: watch::Receiver<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "warn".into())
        .parse()
        .context("RUST_LOG")?;
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    raise_open_files()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// One connection per node: the soft limit (often 1,024) would stop a fleet early.
fn raise_open_files() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("cannot raise the open files limit")?;
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let settings = args.link.settings(false);
    let counts = Arc::new(Counts::default());
    let (restore_tx, restore_rx) = watch::channel(0u64);
    let mut controls = Vec::new();
    let started = Instant::now();
    let pace = Duration::from_secs_f64(1.0 / f64::from(args.connect_per_sec.max(1)));
    for k in 0..args.nodes {
        let index = args.first_index + k;
        let name = NodeName::new(&format!("{}-{index}", args.prefix))
            .with_context(|| format!("node name {}-{index}", args.prefix))?;
        let (tx, rx) = mpsc::channel(4);
        controls.push((tx, Arc::new(AtomicBool::new(false))));
        let lost = controls[k as usize].1.clone();
        let ctx = NodeCtx {
            index,
            name,
            url: args.coordinator.clone(),
            settings,
            start_delay: Duration::from_millis(args.start_delay_ms),
            counts: counts.clone(),
            restore: restore_rx.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = node(ctx, rx, lost).await {
                tracing::error!(error = %e, "simulated node stopped");
            }
        });
        tokio::time::sleep(pace).await;
    }
    eprintln!(
        "baton-sim: {} nodes started in {:.1}s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    let controls = Arc::new(controls);
    spawn_chaos(controls.clone(), args.crash_percent_per_min);
    spawn_stdin(controls, restore_tx);
    let mut every = tokio::time::interval(Duration::from_secs(args.stats_secs.max(1)));
    loop {
        every.tick().await;
        println!(
            "{{\"secs\":{:.1},\"nodes\":{},\"connected\":{},\"pods_running\":{},\"published\":{},\"dropped\":{},\"lost\":{}}}",
            started.elapsed().as_secs_f64(),
            args.nodes,
            counts.connected.load(Ordering::Relaxed),
            counts.running.load(Ordering::Relaxed),
            counts.published.load(Ordering::Relaxed),
            counts.dropped.load(Ordering::Relaxed),
            counts.lost.load(Ordering::Relaxed),
        );
    }
}

type Controls = Arc<Vec<(mpsc::Sender<Ctl>, Arc<AtomicBool>)>>;

/// Crashes a container on random nodes at the asked rate, spread over each minute.
fn spawn_chaos(controls: Controls, percent_per_min: f64) {
    if percent_per_min <= 0.0 || controls.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let per_sec = controls.len() as f64 * percent_per_min / 100.0 / 60.0;
        let mut owed = 0.0;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            owed += per_sec;
            while owed >= 1.0 {
                owed -= 1.0;
                let i = rand::thread_rng().gen_range(0..controls.len());
                let _ = controls[i].0.try_send(Ctl::Crash);
            }
        }
    });
}

/// `lose P` and `restore` from stdin (see the module comment).
fn spawn_stdin(controls: Controls, restore: watch::Sender<u64>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["lose", p] => {
                    let Ok(p) = p.parse::<f64>() else {
                        eprintln!("baton-sim: lose PERCENT");
                        continue;
                    };
                    let mut alive: Vec<usize> = (0..controls.len())
                        .filter(|i| !controls[*i].1.load(Ordering::SeqCst))
                        .collect();
                    alive.shuffle(&mut rand::thread_rng());
                    let n = ((controls.len() as f64) * p / 100.0).round() as usize;
                    for &i in alive.iter().take(n) {
                        let _ = controls[i].0.try_send(Ctl::Lose);
                    }
                    eprintln!("baton-sim: losing {} nodes", n.min(alive.len()));
                }
                ["restore"] => {
                    restore.send_modify(|g| *g += 1);
                    eprintln!("baton-sim: restoring lost nodes");
                }
                _ => eprintln!("baton-sim: commands: lose PERCENT | restore"),
            }
        }
    });
}

/// One node's life: a bus, the hollow node answering what comes in, ticks each second.
/// Lost, it waits for `restore` and connects again with the same state.
async fn node(mut ctx: NodeCtx, mut ctl: mpsc::Receiver<Ctl>, lost: Arc<AtomicBool>) -> Result<()> {
    let mut hollow = Hollow::new(ctx.index, ctx.settings, ctx.start_delay);
    loop {
        let (tx, mut events) = mpsc::channel(16);
        let bus = Bus::start_secure(&ctx.url, ctx.name.clone(), None, None, &ctx.settings, 0, tx)?;
        // Ticks spread over the second, so the fleet's heartbeats do not come in one burst.
        let phase = Duration::from_millis(rand::thread_rng().gen_range(0..1000));
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
        let mut connected = false;
        loop {
            let input = tokio::select! {
                ev = events.recv() => match ev {
                    Some(BusEvent::Connected) => {
                        if !connected {
                            connected = true;
                            ctx.counts.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        Input::Connected
                    }
                    Some(BusEvent::Disconnected) => {
                        if connected {
                            connected = false;
                            ctx.counts.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    Some(BusEvent::Desired(d)) => Input::Desired(Wanted::of(&d)),
                    Some(BusEvent::StatusRequest) => Input::StatusRequest,
                    // Hollow pods run nothing that would read them, and hollow nodes no proxy.
                    Some(
                        BusEvent::AgentUpdate(_)
                        | BusEvent::ConfigMapPart(_)
                        | BusEvent::ServiceTable(_),
                    ) => continue,
                    None => return Ok(()),
                },
                // As the agent's heartbeat: nothing is sent while the link is down.
                _ = tick.tick() => {
                    if !connected {
                        continue;
                    }
                    Input::Tick
                }
                c = ctl.recv() => match c {
                    Some(Ctl::Crash) => Input::CrashOne,
                    Some(Ctl::Lose) => break,
                    None => return Ok(()),
                },
            };
            let before = hollow.running() as i64;
            for body in hollow.on(input, Instant::now()) {
                match bus.publish(body) {
                    Ok(()) => ctx.counts.published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => ctx.counts.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
            ctx.counts
                .running
                .fetch_add(hollow.running() as i64 - before, Ordering::Relaxed);
        }
        // Lost: the connection drops as in a power cut; back on `restore`.
        bus.close();
        if connected {
            ctx.counts.connected.fetch_sub(1, Ordering::Relaxed);
        }
        lost.store(true, Ordering::SeqCst);
        ctx.counts.lost.fetch_add(1, Ordering::Relaxed);
        ctx.restore.borrow_and_update();
        if ctx.restore.changed().await.is_err() {
            return Ok(());
        }
        lost.store(false, Ordering::SeqCst);
        ctx.counts.lost.fetch_sub(1, Ordering::Relaxed);
    }
}
