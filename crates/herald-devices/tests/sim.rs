//! Every simulator encoder (`herald_devices::sim`) round-trips through the crate's own framer and
//! decoder, yielding the fix back within the protocol's precision (tolerances below, and tabled
//! in the `sim` module docs), the device id, and the reply the server owes. Plus the properties of
//! the route generator.

use herald_devices::sim::{self, Fix, Route};
use herald_devices::{
    gt06, h02, jsonl, osmand, teltonika, CrcPolicy, Decoded, FrameError, FrameStatus, MessageKind,
    Position, SessionState,
};
use serde_json::json;

const IMEI: &str = "356307042441013";

/// What one protocol keeps of a fix.
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    /// Largest |decoded - sent| latitude/longitude, degrees.
    deg: f64,
    /// Largest |decoded - sent| speed, km/h.
    speed: f64,
    /// Largest angular distance of the course, degrees.
    course: f64,
    /// Time is truncated to whole seconds (else exact ms).
    whole_seconds: bool,
    /// Altitude: `Some(tolerance)` when carried, `None` when the decoder reports none.
    altitude: Option<f64>,
}

/// GT06: lat/lon in units of 1/1 800 000 degree (1/30 000 minute) → ±2.8e-7° after rounding;
/// speed a whole km/h byte; course whole degrees; seconds; no altitude.
const GT06: Tolerance = Tolerance {
    deg: 0.5 / 1_800_000.0 + 1e-12,
    speed: 0.5,
    course: 0.5,
    whole_seconds: true,
    altitude: None,
};

/// H02: `DDMM.MMMM` → 0.0001 minute → ±8.4e-7°; speed 0.01 knot → ±0.0093 km/h (+ the decoder's
/// 0.001 km/h rounding); course whole degrees; seconds; no altitude.
const H02: Tolerance = Tolerance {
    deg: 0.5 * 0.0001 / 60.0 + 1e-12,
    speed: 0.005 * 1.852 + 0.0005 + 1e-9,
    course: 0.5,
    whole_seconds: true,
    altitude: None,
};

/// Teltonika: lat/lon i32 × 1e-7 → ±5e-8°; speed and course whole; altitude whole metres; ms.
const TELTONIKA: Tolerance = Tolerance {
    deg: 0.5e-7 + 1e-12,
    speed: 0.5,
    course: 0.5,
    whole_seconds: false,
    altitude: Some(0.5),
};

/// OsmAnd query: exact coordinates/course/altitude (shortest round-trip decimal), speed through
/// knots and the decoder's 0.001 km/h rounding, whole seconds.
const OSMAND_QUERY: Tolerance = Tolerance {
    deg: 0.0,
    speed: 0.0005 + 1e-9,
    course: 1e-9,
    whole_seconds: true,
    altitude: Some(0.0),
};

/// serde_json's default float parser (the workspace does not enable `float_roundtrip`) may be
/// off by one ulp: ~1.4e-14 at 100°, so JSON numbers are compared within 1e-12.
const JSON_ULP: f64 = 1e-12;

/// OsmAnd JSON: like the query form but with millisecond timestamps; speed via m/s; numbers within
/// [`JSON_ULP`].
const OSMAND_JSON: Tolerance = Tolerance {
    deg: JSON_ULP,
    speed: 0.0005 + 1e-9,
    course: 1e-9,
    whole_seconds: false,
    altitude: Some(1e-9),
};

/// JSON lines: everything exact up to serde_json's last-ulp float parsing (course normalised to
/// 0..360), time in exact ms.
const JSONL: Tolerance = Tolerance {
    deg: JSON_ULP,
    speed: 1e-9,
    course: 1e-9,
    whole_seconds: false,
    altitude: Some(1e-9),
};

fn angular_distance(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

fn assert_matches(p: &Position, fix: &Fix, tol: Tolerance, what: &str) {
    let ctx = format!("{what}: sent {fix:?}, decoded {p:?}");
    assert!(p.in_range(), "{ctx}");
    assert!(
        (p.latitude - fix.latitude).abs() <= tol.deg,
        "latitude {ctx}"
    );
    assert!(
        (p.longitude - fix.longitude).abs() <= tol.deg,
        "longitude {ctx}"
    );
    assert!(
        (p.speed_kmh - fix.speed_kmh).abs() <= tol.speed,
        "speed {ctx}"
    );
    assert!(
        angular_distance(p.course, fix.course) <= tol.course,
        "course {ctx}"
    );
    let time = if tol.whole_seconds {
        fix.time_ms.div_euclid(1000) * 1000
    } else {
        fix.time_ms
    };
    assert_eq!(p.time_ms, time, "time {ctx}");
    match tol.altitude {
        Some(t) => {
            let alt = p.altitude_m.unwrap_or_else(|| panic!("altitude {ctx}"));
            assert!((alt - fix.altitude_m).abs() <= t, "altitude {ctx}");
        }
        None => assert_eq!(p.altitude_m, None, "altitude {ctx}"),
    }
}

/// Splits a byte stream with `framer`, feeding it in chunks of `chunk` bytes as a socket would.
fn split<F>(stream: &[u8], chunk: usize, mut framer: F) -> Vec<Vec<u8>>
where
    F: FnMut(&[u8]) -> Result<FrameStatus, FrameError>,
{
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match framer(&buf).expect("stream must frame") {
                FrameStatus::Complete(n) => frames.push(buf.drain(..n).collect()),
                FrameStatus::Skip(n) => panic!("encoder produced {n} garbage bytes: {buf:02x?}"),
                FrameStatus::NeedMore => break,
            }
        }
    }
    assert!(buf.is_empty(), "left over: {buf:02x?}");
    frames
}

/// Frames `stream` at several read sizes (all must agree) and decodes every frame in one session.
fn decode_stream<F, D>(
    stream: &[u8],
    mut framer: F,
    mut decode: D,
    policy: CrcPolicy,
    now_ms: i64,
) -> Vec<Decoded>
where
    F: FnMut(&[u8]) -> Result<FrameStatus, FrameError>,
    D: FnMut(&[u8], &mut SessionState) -> Result<Decoded, herald_devices::DecodeError>,
{
    let frames = split(stream, stream.len().max(1), &mut framer);
    for chunk in [1, 7, 64] {
        assert_eq!(split(stream, chunk, &mut framer), frames, "chunk {chunk}");
    }
    let mut session = SessionState::new();
    session.crc_policy = policy;
    session.now_ms = now_ms;
    frames
        .iter()
        .map(|f| decode(f, &mut session).unwrap_or_else(|e| panic!("{e}: {f:02x?}")))
        .collect()
}

/// Fixes covering every hemisphere, course wrap-around, zero/high speed, invalid fixes,
/// satellite counts beyond GT06's nibble, a leap day and sub-second times.
fn edge_fixes() -> Vec<Fix> {
    let base = Fix {
        time_ms: 1_709_251_199_999, // 2024-02-29T23:59:59.999Z
        latitude: 52.520_008,
        longitude: 13.404_954,
        speed_kmh: 42.4,
        course: 359.7,
        altitude_m: 34.6,
        satellites: 9,
        valid: true,
    };
    vec![
        base,
        Fix {
            latitude: -33.868_820,
            longitude: 151.209_296,
            course: 0.2,
            speed_kmh: 0.0,
            ..base
        },
        Fix {
            latitude: 40.712_776,
            longitude: -74.005_974,
            course: 180.5,
            speed_kmh: 130.26,
            satellites: 20,
            time_ms: 946_684_800_000, // 2000-01-01T00:00:00Z
            ..base
        },
        Fix {
            latitude: -22.906_847,
            longitude: -43.172_897,
            course: 90.0,
            altitude_m: -12.3,
            valid: false,
            satellites: 0,
            time_ms: 1_700_000_000_123,
            ..base
        },
        Fix {
            latitude: 0.0,
            longitude: 0.0,
            course: 0.0,
            altitude_m: 0.0,
            satellites: 3,
            time_ms: 4_102_444_799_000, // 2099-12-31T23:59:59Z
            ..base
        },
        Fix {
            latitude: 89.999_999_9,
            longitude: -179.999_999_9,
            course: 720.4,
            ..base
        },
    ]
}

/// Route fixes plus the edge cases.
fn all_fixes() -> Vec<Fix> {
    let mut route = Route::new(7, 48.137_154, 11.576_124);
    let mut fixes: Vec<Fix> = (0..200).map(|_| route.next(3_000)).collect();
    fixes.extend(edge_fixes());
    fixes
}

#[test]
fn gt06_round_trip() {
    // Known vector: the crate docs' login frame.
    assert_eq!(
        sim::gt06_login("123456789012345", 1),
        [
            0x78, 0x78, 0x0d, 0x01, 0x01, 0x23, 0x45, 0x67, 0x89, 0x01, 0x23, 0x45, 0x00, 0x01,
            0x8c, 0xdd, 0x0d, 0x0a
        ]
    );
    let fixes = all_fixes();
    let mut stream = sim::gt06_login(IMEI, 1);
    stream.extend(sim::gt06_heartbeat(2));
    let mut serial = 3u16;
    for (i, fix) in fixes.iter().enumerate() {
        if i % 2 == 0 {
            stream.extend(sim::gt06_location(fix, serial));
        } else {
            stream.extend(sim::gt06_location_22(fix, i % 4 == 1, serial));
        }
        serial = serial.wrapping_add(1);
    }
    let decoded = decode_stream(&stream, gt06::frame, gt06::decode, CrcPolicy::Strict, 0);
    assert_eq!(decoded.len(), fixes.len() + 2);
    for (i, d) in decoded.iter().enumerate() {
        let serial = i as u16 + 1;
        assert_eq!(d.crc_ok, Some(true), "frame {i}");
        let (msg_type, kind) = match i {
            0 => (0x01, MessageKind::Login),
            1 => (0x13, MessageKind::Status),
            _ if i % 2 == 0 => (0x12, MessageKind::Location),
            _ => (0x22, MessageKind::Location),
        };
        assert_eq!(d.kind, kind, "frame {i}");
        assert_eq!(
            d.reply.as_deref(),
            Some(&gt06::encode_reply(false, msg_type, serial, &[])[..]),
            "ACK of frame {i}"
        );
        match i {
            0 => assert_eq!(d.device_id.as_deref(), Some(IMEI)),
            1 => {
                assert_eq!(d.attributes["ignition"], json!(true));
                assert_eq!(d.attributes["batteryLevel"], json!(100));
                assert_eq!(d.attributes["rssi"], json!(4));
                assert!(!d.attributes.contains_key("alarm"));
            }
            _ => {
                let fix = &fixes[i - 2];
                assert_eq!(d.positions.len(), 1);
                let p = &d.positions[0];
                assert_eq!(p.device_id, IMEI);
                assert_matches(p, fix, GT06, &format!("gt06 frame {i}"));
                assert_eq!(p.valid, fix.valid);
                assert_eq!(p.satellites, Some(u32::from(fix.satellites.min(15))));
                assert!(!p.attributes.contains_key("network"), "zeroed cell block");
                if msg_type == 0x22 {
                    assert_eq!(p.attributes["ignition"], json!((i - 2) % 4 == 1));
                    assert_eq!(p.attributes["archive"], json!(false));
                }
            }
        }
    }
}

#[test]
fn gt06_login_pads_and_truncates_ids() {
    for (id, expected) in [
        ("123", "000000000000123"),
        ("86012345678901234", "012345678901234"),
        (IMEI, IMEI),
    ] {
        let frame = sim::gt06_login(id, 9);
        let d = gt06::decode(&frame, &mut SessionState::new()).unwrap();
        assert_eq!(d.device_id.as_deref(), Some(expected));
        assert_eq!(d.crc_ok, Some(true));
    }
}

#[test]
fn h02_round_trip() {
    let fixes = all_fixes();
    let now_ms = 1_714_564_800_000; // 2024-05-01T12:00:00Z
    let mut stream = sim::h02_heartbeat(IMEI);
    for fix in &fixes {
        stream.extend(sim::h02_location(IMEI, fix));
    }
    let mut session = SessionState::new();
    let decoded = decode_stream(
        &stream,
        |b| h02::frame(b, &mut session),
        h02::decode,
        CrcPolicy::Strict,
        now_ms,
    );
    assert_eq!(decoded.len(), fixes.len() + 1);
    assert_eq!(decoded[0].kind, MessageKind::Heartbeat);
    assert_eq!(
        decoded[0].reply.as_deref(),
        Some(&b"*HQ,356307042441013,HTBT#"[..])
    );
    for (d, fix) in decoded[1..].iter().zip(&fixes) {
        assert_eq!(d.kind, MessageKind::Location);
        assert_eq!(d.device_id.as_deref(), Some(IMEI));
        assert_eq!(
            d.reply.as_deref(),
            Some(&b"*HQ,356307042441013,V4,V1,20240501120000#"[..])
        );
        let p = &d.positions[0];
        assert_eq!(p.device_id, IMEI);
        assert_matches(p, fix, H02, "h02");
        assert_eq!(p.valid, fix.valid);
        assert_eq!(p.satellites, None);
        assert_eq!(p.attributes["ignition"], json!(true));
        assert!(!p.attributes.contains_key("alarm"));
    }
    // The sentence looks like a real one.
    let fix = Fix {
        time_ms: 1_439_650_492_000, // 2015-08-15T14:54:52Z
        latitude: 22.0 + 40.5518 / 60.0,
        longitude: 113.0 + 58.3239 / 60.0,
        speed_kmh: 0.0,
        course: 0.0,
        altitude_m: 0.0,
        satellites: 5,
        valid: true,
    };
    assert_eq!(
        String::from_utf8(sim::h02_location("865205030330012", &fix)).unwrap(),
        "*HQ,865205030330012,V1,145452,A,2240.5518,N,11358.3239,E,0.00,0,150815,FFFFFBFF#"
    );
}

#[test]
fn h02_minutes_never_reach_sixty() {
    // 10.99999999° = 10° 59.9999994' → rounds up to 11° 00.0000'.
    let fix = Fix {
        latitude: 10.999_999_99,
        longitude: -0.000_000_1,
        time_ms: 1_700_000_000_000,
        ..Fix::default()
    };
    let text = String::from_utf8(sim::h02_location("1", &fix)).unwrap();
    assert!(text.contains(",1100.0000,N,00000.0000,W,"), "{text}");
}

#[test]
fn teltonika_round_trip() {
    let fixes = all_fixes();
    let mut stream = sim::teltonika_imei(IMEI);
    assert_eq!(&stream[..2], &[0x00, 0x0f]);
    let packets: Vec<&[Fix]> = fixes.chunks(17).collect();
    for (i, chunk) in packets.iter().enumerate() {
        if i % 2 == 0 {
            stream.extend(sim::teltonika_codec8(chunk));
        } else {
            stream.extend(sim::teltonika_codec8e(chunk));
        }
        stream.push(0xff); // keep-alive ping between packets
    }
    let decoded = decode_stream(
        &stream,
        teltonika::frame,
        teltonika::decode,
        CrcPolicy::Strict,
        0,
    );
    assert_eq!(decoded.len(), 1 + 2 * packets.len());
    assert_eq!(decoded[0].kind, MessageKind::Login);
    assert_eq!(decoded[0].device_id.as_deref(), Some(IMEI));
    assert_eq!(
        decoded[0].reply.as_deref(),
        Some(&teltonika::IMEI_ACCEPT[..])
    );
    for (i, chunk) in packets.iter().enumerate() {
        let d = &decoded[1 + 2 * i];
        assert_eq!(d.kind, MessageKind::Location);
        assert_eq!(d.crc_ok, Some(true));
        assert_eq!(
            d.reply.as_deref(),
            Some(&(chunk.len() as u32).to_be_bytes()[..]),
            "record-count ACK"
        );
        assert!(!d.attributes.contains_key("droppedRecords"));
        assert_eq!(d.positions.len(), chunk.len());
        for (p, fix) in d.positions.iter().zip(chunk.iter()) {
            assert_eq!(p.device_id, IMEI);
            assert_matches(p, fix, TELTONIKA, "teltonika");
            assert_eq!(p.valid, fix.valid);
            let sats = if fix.valid { fix.satellites.max(1) } else { 0 };
            assert_eq!(p.satellites, Some(u32::from(sats)));
            assert_eq!(p.attributes["ignition"], json!(true));
            assert_eq!(p.attributes["motion"], json!(fix.speed_kmh > 0.0));
            assert_eq!(p.attributes["rssi"], json!(4));
            assert_eq!(p.attributes["priority"], json!(0));
            assert_eq!(p.attributes["event"], json!(0));
        }
        let ping = &decoded[2 + 2 * i];
        assert_eq!(ping.kind, MessageKind::Heartbeat);
        assert_eq!(ping.reply, None);
    }
}

#[test]
fn teltonika_codec8_layout() {
    let fix = Fix {
        time_ms: 1_560_161_086_000,
        latitude: 54.6,
        longitude: 25.3,
        speed_kmh: 0.0,
        course: 0.0,
        altitude_m: 0.0,
        satellites: 0,
        valid: false,
    };
    let packet = sim::teltonika_codec8(&[fix]);
    // preamble, data length, codec 8, one record, ..., record count, CRC-16/IBM as u32.
    assert_eq!(&packet[..4], &[0, 0, 0, 0]);
    let len = u32::from_be_bytes(packet[4..8].try_into().unwrap()) as usize;
    assert_eq!(packet.len(), 8 + len + 4);
    assert_eq!(packet[8], 0x08);
    assert_eq!(packet[9], 1);
    assert_eq!(packet[8 + len - 1], 1);
    let crc = herald_devices::crc16_ibm(&packet[8..8 + len]);
    assert_eq!(&packet[8 + len..], &u32::from(crc).to_be_bytes());
    assert_eq!(&packet[10..18], &1_560_161_086_000u64.to_be_bytes());
    // An empty packet is still well-formed.
    let d = teltonika::decode(
        &sim::teltonika_codec8(&[]),
        &mut SessionState::with_device(IMEI),
    )
    .unwrap();
    assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 0][..]));
    assert!(d.positions.is_empty());
}

#[test]
#[should_panic(expected = "at most 255 records")]
fn teltonika_rejects_too_many_records() {
    sim::teltonika_codec8(&vec![Fix::default(); 256]);
}

#[test]
fn osmand_round_trip() {
    let now_ms = 1;
    for (i, fix) in all_fixes().iter().enumerate() {
        let id = if i % 3 == 0 { "phone 1&x=y" } else { IMEI };

        let target = sim::osmand_query(id, fix);
        assert!(target.starts_with("/?id="), "{target}");
        let mut session = SessionState::new();
        session.now_ms = now_ms;
        let r = osmand::decode_request(&target, None, b"", &mut session);
        assert_eq!(osmand::http_status(&r), 200, "{target}");
        let d = r.unwrap();
        assert_eq!(d.kind, MessageKind::Location);
        assert_eq!(d.device_id.as_deref(), Some(id));
        let p = &d.positions[0];
        assert_matches(p, fix, OSMAND_QUERY, &target);
        assert_eq!(p.valid, fix.valid);
        assert!(p.attributes.is_empty(), "{:?}", p.attributes);

        let body = sim::osmand_json(id, fix);
        let r =
            osmand::decode_request("/", Some("application/json"), body.as_bytes(), &mut session);
        assert_eq!(osmand::http_status(&r), 200, "{body}");
        let d = r.unwrap();
        assert_eq!(d.device_id.as_deref(), Some(id));
        let p = &d.positions[0];
        assert_matches(p, fix, OSMAND_JSON, &body);
        assert!(p.valid, "the JSON form has no validity flag");
        assert_eq!(p.attributes["motion"], json!(fix.speed_kmh > 0.0));
    }
}

#[test]
fn jsonl_round_trip() {
    let fixes = all_fixes();
    let stream: String = fixes.iter().map(|f| sim::jsonl_line(IMEI, f)).collect();
    let decoded = decode_stream(
        stream.as_bytes(),
        jsonl::frame,
        jsonl::decode,
        CrcPolicy::Strict,
        0,
    );
    assert_eq!(decoded.len(), fixes.len());
    for (d, fix) in decoded.iter().zip(&fixes) {
        assert_eq!(d.device_id.as_deref(), Some(IMEI));
        assert_eq!(d.reply, None);
        let p = &d.positions[0];
        assert_matches(p, fix, JSONL, "jsonl");
        assert_eq!(p.valid, fix.valid);
        assert_eq!(p.satellites, Some(u32::from(fix.satellites)));
    }
}

fn distance_m(a: &Fix, b: &Fix) -> f64 {
    let dlat = (b.latitude - a.latitude) * 111_320.0;
    let dlon = (b.longitude - a.longitude)
        * 111_320.0
        * ((a.latitude + b.latitude) / 2.0).to_radians().cos();
    dlat.hypot(dlon)
}

#[test]
fn route_is_deterministic_per_seed() {
    let run = |seed| {
        let mut r = Route::new(seed, 52.52, 13.405);
        (0..500)
            .map(|i| r.next(500 + i % 3 * 700))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    assert_eq!(run(0), run(0));
}

#[test]
fn route_is_plausible() {
    for seed in 0..20u64 {
        let start = 1_714_564_800_000;
        let mut route = Route::new(seed, 48.8566, 2.3522).starting_at(start);
        let (min_lat, min_lon, max_lat, max_lon) = route.bounding_box();
        let first = route.current();
        assert_eq!(first.time_ms, start);
        assert_eq!((first.latitude, first.longitude), (48.8566, 2.3522));
        let mut prev = first;
        let mut t = start;
        // Three hours at 1 s, then some long gaps and a zero step.
        let steps = (0..3 * 3600)
            .map(|_| 1000)
            .chain([60_000, 0, 3_600_000, 250]);
        for dt in steps {
            let fix = route.next(dt);
            t += dt;
            assert_eq!(fix.time_ms, t);
            assert!(
                (sim::ROUTE_MIN_SPEED_KMH..=sim::ROUTE_MAX_SPEED_KMH).contains(&fix.speed_kmh),
                "seed {seed}: speed {fix:?}"
            );
            assert!((0.0..360.0).contains(&fix.course));
            assert!(
                (min_lat..=max_lat).contains(&fix.latitude)
                    && (min_lon..=max_lon).contains(&fix.longitude),
                "seed {seed}: left the box {fix:?}"
            );
            let dt_s = dt as f64 / 1000.0;
            let d = distance_m(&prev, &fix);
            assert!(
                d <= sim::ROUTE_MAX_SPEED_KMH / 3.6 * dt_s + 0.01,
                "seed {seed}: jumped {d} m in {dt} ms"
            );
            if dt == 1000 {
                assert!(
                    angular_distance(fix.course, prev.course) <= sim::ROUTE_MAX_TURN_DEG_S + 1e-9,
                    "seed {seed}: sharp turn {prev:?} -> {fix:?}"
                );
                assert!(
                    (fix.speed_kmh - prev.speed_kmh).abs() <= sim::ROUTE_MAX_ACCEL_KMH_S + 1e-9,
                    "seed {seed}: harsh acceleration"
                );
                assert!((fix.altitude_m - prev.altitude_m).abs() <= 0.5);
            }
            assert!((6..=14).contains(&fix.satellites));
            assert!(fix.valid);
            prev = fix;
        }
    }
}

#[test]
fn route_actually_moves_around() {
    let mut route = Route::new(1, -33.8688, 151.2093);
    let start = route.current();
    let fixes: Vec<Fix> = (0..1800).map(|_| route.next(1000)).collect();
    let far = fixes
        .iter()
        .map(|f| distance_m(&start, f))
        .fold(0.0, f64::max);
    assert!(far > 1000.0, "went at most {far} m in 30 minutes");
    let mean_speed = fixes.iter().map(|f| f.speed_kmh).sum::<f64>() / fixes.len() as f64;
    assert!((30.0..=70.0).contains(&mean_speed), "{mean_speed}");
    // Headings vary (not a straight line) but change smoothly.
    let turned: f64 = fixes
        .windows(2)
        .map(|w| angular_distance(w[0].course, w[1].course))
        .sum();
    assert!(turned > 90.0, "turned only {turned}°");
}

#[test]
fn route_sanitises_the_start() {
    let mut r = Route::new(3, f64::NAN, 179.99);
    let f = r.next(1000);
    assert!(f.latitude.abs() < 1.0 && f.longitude < 180.0);
    let (_, _, _, max_lon) = r.bounding_box();
    assert!(max_lon <= 180.0);
    let mut r = Route::new(3, 89.9, 0.0);
    let (_, _, max_lat, _) = r.bounding_box();
    assert!(max_lat <= 90.0);
    for _ in 0..100 {
        assert!(r.next(10_000).latitude <= max_lat);
    }
}
