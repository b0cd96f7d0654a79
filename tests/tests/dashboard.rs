//! The web dashboard in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` over WebDriver) against a lab with two real agents: log in, see the fleet,
//! scale a deployment from the page and watch its pods appear without a reload, follow a
//! pod's log, and a read-only token that sees no buttons and whose scale the server refuses.
//! It prints the first load's size and time, and saves screenshots under
//! `target/test-output/dashboard/`.
//!
//! Chromium and the driver run in the lab's hub namespace, where the coordinator's API
//! listens on loopback; the WebDriver calls come from a thread that entered it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::{wait_for, Broker, Lab, Proc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(120);
/// A WebDriver call that takes longer than this has hung.
const CALL: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
const DRIVER_PORT: u16 = 9515;
const PAGE: &str = "http://127.0.0.1:7474/";

/// A deployment whose pods count out loud, one line every half second.
fn ticker(lab: &Lab) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {}/baton/busybox:1
        command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done']
",
        lab.registry()
    )
}

/// Where the screenshots go: `target/test-output/dashboard/`.
fn output_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/<test> -> target
    let target = exe
        .ancestors()
        .nth(3)
        .context("no target directory above the test binary")?;
    let dir = target.join("test-output").join("dashboard");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn dashboard_in_headless_chromium() -> Result<()> {
    for (what, path) in [("chromium", CHROMIUM), ("chromedriver", DRIVER)] {
        ensure!(
            Path::new(path).exists(),
            "{what} is missing ({path}): install Debian's chromium and chromium-driver \
             (scripts/install-deps.sh)"
        );
    }
    let mut lab = Lab::start("dash", 2, Broker::Embedded)?;
    let r = prepare(&lab).and_then(|tokens| in_hub(&mut lab, |lab| browse(lab, &tokens)));
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

struct Tokens {
    admin: String,
    viewer: String,
    /// Read-only, limited to `default`.
    team: String,
}

fn prepare(lab: &Lab) -> Result<Tokens> {
    let token = |role: &str, name: &str, more: &[&str]| -> Result<String> {
        let mut args = vec!["token", "create", "--role", role, "--name", name];
        args.extend_from_slice(more);
        let out = lab.baton(&args)?;
        let t = String::from_utf8(out.stdout)?.trim().to_owned();
        ensure!(t.len() >= 32, "no token printed: {t:?}");
        Ok(t)
    };
    let tokens = Tokens {
        admin: token("admin", "dash-admin", &[])?,
        viewer: token("read-only", "viewer", &[])?,
        team: token("read-only", "team", &["-n", "default"])?,
    };
    lab.apply(&ticker(lab))?;
    wait_for("the nodes to be Ready", LONG, || {
        let nodes = baton_e2e::items(&lab.get_json(&["get", "nodes"])?);
        Ok((nodes.len() == 2 && nodes.iter().all(|n| n["status"]["ready"] == true)).then_some(()))
    })?;
    running_web_pods(lab, 1)?;
    Ok(tokens)
}

/// The deployment's pods once `n` run, by `baton get pods`.
fn running_web_pods(lab: &Lab, n: usize) -> Result<Vec<String>> {
    wait_for(&format!("{n} web pods to run"), LONG, || {
        let pods = lab.pods()?;
        let web: Vec<_> = pods
            .iter()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("web-"))
            })
            .collect();
        let running = web.iter().all(|p| p["status"]["phase"] == "Running");
        let mut names: Vec<String> = web
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok((web.len() == n && running).then_some(names))
    })
}

/// Runs `f` on a thread in the lab's hub namespace with a runtime of its own, so that its
/// sockets (to chromedriver) open there.
fn in_hub<T: Send>(lab: &mut Lab, f: impl FnOnce(&mut Lab) -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(format!("/run/netns/{}", lab.hub.0))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("enter the hub namespace")?;
            f(lab)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the browser thread panicked"))?
    })
}

fn browse(lab: &mut Lab, tokens: &Tokens) -> Result<()> {
    let out = output_dir()?;
    let profile = tempfile::tempdir()?;
    let mut driver_cmd = lab.hub.cmd(DRIVER);
    driver_cmd.args([
        format!("--port={DRIVER_PORT}"),
        format!(
            "--log-path={}",
            lab.dir.path().join("chromedriver.log").display()
        ),
    ]);
    let _driver = Proc::spawn(
        "chromedriver",
        &mut driver_cmd,
        lab.dir.path().join("chromedriver.out"),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let browser = connect(profile.path()).await?;
        let r = scenario(lab, tokens, &browser, &out).await;
        if r.is_err() {
            let _ = save(&browser, &out.join("failure.png")).await;
        }
        let _ = tokio::time::timeout(CALL, browser.close()).await;
        r
    })
}

/// A new Chromium session through the driver, once it listens.
async fn connect(profile: &Path) -> Result<Client> {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                // As root (CI, the lab) Chromium refuses to start with its sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1100,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let Value::Object(caps) = caps else {
        bail!("capabilities are an object");
    };
    let start = Instant::now();
    loop {
        let mut b = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        b.capabilities(caps.clone());
        match tokio::time::timeout(CALL, b.connect(&format!("http://127.0.0.1:{DRIVER_PORT}")))
            .await
        {
            Ok(Ok(c)) => return Ok(c),
            // The driver is still starting: it refuses connections for a moment.
            Ok(Err(_)) if start.elapsed() < CALL => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(Err(e)) => bail!("cannot start Chromium through chromedriver: {e}"),
            Err(_) => bail!("chromedriver did not answer within {CALL:?}"),
        }
    }
}

/// Runs `script` (a function body) in the page; its return value.
async fn js(b: &Client, script: &str) -> Result<Value> {
    tokio::time::timeout(CALL, b.execute(script, vec![]))
        .await
        .with_context(|| format!("the page hung running {script}"))?
        .with_context(|| format!("running {script}"))
}

/// Polls `script` until it returns something truthy (not null, false, 0 or ""), which it
/// answers; fails with `what` after `timeout`.
async fn until(b: &Client, what: &str, timeout: Duration, script: &str) -> Result<Value> {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < timeout {
        last = js(b, script).await?;
        let truthy = match &last {
            Value::Null | Value::Bool(false) => false,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let error = js(b, "return document.getElementById('error').textContent").await?;
    bail!("timed out after {timeout:?} waiting for {what} (last: {last}; page error: {error})")
}

async fn save(b: &Client, path: &Path) -> Result<()> {
    let png = tokio::time::timeout(CALL, b.screenshot())
        .await
        .context("screenshot hung")??;
    std::fs::write(path, png)?;
    println!("screenshot: {}", path.display());
    Ok(())
}

async fn log_in(b: &Client, token: &str) -> Result<()> {
    let input = b
        .wait()
        .at_most(CALL)
        .for_element(Locator::Css("#login:not([hidden]) #token"))
        .await?;
    input.send_keys(token).await?;
    b.find(Locator::Css("#login button[type=submit]"))
        .await?
        .click()
        .await?;
    Ok(())
}

/// The node tiles: name and state.
const TILES: &str = "return [...document.querySelectorAll('#nodes .tile')]\
    .map(t => [t.dataset.node, t.dataset.state])";
/// The web pods the page shows, and whether each is Running.
const WEB_PODS: &str = "return [...document.querySelectorAll('#pods tr[data-pod^=\"web-\"]')]\
    .map(r => [r.dataset.pod, r.dataset.status]).sort()";
const BUTTONS: &str = "return document.querySelectorAll('button.action').length";

async fn scenario(lab: &mut Lab, tokens: &Tokens, b: &Client, out: &Path) -> Result<()> {
    // A cold first load: the login page and every asset.
    b.goto(PAGE).await?;
    let first = js(
        b,
        "const nav = performance.getEntriesByType('navigation')[0];
         const all = [nav, ...performance.getEntriesByType('resource')];
         return { transfer: all.reduce((n, r) => n + r.transferSize, 0),
                  body: all.reduce((n, r) => n + r.encodedBodySize, 0),
                  decoded: all.reduce((n, r) => n + r.decodedBodySize, 0),
                  files: all.length, ready: nav.domContentLoadedEventEnd }",
    )
    .await?;
    println!(
        "first load: {} files, {} B transferred ({} B compressed bodies, {} B uncompressed), DOM ready at {:.0} ms",
        first["files"], first["transfer"], first["body"], first["decoded"],
        first["ready"].as_f64().unwrap_or_default()
    );
    ensure!(
        first["files"].as_u64() >= Some(7),
        "the page loaded too few files: {first}"
    );
    ensure!(
        first["body"].as_u64().is_some_and(|b| b < 300 * 1024),
        "the page is over 300 KB compressed: {first}"
    );
    // A wrong token is refused and the page says so.
    log_in(b, "not-a-token").await?;
    until(
        b,
        "the refusal",
        LONG,
        "return document.getElementById('login-error').textContent",
    )
    .await?;

    // Log in; the fleet: both nodes' tiles, Ready.
    log_in(b, &tokens.admin).await?;
    let tiles = until(
        b,
        "both nodes Ready",
        LONG,
        &format!("const t = (() => {{ {TILES} }})(); return t.length === 2 && t.every(x => x[1] === 'Ready') && t"),
    )
    .await?;
    let names: Vec<&str> = lab.agents.iter().map(|a| a.name.as_str()).collect();
    for n in &names {
        ensure!(tiles.to_string().contains(n), "no tile for {n}: {tiles}");
    }
    let shown = js(
        b,
        "const f = performance.getEntriesByName('fleet-shown')[0].startTime;
         const l = performance.getEntriesByName('login');
         return f - l[l.length - 1].startTime",
    )
    .await?;
    println!(
        "login to fleet shown: {:.0} ms",
        shown.as_f64().unwrap_or_default()
    );
    ensure!(js(b, "return document.body.dataset.role").await? == "admin");
    ensure!(
        js(b, BUTTONS).await?.as_u64() > Some(0),
        "an admin sees action buttons"
    );
    let rows = until(b, "the web pod", LONG, WEB_PODS).await?;
    ensure!(rows.as_array().map(Vec::len) == Some(1), "{rows}");

    // Scale from the page: + on web; the new pod appears without a reload.
    js(b, "window.notReloaded = true; return 0").await?;
    b.find(Locator::Css(
        "tr[data-deployment=web] button[title='one replica more']",
    ))
    .await?
    .click()
    .await?;
    let api = running_web_pods(lab, 2)?;
    let dom = until(
        b,
        "two running web pods on the page",
        LONG,
        &format!("const r = (() => {{ {WEB_PODS} }})(); return r.length === 2 && r.every(x => x[1] === 'Running') && r"),
    )
    .await?;
    let dom_names: Vec<&str> = dom
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r[0].as_str())
        .collect();
    ensure!(
        dom_names == api,
        "the page shows {dom_names:?}, baton get pods {api:?}"
    );
    ensure!(
        js(b, "return window.notReloaded === true").await? == true,
        "the page reloaded"
    );
    until(
        b,
        "web 2/2",
        LONG,
        "const r = document.querySelector('tr[data-deployment=web]'); return r && r.dataset.ready === '2' && r.dataset.desired === '2'",
    )
    .await?;
    save(b, &out.join("fleet.png")).await?;

    // Follow a pod's log: lines written after the panel opened arrive.
    let pod = &api[0];
    b.find(Locator::Css(&format!("tr[data-pod='{pod}'] a.logs")))
        .await?
        .click()
        .await?;
    let last_tick =
        "const m = [...document.getElementById('log').textContent.matchAll(/tick (\\d+)/g)];
         return m.length ? Number(m[m.length - 1][1]) : 0";
    let seen = until(b, "the log's first lines", LONG, last_tick)
        .await?
        .as_u64()
        .unwrap_or_default();
    let later = until(
        b,
        "a line written after the log opened",
        LONG,
        &format!(
            "const n = (() => {{ {last_tick} }})(); return n >= {} && n",
            seen + 4
        ),
    )
    .await?;
    println!("log followed: tick {seen} then tick {later}");
    save(b, &out.join("logs.png")).await?;

    // Cordon a node from its tile, and uncordon it.
    let node = &names[0];
    for (label, want) in [("Cordon", true), ("Uncordon", false)] {
        let button = format!("#nodes .tile[data-node='{node}'] button.action");
        let shown = format!(
            "const x = document.querySelector(\"{button}\"); return x && x.textContent === '{label}'"
        );
        until(b, label, LONG, &shown).await?;
        b.find(Locator::Css(&button)).await?.click().await?;
        wait_for(&format!("{node} unschedulable: {want}"), LONG, || {
            let n = lab.get_json(&["get", "node", node])?;
            Ok((n["spec"]["unschedulable"].as_bool().unwrap_or(false) == want).then_some(()))
        })?;
    }

    // The coordinator restarts: the page's streams come back by themselves (a restarted
    // coordinator knows no old resource version: 410, and the page lists again), and a
    // scale made meanwhile by the CLI shows without a reload.
    lab.kill_coordinator();
    until(
        b,
        "the page to see its streams drop",
        LONG,
        "return document.getElementById('live').className === 'dot'",
    )
    .await?;
    lab.start_coordinator()?;
    lab.baton(&["scale", "deployment/web", "--replicas", "3"])?;
    let api = running_web_pods(lab, 3)?;
    let three = format!("const r = (() => {{ {WEB_PODS} }})(); return r.length === 3 && r.every(x => x[1] === 'Running') && r");
    let dom = until(b, "three running web pods after the restart", LONG, &three).await?;
    let dom_names: Vec<&str> = dom
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r[0].as_str())
        .collect();
    ensure!(
        dom_names == api,
        "after the restart the page shows {dom_names:?}, baton get pods {api:?}"
    );
    until(
        b,
        "the streams back",
        LONG,
        "return document.getElementById('live').className === 'dot on'",
    )
    .await?;
    ensure!(
        js(b, "return window.notReloaded === true").await? == true,
        "the page reloaded"
    );

    // A phone's view of the same page.
    b.set_window_size(390, 844).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    save(b, &out.join("phone.png")).await?;
    b.set_window_size(1100, 900).await?;

    // Reload with the token kept for the tab: the time to the fleet from navigation.
    b.refresh().await?;
    until(
        b,
        "the fleet after a reload",
        LONG,
        "return document.body.dataset.fleet === 'shown'",
    )
    .await?;
    let warm = js(
        b,
        "return performance.getEntriesByName('fleet-shown')[0].startTime",
    )
    .await?;
    println!(
        "reload (token kept, assets revalidated) to fleet shown: {:.0} ms",
        warm.as_f64().unwrap_or_default()
    );

    // A read-only token: the fleet, no buttons; and the server refuses its scale.
    b.find(Locator::Id("logout")).await?.click().await?;
    log_in(b, &tokens.viewer).await?;
    until(
        b,
        "the viewer's fleet",
        LONG,
        "return document.body.dataset.fleet === 'shown' && document.body.dataset.role",
    )
    .await?;
    until(
        b,
        "the viewer's pods",
        LONG,
        &format!("const r = (() => {{ {WEB_PODS} }})(); return r.length === 3"),
    )
    .await?;
    ensure!(
        js(b, BUTTONS).await? == 0,
        "a read-only token sees action buttons"
    );
    save(b, &out.join("read-only.png")).await?;
    let status = tokio::time::timeout(
        CALL,
        b.execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/namespaces/default/deployments/web/scale', {
               method: 'POST',
               headers: { Authorization: 'Bearer ' + sessionStorage.getItem('baton.token'),
                          'Content-Type': 'application/json' },
               body: JSON.stringify({ replicas: 5 }) })
             .then(r => r.text().then(t => done([r.status, t])));",
            vec![],
        ),
    )
    .await
    .context("the refused scale hung")??;
    ensure!(
        status[0] == 403,
        "the server let a read-only token scale: {status}"
    );
    let d = lab.get_json(&["get", "deployment", "web"])?;
    ensure!(
        d["spec"]["replicas"] == 3,
        "the refused scale changed the deployment: {d}"
    );

    // A token limited to `default`: that namespace only (no `All`), its pods live through
    // the namespace's watch, no nodes.
    b.find(Locator::Id("logout")).await?.click().await?;
    log_in(b, &tokens.team).await?;
    let team_pods = format!("const r = (() => {{ {WEB_PODS} }})(); return r.length === 3");
    until(b, "the team's pods", LONG, &team_pods).await?;
    let options = js(
        b,
        "return [...document.getElementById('ns').options].map(o => o.textContent)",
    )
    .await?;
    ensure!(
        options == json!(["default"]),
        "a token limited to default may pick {options}"
    );
    let hidden = js(b, "return document.getElementById('nodes-panel').hidden").await?;
    ensure!(hidden == true, "a token limited to namespaces sees nodes");
    ensure!(
        js(b, BUTTONS).await? == 0,
        "a read-only token sees action buttons"
    );
    Ok(())
}
