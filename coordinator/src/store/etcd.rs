//! The etcd backend of [`Store`]: for coordinators that share their state, as k3s does
//! with an external datastore (issue 17).
//!
//! Layout: each entry is the etcd key `<prefix>/<table>/<key>` holding the same bytes
//! redb would hold, so the core cannot tell the backends apart. A batch is one etcd
//! transaction, which etcd applies atomically and makes durable on a quorum before it
//! answers, as [`Store::commit`] promises.
//!
//! The trait is synchronous (the core writes through from its own task, as redb's fsync
//! does), while the maintained client (`etcd-client`, gRPC) is async. So the client lives
//! on one thread of its own with a current-thread runtime, and each call is a request on
//! a channel with a deadline: a call never blocks on a runtime it runs inside, and an
//! etcd that stopped answering becomes an error naming it, not a hung coordinator.
//!
//! Two limits of etcd shape a batch:
//! - A transaction may not name a key twice, while a batch may (a put then a delete of the
//!   same pod). Only the last operation on each key is kept, which is what applying them
//!   in order would leave.
//! - etcd refuses a transaction of more than `--max-txn-ops` operations (128 by default)
//!   or `--max-request-bytes` (1.5 MiB). Splitting a batch would break its atomicity, so
//!   a batch over [`EtcdOptions::max_txn_ops`] is refused with an error that names the
//!   etcd flag to raise (docs/operations.md gives the values Baton's tests use).

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{Op, Store, StoreError, Table, SCHEMA_VERSION, SCHEMA_VERSION_KEY};

/// How long one call may wait for etcd before it fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many entries one range read fetches: bounded so that a big table never needs a
/// single gRPC message over the client's 4 MiB default.
const PAGE: i64 = 500;

/// Where and how to reach etcd (`baton server --store etcd://...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://host:port` of one or more members of one cluster.
    pub endpoints: Vec<String>,
    /// The key prefix under which this fleet's state lives (several fleets may share one
    /// etcd).
    pub prefix: String,
    /// The `--max-txn-ops` the etcd cluster runs with.
    pub max_txn_ops: usize,
}

/// The `--max-txn-ops` Baton asks etcd to run with (docs/operations.md): a batch holds
/// one entry per pod it creates, so a 1,000-replica Deployment needs over 1,000.
pub const DEFAULT_MAX_TXN_OPS: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoints}: {message}")]
    Call { endpoints: String, message: String },
    #[error("etcd at {endpoints} did not answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    #[error(
        "a store batch of {ops} operations is over etcd's --max-txn-ops {max}; start etcd with \
         a larger --max-txn-ops and pass the same value to --etcd-max-txn-ops"
    )]
    TooManyOps { ops: usize, max: usize },
    #[error(
        "etcd refused a store batch of {ops} operations as too many: start etcd with \
         --max-txn-ops of at least --etcd-max-txn-ops ({max})"
    )]
    EtcdMaxTxnOps { ops: usize, max: usize },
    #[error(
        "this coordinator no longer leads (its election key {key} is gone): nothing was saved"
    )]
    NotLeader { key: String },
    #[error(
        "etcd members {first} (cluster {first_id:x}) and {other} (cluster {other_id:x}) \
         belong to different clusters: list the members of one cluster in --store"
    )]
    MixedClusters {
        first: String,
        first_id: u64,
        other: String,
        other_id: u64,
    },
    #[error("etcd key {key:?} is not UTF-8")]
    KeyNotUtf8 { key: String },
    #[error("cannot start the etcd client thread: {0}")]
    Thread(std::io::Error),
}

/// A table's entries, as `list` returns them.
type Entries = Vec<(String, Vec<u8>)>;

/// One request to the client thread, with where its answer goes.
enum Call {
    Get(String, mpsc::SyncSender<Result<Option<Vec<u8>>, EtcdError>>),
    List(String, mpsc::SyncSender<Result<Entries, EtcdError>>),
    Txn(Txn, mpsc::SyncSender<Result<bool, EtcdError>>),
}

/// The etcd store. Cloning shares the client thread and the fence.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    opts: EtcdOptions,
    calls: mpsc::Sender<Call>,
    fence: Arc<Mutex<Option<Fence>>>,
}

/// The leader's election key and its creation revision (`crate::server::leader`): a
/// commit applies only while that key still exists as created, so a coordinator that
/// lost its leadership without noticing yet (paused, cut off) writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
}

impl EtcdStore {
    /// Connects to etcd and checks (or writes, on an empty prefix) the schema version.
    pub fn open(opts: EtcdOptions) -> Result<Self, StoreError> {
        let (calls, rx) = mpsc::channel::<Call>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), EtcdError>>(1);
        let endpoints = opts.endpoints.clone();
        let shown = opts.endpoints.join(",");
        std::thread::Builder::new()
            .name("etcd-client".into())
            .spawn(move || client_thread(endpoints, rx, ready_tx))
            .map_err(EtcdError::Thread)?;
        match ready_rx.recv_timeout(CALL_TIMEOUT) {
            Ok(r) => r?,
            Err(_) => {
                return Err(EtcdError::Timeout {
                    endpoints: shown,
                    timeout: CALL_TIMEOUT,
                }
                .into())
            }
        }
        let store = EtcdStore {
            opts,
            calls,
            fence: Arc::new(Mutex::new(None)),
        };
        store.check_schema()?;
        Ok(store)
    }

    fn key(&self, table: Table, key: &str) -> String {
        entry_key(&self.opts.prefix, table, key)
    }

    /// From now on, every commit applies only while `fence` holds.
    pub fn set_fence(&self, fence: Fence) {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = Some(fence);
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    fn table_prefix(&self, table: Table) -> String {
        format!("{}/{}/", self.opts.prefix, table.name())
    }

    fn endpoints(&self) -> String {
        self.opts.endpoints.join(",")
    }

    /// Sends `call` built around a reply channel and waits for the answer within
    /// [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<Result<T, EtcdError>>) -> Call,
    ) -> Result<T, EtcdError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let timeout = EtcdError::Timeout {
            endpoints: self.endpoints(),
            timeout: CALL_TIMEOUT,
        };
        if self.calls.send(make(tx)).is_err() {
            return Err(timeout);
        }
        rx.recv_timeout(CALL_TIMEOUT).unwrap_or(Err(timeout))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let key = self.key(Table::Meta, SCHEMA_VERSION_KEY);
        let ours = SCHEMA_VERSION.to_string();
        // Written only if no coordinator wrote it first (version 0 = no such key).
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), ours.clone(), None)]);
        self.call(|tx| Call::Txn(txn, tx))?;
        let found = self
            .call(|tx| Call::Get(key.clone(), tx))?
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&found).into_owned();
        let path = format!("etcd {} {}", self.endpoints(), key).into();
        let version: u32 = text.parse().map_err(|_| StoreError::InvalidSchema {
            path: std::path::PathBuf::from(&path),
            found: text.clone(),
        })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(())
    }
}

fn entry_key(prefix: &str, table: Table, key: &str) -> String {
    format!("{prefix}/{}/{key}", table.name())
}

/// The last operation on each key of `ops` (`None`: a delete): what applying `ops` in
/// order leaves. Sorted by key, so a batch always maps to the same transaction.
fn collapse(prefix: &str, ops: Vec<Op>) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut last = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(t, k, v) => last.insert(entry_key(prefix, t, &k), Some(v)),
            Op::Delete(t, k) => last.insert(entry_key(prefix, t, &k), None),
        };
    }
    last
}

impl Store for EtcdStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(table, key);
        Ok(self.call(|tx| Call::Get(key, tx))?)
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.table_prefix(table);
        let entries = self.call(|tx| Call::List(prefix.clone(), tx))?;
        Ok(entries
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect())
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = collapse(&self.opts.prefix, ops)
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        if ops.len() > self.opts.max_txn_ops {
            return Err(EtcdError::TooManyOps {
                ops: ops.len(),
                max: self.opts.max_txn_ops,
            }
            .into());
        }
        let n = ops.len();
        let fence = self.fence.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let txn = match &fence {
            Some(f) => Txn::new().when([Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.revision,
            )]),
            None => Txn::new(),
        }
        .and_then(ops);
        match self.call(|tx| Call::Txn(txn, tx)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(EtcdError::NotLeader {
                key: fence
                    .map(|f| String::from_utf8_lossy(&f.key).into_owned())
                    .unwrap_or_default(),
            }
            .into()),
            // etcd's own words for a transaction over its --max-txn-ops.
            Err(EtcdError::Call { message, .. }) if message.contains("too many operations") => {
                Err(EtcdError::EtcdMaxTxnOps {
                    ops: n,
                    max: self.opts.max_txn_ops,
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The client thread: connects, reports it, then serves calls until every
/// [`EtcdStore`] clone is dropped.
fn client_thread(
    endpoints: Vec<String>,
    calls: mpsc::Receiver<Call>,
    ready: mpsc::SyncSender<Result<(), EtcdError>>,
) {
    let shown = endpoints.join(",");
    let fail = |e: etcd_client::Error| EtcdError::Call {
        endpoints: shown.clone(),
        message: e.to_string(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(EtcdError::Thread(e)));
            return;
        }
    };
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT);
    let client = match rt.block_on(etcd_client::Client::connect(&endpoints, Some(opts))) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(fail(e)));
            return;
        }
    };
    // A connect is lazy: one read proves etcd answers before the store is used.
    let kv = client.kv_client();
    if let Err(e) = rt.block_on(retrying(|| {
        let mut kv = kv.clone();
        async move { kv.get("\0", None).await }
    })) {
        let _ = ready.send(Err(fail(e)));
        return;
    }
    if let Err(e) = rt.block_on(one_cluster(&endpoints)) {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    while let Ok(call) = calls.recv() {
        match call {
            Call::Get(key, reply) => {
                let r = rt
                    .block_on(retrying(|| {
                        let (mut kv, key) = (kv.clone(), key.clone());
                        async move { kv.get(key, None).await }
                    }))
                    .map(|resp| resp.kvs().first().map(|kv| kv.value().to_vec()))
                    .map_err(&fail);
                let _ = reply.send(r);
            }
            Call::List(prefix, reply) => {
                let r = rt.block_on(list_prefix(&kv, prefix)).map_err(|e| match e {
                    ListError::Etcd(e) => fail(e),
                    ListError::Key(key) => EtcdError::KeyNotUtf8 { key },
                });
                let _ = reply.send(r);
            }
            Call::Txn(txn, reply) => {
                let r = rt
                    .block_on(retrying(|| {
                        let (mut kv, txn) = (kv.clone(), txn.clone());
                        async move { kv.txn(txn).await }
                    }))
                    .map(|resp| resp.succeeded())
                    .map_err(&fail);
                let _ = reply.send(r);
            }
        }
    }
}

/// How long a call keeps trying other members: enough for the client to pick a live one
/// past a dead one, and well under a leader's lease, so that a client of a leader cut
/// off from etcd hears "etcd" before the leader steps down (`server::leader`).
const RETRY_FOR: Duration = Duration::from_secs(4);

/// Runs `op` again while it could not reach a member, for up to [`RETRY_FOR`], and at
/// least once more: an etcd whose own leader just died answers "request timed out"
/// only after several seconds, and the next attempt reaches the new leader. The client
/// spreads calls over every endpoint it was given, a dead one too, so one member down
/// (or a decommissioned one still listed) must cost a retry, not an error. Repeating a
/// transaction is safe: it either never reached etcd, or it applied and applying the
/// same puts and deletes again leaves the same state.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let (mut retried, mut late_fast) = (false, 0);
    loop {
        let attempt = tokio::time::Instant::now();
        match op().await {
            Err(e) if unreachable(&e) => {
                // Past the deadline only quick refusals (a dead endpoint the balancer
                // picked again) get a few more tries: they cost milliseconds.
                let fast = attempt.elapsed() < Duration::from_millis(500);
                let late = tokio::time::Instant::now() >= deadline;
                if late && retried && !(fast && late_fast < 10) {
                    return Err(e);
                }
                late_fast += usize::from(late && fast);
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Whether `e` says no member was reached (not that a reached one refused).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        // A connection that broke under a call (the member was killed) is `Unknown` with
        // the transport's error as its source.
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable
                || std::error::Error::source(s)
                    .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Checks that the reachable endpoints belong to one cluster. The client spreads calls
/// over every endpoint it is given, so a list naming members of two clusters (a copy and
/// paste from another site, a test cluster) would split the state between them without
/// an error. An endpoint that does not answer is left to the client's balancing.
async fn one_cluster(endpoints: &[String]) -> Result<(), EtcdError> {
    let mut seen: Option<(String, u64)> = None;
    for e in endpoints {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2));
        let Ok(mut c) = etcd_client::Client::connect([e], Some(opts)).await else {
            continue;
        };
        let Ok(status) = c.status().await else {
            tracing::warn!(endpoint = %e, "etcd member does not answer");
            continue;
        };
        let Some(id) = status.header().map(|h| h.cluster_id()) else {
            continue;
        };
        match &seen {
            Some((first, first_id)) if *first_id != id => {
                return Err(EtcdError::MixedClusters {
                    first: first.clone(),
                    first_id: *first_id,
                    other: e.clone(),
                    other_id: id,
                });
            }
            Some(_) => {}
            None => seen = Some((e.clone(), id)),
        }
    }
    Ok(())
}

enum ListError {
    Etcd(etcd_client::Error),
    Key(String),
}

/// Every entry under `prefix`, sorted by key, read in pages of [`PAGE`] at one revision
/// (the first page's), so a list is a consistent snapshot even while others write.
async fn list_prefix(kv: &etcd_client::KvClient, prefix: String) -> Result<Entries, ListError> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.clone().into_bytes();
    let mut revision = 0;
    let mut out = Vec::new();
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend);
        if revision != 0 {
            opts = opts.with_revision(revision);
        }
        let resp = retrying(|| {
            let (mut kv, from, opts) = (kv.clone(), from.clone(), opts.clone());
            async move { kv.get(from, Some(opts)).await }
        })
        .await
        .map_err(ListError::Etcd)?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            let key = String::from_utf8(kv.key().to_vec())
                .map_err(|e| ListError::Key(String::from_utf8_lossy(e.as_bytes()).into()))?;
            out.push((key, kv.value().to_vec()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The smallest key after every key starting with `prefix` (etcd's range end for a
/// prefix): the prefix with its last byte below 0xff incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/baton/pods/"), b"/baton/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn a_batch_keeps_the_last_operation_on_each_key() {
        let ops = vec![
            Op::Put(Table::Pods, "a".into(), b"1".to_vec()),
            Op::Put(Table::Pods, "b".into(), b"1".to_vec()),
            Op::Delete(Table::Pods, "a".into()),
            Op::Put(Table::Nodes, "a".into(), b"n".to_vec()),
            Op::Put(Table::Pods, "b".into(), b"2".to_vec()),
        ];
        let got: Vec<_> = collapse("/p", ops).into_iter().collect();
        assert_eq!(
            got,
            vec![
                ("/p/nodes/a".to_string(), Some(b"n".to_vec())),
                ("/p/pods/a".to_string(), None),
                ("/p/pods/b".to_string(), Some(b"2".to_vec())),
            ]
        );
    }
}
