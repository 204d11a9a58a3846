//! Binary encoding of one [`Position`] as a spool record payload.
//!
//! Floats are stored as raw IEEE-754 bits so they round-trip exactly (including NaN and
//! infinities, which JSON cannot carry); only the attribute map is JSON.
//!
//! Layout (little endian): `version:u8 = 1`, `device_id: u16 len + utf8`, `time_ms:i64`,
//! `latitude, longitude, speed_kmh, course: f64`, `flags:u8` (bit0 valid, bit1 altitude,
//! bit2 satellites, bit3 accuracy), then the optional `altitude_m:f64`, `satellites:u32`,
//! `accuracy_m:f64` that the flags announce, then `attributes: u32 len + JSON object`.

use herald_devices::Position;

const VERSION: u8 = 1;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated")]
    Truncated,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("device id is not UTF-8")]
    DeviceId,
    #[error("attributes: {0}")]
    Attributes(#[from] serde_json::Error),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Why a position could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("device id longer than 65535 bytes")]
    DeviceIdTooLong,
    #[error("attributes: {0}")]
    Attributes(#[from] serde_json::Error),
}

/// Append the payload encoding of `p` to `out`.
pub fn encode(p: &Position, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let id = p.device_id.as_bytes();
    let id_len = u16::try_from(id.len()).map_err(|_| EncodeError::DeviceIdTooLong)?;
    let attrs = serde_json::to_vec(&p.attributes)?;
    out.push(VERSION);
    out.extend_from_slice(&id_len.to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&p.time_ms.to_le_bytes());
    for f in [p.latitude, p.longitude, p.speed_kmh, p.course] {
        out.extend_from_slice(&f.to_bits().to_le_bytes());
    }
    let mut flags = 0u8;
    if p.valid {
        flags |= 1;
    }
    if p.altitude_m.is_some() {
        flags |= 2;
    }
    if p.satellites.is_some() {
        flags |= 4;
    }
    if p.accuracy_m.is_some() {
        flags |= 8;
    }
    out.push(flags);
    if let Some(a) = p.altitude_m {
        out.extend_from_slice(&a.to_bits().to_le_bytes());
    }
    if let Some(s) = p.satellites {
        out.extend_from_slice(&s.to_le_bytes());
    }
    if let Some(a) = p.accuracy_m {
        out.extend_from_slice(&a.to_bits().to_le_bytes());
    }
    // Attribute JSON of a record is far below 4 GiB: the spool caps records well below that.
    let attrs_len = u32::try_from(attrs.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&attrs_len.to_le_bytes());
    out.extend_from_slice(&attrs);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(u64::from_le_bytes(self.arr()?)))
    }
}

/// Decode one payload produced by [`encode`].
pub fn decode(buf: &[u8]) -> Result<Position, DecodeError> {
    let mut r = Reader(buf);
    let [version] = r.arr::<1>()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let id_len = u16::from_le_bytes(r.arr()?) as usize;
    let device_id = std::str::from_utf8(r.take(id_len)?)
        .map_err(|_| DecodeError::DeviceId)?
        .to_owned();
    let mut p = Position::new(device_id);
    p.time_ms = i64::from_le_bytes(r.arr()?);
    p.latitude = r.f64()?;
    p.longitude = r.f64()?;
    p.speed_kmh = r.f64()?;
    p.course = r.f64()?;
    let [flags] = r.arr::<1>()?;
    p.valid = flags & 1 != 0;
    if flags & 2 != 0 {
        p.altitude_m = Some(r.f64()?);
    }
    if flags & 4 != 0 {
        p.satellites = Some(u32::from_le_bytes(r.arr()?));
    }
    if flags & 8 != 0 {
        p.accuracy_m = Some(r.f64()?);
    }
    let attrs_len = u32::from_le_bytes(r.arr()?) as usize;
    p.attributes = serde_json::from_slice(r.take(attrs_len)?)?;
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_exact() {
        let mut p = Position::new("123456789012345");
        p.time_ms = 1_700_000_000_123;
        p.latitude = 0.1 + 0.2;
        p.longitude = -f64::MIN_POSITIVE;
        p.speed_kmh = f64::NAN;
        p.course = f64::INFINITY;
        p.altitude_m = Some(12.5);
        p.satellites = Some(u32::MAX);
        p.valid = true;
        p.attributes
            .insert("ignition".into(), serde_json::json!(true));
        let mut buf = Vec::new();
        encode(&p, &mut buf).expect("encode");
        let q = decode(&buf).expect("decode");
        assert_eq!(q.latitude.to_bits(), p.latitude.to_bits());
        assert!(q.speed_kmh.is_nan());
        assert_eq!(q.course, f64::INFINITY);
        assert_eq!(q.altitude_m, Some(12.5));
        assert_eq!(q.satellites, Some(u32::MAX));
        assert_eq!(q.accuracy_m, None);
        assert_eq!(q.attributes, p.attributes);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err());
        }
    }
}
