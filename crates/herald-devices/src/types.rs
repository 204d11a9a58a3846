//! Types shared by every protocol: the normalized [`Position`], the result of decoding one frame
//! ([`Decoded`]), per-connection [`SessionState`], framing results and errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Attribute map with Traccar-style keys (`ignition`, `battery`, `power`, `io<N>` ...).
pub type Attributes = BTreeMap<String, Value>;

/// One normalized fix reported by a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Device identifier, normally the 15-digit IMEI (H02 and OsmAnd ids may be shorter).
    pub device_id: String,
    /// Fix time, unix milliseconds UTC.
    pub time_ms: i64,
    /// WGS84 latitude in degrees, -90..=90.
    pub latitude: f64,
    /// WGS84 longitude in degrees, -180..=180.
    pub longitude: f64,
    /// Ground speed in km/h (converted from knots or m/s where the wire format uses them).
    pub speed_kmh: f64,
    /// Course over ground in degrees, 0..=360.
    pub course: f64,
    /// Altitude above sea level in metres, when the format carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude_m: Option<f64>,
    /// Whether the device reports the fix as valid (GPS lock).
    pub valid: bool,
    /// Satellites used in the fix, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellites: Option<u32>,
    /// Horizontal accuracy in metres, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    /// Everything else, with Traccar-style names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
}

impl Position {
    /// An empty position for `device_id`; decoders fill in the fields.
    pub fn new(device_id: impl Into<String>) -> Self {
        Position {
            device_id: device_id.into(),
            time_ms: 0,
            latitude: 0.0,
            longitude: 0.0,
            speed_kmh: 0.0,
            course: 0.0,
            altitude_m: None,
            valid: false,
            satellites: None,
            accuracy_m: None,
            attributes: BTreeMap::new(),
        }
    }

    /// Sets attribute `key`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.attributes.insert(key.to_string(), value.into());
    }

    /// True when latitude/longitude/course/speed are finite and within their ranges.
    pub fn in_range(&self) -> bool {
        self.latitude.is_finite()
            && self.longitude.is_finite()
            && (-90.0..=90.0).contains(&self.latitude)
            && (-180.0..=180.0).contains(&self.longitude)
            && self.speed_kmh.is_finite()
            && self.speed_kmh >= 0.0
            && self.course.is_finite()
            && (0.0..=360.0).contains(&self.course)
    }
}

/// What a frame was, independent of whether it carried a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Identifies the device (GT06 login, Teltonika IMEI handshake).
    Login,
    /// Keep-alive without data of interest (may still carry status attributes).
    Heartbeat,
    /// Carries one or more positions.
    Location,
    /// An alarm/event report (may or may not carry a position).
    Alarm,
    /// Device status without a fix (battery, power, iccid, ...).
    Status,
    /// A reply to a server command (Teltonika codec 12/13, GT06 string messages, H02 SMS ...).
    CommandResult,
    /// Anything else that was parsed but not interpreted.
    #[default]
    Other,
}

/// Result of decoding one frame.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Decoded {
    /// What kind of frame this was.
    pub kind: MessageKind,
    /// Device id, when this frame itself identifies the device (login, handshake, H02, OsmAnd, JSON lines).
    pub device_id: Option<String>,
    /// Zero or more positions (Teltonika packets carry many records).
    pub positions: Vec<Position>,
    /// Data that came without a fix (status, command results, ...), Traccar-style names.
    pub attributes: Attributes,
    /// Bytes the server owes the device in response, if any.
    pub reply: Option<Vec<u8>>,
    /// `Some(false)` when the frame had a checksum that did not match and [`CrcPolicy::Lenient`]
    /// accepted it anyway; `Some(true)` when it matched; `None` when the format has no checksum.
    pub crc_ok: Option<bool>,
}

impl Decoded {
    pub(crate) fn new(kind: MessageKind) -> Self {
        Decoded {
            kind,
            ..Default::default()
        }
    }

    /// Looks up an attribute in the first position, then in the frame-level attributes.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.positions
            .iter()
            .find_map(|p| p.attributes.get(key))
            .or_else(|| self.attributes.get(key))
    }
}

/// What to do with frames whose checksum does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrcPolicy {
    /// Decode anyway and report `crc_ok: Some(false)` (Traccar's behaviour: it never verifies).
    /// This is the default: the transport (TCP) already guarantees integrity, and the mismatches
    /// seen in the field come from firmware that computes the checksum wrongly, not from corruption.
    #[default]
    Lenient,
    /// Reject with [`DecodeError::Crc`] and owe no reply (the device will retransmit).
    Strict,
}

/// Per-connection state carried between frames of one device connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// Device id learned at login (GT06 login, Teltonika IMEI handshake) or from the latest frame.
    pub device_id: Option<String>,
    /// Checksum policy, see [`CrcPolicy`].
    pub crc_policy: CrcPolicy,
    /// Current wall-clock time in unix milliseconds, set by the caller before decoding. The crate
    /// never reads a clock; it is only used for replies that carry the server time (H02 `V4`,
    /// GT06 time request). When 0 those replies carry the unix epoch.
    pub now_ms: i64,
    /// GT06: device time-zone offset in seconds east of UTC, learned from the login extension.
    pub gt06_tz_offset_s: i32,
    /// H02: binary (`$`) frame length fixed for this connection by the first binary frame (32 or 45).
    pub h02_binary_len: Option<usize>,
}

impl SessionState {
    /// A fresh session with the default (lenient) checksum policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session that already knows its device (tests, UDP, or a handler that identified the device).
    pub fn with_device(device_id: impl Into<String>) -> Self {
        SessionState {
            device_id: Some(device_id.into()),
            ..Self::default()
        }
    }

    pub(crate) fn require_device(&self) -> Result<String, DecodeError> {
        self.device_id.clone().ok_or(DecodeError::Unidentified)
    }
}

/// Outcome of looking for one frame at the start of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// `buf[..n]` is one complete frame; pass it to `decode` and drop `n` bytes.
    Complete(usize),
    /// Not enough bytes yet; read more and call again.
    NeedMore,
    /// `buf[..n]` is garbage (no frame start); drop `n` bytes and call again.
    Skip(usize),
}

/// A stream that cannot be framed (the connection should be closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared or accumulated frame length exceeds the protocol's bound.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is shorter than its layout requires.
    #[error("truncated frame: needed {needed} bytes, had {had}")]
    Truncated { needed: usize, had: usize },
    /// The frame does not start/end with the protocol's markers.
    #[error("bad frame marker: {0}")]
    BadMarker(&'static str),
    /// The checksum did not match (only with [`CrcPolicy::Strict`]).
    #[error("checksum mismatch: frame says {expected:#06x}, computed {computed:#06x}")]
    Crc { expected: u32, computed: u32 },
    /// A message type or codec this crate does not decode.
    #[error("unsupported {what} {code:#04x}")]
    Unsupported { what: &'static str, code: u32 },
    /// A field has an impossible value.
    #[error("bad field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    /// A location frame arrived before the device identified itself (no login/handshake yet).
    #[error("frame received before the device identified itself")]
    Unidentified,
}

impl DecodeError {
    pub(crate) fn field(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::BadField {
            field,
            reason: reason.into(),
        }
    }
}
