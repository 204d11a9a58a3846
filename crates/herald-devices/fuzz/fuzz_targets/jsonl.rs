#![no_main]

use herald_devices::{jsonl, FrameStatus, SessionState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = SessionState::new();
    let mut buf = data;
    while let Ok(FrameStatus::Complete(n)) = jsonl::frame(buf) {
        if let Ok(d) = jsonl::decode(&buf[..n], &mut s) {
            assert!(d.positions.iter().all(|p| p.in_range()));
        }
        buf = &buf[n..];
    }
    let _ = jsonl::decode(buf, &mut s);
});
