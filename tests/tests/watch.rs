//! Watches end to end, on a real agent and container: `baton get pods -w` prints a pod's
//! rows as it goes Pending -> Running -> deleted; the HTTP watch resumed from the last
//! resource version read gets exactly the changes after it (none twice), and a version the
//! coordinator no longer knows gets 410 Gone; `baton get events [-w]` shows events.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::lines::spawn_lines;
use baton_e2e::{Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn pod(lab: &Lab, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}/baton/busybox:1\n    command: [\"sleep\", \"3600\"]\n",
        lab.registry()
    )
}

fn read_until(
    rx: &mpsc::Receiver<String>,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    baton_e2e::lines::read_until(rx, LONG, &format!("the watch showing {what}"), done)
}

/// The watch of pods over HTTP for `secs` seconds (curl's --max-time ends it): the changes.
fn http_watch(lab: &Lab, since: Option<u64>, secs: u32) -> Result<(u16, Vec<Value>)> {
    let token = lab.baton(&["token", "create", "--role", "read-only"])?;
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let mut url = format!("{}/api/v1/watch/pods", lab.api_url());
    if let Some(v) = since {
        url.push_str(&format!("?resource_version={v}"));
    }
    let out = lab
        .hub
        .cmd("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            &secs.to_string(),
            "-w",
            "\n%{http_code}",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}"), &url])
        .output()?;
    // 28: the --max-time that ends an open watch.
    ensure!(
        out.status.success() || out.status.code() == Some(28),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("no status")?;
    let code: u16 = code.trim().parse()?;
    let lines = body
        .lines()
        .filter(|l| l.starts_with('{') && code == 200)
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()?;
    Ok((code, lines))
}

fn version(v: &Value) -> u64 {
    v["resourceVersion"].as_u64().unwrap_or(0)
}

#[test]
fn watches_follow_pods_and_resume_without_loss() -> Result<()> {
    let lab = Lab::start("watch", 1, Broker::Embedded)?;
    let r = run(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn run(lab: &Lab) -> Result<()> {
    let (mut cli, rows) = spawn_lines(lab, &["get", "pods", "-w"])?;
    lab.apply(&pod(lab, "watched"))?;
    read_until(&rows, "the header", |l| l.starts_with("NAME"))?;
    let seen = read_until(&rows, "the pod running", |l| {
        l.starts_with("watched ") && l.contains("Running")
    })?;
    ensure!(
        seen.iter()
            .any(|l| l.starts_with("watched ") && !l.contains("Running")),
        "no row before Running: {seen:?}"
    );

    // Over HTTP: where the pods stand now, then resume from there.
    let (code, now) = http_watch(lab, None, 2)?;
    ensure!(code == 200 && now.len() == 1, "{code} {now:?}");
    let last = version(&now[0]);
    lab.apply(&pod(lab, "second"))?;
    lab.baton(&["delete", "pod", "watched"])?;
    // The two may come in either order.
    let running = |l: &str| l.starts_with("second ") && l.contains("Running");
    let deleted = |l: &str| l.starts_with("watched ") && l.contains("Deleted");
    let mut seen = read_until(&rows, "the deletion", deleted)?;
    if !seen.iter().any(|l| running(l)) {
        seen.extend(read_until(&rows, "the second pod running", running)?);
    }
    let (code, missed) = http_watch(lab, Some(last), 2)?;
    ensure!(code == 200, "{code}");
    let versions: Vec<u64> = missed.iter().map(version).collect();
    ensure!(
        versions.windows(2).all(|w| w[0] < w[1]) && versions.iter().all(|v| *v > last),
        "versions not increasing past {last}: {versions:?}"
    );
    let kinds: Vec<(String, String)> = missed
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        kinds.contains(&("ADDED".into(), "second".into())),
        "{kinds:?}"
    );
    ensure!(
        kinds.contains(&("DELETED".into(), "watched".into())),
        "{kinds:?}"
    );
    ensure!(
        !kinds.iter().any(|(t, n)| t == "ADDED" && n == "watched"),
        "a change from before {last} came again: {kinds:?}"
    );

    let (code, _) = http_watch(lab, Some(1), 2)?;
    ensure!(code == 410, "a version from long ago answered {code}");

    let _ = cli.kill();
    let _ = cli.wait();

    let events = lab.baton(&["get", "events"])?;
    let events = String::from_utf8_lossy(&events.stdout);
    ensure!(
        events.starts_with("LAST SEEN") && events.contains("pod/second"),
        "{events}"
    );
    Ok(())
}
