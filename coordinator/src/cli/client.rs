//! The HTTP client of the coordinator's API: where the server is and which token and CA
//! to use (from the flags and the CLI config), and how a reply or an error is read.

use std::time::Duration;

use serde_json::Value;

use super::{CliError, ClientArgs};
use crate::contract::client_config::{self, Overrides};

pub(super) struct Client {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    token: String,
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
        let mut b = reqwest::Client::builder();
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
        })
    }

    pub(super) async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        self.send_with(req.timeout(Duration::from_secs(30))).await
    }

    /// [`Client::send`] with no overall timeout of its own (an upload may take long).
    pub(super) async fn send_with(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            let reason = error_chain(&e);
            if reason.contains("certificate") {
                CliError::Tls {
                    server: self.base.clone(),
                    reason,
                }
            } else {
                CliError::Unreachable {
                    server: self.base.clone(),
                    reason,
                }
            }
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        let status = match status.as_u16() {
            400 => "BadRequest".to_owned(),
            401 => "Unauthorized".to_owned(),
            403 => "Forbidden".to_owned(),
            404 => "NotFound".to_owned(),
            409 => "Conflict".to_owned(),
            500 => "InternalError".to_owned(),
            503 => "ServiceUnavailable".to_owned(),
            s => s.to_string(),
        };
        Err(CliError::Server { status, message })
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
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

pub(super) fn items(v: &Value) -> Vec<Value> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub(super) fn parse_objects<T: serde::de::DeserializeOwned>(
    values: &[Value],
) -> Result<Vec<T>, CliError> {
    values
        .iter()
        .map(|v| serde_json::from_value(v.clone()).map_err(|e| CliError::Protocol(e.to_string())))
        .collect()
}
