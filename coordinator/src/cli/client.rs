//! The HTTP client of the coordinator's API: where the server is and which token and CA
//! to use (from the flags and the CLI config), and how a reply or an error is read.

use std::time::Duration;

use serde_json::Value;

use super::{CliError, ClientArgs};
use crate::contract::body::ErrorBody;
use crate::contract::client_config::{self, Overrides};
use crate::contract::payload::{Archive, Payload, RequestBody, ResponseBody};
use crate::contract::routes::{Method, Route};

/// One coordinator's API, called by route (`crate::contract::routes`): no caller writes
/// a URL or reads a reply by key.
pub(super) struct Client {
    base: String,
    http: reqwest::Client,
    token: String,
    /// `-n`: `None` when not given (`default` then, but `apply` tells the two apart).
    namespace: Option<String>,
    /// `-A`.
    all_namespaces: bool,
}

impl Client {
    /// A client for the coordinator the flags and config name. With a
    /// `certificate-authority`, only that CA is trusted, as kubectl does.
    pub(super) fn new(cli: &ClientArgs) -> Result<Self, CliError> {
        let r = client_config::resolve(
            &Overrides {
                config: cli.config.clone(),
                server: cli.server.clone(),
                token: cli.token.clone(),
            },
            &client_config::default_paths(),
        )?;
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &r.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| CliError::Ca(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(CliError::Ca("no PEM certificate found".into()));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Self {
            base: r.server.trim_end_matches('/').to_owned(),
            http: b.build().map_err(|e| CliError::Ca(error_chain(&e)))?,
            token: r.token,
            namespace: cli.namespace.clone(),
            all_namespaces: cli.all_namespaces,
        })
    }

    /// The namespace a verb works in (`-n`, else `default`).
    pub(super) fn namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .unwrap_or(crate::model::api::DEFAULT_NAMESPACE)
    }

    /// `-n` as given.
    pub(super) fn namespace_flag(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub(super) fn all_namespaces(&self) -> bool {
        self.all_namespaces
    }

    /// Calls `route` with `body` and reads its answer as the route's reply type. Every
    /// call but an upload has 30 s to finish.
    pub(super) async fn call<R>(
        &self,
        route: &R,
        body: &R::Request,
    ) -> Result<R::Response, CliError>
    where
        R: Route,
        R::Request: RequestBody,
        R::Response: ResponseBody,
    {
        let payload = body
            .payload()
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        let req = self.request(route).timeout(Duration::from_secs(30));
        let req = match payload {
            Payload::Empty => req,
            Payload::Json(bytes) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
            Payload::Text(text) => req.body(text),
        };
        let bytes = self.send(req).await?;
        R::Response::parse(&bytes).map_err(|e| CliError::Protocol(e.to_string()))
    }

    /// Calls `route` with a streamed body and no overall timeout (an upload may take
    /// long).
    pub(super) async fn upload<R>(
        &self,
        route: &R,
        body: reqwest::Body,
    ) -> Result<R::Response, CliError>
    where
        R: Route<Request = Archive>,
        R::Response: ResponseBody,
    {
        let bytes = self.send(self.request(route).body(body)).await?;
        R::Response::parse(&bytes).map_err(|e| CliError::Protocol(e.to_string()))
    }

    fn request<R: Route>(&self, route: &R) -> reqwest::RequestBuilder {
        let method = match R::METHOD {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
        };
        self.http.request(method, route.url(&self.base))
    }

    /// Calls a route whose answer is streamed (`PodLogs`) with no timeout: the response,
    /// to be read piece by piece, or the server's error.
    pub(super) async fn stream<R>(&self, route: &R) -> Result<reqwest::Response, CliError>
    where
        R: Route<Request = crate::contract::payload::NoBody>,
    {
        self.answer(self.request(route)).await
    }

    /// Calls a route that upgrades its connection (`PodExec`) to `protocol`: the
    /// connection, or the server's error.
    pub(super) async fn upgrade<R>(
        &self,
        route: &R,
        protocol: &str,
    ) -> Result<reqwest::Upgraded, CliError>
    where
        R: Route<Request = crate::contract::payload::NoBody>,
    {
        let req = self
            .request(route)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol);
        // Through a standby too: the upgrade has no body, so it is asked again of the leader.
        let resp = self.follow(req).await?;
        if resp.status() == reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return resp
                .upgrade()
                .await
                .map_err(|e| CliError::Protocol(format!("cannot upgrade: {}", error_chain(&e))));
        }
        Err(self.refused(resp).await)
    }

    fn send_failed(&self, server: &str, e: &reqwest::Error) -> CliError {
        let reason = error_chain(e);
        if reason.contains("certificate") {
            CliError::Tls {
                server: server.to_owned(),
                reason,
            }
        } else {
            CliError::Unreachable {
                server: server.to_owned(),
                reason,
            }
        }
    }

    /// Sends `req` with the token; the body of a successful answer, or the server's error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, CliError> {
        let resp = self.answer(req).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| CliError::Protocol(e.to_string()))
    }

    /// Sends `req` with the token; a successful answer, or the server's error.
    async fn answer(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let resp = self.follow(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.refused(resp).await)
    }

    /// Sends `req` with the token and returns the answer, whatever its status, once a
    /// standby's redirect is followed.
    async fn follow(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let req = req
            .bearer_auth(&self.token)
            .build()
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        let again = req.try_clone();
        let mut resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| self.send_failed(&self.base, &e))?;
        // A standby coordinator redirects to its leader (docs/operations.md, "Several
        // coordinators"). Followed here, once, with the token and the same CA: reqwest's
        // own redirects drop the token when the host changes. A streamed upload cannot be
        // sent twice, so it reports the leader instead.
        if matches!(
            resp.status(),
            reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
        ) {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| reqwest::Url::parse(l).ok());
            if let (Some(mut req), Some(url)) = (again, location) {
                let server = url.origin().ascii_serialization();
                *req.url_mut() = url;
                resp = self
                    .http
                    .execute(req)
                    .await
                    .map_err(|e| self.send_failed(&server, &e))?;
            }
        }
        Ok(resp)
    }

    /// The server's error, from a refusing answer.
    async fn refused(&self, resp: reqwest::Response) -> CliError {
        let status = resp.status();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return CliError::Protocol(e.to_string()),
        };
        // The API's errors are an ErrorBody; anything else (a proxy's page) is shown as
        // it came, as JSON text.
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => e.error,
            Err(_) => serde_json::from_slice::<Value>(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
                .to_string(),
        };
        let status = match status.as_u16() {
            400 => "BadRequest".to_owned(),
            401 => "Unauthorized".to_owned(),
            403 => "Forbidden".to_owned(),
            404 => "NotFound".to_owned(),
            409 => "Conflict".to_owned(),
            410 => "Gone".to_owned(),
            413 => "PayloadTooLarge".to_owned(),
            500 => "InternalError".to_owned(),
            503 => "ServiceUnavailable".to_owned(),
            s => s.to_string(),
        };
        CliError::Server { status, message }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
