//! The todo frontend for real on loopback against a kv primary and replica in-process.

mod common;

use std::net::TcpListener;
use std::sync::Arc;

use baton_todo::json::{self, Value};
use baton_todo::todo::{App, Config, Server};
use common::{http, http_raw, primary, replica_of, wait_for};

fn app(kv_primary: String, kv_replica: Option<String>) -> Server {
    let config = Config {
        kv_primary,
        kv_replica,
        version: "7".into(),
        hostname: "pod-a".into(),
    };
    Server::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(App::new(config)),
    )
    .unwrap()
}

fn j(body: &str) -> Value {
    json::parse(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[test]
fn todo_round_trip_through_primary_and_replica() {
    let p = primary();
    let r = replica_of(&p.addr());
    let web = app(p.addr(), Some(r.addr()));
    let a = web.local_addr();

    let (s, _, body) = http(a, "GET", "/", None);
    assert_eq!(s, 200);
    assert!(
        body.contains("<title>Baton todo</title>") && body.contains("/api/todos"),
        "{body}"
    );

    let (s, head, body) = http(
        a,
        "POST",
        "/api/todos",
        Some(r#"{"title":"  water the tomatoes "}"#),
    );
    assert_eq!(s, 201, "{body}");
    let t = j(&body);
    let id = t.get("id").and_then(Value::as_u64).unwrap();
    assert_eq!(
        t.get("title").and_then(Value::as_str),
        Some("water the tomatoes")
    );
    assert_eq!(t.get("done").and_then(Value::as_bool), Some(false));
    assert!(
        head.contains(&format!("Location: /api/todos/{id}")),
        "{head}"
    );
    let (s, _, body2) = http(
        a,
        "POST",
        "/api/todos",
        Some(r#"{"title":"fix the fence \"now\" <b>", "done": true}"#),
    );
    assert_eq!(s, 201, "{body2}");
    let id2 = j(&body2).get("id").and_then(Value::as_u64).unwrap();
    assert!(id2 > id);

    // Listings come from the replica: wait until it has both.
    let list = wait_for("both todos in the listing", || {
        let (s, _, b) = http(a, "GET", "/api/todos", None);
        let v = j(&b);
        (s == 200 && matches!(&v, Value::Array(items) if items.len() == 2)).then_some(v)
    });
    let Value::Array(items) = list else {
        unreachable!()
    };
    assert_eq!(items[0].get("id").and_then(Value::as_u64), Some(id));
    assert_eq!(
        items[1].get("title").and_then(Value::as_str),
        Some("fix the fence \"now\" <b>")
    );

    // The replica holds the same record the primary does.
    let key = format!("todo:{id}");
    let mut rc =
        baton_todo::kv::client::Client::connect(&r.addr(), std::time::Duration::from_secs(5))
            .unwrap();
    assert_eq!(
        j(&rc.get(&key).unwrap().unwrap())
            .get("title")
            .and_then(Value::as_str),
        Some("water the tomatoes")
    );

    // PUT with no fields toggles; with fields sets them.
    let (s, _, b) = http(a, "PUT", &format!("/api/todos/{id}"), None);
    assert_eq!(
        (s, j(&b).get("done").and_then(Value::as_bool)),
        (200, Some(true))
    );
    let (s, _, b) = http(
        a,
        "PUT",
        &format!("/api/todos/{id}"),
        Some(r#"{"title":"water the beans","done":false}"#),
    );
    assert_eq!(s, 200, "{b}");
    wait_for("the update on the replica", || {
        let (_, _, b) = http(a, "GET", &format!("/api/todos/{id}"), None);
        let v = j(&b);
        (v.get("title").and_then(Value::as_str) == Some("water the beans")
            && v.get("done").and_then(Value::as_bool) == Some(false))
        .then_some(())
    });

    let (s, _, _) = http(a, "DELETE", &format!("/api/todos/{id}"), None);
    assert_eq!(s, 204);
    let (s, _, _) = http(a, "DELETE", &format!("/api/todos/{id}"), None);
    assert_eq!(s, 404);
    let (s, _, _) = http(a, "PUT", &format!("/api/todos/{id}"), None);
    assert_eq!(s, 404);

    let (s, _, b) = http(a, "GET", "/api/version", None);
    assert_eq!(s, 200);
    assert_eq!(b, r#"{"version":"7","hostname":"pod-a"}"#);
}

#[test]
fn bad_input_gets_a_clear_4xx() {
    let p = primary();
    let web = app(p.addr(), None);
    let a = web.local_addr();
    for (method, path, body, status, says) in [
        ("POST", "/api/todos", Some("{not json"), 400, "invalid JSON"),
        ("POST", "/api/todos", Some("[1,2]"), 400, "JSON object"),
        (
            "POST",
            "/api/todos",
            Some("{}"),
            400,
            "missing \\\"title\\\"",
        ),
        (
            "POST",
            "/api/todos",
            Some(r#"{"title":42}"#),
            400,
            "must be a string",
        ),
        (
            "POST",
            "/api/todos",
            Some(r#"{"title":"   "}"#),
            400,
            "must not be empty",
        ),
        (
            "POST",
            "/api/todos",
            Some(r#"{"title":"x","done":"yes"}"#),
            400,
            "must be a boolean",
        ),
        ("PUT", "/api/todos/abc", Some("{}"), 404, "ids are numbers"),
        ("PUT", "/api/todos/+1", Some("{}"), 404, "ids are numbers"),
        ("GET", "/nope", None, 404, "no route GET /nope"),
        ("PATCH", "/api/todos", None, 405, "PATCH not allowed"),
        ("DELETE", "/healthz", None, 405, "not allowed"),
    ] {
        let (s, _, b) = http(a, method, path, body);
        assert_eq!(s, status, "{method} {path} {body:?}: {b}");
        assert!(
            b.contains(says),
            "{method} {path}: {b:?} does not say {says:?}"
        );
    }
    let long_title = format!(r#"{{"title":"{}"}}"#, "t".repeat(501));
    assert_eq!(http(a, "POST", "/api/todos", Some(&long_title)).0, 400);

    // Oversized bodies are refused from Content-Length alone.
    let big = format!(r#"{{"title":"{}"}}"#, "x".repeat(70 * 1024));
    let (s, _, b) = http(a, "POST", "/api/todos", Some(&big));
    assert_eq!(s, 413, "{b}");
    let (s, _, _) = http_raw(
        a,
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(s, 411);
    let (s, _, _) = http_raw(a, b"garbage\r\n\r\n");
    assert_eq!(s, 400);
    // And the server is still fine afterwards.
    assert_eq!(http(a, "GET", "/api/todos", None).0, 200);
}

#[test]
fn healthz_follows_the_primary_and_reads_fall_back() {
    let p = primary();
    let r = replica_of(&p.addr());
    let web = app(p.addr(), Some(r.addr()));
    let a = web.local_addr();
    assert_eq!(http(a, "GET", "/healthz", None).0, 200);
    assert_eq!(
        http(a, "POST", "/api/todos", Some(r#"{"title":"one"}"#)).0,
        201
    );
    wait_for("the todo on the replica", || {
        let (_, _, b) = http(a, "GET", "/api/todos", None);
        b.contains("\"one\"").then_some(())
    });

    // The replica goes away: reads fall back to the primary.
    drop(r);
    let (s, _, b) = http(a, "GET", "/api/todos", None);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"one\""), "{b}");

    // The primary goes away: not ready, and writes fail with 503, not a hang or a crash.
    drop(p);
    let (s, _, b) = http(a, "GET", "/healthz", None);
    assert_eq!(s, 503, "{b}");
    assert!(b.contains("kv primary"), "{b}");
    assert_eq!(
        http(a, "POST", "/api/todos", Some(r#"{"title":"two"}"#)).0,
        503
    );
    assert_eq!(http(a, "GET", "/api/todos", None).0, 503);
}

#[test]
fn keep_alive_serves_several_requests_and_head_has_no_body() {
    let p = primary();
    let web = app(p.addr(), None);
    let raw = b"GET /healthz HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nGET /api/version HTTP/1.1\r\nConnection: close\r\n\r\n";
    let (s, head, rest) = http_raw(web.local_addr(), raw);
    assert_eq!(s, 200);
    // Three responses on one connection; the HEAD one carries the page's length but no page.
    let all = format!("{head}\r\n\r\n{rest}");
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
    assert!(!all.contains("<title>"), "HEAD sent a body: {all}");
    assert!(
        all.ends_with(r#"{"version":"7","hostname":"pod-a"}"#),
        "{all}"
    );
}
