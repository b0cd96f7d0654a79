use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

fn item(key: &str, path: &str, mode: Option<u32>) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        mode,
    }
}

#[test]
fn every_key_is_a_file_without_items() {
    let d = data(&[("game.properties", b"lives=3\n"), ("ui", b"dark")]);
    let files = project(&d, &[], 0o440, false).unwrap();
    assert_eq!(
        files,
        vec![
            ProjectedFile {
                path: "game.properties".into(),
                bytes: b"lives=3\n".to_vec(),
                mode: 0o440
            },
            ProjectedFile {
                path: "ui".into(),
                bytes: b"dark".to_vec(),
                mode: 0o440
            },
        ]
    );
}

#[test]
fn items_choose_keys_paths_and_modes() {
    let d = data(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    let items = [item("b", "conf/b.txt", Some(0o600)), item("a", "a", None)];
    let files = project(&d, &items, DEFAULT_MODE, false).unwrap();
    let got: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|f| (f.path.as_str(), f.bytes.as_slice(), f.mode))
        .collect();
    assert_eq!(
        got,
        vec![("a", &b"1"[..], 0o644), ("conf/b.txt", &b"2"[..], 0o600)]
    );
}

#[test]
fn missing_keys_fail_unless_optional() {
    let d = data(&[("a", b"1")]);
    let items = [item("a", "a", None), item("nope", "n", None)];
    assert_eq!(
        project(&d, &items, DEFAULT_MODE, false),
        Err(ProjectionError::MissingKey("nope".into()))
    );
    let files = project(&d, &items, DEFAULT_MODE, true).unwrap();
    assert_eq!(files.len(), 1);
}

#[test]
fn paths_and_modes_are_checked() {
    let d = data(&[("a", b"1")]);
    for bad in [
        "/etc/passwd",
        "../x",
        "a/../../x",
        "..data",
        "..x/y",
        "",
        "./a",
    ] {
        let items = [item("a", bad, None)];
        assert!(
            matches!(
                project(&d, &items, DEFAULT_MODE, false),
                Err(ProjectionError::BadPath(_))
            ),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        project(&d, &[item("a", "a", Some(0o1777))], DEFAULT_MODE, false),
        Err(ProjectionError::BadMode { .. })
    ));
    assert!(matches!(
        project(&d, &[], 0o4755, false),
        Err(ProjectionError::BadMode { .. })
    ));
    let twice = [item("a", "x", None), item("a", "x", None)];
    assert_eq!(
        project(&d, &twice, DEFAULT_MODE, false),
        Err(ProjectionError::Duplicate("x".into()))
    );
    let nested = [item("a", "x", None), item("a", "x/y", None)];
    assert_eq!(
        project(&d, &nested, DEFAULT_MODE, false),
        Err(ProjectionError::Duplicate("x".into()))
    );
}

fn file(path: &str, bytes: &[u8], mode: u32) -> ProjectedFile {
    ProjectedFile {
        path: path.into(),
        bytes: bytes.to_vec(),
        mode,
    }
}

#[test]
fn writes_link_through_data_and_replace_whole_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let w = AtomicDir::new(&dir);
    assert!(w
        .write(&[file("a", b"1", 0o644), file("conf/b", b"2", 0o600)])
        .unwrap());
    assert_eq!(fs::read(dir.join("a")).unwrap(), b"1");
    assert_eq!(fs::read(dir.join("conf/b")).unwrap(), b"2");
    assert_eq!(
        fs::read_link(dir.join("a")).unwrap(),
        Path::new("..data/a"),
        "files are links through ..data"
    );
    let mode = fs::metadata(dir.join("conf/b"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let first = fs::read_link(dir.join(DATA_LINK)).unwrap();

    // The same content again changes nothing.
    assert!(!w
        .write(&[file("a", b"1", 0o644), file("conf/b", b"2", 0o600)])
        .unwrap());
    assert_eq!(fs::read_link(dir.join(DATA_LINK)).unwrap(), first);

    // A new version: `a` changes, `conf` goes, `c` comes; replaced versions stay for
    // their grace.
    assert!(w
        .write(&[file("a", b"11", 0o644), file("c", b"3", 0o644)])
        .unwrap());
    assert_eq!(fs::read(dir.join("a")).unwrap(), b"11");
    assert_eq!(fs::read(dir.join("c")).unwrap(), b"3");
    assert!(fs::symlink_metadata(dir.join("conf")).is_err());
    let second = fs::read_link(dir.join(DATA_LINK)).unwrap();
    assert_ne!(first, second);
    assert!(
        dir.join(&first).is_dir(),
        "a replaced version stays for its grace"
    );
    assert!(!dir.join(DATA_TMP).exists());
    assert!(w.write(&[file("a", b"111", 0o644)]).unwrap());
    assert!(dir.join(&first).is_dir() && dir.join(&second).is_dir());
    // Past the grace, the next write removes every replaced version.
    let w = AtomicDir::new(&dir).with_grace(Duration::ZERO);
    assert!(w.write(&[file("a", b"1111", 0o644)]).unwrap());
    assert!(!dir.join(&first).exists() && !dir.join(&second).exists());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}"); // a, ..data, the current version
    assert_eq!(fs::read(dir.join("a")).unwrap(), b"1111");
}

#[test]
fn version_names_are_utc_timestamps() {
    // 2026-12-06T21:55:58.000000123Z
    assert_eq!(
        version_name(1_796_594_158_000_000_123),
        "..2026_12_06_21_55_58.000000123"
    );
    assert_eq!(version_name(0), "..1970_01_01_00_00_00.000000000");
}

/// A reader hammering the file during 200 swaps only ever sees one whole version.
#[test]
fn readers_never_see_a_partial_or_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let w = AtomicDir::new(&dir);
    // Big enough that a plain rewrite in place would be seen half-written.
    let versions: Vec<Vec<u8>> = (0..2u8).map(|i| vec![b'a' + i; 64 * 1024]).collect();
    w.write(&[file("cfg", &versions[0], 0o644)]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, path, versions) = (done.clone(), dir.join("cfg"), versions.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                match fs::read(&path) {
                    Ok(b) => assert!(
                        versions.contains(&b),
                        "a partial file of {} bytes after {reads} reads",
                        b.len()
                    ),
                    Err(e) => panic!("read failed after {reads} reads: {e}"),
                }
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        assert!(w
            .write(&[file("cfg", &versions[(i + 1) % 2], 0o644)])
            .unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw only whole versions");
    assert!(reads > 0);
}
