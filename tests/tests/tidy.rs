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
    let root = repo_root();
    let mut bad = Vec::new();
    for c in ["agent", "coordinator"] {
        let mut files = Vec::new();
        rust_files(&root.join(c).join("src"), &mut files);
        for f in &files {
            for (n, l) in non_test_code(f) {
                if l.contains("\"baton/v1") {
                    bad.push(format!(
                        "{}:{n}: {}",
                        f.strip_prefix(&root).unwrap().display(),
                        l.trim()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "topic literals outside proto:\n{}",
        bad.join("\n")
    );
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

// ----- the coordinator's rooms and the size bound (issue 11) ---------------------------

/// The coordinator's rooms, top to bottom: a room may import only rooms after it.
/// docs/architecture.md draws the same order.
const ROOMS: &[&str] = &[
    "cli",
    "server",
    "edge",
    "dashboard",
    "registry",
    "security",
    "core",
    "metrics",
    "contract",
    "decide",
    "model",
    "store",
];

/// The only rooms the CLI may use: it talks to a server over HTTP (the contract) and reads
/// manifests and objects (the model), never the server's parts.
const CLI_MAY_IMPORT: &[&str] = &["cli", "contract", "model"];

/// No source file has more lines than this before its test module (tests aside).
const MAX_FILE_LINES: usize = 800;

/// A file's code without its tests: comment lines dropped, and nothing from the first
/// `#[cfg(test)]` on. `tests.rs` files and files under a `tests/` folder are all test.
fn non_test_code(p: &Path) -> Vec<(usize, String)> {
    let is_test_file = p.file_name().is_some_and(|n| n == "tests.rs")
        || p.components().any(|c| c.as_os_str() == "tests");
    if is_test_file {
        return Vec::new();
    }
    code_lines(p)
        .into_iter()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .collect()
}

/// `coordinator/src/edge/bus.rs` → `edge::bus`; `core/mod.rs` → `core`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        f => parts.push(f.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// Every `crate::a::b` and `super::c` path named in `code`, as segments.
fn named_paths(module: &[String], is_mod_rs: bool, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        // `baton_coordinator::crate::` cannot occur; skip identifiers ending in the word.
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &code[start..];
        let segs: Vec<String> = rest
            .split("::")
            .take_while(|s| !s.is_empty())
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty())
            .collect();
        let mut path: Vec<String> = if segs[0] == "crate" {
            Vec::new()
        } else {
            // `super` in `a/b.rs` is `a`; in `a/mod.rs` (module `a`) it is the crate root.
            let mut p = module.to_vec();
            if !is_mod_rs || !p.is_empty() {
                p.pop();
            }
            p
        };
        let mut rest_segs = segs.into_iter().skip(1).peekable();
        while rest_segs.peek().is_some_and(|s| s == "super") {
            rest_segs.next();
            path.pop();
        }
        path.extend(rest_segs);
        out.push(path);
    }
    out
}

struct Import {
    from: Vec<String>,
    to: Vec<String>,
    at: String,
}

/// The coordinator's module graph: one edge per path a file's non-test code names,
/// resolved to the longest module that exists.
fn coordinator_imports() -> Vec<Import> {
    let root = repo_root();
    let src = root.join("coordinator/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: Vec<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut out = Vec::new();
    for f in &files {
        let from = module_of(&src, f);
        let is_mod_rs = f.file_name().is_some_and(|n| n == "mod.rs");
        for (n, line) in non_test_code(f) {
            for path in named_paths(&from, is_mod_rs, &line) {
                let Some(to) = (1..=path.len())
                    .rev()
                    .map(|k| path[..k].to_vec())
                    .find(|p| modules.contains(p))
                else {
                    continue;
                };
                out.push(Import {
                    from: from.clone(),
                    to,
                    at: format!(
                        "{}:{n}: {}",
                        f.strip_prefix(&root).unwrap().display(),
                        line.trim()
                    ),
                });
            }
        }
    }
    out
}

#[test]
fn coordinator_rooms_import_only_downward() {
    let rank = |m: &[String]| m.first().and_then(|r| ROOMS.iter().position(|x| x == r));
    let mut bad = Vec::new();
    for i in coordinator_imports() {
        let (Some(a), Some(b)) = (rank(&i.from), rank(&i.to)) else {
            continue; // lib.rs and main.rs sit above every room
        };
        if a > b {
            bad.push(format!(
                "{} imports {} upward: {}",
                i.from[0],
                i.to.join("::"),
                i.at
            ));
        }
        if i.from[0] == "cli" && !CLI_MAY_IMPORT.contains(&i.to[0].as_str()) {
            bad.push(format!("the CLI imports {}: {}", i.to.join("::"), i.at));
        }
    }
    assert!(bad.is_empty(), "rooms out of order:\n{}", bad.join("\n"));
    // Every room exists: a renamed folder must rename its entry above.
    let src = repo_root().join("coordinator/src");
    for r in ROOMS {
        assert!(
            src.join(r).join("mod.rs").is_file(),
            "no room coordinator/src/{r}/"
        );
    }
}

#[test]
fn coordinator_modules_have_no_import_circles() {
    use std::collections::{BTreeMap, BTreeSet};
    // A child naming its own parent (a room's shared types in mod.rs) is not a circle.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut witness: BTreeMap<(String, String), String> = BTreeMap::new();
    for i in coordinator_imports() {
        if i.to.is_empty() || i.from.starts_with(&i.to) {
            continue;
        }
        let (a, b) = (i.from.join("::"), i.to.join("::"));
        witness.entry((a.clone(), b.clone())).or_insert(i.at);
        graph.entry(a).or_default().insert(b);
    }
    // Depth-first search for a back edge; report the circle with one line per hop.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &graph, &mut state, &mut Vec::new()) {
                let hops: Vec<String> = c
                    .windows(2)
                    .map(|w| witness[&(w[0].clone(), w[1].clone())].clone())
                    .collect();
                panic!("import circle {}:\n{}", c.join(" -> "), hops.join("\n"));
            }
        }
    }
}

#[test]
fn no_source_file_is_over_the_size_bound() {
    let root = repo_root();
    let mut bad = Vec::new();
    for c in ["proto", "link", "coordinator", "agent"] {
        let mut files = Vec::new();
        rust_files(&root.join(c).join("src"), &mut files);
        for f in files {
            // Count every line (comments too) up to the test module.
            let text = fs::read_to_string(&f).unwrap_or_default();
            let n = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .count();
            if n > MAX_FILE_LINES && !non_test_code(&f).is_empty() {
                bad.push(format!(
                    "{}: {n} lines",
                    f.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "over {MAX_FILE_LINES} lines before the tests (split by concern):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_cli_builds_no_route_by_hand() {
    // Routes are defined once in coordinator/src/contract; the CLI calls them by name.
    let mut files = Vec::new();
    rust_files(&repo_root().join("coordinator/src/cli"), &mut files);
    let mut bad = Vec::new();
    for f in &files {
        for (n, l) in non_test_code(f) {
            if ["\"/api/", "/api/v1", "\"/v2/", "\"/healthz"]
                .iter()
                .any(|r| l.contains(r))
            {
                bad.push(format!("{}:{n}: {}", f.display(), l.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "routes built in the CLI:\n{}",
        bad.join("\n")
    );
}

#[test]
fn api_paths_are_spelled_only_in_the_contracts() {
    // The HTTP API's paths live in coordinator/src/contract (routes.rs) and, for the
    // device's routes, in proto/src/enroll.rs and proto/src/release.rs (a release's
    // download), which the agent shares; everything else,
    // the agent included, takes them from there. (Tests may spell paths out to check them.)
    let root = repo_root();
    let allowed = |rel: &str| {
        rel.starts_with("coordinator/src/contract/")
            || rel == "proto/src/enroll.rs"
            || rel == "proto/src/release.rs"
    };
    let mut bad = Vec::new();
    for c in ["proto", "link", "coordinator", "agent"] {
        let mut files = Vec::new();
        rust_files(&root.join(c).join("src"), &mut files);
        for f in &files {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            if allowed(&rel) {
                continue;
            }
            for (n, l) in non_test_code(f) {
                if l.contains("/api/v1") {
                    bad.push(format!("{rel}:{n}: {}", l.trim()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "API paths outside coordinator/src/contract and proto/src/{{enroll,release}}.rs:\n{}",
        bad.join("\n")
    );
}

#[test]
fn each_store_table_has_one_owner() {
    // docs/architecture.md: the core is the only writer of the object tables; every other
    // table belongs to one module outside it. A second module naming a table is a second
    // writer (or a reader behind the owner's back).
    let owners: &[(&str, &str)] = &[
        ("Deployments", "core"),
        ("Pods", "core"),
        ("Nodes", "core"),
        ("Events", "core"),
        ("Revisions", "core"),
        ("Secrets", "core"),
        ("ConfigMaps", "core"),
        ("Namespaces", "core"),
        ("AgentUpdates", "core"),
        ("Tokens", "security::auth"),
        ("JoinTokens", "security::enroll"),
        ("Identities", "security::gate"),
        ("Seqs", "security::gate"),
        ("Meta", "security::gate"),
        ("Images", "registry"),
        ("Releases", "registry"),
    ];
    let root = repo_root();
    let src = root.join("coordinator/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let module = module_of(&src, f).join("::");
        if module == "store" || module.starts_with("store::") {
            continue; // where the tables are defined, and their backends and contract
        }
        for (n, l) in non_test_code(f) {
            for (table, owner) in owners {
                let named = l.match_indices(&format!("Table::{table}")).any(|(i, m)| {
                    !l[i + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
                });
                let owned = module == *owner || module.starts_with(&format!("{owner}::"));
                if named && !owned {
                    bad.push(format!(
                        "{}:{n}: Table::{table} belongs to {owner}",
                        f.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "store tables used outside their owner:\n{}",
        bad.join("\n")
    );
}
