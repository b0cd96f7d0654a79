use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::contract::routes::ALL;

async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    router::<()>()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn bytes(r: Response) -> Vec<u8> {
    axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn assets_carry_the_security_headers_and_gzip_only_when_accepted() {
    let page = get("/", &[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(h.get(header::CONTENT_ENCODING).is_none());
    let plain = bytes(page).await;
    assert_eq!(plain, ASSETS[0].body);

    let zipped = get("/", &[("accept-encoding", "br, gzip;q=0.8")]).await;
    assert_eq!(zipped.headers()[header::CONTENT_ENCODING], "gzip");
    let etag = zipped.headers()[header::ETAG].to_str().unwrap().to_owned();
    let body = bytes(zipped).await;
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut back).unwrap();
    assert_eq!(back, plain);
    // gzip;q=0 is a refusal.
    let refused = get("/", &[("accept-encoding", "gzip;q=0")]).await;
    assert!(refused.headers().get(header::CONTENT_ENCODING).is_none());

    // A client holding the asset revalidates for a few bytes.
    let again = get("/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(bytes(again).await.is_empty());

    let js = get("/ui/app.js", &[]).await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        get("/ui/nope.js", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/ui/../mod.rs", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// The CSP forbids inline script and handlers; the page must not need them, and every
/// module a script imports must be served.
#[test]
fn no_inline_script_and_every_import_is_served() {
    let text = |a: &Asset| std::str::from_utf8(a.body).unwrap().to_owned();
    let html = text(&ASSETS[0]);
    assert_eq!(ASSETS[0].name, "index.html");
    for tag in html.split("<script").skip(1) {
        let open = &tag[..tag.find('>').unwrap()];
        assert!(
            open.contains("src=\"/ui/"),
            "an inline script: <script{open}>"
        );
        assert!(tag[open.len() + 1..].trim_start().starts_with("</script>"));
    }
    assert!(!html.contains(" style="), "inline style");
    for a in ASSETS {
        let t = text(a);
        assert!(
            !t.to_ascii_lowercase().contains(" onclick="),
            "{}: inline handler",
            a.name
        );
        for (i, _) in t.match_indices("from './") {
            let name = &t[i + 8..i + t[i..].find(".js'").unwrap() + 3];
            assert!(
                ASSETS.iter().any(|x| x.name == name),
                "{} imports {name}, which is not served",
                a.name
            );
        }
    }
}

/// The page calls the API by the contract's paths only (`api.js` holds them all).
#[test]
fn the_page_calls_contract_routes_only() {
    let mut seen = 0;
    for a in ASSETS {
        let t = std::str::from_utf8(a.body).unwrap();
        for (i, _) in t.match_indices("'/api/") {
            let p = &t[i + 1..i + 1 + t[i + 1..].find('\'').unwrap()];
            assert_eq!(a.name, "api.js", "{} writes an API path: {p}", a.name);
            assert!(ALL.iter().any(|r| r.path == p), "{p} is no contract route");
            seen += 1;
        }
    }
    assert!(seen >= 8, "api.js lists the paths it calls");
}

/// The bound for the whole page.
#[test]
fn the_page_is_small() {
    let total = gzip_total();
    assert!(total < 300 * 1024, "{total} bytes gzip'd");
}
