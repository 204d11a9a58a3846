//! Herald JSON-lines protocol for custom devices and scripts (TCP, one JSON object per line).
//!
//! Each line is a UTF-8 JSON object terminated by `\n` (a preceding `\r` is ignored; blank lines
//! are ignored):
//!
//! ```json
//! {"id":"356307042441013","time":"2024-05-01T12:00:00Z","lat":52.52,"lon":13.405,
//!  "speed":42.5,"course":270,"alt":35,"valid":true,"sats":9,"accuracy":4.5,
//!  "attrs":{"ignition":true,"battery":3.9,"io7":1}}
//! ```
//!
//! | field | type | required | meaning |
//! | --- | --- | --- | --- |
//! | `id` | string (or integer) | yes | device id (IMEI), 1..=64 chars |
//! | `lat`, `lon` | number | yes | WGS84 degrees, -90..=90 / -180..=180 |
//! | `time` | RFC 3339 string, or number | no (server time) | fix time; numbers are unix seconds, or milliseconds when > 10^11 |
//! | `speed` | number ≥ 0 | no (0) | km/h |
//! | `course` | number | no (0) | degrees, normalised to 0..360 |
//! | `alt` | number | no | metres |
//! | `valid` | bool | no (true) | fix validity |
//! | `sats` | integer ≥ 0 | no | satellites |
//! | `accuracy` | number ≥ 0 | no | metres |
//! | `attrs` | object | no | free-form attributes (Traccar-style names recommended) |
//!
//! Unknown top-level keys are ignored (forward compatibility). A line longer than
//! [`MAX_LINE_LEN`] bytes is a framing error. The server sends no reply; a line that fails to decode
//! is reported as an error and the connection may continue with the next line.

use serde_json::{Map, Value};

use crate::types::{
    DecodeError, Decoded, FrameError, FrameStatus, MessageKind, Position, SessionState,
};
use crate::util::{parse_datetime, unix_number_to_ms};

/// Longest line accepted (including the newline).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Finds one line; the frame includes the `\n`.
pub fn frame(buf: &[u8]) -> Result<FrameStatus, FrameError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i + 1 > MAX_LINE_LEN => Err(FrameError::TooLong {
            len: i + 1,
            max: MAX_LINE_LEN,
        }),
        Some(i) => Ok(FrameStatus::Complete(i + 1)),
        None if buf.len() >= MAX_LINE_LEN => Err(FrameError::TooLong {
            len: buf.len(),
            max: MAX_LINE_LEN,
        }),
        None => Ok(FrameStatus::NeedMore),
    }
}

/// Decodes one line. Blank lines decode to [`MessageKind::Heartbeat`] without data.
pub fn decode(line: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if line.len() > MAX_LINE_LEN {
        return Err(DecodeError::field("line", "too long"));
    }
    let text = std::str::from_utf8(line).map_err(|_| DecodeError::field("line", "not UTF-8"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Decoded::new(MessageKind::Heartbeat));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::field("line", format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| DecodeError::field("line", "expected a JSON object"))?;
    let p = position(obj, session.now_ms)?;
    session.device_id = Some(p.device_id.clone());
    let mut d = Decoded::new(MessageKind::Location);
    d.device_id = Some(p.device_id.clone());
    d.positions.push(p);
    Ok(d)
}

fn number(obj: &Map<String, Value>, key: &'static str) -> Result<Option<f64>, DecodeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| DecodeError::field(key, "not a finite number")),
        Some(_) => Err(DecodeError::field(key, "must be a number")),
    }
}

fn position(obj: &Map<String, Value>, now_ms: i64) -> Result<Position, DecodeError> {
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => return Err(DecodeError::field("id", "missing (string or integer)")),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(DecodeError::field("id", "must be 1..=64 characters"));
    }
    let lat = number(obj, "lat")?.ok_or_else(|| DecodeError::field("lat", "missing"))?;
    let lon = number(obj, "lon")?.ok_or_else(|| DecodeError::field("lon", "missing"))?;
    if !(-90.0..=90.0).contains(&lat) {
        return Err(DecodeError::field("lat", format!("{lat} out of range")));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(DecodeError::field("lon", format!("{lon} out of range")));
    }
    let mut p = Position::new(id);
    p.latitude = lat;
    p.longitude = lon;
    p.time_ms = match obj.get("time") {
        None | Some(Value::Null) => now_ms,
        Some(Value::String(s)) => {
            parse_datetime(s).ok_or_else(|| DecodeError::field("time", "not RFC 3339"))?
        }
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(unix_number_to_ms)
            .ok_or_else(|| DecodeError::field("time", "bad unix time"))?,
        Some(_) => return Err(DecodeError::field("time", "must be a string or number")),
    };
    if let Some(s) = number(obj, "speed")? {
        if s < 0.0 {
            return Err(DecodeError::field("speed", "negative"));
        }
        p.speed_kmh = s;
    }
    if let Some(c) = number(obj, "course")? {
        p.course = c.rem_euclid(360.0);
    }
    p.altitude_m = number(obj, "alt")?;
    p.accuracy_m = number(obj, "accuracy")?.filter(|a| *a >= 0.0);
    p.valid = match obj.get("valid") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(DecodeError::field("valid", "must be a boolean")),
    };
    if let Some(s) = number(obj, "sats")? {
        if !(0.0..=1000.0).contains(&s) {
            return Err(DecodeError::field("sats", "out of range"));
        }
        p.satellites = Some(s as u32);
    }
    match obj.get("attrs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                p.attributes.insert(k.clone(), v.clone());
            }
        }
        Some(_) => return Err(DecodeError::field("attrs", "must be an object")),
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let line = br#"{"id":"356307042441013","time":"2024-05-01T12:00:00Z","lat":52.52,"lon":13.405,"speed":42.5,"course":-90,"alt":35,"sats":9,"attrs":{"ignition":true}}"#;
        let mut s = SessionState::new();
        let d = decode(line, &mut s).unwrap();
        let p = &d.positions[0];
        assert_eq!(p.device_id, "356307042441013");
        assert_eq!(p.time_ms, 1_714_564_800_000);
        assert_eq!(p.course, 270.0);
        assert_eq!(p.altitude_m, Some(35.0));
        assert_eq!(p.attributes["ignition"], Value::Bool(true));
        assert_eq!(s.device_id.as_deref(), Some("356307042441013"));
    }

    #[test]
    fn unix_times_and_defaults() {
        let mut s = SessionState::new();
        s.now_ms = 5;
        let d = decode(br#"{"id":7,"lat":1,"lon":2,"time":1714564800}"#, &mut s).unwrap();
        assert_eq!(d.positions[0].time_ms, 1_714_564_800_000);
        let d = decode(
            br#"{"id":"a","lat":1,"lon":2,"time":1714564800123}"#,
            &mut s,
        )
        .unwrap();
        assert_eq!(d.positions[0].time_ms, 1_714_564_800_123);
        let d = decode(b"{\"id\":\"a\",\"lat\":1,\"lon\":2}\r\n", &mut s).unwrap();
        assert_eq!(d.positions[0].time_ms, 5);
        assert!(d.positions[0].valid);
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = SessionState::new();
        for (line, field) in [
            (&br#"{"lat":1,"lon":2}"#[..], "id"),
            (br#"{"id":"a","lon":2}"#, "lat"),
            (br#"{"id":"a","lat":91,"lon":2}"#, "lat"),
            (br#"{"id":"a","lat":1,"lon":2,"time":"yesterday"}"#, "time"),
            (br#"{"id":"a","lat":1,"lon":2,"speed":-1}"#, "speed"),
            (br#"{"id":"a","lat":1,"lon":2,"attrs":[]}"#, "attrs"),
            (br#"[1]"#, "line"),
        ] {
            match decode(line, &mut s) {
                Err(DecodeError::BadField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
    }

    #[test]
    fn framing() {
        assert_eq!(frame(b"{}\n{"), Ok(FrameStatus::Complete(3)));
        assert_eq!(frame(b"{"), Ok(FrameStatus::NeedMore));
        assert!(frame(&vec![b'x'; MAX_LINE_LEN]).is_err());
    }
}
