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
        since: None,
        timestamps: false,
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

// ----- line times: --since and --timestamps ---------------------------------------------

use super::times::{Mark, Times};

/// 2023-11-14T22:13:20Z, plus `s` seconds.
fn at(s: i64) -> i64 {
    1_700_000_000_000_000_000 + s * 1_000_000_000
}

/// Marks `file` as having reached each `(end, second)`.
fn mark_all(file: &Path, marks: &[(u64, i64)]) {
    let mut prev = None;
    for &(end, s) in marks {
        let m = Mark { end, nanos: at(s) };
        times::append(file, prev, m, 0o600).unwrap();
        prev = Some(m);
    }
}

#[test]
fn marks_are_small_and_read_back_as_written() {
    let m = |end, nanos| Mark { end, nanos };
    let t = Times {
        marks: vec![
            m(20, at(0)),
            m(40, at(1)),
            m(41, at(1) + 250_000_000),
            // The clock went back: an absolute mark.
            m(100, at(-5)),
        ],
    };
    let b = t.encoded();
    // 17 for the first, 1+2 a line a second, 1+2, then 17 again.
    assert_eq!(b.len(), 17 + 3 + 3 + 17);
    assert_eq!(Times::decode(&b), t);
    // A torn last mark is dropped, not misread.
    assert_eq!(Times::decode(&b[..b.len() - 3]).marks, t.marks[..3]);
    // A byte's time is the first mark at or past it; unmarked bytes have none.
    assert_eq!(t.time_of(0), Some(at(0)));
    assert_eq!(t.time_of(19), Some(at(0)));
    assert_eq!(t.time_of(20), Some(at(1)));
    assert_eq!(t.time_of(99), Some(at(-5)));
    assert_eq!(t.time_of(100), None);
    // Where the lines since a time may start.
    assert_eq!(t.cut(at(0)), None);
    assert_eq!(t.cut(at(1)), Some(20));
    assert_eq!(t.cut(at(2)), Some(100));
    // Slicing renumbers, and marks what is past the last mark with `now`.
    let s = t.slice(30, 120, at(9));
    assert_eq!(
        s.marks,
        vec![
            m(10, at(1)),
            m(11, at(1) + 250_000_000),
            m(70, at(-5)),
            m(90, at(9))
        ]
    );
}

/// `r1`..`r3` in `<log>.1` written at seconds 1..3, `c1`..`c3` in `<log>` at 4..6.
fn timed_log(dir: &Path) -> PathBuf {
    let log = dir.join("app.log");
    fs::write(rotated(&log), b"r1\nr2\nr3\n").unwrap();
    mark_all(&rotated(&log), &[(3, 1), (6, 2), (9, 3)]);
    fs::write(&log, b"c1\nc2\nc3\n").unwrap();
    mark_all(&log, &[(3, 4), (6, 5), (9, 6)]);
    log
}

fn read_sel(log: &Path, tail: Option<u32>, since: Option<i64>, timestamps: bool) -> String {
    let sel = Select { since, timestamps };
    let mut f = Follower::open_with(log, false, false, tail, sel)
        .unwrap()
        .unwrap();
    text(drain(&mut f, 64))
}

#[test]
fn since_selects_at_file_boundaries_and_tail_counts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = timed_log(dir.path());
    let since = |s, tail| read_sel(&log, tail, Some(at(s)), false);
    assert_eq!(since(0, None), "r1\nr2\nr3\nc1\nc2\nc3\n");
    assert_eq!(since(1, None), "r1\nr2\nr3\nc1\nc2\nc3\n");
    assert_eq!(since(2, None), "r2\nr3\nc1\nc2\nc3\n");
    // Exactly the first line of the live log: nothing of the rotated one.
    assert_eq!(since(4, None), "c1\nc2\nc3\n");
    assert_eq!(since(6, None), "c3\n");
    assert_eq!(since(7, None), "");
    // Between two marks: from the later one.
    assert_eq!(read_sel(&log, None, Some(at(4) + 1), false), "c2\nc3\n");
    // --tail applies to what --since left.
    assert_eq!(since(2, Some(2)), "c2\nc3\n");
    assert_eq!(since(2, Some(4)), "r3\nc1\nc2\nc3\n");
    assert_eq!(since(2, Some(100)), "r2\nr3\nc1\nc2\nc3\n");
    assert_eq!(since(5, Some(1)), "c3\n");
    assert_eq!(since(5, Some(100)), "c2\nc3\n");
    assert_eq!(since(5, Some(0)), "");
}

#[test]
fn a_mark_inside_a_line_selects_the_whole_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    // "old\n" at 1 s; "new line\n" written in two pieces around the check at 2 s.
    fs::write(&log, b"old\nnew line\n").unwrap();
    mark_all(&log, &[(4, 1), (7, 2), (13, 3)]);
    assert_eq!(read_sel(&log, None, Some(at(3)), false), "new line\n");
    assert_eq!(
        read_sel(&log, None, Some(at(3)), true),
        "2023-11-14T22:13:23.000000000Z new line\n"
    );
}

#[test]
fn timestamps_prefix_each_line_and_chunks_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let log = timed_log(dir.path());
    let out = read_sel(&log, Some(4), None, true);
    assert_eq!(
        out,
        "2023-11-14T22:13:23.000000000Z r3\n\
         2023-11-14T22:13:24.000000000Z c1\n\
         2023-11-14T22:13:25.000000000Z c2\n\
         2023-11-14T22:13:26.000000000Z c3\n"
    );
    // Chunks barely larger than one stamped line still carry all of it, one line each.
    let mut f = Follower::open_with(
        &log,
        false,
        false,
        None,
        Select {
            since: None,
            timestamps: true,
        },
    )
    .unwrap()
    .unwrap();
    let mut chunks = Vec::new();
    loop {
        let c = f.next_chunk(40).unwrap();
        assert!(c.len() <= 40, "{} bytes", c.len());
        if c.is_empty() {
            break;
        }
        chunks.push(text(c));
    }
    assert_eq!(chunks.len(), 6, "{chunks:?}");
    assert_eq!(chunks[0], "2023-11-14T22:13:21.000000000Z r1\n");
    // A line longer than a chunk: its time once, then the rest of it.
    fs::write(&log, [b'x'; 50].as_slice()).unwrap();
    fs::write(times::times_path(&log), b"").unwrap();
    mark_all(&log, &[(50, 7)]);
    let got = read_sel(&log, Some(1), None, true);
    assert_eq!(
        got,
        format!("2023-11-14T22:13:27.000000000Z {}", "x".repeat(50))
    );
}

#[test]
fn marks_follow_their_bytes_through_rotation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, b"aa\nbb\ncc\n").unwrap();
    mark_all(&log, &[(3, 1), (6, 2), (9, 3)]);
    let mut f = Follower::open_with(
        &log,
        false,
        true,
        None,
        Select {
            since: None,
            timestamps: true,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        text(drain(&mut f, 100)),
        "2023-11-14T22:13:21.000000000Z aa\n\
         2023-11-14T22:13:22.000000000Z bb\n\
         2023-11-14T22:13:23.000000000Z cc\n"
    );
    append(&log, b"dd\n");
    mark_all(&log, &[(12, 4)]);
    // Keeps the last 6 bytes, "cc\ndd\n", with their marks; the live log starts unmarked.
    assert!(crate::runtime::rotate_if_needed_for_tests(&log, 6).unwrap());
    assert_eq!(
        Times::load(&rotated(&log)).unwrap().marks,
        vec![
            Mark {
                end: 3,
                nanos: at(3)
            },
            Mark {
                end: 6,
                nanos: at(4)
            }
        ]
    );
    assert!(Times::load(&log).unwrap().marks.is_empty());
    assert_eq!(
        text(drain(&mut f, 100)),
        "2023-11-14T22:13:24.000000000Z dd\n"
    );
    // A restart: the marks go with the previous instance's log.
    keep_previous(&log).unwrap();
    assert!(!times::times_path(&log).exists());
    assert_eq!(
        read_sel(&previous(&log), None, Some(at(4)), false),
        "dd\n",
        "the rotated log of the previous instance keeps its marks"
    );
}

#[test]
fn timestamps_never_go_back_and_unmarked_lines_get_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    // The clock went back between two marks; then a line not marked yet.
    fs::write(&log, b"a\nb\nc\n").unwrap();
    mark_all(&log, &[(2, 5), (4, 3)]);
    let out = read_sel(&log, None, None, true);
    let stamps: Vec<std::time::SystemTime> = out
        .lines()
        .map(|l| humantime::parse_rfc3339(l.split(' ').next().unwrap()).unwrap())
        .collect();
    assert_eq!(stamps.len(), 3, "{out}");
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{out}");
    assert!(out.starts_with("2023-11-14T22:13:25.000000000Z a\n2023-11-14T22:13:25.000000000Z b\n"));
}
