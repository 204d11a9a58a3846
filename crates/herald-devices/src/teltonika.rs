//! Teltonika FMxxxx binary protocol over TCP (and UDP), codecs 8, 8E and 16 for data, 12/13/14
//! for command responses.
//!
//! TCP conversation:
//!
//! ```text
//! device → server   00 0f "356307042441013"                 IMEI handshake (u16 length + ASCII digits)
//! server → device   01                                      accept (00 = reject)
//! device → server   00000000 | len u32 | codec u8 | n u8 | n records | n u8 | crc u32
//! server → device   n as u32 big-endian                     records accepted
//! device → server   ff                                      keep-alive ping (no reply)
//! ```
//!
//! The CRC is CRC-16/IBM over `codec .. n` (the bytes counted by `len`), sent as a u32.
//!
//! Record layouts (`ts` u64 ms, `priority` u8, `lon`/`lat` i32 × 1e-7 degrees, `alt` i16 m,
//! `angle` u16, `sats` u8, `speed` u16 km/h), then IO elements:
//!
//! | codec | event id | total | per-size counts | element id | variable (NX) |
//! | --- | --- | --- | --- | --- | --- |
//! | 0x08 (8)   | u8  | u8  | u8  | u8  | — |
//! | 0x8e (8E)  | u16 | u16 | u16 | u16 | u16 count × (u16 id, u16 len, bytes) |
//! | 0x10 (16)  | u16 + generation u8 | u8 | u8 | u16 | — |
//!
//! Codec 12/13/14 frames (command responses) yield [`MessageKind::CommandResult`] with the text in
//! `result` and are not acknowledged. Codec 7 (GH3000) is rejected as unsupported.
//!
//! A position's `valid` flag is `satellites > 0` (Teltonika sends zeros when there is no fix).
//! Well-known IO ids are named Traccar-style (`ignition`, `motion`, `power`, `battery`,
//! `odometer`, `rssi`, `in1`..`in4`, `out1`, `out2`, `adc1`, `hdop`, `pdop`, `batteryLevel`,
//! `temp1`..`temp4`, `iccid`...); all others are `io<N>`. The record's event IO id is `event`.

use serde_json::{json, Value};

use crate::types::{
    CrcPolicy, DecodeError, Decoded, FrameError, FrameStatus, MessageKind, Position, SessionState,
};
use crate::util::{be_uint, crc16_ibm, hex, num, round, Reader};

/// Largest AVL data length (the u32 after the zero preamble) accepted by [`frame`].
pub const MAX_DATA_LEN: usize = 16 * 1024;
/// Largest IMEI handshake length accepted.
pub const MAX_IMEI_LEN: usize = 64;
/// Reply accepting an IMEI handshake.
pub const IMEI_ACCEPT: [u8; 1] = [0x01];
/// Reply rejecting an IMEI handshake (unknown device); close the connection afterwards.
pub const IMEI_REJECT: [u8; 1] = [0x00];

/// Finds one TCP frame (ping, IMEI handshake or AVL packet) at the start of `buf`.
pub fn frame(buf: &[u8]) -> Result<FrameStatus, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(FrameStatus::NeedMore);
    };
    if first == 0xff {
        return Ok(FrameStatus::Complete(1));
    }
    if buf.len() < 2 {
        return Ok(FrameStatus::NeedMore);
    }
    let short = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if short != 0 {
        // IMEI handshake.
        if short > MAX_IMEI_LEN {
            return Err(FrameError::TooLong {
                len: short,
                max: MAX_IMEI_LEN,
            });
        }
        return Ok(if buf.len() >= 2 + short {
            FrameStatus::Complete(2 + short)
        } else {
            FrameStatus::NeedMore
        });
    }
    if buf.len() < 8 {
        return Ok(FrameStatus::NeedMore);
    }
    if buf[2] != 0 || buf[3] != 0 {
        // Not a zero preamble: resynchronise on the next byte.
        return Ok(FrameStatus::Skip(1));
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_DATA_LEN {
        return Err(FrameError::TooLong {
            len,
            max: MAX_DATA_LEN,
        });
    }
    let total = 8 + len + 4;
    Ok(if buf.len() >= total {
        FrameStatus::Complete(total)
    } else {
        FrameStatus::NeedMore
    })
}

/// Encodes the 4-byte record-count acknowledgement of an AVL packet.
pub fn encode_ack(count: u32) -> [u8; 4] {
    count.to_be_bytes()
}

/// Encodes the UDP acknowledgement: `len=5 u16 | 0000 | 01 | avl packet id | count`.
pub fn encode_udp_ack(avl_packet_id: u8, count: u8) -> [u8; 7] {
    [0x00, 0x05, 0x00, 0x00, 0x01, avl_packet_id, count]
}

/// Decodes one TCP frame as delimited by [`frame`].
pub fn decode(frame: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    match frame {
        [] => Err(DecodeError::Truncated { needed: 1, had: 0 }),
        [0xff] => Ok(Decoded::new(MessageKind::Heartbeat)),
        [0, 0, 0, 0, ..] => decode_avl_packet(frame, session),
        [a, b, rest @ ..] if usize::from(u16::from_be_bytes([*a, *b])) == rest.len() => {
            decode_imei(rest, session)
        }
        _ => Err(DecodeError::BadMarker(
            "neither a ping, an IMEI handshake nor an AVL packet",
        )),
    }
}

fn decode_imei(digits: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if digits.is_empty() || digits.len() > MAX_IMEI_LEN || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::field(
            "imei",
            "handshake must carry ASCII digits",
        ));
    }
    let imei = String::from_utf8_lossy(digits).into_owned();
    session.device_id = Some(imei.clone());
    let mut d = Decoded::new(MessageKind::Login);
    d.device_id = Some(imei);
    d.reply = Some(IMEI_ACCEPT.to_vec());
    Ok(d)
}

fn decode_avl_packet(frame: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    if frame.len() < 8 + 3 + 4 {
        return Err(DecodeError::Truncated {
            needed: 15,
            had: frame.len(),
        });
    }
    let declared = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let (data, crc_ok) = if declared.checked_add(12) == Some(frame.len()) {
        let data_end = frame.len() - 4;
        let data = &frame[8..data_end];
        let t = &frame[data_end..];
        let expected = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
        let computed = u32::from(crc16_ibm(data));
        if expected != computed && session.crc_policy == CrcPolicy::Strict {
            return Err(DecodeError::Crc { expected, computed });
        }
        (data, expected == computed)
    } else {
        if session.crc_policy == CrcPolicy::Strict {
            return Err(DecodeError::field(
                "data length",
                format!("header says {declared}, frame carries {}", frame.len() - 12),
            ));
        }
        // Lenient: like Traccar, parse the records from the bytes that are there; the
        // checksum cannot be located, so the frame counts as unverified.
        (&frame[8..], false)
    };
    let device = session.require_device()?;
    let mut d = decode_avl_data(data, &device)?;
    d.crc_ok = Some(crc_ok);
    Ok(d)
}

/// Decodes UDP datagram: `len u16 | packet id u16 | 01 | avl packet id u8 | imei len u16 | imei |
/// avl data`. The IMEI identifies the device in every datagram.
pub fn decode_udp(datagram: &[u8], session: &mut SessionState) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(datagram);
    let _len = r.u16()?;
    let _packet_id = r.u16()?;
    let _not_usable = r.u8()?;
    let avl_packet_id = r.u8()?;
    let imei_len = usize::from(r.u16()?);
    if imei_len > MAX_IMEI_LEN {
        return Err(DecodeError::field("imei", "longer than 64 bytes"));
    }
    let imei = r.bytes(imei_len)?;
    if imei.is_empty() || !imei.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::field("imei", "must be ASCII digits"));
    }
    let imei = String::from_utf8_lossy(imei).into_owned();
    session.device_id = Some(imei.clone());
    let mut d = decode_avl_data(r.rest(), &imei)?;
    let count = d.positions.len().min(255) as u8;
    d.device_id = Some(imei);
    d.reply = Some(encode_udp_ack(avl_packet_id, count).to_vec());
    Ok(d)
}

/// `codec | n | records | n` (the part covered by the CRC).
fn decode_avl_data(data: &[u8], device: &str) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(data);
    let codec = r.u8()?;
    let count = r.u8()?;
    match codec {
        0x08 | 0x8e | 0x10 => {
            let mut d = Decoded::new(MessageKind::Location);
            let mut dropped = 0u32;
            for _ in 0..count {
                match decode_record(&mut r, codec, device)? {
                    Some(p) => d.positions.push(p),
                    None => dropped += 1,
                }
            }
            if dropped > 0 {
                // Acknowledged (so the device does not resend them forever) but not reported.
                d.attributes.insert("droppedRecords".into(), json!(dropped));
            }
            let count2 = r.u8()?;
            if count2 != count {
                return Err(DecodeError::field(
                    "record count",
                    format!("header says {count}, trailer says {count2}"),
                ));
            }
            d.reply = Some(encode_ack(u32::from(count)).to_vec());
            Ok(d)
        }
        0x0c..=0x0e => decode_command(&mut r, codec),
        other => Err(DecodeError::Unsupported {
            what: "teltonika codec",
            code: u32::from(other),
        }),
    }
}

/// Codec 12 `type size data`, 13 `type size ts data`, 14 `type size imei data`.
fn decode_command(r: &mut Reader, codec: u8) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::new(MessageKind::CommandResult);
    let msg_type = r.u8()?;
    let size = r.u32()? as usize;
    let mut body = r.bytes(size.min(r.remaining()))?;
    if codec == 0x0d && body.len() >= 4 {
        let ts = be_uint(&body[..4]);
        d.attributes.insert("deviceTime".into(), json!(ts * 1000));
        body = &body[4..];
    } else if codec == 0x0e && body.len() >= 8 {
        d.attributes.insert(
            "imei".into(),
            json!(hex(&body[..8]).trim_start_matches('0')),
        );
        body = &body[8..];
    }
    d.attributes.insert("type".into(), json!(msg_type));
    let printable = body
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || matches!(b, b'\r' | b'\n' | b'\t'));
    let text = if printable {
        String::from_utf8_lossy(body).trim_end().to_string()
    } else {
        hex(body)
    };
    // Tachograph / driver identification: "GTSL|6|1|0|<driver>|..."
    if let Some(rest) = text.strip_prefix("GTSL|") {
        if let Some(driver) = rest.split('|').nth(3).filter(|s| !s.is_empty()) {
            d.attributes.insert("driverUniqueId".into(), json!(driver));
        }
    }
    d.attributes.insert("result".into(), Value::String(text));
    Ok(d)
}

/// One AVL record; `None` when its coordinates are impossible (the record is still consumed).
fn decode_record(r: &mut Reader, codec: u8, device: &str) -> Result<Option<Position>, DecodeError> {
    let mut p = Position::new(device);
    let ts = r.u64()?;
    p.time_ms = i64::try_from(ts).map_err(|_| DecodeError::field("timestamp", "out of range"))?;
    p.set("priority", r.u8()?);
    let lon = f64::from(r.i32()?) / 1e7;
    let lat = f64::from(r.i32()?) / 1e7;
    let in_range = (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon);
    p.latitude = lat;
    p.longitude = lon;
    p.altitude_m = Some(f64::from(r.i16()?));
    p.course = f64::from(r.u16()?).min(360.0);
    let sats = r.u8()?;
    p.satellites = Some(u32::from(sats));
    p.valid = sats != 0;
    p.speed_kmh = f64::from(r.u16()?);

    let wide = codec == 0x8e;
    let (event, _total) = match codec {
        0x8e => (r.u16()?, r.u16()?),
        0x10 => {
            let e = r.u16()?;
            p.set("generation", r.u8()?);
            (e, u16::from(r.u8()?))
        }
        _ => (u16::from(r.u8()?), u16::from(r.u8()?)),
    };
    p.set("event", event);
    for size in [1usize, 2, 4, 8] {
        let n = if wide { r.u16()? } else { u16::from(r.u8()?) };
        for _ in 0..n {
            let id = if codec == 0x08 {
                u16::from(r.u8()?)
            } else {
                r.u16()?
            };
            let raw = r.bytes(size)?;
            set_io(&mut p, id, raw);
        }
    }
    if wide {
        let n = r.u16()?;
        for _ in 0..n {
            let id = r.u16()?;
            let len = usize::from(r.u16()?);
            let raw = r.bytes(len)?;
            p.set(&format!("io{id}"), hex(raw));
        }
    }
    Ok(in_range.then_some(p))
}

/// Names well-known IO elements; everything else becomes `io<id>` with the unsigned value.
fn set_io(p: &mut Position, id: u16, raw: &[u8]) {
    let v = be_uint(raw);
    let signed = match raw.len() {
        1 => i64::from(v as u8 as i8),
        2 => i64::from(v as u16 as i16),
        4 => i64::from(v as u32 as i32),
        _ => v as i64,
    };
    match id {
        1..=4 => p.set(&format!("in{id}"), v != 0),
        179 => p.set("out1", v != 0),
        180 => p.set("out2", v != 0),
        9 => p.set("adc1", num(round(v as f64 * 0.001, 3))),
        16 => p.set("odometer", v),
        21 => p.set("rssi", v),
        66 => p.set("power", num(round(v as f64 * 0.001, 3))),
        67 => p.set("battery", num(round(v as f64 * 0.001, 3))),
        72..=75 => p.set(
            &format!("temp{}", id - 71),
            num(round(signed as f64 * 0.1, 1)),
        ),
        113 => p.set("batteryLevel", v),
        181 => p.set("pdop", num(round(v as f64 * 0.1, 1))),
        182 => p.set("hdop", num(round(v as f64 * 0.1, 1))),
        199 => p.set("tripOdometer", v),
        239 => p.set("ignition", v != 0),
        240 => p.set("motion", v != 0),
        _ => p.set(&format!("io{id}"), v),
    }
}
