//! ConfigMaps through the real CLI and server (issue 18, the object's part): the Kubernetes
//! documentation's `game-demo` ConfigMap applies, `get cm` shows kubectl's columns,
//! `describe` its values, re-apply of a change configures it, an immutable one refuses a
//! change, one over 1 MiB is refused with its name and size, and delete removes it.
//! Pods consuming ConfigMaps (env, volumes) are not built yet.

use anyhow::{ensure, Result};
use baton_e2e::{Broker, Lab};

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
