//! ConfigMaps through the real CLI and server (issue 18, the object's part): the Kubernetes
//! documentation's `game-demo` ConfigMap applies, `get cm` shows kubectl's columns,
//! `describe` its values, re-apply of a change configures it, an immutable one refuses a
//! change, one over 1 MiB is refused with its name and size, one with more keys than an
//! agent takes with the map's path, and delete removes it.
//!
//! And pods using them on a real agent with real containers: the documentation's
//! `configmap-demo-pod` (image swapped) gets its env and its files; `envFrom` with a prefix;
//! a new version of the ConfigMap shows in the running container's volume with no restart;
//! a pod whose ConfigMap does not exist yet waits with `CreateContainerConfigError` and
//! runs once it is applied.

use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::{container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// From the Kubernetes documentation (concepts/configuration/configmap), with the image
/// swapped (`{registry}` is the lab's).
const DEMO_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: configmap-demo-pod
spec:
  containers:
    - name: demo
      image: {registry}/baton/busybox:1
      command: ["sleep", "3600"]
      env:
        # Define the environment variable
        - name: PLAYER_INITIAL_LIVES # Notice that the case is different here
                                     # from the key name in the ConfigMap.
          valueFrom:
            configMapKeyRef:
              name: game-demo           # The ConfigMap this value comes from.
              key: player_initial_lives # The key to fetch.
        - name: UI_PROPERTIES_FILE_NAME
          valueFrom:
            configMapKeyRef:
              name: game-demo
              key: ui_properties_file_name
      volumeMounts:
      - name: config
        mountPath: "/config"
        readOnly: true
  volumes:
  # You set volumes at the Pod level, then mount them into containers inside that Pod
  - name: config
    configMap:
      # Provide the name of the ConfigMap you want to mount.
      name: game-demo
      # An array of keys from the ConfigMap to create as files
      items:
      - key: "game.properties"
        path: "game.properties"
      - key: "user-interface.properties"
        path: "user-interface.properties"
"#;

/// From the Kubernetes documentation (concepts/configuration/configmap), unchanged.
const GAME_DEMO: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: game-demo
data:
  # property-like keys; each key maps to a simple value
  player_initial_lives: "3"
  ui_properties_file_name: "user-interface.properties"

  # file-like keys
  game.properties: |
    enemy.types=aliens,monsters
    player.maximum-lives=5    
  user-interface.properties: |
    color.good=purple
    color.bad=yellow
    allow.textmode=true    
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn config_maps_apply_show_and_delete() -> Result<()> {
    let lab = Lab::start_without_agents_with("cm", 1, Broker::Embedded, &[])?;
    let r = scenario(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &Lab) -> Result<()> {
    let out = lab.apply(GAME_DEMO)?;
    ensure!(
        stdout(&out).contains("configmap/game-demo created"),
        "{out:?}"
    );
    let table = stdout(&lab.baton(&["get", "cm"])?);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(header == ["NAME", "DATA", "AGE"], "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("game-demo "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(row.get(1) == Some(&"4"), "{table}");
    let described = stdout(&lab.baton(&["describe", "configmap", "game-demo"])?);
    ensure!(
        described.contains("game.properties:\n----\nenemy.types=aliens,monsters"),
        "{described}"
    );

    // A changed value configures it; the API shows the new one.
    let changed = GAME_DEMO.replace("\"3\"", "\"5\"");
    ensure!(stdout(&lab.apply(&changed)?).contains("configured"));
    let cm = lab.get_json(&["get", "configmap", "game-demo"])?;
    ensure!(cm["data"]["player_initial_lives"] == "5", "{cm}");

    // Immutable: the data cannot change.
    let fixed = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fixed}\ndata: {a: \"1\"}\nimmutable: true\n";
    lab.apply(fixed)?;
    let refused = lab.baton_raw(
        &["apply", "-f", "-"],
        Some(&fixed.replace("\"1\"", "\"2\"")),
    )?;
    ensure!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("immutable"),
        "{refused:?}"
    );

    // Over 1 MiB: refused, naming the object and its size; nothing stored.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  blob: {}\n",
        "x".repeat(1024 * 1024)
    );
    let refused = lab.baton_raw(&["apply", "-f", "-"], Some(&big))?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && err.contains("ConfigMap \"big\" is too long: 1048580 bytes"),
        "{err}"
    );
    ensure!(!lab.baton_raw(&["get", "cm", "big"], None)?.status.success());

    // More keys than an agent takes: refused at apply, naming the map; nothing stored.
    let many: String = (0..1500).map(|i| format!("  k{i}: v\n")).collect();
    let refused = lab.baton_raw(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: many}}\ndata:\n{many}"
        )),
    )?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && err.contains("data: 1,500 keys, at most 1,024 (the agent's limit)"),
        "{err}"
    );
    ensure!(!lab
        .baton_raw(&["get", "cm", "many"], None)?
        .status
        .success());

    // A manifest over the API's request limit: the real cause, not "cannot reach".
    let huge = big.repeat(4);
    let refused = lab.baton_raw(&["apply", "-f", "-"], Some(&huge))?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && err.contains("manifest too large: stdin is 4.0 MiB, the limit is 3 MiB"),
        "{err}"
    );

    lab.baton(&["delete", "configmap", "game-demo"])?;
    ensure!(!lab
        .baton_raw(&["get", "cm", "game-demo"], None)?
        .status
        .success());
    Ok(())
}

#[test]
fn pods_use_config_maps() -> Result<()> {
    let lab = Lab::start("cmp", 1, Broker::Embedded)?;
    let r = pods_scenario(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn wait_running(lab: &Lab, name: &str) -> Result<Value> {
    wait_for(&format!("pod {name} Running"), LONG, || {
        let p = lab.get_json(&["get", "pod", name])?;
        let running = p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        Ok(running.then_some(p))
    })
}

/// The pid of the pod's container `c` and its environment.
fn container(lab: &Lab, pod: &Value, c: &str) -> Result<(u32, String)> {
    let node = pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let _ = lab;
    let pid = wait_for("the container's process", LONG, || {
        Ok(container_pids(&node, &uid, c).first().copied())
    })?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok((pid, String::from_utf8_lossy(&environ).replace('\0', "\n")))
}

fn pods_scenario(lab: &Lab) -> Result<()> {
    let registry = lab.registry();
    lab.apply(GAME_DEMO)?;
    lab.apply(&DEMO_POD.replace("{registry}", &registry))?;
    let p = wait_running(lab, "configmap-demo-pod")?;
    let (pid, env) = container(lab, &p, "demo")?;
    ensure!(env.lines().any(|l| l == "PLAYER_INITIAL_LIVES=3"), "{env}");
    ensure!(
        env.lines()
            .any(|l| l == "UI_PROPERTIES_FILE_NAME=user-interface.properties"),
        "{env}"
    );
    let file = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/root/config/{name}"));
    ensure!(
        file("game.properties")?.starts_with("enemy.types=aliens,monsters\n"),
        "{:?}",
        file("game.properties")
    );
    ensure!(file("user-interface.properties")?.contains("color.good=purple"));
    ensure!(
        file("player_initial_lives").is_err(),
        "only the listed items"
    );

    // envFrom with a prefix, next to a literal that wins over it.
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: from-all}}\nspec:\n  containers:\n  - name: c\n    image: {registry}/baton/busybox:1\n    command: [sleep, '3600']\n    envFrom:\n    - prefix: GAME_\n      configMapRef: {{name: game-demo}}\n    env:\n    - {{name: GAME_ui_properties_file_name, value: mine}}\n"
    ))?;
    let p2 = wait_running(lab, "from-all")?;
    let (_, env2) = container(lab, &p2, "c")?;
    ensure!(
        env2.lines().any(|l| l == "GAME_player_initial_lives=3"),
        "{env2}"
    );
    ensure!(
        env2.lines()
            .any(|l| l == "GAME_ui_properties_file_name=mine"),
        "{env2}"
    );

    // A new version: the running container's files change, the container does not.
    let changed = GAME_DEMO.replace("aliens,monsters", "robots,zombies");
    ensure!(stdout(&lab.apply(&changed)?).contains("configured"));
    wait_for("the new game.properties in the container", LONG, || {
        Ok(file("game.properties")
            .is_ok_and(|t| t.starts_with("enemy.types=robots,zombies\n"))
            .then_some(()))
    })?;
    let p = lab.get_json(&["get", "pod", "configmap-demo-pod"])?;
    ensure!(
        p["status"]["containerStatuses"][0]["restartCount"] == 0,
        "{}",
        p["status"]
    );
    ensure!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the same process still runs"
    );

    // A missing ConfigMap: the pod waits with kubelet's reason, then runs once it exists.
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: later}}\nspec:\n  containers:\n  - name: c\n    image: {registry}/baton/busybox:1\n    command: [sleep, '3600']\n    env:\n    - name: TOKEN\n      valueFrom: {{configMapKeyRef: {{name: later, key: token}}}}\n"
    ))?;
    wait_for("pod later to wait for its configmap", LONG, || {
        let p = lab.get_json(&["get", "pod", "later"])?;
        let text = p["status"].to_string();
        let ok = text.contains("CreateContainerConfigError")
            && text.contains(r#"configmap \"later\" not found"#);
        Ok(ok.then_some(()))
    })?;
    lab.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later}\ndata: {token: t0ken}\n")?;
    let p3 = wait_running(lab, "later")?;
    let (_, env3) = container(lab, &p3, "c")?;
    ensure!(env3.lines().any(|l| l == "TOKEN=t0ken"), "{env3}");
    Ok(())
}
