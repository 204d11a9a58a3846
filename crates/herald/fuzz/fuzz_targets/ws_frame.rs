#![no_main]
//! Client WebSocket bytes through the server's frame parser, frame after frame as a connection
//! reads them: a frame is consumed whole, never past the input, and its payload is bounded.

use herald::ws::parse_frame;
use libfuzzer_sys::fuzz_target;

const MAX_PAYLOAD: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((frame, used))) = parse_frame(buf, MAX_PAYLOAD) {
        assert!(used >= 6 && used <= buf.len(), "consumed {used} of {}", buf.len());
        assert!(frame.payload.len() <= MAX_PAYLOAD);
        assert!(used - frame.payload.len() >= 6, "header and mask");
        if frame.opcode >= 0x8 {
            assert!(frame.fin && frame.payload.len() <= 125);
        }
        buf = &buf[used..];
    }
});
