//! What the server API and the live map read of the devices: the registry, the latest stored
//! position of each device, and one page of a device's stored track. One implementation serves
//! both, so their checks and their answers agree.

use super::{position_json, DeviceIngest};
use herald_protocol::ErrorCode;
use herald_store::geojson::page_to_geojson;
use herald_store::TrackCursor;
use serde::Deserialize;
use serde_json::{json, Value};

/// Parameters of a track query (the API's `device_track`, the map's `/map/api/track`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTrackParams {
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub from: i64,
    #[serde(default = "far_future")]
    pub to: i64,
    #[serde(default = "default_track_limit")]
    pub limit: u32,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
}

pub fn far_future() -> i64 {
    i64::MAX
}

pub fn default_track_limit() -> u32 {
    100
}

/// Most positions one track page may hold.
pub const MAX_TRACK_LIMIT: u32 = 10_000;

/// Why a device query has no answer; each edge turns it into its own reply (an API error code,
/// an HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("device ingest is not enabled (devices.enabled = false)")]
    NotEnabled,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("position store: {0}")]
    Store(herald_store::StoreError),
}

impl QueryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            QueryError::NotEnabled => ErrorCode::NotAvailable,
            QueryError::BadRequest(_) => ErrorCode::BadRequest,
            QueryError::Store(_) => ErrorCode::Internal,
        }
    }
}

fn enabled(devices: Option<&DeviceIngest>) -> Result<&DeviceIngest, QueryError> {
    devices.ok_or(QueryError::NotEnabled)
}

fn store_error(e: herald_store::StoreError) -> QueryError {
    tracing::warn!(error = %e, "position store query failed");
    QueryError::Store(e)
}

/// The devices this node's registry knows, with the ingest's counters.
pub fn list(devices: Option<&DeviceIngest>) -> Result<Value, QueryError> {
    let ingest = enabled(devices)?;
    Ok(json!({"devices": ingest.registry.list(), "stats": ingest.stats()}))
}

/// The latest stored position of every device.
pub async fn positions(devices: Option<&DeviceIngest>) -> Result<Value, QueryError> {
    let ingest = enabled(devices)?;
    let positions = ingest.store.latest_positions().await.map_err(store_error)?;
    let positions: Vec<Value> = positions.iter().map(position_json).collect();
    Ok(json!({"positions": positions}))
}

/// One page of a device's stored track.
pub async fn track(
    devices: Option<&DeviceIngest>,
    p: DeviceTrackParams,
) -> Result<Value, QueryError> {
    let ingest = enabled(devices)?;
    let bad = |message: String| QueryError::BadRequest(message);
    if p.device.is_empty() {
        return Err(bad("field \"device\" is required".into()));
    }
    if p.to < p.from {
        return Err(bad("field \"to\" must not be before \"from\"".into()));
    }
    if p.limit == 0 || p.limit > MAX_TRACK_LIMIT {
        return Err(bad(format!(
            "field \"limit\" must be within 1..={MAX_TRACK_LIMIT}"
        )));
    }
    let geojson = match p.format.as_deref() {
        None | Some("json") => false,
        Some("geojson") => true,
        Some(other) => {
            return Err(bad(format!(
                "field \"format\" must be \"json\" or \"geojson\", got {other:?}"
            )))
        }
    };
    let after = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<TrackCursor>().map_err(|_| {
            bad(format!(
                "field \"cursor\": {c:?} is not a cursor from a previous page"
            ))
        })?),
    };
    let page = ingest
        .store
        .track(&p.device, p.from, p.to, p.limit, after)
        .await
        .map_err(store_error)?;
    if geojson {
        return Ok(page_to_geojson(&page));
    }
    let positions: Vec<Value> = page.positions.iter().map(position_json).collect();
    Ok(json!({
        "device": page.device_id,
        "positions": positions,
        "next_cursor": page.next.map(|c| c.to_string()),
    }))
}
