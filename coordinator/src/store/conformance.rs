//! The contract every [`Store`] backend keeps, as one check the tests of each backend run
//! (redb and `MemStore` in this module's tests, etcd against a real etcd in
//! `tests/tests/etcd_store.rs`): batches apply in order, lists are sorted by key and hold
//! only their table, the JSON helpers round-trip and report a wrong type as `Decode`.
//! It panics on the first broken promise, as a test does.

use super::{get_json, list_json, put_json, Op, Store, StoreError, Table};

/// Runs the contract on `s`, which must be empty.
pub fn exercise(s: &dyn Store) {
    assert_eq!(s.get(Table::Pods, "a").expect("get"), None);
    s.commit(vec![
        Op::Put(Table::Pods, "b".into(), b"2".to_vec()),
        Op::Put(Table::Pods, "a".into(), b"1".to_vec()),
        Op::Put(Table::Nodes, "a".into(), b"node".to_vec()),
        Op::Put(Table::Pods, "c".into(), b"3".to_vec()),
        Op::Delete(Table::Pods, "c".into()),
        Op::Delete(Table::Events, "missing".into()),
    ])
    .expect("commit");
    assert_eq!(s.get(Table::Pods, "a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(
        s.list(Table::Pods).expect("list"),
        vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
    );
    assert_eq!(s.list(Table::Nodes).expect("list").len(), 1);
    assert_eq!(s.list(Table::Deployments).expect("list"), vec![]);
    let op = put_json(Table::Deployments, "web", &vec![1, 2, 3]).expect("encode");
    s.commit(vec![op]).expect("commit");
    let v: Option<Vec<u32>> = get_json(s, Table::Deployments, "web").expect("get_json");
    assert_eq!(v, Some(vec![1, 2, 3]));
    let all: Vec<Vec<u32>> = list_json(s, Table::Deployments).expect("list_json");
    assert_eq!(all, vec![vec![1, 2, 3]]);
    let bad = get_json::<Vec<u32>>(s, Table::Pods, "a");
    assert!(matches!(bad, Err(StoreError::Decode { .. })), "{bad:?}");
}
