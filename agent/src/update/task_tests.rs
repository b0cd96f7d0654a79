//! The update task end to end in one process: an order against a ranged HTTP server, up to
//! the switch and the exit; a badly signed order refused before any download; a new agent
//! on probation that commits.

use std::sync::Mutex;

use baton_proto::sign::SigningKey;
use baton_proto::{BVec, Release};
use sha2::{Digest, Sha256};

use super::*;
use crate::update::download::tests::server;

fn order(body: &[u8], key: &SigningKey) -> AgentUpdate {
    let mut release = Release {
        version: BString::new("99.0.0").unwrap(),
        target: BString::new(crate::build_info::TARGET).unwrap(),
        protocol: baton_proto::PROTO_VERSION,
        size: body.len() as u64,
        sha256: Sha256::digest(body).into(),
        signature: BVec::new(),
    };
    baton_proto::release::sign(&mut release, key).unwrap();
    AgentUpdate {
        rollout: BString::new("r1").unwrap(),
        release,
        allow_downgrade: false,
        health_window_secs: 0,
        term: 0,
    }
}

type Sent = Arc<Mutex<Vec<UpdateReport>>>;

fn start(data: &std::path::Path, api: String, key: &SigningKey) -> (Handle, Sent) {
    let sent: Sent = Arc::default();
    let log = sent.clone();
    let send: super::Send = Arc::new(move |b| {
        if let Body::UpdateReport(r) = b {
            log.lock().unwrap().push(r);
        }
        true
    });
    let cfg = UpdateConfig {
        data_dir: data.to_owned(),
        source: Some(Source {
            api,
            token_file: None,
            identity: None,
            ca: None,
        }),
        release_key: Some(key.verifying_key()),
        launched: true,
    };
    (spawn(cfg, send), sent)
}

fn phases(sent: &Sent) -> Vec<UpdatePhase> {
    let mut p: Vec<_> = sent.lock().unwrap().iter().map(|r| r.phase).collect();
    p.dedup();
    p
}

#[tokio::test]
async fn an_order_is_downloaded_verified_staged_and_switched_then_the_agent_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let body = b"#!/bin/sh\nexit 0\n".repeat(1000);
    let (url, _) = server(body.clone(), false).await;
    let (mut h, sent) = start(tmp.path(), url, &key);
    h.events
        .send(UpdateEvent::Order(Some(order(&body, &key))))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), h.exit.wait_for(|e| *e))
        .await
        .expect("no exit within 30 s")
        .unwrap();
    let p = phases(&sent);
    assert_eq!(
        p[p.len() - 2..],
        [UpdatePhase::Staged, UpdatePhase::Switching],
        "{p:?}"
    );
    let layout = Layout::new(tmp.path());
    let s = UpdateState::load(&layout.state_file()).unwrap().unwrap();
    assert_eq!(s.phase, Phase::Probation);
    assert_eq!(s.to.version, "99.0.0");
    assert_eq!(s.from.version, crate::build_info::VERSION);
    assert_eq!(s.from.path, std::env::current_exe().unwrap());
    assert_eq!(std::fs::read(&s.to.path).unwrap(), body);
    assert_eq!(std::fs::read_link(layout.current()).unwrap(), s.to.path);
    assert_eq!(std::fs::read_link(layout.previous()).unwrap(), s.from.path);
    assert!(s
        .pending
        .unwrap()
        .starts_with("no broker connection within"));
}

#[tokio::test]
async fn a_release_signed_by_another_key_is_refused_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let body = b"agent".to_vec();
    let (url, seen) = server(body.clone(), false).await;
    let (h, sent) = start(tmp.path(), url, &key);
    let forged = order(&body, &SigningKey::from_bytes(&[4; 32]));
    h.events
        .send(UpdateEvent::Order(Some(forged.clone())))
        .await
        .unwrap();
    // Again, as at a reconnect: answered the same, still without a download.
    h.events
        .send(UpdateEvent::Order(Some(forged)))
        .await
        .unwrap();
    for _ in 0..100 {
        if sent.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for r in &sent {
        assert_eq!(r.phase, UpdatePhase::Refused);
        assert_eq!(
            r.reason.as_ref().unwrap().as_str(),
            "the release signature is not valid for the pinned release key"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing was downloaded");
    assert!(!Layout::new(tmp.path()).state_file().exists());
    assert!(!*h.exit.borrow());
}

#[tokio::test]
async fn a_new_agent_on_probation_commits_once_healthy_for_its_window() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path());
    let bin = |v: &str| Binary {
        version: v.into(),
        path: tmp.path().join(v),
        sha256: "00".into(),
    };
    let mut s = UpdateState::switching("r1", bin("0.1.0"), bin(crate::build_info::VERSION), 1);
    s.phase = Phase::Probation;
    s.store(&layout.state_file()).unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let (h, sent) = start(tmp.path(), "http://127.0.0.1:9".into(), &key);
    let health = |connected, desired, ready| {
        UpdateEvent::Health(Health {
            connected,
            desired,
            ready,
            total: 2,
        })
    };
    h.events.send(health(true, false, 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = UpdateState::load(&layout.state_file()).unwrap().unwrap();
    assert_eq!(s.phase, Phase::Probation);
    assert!(s.pending.unwrap().starts_with("no desired state within"));
    h.events.send(health(true, true, 2)).await.unwrap();
    let mut committed = false;
    for _ in 0..50 {
        let s = UpdateState::load(&layout.state_file()).unwrap().unwrap();
        if s.phase == Phase::Committed && s.reported {
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(committed, "not committed within 5 s");
    assert_eq!(
        phases(&sent),
        [UpdatePhase::Probation, UpdatePhase::Committed]
    );
}

/// Serves half of `body` at any path, then holds the connection open without a byte more.
async fn stalling_server(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut c, _)) = l.accept().await {
            let mut buf = vec![0; 8192];
            let _ = c.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = c.write_all(head.as_bytes()).await;
            let _ = c.write_all(&body[..body.len() / 2]).await;
            held.push(c);
        }
    });
    url
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn another_or_a_withdrawn_order_stops_a_download_and_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let body: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    // The server stalls half way through any download.
    let (h, sent) = start(tmp.path(), stalling_server(body.clone()).await, &key);
    let layout = Layout::new(tmp.path());
    let started = |o: &AgentUpdate| {
        let part = layout.part_file(&hex::encode(o.release.sha256));
        move || {
            std::fs::metadata(&part)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        }
    };
    let a = order(&body, &key);
    let part_a = layout.part_file(&hex::encode(a.release.sha256));
    h.events
        .send(UpdateEvent::Order(Some(a.clone())))
        .await
        .unwrap();
    wait_for("the download never started", started(&a)).await;

    // A new rollout's release replaces it.
    let b = order(&body.iter().map(|x| x ^ 1).collect::<Vec<_>>(), &key);
    let part_b = layout.part_file(&hex::encode(b.release.sha256));
    h.events
        .send(UpdateEvent::Order(Some(b.clone())))
        .await
        .unwrap();
    wait_for("the replaced download went on", || !part_a.exists()).await;
    wait_for("the new order was not taken", started(&b)).await;

    // The rollout is aborted: the order withdrawn.
    h.events.send(UpdateEvent::Order(None)).await.unwrap();
    wait_for("the withdrawn download went on", || !part_b.exists()).await;
    assert!(!*h.exit.borrow(), "a stopped order switched the agent");
    let p = phases(&sent);
    assert!(!p.contains(&UpdatePhase::Staged), "{p:?}");
    assert!(!layout.state_file().exists());
}
