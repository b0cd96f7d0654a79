//! The KV server: a primary that takes writes, or a replica that follows one.
//!
//! Threads, not async: one per connection, which is plenty for a demo store and keeps the
//! binary small. All data sits behind one `Mutex<Store>`; every command holds it for a map
//! operation only (plus an fsync with `--data`), never across network IO.
//!
//! Replication. A replica sends `SYNC`. Under the store lock the primary takes a snapshot
//! and registers a bounded channel for the replica, so each write is either in the snapshot
//! or in the stream, never both or neither. It then sends the snapshot as an `ARR` of
//! `key value` lines, followed by the writes as `SET`/`DEL` lines (INCR travels as the SET
//! of its result), and `PING` after a second without writes so the replica can tell a dead
//! primary from a quiet one. A replica that falls `BACKLOG` writes behind is cut off rather
//! than buffered without bound; it reconnects and takes a fresh snapshot, as it does after
//! any disconnect (with backoff from 100 ms to 5 s). Replicas refuse writes but serve
//! `SYNC` themselves, so they can be chained.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::proto::{parse_command, read_line, read_reply, Command, Reply, MAX_LINE};
use crate::net;

/// Writes a replica may lag behind before it is cut off and must resync.
const BACKLOG: usize = 65_536;
/// The primary pings an idle replication stream this often...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and a replica that hears nothing for this long reconnects.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// More clients than this get `ERR too many connections`.
const MAX_CONNS: usize = 512;
const AOF: &str = "kv.aof";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// Follows the primary at `host:port` (host may be `host-gateway`).
    Replica {
        primary: String,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    /// Append-only file directory (primary only): every write is fsync'd before it is
    /// acknowledged, and the file is compacted to a snapshot at start.
    pub data_dir: Option<PathBuf>,
}

/// A write as it is applied, logged and replicated.
enum Op {
    Set(String, String),
    Del(String),
}

impl Op {
    fn line(&self) -> String {
        match self {
            Op::Set(k, v) => format!("SET {k} {v}"),
            Op::Del(k) => format!("DEL {k}"),
        }
    }
}

struct Store {
    map: BTreeMap<String, String>,
    replicas: Vec<SyncSender<String>>,
    aof: Option<File>,
    /// For a replica: whether it is in sync with its primary right now.
    link_up: bool,
}

impl Store {
    /// Logs (with fsync), applies and replicates one write. If logging fails nothing is
    /// applied, so an acknowledged write is always durable. Returns whether the key existed.
    fn apply(&mut self, op: Op) -> io::Result<bool> {
        let line = op.line();
        if let Some(f) = self.aof.as_mut() {
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()?;
        }
        let existed = match op {
            Op::Set(k, v) => self.map.insert(k, v).is_some(),
            Op::Del(k) => self.map.remove(&k).is_some(),
        };
        // try_send: a full channel means a replica too far behind; dropping its sender
        // ends its stream, and it resyncs from a snapshot.
        self.replicas.retain(|tx| tx.try_send(line.clone()).is_ok());
        Ok(existed)
    }
}

struct Shared {
    role: Role,
    store: Mutex<Store>,
    stop: AtomicBool,
    /// Clones of every open socket, so shutdown can close them all.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    addr: SocketAddr,
}

/// Locks ignoring poison: a panicking thread (only possible in tests; release builds
/// abort) leaves the map consistent, since every mutation is a single map call.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn register(&self, s: &TcpStream) -> io::Result<u64> {
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        lock(&self.conns).insert(id, s.try_clone()?);
        Ok(id)
    }

    fn unregister(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }
}

/// A running server. Dropping it does not stop it; call `shutdown`.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads `--data` (if any), starts accepting on `listener` and, for a replica, starts
    /// following its primary.
    pub fn start(listener: TcpListener, config: Config) -> io::Result<Server> {
        let (map, aof) =
            match (&config.role, &config.data_dir) {
                (Role::Primary, Some(dir)) => {
                    let (map, f) = open_aof(dir)?;
                    (map, Some(f))
                }
                (Role::Replica { .. }, Some(_)) => return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--data applies to a primary only: a replica takes its data from the primary",
                )),
                (_, None) => (BTreeMap::new(), None),
            };
        let shared = Arc::new(Shared {
            role: config.role.clone(),
            store: Mutex::new(Store {
                map,
                replicas: Vec::new(),
                aof,
                link_up: false,
            }),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            addr: listener.local_addr()?,
        });
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(
            thread::Builder::new()
                .name("kv-accept".into())
                .spawn(move || accept_loop(listener, s))?,
        );
        if let Role::Replica { primary } = config.role {
            let s = Arc::clone(&shared);
            threads.push(
                thread::Builder::new()
                    .name("kv-follow".into())
                    .spawn(move || follow(s, primary))?,
            );
        }
        Ok(Server { shared, threads })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Stops accepting, closes every connection (clients and replication links alike) and
    /// stops following. Like a crash to its peers, which is what tests want.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let mut wake = self.shared.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for s in lock(&self.shared.conns).values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits for the accept loop (and the follower) to end, i.e. forever unless shut down.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("kv: accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if lock(&shared.conns).len() >= MAX_CONNS {
            let _ = (&stream).write_all(
                Reply::Err("too many connections".into())
                    .to_string()
                    .as_bytes(),
            );
            continue;
        }
        let s = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("kv-conn".into())
            .spawn(move || {
                let Ok(id) = s.register(&stream) else { return };
                if let Err(e) = serve_conn(&s, stream) {
                    if !s.stopping()
                        && e.kind() != io::ErrorKind::BrokenPipe
                        && e.kind() != io::ErrorKind::ConnectionReset
                    {
                        eprintln!("kv: connection: {e}");
                    }
                }
                s.unregister(id);
            });
        if let Err(e) = spawned {
            eprintln!("kv: cannot start a connection thread: {e}");
        }
    }
}

fn serve_conn(shared: &Shared, stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = BufWriter::new(stream.try_clone()?);
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader, MAX_LINE) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Framing is lost; say why and hang up.
                write!(writer, "{}", Reply::Err(e.to_string()))?;
                return writer.flush();
            }
            Err(e) => return Err(e),
        };
        let reply = match parse_command(&line) {
            Ok(Command::Sync) => return feed_replica(shared, writer),
            Ok(cmd) => execute(shared, cmd),
            Err(e) => Reply::Err(e.0),
        };
        write!(writer, "{reply}")?;
        // Pipelined commands are answered together; flush when the client waits.
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

fn execute(shared: &Shared, cmd: Command) -> Reply {
    if let (true, Role::Replica { primary }) = (cmd.is_write(), &shared.role) {
        return Reply::Err(format!(
            "readonly: this is a replica of {primary}; send writes to the primary"
        ));
    }
    let mut st = lock(&shared.store);
    let io_err = |e: io::Error| Reply::Err(format!("write not persisted: {e}"));
    match cmd {
        Command::Ping => Reply::Pong,
        Command::Get(k) => st.map.get(&k).map_or(Reply::Nil, |v| Reply::Val(v.clone())),
        Command::Set(k, v) => st.apply(Op::Set(k, v)).map_or_else(io_err, |_| Reply::Ok),
        Command::Del(k) => st
            .apply(Op::Del(k))
            .map_or_else(io_err, |existed| Reply::Int(existed.into())),
        Command::Incr(k) => {
            let current = match st.map.get(&k) {
                None => 0,
                Some(v) => match v.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => return Reply::Err(format!("value of {k} is not an integer")),
                },
            };
            let Some(next) = current.checked_add(1) else {
                return Reply::Err(format!("incrementing {k} would overflow"));
            };
            st.apply(Op::Set(k, next.to_string()))
                .map_or_else(io_err, |_| Reply::Int(next))
        }
        Command::Keys(p) => Reply::Arr(
            st.map
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, _)| k.clone())
                .collect(),
        ),
        Command::Scan(p) => Reply::Arr(
            st.map
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, v)| format!("{k} {v}"))
                .collect(),
        ),
        Command::Info => {
            let n = st.replicas.len();
            let keys = st.map.len();
            Reply::Val(match &shared.role {
                Role::Primary => format!("role=primary keys={keys} replicas={n}"),
                Role::Replica { primary } => {
                    let link = if st.link_up { "up" } else { "down" };
                    format!("role=replica primary={primary} link={link} keys={keys} replicas={n}")
                }
            })
        }
        // Handled by serve_conn: it turns the connection into a stream.
        Command::Sync => Reply::Err("SYNC must be the only command on its connection".into()),
    }
}

/// Serves one replica: the snapshot, then the write stream with heartbeats, until the
/// replica goes away, falls too far behind, or the server stops.
fn feed_replica(shared: &Shared, mut w: BufWriter<TcpStream>) -> io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<String>(BACKLOG);
    let snapshot: Vec<String> = {
        let mut st = lock(&shared.store);
        st.replicas.push(tx);
        st.map.iter().map(|(k, v)| format!("{k} {v}")).collect()
    };
    w.get_ref().set_write_timeout(Some(LINK_TIMEOUT))?;
    write!(w, "{}", Reply::Arr(snapshot))?;
    w.flush()?;
    while !shared.stopping() {
        match rx.recv_timeout(HEARTBEAT) {
            Ok(line) => {
                writeln!(w, "{line}")?;
                // Batch whatever else is queued into one flush.
                while let Ok(more) = rx.try_recv() {
                    writeln!(w, "{more}")?;
                }
            }
            Err(RecvTimeoutError::Timeout) => writeln!(w, "PING")?,
            // Cut off (too far behind): close so the replica resyncs.
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        w.flush()?;
    }
    Ok(())
}

/// A replica's life: sync, follow, and on any failure reconnect with backoff.
fn follow(shared: Arc<Shared>, primary: String) {
    let mut backoff = BACKOFF_MIN;
    while !shared.stopping() {
        let mut synced = false;
        match follow_once(&shared, &primary, &mut synced) {
            Ok(()) => eprintln!("kv: primary {primary} closed the replication link"),
            Err(e) if !shared.stopping() => eprintln!("kv: replication from {primary}: {e}"),
            Err(_) => {}
        }
        lock(&shared.store).link_up = false;
        if synced {
            backoff = BACKOFF_MIN;
        }
        // Sleep in small steps so shutdown is prompt.
        let mut slept = Duration::ZERO;
        while slept < backoff && !shared.stopping() {
            thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn follow_once(shared: &Shared, primary: &str, synced: &mut bool) -> io::Result<()> {
    let addrs = net::resolve(primary)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(last)?;
    let id = shared.register(&stream)?;
    // Registered after connect: a shutdown in between would miss it, so check again.
    let result = if shared.stopping() {
        Ok(())
    } else {
        sync_and_stream(shared, &stream, synced)
    };
    shared.unregister(id);
    result
}

fn sync_and_stream(shared: &Shared, stream: &TcpStream, synced: &mut bool) -> io::Result<()> {
    stream.set_read_timeout(Some(LINK_TIMEOUT))?;
    stream.set_write_timeout(Some(LINK_TIMEOUT))?;
    (&*stream).write_all(b"SYNC\n")?;
    let mut r = BufReader::new(stream.try_clone()?);
    let snapshot = match read_reply(&mut r)? {
        Reply::Arr(lines) => lines,
        Reply::Err(m) => return Err(io::Error::other(format!("primary refused SYNC: {m}"))),
        other => {
            return Err(io::Error::other(format!(
                "unexpected SYNC reply {:?}",
                other.to_string().trim_end()
            )))
        }
    };
    let mut map = BTreeMap::new();
    for l in snapshot {
        let (k, v) = l
            .split_once(' ')
            .ok_or_else(|| io::Error::other(format!("bad snapshot line {l:?}")))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    {
        let mut st = lock(&shared.store);
        eprintln!("kv: synced {} keys from the primary", map.len());
        st.map = map;
        // Our own replicas saw the old data set: make them resync from the new one.
        st.replicas.clear();
        st.link_up = true;
    }
    *synced = true;
    while !shared.stopping() {
        let Some(line) = read_line(&mut r, MAX_LINE)? else {
            return Ok(());
        };
        let op = match parse_command(&line) {
            Ok(Command::Ping) => continue,
            Ok(Command::Set(k, v)) => Op::Set(k, v),
            Ok(Command::Del(k)) => Op::Del(k),
            _ => {
                return Err(io::Error::other(format!(
                    "unexpected line in the replication stream: {line:?}"
                )))
            }
        };
        lock(&shared.store).apply(op)?;
    }
    Ok(())
}

/// Replays and compacts the append-only file: the surviving data is rewritten as one SET
/// per key (to a temporary file, fsync'd, then renamed), and the file is reopened to
/// append. A torn last line (a crash mid-write) is dropped: it was never acknowledged.
fn open_aof(dir: &Path) -> io::Result<(BTreeMap<String, String>, File)> {
    fs::create_dir_all(dir)?;
    let path = dir.join(AOF);
    let mut map = BTreeMap::new();
    match File::open(&path) {
        Ok(f) => {
            let mut r = BufReader::new(f);
            let mut n = 0usize;
            loop {
                match read_line(&mut r, MAX_LINE) {
                    Ok(Some(line)) => match parse_command(&line) {
                        Ok(Command::Set(k, v)) => drop(map.insert(k, v)),
                        Ok(Command::Del(k)) => drop(map.remove(&k)),
                        _ => {
                            eprintln!(
                                "kv: {}: stopping replay at bad line {}",
                                path.display(),
                                n + 1
                            );
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        eprintln!("kv: {}: dropping a torn last line ({e})", path.display());
                        break;
                    }
                    Err(e) => return Err(e),
                }
                n += 1;
            }
            let _ = r.fill_buf();
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = dir.join(format!("{AOF}.tmp"));
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        for (k, v) in &map {
            writeln!(w, "SET {k} {v}")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    let f = OpenOptions::new().append(true).open(&path)?;
    eprintln!("kv: loaded {} keys from {}", map.len(), path.display());
    Ok((map, f))
}
