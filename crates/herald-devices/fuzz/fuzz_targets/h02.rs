#![no_main]

use herald_devices::{h02, FrameStatus, SessionState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = SessionState::with_device("123456789012345");
    let mut buf = data;
    while !buf.is_empty() {
        match h02::frame(buf, &mut s) {
            Ok(FrameStatus::Complete(n)) => {
                assert!(n > 0 && n <= buf.len());
                if let Ok(d) = h02::decode(&buf[..n], &mut s) {
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
});
