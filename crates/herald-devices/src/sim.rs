//! Device-side encoders for a simulator: the bytes a real tracker sends, for every protocol this
//! crate decodes, plus a deterministic [`Route`] generator producing plausible [`Fix`]es.
//!
//! Everything here is pure: no I/O, no clock, no global randomness. Callers pass the fix time in
//! [`Fix::time_ms`] and the elapsed time to [`Route::next`].
//!
//! ```
//! use herald_devices::sim::{self, Route};
//! use herald_devices::{gt06, FrameStatus, SessionState};
//!
//! let mut route = Route::new(42, 52.52, 13.405).starting_at(1_714_564_800_000);
//! let mut wire = sim::gt06_login("356307042441013", 1);
//! wire.extend(sim::gt06_location(&route.next(5_000), 2));
//!
//! // The server side of the same crate decodes it.
//! let mut session = SessionState::new();
//! let mut positions = Vec::new();
//! while let Ok(FrameStatus::Complete(n)) = gt06::frame(&wire) {
//!     let frame: Vec<u8> = wire.drain(..n).collect();
//!     let decoded = gt06::decode(&frame, &mut session).unwrap();
//!     assert!(decoded.reply.is_some()); // the ACK the device waits for
//!     positions.extend(decoded.positions);
//! }
//! assert_eq!(positions.len(), 1);
//! assert_eq!(positions[0].device_id, "356307042441013");
//! ```
//!
//! # Encoders
//!
//! | function | protocol | wire form |
//! | --- | --- | --- |
//! | [`gt06_login`] | GT06 | `78 78 0d 01 <IMEI BCD 8> <serial> <crc> 0d 0a` |
//! | [`gt06_heartbeat`] | GT06 | `78 78 0a 13 <info> <voltage> <gsm> <alarm> <lang> <serial> <crc> 0d 0a` |
//! | [`gt06_location`] | GT06 | `78 78 1f 12 <GPS 18> <LBS 8> <serial> <crc> 0d 0a` (GPS + LBS) |
//! | [`gt06_location_22`] | GT06 | `78 78 22 22 <GPS 18> <LBS 8> <acc> <mode> <realtime> <serial> <crc> 0d 0a` |
//! | [`h02_location`] | H02 | `*HQ,<id>,V1,HHMMSS,A,DDMM.MMMM,N,DDDMM.MMMM,E,<kn>,<course>,DDMMYY,FFFFFBFF#` |
//! | [`h02_heartbeat`] | H02 | `*HQ,<id>,HTBT#` |
//! | [`teltonika_imei`] | Teltonika | `<len u16> <ASCII IMEI>` |
//! | [`teltonika_codec8`] / [`teltonika_codec8e`] | Teltonika | `00000000 <len u32> 08/8e <n> <records> <n> <crc u32>` |
//! | [`osmand_query`] | OsmAnd | `/?id=..&timestamp=..&lat=..&lon=..&speed=<kn>&bearing=..&altitude=..&valid=..` |
//! | [`osmand_json`] | OsmAnd | Traccar Client ≥ 9 JSON body |
//! | [`jsonl_line`] | JSON lines | `{"id":..,"time":RFC 3339,"lat":..,...}\n` |
//!
//! Checksums are computed with the crate's own [`crate::crc16_x25`] (GT06) and
//! [`crate::crc16_ibm`] (Teltonika), so the frames decode with `crc_ok: Some(true)` under
//! [`crate::CrcPolicy::Strict`].
//!
//! # Precision (what survives a round trip through the decoders)
//!
//! | protocol | time | lat/lon | speed | course | altitude | satellites | valid |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | GT06 | whole seconds (floor), UTC, years 2000..=2255 | 1/1 800 000 deg (±2.8e-7°) | whole km/h, max 255 | whole degrees | not sent | 0..=15 | yes |
//! | H02 | whole seconds (floor), UTC, years 2000..=2099 | 0.0001 minute (±8.4e-7°) | 0.01 kn (±0.01 km/h) | whole degrees | not sent | not sent | yes (`A`/`V`) |
//! | Teltonika | exact ms | 1e-7 deg (±5e-8°) | whole km/h | whole degrees | whole metres (i16) | exact | `satellites > 0` (see [`teltonika_codec8`]) |
//! | OsmAnd query | whole seconds (floor) | exact | ±0.001 km/h | exact | exact | not sent | yes |
//! | OsmAnd JSON | exact ms | exact¹ | ±0.001 km/h | exact¹ | exact¹ | not sent | always valid |
//! | JSON lines | exact ms | exact¹ | exact¹ | exact¹ | exact¹ | exact | yes |
//!
//! ¹ Written as shortest round-trip decimals; serde_json's default float parser (without the
//! `float_roundtrip` feature) can read them back one ulp off (~1e-14 degrees).
//!
//! Courses are sent normalised to `0..360` (rounded courses of 359.5 and up become 0). Fix fields
//! are expected to be finite; non-finite numbers are sent as 0 (JSON: omitted).

use serde_json::{json, Map, Value};

use crate::util::{civil_from_unix, crc16_ibm};

/// One GPS fix as a simulated device knows it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fix {
    /// Fix time, unix milliseconds UTC.
    pub time_ms: i64,
    /// WGS84 latitude in degrees.
    pub latitude: f64,
    /// WGS84 longitude in degrees.
    pub longitude: f64,
    /// Ground speed in km/h.
    pub speed_kmh: f64,
    /// Course over ground in degrees (any value; normalised to 0..360 on the wire).
    pub course: f64,
    /// Altitude above sea level in metres.
    pub altitude_m: f64,
    /// Satellites used in the fix.
    pub satellites: u8,
    /// GPS lock.
    pub valid: bool,
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// Course rounded to whole degrees in `0..360`.
fn course_deg(course: f64) -> u16 {
    (finite(course).rem_euclid(360.0).round() as u16) % 360
}

/// Speed rounded to whole km/h, clamped to `0..=max`.
fn speed_int(speed_kmh: f64, max: u16) -> u16 {
    finite(speed_kmh).round().clamp(0.0, f64::from(max)) as u16
}

/// `(year, month, day, hour, minute, second)` of a unix-ms time (seconds floored).
fn civil(time_ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    civil_from_unix(time_ms.div_euclid(1000))
}

// ---------------------------------------------------------------------------------------------
// GT06
// ---------------------------------------------------------------------------------------------

/// A basic `78 78` GT06 frame: `78 78 | len | type | content | serial | crc | 0d 0a`.
fn gt06_frame(msg_type: u8, content: &[u8], serial: u16) -> Vec<u8> {
    // The device frame has the same layout as the server reply (CRC-16/X-25 over len..serial).
    crate::gt06::encode_reply(false, msg_type, serial, content)
}

/// GT06 login (type 0x01): the IMEI as 8 BCD bytes (`0` + 15 digits).
///
/// `imei` should be 15 ASCII digits (what the decoder reports back). Shorter ids are left-padded
/// with zeros, longer ones keep their last 15 digits, and non-digit characters encode as `0`.
/// The login carries no time-zone extension, so the server treats device times as UTC (which is
/// what [`gt06_location`] sends).
pub fn gt06_login(imei: &str, serial: u16) -> Vec<u8> {
    let digits: Vec<u8> = imei
        .bytes()
        .map(|b| if b.is_ascii_digit() { b - b'0' } else { 0 })
        .collect();
    let tail = &digits[digits.len().saturating_sub(15)..];
    let mut nibbles = vec![0u8; 16 - tail.len()];
    nibbles.extend_from_slice(tail);
    let bcd: Vec<u8> = nibbles.chunks(2).map(|c| (c[0] << 4) | c[1]).collect();
    gt06_frame(0x01, &bcd, serial)
}

/// GT06 status/heartbeat (type 0x13, 5 content bytes): terminal info `0x46` (GPS tracking on,
/// charging, ACC on), voltage level 6 (full), GSM strength 4 (strong), no alarm, English.
///
/// The decoder reports it as [`crate::MessageKind::Status`] with `ignition`, `charge`,
/// `batteryLevel` 100 and `rssi` 4, and owes the `78 78 05 13 <serial> ..` acknowledgement.
pub fn gt06_heartbeat(serial: u16) -> Vec<u8> {
    gt06_frame(0x13, &[0x46, 0x06, 0x04, 0x00, 0x02], serial)
}

/// The 18-byte GPS block: `date(6) | 0xC? gps-info/satellites | lat u32 | lon u32 | speed u8 |
/// course/status u16` (bit 12 positioned, bit 10 north, bit 11 west, bits 0..9 course).
fn gt06_gps_block(fix: &Fix) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = civil(fix.time_ms);
    let mut out = vec![
        (y - 2000).clamp(0, 255) as u8,
        mo as u8,
        d as u8,
        h as u8,
        mi as u8,
        s as u8,
        0xc0 | fix.satellites.min(15),
    ];
    let lat = finite(fix.latitude).clamp(-90.0, 90.0);
    let lon = finite(fix.longitude).clamp(-180.0, 180.0);
    out.extend_from_slice(&((lat.abs() * 1_800_000.0).round() as u32).to_be_bytes());
    out.extend_from_slice(&((lon.abs() * 1_800_000.0).round() as u32).to_be_bytes());
    out.push(speed_int(fix.speed_kmh, 255) as u8);
    let mut flags = course_deg(fix.course);
    if fix.valid {
        flags |= 1 << 12;
    }
    if lat >= 0.0 {
        flags |= 1 << 10;
    }
    if lon < 0.0 {
        flags |= 1 << 11;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// The 8-byte LBS block `mcc(2) mnc(1) lac(2) cid(3)`, zeroed (no cell information), which the
/// decoder skips.
const GT06_NO_CELL: [u8; 8] = [0; 8];

/// GT06 GPS + LBS location (type 0x12, the classic GT06 report, length byte 0x1f).
///
/// The device time is sent in UTC (see [`gt06_login`]); the cell block is zeroed. See the module
/// docs for the precision.
pub fn gt06_location(fix: &Fix, serial: u16) -> Vec<u8> {
    let mut content = gt06_gps_block(fix);
    content.extend_from_slice(&GT06_NO_CELL);
    gt06_frame(0x12, &content, serial)
}

/// GT06 GPS + LBS location of the newer firmware (type 0x22, length byte 0x22), which adds the
/// ACC (ignition) state, the upload mode (0x00: timed) and the real-time flag (0x00: real time).
/// The decoder reports `ignition`, `event` 0 and `archive` false.
pub fn gt06_location_22(fix: &Fix, ignition: bool, serial: u16) -> Vec<u8> {
    let mut content = gt06_gps_block(fix);
    content.extend_from_slice(&GT06_NO_CELL);
    content.extend_from_slice(&[u8::from(ignition), 0x00, 0x00]);
    gt06_frame(0x22, &content, serial)
}

// ---------------------------------------------------------------------------------------------
// H02
// ---------------------------------------------------------------------------------------------

/// `DDMM.MMMM` (latitude, `deg_digits` 2) or `DDDMM.MMMM` (longitude, 3) of an absolute value.
fn h02_coordinate(deg: f64, deg_digits: usize) -> String {
    // Work in units of 0.0001 minute so rounding carries into the degrees (never "60.0000").
    let units = (deg.abs() * 600_000.0).round() as u64;
    let d = units / 600_000;
    let min = units % 600_000;
    format!(
        "{d:0w$}{:02}.{:04}",
        min / 10_000,
        min % 10_000,
        w = deg_digits
    )
}

/// H02 `V1` location sentence:
/// `*HQ,<id>,V1,HHMMSS,<A|V>,DDMM.MMMM,<N|S>,DDDMM.MMMM,<E|W>,<speed kn>,<course>,DDMMYY,FFFFFBFF#`.
///
/// Time is UTC; speed is knots with two decimals; course whole degrees; the status word
/// `FFFFFBFF` means "no alarm, ignition on" (it is active-low). The server owes the `V4` time
/// reply. Satellites and altitude are not part of the sentence.
pub fn h02_location(imei: &str, fix: &Fix) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = civil(fix.time_ms);
    let lat = finite(fix.latitude).clamp(-90.0, 90.0);
    let lon = finite(fix.longitude).clamp(-180.0, 180.0);
    let knots = finite(fix.speed_kmh).max(0.0) / 1.852;
    format!(
        "*HQ,{imei},V1,{h:02}{mi:02}{s:02},{},{},{},{},{},{knots:.2},{},{d:02}{mo:02}{:02},FFFFFBFF#",
        if fix.valid { 'A' } else { 'V' },
        h02_coordinate(lat, 2),
        if lat < 0.0 { 'S' } else { 'N' },
        h02_coordinate(lon, 3),
        if lon < 0.0 { 'W' } else { 'E' },
        course_deg(fix.course),
        y.rem_euclid(100),
    )
    .into_bytes()
}

/// H02 heartbeat `*HQ,<id>,HTBT#`; the server echoes it.
pub fn h02_heartbeat(imei: &str) -> Vec<u8> {
    format!("*HQ,{imei},HTBT#").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Teltonika
// ---------------------------------------------------------------------------------------------

/// Teltonika IMEI handshake: the IMEI length as u16 followed by the ASCII IMEI. The server
/// answers `01` to accept ([`crate::teltonika::IMEI_ACCEPT`]).
pub fn teltonika_imei(imei: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + imei.len());
    out.extend_from_slice(&(imei.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(imei.as_bytes());
    out
}

/// Most records one AVL packet can carry (the record count is a byte).
pub const TELTONIKA_MAX_RECORDS: usize = 255;

/// The IO elements every simulated record carries: `(id, size in bytes, value)`.
/// 239 ignition (on), 240 movement (`speed > 0`), 21 GSM signal (4 of 5).
fn teltonika_io(fix: &Fix) -> [(u16, usize, u64); 3] {
    [
        (239, 1, 1),
        (240, 1, u64::from(finite(fix.speed_kmh) > 0.0)),
        (21, 1, 4),
    ]
}

/// The record header shared by codec 8 and 8E: `ts u64 | priority u8 | lon i32 | lat i32 | alt
/// i16 | angle u16 | sats u8 | speed u16`.
fn teltonika_gps(out: &mut Vec<u8>, fix: &Fix) {
    out.extend_from_slice(&(fix.time_ms.max(0) as u64).to_be_bytes());
    out.push(0); // priority: low
    let lon = finite(fix.longitude).clamp(-180.0, 180.0);
    let lat = finite(fix.latitude).clamp(-90.0, 90.0);
    out.extend_from_slice(&((lon * 1e7).round() as i32).to_be_bytes());
    out.extend_from_slice(&((lat * 1e7).round() as i32).to_be_bytes());
    let alt = finite(fix.altitude_m)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
    out.extend_from_slice(&alt.to_be_bytes());
    out.extend_from_slice(&course_deg(fix.course).to_be_bytes());
    // Teltonika has no validity flag: no fix is sent as 0 satellites.
    let sats = if fix.valid { fix.satellites.max(1) } else { 0 };
    out.push(sats);
    out.extend_from_slice(&speed_int(fix.speed_kmh, u16::MAX).to_be_bytes());
}

/// Wraps AVL data (`codec .. n`) into a TCP packet: zero preamble, data length, data, CRC.
fn teltonika_packet(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&u32::from(crc16_ibm(data)).to_be_bytes());
    out
}

fn teltonika_check_count(fixes: &[Fix]) {
    assert!(
        fixes.len() <= TELTONIKA_MAX_RECORDS,
        "a Teltonika AVL packet carries at most {TELTONIKA_MAX_RECORDS} records, got {}",
        fixes.len()
    );
}

/// Teltonika codec 8 AVL packet (TCP):
/// `00000000 | len u32 | 08 | n | records | n | crc u32` (CRC-16/IBM over `08 .. n`, as u32).
///
/// Each record: timestamp (ms), priority 0, lon/lat × 1e7, altitude (m), angle (whole degrees),
/// satellites, speed (whole km/h), event IO 0, and 1-byte IO elements 239 ignition (on),
/// 240 movement (`speed > 0`) and 21 GSM signal (4). Teltonika has no validity flag: an invalid
/// fix is sent with 0 satellites and a valid one with at least 1 (the decoder derives `valid`
/// from `satellites > 0`). The server owes the record count as a u32.
///
/// # Panics
///
/// When `fixes` holds more than [`TELTONIKA_MAX_RECORDS`] fixes (split them into several packets).
pub fn teltonika_codec8(fixes: &[Fix]) -> Vec<u8> {
    teltonika_check_count(fixes);
    let n = fixes.len() as u8;
    let mut data = vec![0x08, n];
    for fix in fixes {
        teltonika_gps(&mut data, fix);
        let io = teltonika_io(fix);
        data.push(0); // event IO id
        data.push(io.len() as u8); // total IO count
        for size in [1usize, 2, 4, 8] {
            let of_size: Vec<_> = io.iter().filter(|e| e.1 == size).collect();
            data.push(of_size.len() as u8);
            for &&(id, _, value) in &of_size {
                data.push(id as u8);
                data.extend_from_slice(&value.to_be_bytes()[8 - size..]);
            }
        }
    }
    data.push(n);
    teltonika_packet(&data)
}

/// Teltonika codec 8 Extended AVL packet: as [`teltonika_codec8`] with codec `8e`, 2-byte event
/// id, counts and IO ids, and an empty variable-length (NX) block.
///
/// # Panics
///
/// When `fixes` holds more than [`TELTONIKA_MAX_RECORDS`] fixes.
pub fn teltonika_codec8e(fixes: &[Fix]) -> Vec<u8> {
    teltonika_check_count(fixes);
    let n = fixes.len() as u8;
    let mut data = vec![0x8e, n];
    for fix in fixes {
        teltonika_gps(&mut data, fix);
        let io = teltonika_io(fix);
        data.extend_from_slice(&0u16.to_be_bytes()); // event IO id
        data.extend_from_slice(&(io.len() as u16).to_be_bytes());
        for size in [1usize, 2, 4, 8] {
            let of_size: Vec<_> = io.iter().filter(|e| e.1 == size).collect();
            data.extend_from_slice(&(of_size.len() as u16).to_be_bytes());
            for &&(id, _, value) in &of_size {
                data.extend_from_slice(&id.to_be_bytes());
                data.extend_from_slice(&value.to_be_bytes()[8 - size..]);
            }
        }
        data.extend_from_slice(&0u16.to_be_bytes()); // NX count
    }
    data.push(n);
    teltonika_packet(&data)
}

// ---------------------------------------------------------------------------------------------
// OsmAnd
// ---------------------------------------------------------------------------------------------

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// OsmAnd / Traccar Client query form: the request target of a `GET` (or `POST` without body):
/// `/?id=<id>&timestamp=<unix s>&lat=<deg>&lon=<deg>&speed=<knots>&bearing=<deg>&altitude=<m>&valid=<bool>`.
///
/// As Traccar Client does, the timestamp is whole unix seconds (Traccar's own decoder rejects
/// fractional seconds) and the speed is in knots. Coordinates, bearing and altitude are written
/// with Rust's shortest round-trip formatting, so they decode exactly. The server answers
/// `200 OK` ([`crate::osmand::http_status`]).
pub fn osmand_query(id: &str, fix: &Fix) -> String {
    format!(
        "/?id={}&timestamp={}&lat={}&lon={}&speed={}&bearing={}&altitude={}&valid={}",
        url_encode(id),
        fix.time_ms.div_euclid(1000),
        finite(fix.latitude),
        finite(fix.longitude),
        finite(fix.speed_kmh).max(0.0) / 1.852,
        finite(fix.course).rem_euclid(360.0),
        finite(fix.altitude_m),
        fix.valid,
    )
}

/// RFC 3339 UTC with milliseconds: `2024-05-01T12:00:00.123Z`.
fn rfc3339_ms(time_ms: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(time_ms);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        time_ms.rem_euclid(1000)
    )
}

/// Inserts `key: v` when `v` is finite.
fn put(m: &mut Map<String, Value>, key: &str, v: f64) {
    if let Some(n) = serde_json::Number::from_f64(v) {
        m.insert(key.to_string(), Value::Number(n));
    }
}

/// OsmAnd JSON form (Traccar Client ≥ 9), the body of a `POST` with
/// `Content-Type: application/json`:
/// `{"device_id":..,"location":{"timestamp":RFC 3339,"coords":{"latitude","longitude","speed"
/// (m/s),"heading","altitude"},"is_moving":speed > 0}}`.
///
/// The JSON form has no validity flag (the decoder always reports a valid fix) and no satellites.
pub fn osmand_json(id: &str, fix: &Fix) -> String {
    let mut coords = Map::new();
    put(&mut coords, "latitude", fix.latitude);
    put(&mut coords, "longitude", fix.longitude);
    put(&mut coords, "speed", finite(fix.speed_kmh).max(0.0) / 3.6);
    put(&mut coords, "heading", finite(fix.course).rem_euclid(360.0));
    put(&mut coords, "altitude", fix.altitude_m);
    json!({
        "device_id": id,
        "location": {
            "timestamp": rfc3339_ms(fix.time_ms),
            "coords": coords,
            "is_moving": finite(fix.speed_kmh) > 0.0,
        }
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// JSON lines
// ---------------------------------------------------------------------------------------------

/// Herald JSON-lines record, newline-terminated:
/// `{"id":..,"time":RFC 3339 ms,"lat","lon","speed" (km/h),"course","alt","valid","sats"}`.
/// Every field round-trips (the course normalised to `0..360`; floats up to serde_json's last-ulp
/// parsing, see the module docs).
pub fn jsonl_line(id: &str, fix: &Fix) -> String {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(id.to_string()));
    m.insert("time".into(), Value::String(rfc3339_ms(fix.time_ms)));
    put(&mut m, "lat", fix.latitude);
    put(&mut m, "lon", fix.longitude);
    put(&mut m, "speed", finite(fix.speed_kmh).max(0.0));
    put(&mut m, "course", finite(fix.course).rem_euclid(360.0));
    put(&mut m, "alt", fix.altitude_m);
    m.insert("valid".into(), Value::Bool(fix.valid));
    m.insert("sats".into(), Value::from(fix.satellites));
    let mut line = Value::Object(m).to_string();
    line.push('\n');
    line
}

// ---------------------------------------------------------------------------------------------
// Route generator
// ---------------------------------------------------------------------------------------------

/// Lowest speed of a [`Route`], km/h.
pub const ROUTE_MIN_SPEED_KMH: f64 = 20.0;
/// Highest speed of a [`Route`], km/h.
pub const ROUTE_MAX_SPEED_KMH: f64 = 80.0;
/// Largest heading change rate of a [`Route`], degrees per second.
pub const ROUTE_MAX_TURN_DEG_S: f64 = 12.0;
/// Largest acceleration / deceleration of a [`Route`], km/h per second (≈ 1.5 m/s²).
pub const ROUTE_MAX_ACCEL_KMH_S: f64 = 5.4;
/// Half the side of a [`Route`]'s bounding box around its start, metres.
pub const ROUTE_HALF_BOX_M: f64 = 5_000.0;
/// Time of a [`Route`]'s start position unless [`Route::starting_at`] says otherwise
/// (2023-11-14T22:13:20Z).
pub const ROUTE_DEFAULT_START_MS: i64 = 1_700_000_000_000;

const METRES_PER_DEG_LAT: f64 = 111_320.0;
/// Integration step; longer intervals are integrated in steps of at most this.
const STEP_MS: i64 = 1000;
/// Cap on integration steps per call (longer intervals use longer steps).
const MAX_STEPS: i64 = 3600;

/// A deterministic, plausible vehicle trajectory.
///
/// The vehicle drives at 20..=80 km/h ([`ROUTE_MIN_SPEED_KMH`], [`ROUTE_MAX_SPEED_KMH`]), changes
/// speed by at most [`ROUTE_MAX_ACCEL_KMH_S`] per second towards occasionally re-drawn targets,
/// turns smoothly (heading rate is a damped random walk, at most [`ROUTE_MAX_TURN_DEG_S`]) and
/// steers back towards the start when it nears the edge of a box of ±[`ROUTE_HALF_BOX_M`] around
/// it (positions are also clamped to the box, so they never leave it). Altitude drifts slowly,
/// satellites vary between 6 and 14, every fix is valid.
///
/// The same seed and the same sequence of `dt_ms` always give the same fixes (xorshift64*
/// seeded through splitmix64; no dependency, no global state).
#[derive(Debug, Clone)]
pub struct Route {
    rng: u64,
    time_ms: i64,
    lat: f64,
    lon: f64,
    center_lat: f64,
    center_lon: f64,
    half_lat: f64,
    half_lon: f64,
    heading: f64,
    turn_rate: f64,
    speed: f64,
    target_speed: f64,
    altitude: f64,
    satellites: u8,
}

impl Route {
    /// A route starting at `start_lat`, `start_lon` at [`ROUTE_DEFAULT_START_MS`].
    ///
    /// The start is sanitised so the bounding box fits on the globe: non-finite values become 0,
    /// latitude is clamped to ±80° and longitude kept far enough from ±180°.
    pub fn new(seed: u64, start_lat: f64, start_lon: f64) -> Self {
        let lat = finite(start_lat).clamp(-80.0, 80.0);
        let half_lat = ROUTE_HALF_BOX_M / METRES_PER_DEG_LAT;
        let half_lon = ROUTE_HALF_BOX_M / (METRES_PER_DEG_LAT * lat.to_radians().cos());
        let lon = finite(start_lon).clamp(-180.0 + half_lon, 180.0 - half_lon);
        let mut route = Route {
            rng: splitmix64(seed) | 1,
            time_ms: ROUTE_DEFAULT_START_MS,
            lat,
            lon,
            center_lat: lat,
            center_lon: lon,
            half_lat,
            half_lon,
            heading: 0.0,
            turn_rate: 0.0,
            speed: 0.0,
            target_speed: 0.0,
            altitude: 0.0,
            satellites: 0,
        };
        route.heading = route.uniform(0.0, 360.0);
        route.speed = route.uniform(ROUTE_MIN_SPEED_KMH, ROUTE_MAX_SPEED_KMH);
        route.target_speed = route.uniform(ROUTE_MIN_SPEED_KMH, ROUTE_MAX_SPEED_KMH);
        route.altitude = route.uniform(30.0, 300.0);
        route.satellites = 6 + (route.next_u64() % 9) as u8;
        route
    }

    /// Sets the time of the current (start) position.
    pub fn starting_at(mut self, time_ms: i64) -> Self {
        self.time_ms = time_ms;
        self
    }

    /// `(min_lat, min_lon, max_lat, max_lon)` of the box the route stays in.
    pub fn bounding_box(&self) -> (f64, f64, f64, f64) {
        (
            self.center_lat - self.half_lat,
            self.center_lon - self.half_lon,
            self.center_lat + self.half_lat,
            self.center_lon + self.half_lon,
        )
    }

    /// The current fix, without moving.
    pub fn current(&self) -> Fix {
        Fix {
            time_ms: self.time_ms,
            latitude: self.lat,
            longitude: self.lon,
            speed_kmh: self.speed,
            course: self.heading,
            altitude_m: self.altitude,
            satellites: self.satellites,
            valid: true,
        }
    }

    /// Advances the vehicle by `dt_ms` milliseconds (≤ 0: no movement) and returns the new fix.
    ///
    /// Intervals are integrated in 1 s steps (at most 3600 steps per call; longer intervals use
    /// proportionally longer steps).
    pub fn next(&mut self, dt_ms: i64) -> Fix {
        if dt_ms > 0 {
            let steps = (dt_ms + STEP_MS - 1) / STEP_MS;
            let steps = steps.clamp(1, MAX_STEPS);
            let step_ms = dt_ms / steps;
            for i in 0..steps {
                // The last step absorbs the remainder so the total is exactly dt_ms.
                let ms = if i == steps - 1 {
                    dt_ms - step_ms * (steps - 1)
                } else {
                    step_ms
                };
                self.step(ms as f64 / 1000.0);
            }
            self.time_ms = self.time_ms.saturating_add(dt_ms);
        }
        self.current()
    }

    fn step(&mut self, dt: f64) {
        // Speed: re-draw the target now and then (about every 20 s), approach it smoothly.
        if self.uniform(0.0, 1.0) < 0.05 * dt {
            self.target_speed = self.uniform(ROUTE_MIN_SPEED_KMH, ROUTE_MAX_SPEED_KMH);
        }
        let max_dv = ROUTE_MAX_ACCEL_KMH_S * dt;
        self.speed = (self.speed + (self.target_speed - self.speed).clamp(-max_dv, max_dv))
            .clamp(ROUTE_MIN_SPEED_KMH, ROUTE_MAX_SPEED_KMH);

        // Heading: damped random walk of the turn rate, or steer home near the box edge.
        let ox = (self.lon - self.center_lon) / self.half_lon;
        let oy = (self.lat - self.center_lat) / self.half_lat;
        if ox.abs().max(oy.abs()) > 0.7 {
            let home = (-ox).atan2(-oy).to_degrees(); // bearing to the centre (box is ~square in metres)
            let diff = (home - self.heading + 540.0).rem_euclid(360.0) - 180.0;
            self.turn_rate = diff.clamp(-ROUTE_MAX_TURN_DEG_S, ROUTE_MAX_TURN_DEG_S);
        } else {
            let kick = self.uniform(-4.0, 4.0) * dt;
            self.turn_rate = ((self.turn_rate + kick) * (1.0 - 0.15 * dt.min(1.0)))
                .clamp(-ROUTE_MAX_TURN_DEG_S, ROUTE_MAX_TURN_DEG_S);
        }
        self.heading = (self.heading + self.turn_rate * dt).rem_euclid(360.0);

        // Position: flat-earth step, clamped to the box.
        let d = self.speed / 3.6 * dt;
        let h = self.heading.to_radians();
        self.lat += d * h.cos() / METRES_PER_DEG_LAT;
        self.lon += d * h.sin() / (METRES_PER_DEG_LAT * self.lat.to_radians().cos());
        let (min_lat, min_lon, max_lat, max_lon) = self.bounding_box();
        self.lat = self.lat.clamp(min_lat, max_lat);
        self.lon = self.lon.clamp(min_lon, max_lon);

        // Altitude drifts by at most 0.5 m/s within 0..=500 m; satellites wander in 6..=14.
        self.altitude = (self.altitude + self.uniform(-0.5, 0.5) * dt).clamp(0.0, 500.0);
        if self.uniform(0.0, 1.0) < 0.1 * dt {
            self.satellites = if self.next_u64() & 1 == 0 {
                self.satellites.saturating_sub(1).max(6)
            } else {
                (self.satellites + 1).min(14)
            };
        }
    }

    /// xorshift64*.
    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
