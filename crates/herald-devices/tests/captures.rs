//! Data-driven tests over the real device captures (see `common` for where they live).

mod common;

use common::{check, load, Assertion, Stats, Verdict};
use herald_devices::{
    gt06, h02, osmand, teltonika, CrcPolicy, DecodeError, FrameStatus, SessionState,
};

const DEVICE: &str = "123456789012345";

/// GT06 attributes this crate does not decode, with the reason:
///
/// - `tag1Temp`: BLE tag modules of the 0x70 modular report (not a tracking field);
/// - `steps`: pedometer field of the 0xa3 wearable status form;
/// - `networkTechnology`: 0x94 sub-type 0x0b, undocumented value mapping;
/// - `drivingTime`: driver-hours extension of one 0x12 variant;
/// - `altitude`: only in firmware-specific 0x31/0x32 basic layouts that are not standardised.
const GT06_SKIP_ATTRS: &[(&str, &str)] = &[
    ("tag1Temp", "BLE tag module of 0x70 not decoded"),
    ("steps", "wearable pedometer field not decoded"),
    ("networkTechnology", "0x94/0x0b value mapping undocumented"),
    ("drivingTime", "driver-hours extension not decoded"),
    ("altitude", "only in non-standard 0x31/0x32 layouts"),
];

/// GT06 samples whose assertion this crate knowingly does not meet (line, reason). All are
/// vendor-specific layouts that share a type byte with a standard layout; the frames still decode
/// (no error) and are acknowledged, only the named attribute differs or is missing.
const GT06_KNOWN: &[(usize, &str)] = &[
    (7, "0xf1 device-status report not decoded"),
    (9, "0x61 iButton report not decoded"),
    (11, "0x94 sub-type 0x0b (power) layout undocumented"),
    (19, "0xf2 peripheral report not decoded"),
    (20, "0xf2 peripheral report not decoded"),
    (22, "0x36 status variant (battery) not decoded"),
    (31, "0x22 variant with a temperature extension"),
    (
        44,
        "0xa5 LBS alarm uses a long cell layout whose alarm offset is ambiguous",
    ),
    (
        46,
        "0x26 vendor alarm code mapping differs from the Concox table",
    ),
    (47, "0x94 sub-type 0x05 door layout of a newer firmware"),
    (
        48,
        "0x16 vendor alarm code mapping differs from the Concox table",
    ),
    (
        70,
        "0x16 variant with a zeroed cell block and a trailing battery field",
    ),
    (
        181,
        "0x12 variant prefixed with the IMEI (Traccar model override)",
    ),
];

fn apply_skips(
    s: &common::Sample,
    skip_attrs: &[(&str, &str)],
    known: &[(usize, &str)],
    v: Verdict,
) -> Verdict {
    if let Assertion::Attribute { name, .. } = s.assertion() {
        if let Some((_, why)) = skip_attrs.iter().find(|(n, _)| *n == name) {
            return Verdict::Skip(format!("attribute {name} not decoded: {why}"));
        }
        if s.has_settings() {
            return Verdict::Skip(format!(
                "attribute {name} depends on a Traccar per-device model override"
            ));
        }
    }
    if let Some((_, why)) = known.iter().find(|(l, _)| *l == s.line) {
        return match v {
            Verdict::Fail(_) => Verdict::Skip(format!("known divergence: {why}")),
            Verdict::Pass => Verdict::Fail(format!(
                "listed as a known divergence ({why}) but now passes: remove it from the list"
            )),
            other => other,
        };
    }
    v
}

#[test]
fn gt06_captures() {
    let mut stats = Stats::default();
    let (mut crc_bad, mut framed) = (0, 0);
    for s in load("gt06.txt") {
        let bytes = s.bytes();
        let mut session = SessionState::with_device(DEVICE);
        let outcome = gt06::decode(&bytes, &mut session);

        // CRC policy: lenient (default) decodes and flags; strict rejects exactly the mismatches.
        let crc_expected_ok = !s.notes.contains("crc16-x25=MISMATCH");
        if let Ok(d) = &outcome {
            assert_eq!(
                d.crc_ok,
                Some(crc_expected_ok),
                "line {}: crc_ok flag",
                s.line
            );
        }
        let mut strict = SessionState::with_device(DEVICE);
        strict.crc_policy = CrcPolicy::Strict;
        let strict_outcome = gt06::decode(&bytes, &mut strict);
        if bytes.len() >= 10 {
            if crc_expected_ok {
                assert_eq!(
                    strict_outcome, outcome,
                    "line {}: strict == lenient for good CRC",
                    s.line
                );
            } else {
                crc_bad += 1;
                assert!(
                    matches!(strict_outcome, Err(DecodeError::Crc { .. })),
                    "line {}: strict policy must reject a CRC mismatch, got {strict_outcome:?}",
                    s.line
                );
            }
        }

        // Framing: a capture whose length field is right frames as exactly one frame.
        if let Ok(FrameStatus::Complete(n)) = gt06::frame(&bytes) {
            if n == bytes.len() {
                framed += 1;
            }
        }

        let v = check(&s.assertion(), &outcome);
        stats.record(&s, apply_skips(&s, GT06_SKIP_ATTRS, GT06_KNOWN, v));
    }
    println!("gt06: {crc_bad} samples with a CRC mismatch (rejected by CrcPolicy::Strict); {framed} framed whole");
    stats.finish("gt06.txt");
}

/// Teltonika attributes this crate does not decode: BLE tag / EYE sensor values travel in
/// vendor-specific variable-length (NX) elements that are kept as raw hex `io<N>`.
const TELTONIKA_SKIP_ATTRS: &[(&str, &str)] = &[
    ("tag1Voltage", "BLE tag payload kept as raw hex io<N>"),
    ("tag1Battery", "BLE tag payload kept as raw hex io<N>"),
    ("eyeTemp1", "EYE sensor payload kept as raw hex io<N>"),
];

/// Teltonika samples whose assertion this crate knowingly does not meet.
const TELTONIKA_KNOWN: &[(usize, &str)] = &[
    (
        36,
        "codec 7 (GH3000) not supported: decodes to DecodeError::Unsupported",
    ),
    (
        41,
        "codec 7 (GH3000) not supported: decodes to DecodeError::Unsupported",
    ),
    (
        42,
        "codec 7 (GH3000) not supported: decodes to DecodeError::Unsupported",
    ),
    (
        50,
        "FMB130 'extended' IO layout (Traccar setExtended(true)) not supported",
    ),
    (
        51,
        "FMB130 'extended' IO layout (Traccar setExtended(true)) not supported",
    ),
];

#[test]
fn teltonika_captures() {
    let mut stats = Stats::default();
    for s in load("teltonika.txt") {
        let bytes = s.bytes();
        let mut session = SessionState::with_device(DEVICE);
        let udp = s.notes.contains("UDP packet");
        let outcome = if udp {
            teltonika::decode_udp(&bytes, &mut session)
        } else {
            teltonika::decode(&bytes, &mut session)
        };
        if let Ok(d) = &outcome {
            // (The extractor computes the CRC over the declared length; skip frames whose
            // length field is wrong — "parse FAILED" — where the decoder uses the real length.)
            if s.notes.contains("parse FAILED") {
            } else if s.notes.contains("crc16-ibm=MISMATCH") {
                assert_eq!(d.crc_ok, Some(false), "line {}: crc flag", s.line);
            } else if s.notes.contains("crc16-ibm=ok") {
                assert_eq!(d.crc_ok, Some(true), "line {}: crc flag", s.line);
            }
            // Data packets owe the 4-byte record count; command frames owe nothing.
            if let Some(ack) = s
                .notes
                .split("server ACK = 4-byte BE record count 0x")
                .nth(1)
            {
                let want = common::unhex(&ack[..8]);
                assert_eq!(d.reply.as_deref(), Some(&want[..]), "line {}: ack", s.line);
            }
            if s.notes.contains("no count ACK") {
                assert_eq!(d.reply, None, "line {}: codec 12/13 owe no ack", s.line);
            }
        }
        if !udp {
            // Every TCP capture is exactly one frame.
            match teltonika::frame(&bytes) {
                Ok(FrameStatus::Complete(n)) if n == bytes.len() => {}
                other
                    if s.notes.contains("dataLen=")
                        && !s.notes.contains("crc16-ibm=MISMATCH")
                        && !s.notes.contains("parse FAILED") =>
                {
                    panic!(
                        "line {}: frame() = {other:?}, want Complete({})",
                        s.line,
                        bytes.len()
                    )
                }
                _ => {}
            }
        }
        let v = check(&s.assertion(), &outcome);
        stats.record(
            &s,
            apply_skips(&s, TELTONIKA_SKIP_ATTRS, TELTONIKA_KNOWN, v),
        );
    }
    stats.finish("teltonika.txt");
}

/// H02 attributes this crate does not decode: none.
const H02_SKIP_ATTRS: &[(&str, &str)] = &[];
/// H02 samples whose assertion this crate knowingly does not meet.
const H02_KNOWN: &[(usize, &str)] = &[];

#[test]
fn h02_captures() {
    let mut stats = Stats::default();
    for s in load("h02.txt") {
        let bytes = s.bytes();
        let mut session = SessionState::with_device(DEVICE);
        session.now_ms = common::now_ms();
        let outcome = h02::decode(&bytes, &mut session);
        if s.kind() == "text" {
            let mut fs = SessionState::new();
            assert_eq!(
                h02::frame(&bytes, &mut fs),
                Ok(FrameStatus::Complete(bytes.len())),
                "line {}: a text sentence is one frame",
                s.line
            );
        }
        let v = check(&s.assertion(), &outcome);
        stats.record(&s, apply_skips(&s, H02_SKIP_ATTRS, H02_KNOWN, v));
    }
    stats.finish("h02.txt");
}

/// Splits an osmand.txt payload `METHOD URL [headers] body` into (url, content-type, body).
fn http_parts(payload: &str) -> (String, Option<String>, String) {
    let (_method, rest) = payload.split_once(' ').unwrap_or((payload, ""));
    let (url, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut content_type = None;
    if let Some(h) = rest.strip_prefix('[') {
        let (headers, after) = h.split_once("] ").unwrap_or((h.trim_end_matches(']'), ""));
        for header in headers.split(", ") {
            if let Some((k, v)) = header.split_once(": ") {
                if k.eq_ignore_ascii_case("content-type") {
                    content_type = Some(v.to_string());
                }
            }
        }
        rest = after;
    }
    (url.to_string(), content_type, rest.to_string())
}

/// OsmAnd attributes this crate does not decode: none.
const OSMAND_SKIP_ATTRS: &[(&str, &str)] = &[];

#[test]
fn osmand_captures() {
    let mut stats = Stats::default();
    let mut external = 0;
    for s in load("osmand.txt") {
        let (url, content_type, body) = http_parts(&s.payload);
        let mut session = SessionState::new();
        session.now_ms = common::now_ms();
        let outcome =
            osmand::decode_request(&url, content_type.as_deref(), body.as_bytes(), &mut session);
        if s.assertion() == Assertion::External {
            // Traccar Client app URLs: must be accepted (200) with the literal values.
            external += 1;
            let d = outcome.unwrap_or_else(|e| panic!("line {}: {e}", s.line));
            assert_eq!(osmand::http_status(&Ok(d.clone())), 200);
            let p = &d.positions[0];
            assert_eq!(p.device_id, "123456789012345");
            assert_eq!((p.time_ms, p.latitude, p.longitude), (0, 0.0, 0.0));
            if url.contains("alarm=") {
                assert_eq!(p.attributes["alarm"], serde_json::json!("alert message"));
            }
            stats.pass += 1;
            continue;
        }
        let v = check(&s.assertion(), &outcome);
        stats.record(&s, apply_skips(&s, OSMAND_SKIP_ATTRS, &[], v));
    }
    assert_eq!(external, 3, "client-side samples checked");
    stats.finish("osmand.txt");
}

/// Every reply in server_responses.txt is produced byte-exactly.
#[test]
fn server_responses() {
    let path = common::testdata_dir().join("server_responses.txt");
    let text = std::fs::read_to_string(&path).expect("server_responses.txt");
    let now_ms = 1_700_000_000_000; // 2023-11-14 22:13:20 UTC
    let mut checked = 0;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let (proto, msg, want) = (cols[0], cols[1], cols[2]);
        let mut session = SessionState::with_device(DEVICE);
        session.now_ms = now_ms;
        let got: Vec<u8> = match proto {
            "gt06" => gt06::decode(&common::unhex(msg), &mut session)
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1))
                .reply
                .expect("gt06 reply"),
            "teltonika" => teltonika::decode(&common::unhex(msg), &mut session)
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1))
                .reply
                .expect("teltonika reply"),
            "teltonika-udp" => teltonika::decode_udp(&common::unhex(msg), &mut session)
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1))
                .reply
                .expect("udp reply"),
            "h02" => h02::decode(msg.as_bytes(), &mut session)
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1))
                .reply
                .expect("h02 reply"),
            "osmand" => {
                let (_, query) = msg.split_once('?').expect("query");
                let r = osmand::decode_query(query, &mut session);
                assert!(want.starts_with("HTTP 200"), "line {}", i + 1);
                assert_eq!(osmand::http_status(&r), 200, "line {}", i + 1);
                checked += 1;
                continue;
            }
            other => panic!("unknown protocol {other}"),
        };
        let want: Vec<u8> = if proto == "h02" {
            want.replace("<yyyyMMddHHmmss UTC now>", "20231114221320")
                .into_bytes()
        } else {
            common::unhex(want)
        };
        assert_eq!(
            got,
            want,
            "line {}: {proto} reply {:?} != {:?}",
            i + 1,
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        checked += 1;
    }
    println!("server_responses.txt: {checked} replies reproduced byte-exactly");
    assert_eq!(checked, 24, "every reply line checked");
}

/// Non-Traccar samples from the Teltonika wiki: exact values.
#[test]
fn teltonika_wiki_examples() {
    let samples: Vec<_> = load("teltonika.txt")
        .into_iter()
        .filter(|s| s.assertion() == Assertion::External)
        .collect();
    assert_eq!(samples.len(), 4);
    let mut session = SessionState::new();

    // IMEI handshake.
    let d = teltonika::decode(&samples[0].bytes(), &mut session).unwrap();
    assert_eq!(d.device_id.as_deref(), Some("356307042441013"));
    assert_eq!(d.reply.as_deref(), Some(&teltonika::IMEI_ACCEPT[..]));
    assert_eq!(session.device_id.as_deref(), Some("356307042441013"));

    // Example 1: one record, IO 0x15=3, 0x01=1, 0x42=0x5E0F, 0xF1=0x601A, 0x4E=0.
    let d = teltonika::decode(&samples[1].bytes(), &mut session).unwrap();
    assert_eq!(d.crc_ok, Some(true));
    assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 1][..]));
    let p = &d.positions[0];
    assert_eq!(p.device_id, "356307042441013");
    assert_eq!(p.time_ms, 0x0000_016B_40D8_EA30);
    assert!(!p.valid, "no satellites: not a valid fix");
    assert_eq!(p.attributes["rssi"], serde_json::json!(3));
    assert_eq!(p.attributes["in1"], serde_json::json!(true));
    assert_eq!(p.attributes["power"], serde_json::json!(24.079));
    assert_eq!(p.attributes["io241"], serde_json::json!(0x601A));
    assert_eq!(p.attributes["io78"], serde_json::json!(0));
    assert_eq!(p.attributes["event"], serde_json::json!(1));

    // Example 2.
    let d = teltonika::decode(&samples[2].bytes(), &mut session).unwrap();
    assert_eq!(d.positions[0].time_ms, 0x0000_016B_40D9_AD80);
    assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 1][..]));

    // Example 3: two records, ack 2.
    let d = teltonika::decode(&samples[3].bytes(), &mut session).unwrap();
    assert_eq!(d.positions.len(), 2);
    assert_eq!(d.positions[1].time_ms, 0x0000_016B_40D5_C198);
    assert_eq!(d.positions[0].attributes["in1"], serde_json::json!(false));
    assert_eq!(d.positions[1].attributes["in1"], serde_json::json!(true));
    assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 2][..]));
}

/// Concatenated captures (with garbage in front) split back into the same frames, whatever the
/// read boundaries; absurd lengths are framing errors.
#[test]
fn streams_split_into_frames() {
    let gt06_frames: Vec<Vec<u8>> = load("gt06.txt")
        .iter()
        .map(|s| s.bytes())
        .filter(|b| gt06::frame(b) == Ok(FrameStatus::Complete(b.len())))
        .collect();
    let tel_frames: Vec<Vec<u8>> = load("teltonika.txt")
        .iter()
        .filter(|s| !s.notes.contains("UDP"))
        .map(|s| s.bytes())
        .filter(|b| teltonika::frame(b) == Ok(FrameStatus::Complete(b.len())))
        .collect();
    assert!(gt06_frames.len() > 150 && tel_frames.len() > 40);

    type Framer = fn(&[u8]) -> Result<FrameStatus, herald_devices::FrameError>;
    for (name, frames, framer, garbage) in [
        (
            "gt06",
            &gt06_frames,
            gt06::frame as Framer,
            &b"\x01\x02garbage"[..],
        ),
        (
            "teltonika",
            &tel_frames,
            teltonika::frame as Framer,
            &b""[..],
        ),
    ] {
        let mut stream = garbage.to_vec();
        for f in frames.iter() {
            stream.extend_from_slice(f);
        }
        for chunk in [1usize, 7, 64, 4096] {
            let mut buf = Vec::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match framer(&buf).expect("no framing error") {
                        FrameStatus::Complete(n) => out.push(buf.drain(..n).collect::<Vec<u8>>()),
                        FrameStatus::Skip(n) => {
                            buf.drain(..n);
                        }
                        FrameStatus::NeedMore => break,
                    }
                }
            }
            assert!(buf.is_empty(), "{name}/{chunk}: leftover {buf:?}");
            assert_eq!(
                &out, frames,
                "{name}: frames differ with {chunk}-byte reads"
            );
        }
    }

    assert!(
        gt06::frame(&[0x79, 0x79, 0xff, 0xff]).is_err(),
        "gt06 length bound"
    );
    assert!(
        teltonika::frame(&[0, 0, 0, 0, 0x7f, 0, 0, 0]).is_err(),
        "teltonika length bound"
    );
    assert!(
        teltonika::frame(&[0x7f, 0x00]).is_err(),
        "imei length bound"
    );
    let mut s = SessionState::new();
    assert!(
        h02::frame(&[b'*'; 2000], &mut s).is_err(),
        "h02 sentence bound"
    );
    // H02: text then binary; the first binary frame fixes the binary length.
    let mut s = SessionState::new();
    let text = b"*HQ,1,HTBT#\r\n$";
    assert_eq!(h02::frame(text, &mut s), Ok(FrameStatus::Complete(13)));
    assert_eq!(h02::frame(&[b'$'; 10], &mut s), Ok(FrameStatus::NeedMore));
    assert_eq!(
        h02::frame(&[b'$'; 40], &mut s),
        Ok(FrameStatus::Complete(32))
    );
    assert_eq!(h02::frame(b"xx*", &mut s), Ok(FrameStatus::Skip(2)));
}

/// GT06 session flow: a location before login is refused; login teaches the IMEI and time zone.
#[test]
fn gt06_session_flow() {
    let location =
        common::unhex("78781f120b081d112e10cc027ac7eb0c46584900148f01cc00287d001fb8000380810d0a");
    let mut s = SessionState::new();
    assert_eq!(
        gt06::decode(&location, &mut s),
        Err(DecodeError::Unidentified)
    );
    // Login with time-zone extension 0x190a: 4:00 west (UTC-4).
    let login = common::unhex("787811010864717003664467100f190a0002c6d20d0a");
    let d = gt06::decode(&login, &mut s).unwrap();
    assert_eq!(d.device_id.as_deref(), Some("864717003664467"));
    assert_eq!(s.gt06_tz_offset_s, -4 * 3600);
    let d = gt06::decode(&location, &mut s).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.device_id, "864717003664467");
    // 2011-08-29 17:46:16 local at UTC-4 is 21:46:16 UTC.
    assert_eq!(
        p.time_ms,
        common::parse_time("2011-08-29 21:46:16").unwrap()
    );
    assert_eq!(d.reply.as_deref().map(|r| r[3]), Some(0x12));
}
