//! The parameters of each method, read naming the field at fault, and the checks they share.

use super::ApiError;
use herald_protocol::StreamPosition;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub(super) fn params<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad(inner)
        } else {
            ApiError::bad(format!("{path}: {inner}"))
        }
    })
}

pub(super) fn require_channel(channel: &str) -> Result<(), ApiError> {
    if channel.is_empty() {
        return Err(ApiError::bad("field \"channel\" is required"));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct PublishParams {
    #[serde(default)]
    pub(super) channel: String,
    pub(super) data: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub(super) struct BroadcastParams {
    #[serde(default)]
    pub(super) channels: Vec<String>,
    pub(super) data: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub(super) struct UserChannelParams {
    #[serde(default)]
    pub(super) user: String,
    #[serde(default)]
    pub(super) channel: String,
    #[serde(default)]
    pub(super) client: Option<String>,
    #[serde(default)]
    pub(super) session: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct DisconnectParams {
    #[serde(default)]
    pub(super) user: String,
    #[serde(default)]
    pub(super) client: Option<String>,
    pub(super) disconnect: Option<DisconnectSpec>,
    #[serde(default)]
    pub(super) session: Option<String>,
    #[serde(default)]
    pub(super) whitelist: Option<Vec<String>>,
}

/// Centrifugo's `session` (and `disconnect`'s `whitelist`) narrow whom a call acts on. Herald has
/// neither, and ignoring them would act on more connections than asked: they are refused.
pub(super) fn refuse_narrowing(
    session: Option<&str>,
    whitelist: &[String],
) -> Result<(), ApiError> {
    if session.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad(
            "field \"session\" is not supported (Herald has no sessions): use \"client\"",
        ));
    }
    if !whitelist.is_empty() {
        return Err(ApiError::bad(
            "field \"whitelist\" is not supported: disconnect the connections one by one with \"client\"",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct RefreshParams {
    #[serde(default)]
    pub(super) user: String,
    #[serde(default)]
    pub(super) client: Option<String>,
    #[serde(default)]
    pub(super) session: Option<String>,
    #[serde(default)]
    pub(super) expired: Option<bool>,
    /// Unix seconds; absent or 0: the connection no longer expires.
    #[serde(default)]
    pub(super) expire_at: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct DisconnectSpec {
    pub(super) code: u16,
    #[serde(default)]
    pub(super) reason: String,
}

#[derive(Deserialize)]
pub(super) struct ChannelParams {
    #[serde(default)]
    pub(super) channel: String,
}

#[derive(Deserialize)]
pub(super) struct HistoryParams {
    #[serde(default)]
    pub(super) channel: String,
    #[serde(default)]
    pub(super) limit: i32,
    pub(super) since: Option<StreamPosition>,
    #[serde(default)]
    pub(super) reverse: bool,
}

#[derive(Deserialize)]
pub(super) struct ConnectionsParams {
    #[serde(default)]
    pub(super) user: String,
    /// Centrifugo's filter expression: not supported, refused unless empty.
    #[serde(default)]
    pub(super) expression: String,
}

#[derive(Deserialize)]
pub(super) struct ChannelsParams {
    #[serde(default)]
    pub(super) pattern: String,
}
