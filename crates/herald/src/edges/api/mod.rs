//! The server HTTP API: `POST /api/<method>` with a JSON body, Centrifugo-compatible.
//!
//! Replies are `{"result": {...}}` or `{"error": {"code": N, "message": "..."}}`. Method-level errors
//! answer HTTP 200 with an error object (as Centrifugo does, so existing API clients work); transport
//! problems use HTTP statuses: 400 unparsable body, 401 missing or wrong key, 404 unknown method,
//! 413 body too large.

pub mod request;

mod batch;
mod channels;
mod error;
mod params;
mod publishing;
mod users;

pub use channels::info;
pub use error::ApiError;
pub use users::MAX_CONNECTIONS_LISTED;

use crate::core::metrics::MethodLabel;
use crate::edges::devices::queries;
use crate::edges::devices::DeviceIngest;
use crate::node::Node;
use params::params;
use serde_json::value::RawValue;
use serde_json::Value;

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
        return Box::pin(batch::batch(node, devices, raw))
            .await
            .map_err(Some);
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
        "publish" => publishing::publish(node, params(raw)?).await,
        "broadcast" => publishing::broadcast(node, params(raw)?).await,
        "subscribe" => users::control(node, params(raw)?, true).await,
        "unsubscribe" => users::control(node, params(raw)?, false).await,
        "disconnect" => users::disconnect(node, params(raw)?).await,
        "refresh" => users::refresh(node, params(raw)?).await,
        "presence" => channels::presence(node, params(raw)?).await,
        "presence_stats" => channels::presence_stats(node, params(raw)?).await,
        "history" => channels::history(node, params(raw)?).await,
        "history_remove" => channels::history_remove(node, params(raw)?).await,
        "channels" => Ok(channels::channels(node, params(raw)?)),
        "info" => info(node).await,
        "connections" => users::connections(node, params(raw)?),
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
