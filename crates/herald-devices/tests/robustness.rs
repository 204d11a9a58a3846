//! Fuzz-like robustness test without extra dependencies: every capture, truncated at every length
//! and with pseudo-random byte flips, is fed to every decoder and framer. Nothing may panic, and
//! every position that comes out must be in range.

mod common;

use herald_devices::{
    gt06, h02, jsonl, osmand, teltonika, CrcPolicy, DecodeError, Decoded, SessionState,
};

/// xorshift64* — deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn check_invariants(r: Result<Decoded, DecodeError>) {
    if let Ok(d) = r {
        for p in &d.positions {
            assert!(
                p.in_range(),
                "out-of-range position from fuzzed input: {p:?}"
            );
        }
    }
}

fn feed_all(data: &[u8]) {
    for policy in [CrcPolicy::Lenient, CrcPolicy::Strict] {
        let fresh = || {
            let mut s = SessionState::with_device("123456789012345");
            s.crc_policy = policy;
            s
        };
        check_invariants(gt06::decode(data, &mut fresh()));
        check_invariants(teltonika::decode(data, &mut fresh()));
        check_invariants(teltonika::decode_udp(data, &mut fresh()));
        check_invariants(h02::decode(data, &mut fresh()));
    }
    let mut s = SessionState::new();
    check_invariants(jsonl::decode(data, &mut s));
    check_invariants(osmand::decode_json(data, &mut s));
    check_invariants(osmand::decode_form(data, &mut s));
    let text = String::from_utf8_lossy(data);
    check_invariants(osmand::decode_query(&text, &mut s));
    check_invariants(osmand::decode_request(
        &text,
        Some("application/json"),
        data,
        &mut s,
    ));
    let _ = gt06::frame(data);
    let _ = teltonika::frame(data);
    let _ = h02::frame(data, &mut SessionState::new());
    let _ = jsonl::frame(data);
}

fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for file in ["gt06.txt", "teltonika.txt", "h02.txt", "osmand.txt"] {
        for s in common::load(file) {
            if s.kind() == "http" {
                out.push(s.payload.clone().into_bytes());
                if let Some(i) = s.payload.find('{') {
                    out.push(s.payload.as_bytes()[i..].to_vec());
                }
                if let Some(i) = s.payload.find('?') {
                    out.push(s.payload.as_bytes()[i + 1..].to_vec());
                }
            } else {
                out.push(s.bytes());
            }
        }
    }
    out.push(
        br#"{"id":"1","lat":1,"lon":2,"time":"2024-01-01T00:00:00Z","attrs":{"a":1}}"#.to_vec(),
    );
    out
}

#[test]
fn truncations_never_panic() {
    let corpus = corpus();
    assert!(corpus.len() > 300, "corpus too small: {}", corpus.len());
    for sample in &corpus {
        for len in 0..=sample.len() {
            feed_all(&sample[..len]);
        }
    }
}

#[test]
fn byte_flips_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for sample in corpus() {
        if sample.is_empty() {
            continue;
        }
        for _ in 0..64 {
            let mut m = sample.clone();
            let flips = 1 + (rng.next() % 4) as usize;
            for _ in 0..flips {
                let i = (rng.next() % m.len() as u64) as usize;
                m[i] = match rng.next() % 4 {
                    0 => m[i] ^ (1 << (rng.next() % 8)),
                    1 => 0xff,
                    2 => 0x00,
                    _ => rng.next() as u8,
                };
            }
            feed_all(&m);
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(42);
    for _ in 0..5000 {
        let len = (rng.next() % 300) as usize;
        let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Give the decoders a chance to get past their header checks.
        match rng.next() % 5 {
            0 if m.len() >= 2 => m[..2].copy_from_slice(&[0x78, 0x78]),
            1 if m.len() >= 2 => m[..2].copy_from_slice(&[0x79, 0x79]),
            2 if m.len() >= 8 => m[..4].copy_from_slice(&[0, 0, 0, 0]),
            3 if !m.is_empty() => m[0] = b'$',
            _ => {}
        }
        feed_all(&m);
    }
}
