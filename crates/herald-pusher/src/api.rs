//! The HTTP API: routes, request bodies with their limits, `info` attributes and responses.
//!
//! | route | body / query | answer |
//! | --- | --- | --- |
//! | `POST /apps/<id>/events` | `{name, data, channels \| channel, socket_id?, info?}` | `{}`, or `{"channels": {name: attributes}}` with `info` |
//! | `POST /apps/<id>/batch_events` | `{"batch": [{name, data, channel, socket_id?, info?}]}` | `{}`, or `{"batch": [attributes]}` |
//! | `GET /apps/<id>/channels` | `filter_by_prefix?`, `info?` | `{"channels": {name: attributes}}` |
//! | `GET /apps/<id>/channels/<channel>` | `info?` | `{"occupied", "user_count"?, "subscription_count"?, "cache"?}` |
//! | `GET /apps/<id>/channels/<channel>/users` | — | `{"users": [{"id"}]}` (presence only) |
//! | `POST /apps/<id>/users/<user id>/terminate_connections` | `{}` | `{}` |
//!
//! Limits ([`ApiLimits`], Pusher's defaults): 100 channels per event, 10 events per batch, event
//! names of 200 bytes, data of 10 KiB (an oversized `data` answers 413, every other refusal 400).
//! `data` is a string (the SDKs JSON-encode objects before sending); any other JSON value is
//! taken as its JSON text. Every error names the body field at fault (`batch[2].channel`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::channel::{ChannelKind, ChannelName};
use crate::http_auth::percent_decode;
use crate::incoming::wire_data;
use crate::socket_id::SocketId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub max_channels_per_event: usize,
    pub max_batch_size: usize,
    pub max_event_name_len: usize,
    pub max_data_bytes: usize,
    pub max_channel_name_len: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_channels_per_event: 100,
            max_batch_size: 10,
            max_event_name_len: 200,
            max_data_bytes: 10 * 1024,
            max_channel_name_len: crate::channel::MAX_CHANNEL_NAME_LEN,
        }
    }
}

/// One event to publish, from `/events` or one entry of `/batch_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerEvent {
    pub name: String,
    /// The data string subscribers receive.
    pub data: String,
    pub channels: Vec<ChannelName>,
    /// The connection that must not receive the event (usually the one that caused it).
    pub socket_id: Option<SocketId>,
    pub info: InfoAttributes,
}

/// The attributes an `info` parameter asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InfoAttributes {
    pub user_count: bool,
    pub subscription_count: bool,
    pub cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("body is not a JSON object: {0}")]
    Json(String),
    #[error("{0} is missing")]
    Missing(String),
    #[error("{field} {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field} has {count} entries, at most {max} are allowed")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    #[error("{field} is {len} bytes long, at most {max} are allowed")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field} is {len} bytes, larger than the {max} bytes allowed")]
    DataTooLarge {
        field: String,
        len: usize,
        max: usize,
    },
}

impl ApiError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The request field at fault (`body` when the body is not JSON).
    pub fn field(&self) -> &str {
        match self {
            ApiError::Json(_) => "body",
            ApiError::Missing(field)
            | ApiError::Invalid { field, .. }
            | ApiError::TooMany { field, .. }
            | ApiError::TooLong { field, .. }
            | ApiError::DataTooLarge { field, .. } => field,
        }
    }

    /// 413 for oversized data, as Pusher answers; 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::DataTooLarge { .. } => 413,
            _ => 400,
        }
    }
}

type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// Reads the body of `POST /apps/<id>/events`.
pub fn parse_trigger(body: &[u8], limits: &ApiLimits) -> Result<TriggerEvent, ApiError> {
    let fields = object(body)?;
    let channels = match (fields.get("channels"), fields.get("channel")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "channels",
                "and channel are both given; give one of them",
            ))
        }
        (Some(list), None) => channel_list("channels", list, limits)?,
        (None, Some(one)) => vec![channel_field("channel", one, limits)?],
        (None, None) => return Err(ApiError::Missing("channels".into())),
    };
    event(&fields, "", channels, limits)
}

/// Reads the body of `POST /apps/<id>/batch_events`; each event has exactly one channel.
pub fn parse_batch(body: &[u8], limits: &ApiLimits) -> Result<Vec<TriggerEvent>, ApiError> {
    let fields = object(body)?;
    let batch = fields
        .get("batch")
        .ok_or_else(|| ApiError::Missing("batch".into()))?;
    let items: Vec<&RawValue> = serde_json::from_str(batch.get())
        .map_err(|_| ApiError::invalid("batch", "must be an array of events"))?;
    if items.len() > limits.max_batch_size {
        return Err(ApiError::TooMany {
            field: "batch".into(),
            count: items.len(),
            max: limits.max_batch_size,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let prefix = format!("batch[{i}].");
            let fields: Fields<'_> = serde_json::from_str(item.get())
                .map_err(|_| ApiError::invalid(format!("batch[{i}]"), "must be an object"))?;
            let channel = fields
                .get("channel")
                .ok_or_else(|| ApiError::Missing(format!("{prefix}channel")))?;
            let channel = channel_field(&format!("{prefix}channel"), channel, limits)?;
            event(&fields, &prefix, vec![channel], limits)
        })
        .collect()
}

fn object(body: &[u8]) -> Result<Fields<'_>, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Json(e.to_string()))
}

fn event(
    fields: &Fields<'_>,
    prefix: &str,
    channels: Vec<ChannelName>,
    limits: &ApiLimits,
) -> Result<TriggerEvent, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let name = string(fields, &field("name"), "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::Missing(field("name")))?;
    if name.len() > limits.max_event_name_len {
        return Err(ApiError::TooLong {
            field: field("name"),
            len: name.len(),
            max: limits.max_event_name_len,
        });
    }
    let raw_data = fields.get("data").copied().filter(|d| d.get() != "null");
    let data = wire_data(raw_data)
        .map_err(|reason| ApiError::invalid(field("data"), reason))?
        .ok_or_else(|| ApiError::Missing(field("data")))?;
    if data.len() > limits.max_data_bytes {
        return Err(ApiError::DataTooLarge {
            field: field("data"),
            len: data.len(),
            max: limits.max_data_bytes,
        });
    }
    if channels.len() > 1 && channels.iter().any(ChannelName::is_encrypted) {
        // The payload is encrypted with a per-channel key, so one ciphertext fits one channel.
        return Err(ApiError::invalid(
            field("channels"),
            "may hold only one channel when it is a private-encrypted- channel",
        ));
    }
    let socket_id = string(fields, &field("socket_id"), "socket_id")?
        .map(|s| SocketId::parse(&s))
        .transpose()
        .map_err(|e| ApiError::invalid(field("socket_id"), e.to_string()))?;
    let info = match string(fields, &field("info"), "info")? {
        Some(info) => InfoAttributes::parse(&info).map_err(|e| match e {
            ApiError::Invalid { reason, .. } => ApiError::invalid(field("info"), reason),
            other => other,
        })?,
        None => InfoAttributes::default(),
    };
    Ok(TriggerEvent {
        name,
        data,
        channels,
        socket_id,
        info,
    })
}

/// A string field; `null` counts as absent.
fn string(fields: &Fields<'_>, field: &str, key: &str) -> Result<Option<String>, ApiError> {
    match fields.get(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| ApiError::invalid(field, "must be a string")),
    }
}

fn channel_field(field: &str, raw: &RawValue, limits: &ApiLimits) -> Result<ChannelName, ApiError> {
    let name: String = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::invalid(field, "must be a string"))?;
    ChannelName::parse_with_max_len(&name, limits.max_channel_name_len)
        .map_err(|e| ApiError::invalid(field, format!("{name:?}: {e}")))
}

fn channel_list(
    field: &str,
    raw: &RawValue,
    limits: &ApiLimits,
) -> Result<Vec<ChannelName>, ApiError> {
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::invalid(field, "must be an array of channel names"))?;
    if items.is_empty() {
        return Err(ApiError::invalid(field, "must name at least one channel"));
    }
    if items.len() > limits.max_channels_per_event {
        return Err(ApiError::TooMany {
            field: field.into(),
            count: items.len(),
            max: limits.max_channels_per_event,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| channel_field(&format!("{field}[{i}]"), item, limits))
        .collect()
}

impl InfoAttributes {
    /// Parses a comma-separated `info` value: `user_count`, `subscription_count`, `cache`.
    pub fn parse(info: &str) -> Result<Self, ApiError> {
        let mut attributes = InfoAttributes::default();
        for name in info.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "user_count" => attributes.user_count = true,
                "subscription_count" => attributes.subscription_count = true,
                "cache" => attributes.cache = true,
                other => {
                    let other: String = other.chars().take(32).collect();
                    return Err(ApiError::invalid(
                        "info",
                        format!(
                            "asks for {other:?}; known attributes are user_count, subscription_count and cache"
                        ),
                    ));
                }
            }
        }
        Ok(attributes)
    }

    pub fn is_empty(&self) -> bool {
        !(self.user_count || self.subscription_count || self.cache)
    }

    /// The attributes of one channel, given its counts, for trigger and channel-list answers.
    /// `user_count` is reported for presence channels only, the way Pusher lists it.
    pub fn attributes(
        &self,
        channel: &ChannelName,
        user_count: u64,
        subscription_count: u64,
    ) -> ChannelAttributes {
        ChannelAttributes {
            user_count: (self.user_count && channel.is_presence()).then_some(user_count),
            subscription_count: self.subscription_count.then_some(subscription_count),
        }
    }
}

/// Checks the `info` of `GET /channels`: `user_count` only when `filter_by_prefix` limits the
/// list to presence channels, and no `cache`.
pub fn check_channels_query(
    info: &InfoAttributes,
    filter_by_prefix: Option<&str>,
) -> Result<(), ApiError> {
    if info.user_count && !filter_by_prefix.is_some_and(|p| p.starts_with("presence-")) {
        return Err(ApiError::invalid(
            "info",
            "asks for user_count, which needs filter_by_prefix=presence-",
        ));
    }
    if info.cache {
        return Err(ApiError::invalid(
            "info",
            "asks for cache, which only GET /channels/<channel> answers",
        ));
    }
    Ok(())
}

/// Checks the `info` of `GET /channels/<channel>`: `user_count` needs a presence channel and
/// `cache` a cache channel.
pub fn check_channel_query(info: &InfoAttributes, channel: &ChannelName) -> Result<(), ApiError> {
    if info.user_count && !channel.is_presence() {
        return Err(ApiError::invalid(
            "info",
            "asks for user_count, which only presence channels have",
        ));
    }
    if info.cache && !channel.is_cache() {
        return Err(ApiError::invalid(
            "info",
            "asks for cache, which only cache channels have",
        ));
    }
    Ok(())
}

/// `GET /channels/<channel>/users` answers for presence channels only.
pub fn check_users_query(channel: &ChannelName) -> Result<(), ApiError> {
    if channel.kind() == ChannelKind::Presence {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "channel_name",
            "is not a presence channel; only presence channels have users",
        ))
    }
}

/// Attributes of one channel; absent ones are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChannelAttributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<u64>,
}

/// The answer to `POST /events`: `{}` without `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TriggerResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeMap<String, ChannelAttributes>>,
}

/// The answer to `POST /batch_events`: `{}` without `info`, else one entry per event, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<Vec<ChannelAttributes>>,
}

/// The answer to `GET /channels`: occupied channels only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelsResponse {
    pub channels: BTreeMap<String, ChannelAttributes>,
}

/// The answer to `GET /channels/<channel>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelResponse {
    pub occupied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<u64>,
    /// Left out unless asked for; `Some(None)` is sent as `null` (nothing cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<Option<CachedEvent>>,
}

/// The event a cache channel holds, with its remaining time to live in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub data: String,
    pub ttl: u64,
}

/// The answer to `GET /channels/<channel>/users`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsersResponse {
    pub users: Vec<UserEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserEntry {
    pub id: String,
}

/// An HTTP API endpoint; path parts are percent-decoded but not validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Trigger { app_id: String },
    BatchTrigger { app_id: String },
    Channels { app_id: String },
    Channel { app_id: String, channel: String },
    ChannelUsers { app_id: String, channel: String },
    TerminateUserConnections { app_id: String, user_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound => 404,
            RouteError::MethodNotAllowed => 405,
        }
    }
}

impl Route {
    /// Matches a request's method and path (without the query string).
    pub fn parse(method: &str, path: &str) -> Result<Route, RouteError> {
        let rest = path.strip_prefix("/apps/").ok_or(RouteError::NotFound)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(RouteError::NotFound);
        }
        let decode = |s: &str| percent_decode(s, false);
        let app_id = decode(parts[0]);
        let (route, allowed) = match parts[1..] {
            ["events"] => (Route::Trigger { app_id }, "POST"),
            ["batch_events"] => (Route::BatchTrigger { app_id }, "POST"),
            ["channels"] => (Route::Channels { app_id }, "GET"),
            ["channels", channel] => (
                Route::Channel {
                    app_id,
                    channel: decode(channel),
                },
                "GET",
            ),
            ["channels", channel, "users"] => (
                Route::ChannelUsers {
                    app_id,
                    channel: decode(channel),
                },
                "GET",
            ),
            ["users", user_id, "terminate_connections"] => (
                Route::TerminateUserConnections {
                    app_id,
                    user_id: decode(user_id),
                },
                "POST",
            ),
            _ => return Err(RouteError::NotFound),
        };
        if method.eq_ignore_ascii_case(allowed) {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> ApiLimits {
        ApiLimits::default()
    }

    #[test]
    fn trigger_from_the_worked_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let t = parse_trigger(body, &limits()).expect("valid");
        assert_eq!(t.name, "foo");
        assert_eq!(t.data, r#"{"some":"data"}"#);
        assert_eq!(
            t.channels,
            [ChannelName::parse("project-3").expect("valid")]
        );
        assert_eq!((t.socket_id, t.info), (None, InfoAttributes::default()));
    }

    #[test]
    fn trigger_with_channel_socket_id_and_info() {
        let body = br#"{"name":"e","channel":"presence-a","data":"x","socket_id":"1.2","info":"user_count,subscription_count"}"#;
        let t = parse_trigger(body, &limits()).expect("valid");
        assert_eq!(t.channels[0].as_str(), "presence-a");
        assert_eq!(t.socket_id, Some(SocketId::parse("1.2").expect("valid")));
        assert!(t.info.user_count && t.info.subscription_count && !t.info.cache);
        // Objects as data are taken as their JSON text.
        let t = parse_trigger(br#"{"name":"e","channel":"a","data":{"b": 1}}"#, &limits())
            .expect("valid");
        assert_eq!(t.data, r#"{"b": 1}"#);
        // The node SDK's sendToUser triggers on the user's reserved channel.
        let t = parse_trigger(
            br##"{"name":"e","channels":["#server-to-user-42"],"data":"x"}"##,
            &limits(),
        )
        .expect("valid");
        assert_eq!(t.channels[0].server_to_user_id(), Some("42"));
    }

    #[test]
    fn trigger_limits() {
        let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let body = json!({"name": "e", "channels": channels, "data": "x"}).to_string();
        let err = parse_trigger(body.as_bytes(), &limits()).unwrap_err();
        assert_eq!(
            err,
            ApiError::TooMany {
                field: "channels".into(),
                count: 101,
                max: 100
            }
        );
        assert_eq!(err.status(), 400);

        let body = json!({"name": "e".repeat(201), "channel": "a", "data": "x"}).to_string();
        let err = parse_trigger(body.as_bytes(), &limits()).unwrap_err();
        assert_eq!((err.field(), err.status()), ("name", 400));

        let body = json!({"name": "e", "channel": "a", "data": "x".repeat(10 * 1024)}).to_string();
        assert!(parse_trigger(body.as_bytes(), &limits()).is_ok());
        let body =
            json!({"name": "e", "channel": "a", "data": "x".repeat(10 * 1024 + 1)}).to_string();
        let err = parse_trigger(body.as_bytes(), &limits()).unwrap_err();
        assert_eq!((err.field(), err.status()), ("data", 413));
        let small = ApiLimits {
            max_data_bytes: 4,
            ..limits()
        };
        let err =
            parse_trigger(br#"{"name":"e","channel":"a","data":"12345"}"#, &small).unwrap_err();
        assert_eq!(
            err,
            ApiError::DataTooLarge {
                field: "data".into(),
                len: 5,
                max: 4
            }
        );
    }

    #[test]
    fn trigger_refusals_name_the_field() {
        let field = |body: &str| {
            let err = parse_trigger(body.as_bytes(), &limits()).unwrap_err();
            (err.field().to_string(), err.status())
        };
        assert_eq!(field("nope"), ("body".into(), 400));
        assert_eq!(field(r#"{"channel":"a","data":"x"}"#), ("name".into(), 400));
        assert_eq!(
            field(r#"{"name":"","channel":"a","data":"x"}"#),
            ("name".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":5,"channel":"a","data":"x"}"#),
            ("name".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","data":"x"}"#),
            ("channels".into(), 400)
        );
        assert_eq!(field(r#"{"name":"e","channel":"a"}"#), ("data".into(), 400));
        assert_eq!(
            field(r#"{"name":"e","channel":"a","data":null}"#),
            ("data".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channels":[],"data":"x"}"#),
            ("channels".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channels":"a","data":"x"}"#),
            ("channels".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channels":["a","b c"],"data":"x"}"#),
            ("channels[1]".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channel":"a","channels":["a"],"data":"x"}"#),
            ("channels".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channel":"a","data":"x","socket_id":"1"}"#),
            ("socket_id".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channel":"a","data":"x","info":"bogus"}"#),
            ("info".into(), 400)
        );
        assert_eq!(
            field(r#"{"name":"e","channels":["private-encrypted-a","b"],"data":"x"}"#),
            ("channels".into(), 400)
        );
        let err = parse_trigger(
            br#"{"name":"e","channels":["a","b c"],"data":"x"}"#,
            &limits(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("channels[1] \"b c\": "),
            "{err}"
        );
    }

    #[test]
    fn batches() {
        let body = br#"{"batch":[{"name":"a","channel":"c1","data":"1"},{"name":"b","channel":"presence-c2","data":"2","socket_id":"3.4","info":"user_count"}]}"#;
        let events = parse_batch(body, &limits()).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].channels[0].as_str(), "presence-c2");
        assert!(events[1].info.user_count);

        let items: Vec<_> = (0..11)
            .map(|i| json!({"name": "e", "channel": format!("c{i}"), "data": "x"}))
            .collect();
        let body = json!({"batch": items}).to_string();
        let err = parse_batch(body.as_bytes(), &limits()).unwrap_err();
        assert_eq!(
            err,
            ApiError::TooMany {
                field: "batch".into(),
                count: 11,
                max: 10
            }
        );

        let field = |body: &str| {
            parse_batch(body.as_bytes(), &limits())
                .unwrap_err()
                .field()
                .to_string()
        };
        assert_eq!(field("{}"), "batch");
        assert_eq!(field(r#"{"batch":{}}"#), "batch");
        assert_eq!(field(r#"{"batch":[1]}"#), "batch[0]");
        assert_eq!(
            field(r#"{"batch":[{"name":"a","channel":"c","data":"1"},{"name":"b","data":"2"}]}"#),
            "batch[1].channel"
        );
        assert_eq!(
            field(r#"{"batch":[{"name":"a","channel":"c"}]}"#),
            "batch[0].data"
        );
        assert_eq!(
            field(r#"{"batch":[{"channel":"c","data":"1","name":"a","info":"x"}]}"#),
            "batch[0].info"
        );
        assert!(parse_batch(br#"{"batch":[]}"#, &limits())
            .expect("valid")
            .is_empty());
    }

    #[test]
    fn info_attributes() {
        assert_eq!(
            InfoAttributes::parse("").expect("valid"),
            InfoAttributes::default()
        );
        assert!(InfoAttributes::parse("").expect("valid").is_empty());
        let all = InfoAttributes::parse("user_count, subscription_count,cache").expect("valid");
        assert!(all.user_count && all.subscription_count && all.cache);
        assert!(InfoAttributes::parse("members").is_err());

        let presence = ChannelName::parse("presence-a").expect("valid");
        let public = ChannelName::parse("a").expect("valid");
        let cache = ChannelName::parse("cache-a").expect("valid");
        let users = InfoAttributes {
            user_count: true,
            ..Default::default()
        };
        assert!(check_channels_query(&users, Some("presence-")).is_ok());
        assert!(check_channels_query(&users, None).is_err());
        assert!(check_channels_query(&users, Some("private-")).is_err());
        assert!(check_channel_query(&users, &presence).is_ok());
        assert!(check_channel_query(&users, &public).is_err());
        let cached = InfoAttributes {
            cache: true,
            ..Default::default()
        };
        assert!(check_channel_query(&cached, &cache).is_ok());
        assert!(check_channel_query(&cached, &public).is_err());
        assert!(check_channels_query(&cached, None).is_err());
        assert!(check_users_query(&presence).is_ok());
        assert_eq!(check_users_query(&public).map_err(|e| e.status()), Err(400));
    }

    #[test]
    fn responses_serialize_as_documented() {
        assert_eq!(
            serde_json::to_string(&TriggerResponse::default()).expect("json"),
            "{}"
        );
        assert_eq!(
            serde_json::to_string(&BatchResponse::default()).expect("json"),
            "{}"
        );

        let info = InfoAttributes::parse("user_count,subscription_count").expect("valid");
        let mut channels = BTreeMap::new();
        for (name, users, subs) in [
            ("presence-foobar", 42, 51),
            ("presence-another", 123, 140),
            ("another", 0, 13),
        ] {
            let channel = ChannelName::parse(name).expect("valid");
            channels.insert(name.to_string(), info.attributes(&channel, users, subs));
        }
        let response = TriggerResponse {
            channels: Some(channels),
        };
        assert_eq!(
            serde_json::to_value(&response).expect("json"),
            json!({"channels": {
                "presence-foobar": {"user_count": 42, "subscription_count": 51},
                "presence-another": {"user_count": 123, "subscription_count": 140},
                "another": {"subscription_count": 13}
            }})
        );

        let batch = BatchResponse {
            batch: Some(vec![
                ChannelAttributes {
                    user_count: Some(42),
                    subscription_count: Some(51),
                },
                ChannelAttributes::default(),
                ChannelAttributes {
                    user_count: None,
                    subscription_count: Some(13),
                },
            ]),
        };
        assert_eq!(
            serde_json::to_value(&batch).expect("json"),
            json!({"batch": [{"user_count": 42, "subscription_count": 51}, {}, {"subscription_count": 13}]})
        );

        let one = ChannelResponse {
            occupied: true,
            user_count: Some(42),
            subscription_count: Some(42),
            cache: Some(Some(CachedEvent {
                event: None,
                data: "event data".into(),
                ttl: 60,
            })),
        };
        assert_eq!(
            serde_json::to_value(&one).expect("json"),
            json!({"occupied": true, "user_count": 42, "subscription_count": 42, "cache": {"data": "event data", "ttl": 60}})
        );
        let empty_cache = ChannelResponse {
            cache: Some(None),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&empty_cache).expect("json"),
            json!({"occupied": false, "cache": null})
        );
        let users = UsersResponse {
            users: vec![UserEntry { id: "1".into() }, UserEntry { id: "2".into() }],
        };
        assert_eq!(
            serde_json::to_value(&users).expect("json"),
            json!({"users": [{"id": "1"}, {"id": "2"}]})
        );
    }

    #[test]
    fn routes() {
        let app = || "3".to_string();
        assert_eq!(
            Route::parse("POST", "/apps/3/events"),
            Ok(Route::Trigger { app_id: app() })
        );
        assert_eq!(
            Route::parse("POST", "/apps/3/batch_events"),
            Ok(Route::BatchTrigger { app_id: app() })
        );
        assert_eq!(
            Route::parse("GET", "/apps/3/channels"),
            Ok(Route::Channels { app_id: app() })
        );
        assert_eq!(
            Route::parse("GET", "/apps/3/channels/presence-a%40b"),
            Ok(Route::Channel {
                app_id: app(),
                channel: "presence-a@b".into()
            })
        );
        assert_eq!(
            Route::parse("GET", "/apps/3/channels/presence-a/users"),
            Ok(Route::ChannelUsers {
                app_id: app(),
                channel: "presence-a".into()
            })
        );
        assert_eq!(
            Route::parse("POST", "/apps/3/users/u%201/terminate_connections"),
            Ok(Route::TerminateUserConnections {
                app_id: app(),
                user_id: "u 1".into()
            })
        );
        assert_eq!(
            Route::parse("GET", "/apps/3/events"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            Route::parse("POST", "/apps/3/channels"),
            Err(RouteError::MethodNotAllowed)
        );
        for path in [
            "/",
            "/apps/3",
            "/apps//events",
            "/apps/3/events/",
            "/apps/3/nope",
            "/app/3/events",
        ] {
            assert_eq!(
                Route::parse("POST", path),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
        assert_eq!(RouteError::MethodNotAllowed.status(), 405);
    }
}
