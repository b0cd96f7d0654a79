//! The kv store for real on loopback: the protocol over a socket, a primary and replicas in
//! one process, losing and regaining the primary, and the append-only file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use baton_todo::kv::client::{Client, ClientError};
use baton_todo::kv::server::Role;
use common::{kv_on, primary, replica_of, wait_for};

fn client(addr: &str) -> Client {
    Client::connect(addr, Duration::from_secs(5)).expect("connect kv")
}

/// The replica's value for `key` once it equals `want` (None: once it is gone).
fn wait_replicated(replica: &str, key: &str, want: Option<&str>) {
    wait_for(&format!("{key} = {want:?} on the replica"), || {
        let got = Client::connect(replica, Duration::from_secs(5))
            .ok()?
            .get(key)
            .ok()?;
        (got.as_deref() == want).then_some(())
    });
}

#[test]
fn replica_takes_a_snapshot_then_follows_the_write_stream() {
    let p = primary();
    let mut pc = client(&p.addr());
    pc.set("before", "was here before the replica").unwrap();
    pc.set("gone", "x").unwrap();

    let r = replica_of(&p.addr());
    wait_replicated(&r.addr(), "before", Some("was here before the replica"));

    pc.set("after", "{\"id\":1,\"title\":\"a b\"}").unwrap();
    assert_eq!(pc.incr("n").unwrap(), 1);
    assert_eq!(pc.incr("n").unwrap(), 2);
    assert!(pc.del("gone").unwrap());
    wait_replicated(&r.addr(), "after", Some("{\"id\":1,\"title\":\"a b\"}"));
    wait_replicated(&r.addr(), "n", Some("2"));
    wait_replicated(&r.addr(), "gone", None);

    let mut rc = client(&r.addr());
    assert_eq!(rc.scan("").unwrap(), pc.scan("").unwrap());
    let info = rc.info().unwrap();
    assert!(
        info.starts_with("role=replica") && info.contains("link=up"),
        "{info}"
    );
    assert!(
        pc.info().unwrap().contains("replicas=1"),
        "{}",
        pc.info().unwrap()
    );

    // Writes to a replica are refused, clearly, and change nothing.
    match rc.set("after", "overwritten") {
        Err(ClientError::Server(m)) => {
            assert!(m.contains("readonly") && m.contains(&p.addr()), "{m}")
        }
        other => panic!("a replica accepted a write: {other:?}"),
    }
    assert!(matches!(rc.incr("n"), Err(ClientError::Server(_))));
    assert!(matches!(rc.del("n"), Err(ClientError::Server(_))));
    assert_eq!(rc.get("n").unwrap().as_deref(), Some("2"));
}

#[test]
fn replica_survives_losing_its_primary_and_resyncs_from_the_new_one() {
    let p = primary();
    let paddr = p.addr();
    client(&paddr).set("k", "old").unwrap();
    client(&paddr)
        .set("stale", "only on the first primary")
        .unwrap();
    let r = replica_of(&paddr);
    wait_replicated(&r.addr(), "k", Some("old"));

    drop(p); // closes the replication link like a crash
    wait_for("the replica to see its link down", || {
        client(&r.addr())
            .info()
            .ok()
            .filter(|i| i.contains("link=down"))
    });
    // Still serves what it has.
    assert_eq!(client(&r.addr()).get("k").unwrap().as_deref(), Some("old"));

    // A new, empty primary on the same address: the replica reconnects (with backoff) and
    // replaces its data set with the new snapshot, dropping what the new primary lacks.
    let p2 = kv_on(&paddr, Role::Primary, None);
    client(&p2.addr()).set("k", "new").unwrap();
    wait_replicated(&r.addr(), "k", Some("new"));
    wait_replicated(&r.addr(), "stale", None);
    client(&p2.addr()).set("k2", "streamed").unwrap();
    wait_replicated(&r.addr(), "k2", Some("streamed"));
}

#[test]
fn replicas_can_be_chained() {
    let p = primary();
    let r1 = replica_of(&p.addr());
    let r2 = replica_of(&r1.addr());
    client(&p.addr()).set("deep", "1").unwrap();
    wait_replicated(&r2.addr(), "deep", Some("1"));
}

#[test]
fn protocol_over_a_raw_socket() {
    let p = primary();
    let s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    // Pipelined, with CRLF and lower case, and a bad command in the middle that does not
    // end the connection.
    (&s).write_all(b"ping\r\nSET a hello world\nFLY\nGET a\nINCR a\nKEYS\nGET missing\n")
        .unwrap();
    let mut lines = Vec::new();
    for _ in 0..8 {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        lines.push(l.trim_end().to_owned());
    }
    assert_eq!(
        lines,
        [
            "PONG",
            "OK",
            "ERR unknown command \"FLY\"",
            "VAL hello world",
            "ERR value of a is not an integer",
            "ARR 1",
            "a",
            "NIL"
        ]
    );
    // An over-long line loses the framing: an error, then the server hangs up.
    let long = format!("SET b {}\n", "x".repeat(200 * 1024));
    let _ = (&s).write_all(long.as_bytes());
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert_eq!(l.trim_end(), "ERR line too long");
}

#[test]
fn data_survives_a_restart_and_a_torn_write() {
    let dir = std::env::temp_dir().join(format!("baton-kv-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    {
        let p = kv_on("127.0.0.1:0", Role::Primary, Some(dir.clone()));
        let mut c = client(&p.addr());
        c.set("a", "1").unwrap();
        c.set("b", "2").unwrap();
        c.del("a").unwrap();
        c.incr("n").unwrap();
    }
    // A crash mid-append leaves a line without its newline; it was never acknowledged.
    let aof = dir.join("kv.aof");
    let mut f = std::fs::OpenOptions::new().append(true).open(&aof).unwrap();
    f.write_all(b"SET c half-writ").unwrap();
    drop(f);

    let p = kv_on("127.0.0.1:0", Role::Primary, Some(dir.clone()));
    let mut c = client(&p.addr());
    assert_eq!(
        c.scan("").unwrap(),
        [
            ("b".to_owned(), "2".to_owned()),
            ("n".to_owned(), "1".to_owned())
        ]
    );
    // Compacted at start: one SET per surviving key.
    assert_eq!(std::fs::read_to_string(&aof).unwrap(), "SET b 2\nSET n 1\n");
    c.set("d", "4").unwrap();
    assert!(std::fs::read_to_string(&aof)
        .unwrap()
        .ends_with("SET d 4\n"));
}
