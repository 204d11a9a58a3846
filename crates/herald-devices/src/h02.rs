//! H02 / Sinotrack protocol: ASCII sentences `*HQ,...#` and binary `$` frames.
//!
//! Text sentence (comma separated; `*TH` and lower-case `*hq` prefixes are accepted):
//!
//! ```text
//! *HQ,<id>,<cmd>,[extra...,]HHMMSS,<A|V>,DDMM.MMMM,<N|S>,DDDMM.MMMM,<E|W>,<speed kn>,<course>,[x,]DDMMYY,<status hex>,...#
//! ```
//!
//! The position fields are located by their hemisphere letters, so command echoes that insert
//! fields before them (`V4,S20,DONE,...`), a missing time (`VP1`), coordinates without a decimal
//! point (`37573392`) and the signed `-23-29.0095` form all decode. Sentences without coordinates
//! (`HTBT`, `LINK`, `V3`/`NBR` cell reports, `SMS`, `XT`, ...) decode to status attributes.
//!
//! Replies (byte-exact Traccar behaviour): `V1` → `*HQ,<id>,V4,V1,<yyyyMMddHHmmss>#` with the server
//! time from [`SessionState::now_ms`]; `HTBT`/`V0` heartbeats → `*HQ,<id>,HTBT#`. Nothing else.
//!
//! Binary frame (BCD nibbles): `$ | id 5 bytes (8 bytes/15 digits in 42-byte frames) | HHMMSS |
//! DDMMYY | lat DDMMmmmm | battery | lon DDDMMmmmm + flags nibble | speed 3 digits + course 3 digits
//! | status u32 | ...`. Flags: bit1 valid, bit2 north, bit3 east.
//!
//! Speeds are knots on the wire and km/h in [`Position`]. The status word is active-low:
//! bit 10 clear = ignition on; bits 0/1/2/19 clear = vibration/sos/overspeed/powerCut alarms.

use serde_json::json;

use crate::types::{
    DecodeError, Decoded, FrameError, FrameStatus, MessageKind, Position, SessionState,
};
use crate::util::{civil_from_unix, hex, knots_to_kmh, num, round, unix_ms};

/// Longest text sentence accepted by [`frame`].
pub const MAX_TEXT_LEN: usize = 1024;
/// Binary frame lengths Traccar distinguishes (short and long).
const BINARY_SHORT: usize = 32;
const BINARY_LONG: usize = 45;

/// Finds one frame. Binary frames have no delimiter: the first binary frame of a connection fixes
/// the length (45 when exactly 45 bytes are buffered, else 32) in [`SessionState::h02_binary_len`].
pub fn frame(buf: &[u8], session: &mut SessionState) -> Result<FrameStatus, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(FrameStatus::NeedMore);
    };
    match first {
        b'*' => match buf.iter().position(|&b| b == b'#') {
            Some(end) => {
                let mut n = end + 1;
                while matches!(buf.get(n), Some(b'\r' | b'\n')) {
                    n += 1;
                }
                if n > MAX_TEXT_LEN {
                    return Err(FrameError::TooLong {
                        len: n,
                        max: MAX_TEXT_LEN,
                    });
                }
                Ok(FrameStatus::Complete(n))
            }
            None if buf.len() > MAX_TEXT_LEN => Err(FrameError::TooLong {
                len: buf.len(),
                max: MAX_TEXT_LEN,
            }),
            None => Ok(FrameStatus::NeedMore),
        },
        b'$' => {
            let len = *session
                .h02_binary_len
                .get_or_insert(if buf.len() == BINARY_LONG {
                    BINARY_LONG
                } else {
                    BINARY_SHORT
                });
            Ok(if buf.len() >= len {
                FrameStatus::Complete(len)
            } else {
                FrameStatus::NeedMore
            })
        }
        _ => Ok(FrameStatus::Skip(
            buf.iter()
                .position(|&b| b == b'*' || b == b'$')
                .unwrap_or(buf.len()),
        )),
    }
}

/// Decodes one text or binary frame.
pub fn decode(frame: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    match frame.first() {
        Some(b'*') => decode_text(frame, session),
        Some(b'$') => decode_binary(frame, session),
        Some(_) => Err(DecodeError::BadMarker(
            "H02 frame must start with '*' or '$'",
        )),
        None => Err(DecodeError::Truncated { needed: 1, had: 0 }),
    }
}

/// `*HQ,<id>,V4,V1,<yyyyMMddHHmmss>#`, Traccar's acknowledgement of a `V1` report.
pub fn encode_v1_reply(id: &str, now_ms: i64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = civil_from_unix(now_ms.div_euclid(1000));
    format!("*HQ,{id},V4,V1,{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}#").into_bytes()
}

/// `*HQ,<id>,HTBT#`, the heartbeat echo.
pub fn encode_heartbeat_reply(id: &str) -> Vec<u8> {
    format!("*HQ,{id},HTBT#").into_bytes()
}

fn decode_text(frame: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    let text = std::str::from_utf8(frame)
        .map_err(|_| DecodeError::field("sentence", "not UTF-8/ASCII"))?;
    let body = text.trim_end_matches(['\r', '\n']);
    let body = body
        .strip_suffix('#')
        .ok_or(DecodeError::BadMarker("H02 sentence must end with '#'"))?;
    let body = body.get(1..).unwrap_or_default(); // drop '*'
    let mut parts = body.splitn(4, ',');
    let _maker = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default().trim().to_string();
    let cmd = parts.next().unwrap_or_default().trim().to_ascii_uppercase();
    let rest = parts.next().unwrap_or_default();
    if !id.is_empty() && !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(DecodeError::field("id", "must be alphanumeric"));
    }
    let device = if id.is_empty() {
        session.require_device()?
    } else {
        session.device_id = Some(id.clone());
        id.clone()
    };
    let fields: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(',').collect()
    };

    let mut d = Decoded::new(MessageKind::Other);
    d.device_id = (!id.is_empty()).then(|| id.clone());
    let mut attrs = crate::types::Attributes::new();

    if cmd == "SMS" {
        attrs.insert("result".into(), json!(rest));
        d.kind = MessageKind::CommandResult;
    } else if cmd == "HTBT" || cmd == "V0" {
        if let Some(level) = fields.first().and_then(|f| f.trim().parse::<u32>().ok()) {
            attrs.insert("batteryLevel".into(), json!(level));
        }
        d.kind = MessageKind::Heartbeat;
        d.reply = Some(encode_heartbeat_reply(&device));
    } else if cmd == "LINK" {
        // LINK,HHMMSS,rssi,satellites,battery,steps,turnovers,DDMMYY,status
        let keys = ["rssi", "sat", "batteryLevel", "steps", "turnovers"];
        for (k, f) in keys.iter().zip(fields.iter().skip(1)) {
            if let Ok(v) = f.trim().parse::<i64>() {
                attrs.insert((*k).into(), json!(v));
            }
        }
        d.kind = MessageKind::Status;
    } else if let Some(p) = parse_position(&fields, &device, session.now_ms)? {
        d.kind = MessageKind::Location;
        if cmd == "V1" {
            d.reply = Some(encode_v1_reply(&device, session.now_ms));
        }
        d.positions.push(p);
    } else {
        d.kind = match cmd.as_str() {
            "V3" | "NBR" | "BS" | "BASE" => MessageKind::Status,
            _ => MessageKind::Other,
        };
        if matches!(cmd.as_str(), "V3" | "NBR") {
            attrs.insert("cells".into(), json!(fields.join(",")));
        }
    }
    if let Some(status) = status_field(&fields) {
        status_attributes(&mut attrs, status);
    }
    match d.positions.first_mut() {
        Some(p) => p.attributes.append(&mut attrs),
        None => d.attributes = attrs,
    }
    Ok(d)
}

/// The last 8-hex-digit field, which is the status word in every sentence type.
fn status_field(fields: &[&str]) -> Option<u32> {
    fields
        .iter()
        .rev()
        .find(|f| f.len() == 8 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|f| u32::from_str_radix(f, 16).ok())
}

fn status_attributes(attrs: &mut crate::types::Attributes, status: u32) {
    attrs.insert("status".into(), json!(status));
    attrs.insert("ignition".into(), json!(status & (1 << 10) == 0));
    let alarm = if status & 1 == 0 {
        Some("vibration")
    } else if status & 2 == 0 {
        Some("sos")
    } else if status & 4 == 0 {
        Some("overspeed")
    } else if status & (1 << 19) == 0 {
        Some("powerCut")
    } else {
        None
    };
    if let Some(a) = alarm {
        attrs.insert("alarm".into(), json!(a));
    }
}

/// Locates `lat,N|S,lon,E|W` and the fields around it.
fn parse_position(
    fields: &[&str],
    device: &str,
    now_ms: i64,
) -> Result<Option<Position>, DecodeError> {
    let Some(j) = (1..fields.len().saturating_sub(2)).find(|&j| {
        matches!(fields[j].trim(), "N" | "S")
            && matches!(fields.get(j + 2).map(|s| s.trim()), Some("E" | "W"))
    }) else {
        return Ok(None);
    };
    let lat_s = fields[j - 1].trim();
    let lon_s = fields[j + 1].trim();
    if lat_s.is_empty() || lon_s.is_empty() {
        return Ok(None);
    }
    let mut lat = parse_coordinate(lat_s).ok_or_else(|| DecodeError::field("latitude", lat_s))?;
    let mut lon = parse_coordinate(lon_s).ok_or_else(|| DecodeError::field("longitude", lon_s))?;
    if fields[j].trim() == "S" {
        lat = -lat.abs();
    }
    if fields[j + 2].trim() == "W" {
        lon = -lon.abs();
    }
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(DecodeError::field(
            "latitude/longitude",
            format!("{lat},{lon}"),
        ));
    }
    let validity = j
        .checked_sub(2)
        .and_then(|i| fields.get(i))
        .map(|s| s.trim());
    let time = j
        .checked_sub(3)
        .and_then(|i| fields.get(i))
        .map(|s| s.trim())
        .filter(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()));
    let speed_kn: f64 = fields
        .get(j + 3)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0.0);
    let course: f64 = fields
        .get(j + 4)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0.0);
    let date = fields
        .iter()
        .skip(j + 5)
        .take(2)
        .map(|s| s.trim())
        .find(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()));

    let mut p = Position::new(device);
    p.latitude = lat;
    p.longitude = lon;
    p.valid = validity == Some("A");
    p.speed_kmh = round(knots_to_kmh(speed_kn.max(0.0)), 3);
    p.course = if course.is_finite() {
        course.clamp(0.0, 360.0)
    } else {
        0.0
    };
    p.time_ms = match date {
        Some(date) if date != "000000" => {
            let n = |s: &str, i: usize| {
                s.get(i..i + 2)
                    .and_then(|x| x.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            let (hh, mi, ss) = time
                .map(|t| (n(t, 0), n(t, 2), n(t, 4)))
                .unwrap_or((0, 0, 0));
            unix_ms(
                2000 + i64::from(n(date, 4)),
                n(date, 2),
                n(date, 0),
                hh,
                mi,
                ss,
                0,
            )?
        }
        // No date in the sentence: the server receive time is the best estimate.
        _ => now_ms,
    };
    Ok(Some(p))
}

/// `DDMM.MMMM`, `DDDMM.MMMM`, `DDMMmmmm` (no point) or `-DD-MM.MMMM`, to degrees.
fn parse_coordinate(s: &str) -> Option<f64> {
    if let Some(rest) = s.strip_prefix('-') {
        let (deg, min) = rest.split_once('-')?;
        let deg: f64 = deg.parse().ok()?;
        let min: f64 = min.parse().ok()?;
        return Some(-(deg + min / 60.0));
    }
    let value: f64 = if s.contains('.') {
        s.parse().ok()?
    } else {
        if s.len() < 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (int, frac) = s.split_at(s.len() - 4);
        format!("{int}.{frac}").parse().ok()?
    };
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let deg = (value / 100.0).floor();
    let min = value - deg * 100.0;
    Some(deg + min / 60.0)
}

/// Nibble reader over BCD bytes.
struct Nibbles<'a> {
    buf: &'a [u8],
    pos: usize, // nibble index
}

impl Nibbles<'_> {
    fn next(&mut self) -> Result<u32, DecodeError> {
        let byte = self.buf.get(self.pos / 2).ok_or(DecodeError::Truncated {
            needed: self.pos / 2 + 1,
            had: self.buf.len(),
        })?;
        let n = if self.pos & 1 == 0 {
            byte >> 4
        } else {
            byte & 0x0f
        };
        self.pos += 1;
        Ok(u32::from(n))
    }

    fn digits(&mut self, n: usize) -> Result<u32, DecodeError> {
        let mut v = 0u32;
        for _ in 0..n {
            let d = self.next()?;
            if d > 9 {
                return Err(DecodeError::field(
                    "bcd",
                    format!("nibble {d:#x} is not a digit"),
                ));
            }
            v = v * 10 + d;
        }
        Ok(v)
    }
}

fn decode_binary(frame: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    let long_id = frame.len() == 42;
    let id_len = if long_id { 8 } else { 5 };
    let needed = 1 + id_len + 6 + 4 + 1 + 5 + 3 + 4;
    if frame.len() < needed {
        return Err(DecodeError::Truncated {
            needed,
            had: frame.len(),
        });
    }
    let id_bytes = &frame[1..1 + id_len];
    let mut id = hex(id_bytes);
    if long_id {
        id.truncate(15);
    }
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::field("id", format!("{id} is not BCD")));
    }
    session.device_id = Some(id.clone());
    let mut nib = Nibbles {
        buf: &frame[1 + id_len..],
        pos: 0,
    };
    let (hh, mi, ss) = (nib.digits(2)?, nib.digits(2)?, nib.digits(2)?);
    let (dd, mo, yy) = (nib.digits(2)?, nib.digits(2)?, nib.digits(2)?);
    let time_ms = unix_ms(2000 + i64::from(yy), mo, dd, hh, mi, ss, 0)?;
    let lat_deg = nib.digits(2)?;
    let lat_min = f64::from(nib.digits(6)?) * 0.0001;
    let battery = nib.digits(2).ok();
    let lon_deg = nib.digits(3)?;
    let lon_min = f64::from(nib.digits(6)?) * 0.0001;
    let flags = nib.next()?;
    let speed = nib.digits(3)?;
    let course = nib.digits(3)?;
    let status_at = 1 + id_len + nib.pos / 2;
    let status = frame
        .get(status_at..status_at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(DecodeError::Truncated {
            needed: status_at + 4,
            had: frame.len(),
        })?;

    let mut lat = f64::from(lat_deg) + lat_min / 60.0;
    let mut lon = f64::from(lon_deg) + lon_min / 60.0;
    if flags & 0x04 == 0 {
        lat = -lat;
    }
    if flags & 0x08 == 0 {
        lon = -lon;
    }
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(DecodeError::field(
            "latitude/longitude",
            format!("{lat},{lon}"),
        ));
    }
    let mut p = Position::new(id.clone());
    p.time_ms = time_ms;
    p.latitude = lat;
    p.longitude = lon;
    p.valid = flags & 0x02 != 0;
    p.speed_kmh = round(knots_to_kmh(f64::from(speed)), 3);
    p.course = f64::from(course).min(360.0);
    if let Some(b) = battery {
        p.set("battery", num(f64::from(b)));
    }
    let mut attrs = crate::types::Attributes::new();
    status_attributes(&mut attrs, status);
    p.attributes.append(&mut attrs);
    let mut d = Decoded::new(MessageKind::Location);
    d.device_id = Some(id);
    d.positions.push(p);
    Ok(d)
}
