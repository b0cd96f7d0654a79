//! The embedded store against real files: persistence, schema versions, corrupt files,
//! a full disk and SIGKILL in the middle of commits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_coordinator::store::{
    self, Op, RedbStore, Store, StoreError, Table, FILE_NAME, SCHEMA_VERSION_KEY,
};
use rand::Rng;

fn put(t: Table, k: &str, v: &[u8]) -> Op {
    Op::Put(t, k.to_string(), v.to_vec())
}

#[test]
fn reopen_after_drop_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = RedbStore::open(dir.path()).expect("open");
        s.commit(vec![
            put(Table::Deployments, "web", b"{}"),
            put(Table::Pods, "web-1", b"p1"),
            put(Table::Pods, "web-2", b"p2"),
        ])
        .expect("commit");
        s.commit(vec![Op::Delete(Table::Pods, "web-1".into())])
            .expect("commit");
    }
    let s = RedbStore::open(dir.path()).expect("reopen");
    assert_eq!(
        s.list(Table::Pods).expect("list"),
        vec![("web-2".to_string(), b"p2".to_vec())]
    );
    assert_eq!(
        s.get(Table::Deployments, "web").expect("get"),
        Some(b"{}".to_vec())
    );
}

#[test]
fn a_second_open_is_refused_while_the_first_is_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = RedbStore::open(dir.path()).expect("open");
    let err = RedbStore::open(dir.path()).expect_err("second open");
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
    assert!(err.to_string().contains("already open"), "{err}");
}

#[test]
fn a_store_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = RedbStore::open(dir.path()).expect("open");
        s.commit(vec![put(Table::Meta, SCHEMA_VERSION_KEY, b"99")])
            .expect("commit");
    }
    let err = RedbStore::open(dir.path()).expect_err("newer schema");
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                supported: store::SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("newer Baton") && msg.contains("99"), "{msg}");
}

fn assert_clear_open_error(dir: &Path, what: &str) {
    // A panic inside redb would fail this test too; catch it to say which input did it.
    let result = std::panic::catch_unwind(|| RedbStore::open(dir));
    let Ok(result) = result else {
        panic!("{what}: opening panicked instead of returning an error");
    };
    let err = result.expect_err(what);
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{what}: {err:?}");
    assert!(
        msg.contains(FILE_NAME),
        "{what}: error names the file: {msg}"
    );
    assert!(msg.contains("corrupt"), "{what}: {msg}");
}

#[test]
fn a_corrupt_file_gives_a_clear_error() {
    // Not a database at all.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 64 * 1024]).expect("write");
    assert_clear_open_error(dir.path(), "garbage file");

    // A real store whose header was overwritten.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = RedbStore::open(dir.path()).expect("open");
        s.commit(vec![put(Table::Pods, "a", &[1; 1000])])
            .expect("commit");
    }
    let path = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&path).expect("read");
    for b in bytes.iter_mut().take(512) {
        *b = 0xff;
    }
    std::fs::write(&path, &bytes).expect("write");
    assert_clear_open_error(dir.path(), "overwritten header");
}

// ---------------------------------------------------------------------------------------
// Crash safety: a child process commits batches in a loop and is SIGKILLed at a random
// moment; after each kill every batch must be either fully there or fully absent.

const CHILD_ENV: &str = "BATON_STORE_CRASH_CHILD_DIR";
const KEYS_PER_BATCH: usize = 8;

/// The batch `i`: eight pods with 2 KiB values, the marker of batch `i` replacing the
/// marker of batch `i - 1` (a delete and a put), and the counter in Meta.
fn batch(i: u64) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..KEYS_PER_BATCH)
        .map(|j| put(Table::Pods, &format!("b{i:08}-{j}"), &value(i, j)))
        .collect();
    if i > 0 {
        ops.push(Op::Delete(Table::Nodes, format!("marker-{:08}", i - 1)));
    }
    ops.push(put(Table::Nodes, &format!("marker-{i:08}"), b"m"));
    ops.push(put(Table::Meta, "last_batch", i.to_string().as_bytes()));
    ops
}

fn value(i: u64, j: usize) -> Vec<u8> {
    format!("{i}:{j}:").into_bytes().repeat(2048 / 12)
}

/// Not a test of its own: the body of the child process. Without the variable it
/// returns at once.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let start: u64 = std::env::var("BATON_STORE_CRASH_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let s = RedbStore::open(Path::new(&dir)).expect("child open");
    let mut stdout = std::io::stdout();
    for i in start.. {
        s.commit(batch(i)).expect("child commit");
        use std::io::Write;
        let _ = writeln!(stdout, "committed {i}");
        let _ = stdout.flush();
    }
}

/// Kills the child on drop so a failing assertion never leaves it running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks that the store holds exactly batches `0..=last` and returns `last`.
fn verify(dir: &Path) -> Option<u64> {
    let s = RedbStore::open(dir).expect("reopen after kill");
    let last: Option<u64> = s
        .get(Table::Meta, "last_batch")
        .expect("meta")
        .map(|b| String::from_utf8(b).expect("utf8").parse().expect("number"));
    let pods = s.list(Table::Pods).expect("pods");
    let mut per_batch: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (k, v) in pods {
        let i: u64 = k[1..9].parse().expect("batch number");
        per_batch.entry(i).or_default().push((k, v));
    }
    let Some(last) = last else {
        assert!(per_batch.is_empty(), "pods without a counter");
        return None;
    };
    let batches: Vec<u64> = per_batch.keys().copied().collect();
    assert_eq!(batches, (0..=last).collect::<Vec<_>>(), "batches present");
    for (i, entries) in &per_batch {
        assert_eq!(entries.len(), KEYS_PER_BATCH, "batch {i} is partial");
        for (j, (k, v)) in entries.iter().enumerate() {
            assert_eq!(k, &format!("b{i:08}-{j}"));
            assert_eq!(v, &value(*i, j), "value of {k}");
        }
    }
    let markers = s.list(Table::Nodes).expect("markers");
    assert_eq!(
        markers,
        vec![(format!("marker-{last:08}"), b"m".to_vec())],
        "exactly the marker of the last batch"
    );
    Some(last)
}

#[test]
fn sigkill_mid_commit_leaves_whole_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::thread_rng();
    let mut next = 0u64;
    let mut kills_mid_run = 0;
    for round in 0..6 {
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("BATON_STORE_CRASH_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("child stdout");
        // Wait for a random number of commits, then kill at a random moment after it.
        let want = rng.gen_range(1..40);
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = BufReader::new(stdout).lines();
        while seen < want && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("committed ") => seen += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        assert_eq!(seen, want, "round {round}: child stopped committing");
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
        child.0.kill().expect("SIGKILL");
        let status = child.0.wait().expect("wait");
        if status.code().is_none() {
            kills_mid_run += 1;
        }
        drop(lines);
        let last = verify(dir.path()).expect("some batch committed");
        assert!(
            last + 1 >= next + want,
            "round {round}: acknowledged batches lost"
        );
        next = last + 1;
    }
    assert!(
        kills_mid_run > 0,
        "the child was never killed while running"
    );
}

// ---------------------------------------------------------------------------------------
// A full disk: a small tmpfs as the data directory.

/// A tmpfs mounted on a fresh directory, unmounted on drop even when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_is_an_error_and_keeps_the_previous_state() {
    // CI and developers run as root (see CONVENTIONS); without mount rights this would
    // test nothing, so fail loudly rather than pass.
    let fs = Tmpfs::mount("2m").expect("mount a tmpfs (needs root)");
    let dir = fs.path();
    let mut committed = 0usize;
    let s = RedbStore::open(&dir).expect("open");
    let mut err = None;
    for i in 0..10_000 {
        // 64 KiB per batch: the 2 MiB filesystem fills within a few dozen batches.
        let ops = vec![
            put(Table::Pods, &format!("p{i:05}"), &vec![i as u8; 64 * 1024]),
            put(Table::Meta, "count", (i + 1).to_string().as_bytes()),
        ];
        match s.commit(ops) {
            Ok(()) => committed = i + 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the disk never filled up");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(committed > 0, "nothing fitted at all");

    // Make room: the same handle recovers (it reopens the file after the I/O error)
    // and holds every acknowledged batch, and not the failed one.
    let remount = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&dir)
        .status()
        .expect("remount");
    assert!(remount.success());
    let count = s.get(Table::Meta, "count").expect("get after making room");
    let count: usize = String::from_utf8(count.expect("count"))
        .expect("utf8")
        .parse()
        .expect("number");
    assert_eq!(count, committed);
    let check = |s: &RedbStore| {
        let pods = s.list(Table::Pods).expect("list");
        assert_eq!(pods.len(), committed);
        for (i, (k, v)) in pods.iter().enumerate() {
            assert_eq!(k, &format!("p{i:05}"));
            assert_eq!(v, &vec![i as u8; 64 * 1024]);
        }
    };
    check(&s);
    s.commit(vec![put(Table::Pods, "zz-after", b"x")])
        .expect("commit after making room");
    drop(s);
    // And a fresh open sees the same.
    let s = RedbStore::open(&dir).expect("reopen");
    assert_eq!(
        s.get(Table::Pods, "zz-after").expect("get"),
        Some(b"x".to_vec())
    );
    s.commit(vec![Op::Delete(Table::Pods, "zz-after".into())])
        .expect("delete");
    check(&s);
}
