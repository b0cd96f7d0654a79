//! A minimal HTTP/1.1 server side: request parsing with hard limits, responses, keep-alive.
//!
//! Enough for a browser, curl and readiness probes. Bodies need `Content-Length` (chunked
//! uploads get 411); every limit breach is a 4xx answer and a closed connection, never a
//! panic, since release builds abort on panic and would take every other request down.

use std::io::{self, BufRead, Read, Write};

/// Request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_HEADERS: usize = 100;
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: impl ToString) -> Response {
        Response::new(status, "application/json", body.to_string())
    }

    /// `{"error": message}` with the given status.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let v = crate::json::Value::object([("error", crate::json::Value::String(message.into()))]);
        Response::json(status, v)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a response; `close` adds `Connection: close`. For HEAD, pass `send_body: false`:
/// the headers (Content-Length included) are the GET's, without the body.
pub fn write_response(
    w: &mut impl Write,
    r: &Response,
    close: bool,
    send_body: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if send_body {
        w.write_all(&r.body)?;
    }
    w.flush()
}

/// Reads one request. `Ok(None)` when the client closed (or went idle) between requests;
/// `Err(response)` for a request that must be refused, after which the caller closes.
/// `w` is needed for `Expect: 100-continue`.
pub fn read_request(r: &mut impl BufRead, w: &mut impl Write) -> Result<Option<Request>, Response> {
    let mut head = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        let budget = (MAX_HEAD + 1).saturating_sub(head.len()) as u64;
        let n = match r.by_ref().take(budget).read_until(b'\n', &mut line) {
            Ok(n) => n,
            // An idle keep-alive connection timing out, or a reset: just close.
            Err(_) if lines.is_empty() => return Ok(None),
            Err(_) => return Err(Response::error(408, "request head not received in time")),
        };
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(Response::error(400, "connection closed mid-request"))
            };
        }
        head.extend_from_slice(&line);
        if line.last() != Some(&b'\n') {
            return Err(Response::error(
                431,
                format!("request head larger than {MAX_HEAD} bytes"),
            ));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        // Tolerate blank lines before the request line (RFC 9112 section 2.2).
        if line.is_empty() && lines.is_empty() {
            continue;
        }
        if line.is_empty() {
            break;
        }
        let Ok(text) = String::from_utf8(line) else {
            return Err(Response::error(400, "request head is not UTF-8"));
        };
        lines.push(text);
        if lines.len() > MAX_HEADERS + 1 {
            return Err(Response::error(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::error(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Response::error(400, "malformed method"));
    }
    let keep_alive_default = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(Response::error(
                505,
                "only HTTP/1.0 and HTTP/1.1 are supported",
            ))
        }
    };
    if !target.starts_with('/') {
        return Err(Response::error(
            400,
            "request target must be an absolute path",
        ));
    }
    let path = target.split(['?', '#']).next().unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    for l in &lines[1..] {
        let Some((k, v)) = l.split_once(':') else {
            return Err(Response::error(400, format!("malformed header line {l:?}")));
        };
        if k.is_empty() || k.contains([' ', '\t']) {
            return Err(Response::error(400, format!("malformed header name {k:?}")));
        }
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    let mut req = Request {
        method: method.to_owned(),
        path,
        headers,
        body: Vec::new(),
        keep_alive: keep_alive_default,
    };
    if let Some(c) = req.header("connection") {
        let c = c.to_ascii_lowercase();
        if c.split(',').any(|t| t.trim() == "close") {
            req.keep_alive = false;
        } else if c.split(',').any(|t| t.trim() == "keep-alive") {
            req.keep_alive = true;
        }
    }
    if req.header("transfer-encoding").is_some() {
        return Err(Response::error(
            411,
            "chunked bodies are not supported; send Content-Length",
        ));
    }
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [one] => match one.parse::<usize>() {
            Ok(n) if one.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(Response::error(400, "invalid Content-Length")),
        },
        _ => return Err(Response::error(400, "more than one Content-Length")),
    };
    if len > MAX_BODY {
        return Err(Response::error(
            413,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    if len > 0 {
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            let _ = w
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|_| w.flush());
        }
        req.body = vec![0; len];
        if r.read_exact(&mut req.body).is_err() {
            return Err(Response::error(400, "body shorter than Content-Length"));
        }
    }
    Ok(Some(req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(raw: &[u8]) -> Result<Option<Request>, Response> {
        read_request(&mut Cursor::new(raw.to_vec()), &mut Vec::new())
    }

    #[test]
    fn parses_a_post_with_body_and_query() {
        let r = parse(b"POST /api/todos?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.as_slice()),
            ("POST", "/api/todos", &b"hello"[..])
        );
        assert_eq!(r.header("host"), Some("a"));
        assert!(r.keep_alive);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !parse(b"GET / HTTP/1.0\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn two_requests_on_one_connection() {
        let mut c = Cursor::new(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n".to_vec());
        let mut w = Vec::new();
        assert_eq!(read_request(&mut c, &mut w).unwrap().unwrap().path, "/a");
        assert_eq!(read_request(&mut c, &mut w).unwrap().unwrap().path, "/b");
        assert!(read_request(&mut c, &mut w).unwrap().is_none());
    }

    #[test]
    fn refusals_have_the_right_status() {
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let huge_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        for (raw, status) in [
            (big.as_bytes(), 413),
            (huge_head.as_bytes(), 431),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
                411,
            ),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET /\r\n\r\n", 400),
            (b"get / HTTP/1.1\r\n\r\n", 400),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", 400),
        ] {
            match parse(raw) {
                Err(resp) => assert_eq!(resp.status, status, "{}", String::from_utf8_lossy(raw)),
                Ok(r) => panic!("accepted {:?}: {r:?}", String::from_utf8_lossy(raw)),
            }
        }
    }

    #[test]
    fn expect_continue_is_answered() {
        let mut w = Vec::new();
        let raw =
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi".to_vec();
        let r = read_request(&mut Cursor::new(raw), &mut w)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"hi");
        assert_eq!(w, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn writes_a_response() {
        let mut w = Vec::new();
        write_response(
            &mut w,
            &Response::error(404, "no such route").with_header("Allow", "GET"),
            true,
            true,
        )
        .unwrap();
        let text = String::from_utf8(w).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(
            text.contains("Content-Length: 25\r\n")
                && text.contains("Allow: GET\r\n")
                && text.contains("Connection: close\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n{\"error\":\"no such route\"}"),
            "{text}"
        );
    }
}
