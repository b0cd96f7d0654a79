//! API tokens and the join tokens that enroll devices: what `baton token` sends and
//! reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::payload::json_bodies;

/// What an API token may do (see `crate::security::auth::authorize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including managing tokens.
    Admin,
    /// `GET` routes only, and not the token list.
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "read-only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// What `baton token list` shows of an API token: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub creation_timestamp: String,
    /// The namespaces the token is limited to; empty: every namespace and the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// `POST /api/v1/tokens`: a new API token's name and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
    /// Limits the token to these namespaces (`baton token create --namespace`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// A new API token, with its secret: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// `POST /api/v1/tokens/join`: a new join token's life, uses, and the labels and node
/// name it gives (see `crate::security::enroll`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub ttl_seconds: u64,
    #[serde(default = "one")]
    pub uses: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_name: Option<String>,
}

fn one() -> u32 {
    1
}

/// What `baton token list` shows of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenInfo {
    pub id: String,
    pub expires: u64,
    pub uses_left: u32,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub creation_timestamp: String,
}

/// A new join token: the token string (shown only this once) and what is kept of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedJoinToken {
    pub token: String,
    pub info: JoinTokenInfo,
}

json_bodies!(
    TokenInfo,
    TokenRequest,
    CreatedToken,
    JoinTokenRequest,
    JoinTokenInfo,
    CreatedJoinToken,
);
