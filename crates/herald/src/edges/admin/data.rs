//! The console's JSON endpoints, `/admin/api/<name>`: each runs server API methods
//! (crate::edges::api) so the console shows and does exactly what the API would.
//!
//! GET `overview`, `channels?q=`, `presence?channel=`, `connections?user=`, `devices`;
//! POST `publish` and `disconnect` (JSON bodies as the API's, plus the CSRF token in
//! `X-CSRF-Token` when the caller is a session).

use super::access::{self, Access, Denied};
use super::{error, read_body, Admin};
use crate::edges::api::{self as api, ApiError};
use crate::edges::devices::DeviceIngest;
use crate::edges::http::response::{json_response, Body};
use crate::edges::map::query;
use crate::node::Node;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Most channels one search lists (each costs a presence lookup).
pub const MAX_CHANNELS_LISTED: usize = 100;
/// Where every publication is counted (`herald_publications_total{source}`).
const SOURCES: [&str; 4] = ["api", "client", "device", "feed"];
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The answer to a request without access: 401, and nothing about the data.
pub fn denied(admin: &Admin, denied: Denied) -> Response<Body> {
    admin.count_refused(denied.reason());
    let mut response = error(StatusCode::UNAUTHORIZED, "log in at /admin first");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"herald admin\""),
    );
    response
}

pub async fn serve(
    admin: &Admin,
    node: &Node,
    devices: Option<&DeviceIngest>,
    req: Request<Incoming>,
) -> Response<Body> {
    let access = match access::authenticate(admin, &node.config().admin.token, req.headers()) {
        Ok(access) => access,
        Err(e) => return denied(admin, e),
    };
    let name = req
        .uri()
        .path()
        .trim_start_matches("/admin/api/")
        .to_string();
    let params: Vec<(String, String)> = query::pairs(req.uri().query().unwrap_or(""));
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let result = match (req.method(), name.as_str()) {
        (&Method::GET, "overview") => overview(node).await,
        (&Method::GET, "channels") => channels(node, devices, &param("q")).await,
        (&Method::GET, "presence") => {
            run(
                node,
                devices,
                "presence",
                json!({"channel": param("channel")}),
            )
            .await
        }
        (&Method::GET, "connections") => {
            run(node, devices, "connections", json!({"user": param("user")})).await
        }
        (&Method::GET, "devices") => crate::edges::map::fleet(node, devices)
            .await
            .map_err(ApiError::from),
        (&Method::POST, method @ ("publish" | "disconnect")) => {
            let method = method.to_string();
            if let Some(refusal) = refuse_change(admin, &access, &req) {
                return refusal;
            }
            let body = match read_body(req.into_body()).await {
                Ok(body) => body,
                Err((status, message)) => return super::error(status, message),
            };
            let raw: Box<RawValue> = match serde_json::from_slice(&body) {
                Ok(raw) => raw,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
            };
            crate::core::wakes::batched(call(node, devices, &method, &raw)).await
        }
        (
            _,
            "overview" | "channels" | "presence" | "connections" | "devices" | "publish"
            | "disconnect",
        ) => return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => return error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    };
    let mut response = match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &e.to_json()),
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// A state change made with a session needs JSON, this site as `Origin`, and the CSRF token;
/// the refusal when it lacks one.
fn refuse_change(
    admin: &Admin,
    access: &Access,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let Access::Session(session) = access else {
        return None;
    };
    if !access::same_origin(req.headers()) {
        admin.count_refused("origin");
        return Some(error(
            StatusCode::FORBIDDEN,
            "request from another site refused",
        ));
    }
    let token = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !admin.signer.csrf_matches(session, token) {
        admin.count_refused("csrf");
        return Some(error(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        ));
    }
    None
}

async fn call(
    node: &Node,
    devices: Option<&DeviceIngest>,
    method: &str,
    raw: &RawValue,
) -> Result<Value, ApiError> {
    api::call(node, devices, method, raw).await.map_err(|e| {
        e.unwrap_or_else(|| ApiError {
            code: herald_protocol::ErrorCode::MethodNotFound,
            message: format!("unknown method {method:?}"),
        })
    })
}

async fn run(
    node: &Node,
    devices: Option<&DeviceIngest>,
    method: &str,
    params: Value,
) -> Result<Value, ApiError> {
    let raw = serde_json::value::to_raw_value(&params).map_err(|e| ApiError {
        code: herald_protocol::ErrorCode::Internal,
        message: e.to_string(),
    })?;
    call(node, devices, method, &raw).await
}

/// The cluster's nodes and totals, and this node's publication and delivery counters (the page
/// turns two readings into rates).
async fn overview(node: &Node) -> Result<Value, ApiError> {
    let info = api::info(node).await?;
    let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
    let sum = |key: &str| nodes.iter().filter_map(|n| n[key].as_u64()).sum::<u64>();
    let publications: u64 = SOURCES
        .iter()
        .filter_map(|source| {
            node.metrics
                .publications
                .get(&crate::core::metrics::SourceLabel { source })
                .map(|c| c.get())
        })
        .sum();
    Ok(json!({
        "node": {"uid": node.uid, "name": node.name},
        "nodes": nodes,
        "totals": {
            "nodes": nodes.len(),
            "clients": sum("num_clients"),
            "users": sum("num_users"),
            "channels": sum("num_channels"),
            "subscriptions": sum("num_subs"),
        },
        "counters": {
            "time_ms": crate::core::clock::unix_millis(),
            "publications": publications,
            "deliveries": node.metrics.deliveries.get(),
        },
    }))
}

/// This node's channels matching `q` (a glob, or a substring when it has no `*`/`?`), with
/// subscriber counts and presence where the namespace keeps it.
async fn channels(node: &Node, devices: Option<&DeviceIngest>, q: &str) -> Result<Value, ApiError> {
    let pattern = if q.contains(['*', '?']) {
        q.to_string()
    } else {
        format!("*{q}*")
    };
    let all = node.hub.channels(&pattern);
    let total = all.len();
    let mut out = Vec::new();
    for (name, subscribers) in all.into_iter().take(MAX_CHANNELS_LISTED) {
        let presence = node.namespaces.resolve(&name).is_ok_and(|ns| ns.presence);
        let stats = if presence {
            run(node, devices, "presence_stats", json!({"channel": name}))
                .await
                .ok()
        } else {
            None
        };
        out.push(json!({"channel": name, "subscribers": subscribers, "presence": stats}));
    }
    Ok(json!({"channels": out, "total": total, "limit": MAX_CHANNELS_LISTED}))
}
