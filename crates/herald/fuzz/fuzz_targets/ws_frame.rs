#![no_main]
//! Client WebSocket bytes through the server's frame parser, frame after frame as a connection
//! reads them: a frame is consumed whole, never past the input, and its payload is bounded. Close
//! frames go through the RFC 6455 close-payload check: an accepted code is a valid one, and a
//! refusal is 1002 or 1007.

use herald::edges::ws::{parse_close, parse_frame, valid_close_code};
use libfuzzer_sys::fuzz_target;

const MAX_PAYLOAD: usize = 4096;
const OP_CLOSE: u8 = 0x8;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((frame, used))) = parse_frame(buf, MAX_PAYLOAD) {
        assert!(used >= 6 && used <= buf.len(), "consumed {used} of {}", buf.len());
        assert!(frame.payload.len() <= MAX_PAYLOAD);
        assert!(used - frame.payload.len() >= 6, "header and mask");
        if frame.opcode >= 0x8 {
            assert!(frame.fin && frame.payload.len() <= 125);
        }
        if frame.opcode == OP_CLOSE {
            match parse_close(&frame.payload) {
                Ok(Some(code)) => assert!(valid_close_code(code)),
                Ok(None) => assert!(frame.payload.is_empty()),
                Err(v) => assert!(v.code == 1002 || v.code == 1007, "{}", v.code),
            }
        }
        buf = &buf[used..];
    }
});
