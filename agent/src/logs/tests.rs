use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::Mutex as StdMutex;

use super::*;

fn append(path: &Path, data: &[u8]) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

fn drain(f: &mut Follower, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let c = f.next_chunk(max).unwrap();
        assert!(c.len() <= max);
        if c.is_empty() {
            return out;
        }
        out.extend(c);
    }
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap()
}

#[test]
fn tail_counts_lines_across_the_rotated_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(rotated(&log), b"r1\nr2\nr3\n").unwrap();
    fs::write(&log, b"c1\nc2\n").unwrap();
    let all = |tail| {
        text(drain(
            &mut Follower::open(&log, false, false, tail).unwrap().unwrap(),
            4,
        ))
    };
    assert_eq!(all(None), "r1\nr2\nr3\nc1\nc2\n");
    assert_eq!(all(Some(0)), "");
    assert_eq!(all(Some(1)), "c2\n");
    assert_eq!(all(Some(2)), "c1\nc2\n");
    assert_eq!(all(Some(3)), "r3\nc1\nc2\n");
    assert_eq!(all(Some(100)), "r1\nr2\nr3\nc1\nc2\n");
    // A last line without its newline is a line.
    append(&log, b"partial");
    assert_eq!(all(Some(2)), "c2\npartial");
    assert!(
        Follower::open(&dir.path().join("none.log"), false, false, None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn follow_goes_on_across_a_copytruncate_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, b"one\ntwo\n").unwrap();
    let mut f = Follower::open(&log, false, true, None).unwrap().unwrap();
    assert_eq!(text(drain(&mut f, 100)), "one\ntwo\n");
    append(&log, b"three\nfour\n");
    // The rotator copies the newest bytes to .1 and truncates before we read them; the
    // rotated log begins inside what we already returned.
    crate::runtime::rotate_if_needed_for_tests(&log, 12).unwrap();
    assert_eq!(fs::read(rotated(&log)).unwrap(), b"\nthree\nfour\n");
    append(&log, b"five\n");
    assert_eq!(text(drain(&mut f, 3)), "three\nfour\nfive\n");
    append(&log, b"six\n");
    assert_eq!(text(drain(&mut f, 100)), "six\n");
}

#[test]
fn follow_goes_on_into_the_next_instance_and_previous_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, b"first run\n").unwrap();
    let mut f = Follower::open(&log, false, true, None).unwrap().unwrap();
    assert_eq!(text(drain(&mut f, 100)), "first run\n");
    append(&log, b"last words\n");
    keep_previous(&log).unwrap();
    fs::write(&log, b"second run\n").unwrap();
    assert_eq!(text(drain(&mut f, 100)), "last words\nsecond run\n");
    let mut p = Follower::open(&log, true, true, None).unwrap().unwrap();
    assert!(!p.follows(), "the previous instance writes no more");
    assert_eq!(text(drain(&mut p, 100)), "first run\nlast words\n");
    // The next restart replaces it; a rotated log of an older instance does not linger.
    fs::write(rotated(&previous(&log)), b"stale").unwrap();
    keep_previous(&log).unwrap();
    assert!(!rotated(&previous(&log)).exists());
    let mut p = Follower::open(&log, true, false, None).unwrap().unwrap();
    assert_eq!(text(drain(&mut p, 100)), "second run\n");
}

/// Records chunks; refuses (as a full queue would) while `full` is set.
#[derive(Default)]
struct Recorder {
    chunks: StdMutex<Vec<LogChunk>>,
}

impl ChunkSink for Recorder {
    fn send(&self, body: Body) -> Result<(), bool> {
        match body {
            Body::LogChunk(c) => self.chunks.lock().unwrap().push(c),
            other => panic!("not a chunk: {other:?}"),
        }
        Ok(())
    }
}

fn request(session: u64, credit: u32, follow: bool) -> LogRequest {
    LogRequest {
        session,
        pod_uid: BString::new("u1").unwrap(),
        container: BString::new("app").unwrap(),
        previous: false,
        follow,
        tail_lines: None,
        credit,
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_session_never_runs_ahead_of_its_credit_and_ends_when_the_reader_goes() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("u1/logs");
    fs::create_dir_all(&logs).unwrap();
    // 1 MiB of log: 64 chunks.
    fs::write(logs.join("app.log"), vec![b'x'; 1 << 20]).unwrap();
    let server = LogServer::new(dir.path().to_owned());
    let rec = Arc::new(Recorder::default());
    server.open(request(7, 4, false), rec.clone());
    settle().await;
    let n = |r: &Recorder| r.chunks.lock().unwrap().len();
    assert_eq!(n(&rec), 4, "only as many chunks as credit");
    assert_eq!(server.in_flight_bytes(), 4 * MAX_LOG_CHUNK as u64);
    // A slow reader: nothing more, however long, until it acknowledges.
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(n(&rec), 4);
    server.credit(LogCredit {
        session: 7,
        acked: 2,
        credit: 4,
        cancel: false,
    });
    settle().await;
    assert_eq!(n(&rec), 6);
    assert_eq!(server.in_flight_bytes(), 4 * MAX_LOG_CHUNK as u64);
    let seqs: Vec<u64> = rec.chunks.lock().unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    // Then it goes away: the session ends after IDLE and holds nothing.
    tokio::time::advance(IDLE + Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(server.open_sessions(), 0);
    assert_eq!(server.in_flight_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_whole_log_ends_with_a_marker_and_bad_requests_get_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("u1/logs");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("app.log"), b"hello\n").unwrap();
    let server = LogServer::new(dir.path().to_owned());
    let rec = Arc::new(Recorder::default());
    server.open(request(1, 4, false), rec.clone());
    settle().await;
    {
        let c = rec.chunks.lock().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(&c[0].data[..], b"hello\n");
        assert_eq!(c[0].end, None);
        assert_eq!((c[1].seq, c[1].end.clone()), (1, Some(None)));
    }
    let mut bad = request(2, 4, false);
    bad.pod_uid = BString::new("..").unwrap();
    server.open(bad, rec.clone());
    let mut prev = request(3, 4, false);
    prev.previous = true;
    server.open(prev, rec.clone());
    settle().await;
    let c = rec.chunks.lock().unwrap();
    let why = |i: usize| c[i].end.clone().flatten().unwrap().to_string();
    assert!(why(2).contains("invalid pod uid"), "{}", why(2));
    assert!(
        why(3).contains("previous terminated container"),
        "{}",
        why(3)
    );
    assert_eq!(server.open_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_following_session_sends_new_lines_and_stops_on_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("u1/logs");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("app.log"), b"a\n").unwrap();
    let server = LogServer::new(dir.path().to_owned());
    let rec = Arc::new(Recorder::default());
    server.open(request(9, 8, true), rec.clone());
    settle().await;
    append(&logs.join("app.log"), b"b\n");
    tokio::time::advance(POLL * 2).await;
    settle().await;
    let got: Vec<u8> = rec
        .chunks
        .lock()
        .unwrap()
        .iter()
        .flat_map(|c| c.data.to_vec())
        .collect();
    assert_eq!(got, b"a\nb\n");
    server.credit(LogCredit {
        session: 9,
        acked: 2,
        credit: 8,
        cancel: true,
    });
    tokio::time::advance(POLL * 2).await;
    settle().await;
    assert_eq!(server.open_sessions(), 0);
}
