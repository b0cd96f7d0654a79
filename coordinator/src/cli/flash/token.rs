//! The join token a card carries: one minted for the device through the API (single
//! use, bound to its node name and labels, with an expiry), or an existing one checked
//! through the API's join-token list before anything is written.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_proto::enroll::JoinToken;

use super::super::client::Client;
use super::super::CliError;
use super::FlashError;
use crate::contract::tokens::{JoinTokenInfo, JoinTokenRequest};
use crate::contract::{routes, NoBody};

/// A token string of the real length, for the space check before the token is minted
/// (the id, the secret and the CA hash have fixed lengths).
pub(super) fn placeholder() -> String {
    JoinToken {
        id: "0".repeat(16),
        secret: "0".repeat(32),
        ca_sha256: "0".repeat(64),
    }
    .render()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks an existing token: well-formed, known to the coordinator, not used up, not
/// expired, and not bound to another node. The list the API returns omits used-up
/// tokens, so "unknown" and "used up" read the same here.
pub(super) async fn check_existing(
    client: &Client,
    token: &str,
    node: &str,
) -> Result<JoinTokenInfo, CliError> {
    let parsed = JoinToken::parse(token).map_err(|_| {
        FlashError::Token(
            "--join-token is not a join token (bjt1.<id>.<secret>.<ca hash>, from `baton token create`)"
                .into(),
        )
    })?;
    let list = client
        .call(&routes::ListJoinTokens {}, &NoBody)
        .await?
        .items;
    let info = list
        .into_iter()
        .find(|t| t.id == parsed.id)
        .ok_or_else(|| {
            FlashError::Token(format!(
                "join token {} is unknown to the coordinator or already used up (each use enrolls one device): \
                 leave out --join-token and flash mints a fresh one",
                parsed.id
            ))
        })?;
    if info.uses_left == 0 {
        return Err(FlashError::Token(format!("join token {} is already used up", info.id)).into());
    }
    if info.expires <= now() {
        return Err(FlashError::Token(format!(
            "join token {} has expired: leave out --join-token and flash mints a fresh one",
            info.id
        ))
        .into());
    }
    if let Some(bound) = &info.node_name {
        if bound != node {
            return Err(FlashError::Token(format!(
                "join token {} enrolls only node {bound:?}, not {node:?}",
                info.id
            ))
            .into());
        }
    }
    Ok(info)
}

/// Mints a single-use token for `node`, with its labels, valid for `ttl`.
pub(super) async fn mint(
    client: &Client,
    node: &str,
    labels: &BTreeMap<String, String>,
    ttl: Duration,
) -> Result<(String, JoinTokenInfo), CliError> {
    let request = JoinTokenRequest {
        ttl_seconds: ttl.as_secs().max(1),
        uses: 1,
        labels: labels.clone(),
        node_name: Some(node.to_owned()),
    };
    let created = client.call(&routes::CreateJoinToken {}, &request).await?;
    Ok((created.token, created.info))
}

/// Deletes a token minted for a card that could not be written, so it enrolls nothing.
pub(super) async fn revoke(client: &Client, id: &str) {
    let route = routes::DeleteJoinToken { id: id.to_owned() };
    if let Err(e) = client.call(&route, &NoBody).await {
        tracing::warn!(token = %id, error = %e, "cannot delete the join token minted for a card that was not written: delete it with `baton token delete`");
    }
}

/// How long until `info` expires, for the report.
pub(super) fn expires_in(info: &JoinTokenInfo) -> String {
    let left = info.expires.saturating_sub(now());
    humantime::format_duration(Duration::from_secs(left)).to_string()
}
