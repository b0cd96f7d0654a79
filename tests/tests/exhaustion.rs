//! Hostile input at the coordinator's doors, on the real `baton server` binary in its
//! own network namespace (docs/security.md, "Hostile input"):
//!
//! - connection exhaustion: under `ulimit -n 1024` (systemd's usual soft limit), 2,000
//!   silent TCP connections to the API, 2,000 half-sent `/v2/` requests and 2,000 silent
//!   connections to the enrollment listener must neither make the API or enrollment
//!   unreachable nor let the server's fd count grow to the limit;
//! - admission: `hostPort: 22` and a relative `workingDir` are refused at apply, the
//!   offending field named.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::{bin, wait_for, Netns, Proc};

/// The open-files limit of the coordinator under test (soft and hard).
const NOFILE: u64 = 1024;
/// Silent connections per attack.
const CONNS: usize = 2000;
/// How fast a real client must be answered while under attack.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

const API: &str = "127.0.0.1:7474";
const ENROLL: &str = "127.0.0.1:7475";

struct Coordinator {
    ns: Netns,
    proc: Proc,
    dir: tempfile::TempDir,
    token: String,
}

impl Coordinator {
    /// `baton server` in a fresh namespace, with `nofile` as its fd limit when given.
    fn start(tag: &str, nofile: Option<u64>, extra: &[&str]) -> Result<Coordinator> {
        let ns = Netns::new(&format!("bx-{tag}-{}", std::process::id()))?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = ns.cmd("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin("baton"));
                c
            }
            None => ns.cmd(bin("baton")),
        };
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", API, "--mqtt-listen", "127.0.0.1:1883"])
            .args(["--enroll-listen", ENROLL])
            .args(extra)
            .env("RUST_LOG", "info,rumqttd=warn");
        let proc = Proc::spawn("coordinator", &mut cmd, dir.path().join("coordinator.log"))?;
        let mut c = Coordinator {
            ns,
            proc,
            dir,
            token: String::new(),
        };
        wait_for("the coordinator API", Duration::from_secs(30), || {
            Ok(c.baton(&["get", "nodes"], None)?
                .status
                .success()
                .then_some(()))
        })?;
        let conf = std::fs::read_to_string(c.admin_conf())?;
        c.token = conf
            .lines()
            .find_map(|l| l.strip_prefix("token:"))
            .map(|t| t.trim().trim_matches('"').to_owned())
            .context("no token in admin.conf")?;
        Ok(c)
    }

    fn admin_conf(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.conf")
    }

    fn pid(&self) -> Result<u32> {
        self.proc.pid().context("the coordinator is not running")
    }

    fn baton(&self, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
        let mut cmd = self.ns.cmd(bin("baton"));
        cmd.args(args)
            .env("BATON_CONFIG", self.admin_conf())
            .env_remove("BATON_TOKEN")
            .env("BATON_SERVER", format!("http://{API}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        input.write_all(stdin.unwrap_or("").as_bytes())?;
        drop(input);
        Ok(child.wait_with_output()?)
    }

    /// Open fds of the server process.
    fn fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))?.count())
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    /// Runs `f` on a thread inside the coordinator's network namespace (sockets made
    /// there stay in it).
    fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let ns = self.ns.0.clone();
        std::thread::spawn(move || {
            let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in the namespace panicked"))?
    }
}

/// Opens `n` connections to `addr`, each sending `prefix` (possibly nothing) and then
/// nothing more. Stops early after a few failed connects so a server that stopped
/// accepting cannot make this hang.
fn flood(addr: &str, n: usize, prefix: &'static [u8]) -> Result<Vec<TcpStream>> {
    let addr: SocketAddr = addr.parse()?;
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(mut s) => {
                if !prefix.is_empty() {
                    // A server that has already closed it may reset it: that is fine.
                    let _ = s.write_all(prefix);
                }
                open.push(s);
            }
            Err(_) => {
                failed += 1;
                if failed >= 20 {
                    break;
                }
            }
        }
    }
    Ok(open)
}

/// One plain HTTP/1.1 request, as a real client sends it; the status line and how long
/// the whole answer took, or an error if there was none within [`ANSWER_WITHIN`].
fn timed_request(addr: &str, path: &str, token: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let addr: SocketAddr = addr.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, ANSWER_WITHIN).context("connect")?;
    s.set_read_timeout(Some(ANSWER_WITHIN))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).context("read the answer")?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").to_owned();
    Ok((status, started.elapsed()))
}

fn raise_own_nofile() -> Result<()> {
    let me = std::process::id().to_string();
    baton_e2e::sh(Command::new("prlimit").args(["--pid", &me, "--nofile=16384:20000"]))?;
    Ok(())
}

#[test]
fn silent_connections_cannot_exhaust_the_api_or_enrollment() -> Result<()> {
    raise_own_nofile()?;
    let c = Coordinator::start("exh", Some(NOFILE), &[])?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", c.pid()?))?;
    let nofile_line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    ensure!(
        nofile_line.split_whitespace().nth(3) == Some("1024"),
        "the coordinator does not run under nofile {NOFILE}: {nofile_line}"
    );
    // Both listeners queue a burst of connects instead of dropping SYNs: with tokio's
    // default backlog (1024) the flood filled the queue while a loaded server's accept loop
    // was behind, and the real client's connect waited for TCP's 1 s retransmission.
    let ss = c.ns.cmd("ss").args(["-ltnH"]).output()?;
    let ss = String::from_utf8_lossy(&ss.stdout);
    for addr in [API, ENROLL] {
        let backlog = ss
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(addr))
            .and_then(|l| l.split_whitespace().nth(2))
            .with_context(|| format!("no listener on {addr} in ss: {ss}"))?;
        ensure!(
            backlog == "4096",
            "{addr} listens with a backlog of {backlog}: {ss}"
        );
    }
    let base_fds = c.fds()?;
    // Nothing may come near the limit: the bound is half of it, plus what the server
    // had open before the attack.
    let max_fds = (NOFILE as usize) / 2 + base_fds + 64;
    let token = c.token.clone();
    let mut held = Vec::new();

    // 1. Silent connections to the API, then a normal authenticated request.
    let silent = c.inside(|| flood(API, CONNS, b""))?;
    ensure!(
        silent.len() >= CONNS / 2,
        "only {} of {CONNS} connections were accepted",
        silent.len()
    );
    held.push(silent);
    let t = token.clone();
    let (status, took) = c
        .inside(move || timed_request(API, "/api/v1/nodes", &t))
        .with_context(|| format!("GET /api/v1/nodes under {CONNS} silent connections"))?;
    ensure!(
        status.starts_with("HTTP/1.1 200"),
        "GET /api/v1/nodes: {status:?}"
    );
    ensure!(took < ANSWER_WITHIN, "GET /api/v1/nodes took {took:?}");
    let fds = c.fds()?;
    ensure!(
        fds <= max_fds,
        "the server holds {fds} fds (base {base_fds}, at most {max_fds})"
    );
    println!(
        "API: {} silent connections, answer in {took:?}, server fds {fds} (base {base_fds})",
        held[0].len()
    );

    // 2. Half-sent registry requests (a head that never ends), then a real /v2/ read.
    let partial = c.inside(|| flood(API, CONNS, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"))?;
    held.push(partial);
    let t = token.clone();
    let (status, took) = c
        .inside(move || timed_request(API, "/v2/", &t))
        .with_context(|| format!("GET /v2/ under {CONNS} half-sent requests"))?;
    ensure!(status.starts_with("HTTP/1.1 200"), "GET /v2/: {status:?}");
    ensure!(took < ANSWER_WITHIN, "GET /v2/ took {took:?}");
    let fds = c.fds()?;
    ensure!(
        fds <= max_fds,
        "the server holds {fds} fds (at most {max_fds})"
    );
    println!("/v2/: answer in {took:?}, server fds {fds}");

    // 3. Silent connections to the enrollment listener (TLS): a device still gets the CA,
    // and the API (same connection budget) still answers.
    let enroll = c.inside(|| flood(ENROLL, CONNS, b""))?;
    held.push(enroll);
    let started = Instant::now();
    let out =
        c.ns.cmd("curl")
            .args([
                "-sk",
                "--max-time",
                "1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("https://{ENROLL}/api/v1/enroll/ca"))
            .output()?;
    let took = started.elapsed();
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        code == "200",
        "GET /api/v1/enroll/ca: {code:?} after {took:?}"
    );
    ensure!(took < ANSWER_WITHIN, "GET /api/v1/enroll/ca took {took:?}");
    let t = token.clone();
    let (status, took_api) = c.inside(move || timed_request(API, "/api/v1/nodes", &t))?;
    ensure!(
        status.starts_with("HTTP/1.1 200"),
        "GET /api/v1/nodes: {status:?}"
    );
    ensure!(
        took_api < ANSWER_WITHIN,
        "GET /api/v1/nodes took {took_api:?}"
    );
    let fds = c.fds()?;
    ensure!(
        fds <= max_fds,
        "the server holds {fds} fds (at most {max_fds})"
    );
    println!("enroll: CA in {took:?} (curl, process start included), API in {took_api:?}, server fds {fds}");

    // The CLI works too, and the shedding was reported.
    let out = c.baton(&["get", "nodes"], None)?;
    ensure!(
        out.status.success(),
        "baton get nodes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        c.log().contains("HTTP connection limit reached"),
        "no WARN about shed connections in the log:\n{}",
        c.log()
    );
    let opened: usize = held.iter().map(Vec::len).sum();
    drop(held);
    println!("{opened} attacking connections in all");
    Ok(())
}

const HOST_PORT_22: &str = "apiVersion: v1
kind: Pod
metadata: {name: sshd}
spec:
  containers:
  - name: c
    image: busybox:1
    ports: [{containerPort: 22, hostPort: 22}]
";

const WORKING_DIR_UP: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: wd}
spec:
  selector: {matchLabels: {app: wd}}
  template:
    metadata: {labels: {app: wd}}
    spec:
      initContainers:
      - name: i
        image: busybox:1
        workingDir: /tmp
      containers:
      - name: c
        image: busybox:1
        workingDir: ../../..
";

const HOST_PORT_8080: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: c
    image: busybox:1
    ports: [{containerPort: 80, hostPort: 8080}]
";

fn apply(c: &Coordinator, yaml: &str) -> Result<std::result::Result<String, String>> {
    let out = c.baton(&["apply", "-f", "-"], Some(yaml))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    Ok(if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    })
}

#[test]
fn apply_refuses_host_port_22_and_a_relative_working_dir() -> Result<()> {
    let c = Coordinator::start("adm", None, &[])?;
    let err = match apply(&c, HOST_PORT_22)? {
        Ok(out) => bail!("hostPort 22 was admitted: {out}"),
        Err(e) => e,
    };
    ensure!(
        err.contains("spec.containers[0].ports[0].hostPort: hostPort 22 is refused by the coordinator's policy, which allows 1024-65535"),
        "{err}"
    );
    let err = match apply(&c, WORKING_DIR_UP)? {
        Ok(out) => bail!("workingDir ../../.. was admitted: {out}"),
        Err(e) => e,
    };
    ensure!(
        err.contains(
            "spec.template.spec.containers[0].workingDir: \"../../..\" must be an absolute path"
        ),
        "{err}"
    );
    // Nothing of either reached the store; a hostPort in the default range is admitted.
    let pods = c.baton(&["get", "pods", "-o", "json"], None)?;
    ensure!(
        !String::from_utf8_lossy(&pods.stdout).contains("sshd"),
        "the refused pod was stored"
    );
    apply(&c, HOST_PORT_8080)?.map_err(|e| anyhow::anyhow!("hostPort 8080 refused: {e}"))?;
    drop(c);

    // The operator may allow it explicitly (repeatable flag; the default is then replaced).
    let c = Coordinator::start(
        "adm2",
        None,
        &["--allow-host-port", "22", "--allow-host-port", "8000-9000"],
    )?;
    apply(&c, HOST_PORT_22)?
        .map_err(|e| anyhow::anyhow!("hostPort 22 refused with --allow-host-port 22: {e}"))?;
    apply(&c, HOST_PORT_8080)?.map_err(|e| anyhow::anyhow!("hostPort 8080 refused: {e}"))?;
    Ok(())
}
