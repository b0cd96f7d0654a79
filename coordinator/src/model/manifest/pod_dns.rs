//! A pod's `dnsPolicy`, `dnsConfig` and `hostAliases`, checked as the API server validates
//! them (and against the wire's bounds, [`baton_proto::PodDns`]).

use std::net::IpAddr;

use baton_proto::{
    MAX_DNS_NAMESERVERS, MAX_DNS_OPTIONS, MAX_DNS_SEARCHES, MAX_DNS_SEARCH_CHARS, MAX_HOST_ALIASES,
    MAX_HOST_ALIAS_NAMES,
};

use super::input::{InDnsConfig, InHostAlias};
use super::validate::{dns_subdomain, invalid, required, Invalid};
use crate::model::api;

type PodDns = (
    Option<api::DnsPolicy>,
    Option<api::PodDnsConfig>,
    Vec<api::HostAlias>,
);

pub(super) fn pod_dns(
    path: &str,
    policy: Option<String>,
    config: Option<InDnsConfig>,
    aliases: Vec<InHostAlias>,
) -> Result<PodDns, Invalid> {
    let policy = match policy.as_deref() {
        // The default, stored as none: a template spelling it out hashes as one that does not.
        None | Some("ClusterFirst") => None,
        Some("ClusterFirstWithHostNet") => Some(api::DnsPolicy::ClusterFirstWithHostNet),
        Some("Default") => Some(api::DnsPolicy::Default),
        Some("None") => Some(api::DnsPolicy::None),
        Some(p) => {
            return invalid(
                format!("{path}.dnsPolicy"),
                format!(
                    "must be ClusterFirst, ClusterFirstWithHostNet, Default or None, got {p:?}"
                ),
            )
        }
    };
    let config = config
        .map(|c| dns_config(&format!("{path}.dnsConfig"), c))
        .transpose()?;
    if policy == Some(api::DnsPolicy::None) {
        match &config {
            None => {
                return invalid(
                    format!("{path}.dnsConfig"),
                    "required when dnsPolicy is None",
                )
            }
            Some(c) if c.nameservers.is_empty() => {
                return invalid(
                    format!("{path}.dnsConfig.nameservers"),
                    "at least one nameserver is required when dnsPolicy is None",
                )
            }
            Some(_) => {}
        }
    }
    Ok((policy, config, host_aliases(path, aliases)?))
}

fn ip(path: &str, s: &str) -> Result<(), Invalid> {
    match s.parse::<IpAddr>() {
        Ok(_) => Ok(()),
        Err(_) => invalid(path, format!("{s:?} is not an IP address")),
    }
}

/// Text that goes into resolv.conf as one word: no blank or control character.
fn word(path: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid(
            path,
            format!("{s:?} must be at most {max} characters without blanks"),
        );
    }
    Ok(())
}

fn dns_config(path: &str, c: InDnsConfig) -> Result<api::PodDnsConfig, Invalid> {
    if c.nameservers.len() > MAX_DNS_NAMESERVERS {
        return invalid(
            format!("{path}.nameservers"),
            format!(
                "must not have more than {MAX_DNS_NAMESERVERS} nameservers, got {}",
                c.nameservers.len()
            ),
        );
    }
    for (i, n) in c.nameservers.iter().enumerate() {
        ip(&format!("{path}.nameservers[{i}]"), n)?;
    }
    if c.searches.len() > MAX_DNS_SEARCHES {
        return invalid(
            format!("{path}.searches"),
            format!(
                "must not have more than {MAX_DNS_SEARCHES} search paths, got {}",
                c.searches.len()
            ),
        );
    }
    let chars = c.searches.iter().map(|s| s.len() + 1).sum::<usize>();
    if chars.saturating_sub(1) > MAX_DNS_SEARCH_CHARS {
        return invalid(
            format!("{path}.searches"),
            format!("must not have more than {MAX_DNS_SEARCH_CHARS} characters (including spaces) in the search list"),
        );
    }
    for (i, s) in c.searches.iter().enumerate() {
        // A trailing dot is allowed, as in Kubernetes.
        if !dns_subdomain(s.strip_suffix('.').unwrap_or(s)) {
            return invalid(
                format!("{path}.searches[{i}]"),
                format!("{s:?} must be a lowercase RFC 1123 subdomain"),
            );
        }
    }
    if c.options.len() > MAX_DNS_OPTIONS {
        return invalid(
            format!("{path}.options"),
            format!("at most {MAX_DNS_OPTIONS} options, got {}", c.options.len()),
        );
    }
    let mut options = Vec::with_capacity(c.options.len());
    for (i, o) in c.options.into_iter().enumerate() {
        let p = format!("{path}.options[{i}]");
        let name = required(&format!("{p}.name"), o.name.filter(|n| !n.is_empty()))?;
        word(&format!("{p}.name"), &name, 64)?;
        if let Some(v) = &o.value {
            word(&format!("{p}.value"), v, 64)?;
        }
        options.push(api::PodDnsConfigOption {
            name,
            value: o.value,
        });
    }
    Ok(api::PodDnsConfig {
        nameservers: c.nameservers,
        searches: c.searches,
        options,
    })
}

fn host_aliases(path: &str, input: Vec<InHostAlias>) -> Result<Vec<api::HostAlias>, Invalid> {
    if input.len() > MAX_HOST_ALIASES {
        return invalid(
            format!("{path}.hostAliases"),
            format!("at most {MAX_HOST_ALIASES} entries, got {}", input.len()),
        );
    }
    let mut out = Vec::with_capacity(input.len());
    for (i, a) in input.into_iter().enumerate() {
        let p = format!("{path}.hostAliases[{i}]");
        let addr = required(&format!("{p}.ip"), a.ip)?;
        ip(&format!("{p}.ip"), &addr)?;
        if a.hostnames.len() > MAX_HOST_ALIAS_NAMES {
            return invalid(
                format!("{p}.hostnames"),
                format!(
                    "at most {MAX_HOST_ALIAS_NAMES} hostnames, got {}",
                    a.hostnames.len()
                ),
            );
        }
        for (j, h) in a.hostnames.iter().enumerate() {
            if !dns_subdomain(h) {
                return invalid(
                    format!("{p}.hostnames[{j}]"),
                    format!("{h:?} must be a lowercase RFC 1123 subdomain"),
                );
            }
        }
        out.push(api::HostAlias {
            ip: addr,
            hostnames: a.hostnames,
        });
    }
    Ok(out)
}
