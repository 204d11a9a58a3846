#![no_main]

use herald_devices::{teltonika, FrameStatus, SessionState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = SessionState::new();
    let mut buf = data;
    while !buf.is_empty() {
        match teltonika::frame(buf) {
            Ok(FrameStatus::Complete(n)) => {
                assert!(n > 0 && n <= buf.len());
                if let Ok(d) = teltonika::decode(&buf[..n], &mut s) {
                    assert!(d.positions.iter().all(|p| p.in_range()));
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
    let _ = teltonika::decode_udp(data, &mut SessionState::new());
    let _ = teltonika::decode(data, &mut SessionState::with_device("123456789012345"));
});
