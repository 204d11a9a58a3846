//! Idempotency keys: one per distinct position report.
//!
//! A device may send several reports with the same fix time (an alarm and a periodic report,
//! or an I/O change), so `(device_id, time_ms)` is not unique. The key is the first 16 bytes of
//! SHA-256 over a canonical encoding of **every field** of the [`Position`]: device id, time,
//! latitude, longitude, speed, course, altitude, validity, satellites, accuracy and the
//! attribute map. A replay of the same report (a spool replay after a crash, or a device that
//! resends an unacknowledged packet) yields the same key and is stored once; two reports that
//! differ in any field get different keys and are both stored.
//!
//! Canonical form: strings are length-prefixed; floats are hashed by their bit pattern with
//! `-0.0` folded into `0.0` and every NaN into one NaN; absent optionals hash a distinct tag;
//! attributes are written as JSON with object keys sorted at every level (independent of
//! serde_json's `preserve_order` feature). 128 bits make an accidental collision negligible.

use herald_devices::Position;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The idempotency key of one position report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(pub [u8; 16]);

impl IdempotencyKey {
    /// The key of `p`.
    pub fn of(p: &Position) -> Self {
        let mut h = Sha256::new();
        h.update(b"herald-position-v1");
        put_str(&mut h, &p.device_id);
        h.update(p.time_ms.to_le_bytes());
        for f in [p.latitude, p.longitude, p.speed_kmh, p.course] {
            put_f64(&mut h, f);
        }
        put_opt_f64(&mut h, p.altitude_m);
        h.update([u8::from(p.valid)]);
        match p.satellites {
            Some(s) => {
                h.update([1]);
                h.update(s.to_le_bytes());
            }
            None => h.update([0]),
        }
        put_opt_f64(&mut h, p.accuracy_m);
        let mut json = String::new();
        json.push('{');
        for (i, (k, v)) in p.attributes.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            canonical_str(k, &mut json);
            json.push(':');
            canonical_json(v, &mut json);
        }
        json.push('}');
        put_str(&mut h, &json);
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        IdempotencyKey(key)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn put_f64(h: &mut Sha256, f: f64) {
    let bits = if f.is_nan() {
        f64::NAN.to_bits()
    } else if f == 0.0 {
        0u64
    } else {
        f.to_bits()
    };
    h.update(bits.to_le_bytes());
}

fn put_opt_f64(h: &mut Sha256, f: Option<f64>) {
    match f {
        Some(f) => {
            h.update([1]);
            put_f64(h, f);
        }
        None => h.update([0]),
    }
}

fn canonical_str(s: &str, out: &mut String) {
    // Serializing a &str to JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// JSON with object keys sorted at every level.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_str(k, out);
                out.push(':');
                if let Some(v) = m.get(k) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        Value::String(s) => canonical_str(s, out),
        other => out.push_str(&other.to_string()),
    }
}
