//! The todo frontend: a web page and a JSON API over the KV store.
//!
//! Storage layout in the store: `todo:<id>` holds `{"id":..,"title":..,"done":..}` and
//! `seq:todo` the last id handed out (INCR, so ids are unique across frontends). Writes and
//! read-modify-writes go to the primary; listings go to the replica, and fall back to the
//! primary when the replica is down, so the app keeps working with one store.

use std::io::{BufReader, BufWriter};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::http::{read_request, write_response, Request, Response};
use crate::json::{self, Value};
use crate::kv::client::{Client, ClientError};

const KV_TIMEOUT: Duration = Duration::from_secs(2);
/// A keep-alive connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(10);
const MAX_CONNS: usize = 256;
const MAX_TITLE: usize = 500;
const POOL_SIZE: usize = 8;
const TODO_PREFIX: &str = "todo:";
const SEQ_KEY: &str = "seq:todo";

#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the KV primary (host may be `host-gateway`).
    pub kv_primary: String,
    /// `host:port` of a KV replica for reads; the primary when unset.
    pub kv_replica: Option<String>,
    /// What `/api/version` reports; the v1 and v2 images differ only here.
    pub version: String,
    pub hostname: String,
}

/// Idle KV connections to one address, reused across requests.
struct Pool {
    addr: String,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    fn new(addr: String) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled connection. A pooled connection may have gone stale (the
    /// store restarted), so an IO error on one is retried once on a fresh connection.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut c, reused) = match pooled {
            Some(c) => (c, true),
            None => (Client::connect(&self.addr, KV_TIMEOUT)?, false),
        };
        let r = match f(&mut c) {
            Err(ClientError::Io(_)) if reused => {
                c = Client::connect(&self.addr, KV_TIMEOUT)?;
                f(&mut c)
            }
            r => r,
        };
        // Only a connection that completed its exchange is known to be in step.
        if matches!(r, Ok(_) | Err(ClientError::Server(_))) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < POOL_SIZE {
                idle.push(c);
            }
        }
        r
    }
}

pub struct App {
    config: Config,
    primary: Pool,
    replica: Option<Pool>,
}

#[derive(Debug, Clone, PartialEq)]
struct Todo {
    id: u64,
    title: String,
    done: bool,
}

impl Todo {
    fn to_json(&self) -> Value {
        Value::object([
            ("id", Value::from(self.id)),
            ("title", Value::from(self.title.as_str())),
            ("done", Value::from(self.done)),
        ])
    }

    fn from_json(text: &str) -> Option<Todo> {
        let v = json::parse(text).ok()?;
        Some(Todo {
            id: v.get("id")?.as_u64()?,
            title: v.get("title")?.as_str()?.to_owned(),
            done: v.get("done")?.as_bool()?,
        })
    }
}

fn unavailable(e: ClientError) -> Response {
    Response::error(503, e.to_string())
}

/// Checks a title from a request body.
fn title_of(v: &Value) -> Result<Option<String>, Response> {
    match v.get("title") {
        None => Ok(None),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                Err(Response::error(400, "\"title\" must not be empty"))
            } else if t.chars().count() > MAX_TITLE {
                Err(Response::error(
                    400,
                    format!("\"title\" is longer than {MAX_TITLE} characters"),
                ))
            } else {
                Ok(Some(t.to_owned()))
            }
        }
        Some(_) => Err(Response::error(400, "\"title\" must be a string")),
    }
}

/// The request body as a JSON object; an empty body counts as `{}`.
fn body_object(req: &Request) -> Result<Value, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Vec::new()));
    }
    let text =
        std::str::from_utf8(&req.body).map_err(|_| Response::error(400, "body is not UTF-8"))?;
    match json::parse(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Response::error(400, "body must be a JSON object")),
        Err(e) => Err(Response::error(400, e.to_string())),
    }
}

impl App {
    pub fn new(config: Config) -> App {
        let primary = Pool::new(config.kv_primary.clone());
        let replica = config
            .kv_replica
            .clone()
            .filter(|r| *r != config.kv_primary)
            .map(Pool::new);
        App {
            config,
            primary,
            replica,
        }
    }

    /// Reads from the replica, or the primary if the replica fails.
    fn read<T>(&self, f: impl Fn(&mut Client) -> Result<T, ClientError>) -> Result<T, ClientError> {
        if let Some(r) = &self.replica {
            match r.with(&f) {
                Ok(v) => return Ok(v),
                Err(e) => eprintln!(
                    "todo-app: replica {}: {e}; reading from the primary",
                    r.addr
                ),
            }
        }
        self.primary.with(&f)
    }

    pub fn handle(&self, req: &Request) -> Response {
        let path = req.path.trim_end_matches('/');
        let m = req.method.as_str();
        let allow = |methods: &'static str| {
            Response::error(405, format!("{} not allowed on {}", req.method, req.path))
                .with_header("Allow", methods)
        };
        match path {
            "" | "/index.html" => match m {
                "GET" | "HEAD" => Response::new(200, "text/html; charset=utf-8", INDEX_HTML),
                _ => allow("GET, HEAD"),
            },
            "/healthz" => match m {
                "GET" | "HEAD" => match self.primary.with(Client::ping) {
                    Ok(()) => Response::new(200, "text/plain", "ok\n"),
                    Err(e) => Response::new(
                        503,
                        "text/plain",
                        format!("kv primary {}: {e}\n", self.config.kv_primary),
                    ),
                },
                _ => allow("GET, HEAD"),
            },
            "/api/version" => match m {
                "GET" => Response::json(
                    200,
                    Value::object([
                        ("version", Value::from(self.config.version.as_str())),
                        ("hostname", Value::from(self.config.hostname.as_str())),
                    ]),
                ),
                _ => allow("GET"),
            },
            "/api/todos" => match m {
                "GET" => self.list(),
                "POST" => self.create(req),
                _ => allow("GET, POST"),
            },
            _ => match path.strip_prefix("/api/todos/") {
                Some(id) => {
                    let Some(id) = id
                        .parse::<u64>()
                        .ok()
                        .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
                    else {
                        return Response::error(404, format!("no todo {id:?}: ids are numbers"));
                    };
                    match m {
                        "GET" => self.get(id),
                        "PUT" => self.update(id, req),
                        "DELETE" => self.delete(id),
                        _ => allow("GET, PUT, DELETE"),
                    }
                }
                None => Response::error(404, format!("no route {} {}", req.method, req.path)),
            },
        }
    }

    fn list(&self) -> Response {
        match self.read(|c| c.scan(TODO_PREFIX)) {
            Ok(items) => {
                let mut todos: Vec<Todo> = items
                    .iter()
                    .filter_map(|(_, v)| Todo::from_json(v))
                    .collect();
                todos.sort_by_key(|t| t.id);
                Response::json(200, Value::Array(todos.iter().map(Todo::to_json).collect()))
            }
            Err(e) => unavailable(e),
        }
    }

    fn get(&self, id: u64) -> Response {
        match self.read(|c| c.get(&format!("{TODO_PREFIX}{id}"))) {
            Ok(Some(v)) => match Todo::from_json(&v) {
                Some(t) => Response::json(200, t.to_json()),
                None => Response::error(500, format!("todo {id} is corrupt in the store")),
            },
            Ok(None) => Response::error(404, format!("no todo {id}")),
            Err(e) => unavailable(e),
        }
    }

    fn create(&self, req: &Request) -> Response {
        let body = match body_object(req) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let title = match title_of(&body) {
            Ok(Some(t)) => t,
            Ok(None) => return Response::error(400, "missing \"title\""),
            Err(r) => return r,
        };
        let done = match body.get("done") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Response::error(400, "\"done\" must be a boolean"),
        };
        let result = self.primary.with(|c| {
            let id = u64::try_from(c.incr(SEQ_KEY)?)
                .map_err(|_| ClientError::Protocol("negative id".into()))?;
            let todo = Todo {
                id,
                title: title.clone(),
                done,
            };
            c.set(&format!("{TODO_PREFIX}{id}"), &todo.to_json().to_string())?;
            Ok(todo)
        });
        match result {
            Ok(t) => Response::json(201, t.to_json())
                .with_header("Location", format!("/api/todos/{}", t.id)),
            Err(e) => unavailable(e),
        }
    }

    /// `{"title": .., "done": ..}` sets either; a body with neither toggles `done`.
    fn update(&self, id: u64, req: &Request) -> Response {
        let body = match body_object(req) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let title = match title_of(&body) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let done = match body.get("done") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Response::error(400, "\"done\" must be a boolean"),
        };
        let key = format!("{TODO_PREFIX}{id}");
        let result = self.primary.with(|c| {
            let Some(v) = c.get(&key)? else {
                return Ok(None);
            };
            let mut t = Todo::from_json(&v).ok_or_else(|| {
                ClientError::Protocol(format!("todo {id} is corrupt in the store"))
            })?;
            match (&title, done) {
                (None, None) => t.done = !t.done,
                _ => {
                    if let Some(title) = &title {
                        t.title = title.clone();
                    }
                    if let Some(d) = done {
                        t.done = d;
                    }
                }
            }
            c.set(&key, &t.to_json().to_string())?;
            Ok(Some(t))
        });
        match result {
            Ok(Some(t)) => Response::json(200, t.to_json()),
            Ok(None) => Response::error(404, format!("no todo {id}")),
            Err(e) => unavailable(e),
        }
    }

    fn delete(&self, id: u64) -> Response {
        match self.primary.with(|c| c.del(&format!("{TODO_PREFIX}{id}"))) {
            Ok(true) => Response::new(204, "text/plain", ""),
            Ok(false) => Response::error(404, format!("no todo {id}")),
            Err(e) => unavailable(e),
        }
    }
}

/// A running HTTP server; `shutdown` stops accepting (open connections end on their own).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(listener: TcpListener, app: Arc<App>) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(listener, app, s))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Blocks until the server is shut down (forever, for the binary).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(listener: TcpListener, app: Arc<App>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("todo-app: accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNS {
            let _ = write_response(
                &mut stream,
                &Response::error(503, "too many connections"),
                true,
                true,
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (app, a) = (Arc::clone(&app), Arc::clone(&active));
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                serve_conn(&app, stream);
                a.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("todo-app: cannot start a connection thread: {e}");
        }
    }
}

fn serve_conn(app: &App, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    let Ok(w) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut writer = BufWriter::new(w);
    loop {
        match read_request(&mut reader, &mut writer) {
            Ok(None) => return,
            Ok(Some(req)) => {
                let resp = app.handle(&req);
                if resp.status >= 500 {
                    eprintln!("todo-app: {} {} -> {}", req.method, req.path, resp.status);
                }
                if write_response(&mut writer, &resp, !req.keep_alive, req.method != "HEAD")
                    .is_err()
                    || !req.keep_alive
                {
                    return;
                }
            }
            Err(resp) => {
                let _ = write_response(&mut writer, &resp, true, true);
                return;
            }
        }
    }
}

/// The web page: plain HTML and JS, no external assets (devices may be offline).
const INDEX_HTML: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Baton todo</title>
<style>
body{font-family:system-ui,sans-serif;max-width:36em;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}form{display:flex;gap:.5em}input[type=text]{flex:1;padding:.4em}
ul{list-style:none;padding:0}li{display:flex;align-items:center;gap:.5em;padding:.3em 0;border-bottom:1px solid #eee}
li span{flex:1}li.done span{text-decoration:line-through;color:#888}
button{cursor:pointer}#err{color:#b00}footer{margin-top:2em;color:#888;font-size:.85em}
</style></head>
<body>
<h1>Todo</h1>
<form id="add"><input id="title" type="text" placeholder="What needs doing?" maxlength="500" autofocus><button>Add</button></form>
<p id="err"></p>
<ul id="list"></ul>
<footer id="about"></footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
async function api(method, path, body) {
  const r = await fetch(path, {method, headers: body ? {"Content-Type": "application/json"} : {}, body: body ? JSON.stringify(body) : undefined});
  if (!r.ok) { let m = r.status + " " + r.statusText; try { m = (await r.json()).error || m; } catch (e) {} throw new Error(m); }
  return r.status === 204 ? null : r.json();
}
async function refresh() {
  try {
    const todos = await api("GET", "/api/todos");
    const list = $("list");
    list.replaceChildren();
    for (const t of todos) {
      const li = document.createElement("li");
      if (t.done) li.className = "done";
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = t.done;
      box.onchange = () => act(() => api("PUT", "/api/todos/" + t.id, {done: box.checked}));
      const span = document.createElement("span");
      span.textContent = t.title;
      const del = document.createElement("button");
      del.textContent = "Delete";
      del.onclick = () => act(() => api("DELETE", "/api/todos/" + t.id));
      li.append(box, span, del);
      list.append(li);
    }
    $("err").textContent = "";
  } catch (e) { $("err").textContent = e.message; }
}
async function act(f) {
  try { await f(); } catch (e) { $("err").textContent = e.message; return; }
  refresh();
}
$("add").onsubmit = (ev) => {
  ev.preventDefault();
  const title = $("title").value.trim();
  if (!title) return;
  act(async () => { await api("POST", "/api/todos", {title}); $("title").value = ""; });
};
api("GET", "/api/version").then((v) => { $("about").textContent = "version " + v.version + " served by " + v.hostname; }).catch(() => {});
refresh();
</script>
</body></html>
"##;
