#![no_main]
//! Splits the input into frames like a connection handler would, then decodes each frame under
//! both checksum policies.

use herald_devices::{gt06, CrcPolicy, FrameStatus, SessionState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lenient = SessionState::new();
    let mut strict = SessionState {
        crc_policy: CrcPolicy::Strict,
        ..SessionState::new()
    };
    let mut buf = data;
    while !buf.is_empty() {
        match gt06::frame(buf) {
            Ok(FrameStatus::Complete(n)) => {
                assert!(n > 0 && n <= buf.len());
                for s in [&mut lenient, &mut strict] {
                    if let Ok(d) = gt06::decode(&buf[..n], s) {
                        assert!(d.positions.iter().all(|p| p.in_range()));
                    }
                }
                buf = &buf[n..];
            }
            Ok(FrameStatus::Skip(n)) => {
                assert!(n > 0 && n <= buf.len());
                buf = &buf[n..];
            }
            Ok(FrameStatus::NeedMore) | Err(_) => break,
        }
    }
    // The raw input as a single frame too (decoders must not trust the framer).
    let mut s = SessionState::with_device("123456789012345");
    let _ = gt06::decode(data, &mut s);
});
