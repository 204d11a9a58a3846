//! OsmAnd / Traccar Client HTTP protocol (default port 5055).
//!
//! Two request forms:
//!
//! * **Query form** (OsmAnd, Traccar Client Android ≤ 8, many scripts), `GET` or `POST` with the
//!   parameters in the URL or a form body:
//!   `?id=<device>&timestamp=<unix s|unix ms|ISO 8601>&lat=<deg>&lon=<deg>&speed=<knots>&bearing=<deg>&altitude=<m>&accuracy=<m>&batt=<%>`.
//!   `deviceid` is an alias of `id`, `heading` of `bearing`, `location=<lat>,<lon>` of
//!   `lat`/`lon`, `hdop` is kept as an attribute. Every other parameter becomes an attribute
//!   (`true`/`false` → bool, numbers → number, else string), e.g. `ignition`, `rpm`, `fuel`,
//!   `alarm`. `cell` / `wifi` parameters are kept as strings. Missing `timestamp` → server time.
//! * **JSON form** (Traccar Client ≥ 9, Transistorsoft background-geolocation), `POST` with
//!   `Content-Type: application/json`: `{"device_id": .., "location": {"timestamp": ISO,
//!   "coords": {"latitude", "longitude", "speed" (m/s, -1 unknown), "heading" (-1 unknown),
//!   "altitude", "accuracy"}, "is_moving", "odometer", "event", "battery": {"level" 0..1,
//!   "is_charging"}, "activity": {"type"}, "extras": {..}}}`; `location` may also be an array.
//!
//! "Accepted" means: a device id is present and, when coordinates are present, they parse and are
//! in range. The HTTP handler then answers `200 OK` (empty body); decode errors map to
//! `400 Bad Request` ([`http_status`]). A request with an id but no coordinates decodes to a
//! [`MessageKind::Status`] with attributes and no position.

use serde_json::{Map, Value};

use crate::types::{Attributes, DecodeError, Decoded, MessageKind, Position, SessionState};
use crate::util::{knots_to_kmh, num, parse_datetime, round, unix_number_to_ms};

/// Largest request body accepted by [`decode_json`] / [`decode_form`].
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// HTTP status a handler should answer for a decode result.
pub fn http_status(result: &Result<Decoded, DecodeError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(_) => 400,
    }
}

/// Decodes one HTTP request: `target` is the request target (`/?id=..`, `/path?..` or an
/// absolute URL), `content_type` the header value if any, `body` the request body.
pub fn decode_request(
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
    session: &mut SessionState,
) -> Result<Decoded, DecodeError> {
    let is_json = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"))
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_json && !body.is_empty() {
        return decode_json(body, session);
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.is_empty() && !body.is_empty() {
        return decode_form(body, session);
    }
    decode_query(query, session)
}

/// Decodes an `application/x-www-form-urlencoded` body (same parameters as the query form).
pub fn decode_form(body: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if body.len() > MAX_BODY_LEN {
        return Err(DecodeError::field("body", "too long"));
    }
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::field("body", "not UTF-8"))?;
    decode_query(text.trim(), session)
}

/// Percent-decodes one query component (`+` is a space).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hexv = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hexv {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_f64(key: &'static str, v: &str) -> Result<f64, DecodeError> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| DecodeError::field(key, format!("{v:?} is not a number")))?;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(DecodeError::field(key, "not finite"))
    }
}

fn parse_time(v: &str) -> Result<i64, DecodeError> {
    if let Ok(n) = v.trim().parse::<f64>() {
        return unix_number_to_ms(n).ok_or_else(|| DecodeError::field("timestamp", v));
    }
    parse_datetime(v).ok_or_else(|| DecodeError::field("timestamp", v))
}

fn attr_value(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match v.parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => match v.parse::<f64>() {
                Ok(f) if f.is_finite() => num(f),
                _ => Value::String(v.to_string()),
            },
        },
    }
}

/// Decodes the query-string form (without the leading `?`).
pub fn decode_query(query: &str, session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if query.len() > MAX_BODY_LEN {
        return Err(DecodeError::field("query", "too long"));
    }
    let mut id = None;
    let mut lat = None;
    let mut lon = None;
    let mut time = None;
    let mut p = Position::new("");
    let mut attrs = Attributes::new();
    let mut valid = None;
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = url_decode(k);
        let value = url_decode(v);
        match key.as_str() {
            "id" | "deviceid" => id = Some(value.trim().to_string()),
            "lat" => lat = Some(parse_f64("lat", &value)?),
            "lon" => lon = Some(parse_f64("lon", &value)?),
            "location" => {
                let (a, b) = value
                    .split_once(',')
                    .ok_or_else(|| DecodeError::field("location", "expected lat,lon"))?;
                lat = Some(parse_f64("location", a)?);
                lon = Some(parse_f64("location", b)?);
            }
            "timestamp" => time = Some(parse_time(&value)?),
            "speed" => p.speed_kmh = round(knots_to_kmh(parse_f64("speed", &value)?.max(0.0)), 3),
            "bearing" | "heading" => p.course = parse_f64("bearing", &value)?.rem_euclid(360.0),
            "altitude" => p.altitude_m = Some(parse_f64("altitude", &value)?),
            "accuracy" => p.accuracy_m = Some(parse_f64("accuracy", &value)?),
            "batt" => {
                attrs.insert("batteryLevel".into(), attr_value(&value));
            }
            "valid" => valid = Some(value == "true" || value == "1"),
            "" => {}
            _ => {
                attrs.insert(key, attr_value(&value));
            }
        }
    }
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::field("id", "missing device id"))?;
    session.device_id = Some(id.clone());
    let mut d = Decoded::new(MessageKind::Status);
    d.device_id = Some(id.clone());
    match (lat, lon) {
        (Some(lat), Some(lon)) => {
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err(DecodeError::field(
                    "lat/lon",
                    format!("{lat},{lon} out of range"),
                ));
            }
            p.device_id = id;
            p.latitude = lat;
            p.longitude = lon;
            p.time_ms = time.unwrap_or(session.now_ms);
            p.valid = valid.unwrap_or(true);
            p.attributes = attrs;
            d.kind = MessageKind::Location;
            d.positions.push(p);
        }
        (None, None) => d.attributes = attrs,
        _ => {
            return Err(DecodeError::field(
                "lat/lon",
                "only one of lat and lon given",
            ))
        }
    }
    Ok(d)
}

/// Decodes the JSON form.
pub fn decode_json(body: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if body.len() > MAX_BODY_LEN {
        return Err(DecodeError::field("body", "too long"));
    }
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| DecodeError::field("body", format!("invalid JSON: {e}")))?;
    let obj = root
        .as_object()
        .ok_or_else(|| DecodeError::field("body", "expected a JSON object"))?;
    let id = match obj.get("device_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(DecodeError::field("device_id", "missing device id")),
    };
    session.device_id = Some(id.clone());
    let locations: Vec<&Map<String, Value>> = match obj.get("location") {
        Some(Value::Object(o)) => vec![o],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_object).collect(),
        _ => return Err(DecodeError::field("location", "missing")),
    };
    let mut d = Decoded::new(MessageKind::Location);
    d.device_id = Some(id.clone());
    for loc in locations {
        d.positions.push(json_location(loc, &id, session.now_ms)?);
    }
    Ok(d)
}

fn json_location(loc: &Map<String, Value>, id: &str, now_ms: i64) -> Result<Position, DecodeError> {
    let coords = loc
        .get("coords")
        .and_then(Value::as_object)
        .ok_or_else(|| DecodeError::field("coords", "missing"))?;
    let f = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_f64);
    let lat = f(coords, "latitude").ok_or_else(|| DecodeError::field("latitude", "missing"))?;
    let lon = f(coords, "longitude").ok_or_else(|| DecodeError::field("longitude", "missing"))?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(DecodeError::field(
            "latitude/longitude",
            format!("{lat},{lon}"),
        ));
    }
    let mut p = Position::new(id);
    p.latitude = lat;
    p.longitude = lon;
    p.valid = true;
    p.time_ms = match loc.get("timestamp") {
        Some(Value::String(s)) => parse_time(s)?,
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(unix_number_to_ms)
            .ok_or_else(|| DecodeError::field("timestamp", n.to_string()))?,
        _ => now_ms,
    };
    if let Some(s) = f(coords, "speed").filter(|s| *s >= 0.0) {
        p.speed_kmh = round(s * 3.6, 3);
    }
    if let Some(h) = f(coords, "heading").filter(|h| *h >= 0.0) {
        p.course = h.rem_euclid(360.0);
    }
    p.altitude_m = f(coords, "altitude");
    p.accuracy_m = f(coords, "accuracy").filter(|a| *a >= 0.0);
    if let Some(m) = loc.get("is_moving").and_then(Value::as_bool) {
        p.set("motion", m);
    }
    if let Some(o) = loc.get("odometer").and_then(Value::as_f64) {
        p.set("odometer", num(o));
    }
    if let Some(e) = loc.get("event").and_then(Value::as_str) {
        p.set("event", e);
    }
    if let Some(b) = loc.get("battery").and_then(Value::as_object) {
        if let Some(level) = f(b, "level").filter(|l| *l >= 0.0) {
            p.set("batteryLevel", num(round(level * 100.0, 1)));
        }
        if let Some(c) = b.get("is_charging").and_then(Value::as_bool) {
            p.set("charge", c);
        }
    }
    if let Some(t) = loc
        .get("activity")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
    {
        p.set("activity", t);
    }
    if let Some(extras) = loc.get("extras").and_then(Value::as_object) {
        for (k, v) in extras {
            p.attributes.insert(k.clone(), v.clone());
        }
    }
    Ok(p)
}
