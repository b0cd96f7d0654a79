//! The field rules every kind shares (names, labels and annotations, paths, ports, ids)
//! and the `(path, message)` pair they refuse a field with.

use std::collections::BTreeMap;

use super::input::InMeta;
use crate::model::api;

pub(super) type Invalid = (String, String);

/// A namespace's name is an RFC 1123 label, as in Kubernetes.
pub(super) const MAX_NAMESPACE_LEN: usize = 63;

/// `n` with thousands separators (`1,500`), for limits in messages.
pub(super) fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

pub(super) fn invalid<T>(
    path: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, Invalid> {
    Err((path.into(), message.into()))
}

pub(super) fn object_meta(meta: InMeta, max_name_len: usize) -> Result<api::ObjectMeta, Invalid> {
    let Some(name) = meta.name else {
        return invalid("metadata.name", "required");
    };
    dns_label("metadata.name", &name, max_name_len)?;
    if let Some(ns) = &meta.namespace {
        dns_label("metadata.namespace", ns, MAX_NAMESPACE_LEN)?;
    }
    labels("metadata.labels", &meta.labels)?;
    annotations("metadata.annotations", &meta.annotations)?;
    Ok(api::ObjectMeta {
        name,
        labels: meta.labels,
        annotations: meta.annotations,
        namespace: meta.namespace,
        ..Default::default()
    })
}

pub(super) fn required<T>(path: &str, v: Option<T>) -> Result<T, Invalid> {
    v.ok_or_else(|| (path.to_owned(), "required".to_owned()))
}

/// A user or group id: Kubernetes allows 0..=2147483647.
pub(super) fn id(path: &str, v: Option<i64>) -> Result<Option<u32>, Invalid> {
    match v {
        None => Ok(None),
        Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => invalid(path, format!("must be between 0 and 2147483647, got {n}")),
    }
}

/// A secret's name: a DNS subdomain, as Kubernetes requires.
pub(super) fn secret_name(path: &str, name: &str) -> Result<(), Invalid> {
    if dns_subdomain(name) {
        Ok(())
    } else {
        invalid(
            path,
            format!(
                "{name:?} must be a lowercase RFC 1123 subdomain: labels of alphanumerics or \
                 '-' separated by '.', at most 253 characters"
            ),
        )
    }
}

/// A key of a secret: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub(super) fn secret_key(path: &str, key: &str) -> Result<(), Invalid> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && key != "."
        && key != "..";
    if ok {
        Ok(())
    } else {
        invalid(
            path,
            format!(
                "{key:?}: a valid key must consist of alphanumerics, '-', '_' or '.' (at most 253)"
            ),
        )
    }
}

/// An absolute path without `..` components: mount points and host paths.
pub(super) fn absolute_path(path: &str, p: &str) -> Result<(), Invalid> {
    if !p.starts_with('/') {
        return invalid(path, format!("{p:?} must be an absolute path"));
    }
    if p.split('/').any(|c| c == "..") {
        return invalid(path, format!("{p:?} must not contain '..'"));
    }
    if p.contains('\0') {
        return invalid(path, "must not contain NUL");
    }
    Ok(())
}

pub(super) fn port(path: &str, p: i64) -> Result<u16, Invalid> {
    match u16::try_from(p) {
        Ok(p) if p >= 1 => Ok(p),
        _ => invalid(path, format!("must be between 1 and 65535, got {p}")),
    }
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
pub(super) fn dns_label(path: &str, s: &str, max: usize) -> Result<(), Invalid> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1]);
    if !ok {
        return invalid(
            path,
            format!(
                "{s:?} must consist of lowercase alphanumerics or '-' and start and end \
                 with an alphanumeric (RFC 1123 label)"
            ),
        );
    }
    if s.len() > max {
        return invalid(path, format!("{s:?} must be at most {max} characters"));
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(super) fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
                && is_alnum_lower(b[0])
                && is_alnum_lower(b[b.len() - 1])
        })
}

/// The name part of a label key, and a label value: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
fn label_name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name` with a DNS subdomain prefix.
pub(super) fn qualified_name(path: &str, key: &str) -> Result<(), Invalid> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !dns_subdomain(p)) || !label_name_chars(name) {
        return invalid(
            format!("{path}.{key}"),
            "key must be [prefix/]name: a DNS subdomain prefix and a name of at most 63 \
             alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        );
    }
    Ok(())
}

pub(super) fn label_value(path: &str, v: &str) -> Result<(), Invalid> {
    if v.is_empty() || label_name_chars(v) {
        return Ok(());
    }
    invalid(
        path,
        format!(
            "{v:?} must be at most 63 alphanumerics, '-', '_' or '.', starting and ending \
             alphanumeric"
        ),
    )
}

pub(super) fn labels(path: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in labels {
        qualified_name(path, k)?;
        label_value(&format!("{path}.{k}"), v)?;
    }
    Ok(())
}

pub(super) fn annotations(
    path: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), Invalid> {
    annotations.keys().try_for_each(|k| qualified_name(path, k))
}

/// IANA service name, as Kubernetes requires for port names.
pub(super) fn port_name(path: &str, n: &str) -> Result<(), Invalid> {
    let b = n.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !n.contains("--");
    if !ok {
        return invalid(
            path,
            format!(
                "{n:?} must be at most 15 lowercase alphanumerics or '-', contain a letter, \
                 and not start, end or repeat '-' (IANA service name)"
            ),
        );
    }
    Ok(())
}
