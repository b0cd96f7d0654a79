//! The coordinator's etcd store against a real etcd: the same contract as the embedded
//! redb store (atomic batches applied in order, sorted lists), plus what only a remote
//! store can do wrong: a batch over etcd's limits, etcd gone, another fleet's prefix.

use std::time::{Duration, Instant};

use anyhow::Result;
use baton_coordinator::store::etcd::{EtcdOptions, EtcdStore, Fence, DEFAULT_MAX_TXN_OPS};
use baton_coordinator::store::{Op, Store, StoreError, Table};
use baton_e2e::etcd::Etcd;

fn opts(etcd: &Etcd, prefix: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.url.clone()],
        prefix: prefix.into(),
        max_txn_ops: DEFAULT_MAX_TXN_OPS,
    }
}

fn put(t: Table, k: &str, v: &str) -> Op {
    Op::Put(t, k.into(), v.as_bytes().to_vec())
}

#[test]
fn etcd_store_keeps_the_store_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut etcd = Etcd::on_loopback(dir.path())?;
    // The contract redb and MemStore are held to, on a fresh prefix.
    baton_coordinator::store::conformance::exercise(&EtcdStore::open(opts(&etcd, "/conf"))?);

    let store = EtcdStore::open(opts(&etcd, "/fleet-a"))?;

    // A batch applies in order: the put then delete of "a" leaves no "a".
    store.commit(vec![
        put(Table::Pods, "a", "1"),
        put(Table::Pods, "c", "3"),
        put(Table::Pods, "b", "2"),
        Op::Delete(Table::Pods, "a".into()),
        put(Table::Nodes, "a", "node"),
    ])?;
    assert_eq!(store.get(Table::Pods, "a")?, None);
    assert_eq!(store.get(Table::Pods, "b")?, Some(b"2".to_vec()));
    let pods = store.list(Table::Pods)?;
    assert_eq!(
        pods,
        vec![("b".into(), b"2".to_vec()), ("c".into(), b"3".to_vec())]
    );
    // A table's keys never leak into another's list, even when one name prefixes another.
    assert_eq!(
        store.list(Table::Nodes)?,
        vec![("a".into(), b"node".to_vec())]
    );
    assert!(store.list(Table::Jobs)?.is_empty());

    // Lists are read in pages: 1,200 entries (three pages) come back whole and sorted.
    let many: Vec<Op> = (0..1200)
        .map(|i| put(Table::Events, &format!("e{i:05}"), &"x".repeat(100)))
        .collect();
    store.commit(many)?;
    let events = store.list(Table::Events)?;
    assert_eq!(events.len(), 1200);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0));

    // Another fleet's prefix sees none of it.
    let other = EtcdStore::open(opts(&etcd, "/fleet-b"))?;
    assert!(other.list(Table::Pods)?.is_empty());

    // A batch over the --etcd-max-txn-ops this coordinator was told is refused whole,
    // naming the flags; nothing of it is written.
    let small = EtcdStore::open(EtcdOptions {
        max_txn_ops: 10,
        ..opts(&etcd, "/fleet-a")
    })?;
    let big: Vec<Op> = (0..11)
        .map(|i| put(Table::Jobs, &format!("j{i}"), "j"))
        .collect();
    let err = small.commit(big.clone()).unwrap_err().to_string();
    assert!(err.contains("--max-txn-ops"), "{err}");
    assert!(store.list(Table::Jobs)?.is_empty());

    // An etcd run with a smaller --max-txn-ops than this coordinator was told: etcd's
    // refusal is reported with the same advice, and nothing is written.
    drop(etcd);
    let dir2 = tempfile::tempdir()?;
    etcd = Etcd::on_loopback_with(dir2.path(), &["--max-txn-ops", "5"])?;
    let store = EtcdStore::open(opts(&etcd, "/fleet-a"))?;
    let err = store.commit(big).unwrap_err().to_string();
    assert!(err.contains("--max-txn-ops"), "{err}");
    assert!(store.list(Table::Jobs)?.is_empty());

    // etcd gone: a call fails within the client's deadline with an error naming etcd,
    // it does not hang; once etcd is back the same store works again.
    store.commit(vec![put(Table::Meta, "k", "before")])?;
    etcd.kill();
    let t = Instant::now();
    let err = store
        .commit(vec![put(Table::Meta, "k", "lost")])
        .unwrap_err();
    assert!(matches!(err, StoreError::Etcd(_)), "{err}");
    assert!(err.to_string().contains("etcd"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    etcd.restart()?;
    assert_eq!(store.get(Table::Meta, "k")?, Some(b"before".to_vec()));
    store.commit(vec![put(Table::Meta, "k", "after")])?;
    assert_eq!(store.get(Table::Meta, "k")?, Some(b"after".to_vec()));
    Ok(())
}

#[test]
fn a_fenced_store_writes_only_while_its_leader_key_lives() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::on_loopback(dir.path())?;
    let store = EtcdStore::open(opts(&etcd, "/fleet"))?;
    let rt = tokio::runtime::Runtime::new()?;
    // Leading fences the store with the election key: commits go through.
    let leadership = rt.block_on(baton_coordinator::server::leader::lead(
        &store,
        "http://a",
        Duration::from_secs(2),
    ))?;
    store.commit(vec![put(Table::Pods, "p", "leader")])?;
    assert_eq!(store.get(Table::Pods, "p")?, Some(b"leader".to_vec()));

    // A fence whose key is gone (a successor's lease, or ours expired): refused whole.
    store.set_fence(Fence {
        key: b"/fleet/leader/gone".to_vec(),
        revision: 1,
    });
    let err = store
        .commit(vec![
            put(Table::Pods, "p", "stale"),
            put(Table::Pods, "q", "stale"),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("no longer leads"), "{err}");
    assert_eq!(store.get(Table::Pods, "p")?, Some(b"leader".to_vec()));
    assert_eq!(store.get(Table::Pods, "q")?, None);
    drop(leadership);
    Ok(())
}

#[test]
fn etcd_store_refuses_a_newer_schema_and_an_absent_etcd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::on_loopback(dir.path())?;
    let store = EtcdStore::open(opts(&etcd, "/fleet"))?;
    store.commit(vec![put(Table::Meta, "schema_version", "999")])?;
    let err = EtcdStore::open(opts(&etcd, "/fleet"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer Baton"), "{err}");

    // Nothing listens there: a clear error naming the endpoint, within the deadline.
    let t = Instant::now();
    let err = EtcdStore::open(EtcdOptions {
        endpoints: vec!["http://127.0.0.1:9".into()],
        ..opts(&etcd, "/fleet")
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    Ok(())
}

#[test]
fn etcd_store_on_a_three_member_cluster_survives_a_member_and_refuses_two_clusters() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut members = Etcd::cluster_on_loopback(3, &dir.path().join("a"), "site-a")?;
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    // One dead entry in the list (a decommissioned member) is no obstacle.
    let mut endpoints = urls.clone();
    endpoints.push("http://127.0.0.1:9".into());
    let store = EtcdStore::open(EtcdOptions {
        endpoints: endpoints.clone(),
        prefix: "/fleet".into(),
        max_txn_ops: DEFAULT_MAX_TXN_OPS,
    })?;
    for i in 0..20 {
        store.commit(vec![put(Table::Pods, &format!("p{i:02}"), "x")])?;
    }
    // One member down: the other two are a quorum, and the store carries on. If the
    // killed member led etcd, etcd itself refuses requests until the two left have
    // elected a leader ("request timed out"), which on a loaded machine takes longer
    // than a call's retries: the store reports that as an error, and works again after.
    members[0].kill();
    baton_e2e::wait_for(
        "the two members left to serve",
        Duration::from_secs(60),
        || Ok(store.commit(vec![put(Table::Pods, "p20", "x")]).ok()),
    )?;
    for i in 21..40 {
        store.commit(vec![put(Table::Pods, &format!("p{i:02}"), "x")])?;
    }
    assert_eq!(store.list(Table::Pods)?.len(), 40);

    // A member of another cluster (formed with another token) in the list is refused at
    // open with both names, before anything is read or written.
    let other = Etcd::cluster_on_loopback(1, &dir.path().join("b"), "site-b")?;
    let err = EtcdStore::open(EtcdOptions {
        endpoints: vec![urls[1].clone(), other[0].url.clone()],
        prefix: "/fleet".into(),
        max_txn_ops: DEFAULT_MAX_TXN_OPS,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("different clusters"), "{err}");
    assert!(err.contains(&other[0].url), "{err}");
    Ok(())
}
