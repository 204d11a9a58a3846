//! The live map at `/map` (docs/map.md): one embedded page that draws the fleet channel's
//! positions over map tiles, and two JSON endpoints it reads with the user's connection token:
//! `/map/api/devices` (latest position per device) and `/map/api/track` (a device's stored track).

mod auth;
pub(crate) mod query;

pub use auth::{authorize, MapAuthError};

use crate::edges::devices::queries::{self, DeviceTrackParams, QueryError};
use crate::edges::devices::DeviceIngest;
use crate::edges::http::response::{json_response, respond, Body};
use crate::node::Node;
use herald_protocol::ErrorCode;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The page, with `{{HERALD_MAP_CONFIG}}` where the settings go.
const PAGE: &str = include_str!("page.html");

/// Whether `path` belongs to the map.
pub fn handles(path: &str) -> bool {
    path == "/map" || path == "/map/" || path.starts_with("/map/api/")
}

/// Serves a map request (the caller checked `map.enabled` and [`handles`]).
pub async fn serve<B>(
    node: &Node,
    devices: Option<&DeviceIngest>,
    req: &Request<B>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            107,
            "the map takes GET requests",
        );
    }
    let path = req.uri().path();
    if path == "/map" || path == "/map/" {
        return page(node);
    }
    if let Err(e) = authorize(node, req.headers()) {
        return error(e.status(), e.code(), &e.to_string());
    }
    let query = req.uri().query().unwrap_or("");
    let result = match path {
        "/map/api/devices" => fleet(node, devices).await,
        "/map/api/track" => match track_params(query) {
            Ok(params) => queries::track(devices, params).await,
            Err(e) => Err(e),
        },
        _ => return error(StatusCode::NOT_FOUND, 104, "no such map endpoint"),
    };
    match result {
        Ok(value) => no_store(json_response(StatusCode::OK, &value)),
        Err(e) => {
            let status = match e.code() {
                ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
                ErrorCode::NotAvailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.code().code(), &e.to_string())
        }
    }
}

fn error(status: StatusCode, code: u32, message: &str) -> Response<Body> {
    no_store(json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    ))
}

fn no_store(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The settings the page needs, as JSON that is safe inside a `<script>` element.
fn page_config(node: &Node) -> String {
    let config = &node.config();
    let value = json!({
        "tile_url": config.map.tile_url,
        "attribution": config.map.attribution,
        "fleet_channel": config.devices.fleet_channel,
        "devices_enabled": config.devices.enabled,
    });
    // `<`, `>` and `&` escaped so no setting can end the script element early.
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn page(node: &Node) -> Response<Body> {
    let html = PAGE.replace("{{HERALD_MAP_CONFIG}}", &page_config(node));
    let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", html);
    let h = response.headers_mut();
    // Tiles come from any configured host; data only from this origin (WebSocket included).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src * data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Latest stored position per device, merged with what this node's registry knows (protocol,
/// connection, a position not yet written to the database).
pub(crate) async fn fleet(
    node: &Node,
    devices: Option<&DeviceIngest>,
) -> Result<Value, QueryError> {
    let stored = queries::positions(devices).await?;
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for position in stored["positions"].as_array().into_iter().flatten() {
        let Some(id) = position["device"].as_str() else {
            continue;
        };
        by_id.insert(
            id.to_string(),
            json!({
                "device": id,
                "protocol": null,
                "connected": false,
                "last_seen": position["time"],
                "position": position,
            }),
        );
    }
    let registry = devices
        .map(|ingest| ingest.registry.list())
        .unwrap_or_default();
    for live in registry {
        let Some(id) = live["device"].as_str().map(str::to_string) else {
            continue;
        };
        let entry = by_id.entry(id.clone()).or_insert_with(|| {
            json!({"device": id, "protocol": null, "connected": false, "last_seen": null, "position": null})
        });
        entry["protocol"] = live["protocol"].clone();
        entry["connected"] = live["connected"].clone();
        entry["last_seen"] = live["last_seen"].clone();
        let newer = match (
            live["position"]["time"].as_i64(),
            entry["position"]["time"].as_i64(),
        ) {
            (Some(live_time), Some(stored_time)) => live_time >= stored_time,
            (Some(_), None) => true,
            _ => false,
        };
        if newer {
            entry["position"] = live["position"].clone();
        }
    }
    Ok(json!({
        "fleet_channel": node.config().devices.fleet_channel,
        "devices": by_id.into_values().collect::<Vec<_>>(),
    }))
}

/// `device`, `from`, `to` (unix ms), `limit`, `cursor` from the query string.
fn track_params(query: &str) -> Result<DeviceTrackParams, QueryError> {
    let mut params = DeviceTrackParams {
        device: String::new(),
        from: 0,
        to: queries::far_future(),
        limit: queries::default_track_limit(),
        cursor: None,
        format: None,
    };
    for (key, value) in query::pairs(query) {
        let number = |v: &str| {
            v.parse::<i64>().map_err(|_| {
                QueryError::BadRequest(format!("field \"{key}\": {v:?} is not an integer"))
            })
        };
        match key.as_str() {
            "device" => params.device = value,
            "from" => params.from = number(&value)?,
            "to" => params.to = number(&value)?,
            "limit" => {
                params.limit = u32::try_from(number(&value)?).map_err(|_| {
                    QueryError::BadRequest(format!(
                        "field \"limit\" must be within 1..={}",
                        queries::MAX_TRACK_LIMIT
                    ))
                })?
            }
            "cursor" => params.cursor = Some(value),
            _ => return Err(QueryError::BadRequest(format!("unknown field {key:?}"))),
        }
    }
    Ok(params)
}
