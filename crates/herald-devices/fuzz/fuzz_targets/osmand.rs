#![no_main]

use herald_devices::{osmand, SessionState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = SessionState::new();
    for r in [
        osmand::decode_json(data, &mut s),
        osmand::decode_form(data, &mut s),
        osmand::decode_query(&String::from_utf8_lossy(data), &mut s),
    ] {
        if let Ok(d) = r {
            assert!(d.positions.iter().all(|p| p.in_range()));
        }
    }
});
