//! GeoJSON rendering of a track [`Page`].
//!
//! Shape: a `FeatureCollection` whose first feature is a `LineString` of the page's positions
//! (only when there are at least two; properties `device_id`, `from_ms`, `to_ms`, `count`),
//! followed by one `Point` feature per position (properties: `device_id`, `time_ms`,
//! `speed_kmh`, `course`, `valid`, and `altitude_m`, `satellites`, `accuracy_m`, `attributes`
//! when present). Coordinates are `[longitude, latitude]` (RFC 7946 order). The collection
//! carries the foreign member `next_cursor` (string or null) for paging.

use serde_json::{json, Map, Value};

use crate::store::Page;

/// Render `page` as a GeoJSON FeatureCollection.
pub fn page_to_geojson(page: &Page) -> Value {
    let mut features = Vec::with_capacity(page.positions.len() + 1);
    if page.positions.len() >= 2 {
        let coords: Vec<Value> = page
            .positions
            .iter()
            .map(|p| json!([p.longitude, p.latitude]))
            .collect();
        features.push(json!({
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords},
            "properties": {
                "device_id": page.device_id,
                "from_ms": page.positions.first().map(|p| p.time_ms),
                "to_ms": page.positions.last().map(|p| p.time_ms),
                "count": page.positions.len(),
            }
        }));
    }
    for p in &page.positions {
        let mut props = Map::new();
        props.insert("device_id".into(), json!(p.device_id));
        props.insert("time_ms".into(), json!(p.time_ms));
        props.insert("speed_kmh".into(), json!(p.speed_kmh));
        props.insert("course".into(), json!(p.course));
        props.insert("valid".into(), json!(p.valid));
        if let Some(a) = p.altitude_m {
            props.insert("altitude_m".into(), json!(a));
        }
        if let Some(s) = p.satellites {
            props.insert("satellites".into(), json!(s));
        }
        if let Some(a) = p.accuracy_m {
            props.insert("accuracy_m".into(), json!(a));
        }
        if !p.attributes.is_empty() {
            props.insert("attributes".into(), json!(p.attributes));
        }
        features.push(json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [p.longitude, p.latitude]},
            "properties": Value::Object(props),
        }));
    }
    json!({
        "type": "FeatureCollection",
        "features": features,
        "next_cursor": page.next.map(|c| c.to_string()),
    })
}
