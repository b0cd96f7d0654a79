//! The web dashboard: static assets embedded in the binary and served at `/` and `/ui/`,
//! so an air-gapped site needs no other server and no CDN.
//!
//! The page is plain ES modules and CSS (no build step). It holds no privilege of its
//! own: it calls the same contract routes as the CLI, with the token the user typed, so
//! the API's token check decides what it may do. The assets themselves carry no data and
//! are served without a token.
//!
//! Invariants: every script is a file here (the Content-Security-Policy forbids inline
//! script and every other origin); an asset is gzip'd at most once per process, and only
//! for a client that accepts it.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// Only this origin, no inline script or style, no framing: a token typed into the page
/// must not leak to another origin, and injected markup must not run.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $ty:literal),* $(,)?) => {
        const ASSETS: &[Asset] = &[$(Asset {
            name: $name,
            content_type: $ty,
            body: include_bytes!(concat!("assets/", $name)),
        }),*];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "watch.js" => "text/javascript; charset=utf-8",
    "views.js" => "text/javascript; charset=utf-8",
    "logs.js" => "text/javascript; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
}

/// An asset's gzip'd bytes and its ETag, made on first request.
struct Prepared {
    gzip: Vec<u8>,
    etag: String,
}

fn prepared(i: usize) -> &'static Prepared {
    static CACHE: OnceLock<Vec<OnceLock<Prepared>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| ASSETS.iter().map(|_| OnceLock::new()).collect());
    cache[i].get_or_init(|| {
        let body = ASSETS[i].body;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let gzip = std::io::Write::write_all(&mut enc, body)
            .and_then(|()| enc.finish())
            .unwrap_or_default();
        let etag = format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12]));
        Prepared { gzip, etag }
    })
}

/// The dashboard's routes: `/` is the page, `/ui/NAME` its assets. No token: they carry
/// no data.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/ui/{name}",
            get(|Path(name): Path<String>, h: HeaderMap| async move { serve(&name, &h) }),
        )
}

/// Answers the asset `name`: 304 when the client has it, gzip'd when it accepts that.
fn serve(name: &str, req: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let asset = &ASSETS[i];
    let p = prepared(i);
    let mut headers = HeaderMap::new();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(&mut headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(&mut headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut headers, header::X_FRAME_OPTIONS, "DENY");
    set(&mut headers, header::REFERRER_POLICY, "no-referrer");
    // Revalidated each load (a 304 is a few bytes), so an upgraded coordinator's page is
    // never mixed with a cached older module.
    set(&mut headers, header::CACHE_CONTROL, "no-cache");
    set(&mut headers, header::ETAG, &p.etag);
    set(&mut headers, header::VARY, "Accept-Encoding");
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == p.etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    set(&mut headers, header::CONTENT_TYPE, asset.content_type);
    if accepts_gzip(req) && !p.gzip.is_empty() && p.gzip.len() < asset.body.len() {
        set(&mut headers, header::CONTENT_ENCODING, "gzip");
        return (headers, p.gzip.clone()).into_response();
    }
    (headers, asset.body).into_response()
}

/// Does `Accept-Encoding` list gzip with a non-zero weight?
fn accepts_gzip(req: &HeaderMap) -> bool {
    let Some(v) = req
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    v.split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        let zero = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                == Some(0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero
    })
}

/// Every asset's size as served to a client that accepts gzip: what a first load costs.
pub fn gzip_total() -> usize {
    (0..ASSETS.len()).map(|i| prepared(i).gzip.len()).sum()
}

#[cfg(test)]
mod tests;
