//! The server HTTP API: `POST /api/<method>` with a JSON body, Centrifugo-compatible.
//!
//! Replies are `{"result": {...}}` or `{"error": {"code": N, "message": "..."}}`. Method-level errors
//! answer HTTP 200 with an error object (as Centrifugo does, so existing API clients work); transport
//! problems use HTTP statuses: 400 unparsable body, 401 missing or wrong key, 404 unknown method,
//! 413 body too large.

pub mod request;

use crate::brokers::Control;
use crate::core::history::history_limit;
use crate::core::history::HistoryQuery;
use crate::core::metrics::{MethodLabel, ReasonLabel};
use crate::edges::devices::queries::{self, QueryError};
use crate::edges::devices::DeviceIngest;
use crate::node::PublishError;
use crate::node::{broker_error, Node};
use herald_protocol::{ErrorCode, StreamPosition};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An API error: a protocol code with a message that says what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    fn new(code: ErrorCode) -> ApiError {
        ApiError {
            code,
            message: code.message().to_string(),
        }
    }

    fn bad(detail: impl std::fmt::Display) -> ApiError {
        ApiError {
            code: ErrorCode::BadRequest,
            message: format!("bad request: {detail}"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"error": {"code": self.code.code(), "message": self.message}})
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        ApiError::new(code)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "connections",
    "batch",
    "devices",
    "device_positions",
    "device_track",
];

fn params<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ApiError> {
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

fn require_channel(channel: &str) -> Result<(), ApiError> {
    if channel.is_empty() {
        return Err(ApiError::bad("field \"channel\" is required"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct PublishParams {
    #[serde(default)]
    channel: String,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct BroadcastParams {
    #[serde(default)]
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct UserChannelParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    session: Option<String>,
}

#[derive(Deserialize)]
struct DisconnectParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    disconnect: Option<DisconnectSpec>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    whitelist: Option<Vec<String>>,
}

/// Centrifugo's `session` (and `disconnect`'s `whitelist`) narrow whom a call acts on. Herald has
/// neither, and ignoring them would act on more connections than asked: they are refused.
fn refuse_narrowing(session: Option<&str>, whitelist: &[String]) -> Result<(), ApiError> {
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
struct RefreshParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    expired: Option<bool>,
    /// Unix seconds; absent or 0: the connection no longer expires.
    #[serde(default)]
    expire_at: Option<i64>,
}

#[derive(Deserialize)]
struct DisconnectSpec {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct ChannelParams {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct HistoryParams {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct ConnectionsParams {
    #[serde(default)]
    user: String,
    /// Centrifugo's filter expression: not supported, refused unless empty.
    #[serde(default)]
    expression: String,
}

#[derive(Deserialize)]
struct ChannelsParams {
    #[serde(default)]
    pattern: String,
}

/// Runs one API method and returns the response body: `{"result": ...}`, or for a `batch`
/// `{"replies": [...]}` at the top as Centrifugo answers it (its clients, `cent` among them, read
/// `replies` there). `Err(None)` is an unknown method. A batch writes its replies one by one into
/// the body, so their trees never pile up.
pub async fn handle(
    node: &Node,
    devices: Option<&DeviceIngest>,
    method: &str,
    raw: &RawValue,
) -> Result<String, Option<ApiError>> {
    if method == "batch" {
        node.metrics
            .api_requests
            .get_or_create(&MethodLabel { method: "batch" })
            .inc();
        return Box::pin(batch(node, devices, raw)).await.map_err(Some);
    }
    let result = call(node, devices, method, raw).await?.to_string();
    let mut body = String::with_capacity(result.len() + 11);
    body.push_str("{\"result\":");
    body.push_str(&result);
    body.push('}');
    Ok(body)
}

/// Runs one API method. `Err(None)` is an unknown method.
pub async fn call(
    node: &Node,
    devices: Option<&DeviceIngest>,
    method: &str,
    raw: &RawValue,
) -> Result<Value, Option<ApiError>> {
    node.metrics
        .api_requests
        .get_or_create(&MethodLabel {
            method: METHODS
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("unknown"),
        })
        .inc();
    let result = match method {
        "publish" => publish(node, params(raw)?).await,
        "broadcast" => broadcast(node, params(raw)?).await,
        "subscribe" => control(node, params(raw)?, true).await,
        "unsubscribe" => control(node, params(raw)?, false).await,
        "disconnect" => disconnect(node, params(raw)?).await,
        "refresh" => refresh(node, params(raw)?).await,
        "presence" => presence(node, params(raw)?).await,
        "presence_stats" => presence_stats(node, params(raw)?).await,
        "history" => history(node, params(raw)?).await,
        "history_remove" => history_remove(node, params(raw)?).await,
        "channels" => Ok(channels(node, params(raw)?)),
        "info" => info(node).await,
        "connections" => connections(node, params(raw)?),
        "batch" => Err(ApiError::bad("batch cannot be nested")),
        "devices" => queries::list(devices).map_err(ApiError::from),
        "device_positions" => queries::positions(devices).await.map_err(ApiError::from),
        "device_track" => queries::track(devices, params(raw)?)
            .await
            .map_err(ApiError::from),
        _ => return Err(None),
    };
    result.map_err(Some)
}

async fn publish(node: &Node, p: PublishParams) -> Result<Value, ApiError> {
    require_channel(&p.channel)?;
    let data = p
        .data
        .ok_or_else(|| ApiError::bad("field \"data\" is required"))?;
    let position = node.publish(&p.channel, data, None, p.tags, "api").await?;
    Ok(position_json(&position))
}

fn position_json(position: &StreamPosition) -> Value {
    let mut out = serde_json::Map::new();
    if position.offset > 0 {
        out.insert("offset".into(), json!(position.offset));
        out.insert("epoch".into(), json!(position.epoch));
    }
    Value::Object(out)
}

async fn broadcast(node: &Node, p: BroadcastParams) -> Result<Value, ApiError> {
    if p.channels.is_empty() {
        return Err(ApiError::bad(
            "field \"channels\" must list at least one channel",
        ));
    }
    let data = p
        .data
        .ok_or_else(|| ApiError::bad("field \"data\" is required"))?;
    let mut responses = Vec::with_capacity(p.channels.len());
    for channel in &p.channels {
        let response = match node
            .publish(channel, data.clone(), None, p.tags.clone(), "api")
            .await
        {
            Ok(position) => json!({"result": position_json(&position)}),
            Err(e) => ApiError::from(e).to_json(),
        };
        responses.push(response);
    }
    Ok(json!({"responses": responses}))
}

async fn control(node: &Node, p: UserChannelParams, subscribe: bool) -> Result<Value, ApiError> {
    if p.user.is_empty() && p.client.is_none() {
        return Err(ApiError::bad("field \"user\" (or \"client\") is required"));
    }
    refuse_narrowing(p.session.as_deref(), &[])?;
    require_channel(&p.channel)?;
    node.namespaces.resolve(&p.channel)?;
    let control = if subscribe {
        Control::Subscribe {
            user: p.user,
            client: p.client,
            channel: p.channel,
        }
    } else {
        Control::Unsubscribe {
            user: p.user,
            client: p.client,
            channel: p.channel,
        }
    };
    node.broker
        .publish_control(control)
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

async fn disconnect(node: &Node, p: DisconnectParams) -> Result<Value, ApiError> {
    if p.user.is_empty() && p.client.is_none() {
        return Err(ApiError::bad("field \"user\" (or \"client\") is required"));
    }
    refuse_narrowing(
        p.session.as_deref(),
        p.whitelist.as_deref().unwrap_or_default(),
    )?;
    let (code, reason) = match p.disconnect {
        Some(spec) => {
            if !(3000..=4999).contains(&spec.code) {
                return Err(ApiError::bad("disconnect.code must be within 3000..=4999"));
            }
            if spec.reason.len() > 100 {
                return Err(ApiError::bad("disconnect.reason must be at most 100 bytes"));
            }
            (spec.code, spec.reason)
        }
        None => {
            let d = herald_protocol::Disconnect::FORCE_NO_RECONNECT;
            (d.code, d.reason.to_string())
        }
    };
    node.broker
        .publish_control(Control::Disconnect {
            user: p.user,
            client: p.client,
            code,
            reason,
        })
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

/// Centrifugo's `refresh`: a backend that manages expiry itself moves a user's (or one
/// connection's) expiry, or ends it as expired (3005 "token expired": the SDK gets a new token).
async fn refresh(node: &Node, p: RefreshParams) -> Result<Value, ApiError> {
    if p.user.is_empty() {
        return Err(ApiError::bad("field \"user\" is required"));
    }
    refuse_narrowing(p.session.as_deref(), &[])?;
    let expire_at = p.expire_at.unwrap_or(0);
    if expire_at < 0 {
        return Err(ApiError::bad(
            "field \"expire_at\" must be Unix seconds (0: no expiry)",
        ));
    }
    node.broker
        .publish_control(Control::Refresh {
            user: p.user,
            client: p.client,
            expired: p.expired.unwrap_or(false),
            expire_at: (expire_at > 0).then_some(expire_at),
        })
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

fn presence_namespace(node: &Node, channel: &str) -> Result<(), ApiError> {
    require_channel(channel)?;
    if !node.namespaces.resolve(channel)?.presence {
        return Err(ApiError {
            code: ErrorCode::NotAvailable,
            message: "presence is not enabled for this channel".into(),
        });
    }
    Ok(())
}

async fn presence(node: &Node, p: ChannelParams) -> Result<Value, ApiError> {
    presence_namespace(node, &p.channel)?;
    let presence = node.presence.get(&p.channel).await.map_err(broker_error)?;
    Ok(json!({"presence": presence}))
}

async fn presence_stats(node: &Node, p: ChannelParams) -> Result<Value, ApiError> {
    presence_namespace(node, &p.channel)?;
    let (num_clients, num_users) = node
        .presence
        .stats(&p.channel)
        .await
        .map_err(broker_error)?;
    Ok(json!({"num_clients": num_clients, "num_users": num_users}))
}

async fn history(node: &Node, p: HistoryParams) -> Result<Value, ApiError> {
    require_channel(&p.channel)?;
    let ns = node.namespaces.resolve(&p.channel)?;
    let options = node.history_options(&ns).ok_or(ApiError {
        code: ErrorCode::NotAvailable,
        message: "history is not enabled for this channel".into(),
    })?;
    let query = HistoryQuery {
        since: p.since,
        limit: history_limit(p.limit),
        reverse: p.reverse,
    };
    let page = node
        .broker
        .history(&p.channel, &query, options)
        .await
        .map_err(broker_error)?;
    let mut out = json!({"publications": page.publications, "offset": page.position.offset, "epoch": page.position.epoch});
    if page.publications.is_empty() {
        out["publications"] = json!([]);
    }
    Ok(out)
}

async fn history_remove(node: &Node, p: ChannelParams) -> Result<Value, ApiError> {
    require_channel(&p.channel)?;
    node.namespaces.resolve(&p.channel)?;
    node.broker
        .remove_history(&p.channel)
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

fn channels(node: &Node, p: ChannelsParams) -> Value {
    let channels: serde_json::Map<String, Value> = node
        .hub
        .channels(&p.pattern)
        .into_iter()
        .map(|(name, count)| (name, json!({"num_clients": count})))
        .collect();
    json!({"channels": channels})
}

/// Most connections one `connections` reply lists.
pub const MAX_CONNECTIONS_LISTED: usize = 1000;

/// A user's connections on this node (not cluster-wide), shaped as Centrifugo PRO's `connections`
/// answers: client id → transport, protocol (wire format), user, and `state.channels`.
fn connections(node: &Node, p: ConnectionsParams) -> Result<Value, ApiError> {
    if p.user.is_empty() {
        return Err(ApiError::bad("field \"user\" is required"));
    }
    if !p.expression.is_empty() {
        return Err(ApiError::bad(
            "field \"expression\" is not supported: list a user's connections with \"user\"",
        ));
    }
    let sessions = node.hub.user_sessions(&p.user, None);
    let connections: serde_json::Map<String, Value> = sessions
        .iter()
        .take(MAX_CONNECTIONS_LISTED)
        .map(|h| {
            let protocol = match h.format {
                herald_protocol::Format::Json => "json",
                herald_protocol::Format::Protobuf => "protobuf",
            };
            let channels: serde_json::Map<String, Value> = node
                .hub
                .session_channels(h.seq)
                .into_iter()
                .map(|channel| (channel, json!({})))
                .collect();
            (
                h.client.clone(),
                json!({
                    "transport": h.transport,
                    "protocol": protocol,
                    "user": h.user,
                    "state": {"channels": channels},
                }),
            )
        })
        .collect();
    Ok(json!({"node": node.uid, "total": sessions.len(), "connections": connections}))
}

/// Every live node of the cluster (this one with fresh numbers), from the broker's registry.
pub async fn info(node: &Node) -> Result<Value, ApiError> {
    let mut nodes = node.broker.nodes().await.map_err(broker_error)?;
    let this = node.entry();
    match nodes.iter_mut().find(|n| n.uid == this.uid) {
        Some(entry) => *entry = this,
        None => nodes.push(this),
    }
    Ok(json!({ "nodes": nodes }))
}

/// Runs a `batch` (at most `api.max_batch_commands` commands; a malformed or oversized batch fails
/// before any command runs) and writes `{"replies": [...]}`, one reply per command, in order.
async fn batch(
    node: &Node,
    devices: Option<&DeviceIngest>,
    raw: &RawValue,
) -> Result<String, ApiError> {
    let max = node.config().api.max_batch_commands;
    let request = crate::edges::api::request::parse_batch(raw, max).map_err(|e| {
        if e.contains("api.max_batch_commands") {
            node.metrics
                .api_refused
                .get_or_create(&ReasonLabel {
                    reason: "batch size",
                })
                .inc();
        }
        ApiError::bad(e)
    })?;
    let calls = &request.commands;
    let mut out = String::from("{\"replies\":[");
    let mut push = |reply: Value, first: bool| {
        if !first {
            out.push(',');
        }
        out.push_str(&reply.to_string());
    };
    if request.parallel {
        // At most max_batch_commands futures; each reply is written as soon as its turn comes.
        let all = calls
            .iter()
            .map(|(method, raw)| Box::pin(batch_reply(node, devices, method, raw)));
        for (i, reply) in futures_util::future::join_all(all)
            .await
            .into_iter()
            .enumerate()
        {
            push(reply, i == 0);
        }
    } else {
        for (i, (method, raw)) in calls.iter().enumerate() {
            push(
                Box::pin(batch_reply(node, devices, method, raw)).await,
                i == 0,
            );
        }
    }
    out.push_str("]}");
    Ok(out)
}

/// One command of a batch: `{"<method>": result}` or `{"error": {...}}`.
async fn batch_reply(
    node: &Node,
    devices: Option<&DeviceIngest>,
    method: &str,
    raw: &RawValue,
) -> Value {
    match call(node, devices, method, raw).await {
        Ok(result) => json!({ method: result }),
        Err(Some(e)) => e.to_json(),
        Err(None) => ApiError {
            code: ErrorCode::MethodNotFound,
            message: format!("unknown method {method:?}"),
        }
        .to_json(),
    }
}
