use std::sync::Mutex as StdMutex;

use baton_proto::ExecOutput;

use super::*;
use crate::runtime::{ContainerId, FakeRuntime};

/// Records what a session publishes.
#[derive(Default)]
struct Recorder(StdMutex<Vec<Body>>);

impl ChunkSink for Recorder {
    fn send(&self, body: Body) -> Result<(), bool> {
        self.0.lock().unwrap().push(body);
        Ok(())
    }
}

impl Recorder {
    fn outputs(&self) -> Vec<ExecOutput> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter_map(|b| match b {
                Body::ExecOutput(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }

    fn stdout(&self) -> Vec<u8> {
        self.outputs()
            .into_iter()
            .flat_map(|o| o.data.to_vec())
            .collect()
    }

    fn exit(&self) -> Option<ExecExit> {
        let all = self.0.lock().unwrap();
        all.iter().find_map(|b| match b {
            Body::ExecExit(e) => Some(e.clone()),
            _ => None,
        })
    }
}

/// A fake runtime with the container `uid-app` running.
fn runtime() -> Arc<FakeRuntime> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let rt = Arc::new(FakeRuntime::new(tx));
    rt.run(&crate::runtime::fake::test_spec("uid-app")).unwrap();
    rt
}

fn request(session: u64, credit: u32) -> ExecRequest {
    ExecRequest {
        session,
        pod_uid: BString::new("uid").unwrap(),
        container: BString::new("app").unwrap(),
        command: BVec::from_vec(vec![BString::new("cat").unwrap()]).unwrap(),
        tty: false,
        stdin: true,
        rows: 0,
        cols: 0,
        credit,
    }
}

fn input(session: u64, seq: u64, acked: u64, action: ExecAction) -> ExecInput {
    ExecInput {
        session,
        seq,
        acked,
        credit: MAX_EXEC_CREDIT,
        action,
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_round_trips_and_the_status_ends_the_session() {
    let rt = runtime();
    let server = ExecServer::new(rt.clone());
    let sink = Arc::new(Recorder::default());
    server.open(request(7, 8), sink.clone());
    let data = |d: &[u8]| ExecAction::Stdin(BVec::from_vec(d.to_vec()).unwrap());
    server.input(input(7, 0, 0, data(b"hello ")));
    server.input(input(7, 0, 0, data(b"hello "))); // a redelivered duplicate
    server.input(input(7, 1, 0, data(b"world")));
    server.input(input(7, 2, 0, ExecAction::Eof));
    until("the exit", || sink.exit().is_some()).await;
    assert_eq!(sink.stdout(), b"hello world");
    let exit = sink.exit().unwrap();
    assert_eq!((exit.code, exit.error), (Some(0), None));
    let outs = sink.outputs();
    assert_eq!(
        exit.seq,
        outs.len() as u64,
        "the exit follows the last output"
    );
    assert!(outs.iter().enumerate().all(|(i, o)| o.seq == i as u64));
    assert_eq!(server.open_sessions(), 0);
    assert!(rt
        .calls()
        .contains(&crate::runtime::fake::Call::ExecAttached(
            ContainerId::new("uid-app").unwrap(),
            vec!["cat".into()]
        )));
}

#[tokio::test(flavor = "multi_thread")]
async fn output_waits_for_credit() {
    let server = ExecServer::new(runtime());
    let sink = Arc::new(Recorder::default());
    server.open(request(8, 1), sink.clone());
    let chunk = vec![b'x'; MAX_EXEC_CHUNK];
    for seq in 0..4 {
        let d = ExecAction::Stdin(BVec::from_vec(chunk.clone()).unwrap());
        // Acknowledges nothing and grants nothing beyond the request's one chunk.
        server.input(ExecInput {
            credit: 0,
            ..input(8, seq, 0, d)
        });
    }
    until("the first chunk", || !sink.outputs().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.outputs().len(), 1, "nothing beyond the credit");
    // Credit for the rest, then the end of stdin.
    server.input(input(8, 4, 1, ExecAction::Eof));
    until("the exit", || sink.exit().is_some()).await;
    assert_eq!(sink.stdout().len(), 4 * MAX_EXEC_CHUNK);
    assert!(sink
        .outputs()
        .iter()
        .all(|o| o.data.len() <= MAX_EXEC_CHUNK));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_kills_the_command() {
    let server = ExecServer::new(runtime());
    let sink = Arc::new(Recorder::default());
    server.open(request(9, 8), sink.clone());
    server.input(input(9, 0, 0, ExecAction::Cancel));
    until("the exit", || sink.exit().is_some()).await;
    assert_eq!(sink.exit().unwrap().code, Some(137));
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_say_why() {
    let server = ExecServer::new(runtime());
    let sink = Arc::new(Recorder::default());
    let mut unknown = request(10, 8);
    unknown.container = BString::new("nope").unwrap();
    server.open(unknown, sink.clone());
    until("the exit", || sink.exit().is_some()).await;
    let e = sink.exit().unwrap();
    assert_eq!(e.code, None);
    assert!(e.error.unwrap().contains("not found"), "names the cause");
    // At most MAX_SESSIONS at once.
    let sink = Arc::new(Recorder::default());
    for s in 0..MAX_SESSIONS as u64 {
        server.open(request(100 + s, 8), Arc::new(Recorder::default()));
    }
    server.open(request(200, 8), sink.clone());
    until("the refusal", || sink.exit().is_some()).await;
    assert!(sink.exit().unwrap().error.unwrap().contains("too many"));
}
