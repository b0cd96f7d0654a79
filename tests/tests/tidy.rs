//! Architecture invariants from docs/architecture.md, checked on the source text, in the
//! spirit of rust-analyzer's tidy tests: a boundary that is only written down erodes.

use std::fs;
use std::path::{Path, PathBuf};

use baton_e2e::repo_root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Source lines that are code, not comments.
fn code_lines(p: &Path) -> Vec<(usize, String)> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect()
}

fn offenders(crates: &[&str], needle: &str, allowed: &[&str]) -> Vec<String> {
    let root = repo_root();
    let mut files = Vec::new();
    for c in crates {
        rust_files(&root.join(c).join("src"), &mut files);
    }
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
        if allowed.contains(&rel.as_str()) {
            continue;
        }
        for (n, l) in code_lines(&f) {
            if l.contains(needle) {
                bad.push(format!("{rel}:{n}: {}", l.trim()));
            }
        }
    }
    bad
}

#[test]
fn only_the_youki_runtime_imports_libcontainer() {
    for needle in ["libcontainer::", "libcgroups::"] {
        let bad: Vec<String> = offenders(
            &["agent", "coordinator", "proto"],
            needle,
            &["agent/src/runtime/youki.rs"],
        )
        .into_iter()
        .filter(|l| !l.starts_with("agent/src/runtime/youki/"))
        .collect();
        assert!(
            bad.is_empty(),
            "{needle} used outside agent/src/runtime/youki.rs and youki/:\n{}",
            bad.join("\n")
        );
    }
}

#[test]
fn only_proto_defines_topics() {
    // Library code builds topics through baton_proto::topics; a literal elsewhere would
    // drift from the contract. (Unit tests may spell topics out to check the contract.)
    let bad: Vec<String> = offenders(&["agent", "coordinator"], "\"baton/v1", &[])
        .into_iter()
        .filter(|l| !is_in_test_module(l))
        .collect();
    assert!(
        bad.is_empty(),
        "topic literals outside proto:\n{}",
        bad.join("\n")
    );
}

/// True when the offending line sits after a `#[cfg(test)]` in its file.
fn is_in_test_module(offence: &str) -> bool {
    let Some((file, rest)) = offence.split_once(':') else {
        return false;
    };
    let Some(line) = rest.split(':').next().and_then(|n| n.parse::<usize>().ok()) else {
        return false;
    };
    let text = fs::read_to_string(repo_root().join(file)).unwrap_or_default();
    text.lines().take(line).any(|l| l.trim() == "#[cfg(test)]")
}

#[test]
fn proto_has_no_async_runtime_and_no_mqtt_client() {
    let manifest = fs::read_to_string(repo_root().join("proto/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .split("\n[")
        .next()
        .unwrap_or("");
    for forbidden in ["tokio", "rumqttc", "rumqttd"] {
        assert!(!deps.contains(forbidden), "proto depends on {forbidden}");
    }
}

#[test]
fn unsafe_code_is_denied_workspace_wide() {
    let root = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(
        root.contains("unsafe_code = \"deny\""),
        "workspace lints lost unsafe_code = deny"
    );
    for c in ["proto", "coordinator", "agent", "tests"] {
        let m = fs::read_to_string(repo_root().join(c).join("Cargo.toml")).unwrap();
        assert!(
            m.contains("[lints]") && m.contains("workspace = true"),
            "{c} does not inherit the workspace lints"
        );
    }
}
