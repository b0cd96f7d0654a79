//! A container's liveness, readiness and startup probes, with Kubernetes' defaults.

use serde_yaml_ng::Value;

use super::input::InProbe;
use super::validate::{invalid, port, port_name, Invalid};
use crate::model::api;

/// Kubernetes' probe defaults.
const PROBE_PERIOD_SECONDS: u32 = 10;
const PROBE_TIMEOUT_SECONDS: u32 = 1;
const PROBE_SUCCESS_THRESHOLD: u32 = 1;
const PROBE_FAILURE_THRESHOLD: u32 = 3;

/// A probe with Kubernetes' defaults filled in, its port resolved and its values checked
/// as the API server checks them.
pub(super) fn probe(
    path: &str,
    p: InProbe,
    ports: &[api::ContainerPort],
    single_success: bool,
) -> Result<api::Probe, Invalid> {
    let mut handlers = Vec::new();
    if let Some(e) = p.exec {
        if e.command.is_empty() {
            return invalid(format!("{path}.exec.command"), "required");
        }
        handlers.push(api::ProbeHandler::Exec { command: e.command });
    }
    if let Some(h) = p.http_get {
        let hpath = format!("{path}.httpGet");
        let port = probe_port(&format!("{hpath}.port"), h.port, ports)?;
        let http_path = h
            .path
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/".into());
        if !http_path.starts_with('/') {
            return invalid(
                format!("{hpath}.path"),
                format!("{http_path:?} must start with '/'"),
            );
        }
        for (i, hd) in h.http_headers.iter().enumerate() {
            let ok = !hd.name.is_empty()
                && hd
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return invalid(
                    format!("{hpath}.httpHeaders[{i}].name"),
                    format!("{:?} must be a valid HTTP header name", hd.name),
                );
            }
        }
        handlers.push(api::ProbeHandler::HttpGet {
            path: http_path,
            port,
            scheme: h.scheme.unwrap_or_default(),
            host: probe_host(&format!("{hpath}.host"), h.host)?,
            http_headers: h
                .http_headers
                .into_iter()
                .map(|hd| api::HttpHeader {
                    name: hd.name,
                    value: hd.value,
                })
                .collect(),
        });
    }
    if let Some(t) = p.tcp_socket {
        let tpath = format!("{path}.tcpSocket");
        handlers.push(api::ProbeHandler::TcpSocket {
            port: probe_port(&format!("{tpath}.port"), t.port, ports)?,
            host: probe_host(&format!("{tpath}.host"), t.host)?,
        });
    }
    let handler = match handlers.len() {
        0 => {
            return invalid(
                path,
                "must specify a handler type: exec, httpGet or tcpSocket",
            )
        }
        1 => handlers.remove(0),
        _ => return invalid(path, "may not specify more than 1 handler type"),
    };
    let number = |field: &str, v: Option<i64>, default: u32, min: u32| -> Result<u32, Invalid> {
        let v = v.unwrap_or(i64::from(default));
        match u32::try_from(v) {
            Ok(n) if n >= min => Ok(n),
            _ => invalid(
                format!("{path}.{field}"),
                format!("must be greater than or equal to {min}, got {v}"),
            ),
        }
    };
    let success_threshold = number(
        "successThreshold",
        p.success_threshold,
        PROBE_SUCCESS_THRESHOLD,
        1,
    )?;
    if single_success && success_threshold != 1 {
        return invalid(
            format!("{path}.successThreshold"),
            format!("must be 1, got {success_threshold}"),
        );
    }
    Ok(api::Probe {
        handler,
        initial_delay_seconds: number("initialDelaySeconds", p.initial_delay_seconds, 0, 0)?,
        period_seconds: number("periodSeconds", p.period_seconds, PROBE_PERIOD_SECONDS, 1)?,
        timeout_seconds: number(
            "timeoutSeconds",
            p.timeout_seconds,
            PROBE_TIMEOUT_SECONDS,
            1,
        )?,
        success_threshold,
        failure_threshold: number(
            "failureThreshold",
            p.failure_threshold,
            PROBE_FAILURE_THRESHOLD,
            1,
        )?,
    })
}

/// A probe's `port`: a number, or the name of one of the container's ports.
fn probe_port(path: &str, v: Option<Value>, ports: &[api::ContainerPort]) -> Result<u16, Invalid> {
    match v {
        None => invalid(path, "required"),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => port(path, i),
            None => invalid(path, format!("must be an integer or a port name, got {n}")),
        },
        Some(Value::String(name)) => {
            if let Ok(i) = name.parse::<i64>() {
                return port(path, i);
            }
            port_name(path, &name)?;
            match ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
            {
                Some(p) => Ok(p.container_port),
                None => invalid(
                    path,
                    format!("no port named {name:?} in the container's ports"),
                ),
            }
        }
        Some(other) => invalid(
            path,
            format!("must be an integer or a port name, got {other:?}"),
        ),
    }
}

fn probe_host(path: &str, host: Option<String>) -> Result<Option<String>, Invalid> {
    match host {
        None => Ok(None),
        Some(h) if h.is_empty() => Ok(None),
        Some(h) if h.len() <= 253 && !h.chars().any(|c| c.is_whitespace() || c == '/') => {
            Ok(Some(h))
        }
        Some(h) => invalid(path, format!("{h:?} must be a host name or an address")),
    }
}
