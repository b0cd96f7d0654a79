//! The agent's RAM, where it can be held as a number (issue 14 item 3): parsing image
//! references, which every pull and image GC pass does, costs kilobytes that stay, not the
//! ~7.5 MiB regex oci-spec 0.10.0 compiled and kept (third_party/oci-spec/README.md).
//!
//! One test in this file on purpose: it reads its own process's memory, and another test
//! running beside it on another thread would move the figure.

use oci_client::Reference;

/// Anonymous resident memory of this process, in KiB.
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/self/status")
}

#[test]
fn parsing_image_references_costs_kilobytes_not_megabytes() {
    let before = rss_anon_kib();
    // Every shape the agent sees: tag, registry with port, digest, tag and digest, defaults.
    let refs = [
        "busybox",
        "127.0.0.1:5000/baton/busybox:1",
        "registry.example:443/team/app:v1.2.3-rc_1",
        "ghcr.io/x/y@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "docker.io/library/alpine:3.20@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ];
    for _ in 0..100 {
        for r in refs {
            let parsed: Reference = r.parse().unwrap_or_else(|e| panic!("{r}: {e}"));
            assert!(!parsed.repository().is_empty());
        }
    }
    let grown = rss_anon_kib().saturating_sub(before);
    eprintln!("FIGURE parsing references grew anonymous memory by {grown} KiB");
    // With the Unicode `\w` of upstream's tag class: 15.8 MiB in a debug build, ~8 MiB in a
    // release one; with the ASCII class, the regex, its search caches and the allocator's
    // slack stay well under the bound.
    assert!(
        grown < 1024,
        "parsing references grew anonymous memory by {grown} KiB"
    );
    // The tag class is ASCII, as in the Go grammar it copies: a tag with other letters is
    // refused at parse time, not by the registry later.
    let tag = "busybox:gr\u{fc}\u{df}e";
    assert!(tag.parse::<Reference>().is_err(), "{tag} parsed");
    assert_eq!(
        "reg:5000/a/b:Tag_1.x-y".parse::<Reference>().unwrap().tag(),
        Some("Tag_1.x-y")
    );
}
