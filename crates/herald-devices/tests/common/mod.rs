//! Loader and checker for the capture files in `shared/testdata/devices`.
//!
//! Location: `$HERALD_DEVICE_TESTDATA`, else `<workspace root>/../shared/testdata/devices` where the
//! workspace root is `CARGO_MANIFEST_DIR/../..`. A missing directory fails the tests loudly.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use herald_devices::{DecodeError, Decoded};
use serde_json::Value;

pub fn testdata_dir() -> PathBuf {
    let dir = match std::env::var_os("HERALD_DEVICE_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/devices"),
    };
    assert!(
        dir.join("README.md").is_file(),
        "device capture test data not found at {} — clone the shared/ test data beside the \
         repository or set HERALD_DEVICE_TESTDATA to the directory holding gt06.txt, h02.txt, \
         teltonika.txt, osmand.txt and server_responses.txt",
        dir.display()
    );
    dir
}

/// One capture line.
#[derive(Debug, Clone)]
pub struct Sample {
    /// 1-based line number in the file.
    pub line: usize,
    pub payload: String,
    pub notes: String,
}

impl Sample {
    pub fn kind(&self) -> &str {
        self.notes
            .split(" | ")
            .next()
            .and_then(|k| k.strip_prefix("kind="))
            .unwrap_or("")
    }

    /// Payload bytes: hex decoded, or text unescaped.
    pub fn bytes(&self) -> Vec<u8> {
        match self.kind() {
            "hex" => unhex(&self.payload),
            _ => unescape(&self.payload).into_bytes(),
        }
    }

    pub fn assertion(&self) -> Assertion {
        parse_assertion(&self.notes)
    }

    pub fn has_settings(&self) -> bool {
        self.notes.contains("settings=")
    }
}

pub fn load(file: &str) -> Vec<Sample> {
    let path = testdata_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .map(|(i, l)| {
            let (payload, notes) = l.split_once('\t').unwrap_or((l, ""));
            Sample {
                line: i + 1,
                payload: payload.to_string(),
                notes: notes.to_string(),
            }
        })
        .collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    assert!(s.len() & 1 == 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex payload"))
        .collect()
}

pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('r') => out.push('\r'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('\\') => out.push('\\'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What the notes ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Assertion {
    /// No position.
    Null,
    /// A result (Ok) with no field checks.
    NotNull,
    /// At least one position, range-checked; `exact` from "expected time=..." or the derived part.
    Position {
        exact: Option<Expected>,
        check_location: bool,
    },
    /// Non-empty attributes on a position or the frame.
    Attributes,
    /// One attribute value.
    Attribute { name: String, value: String },
    /// Non-Traccar sample (wiki / client app), checked by dedicated tests.
    External,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub time_ms: Option<i64>,
    pub lat: f64,
    pub lon: f64,
    pub valid: Option<bool>,
}

fn parse_assertion(notes: &str) -> Assertion {
    let parts: Vec<&str> = notes.split(" | ").collect();
    let a = parts.get(1).copied().unwrap_or("");
    if a.starts_with("NON-TRACCAR") || a.starts_with("CLIENT-SIDE") {
        return Assertion::External;
    }
    if a.starts_with("verifyNull") {
        return Assertion::Null;
    }
    if a.starts_with("verifyNotNull") {
        return Assertion::NotNull;
    }
    if a.starts_with("verifyAttributes") {
        return Assertion::Attributes;
    }
    if let Some(rest) = a.strip_prefix("verifyAttribute: ") {
        let (name, value) = rest.split_once(" == ").unwrap_or((rest, ""));
        return Assertion::Attribute {
            name: name.trim().to_string(),
            value: value.trim().to_string(),
        };
    }
    if a.starts_with("verifyPosition") {
        let check_location = !a.contains("location NOT checked");
        let exact = parse_expected(a).or_else(|| parts.iter().find_map(|p| parse_derived(p)));
        return Assertion::Position {
            exact,
            check_location,
        };
    }
    panic!("unknown assertion in notes: {notes}");
}

fn field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let i = s.find(key)?;
    let rest = &s[i + key.len()..];
    let end = rest.find([' ', ',', ';']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// "expected time=2015-10-20 14:21:11.000 UTC, valid=true, lat=54.94535, lon=24.01762"
fn parse_expected(a: &str) -> Option<Expected> {
    let i = a.find("expected time=")?;
    let rest = &a[i + "expected time=".len()..];
    let time = parse_time(rest.get(..23)?)?;
    Some(Expected {
        time_ms: Some(time),
        lat: field(a, "lat=")?.parse().ok()?,
        lon: field(a, "lon=")?.parse().ok()?,
        valid: field(a, "valid=").map(|v| v == "true"),
    })
}

/// "fixTime=2023-10-08 12:14:36 lat=23.168665 lon=..." (GT06) or with ".011 UTC" (Teltonika).
fn parse_derived(p: &str) -> Option<Expected> {
    let i = p.find("fixTime=")?;
    let rest = &p[i + "fixTime=".len()..];
    let time = parse_time(rest.get(..19)?)?;
    let ms = rest
        .get(19..23)
        .filter(|s| s.starts_with('.'))
        .and_then(|s| s[1..].parse::<i64>().ok())
        .unwrap_or(0);
    Some(Expected {
        time_ms: Some(time + ms),
        lat: field(rest, "lat=")?.parse().ok()?,
        lon: field(rest, "lon=")?.parse().ok()?,
        valid: field(rest, "valid=").map(|v| v == "True" || v == "true"),
    })
}

/// "YYYY-MM-DD HH:MM:SS[.mmm]" to unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let mo: i64 = s.get(5..7)?.parse().ok()?;
    let d: i64 = s.get(8..10)?.parse().ok()?;
    let h: i64 = s.get(11..13)?.parse().ok()?;
    let mi: i64 = s.get(14..16)?.parse().ok()?;
    let se: i64 = s.get(17..19)?.parse().ok()?;
    let ms: i64 = s
        .get(19..23)
        .filter(|x| x.starts_with('.'))
        .and_then(|x| x[1..].parse().ok())
        .unwrap_or(0);
    // days from civil
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + se * 1000 + ms)
}

/// Compares a decoded attribute with the note's textual value (`600L`, `0x69`, `4.05`, `true`, `null`).
pub fn attribute_matches(actual: Option<&Value>, expected: &str) -> bool {
    let expected = unescape(expected);
    if expected == "null" {
        return actual.is_none() || actual == Some(&Value::Null);
    }
    let Some(actual) = actual else {
        return false;
    };
    let numeric = {
        let e = expected.trim_end_matches('L');
        if let Some(h) = e.strip_prefix("0x").or_else(|| e.strip_prefix("0X")) {
            i64::from_str_radix(h, 16).ok().map(|v| v as f64)
        } else {
            e.parse::<f64>().ok()
        }
    };
    match actual {
        Value::Bool(b) => expected == b.to_string(),
        Value::Number(n) => match (n.as_f64(), numeric) {
            (Some(a), Some(e)) => (a - e).abs() <= 1e-6 * e.abs().max(1.0),
            _ => false,
        },
        Value::String(s) => {
            s == &expected
                || s.eq_ignore_ascii_case(&expected)
                || matches!((s.parse::<f64>().ok(), numeric), (Some(a), Some(e)) if (a - e).abs() < 1e-9)
        }
        other => serde_json::to_string(other).is_ok_and(|t| t == expected),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Result of checking one sample.
#[derive(Debug)]
pub enum Verdict {
    Pass,
    /// Not checked, with the reason (documented skip list).
    Skip(String),
    Fail(String),
}

/// Checks `outcome` against `assertion`. Generic checks mirror Traccar's `verifyDecodedPosition`.
pub fn check(assertion: &Assertion, outcome: &Result<Decoded, DecodeError>) -> Verdict {
    match assertion {
        Assertion::External => Verdict::Skip("external sample (dedicated test)".into()),
        Assertion::Null => match outcome {
            Ok(d) if d.positions.is_empty() => Verdict::Pass,
            Ok(d) => Verdict::Fail(format!("expected no position, got {:?}", d.positions)),
            // An error is also "no position"; it is what happens to frames that cannot be decoded.
            Err(_) => Verdict::Pass,
        },
        Assertion::NotNull => match outcome {
            Ok(_) => Verdict::Pass,
            Err(e) => Verdict::Fail(format!("expected a result, got error {e}")),
        },
        Assertion::Attributes => match outcome {
            Ok(d) if d.positions.iter().any(|p| !p.attributes.is_empty()) => Verdict::Pass,
            Ok(d) if !d.attributes.is_empty() => Verdict::Pass,
            Ok(d) => Verdict::Fail(format!("expected attributes, got {d:?}")),
            Err(e) => Verdict::Fail(format!("expected attributes, got error {e}")),
        },
        Assertion::Attribute { name, value } => match outcome {
            Ok(d) => {
                let actual = builtin(d, name).or_else(|| d.attribute(name).cloned());
                if attribute_matches(actual.as_ref(), value) {
                    Verdict::Pass
                } else {
                    Verdict::Fail(format!(
                        "attribute {name}: expected {value}, got {actual:?} (all: {:?} / {:?})",
                        d.positions.first().map(|p| &p.attributes),
                        d.attributes
                    ))
                }
            }
            Err(e) => Verdict::Fail(format!("attribute {name}: got error {e}")),
        },
        Assertion::Position {
            exact,
            check_location,
        } => match outcome {
            Err(e) => Verdict::Fail(format!("expected a position, got error {e}")),
            Ok(d) if d.positions.is_empty() => {
                if *check_location {
                    Verdict::Fail(format!("expected a position, got none: {d:?}"))
                } else {
                    // Traccar returns a position object without location for command results.
                    Verdict::Pass
                }
            }
            Ok(d) => {
                if !check_location {
                    return Verdict::Pass;
                }
                let now = now_ms();
                for p in &d.positions {
                    if !p.in_range() {
                        return Verdict::Fail(format!("position out of range: {p:?}"));
                    }
                    if p.time_ms < 915_148_800_000 || p.time_ms > now + 25 * 3_600_000 {
                        return Verdict::Fail(format!("fix time out of range: {p:?}"));
                    }
                    if p.speed_kmh > 869.0 * 1.852 + 1e-6 {
                        return Verdict::Fail(format!("speed out of range: {p:?}"));
                    }
                }
                if let Some(e) = exact {
                    let p = &d.positions[0];
                    if (p.latitude - e.lat).abs() > 1e-5 || (p.longitude - e.lon).abs() > 1e-5 {
                        return Verdict::Fail(format!(
                            "coordinates {},{} != expected {},{}",
                            p.latitude, p.longitude, e.lat, e.lon
                        ));
                    }
                    if let Some(t) = e.time_ms {
                        if p.time_ms != t {
                            return Verdict::Fail(format!("time {} != expected {}", p.time_ms, t));
                        }
                    }
                    if let Some(v) = e.valid {
                        if p.valid != v {
                            return Verdict::Fail(format!("valid {} != expected {v}", p.valid));
                        }
                    }
                }
                Verdict::Pass
            }
        },
    }
}

/// Traccar keeps some values in Position fields rather than attributes.
fn builtin(d: &Decoded, name: &str) -> Option<Value> {
    let p = d.positions.first()?;
    match name {
        "altitude" => p.altitude_m.map(|a| serde_json::json!(a)),
        _ => None,
    }
}

/// Per-file tally.
#[derive(Debug, Default)]
pub struct Stats {
    pub pass: usize,
    pub skip: usize,
    pub fail: Vec<String>,
}

impl Stats {
    pub fn record(&mut self, s: &Sample, v: Verdict) {
        match v {
            Verdict::Pass => self.pass += 1,
            Verdict::Skip(why) => {
                self.skip += 1;
                println!("  skip line {}: {why}", s.line);
            }
            Verdict::Fail(why) => self.fail.push(format!(
                "line {}: {why}\n    payload: {}\n    notes: {}",
                s.line,
                &s.payload.chars().take(120).collect::<String>(),
                &s.notes.chars().take(200).collect::<String>()
            )),
        }
    }

    pub fn finish(self, file: &str) {
        let total = self.pass + self.skip + self.fail.len();
        println!(
            "{file}: {total} samples, {} passed, {} skipped (documented), {} failed",
            self.pass,
            self.skip,
            self.fail.len()
        );
        if !self.fail.is_empty() {
            panic!(
                "{file}: {} unexpected failures:\n{}",
                self.fail.len(),
                self.fail.join("\n")
            );
        }
    }
}
