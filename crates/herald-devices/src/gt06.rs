//! GT06 / Concox binary protocol.
//!
//! Frame layouts:
//!
//! ```text
//! basic:    78 78 | len u8  | type u8 | content ... | serial u16 | crc u16 | 0d 0a    (len = 1 + content + 4)
//! extended: 79 79 | len u16 | type u8 | content ... | serial u16 | crc u16 | 0d 0a    (len = 1 + content + 4)
//! ```
//!
//! The checksum is CRC-16/X-25 over everything from the length field up to and including the
//! serial. Like Traccar, the decoder locates serial and checksum from the *end* of the frame
//! (`frame[len-6..len-4]` and `frame[len-4..len-2]`), so frames whose length byte is wrong still
//! decode and still get a correctly addressed acknowledgement.
//!
//! The server acknowledges with `78 78 05 <type> <serial> <crc> 0d 0a` ([`encode_reply`]).
//! Acknowledged: login, status/heartbeat, every basic-header location/alarm/status type, the
//! extended AZ735 (0x32/0x33) and modular (0x70) reports. Not acknowledged: command replies
//! (0x80-0x82), Wi-Fi scans (0x69/0xf3, and 0x17 without GPS), 0x94 information and the other
//! extended-header types. 0x8a (time request) gets the server time and 0x2a (address request)
//! an "unknown address" 0x97 reply.
//!
//! Decoded message types (others decode to [`MessageKind::Other`] without data):
//!
//! | type | name | result |
//! | --- | --- | --- |
//! | 0x01 | login | device id (IMEI), time-zone extension |
//! | 0x10 0x11 0x12 0x16 0x1a 0x1e 0x22 0x26 0x27 0x2d 0x31 0x37 0x38 0xa0 0xa3 0xa4 | GPS (+LBS, +status) | position |
//! | 0x24 0xa2 | LBS multiple / Wi-Fi 3 | position when the payload starts with a GPS block, else cell data |
//! | 0x13 0x19 0x23 | status / LBS status / heartbeat | status attributes |
//! | 0x15 0x21 0x9b | string / string info / serial pass-through | `result`, `iccid`, or a position ("Current position!") |
//! | 0x32 0x33 (extended) | AZ735 GPS / alarm | position |
//! | 0x34 | X1 GPS | position, odometer, battery, power, adc |
//! | 0x70 | modular GPS | position (module 0x33), events, battery, iccid |
//! | 0x8a | time request | reply with the server time |
//! | 0x94 | information | power, door, iccid, driverUniqueId, humidity, raw `result` |
//! | 0x95 | alarm | `alarm`, position when the alarm carries GPS |
//!
//! Device time: the GPS blocks carry local date-time; it is converted to UTC with the offset
//! learned from the login extension ([`SessionState::gt06_tz_offset_s`], 0 = UTC).

use serde_json::{json, Value};

use crate::types::{
    Attributes, CrcPolicy, DecodeError, Decoded, FrameError, FrameStatus, MessageKind, Position,
    SessionState,
};
use crate::util::{be_uint, crc16_x25, hex, num, round, unix_ms, Reader};

/// Largest frame accepted by [`frame`] (the extended header could announce 65 541 bytes).
pub const MAX_FRAME_LEN: usize = 4096;

/// Smallest well-formed frame: header, length, type, serial, crc, tail.
const MIN_FRAME_LEN: usize = 10;

/// Finds one frame at the start of `buf`.
///
/// A frame is complete when the declared length is available and ends with `0d 0a`. When the
/// declared length is available but does not end with `0d 0a` (firmware with a wrong length byte),
/// the frame ends at the first `0d 0a` instead. Bytes before a `78 78`/`79 79` header are skipped.
pub fn frame(buf: &[u8]) -> Result<FrameStatus, FrameError> {
    if buf.len() < 2 {
        return Ok(if buf.first().is_some_and(|&b| b != 0x78 && b != 0x79) {
            FrameStatus::Skip(1)
        } else {
            FrameStatus::NeedMore
        });
    }
    let start = buf
        .windows(2)
        .position(|w| w == [0x78, 0x78] || w == [0x79, 0x79]);
    match start {
        Some(0) => {}
        Some(n) => return Ok(FrameStatus::Skip(n)),
        None => {
            // Keep a trailing 0x78/0x79: it may be the first half of a header.
            let keep = usize::from(matches!(buf.last(), Some(0x78 | 0x79)));
            return Ok(FrameStatus::Skip(buf.len() - keep));
        }
    }
    let extended = buf[0] == 0x79;
    let declared = if extended {
        match (buf.get(2), buf.get(3)) {
            (Some(&a), Some(&b)) => usize::from(u16::from_be_bytes([a, b])) + 6,
            _ => return Ok(FrameStatus::NeedMore),
        }
    } else {
        match buf.get(2) {
            Some(&l) => usize::from(l) + 5,
            None => return Ok(FrameStatus::NeedMore),
        }
    };
    if declared > MAX_FRAME_LEN {
        return Err(FrameError::TooLong {
            len: declared,
            max: MAX_FRAME_LEN,
        });
    }
    if buf.len() < declared {
        return Ok(FrameStatus::NeedMore);
    }
    if declared >= 4 && buf.get(declared - 2..declared) == Some(&[0x0d, 0x0a][..]) {
        return Ok(FrameStatus::Complete(declared));
    }
    // Wrong length byte: end at the first CR LF after the header.
    match buf
        .get(3..)
        .and_then(|rest| rest.windows(2).position(|w| w == [0x0d, 0x0a]))
    {
        Some(i) => Ok(FrameStatus::Complete(3 + i + 2)),
        None if buf.len() > MAX_FRAME_LEN => Err(FrameError::TooLong {
            len: buf.len(),
            max: MAX_FRAME_LEN,
        }),
        None => Ok(FrameStatus::NeedMore),
    }
}

/// Encodes a server reply: `78 78 | len | type | content | serial | crc | 0d 0a` (or the `79 79`
/// form with a 2-byte length when `extended`).
pub fn encode_reply(extended: bool, msg_type: u8, serial: u16, content: &[u8]) -> Vec<u8> {
    let len = 5 + content.len();
    let mut out = Vec::with_capacity(len + 6);
    if extended {
        out.extend_from_slice(&[0x79, 0x79]);
        out.extend_from_slice(&(len.min(0xffff) as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[0x78, 0x78, len.min(0xff) as u8]);
    }
    out.push(msg_type);
    out.extend_from_slice(content);
    out.extend_from_slice(&serial.to_be_bytes());
    let crc = crc16_x25(out.get(2..).unwrap_or(&[]));
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&[0x0d, 0x0a]);
    out
}

/// Header facts of one frame.
#[derive(Debug, Clone, Copy)]
struct Header<'a> {
    declared_len: usize,
    /// Everything after the type byte, including serial, crc and tail.
    body: &'a [u8],
    msg_type: u8,
    serial: u16,
}

/// Decodes one frame (as delimited by [`frame`]).
pub fn decode(frame: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if frame.len() < MIN_FRAME_LEN {
        return Err(DecodeError::Truncated {
            needed: MIN_FRAME_LEN,
            had: frame.len(),
        });
    }
    let extended = match (frame[0], frame[1]) {
        (0x78, 0x78) => false,
        (0x79, 0x79) => true,
        _ => {
            return Err(DecodeError::BadMarker(
                "GT06 frame must start with 7878 or 7979",
            ))
        }
    };
    let n = frame.len();
    let serial = u16::from_be_bytes([frame[n - 6], frame[n - 5]]);
    let expected = u16::from_be_bytes([frame[n - 4], frame[n - 3]]);
    let computed = crc16_x25(&frame[2..n - 4]);
    let crc_ok = expected == computed;
    if !crc_ok && session.crc_policy == CrcPolicy::Strict {
        return Err(DecodeError::Crc {
            expected: u32::from(expected),
            computed: u32::from(computed),
        });
    }
    let (declared_len, type_at) = if extended {
        (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4)
    } else {
        (usize::from(frame[2]), 3)
    };
    let msg_type = frame[type_at];
    // Content sits between the type byte and the serial; empty when the frame is too short.
    let content = frame.get(type_at + 1..n - 6).unwrap_or(&[]);
    let header = Header {
        declared_len,
        body: frame.get(type_at + 1..).unwrap_or(&[]),
        msg_type,
        serial,
    };

    let mut out = if msg_type == 0x01 && !extended {
        decode_login(content, header, session)?
    } else {
        let device = session.require_device()?;
        let mut ctx = Ctx {
            device,
            tz: session.gt06_tz_offset_s,
            now_ms: session.now_ms,
            attrs: Attributes::new(),
            position: None,
        };
        let (kind, reply) = if extended {
            decode_extended(&mut ctx, content, header)?
        } else {
            decode_basic(&mut ctx, content, header)?
        };
        let mut d = Decoded::new(kind);
        match ctx.position {
            Some(mut p) => {
                p.attributes.append(&mut ctx.attrs);
                d.positions.push(p);
            }
            None => d.attributes = ctx.attrs,
        }
        d.reply = reply;
        d
    };
    out.crc_ok = Some(crc_ok);
    Ok(out)
}

fn decode_login(
    content: &[u8],
    h: Header<'_>,
    session: &mut SessionState,
) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(content);
    // Short logins (wrong length byte) carry the IMEI into the serial area; read it from the body.
    let raw = if content.len() >= 8 {
        r.bytes(8)?
    } else {
        Reader::new(h.body).bytes(8)?
    };
    let digits = hex(raw);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::field("imei", format!("{digits} is not BCD")));
    }
    let imei = digits.get(1..).unwrap_or_default().to_string();
    let mut d = Decoded::new(MessageKind::Login);
    if let Ok(type_id) = r.u16() {
        d.attributes.insert("deviceType".into(), json!(type_id));
    }
    if let Ok(ext) = r.u16() {
        let v = i32::from(ext >> 4);
        let mut offset = ((v / 100) * 60 + v % 100) * 60;
        if ext & 0x8 != 0 {
            offset = -offset;
        }
        session.gt06_tz_offset_s = offset;
        d.attributes.insert("timezoneOffset".into(), json!(offset));
    }
    session.device_id = Some(imei.clone());
    d.device_id = Some(imei);
    d.reply = Some(encode_reply(false, h.msg_type, h.serial, &[]));
    Ok(d)
}

/// Decoding context for one non-login frame.
struct Ctx {
    device: String,
    tz: i32,
    now_ms: i64,
    attrs: Attributes,
    position: Option<Position>,
}

impl Ctx {
    fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.attrs.insert(key.to_string(), v.into());
    }

    fn setf(&mut self, key: &str, v: f64) {
        self.attrs.insert(key.to_string(), num(v));
    }

    fn local_time(&self, y: u8, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> Result<i64, DecodeError> {
        let ms = unix_ms(
            2000 + i64::from(y),
            u32::from(mo),
            u32::from(d),
            u32::from(h),
            u32::from(mi),
            u32::from(s),
            0,
        )?;
        Ok(ms - i64::from(self.tz) * 1000)
    }

    fn read_time(&self, r: &mut Reader) -> Result<i64, DecodeError> {
        let b = r.bytes(6)?;
        self.local_time(b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// Options of the standard GPS block.
#[derive(Clone, Copy)]
struct GpsLayout {
    /// A length byte precedes the satellites byte (extended AZ735); 0 = no fix.
    length_byte: bool,
    satellites: bool,
    speed: bool,
}

const GPS_STD: GpsLayout = GpsLayout {
    length_byte: false,
    satellites: true,
    speed: true,
};

/// Reads `date(6) [len] [sats] lat(4) lon(4) [speed] course/flags(2)` into `ctx.position`.
/// Returns false when a length byte says there is no fix.
fn read_gps(ctx: &mut Ctx, r: &mut Reader, layout: GpsLayout) -> Result<bool, DecodeError> {
    let time_ms = ctx.read_time(r)?;
    if layout.length_byte && r.u8()? == 0 {
        return Ok(false);
    }
    let mut p = Position::new(ctx.device.clone());
    p.time_ms = time_ms;
    if layout.satellites {
        p.satellites = Some(u32::from(r.u8()? & 0x0f));
    }
    let mut lat = f64::from(r.u32()?) / 1_800_000.0;
    let mut lon = f64::from(r.u32()?) / 1_800_000.0;
    if layout.speed {
        p.speed_kmh = f64::from(r.u8()?);
    }
    let flags = r.u16()?;
    apply_course_flags(&mut p, &mut lat, &mut lon, flags);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(DecodeError::field(
            "latitude/longitude",
            format!("{lat},{lon} out of range"),
        ));
    }
    p.latitude = lat;
    p.longitude = lon;
    ctx.position = Some(p);
    Ok(true)
}

fn apply_course_flags(p: &mut Position, lat: &mut f64, lon: &mut f64, flags: u16) {
    p.course = f64::from(flags & 0x03ff).min(360.0);
    p.valid = flags & (1 << 12) != 0;
    if flags & (1 << 10) == 0 {
        *lat = -*lat;
    }
    if flags & (1 << 11) != 0 {
        *lon = -*lon;
    }
    if flags & (1 << 14) != 0 {
        p.set("ignition", flags & (1 << 15) != 0);
    }
}

/// True when `content` starts with a date and a `0xC?` GPS-info byte (12-byte GPS block marker),
/// i.e. a GPS block in a type whose layout differs between firmwares.
fn looks_like_gps(content: &[u8]) -> bool {
    content.len() >= 18
        && content.get(6).is_some_and(|b| b >> 4 == 0x0c)
        && content.get(1).is_some_and(|m| (1..=12).contains(m))
        && content.get(2).is_some_and(|d| (1..=31).contains(d))
}

/// Cell tower block `mcc(2) mnc(1|2) lac(2|4) cid(3|4|8)`.
fn read_cell(ctx: &mut Ctx, r: &mut Reader, lac4: bool, cid_len: usize) -> Result<(), DecodeError> {
    let mcc = r.u16()?;
    let mnc = if mcc & 0x8000 != 0 {
        u32::from(r.u16()?)
    } else {
        u32::from(r.u8()?)
    };
    let lac = if lac4 { r.u32()? } else { u32::from(r.u16()?) };
    let cid = be_uint(r.bytes(cid_len)?);
    if mcc & 0x7fff != 0 || lac != 0 || cid != 0 {
        ctx.set(
            "network",
            json!({"cellTowers": [{"mcc": mcc & 0x7fff, "mnc": mnc, "lac": lac, "cid": cid}]}),
        );
    }
    Ok(())
}

/// LBS block preceded by its own length (which counts the length byte itself).
fn read_lbs_with_length(ctx: &mut Ctx, r: &mut Reader, cid_len: usize) -> Result<(), DecodeError> {
    let len = usize::from(r.u8()?);
    if len == 0 {
        return Ok(());
    }
    let block = r.bytes(len.saturating_sub(1).min(r.remaining()))?;
    let mut br = Reader::new(block);
    // A short block still counts as consumed; the cell data is best-effort.
    let _ = read_cell(ctx, &mut br, false, cid_len);
    Ok(())
}

fn alarm_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "sos",
        0x02 => "powerCut",
        0x03 | 0x09 => "vibration",
        0x04 => "geofenceEnter",
        0x05 => "geofenceExit",
        0x06 => "overspeed",
        0x0e | 0x0f | 0x19 => "lowBattery",
        0x11 => "powerOff",
        0x13 => "tampering",
        0x14 => "door",
        0x23 => "fallDown",
        0x29 => "hardAcceleration",
        0x2a | 0x2b => "hardCornering",
        0x2c => "accident",
        0x30 => "hardBraking",
        _ => return None,
    })
}

/// Terminal-information byte: ignition, charge, blocked, alarm bits 3..5.
fn read_terminal_info(ctx: &mut Ctx, status: u8) {
    ctx.set("status", status);
    ctx.set("ignition", status & 0x02 != 0);
    ctx.set("charge", status & 0x04 != 0);
    ctx.set("blocked", status & 0x80 != 0);
    let alarm = match (status >> 3) & 0x07 {
        1 => Some("vibration"),
        2 => Some("powerCut"),
        3 => Some("lowBattery"),
        4 => Some("sos"),
        6 => Some("geofence"),
        7 => Some("removing"),
        _ => None,
    };
    if let Some(a) = alarm {
        ctx.set("alarm", a);
    }
}

/// Battery level byte: 0..=6 is a voltage grade (Concox spec), larger values up to 100 are a
/// percentage (newer firmware); anything else is not reported.
fn set_battery_level(ctx: &mut Ctx, v: u16) {
    if v <= 6 {
        ctx.set("batteryLevel", u32::from(v) * 100 / 6);
    } else if v <= 100 {
        ctx.set("batteryLevel", v);
    }
}

/// Status block `info(1) battery(1|2) rssi(1) alarm(1) [language]`.
fn read_status(ctx: &mut Ctx, r: &mut Reader, wide_battery: bool) -> Result<(), DecodeError> {
    let status = r.u8()?;
    read_terminal_info(ctx, status);
    let battery = if wide_battery {
        r.u16()?
    } else {
        u16::from(r.u8()?)
    };
    set_battery_level(ctx, battery);
    ctx.set("rssi", r.u8()?);
    if let Ok(code) = r.u8() {
        if let Some(a) = alarm_name(code) {
            ctx.set("alarm", a);
        }
    }
    Ok(())
}

fn has_gps(t: u8) -> bool {
    matches!(
        t,
        0x10 | 0x11
            | 0x12
            | 0x16
            | 0x1a
            | 0x1e
            | 0x22
            | 0x26
            | 0x27
            | 0x2d
            | 0x31
            | 0x32
            | 0x37
            | 0xa0
            | 0xa3
            | 0xa4
    )
}

fn has_lbs(t: u8) -> bool {
    matches!(
        t,
        0x11 | 0x12
            | 0x16
            | 0x19
            | 0x22
            | 0x26
            | 0x27
            | 0x2d
            | 0x31
            | 0x32
            | 0x37
            | 0xa0
            | 0xa3
            | 0xa4
            | 0xa5
            | 0xa7
    )
}

fn has_status(t: u8) -> bool {
    matches!(t, 0x16 | 0x19 | 0x26 | 0x27 | 0x32 | 0xa3 | 0xa4)
}

type Outcome = (MessageKind, Option<Vec<u8>>);

fn ack(h: Header<'_>) -> Option<Vec<u8>> {
    Some(encode_reply(false, h.msg_type, h.serial, &[]))
}

fn decode_basic(ctx: &mut Ctx, content: &[u8], h: Header<'_>) -> Result<Outcome, DecodeError> {
    let t = h.msg_type;
    let mut r = Reader::new(content);
    match t {
        0x13 => {
            decode_status_13(ctx, content)?;
            Ok((MessageKind::Status, ack(h)))
        }
        0x23 => {
            let status = r.u8()?;
            ctx.set("armed", status & 0x01 != 0);
            ctx.set("ignition", status & 0x02 != 0);
            ctx.set("charge", status & 0x04 != 0);
            if r.remaining() >= 2 {
                ctx.setf("battery", round(f64::from(r.u16()?) * 0.01, 2));
            }
            if r.remaining() >= 1 {
                ctx.set("rssi", r.u8()?);
            }
            Ok((MessageKind::Heartbeat, ack(h)))
        }
        0x8a => {
            let (y, mo, d, hh, mi, s) = crate::util::civil_from_unix(ctx.now_ms.div_euclid(1000));
            let content = [
                (y - 2000).clamp(0, 255) as u8,
                mo as u8,
                d as u8,
                hh as u8,
                mi as u8,
                s as u8,
            ];
            Ok((
                MessageKind::Other,
                Some(encode_reply(false, t, 0, &content)),
            ))
        }
        0x2a => {
            // Address request (GK310): the server owes a reverse-geocoded address; reply "unknown".
            let text = b"NA&&NA&&0##";
            let mut c = vec![text.len() as u8, 0, 0, 0, 0];
            c.extend_from_slice(text);
            Ok((MessageKind::Other, Some(encode_reply(true, 0x97, 0, &c))))
        }
        0x15 => {
            decode_string(ctx, &mut r)?;
            Ok((MessageKind::CommandResult, ack(h)))
        }
        0x95 => decode_alarm(ctx, content, h),
        0x34 => {
            decode_x1_gps(ctx, &mut r)?;
            Ok((MessageKind::Location, ack(h)))
        }
        0x94 => {
            decode_info(ctx, content)?;
            Ok((MessageKind::Status, None))
        }
        0x17 | 0x36 if looks_like_gps(content) => {
            // GPS + cell + 8-byte RFID (GPS_LBS_RFID / LOCATION_RFID).
            read_gps(ctx, &mut r, GPS_STD)?;
            let _ = (|| -> Result<(), DecodeError> {
                read_cell(ctx, &mut r, false, 3)?;
                if t == 0x17 {
                    ctx.set("driverUniqueId", hex(r.bytes(8)?));
                }
                Ok(())
            })();
            Ok((MessageKind::Location, ack(h)))
        }
        0xa3 if !looks_like_gps(content) => {
            // STATUS_3 form: terminal information first, no fix.
            read_terminal_info(ctx, r.u8()?);
            Ok((MessageKind::Status, ack(h)))
        }
        0x17 | 0x69 | 0xf3 => {
            // Wi-Fi scan with BCD time; no fix. Report only how many access points were seen.
            if let Some(&count) = content.get(6) {
                if t != 0xf3 {
                    ctx.set("wifiCount", count);
                }
            }
            Ok((MessageKind::Status, None))
        }
        0x24 | 0xa2 if looks_like_gps(content) => {
            read_gps(ctx, &mut r, GPS_STD)?;
            Ok((MessageKind::Location, ack(h)))
        }
        0x18 | 0x24 | 0x28 | 0x2c | 0x2e | 0xa1 | 0xa2 => {
            // Multi-cell LBS reports: keep the serving cell only.
            let _ = ctx.read_time(&mut r)?;
            let long = matches!(t, 0xa1 | 0xa2);
            let _ = read_cell(ctx, &mut r, long, if long { 8 } else { 3 });
            Ok((MessageKind::Status, ack(h)))
        }
        0x80..=0x82 => Ok((MessageKind::CommandResult, None)),
        0x36 => Ok((MessageKind::Other, ack(h))),
        _ if has_gps(t) || has_lbs(t) || has_status(t) => decode_location(ctx, &mut r, h),
        _ => Ok((MessageKind::Other, ack(h))),
    }
}

/// The GPS/LBS/status family (0x10..0x27, 0x31, 0x37, 0xa0, 0xa3, 0xa4, 0x19, 0xa5, 0xa7).
fn decode_location(ctx: &mut Ctx, r: &mut Reader, h: Header<'_>) -> Result<Outcome, DecodeError> {
    let t = h.msg_type;
    if t == 0x19 && h.declared_len >= 0x17 {
        // SPACE10X multi-LBS variant: no fix, nothing Traccar-compatible to report.
        return Ok((MessageKind::Status, ack(h)));
    }
    if has_gps(t) {
        if r.remaining() < 18 {
            // Short frames (seen in the field) whose GPS block runs into the serial/crc bytes:
            // read it from the raw body like Traccar does; nothing else follows.
            read_gps(ctx, &mut Reader::new(h.body), GPS_STD)?;
            return Ok((MessageKind::Location, ack(h)));
        }
        read_gps(ctx, r, GPS_STD)?;
    }
    // Everything after the GPS block is best-effort: firmware variants differ.
    let _ = decode_location_tail(ctx, r, h);
    let kind = if ctx.position.is_some() {
        if ctx.attrs.contains_key("alarm") {
            MessageKind::Alarm
        } else {
            MessageKind::Location
        }
    } else {
        MessageKind::Status
    };
    Ok((kind, ack(h)))
}

fn decode_location_tail(ctx: &mut Ctx, r: &mut Reader, h: Header<'_>) -> Result<(), DecodeError> {
    let t = h.msg_type;
    let vxt01 = matches!(t, 0x12 | 0x16) && h.declared_len == 0x24;
    if t == 0x16 && vxt01 {
        // VXT01: plain cell block, then status with a 16-bit power field.
        read_cell(ctx, r, false, 3)?;
        let status = r.u8()?;
        read_terminal_info(ctx, status);
        ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2));
        ctx.set("rssi", r.u8()?);
        return Ok(());
    }
    if has_lbs(t) {
        if has_status(t) && r.remaining() == 8 + 5 {
            // Cell block without its length byte (exactly cell + status left).
            read_cell(ctx, r, false, 3)?;
        } else if has_status(t) {
            read_lbs_with_length(ctx, r, 3)?;
        } else if t == 0xa0 {
            let lac4_cid8 = r.remaining() >= 2 + 1 + 4 + 8;
            if lac4_cid8 {
                read_cell(ctx, r, true, 8)?;
            } else {
                read_cell(ctx, r, false, 3)?;
            }
        } else if t == 0x11 {
            read_cell(ctx, r, false, 4)?;
        } else {
            read_cell(ctx, r, false, 3)?;
        }
    }
    if has_status(t) {
        // One firmware family (length 0x26 of type 0x16) sends a 16-bit battery field.
        let wide = t == 0x16 && h.declared_len == 0x26;
        read_status(ctx, r, wide)?;
    }
    match t {
        0x12 if vxt01 => {
            // VXT01: status with 16-bit power, then an alarm extension.
            let status = r.u8()?;
            read_terminal_info(ctx, status);
            ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2));
            ctx.set("rssi", r.u8()?);
        }
        0x12 if h.declared_len == 0x2b => {
            // S5: status, 16-bit power, rssi, alarm, oil, temperature, odometer.
            let status = r.u8()?;
            read_terminal_info(ctx, status);
            ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2));
            ctx.set("rssi", r.u8()?);
            if let Some(a) = alarm_name(r.u8()?) {
                ctx.set("alarm", a);
            }
            ctx.set("oil", r.u16()?);
            let temp = r.u8()?;
            let temp = if temp & 0x80 != 0 {
                -i32::from(temp & 0x7f)
            } else {
                i32::from(temp)
            };
            ctx.set("temp1", temp);
            ctx.set("odometer", u64::from(r.u32()?) * 10);
        }
        0x12 if h.declared_len >= 0x71 => {
            // GT06E with card reader: odometer and a driver licence string.
            ctx.set("odometer", r.u32()?);
            let len = usize::from(r.u8()?);
            let data = r.bytes(len.min(r.remaining()))?;
            ctx.set(
                "driverLicense",
                String::from_utf8_lossy(data).trim().to_string(),
            );
        }
        0x22 | 0x37 | 0x2d if r.remaining() >= 3 => {
            ctx.set("ignition", r.u8()? > 0);
            ctx.set("event", r.u8()?);
            ctx.set("archive", r.u8()? > 0);
        }
        0xa0 if r.remaining() >= 1 => {
            ctx.set("ignition", r.u8()? > 0);
        }
        _ => {}
    }
    if t == 0x37 && r.remaining() >= 3 {
        let module = r.u16()?;
        let len = usize::from(r.u8()?);
        match module {
            0x0027 => ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2)),
            0x002e => ctx.set("odometer", r.u32()?),
            0x003b => {
                let acc = f64::from(r.u16()?) * 0.01;
                if let Some(p) = ctx.position.as_mut() {
                    p.accuracy_m = Some(acc);
                }
            }
            _ => r.skip(len.min(r.remaining()))?,
        }
    }
    if r.remaining() == 4 && !matches!(t, 0x27 | 0xa4) {
        ctx.set("odometer", r.u32()?);
    }
    Ok(())
}

/// 0x13 status / heartbeat in its standard (5 bytes) and extended (14/16 bytes) forms.
fn decode_status_13(ctx: &mut Ctx, content: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(content);
    if content.len() == 14 || content.len() == 16 {
        // info(1) satellites(2) alarm(1) language(1) battery%(1) mode(1) voltage(2) ... temp(2)
        let status = r.u8()?;
        read_terminal_info(ctx, status);
        r.skip(2)?;
        if let Some(a) = alarm_name(r.u8()?) {
            ctx.set("alarm", a);
        }
        r.skip(1)?;
        ctx.set("batteryLevel", r.u8()?);
        r.skip(1)?;
        ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2));
        if let Some(t) = content.get(content.len() - 2..) {
            let v = u16::from_be_bytes([t[0], t[1]]);
            let temp = f64::from(v & 0x7fff) * 0.1;
            ctx.setf(
                "temp1",
                round(if v & 0x8000 != 0 { -temp } else { temp }, 1),
            );
        }
        return Ok(());
    }
    read_status(ctx, &mut r, false)
}

/// 0x15: `len(1) server-flag(4) ascii...`.
fn decode_string(ctx: &mut Ctx, r: &mut Reader) -> Result<(), DecodeError> {
    let len = usize::from(r.u8()?);
    if len < 4 {
        return Ok(());
    }
    r.skip(4)?;
    let data = r.bytes((len - 4).min(r.remaining()))?;
    let text = String::from_utf8_lossy(data)
        .trim_end_matches('\0')
        .to_string();
    if let Some(rest) = text.strip_prefix("<ICCID:") {
        ctx.set("iccid", rest.chars().take(20).collect::<String>());
    } else {
        ctx.set("result", text);
    }
    Ok(())
}

/// 0x95 alarm: short form `date(6) type(1)`, extended form `date lat lon flags type ...`.
fn decode_alarm(ctx: &mut Ctx, content: &[u8], h: Header<'_>) -> Result<Outcome, DecodeError> {
    let mut r = Reader::new(content);
    if content.starts_with(&[0xff, 0xff]) {
        // Video-alarm variant: ffff, 1 byte, GPS block, ..., event code, 0000, file names.
        r.skip(3)?;
        let _ = read_gps(ctx, &mut r, GPS_STD);
        if let Some(start) = content.windows(6).position(|w| w == b"EVENT_") {
            if let Some(&code) = start.checked_sub(3).and_then(|i| content.get(i)) {
                ctx.set("event", code);
            }
            let files = &content[start..];
            let end = files.iter().position(|&b| b == 0).unwrap_or(files.len());
            ctx.set(
                "eventFiles",
                String::from_utf8_lossy(&files[..end]).into_owned(),
            );
        }
        ctx.set("alarm", "general");
        return Ok((MessageKind::Alarm, ack(h)));
    }
    let extended = content.len() > 7;
    if extended {
        read_gps(
            ctx,
            &mut r,
            GpsLayout {
                length_byte: false,
                satellites: false,
                speed: false,
            },
        )?;
    } else {
        let time = ctx.read_time(&mut r)?;
        ctx.set("deviceTime", time);
    }
    let code = r.u8()?;
    ctx.set("event", code);
    let alarm = match code {
        0x01 if extended => "sos",
        0x80 => "vibration",
        0x87 => "overspeed",
        0x90 => "hardAcceleration",
        0x91 => "hardBraking",
        0x92 => "hardCornering",
        0x93 => "accident",
        _ => "general",
    };
    ctx.set("alarm", alarm);
    Ok((MessageKind::Alarm, ack(h)))
}

/// 0x34 X1 GPS.
fn decode_x1_gps(ctx: &mut Ctx, r: &mut Reader) -> Result<(), DecodeError> {
    r.skip(4)?; // data and alarm
    read_gps(ctx, r, GPS_STD)?;
    let _ = (|| -> Result<(), DecodeError> {
        r.skip(2)?; // terminal info
        ctx.set("odometer", r.u32()?);
        read_cell(ctx, r, false, 4)?;
        let driver = r.u32()?;
        if driver > 0 {
            ctx.set("driverUniqueId", driver.to_string());
        }
        ctx.setf("battery", round(f64::from(r.u16()?) * 0.01, 2));
        ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2));
        let port_info = r.u32()?;
        ctx.set("input", r.u8()?);
        ctx.set("output", r.u8()?);
        for i in 1..=((port_info >> 20) & 0x0f) {
            ctx.setf(&format!("adc{i}"), round(f64::from(r.u16()?) * 0.01, 2));
        }
        Ok(())
    })();
    Ok(())
}

/// True when `data` is printable ASCII (allowing CR/LF/TAB).
fn printable(data: &[u8]) -> bool {
    !data.is_empty()
        && data
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || matches!(b, b'\r' | b'\n' | b'\t'))
}

/// Text if printable (trailing CR/LF/NUL trimmed), otherwise lower-case hex.
fn text_or_hex(data: &[u8]) -> String {
    let trimmed = {
        let mut end = data.len();
        while end > 0 && matches!(data[end - 1], b'\r' | b'\n' | 0) {
            end -= 1;
        }
        &data[..end]
    };
    if printable(trimmed) {
        String::from_utf8_lossy(trimmed).into_owned()
    } else {
        hex(data)
    }
}

/// 0x94 information transmission.
fn decode_info(ctx: &mut Ctx, content: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(content);
    let sub = r.u8()?;
    let data = r.rest();
    match sub {
        0x00 if data.len() >= 2 => {
            ctx.setf("power", round(f64::from(r.u16()?) * 0.01, 2));
        }
        0x05 if !data.is_empty() => {
            let flags = r.u8()?;
            ctx.set("door", flags & 0x01 != 0);
            ctx.set("io1", flags & 0x04 != 0);
        }
        0x0a if data.len() >= 26 => {
            r.skip(16)?; // imei, imsi
            let iccid = hex(r.bytes(10)?).replace('f', "");
            ctx.set("iccid", iccid);
        }
        0x1b if data.len() >= 8 && !printable(data) => {
            r.skip(2)?; // header, type
            ctx.set("driverUniqueId", hex(r.bytes(4)?));
        }
        0x1b => {
            ctx.set("serial", text_or_hex(data));
        }
        0x1e if data.len() >= 8 => {
            let temp = r.i32()?;
            let humidity = r.u32()?;
            ctx.setf("temp1", round(f64::from(temp) * 0.1, 1));
            ctx.setf("humidity", round(f64::from(humidity) * 0.1, 1));
        }
        _ if !data.is_empty() => {
            ctx.set("result", text_or_hex(data));
        }
        _ => {}
    }
    ctx.set("infoType", sub);
    Ok(())
}

fn decode_extended(ctx: &mut Ctx, content: &[u8], h: Header<'_>) -> Result<Outcome, DecodeError> {
    let mut r = Reader::new(content);
    match h.msg_type {
        0x21 => {
            r.skip(4)?; // server flag
            let encoding = r.u8()?;
            let data = r.rest();
            let text = if encoding == 1 {
                String::from_utf8_lossy(data).into_owned()
            } else {
                let units: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            };
            if !parse_current_position(ctx, &text) {
                ctx.set("result", text);
            }
            let kind = if ctx.position.is_some() {
                MessageKind::Location
            } else {
                MessageKind::CommandResult
            };
            Ok((kind, None))
        }
        0x94 => {
            decode_info(ctx, content)?;
            Ok((MessageKind::Status, None))
        }
        0x8c => {
            // OBD: date(6) ignition(1) "pid=value,..." text.
            let _ = ctx.read_time(&mut r)?;
            ctx.set("ignition", r.u8()? > 0);
            let text = r.rest();
            let end = text
                .iter()
                .rposition(|&b| b == b',' || b.is_ascii_alphanumeric());
            if let Some(end) = end {
                let t = String::from_utf8_lossy(&text[..=end]);
                ctx.set("obd", t.trim_matches(char::from(0)).to_string());
            }
            Ok((MessageKind::Status, None))
        }
        0x9b => {
            r.skip(1)?; // external device type
            let data = r.rest();
            if !data.is_empty() {
                ctx.set("result", text_or_hex(data));
            }
            Ok((MessageKind::CommandResult, None))
        }
        0x38 if looks_like_gps(content) => {
            read_gps(ctx, &mut r, GPS_STD)?;
            Ok((MessageKind::Location, None))
        }
        0x32 | 0x33 => {
            let fix = read_gps(
                ctx,
                &mut r,
                GpsLayout {
                    length_byte: true,
                    satellites: true,
                    speed: true,
                },
            )?;
            if !fix {
                ctx.set("noFix", true);
            }
            let _ = (|| -> Result<(), DecodeError> {
                let before = ctx.attrs.len();
                read_lbs_with_length(ctx, &mut r, 3)?;
                if ctx.attrs.len() > before {
                    ctx.set("rssi", r.u8()?);
                }
                let n = usize::from(r.u8()?);
                r.skip(n)?; // additional cells
                let n = usize::from(r.u8()?);
                r.skip(n)?; // wifi
                let status = r.u8()?;
                ctx.set("status", status);
                if h.msg_type == 0x33 {
                    match status {
                        0xa0 => ctx.set("armed", true),
                        0xa1 => ctx.set("armed", false),
                        0xa2 | 0xa3 => ctx.set("alarm", "lowBattery"),
                        0xa4 => ctx.set("alarm", "general"),
                        0xa5 => ctx.set("alarm", "door"),
                        _ => {}
                    }
                }
                Ok(())
            })();
            let kind = if h.msg_type == 0x33 {
                MessageKind::Alarm
            } else if ctx.position.is_some() {
                MessageKind::Location
            } else {
                MessageKind::Status
            };
            Ok((kind, Some(encode_reply(true, h.msg_type, h.serial, &[]))))
        }
        0x70 => {
            decode_modular(ctx, content)?;
            let kind = if ctx.position.is_some() {
                MessageKind::Location
            } else {
                MessageKind::Status
            };
            Ok((kind, Some(encode_reply(false, 0x70, h.serial, &[]))))
        }
        _ => Ok((MessageKind::Other, None)),
    }
}

/// "Current position!Lat:N54.739332,Lon:E25.273270,Course:126.53,Speed:0.00,DateTime:2019-..."
fn parse_current_position(ctx: &mut Ctx, text: &str) -> bool {
    let Some(rest) = text.strip_prefix("Current position!") else {
        return false;
    };
    let mut lat = None;
    let mut lon = None;
    let mut course = 0.0;
    let mut speed = 0.0;
    let mut time = None;
    for part in rest.split(',') {
        let Some((key, value)) = part.split_once(':') else {
            continue;
        };
        let hem = |v: &str| -> Option<f64> {
            let (h, n) = v.split_at_checked(1)?;
            let n: f64 = n.trim().parse().ok()?;
            Some(if h == "S" || h == "W" { -n } else { n })
        };
        match key {
            "Lat" => lat = hem(value),
            "Lon" => lon = hem(value),
            "Course" => course = value.trim().parse().unwrap_or(0.0),
            "Speed" => speed = value.trim().parse().unwrap_or(0.0),
            "DateTime" => time = parse_ymd_hms(value.trim()),
            _ => {}
        }
    }
    match (lat, lon, time) {
        (Some(lat), Some(lon), Some(time))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
        {
            let mut p = Position::new(ctx.device.clone());
            p.latitude = lat;
            p.longitude = lon;
            p.course = f64::clamp(course, 0.0, 360.0);
            p.speed_kmh = if speed >= 0.0 { speed } else { 0.0 };
            p.time_ms = time - i64::from(ctx.tz) * 1000;
            p.valid = true;
            ctx.position = Some(p);
            true
        }
        _ => false,
    }
}

/// `YYYY-MM-DD HH:MM:SS`.
fn parse_ymd_hms(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|x| x.trim().parse::<u32>().ok());
    let mut t = time.split(':').map(|x| x.trim().parse::<u32>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    unix_ms(i64::from(y), mo, da, h, mi, se, 0).ok()
}

/// 0x70 modular report: a list of `type(2) length(2) data`.
fn decode_modular(ctx: &mut Ctx, content: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(content);
    while r.remaining() >= 4 {
        let module = r.u16()?;
        let len = usize::from(r.u16()?);
        let data = r.bytes(len.min(r.remaining()))?;
        let mut m = Reader::new(data);
        let _ = decode_module(ctx, module, &mut m);
    }
    Ok(())
}

fn decode_module(ctx: &mut Ctx, module: u16, m: &mut Reader) -> Result<(), DecodeError> {
    match module {
        0x03 => ctx.set("iccid", hex(m.bytes(10)?)),
        0x09 => ctx.set("sat", m.u8()?),
        0x0a => ctx.set("satVisible", m.u8()?),
        0x18 => ctx.setf("battery", round(f64::from(m.u16()?) * 0.01, 2)),
        0x28 => ctx.setf("hdop", round(f64::from(m.u8()?) * 0.1, 1)),
        0x29 => ctx.set("index", m.u32()?),
        0x2a => {
            let input = m.u8()?;
            ctx.set("door", input & 0x0f > 0);
            ctx.set("tamper", input >> 4 > 0);
        }
        0x2b => {
            let event = m.u8()?;
            let alarm = match event {
                0x11 => Some("lowBattery"),
                0x12 => Some("lowPower"),
                0x13 => Some("powerCut"),
                0x14 => Some("removing"),
                _ => None,
            };
            if let Some(a) = alarm {
                ctx.set("alarm", a);
            }
            ctx.set("event", event);
        }
        0x2e => ctx.set("odometer", m.u32_le()?),
        0x33 => {
            let time = i64::from(m.u32()?) * 1000;
            let sats = m.u8()?;
            let alt = m.i16()?;
            let mut lat = f64::from(m.u32()?) / 1_800_000.0;
            let mut lon = f64::from(m.u32()?) / 1_800_000.0;
            let speed = m.u8()?;
            let flags = m.u16()?;
            let mut p = Position::new(ctx.device.clone());
            apply_course_flags(&mut p, &mut lat, &mut lon, flags);
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
                p.time_ms = time;
                p.satellites = Some(u32::from(sats));
                p.altitude_m = Some(f64::from(alt));
                p.latitude = lat;
                p.longitude = lon;
                p.speed_kmh = f64::from(speed);
                ctx.position = Some(p);
            }
        }
        0x34 => {
            ctx.set("event", m.u8()?);
        }
        _ => {}
    }
    Ok(())
}
